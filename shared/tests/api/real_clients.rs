//! The product end to end with LiveKit's real server and real participants
//! (LiveKit's Python SDK): media, chat packets, who may publish, viewer counts
//! from the server's own webhooks, and the end of a stream. Every wait for
//! something to happen is bounded polling ([`SETTLE`]); showing that something
//! does not happen is polling that it holds until past its deadline.

use livekit_api::access_token::VideoGrants;
use serde_json::json;
use shared::handlers::{issue_standard_token, post_message};
use uuid::Uuid;

use crate::helpers::{Participant, SETTLE, TestApp};

const ROOM: &str = "live-show";

/// How long LiveKit takes at most to give up on a client that vanished
/// without leaving (its ICE disconnected and failed timeouts, plus margin).
const ICE_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(40);

/// An app whose rooms outlive their last participant by `departure` seconds.
async fn app_with_departure(departure: u32) -> TestApp {
    TestApp::spawn_with_settings(vec![(
        "LIVEKIT_ROOM_DEPARTURE_TIMEOUT_SECONDS",
        departure.to_string(),
    )])
    .await
}

/// The host goes live and connects with the token `/live/start` gave, at the
/// `serverUrl` it gave.
async fn live_host(app: &TestApp) -> (Uuid, Participant) {
    let host = Uuid::new_v4();
    let started = app.start_stream(host, ROOM).await;
    let client = Participant::connect(
        started["serverUrl"].as_str().unwrap(),
        started["token"].as_str().unwrap(),
    )
    .await
    .expect("the host connects with the start token");
    (host, client)
}

/// The streamer invites `viewer` on stage and the viewer accepts.
async fn bring_on_stage(app: &TestApp, host: Uuid, viewer: Uuid) {
    use shared::handlers::{accept_stage, invite_to_stage};
    let invite = json!({"roomName": ROOM, "userId": viewer}).to_string();
    let invited = app
        .call(invite_to_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(invited.status, 200, "{}", invited.body);
    let accept = json!({"roomName": ROOM}).to_string();
    let accepted = app
        .call(accept_stage, Some(&app.token_for(viewer)), &accept)
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
}

fn is_media(kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |e| e["event"] == "media_received" && e["kind"] == kind
}

#[tokio::test]
async fn viewers_receive_the_hosts_video_and_audio_and_cannot_publish_their_own() {
    let app = TestApp::spawn().await;
    let (_, mut host) = live_host(&app).await;
    host.publish_tracks().await.expect("the host may publish");

    // One viewer through /live/token, one through LiveKit's standard endpoint.
    let (_, mut viewer) = app.viewer_in(ROOM).await;
    let standard = app
        .call(
            issue_standard_token,
            Some(&app.token_for(Uuid::new_v4())),
            &json!({"room_name": ROOM, "participant_name": "Standard"}).to_string(),
        )
        .await;
    assert_eq!(standard.status, 201, "{}", standard.body);
    let other = Participant::connect(
        standard.body["server_url"].as_str().unwrap(),
        standard.body["participant_token"].as_str().unwrap(),
    )
    .await
    .expect("a TokenSource token joins");
    for client in [&viewer, &other] {
        client
            .wait_for("the host's video frames", is_media("video"))
            .await;
        client.wait_for("the host's audio", is_media("audio")).await;
    }

    let refused = viewer.publish_tracks().await;
    assert!(
        refused.is_err(),
        "LiveKit refused the viewer's tracks: {refused:?}"
    );
    let tracks: usize = app
        .livekit()
        .participants(ROOM)
        .await
        .iter()
        .map(|p| p.tracks.len())
        .sum();
    assert_eq!(tracks, 2, "only the host's camera and microphone are in the room");
}

/// LiveKit tells every client in the room of every join and leave of a
/// participant that has attributes (LiveKit Cloud's mode for rooms of
/// thousands spares viewers only those without), so a viewer with nothing
/// on the stage carries none: not in their token, nor after a mute and an
/// unmute, which change only their data permission.
#[tokio::test]
async fn a_plain_viewer_carries_no_attributes_through_a_mute_and_an_unmute() {
    use shared::handlers::moderate;
    let app = TestApp::spawn().await;
    let (host, _host) = live_host(&app).await;
    let (viewer, _client) = app.viewer_in(ROOM).await;
    let token = app.request_token(&app.token_for(viewer), ROOM).await;
    let claims = crate::helpers::verify_livekit_token(token.body["token"].as_str().unwrap());
    assert!(claims.attributes.is_empty(), "{:?}", claims.attributes);

    for (action, data) in [("mute", false), ("unmute", true)] {
        let body = json!({"roomName": ROOM, "userId": viewer, "action": action}).to_string();
        let moderated = app.call(moderate, Some(&app.token_for(host)), &body).await;
        assert_eq!(moderated.status, 200, "{}", moderated.body);
        assert_eq!(moderated.body["roomUpdated"], true, "{}", moderated.body);
        let listed = app
            .livekit()
            .participant(ROOM, &viewer.to_string())
            .await
            .expect("the viewer is in the room");
        assert_eq!(
            listed.permission.as_ref().map(|p| p.can_publish_data),
            Some(data),
            "{action}"
        );
        assert!(listed.attributes.is_empty(), "{action}: {:?}", listed.attributes);
    }
}

/// The stage attributes are the backend's: a viewer's client that sets its
/// own (`on_stage`, to be drawn on stage) changes nothing on the server, as
/// its token has no `canUpdateOwnMetadata`.
#[tokio::test]
async fn a_viewer_cannot_set_its_own_stage_attributes() {
    let app = TestApp::spawn().await;
    let (_, _host) = live_host(&app).await;
    let (viewer, mut client) = app.viewer_in(ROOM).await;
    let token = app.request_token(&app.token_for(viewer), ROOM).await;
    let claims = crate::helpers::verify_livekit_token(token.body["token"].as_str().unwrap());
    assert_eq!(
        claims.video.can_update_own_metadata,
        Some(false),
        "{:?}",
        claims.video
    );

    let asked = client
        .set_own_attributes(json!({"on_stage": "true", "hand_raised": "true"}))
        .await;
    // A non-event: watched until SETTLE has passed since the SDK answered
    // (whether it says refused or sent), not read once right after.
    let until = tokio::time::Instant::now() + SETTLE;
    loop {
        let attributes = app
            .livekit()
            .participant(ROOM, &viewer.to_string())
            .await
            .expect("the viewer is in the room")
            .attributes;
        for key in ["on_stage", "hand_raised"] {
            assert_ne!(
                attributes.get(key).map(String::as_str),
                Some("true"),
                "the server took the client's {key} (its request: {asked:?})"
            );
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn chat_reaches_every_viewer_from_the_server_and_a_viewers_own_packet_shows_its_sender() {
    let app = TestApp::spawn().await;
    let (_, host) = live_host(&app).await;
    let (ada, mut ada_client) = app.viewer_in(ROOM).await;
    let (bob, bob_client) = app.viewer_in(ROOM).await;
    // Every client knows every other participant before any packet: the SDK
    // also reports no sender for a participant its client has not learned of
    // yet, and here "no sender" must mean the server alone. (A client learns
    // of those already in the room as it joins: Bob of Ada and the host.)
    let connected = |who: Uuid| {
        move |e: &serde_json::Value| {
            e["event"] == "participant_connected" && e["identity"] == who.to_string().as_str()
        }
    };
    host.wait_for("ada in the room", connected(ada)).await;
    host.wait_for("bob in the room", connected(bob)).await;
    ada_client.wait_for("bob in the room", connected(bob)).await;
    let posted = app
        .call(
            post_message,
            Some(&app.token_for(ada)),
            &json!({"roomName": ROOM, "text": "Hello, room!"}).to_string(),
        )
        .await;
    assert_eq!((posted.status, &posted.body["broadcast"]), (201, &json!(true)));
    let expected = json!({"event": "chat_messages", "messages": [posted.body["message"]]});
    for client in [&host, &ada_client, &bob_client] {
        let packets = client.wait_for_data("chat", 1).await;
        assert_eq!(packets[0].payload, expected);
        assert_eq!(packets[0].sender, None, "the backend's packet has no sender");
        assert!(packets[0].reliable);
    }

    // Ada forges a "message" on the same topic: it carries her identity.
    let forged =
        json!({"event": "chat_messages", "messages": [{"text": "free coins", "userId": Uuid::new_v4()}]});
    ada_client
        .publish_data("chat", &forged.to_string())
        .await
        .unwrap();
    for client in [&host, &bob_client] {
        let packets = client.wait_for_data("chat", 2).await;
        assert_eq!(packets[1].payload, forged);
        assert_eq!(
            packets[1].sender.as_deref(),
            Some(ada.to_string().as_str()),
            "a client can tell it is not ours"
        );
    }
}

#[tokio::test]
async fn a_token_for_an_ended_stream_is_refused_and_a_leftover_token_cannot_bring_the_room_back() {
    let app = TestApp::spawn().await;
    let (host, host_client) = live_host(&app).await;
    let (_, viewer_client) = app.viewer_in(ROOM).await;
    let leftover = app.request_token(&app.token_for(Uuid::new_v4()), ROOM).await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let ended = app.end_stream(host, ROOM).await;
    assert_eq!((ended.status, &ended.body["roomClosed"]), (200, &json!(true)));
    for client in [&host_client, &viewer_client] {
        let reason = client.wait_disconnected().await;
        assert!(
            reason.contains("ROOM_DELETED") || reason.contains("deleted"),
            "{reason}"
        );
    }
    app.request_token(&app.token_for(Uuid::new_v4()), ROOM)
        .await
        .assert_error(409, "stream_ended");
    let late = app.join(&leftover).await;
    assert!(
        late.is_err(),
        "room.auto_create is false: the token cannot make the room again"
    );
    assert!(!app.has_room(ROOM).await);
}

/// Joins and leaves of several viewers, one user on two devices, and a viewer
/// whose process dies: the count follows the server's webhooks. Each step
/// first waits for the webhooks that step makes LiveKit send, then reads the
/// count, so a step whose events were misread cannot pass on the count the
/// previous step left.
#[tokio::test]
async fn viewer_counts_follow_the_servers_webhooks() {
    let app = TestApp::spawn().await;
    let (_, _host) = live_host(&app).await;
    let (_, mut ada) = app.viewer_in(ROOM).await;
    let (_, _bob) = app.viewer_in(ROOM).await;
    let (carol, carol_phone) = app.viewer_in(ROOM).await;
    app.wait_for_webhooks("participant_joined", 4).await; // the host and three viewers
    assert_eq!(app.viewer_count(ROOM).await, 3);

    // Carol on a second device: LiveKit keeps one connection per identity
    // (the new one replaces the old, whose departure it reports too), and she
    // counts once either way, whatever order the two events arrive in.
    let carol_tablet = app.join_as(carol, ROOM).await;
    carol_phone.wait_disconnected().await;
    app.wait_for_webhooks("participant_joined", 5).await;
    app.wait_for_webhooks("participant_left", 1).await;
    assert_eq!(
        app.viewer_count(ROOM).await,
        3,
        "the replaced phone's departure must not take Carol out: {:?}",
        app.delivered_webhooks()
    );

    ada.leave().await;
    app.wait_for_webhooks("participant_left", 2).await;
    assert_eq!(app.viewer_count(ROOM).await, 2);

    // The tablet's process dies: no clean leave. LiveKit reports the
    // participant gone once its ICE timeouts run out (fixed in LiveKit
    // 1.13.5's code: about 20 s measured here), and the count follows.
    let started = std::time::Instant::now();
    let mut tablet = carol_tablet;
    tablet.kill().await;
    app.wait_for_webhooks_within("participant_left", 3, ICE_GIVE_UP)
        .await;
    eprintln!(
        "LiveKit reported the killed viewer gone after {:?}",
        started.elapsed()
    );
    assert_eq!(app.viewer_count(ROOM).await, 1);

    // A hidden participant (a recorder) never counts.
    let recorder = app.livekit().token(
        "recorder",
        ROOM,
        VideoGrants {
            hidden: true,
            can_subscribe: Some(true),
            can_publish: Some(false),
            ..VideoGrants::default()
        },
    );
    let _recorder = app.join(&recorder).await.unwrap();
    app.wait_for_webhooks("participant_joined", 6).await;
    assert_eq!(app.viewer_count(ROOM).await, 1);
}

/// The host's phone drops (process killed, no clean leave) while the room is
/// otherwise empty, and comes back within the room's departure timeout: once
/// LiveKit gives up on the dropped connection the departure timer runs, and
/// the host's return keeps the same room instance and the stream live, with
/// the count exact at each step. Without the host coming back, the room
/// closes after the timeout and `room_finished` ends the stream.
#[tokio::test]
async fn the_host_may_reconnect_within_the_departure_timeout_and_after_it_the_stream_ends() {
    use std::time::{Duration, Instant};
    // Long enough for a new client process to connect, short beside the bounds.
    const DEPARTURE: Duration = Duration::from_secs(10);
    let app = app_with_departure(DEPARTURE.as_secs() as u32).await;
    let (host, mut host_phone) = live_host(&app).await;
    let (_, mut viewer) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let room_sid = app.livekit().room(ROOM).await.expect("the room is open").sid;

    viewer.leave().await;
    app.wait_for_viewer_count(ROOM, 0).await;
    host_phone.kill().await;
    // LiveKit reports the dropped host gone once its ICE timeouts run out;
    // from then on the room is empty and its departure timer runs.
    let deadline = Instant::now() + ICE_GIVE_UP;
    while !app.livekit().participants(ROOM).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dropped host is still in the room after {ICE_GIVE_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let emptied = Instant::now();
    app.wait_for_webhooks("participant_left", 2).await;
    assert_eq!(app.viewer_count(ROOM).await, 0, "the host never counts");

    // The app retries the start and the host connects with its token.
    let started = app
        .call(
            shared::handlers::start_stream,
            Some(&app.token_for(host)),
            &json!({"title": "A stream", "roomName": ROOM}).to_string(),
        )
        .await;
    assert_eq!(started.status, 200, "a retried start: {}", started.body);
    let mut back = Participant::connect(
        started.body["serverUrl"].as_str().unwrap(),
        started.body["token"].as_str().unwrap(),
    )
    .await
    .expect("the host reconnects");
    assert!(
        emptied.elapsed() < DEPARTURE,
        "the host took {:?} to come back, longer than the departure timeout: the test proves nothing",
        emptied.elapsed()
    );

    // Until past the moment the empty room would have closed, checked all
    // along: the same instance is open, the stream live, and no room_finished
    // came. (Proving that nothing happens takes watching past its deadline.)
    let watched_until = emptied + DEPARTURE + Duration::from_secs(3);
    loop {
        let room = app
            .livekit()
            .room(ROOM)
            .await
            .expect("the room outlived its departure timeout");
        assert_eq!(room.sid, room_sid, "the same room instance, not a new one");
        assert!(app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live"));
        assert!(
            !app.delivered_webhooks().iter().any(|(e, _)| e == "room_finished"),
            "{:?}",
            app.delivered_webhooks()
        );
        if Instant::now() >= watched_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, mut late_viewer) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    late_viewer.leave().await;
    app.wait_for_viewer_count(ROOM, 0).await;
    back.leave().await;

    // Everyone gone: after the departure timeout LiveKit closes the room.
    let deadline = Instant::now() + DEPARTURE + SETTLE * 3;
    while app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live") {
        assert!(
            Instant::now() < deadline,
            "room_finished did not end the stream; webhooks: {:?}",
            app.delivered_webhooks()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        app.delivered_webhooks()
            .iter()
            .any(|(e, o)| e == "room_finished" && o == "applied")
    );
    assert_eq!(app.viewer_count(ROOM).await, 0);
}

/// Every viewer receives the room's count from the server, at most once a
/// second, on topic `viewers`: no Realtime subscription needed for it.
#[tokio::test]
async fn the_room_is_told_its_viewer_count() {
    let app = TestApp::spawn().await;
    let started_ms = chrono::Utc::now().timestamp_millis();
    let (_, host) = live_host(&app).await;
    let (_, _ada) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let (_, _bob) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 2).await;
    // Bob's join came within a second of Ada's: its count is the flusher's to push.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let mut packets: Vec<(i64, i64)> = host
            .data_on("viewers")
            .iter()
            .map(|p| {
                assert_eq!(p.sender, None);
                assert_eq!(p.payload["event"], "viewer_count");
                let counted_at = p.payload["countedAt"].as_i64().unwrap();
                assert!(counted_at >= started_ms, "{:?}", p.payload);
                (counted_at, p.payload["viewerCount"].as_i64().unwrap())
            })
            .collect();
        // The lossy channel may reorder them; countedAt puts them in order.
        packets.sort();
        let counts: Vec<i64> = packets.iter().map(|(_, count)| *count).collect();
        if counts.last() == Some(&2) {
            assert_eq!(counts.first(), Some(&1), "{counts:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counts pushed: {counts:?}");
        shared::scheduled::flush::flush_once(&app.state).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A count's `countedAt` is when it was read, whenever its push goes out:
/// a push that waited behind others (LiveKit slow, sixteen rooms at a time)
/// must not look newer to clients than a count read after it.
#[tokio::test]
async fn a_pushed_count_carries_the_time_it_was_read() {
    let app = TestApp::spawn().await;
    let (_, host) = live_host(&app).await;
    let room = shared::domain::RoomName::parse(ROOM.into()).unwrap();
    let read_at = chrono::Utc::now() - chrono::Duration::seconds(3);
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        // Lossy: sent again until one arrives.
        app.state
            .livekit
            .push_viewer_count(&room, 7, read_at)
            .await
            .unwrap();
        let stamps: Vec<i64> = host
            .data_on("viewers")
            .iter()
            .filter(|p| p.payload["viewerCount"] == 7)
            .filter_map(|p| p.payload["countedAt"].as_i64())
            .collect();
        if let Some(stamp) = stamps.first() {
            assert_eq!(*stamp, read_at.timestamp_millis());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no count arrived");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn attribute_of(
    identity: String,
    key: &'static str,
    value: &'static str,
) -> impl Fn(&serde_json::Value) -> bool {
    move |e| e["event"] == "attributes_changed" && e["identity"] == identity && e["attributes"][key] == value
}

/// Polls what `client` knows of `identity`'s attributes until `key` is
/// `value`. (The Python SDK updates a remote participant's attributes
/// without always emitting its change event, so the state is what counts.)
async fn until_attribute(client: &mut Participant, identity: Uuid, key: &str, value: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let attributes = client.remote_attributes().await;
        if attributes[identity.to_string()][key] == value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{identity}'s {key} is not {value} within {SETTLE:?}: {attributes}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The guest on stage publishes a camera and a microphone, and the host
/// receives both.
async fn guest_publishes_to_the_host(host: &Participant, guest: &mut Participant, viewer: Uuid) {
    guest
        .publish_tracks()
        .await
        .expect("a guest on stage may publish");
    for kind in ["video", "audio"] {
        host.wait_for("the guest's media", |e| {
            e["event"] == "media_received" && e["kind"] == kind && e["participant"] == viewer.to_string()
        })
        .await;
    }
}

/// Off the stage: LiveKit unpublishes the guest's tracks (the host's
/// subscriptions end), takes their permission, and the room sees
/// `on_stage` false.
async fn guest_went_off_stage(host: &mut Participant, guest: &Participant, viewer: Uuid) {
    for kind in ["video", "audio"] {
        host.wait_for("the guest's tracks stopping", |e| {
            e["event"] == "track_unsubscribed" && e["kind"] == kind && e["participant"] == viewer.to_string()
        })
        .await;
    }
    guest
        .wait_for("the permission gone", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == false
        })
        .await;
    until_attribute(host, viewer, "on_stage", "false").await;
}

/// A stage change that was served and reached the room.
fn stage_changed(response: crate::helpers::TestResponse) -> crate::helpers::TestResponse {
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body["roomUpdated"], true, "{}", response.body);
    response
}

#[tokio::test]
async fn a_viewer_on_stage_publishes_to_the_host_until_the_host_removes_them() {
    use shared::handlers::{accept_stage, invite_to_stage, raise_hand, remove_from_stage};
    let app = TestApp::spawn().await;
    let (host, mut host_client) = live_host(&app).await;
    let (viewer, mut guest) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let (host_t, viewer_t) = (app.token_for(host), app.token_for(viewer));

    // The hand and the invitation are attributes every client sees; neither
    // lets the viewer publish.
    stage_changed(
        app.call(
            raise_hand,
            Some(&viewer_t),
            &json!({"roomName": ROOM, "raised": true}).to_string(),
        )
        .await,
    );
    until_attribute(&mut host_client, viewer, "hand_raised", "true").await;
    let invite = json!({"roomName": ROOM, "userId": viewer}).to_string();
    stage_changed(app.call(invite_to_stage, Some(&host_t), &invite).await);
    guest
        .wait_for(
            "the invitation",
            attribute_of(viewer.to_string(), "stage_invited", "true"),
        )
        .await;
    let in_livekit = app.livekit().participants(ROOM).await;
    let invited = in_livekit
        .iter()
        .find(|p| p.identity == viewer.to_string())
        .expect("the invited viewer is in the room");
    let permission = invited.permission.clone().unwrap_or_default();
    assert!(
        !permission.can_publish,
        "invited, not yet accepted: {permission:?}"
    );
    let token = app.request_token(&viewer_t, ROOM).await;
    let claims = crate::helpers::verify_livekit_token(token.body["token"].as_str().unwrap());
    assert_eq!(claims.video.can_publish, Some(false), "an invitation's token");

    // Accepted: LiveKit lets them publish, and the host receives their media.
    let accepted = stage_changed(
        app.call(
            accept_stage,
            Some(&viewer_t),
            &json!({"roomName": ROOM}).to_string(),
        )
        .await,
    );
    assert_eq!(accepted.body["onStage"], true);
    guest
        .wait_for("permission to publish", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == true
        })
        .await;
    // Camera and microphone only, as LiveKit holds it: no screen share.
    let on_stage = app.livekit().participants(ROOM).await;
    let permission = on_stage
        .iter()
        .find(|p| p.identity == viewer.to_string())
        .and_then(|p| p.permission.clone())
        .expect("the guest is in the room, with a permission");
    assert!(permission.can_publish, "{permission:?}");
    let mut sources = permission.can_publish_sources.clone();
    sources.sort_unstable();
    let mut camera_and_microphone = vec![
        livekit_protocol::TrackSource::Camera as i32,
        livekit_protocol::TrackSource::Microphone as i32,
    ];
    camera_and_microphone.sort_unstable();
    assert_eq!(sources, camera_and_microphone, "{permission:?}");
    guest_publishes_to_the_host(&host_client, &mut guest, viewer).await;
    until_attribute(&mut host_client, viewer, "on_stage", "true").await;
    // A token they get while on stage carries the grant (camera and microphone only).
    let token = app.request_token(&viewer_t, ROOM).await;
    let claims = crate::helpers::verify_livekit_token(token.body["token"].as_str().unwrap());
    assert_eq!(claims.video.can_publish, Some(true));
    assert_eq!(claims.video.can_publish_sources, ["camera", "microphone"]);
    assert_eq!(claims.attributes["on_stage"], "true");
    // So does one from LiveKit's standard token endpoint.
    let standard = app
        .call(
            shared::handlers::issue_standard_token,
            Some(&viewer_t),
            &json!({"room_name": ROOM, "participant_name": "Guest"}).to_string(),
        )
        .await;
    assert_eq!(standard.status, 201, "{}", standard.body);
    let claims = crate::helpers::verify_livekit_token(standard.body["participant_token"].as_str().unwrap());
    assert_eq!(claims.video.can_publish, Some(true));
    assert_eq!(claims.video.can_publish_sources, ["camera", "microphone"]);

    // Removed: LiveKit takes the permission and unpublishes their tracks.
    stage_changed(app.call(remove_from_stage, Some(&host_t), &invite).await);
    guest_went_off_stage(&mut host_client, &guest, viewer).await;
    let after = app.request_token(&viewer_t, ROOM).await;
    let claims = crate::helpers::verify_livekit_token(after.body["token"].as_str().unwrap());
    assert_eq!(claims.video.can_publish, Some(false));
    assert!(claims.video.can_publish_sources.is_empty());
}

#[tokio::test]
async fn a_guest_who_leaves_the_room_leaves_the_stage_and_an_old_token_cannot_publish() {
    use shared::handlers::{accept_stage, invite_to_stage};
    let app = TestApp::spawn().await;
    let (host, host_client) = live_host(&app).await;
    let (viewer, mut guest) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let viewer_t = app.token_for(viewer);
    let invite = json!({"roomName": ROOM, "userId": viewer}).to_string();
    assert_eq!(
        app.call(invite_to_stage, Some(&app.token_for(host)), &invite)
            .await
            .status,
        200
    );
    assert_eq!(
        app.call(
            accept_stage,
            Some(&viewer_t),
            &json!({"roomName": ROOM}).to_string()
        )
        .await
        .status,
        200
    );
    // A token minted on stage, kept for later.
    let on_stage = app.request_token(&viewer_t, ROOM).await;
    let old_token = on_stage.body["token"].as_str().unwrap().to_owned();

    guest.leave().await;
    app.wait_for_viewer_count(ROOM, 0).await;
    let row = app
        .db()
        .await
        .query_one(
            "SELECT on_stage_since IS NULL FROM live_stage WHERE room_name = $1 AND user_id = $2",
            &[&ROOM, &viewer],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "leaving the room ended the turn");

    // Back with the token minted on stage: the webhook takes the grant away.
    let mut back = app.join(&old_token).await.expect("the old token still joins");
    back.wait_for("the stage grant taken back", |e| {
        e["event"] == "permissions_changed" && e["can_publish"] == false
    })
    .await;
    let refused = back.publish_tracks().await;
    assert!(refused.is_err(), "off stage, publishing is refused: {refused:?}");
    drop(host_client);
}

/// LiveKit admits a publish-only side connection on any token that may
/// publish (`/rtc?publish=<name>`, identity `<identity>#<name>`). A guest's
/// token minted on stage would thus keep publishing beside every rule kept
/// for their own identity (taken off the stage, banned): the webhook removes
/// the side connection of anyone but the streamer at its join. The
/// streamer's (a second camera) stays; neither is counted as a viewer.
#[tokio::test]
async fn a_side_connection_is_the_streamers_alone_and_never_counted() {
    let app = TestApp::spawn().await;
    let (host, _host_client) = live_host(&app).await;
    let (viewer, _guest) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    bring_on_stage(&app, host, viewer).await;
    let viewer_t = app.token_for(viewer);
    let on_stage = app.request_token(&viewer_t, ROOM).await;
    let url = app.livekit_url();

    let side = Participant::connect_publish_only(&url, on_stage.body["token"].as_str().unwrap(), "cam2")
        .await
        .expect("LiveKit admits the side connection");
    assert_eq!(side.identity, format!("{viewer}#cam2"));
    side.wait_disconnected().await;

    let host_token = app.request_token(&app.token_for(host), ROOM).await;
    let host_side =
        Participant::connect_publish_only(&url, host_token.body["token"].as_str().unwrap(), "cam2")
            .await
            .expect("LiveKit admits the side connection");
    app.wait_for_webhooks("participant_joined", 4).await;
    let report = shared::scheduled::reconcile::reconcile(&app.state, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        report.corrected, 0,
        "the streamer's side connection stays: {report:?}"
    );
    let listed: Vec<String> = app
        .livekit()
        .participants(ROOM)
        .await
        .into_iter()
        .map(|p| p.identity)
        .collect();
    assert!(listed.contains(&host_side.identity), "{listed:?}");
    assert!(
        !listed
            .iter()
            .any(|identity| identity.starts_with(&format!("{viewer}#"))),
        "{listed:?}"
    );
    assert_eq!(app.viewer_count(ROOM).await, 1, "the guest alone is a viewer");
}

/// A guest whose connection was lost, back after their time to return but
/// before the reconciler's run, with the token they got on stage: their
/// join ends the turn (migration 0054), and the webhook takes the grant back
/// in the room.
#[tokio::test]
async fn a_guest_back_after_the_time_to_return_cannot_publish_with_a_token_minted_on_stage() {
    let app = TestApp::spawn().await;
    let (host, host_client) = live_host(&app).await;
    let (viewer, mut guest) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let viewer_t = app.token_for(viewer);
    app.take_stage(host, ROOM, viewer).await;
    let on_stage = app.request_token(&viewer_t, ROOM).await;
    let old_token = on_stage.body["token"].as_str().unwrap().to_owned();

    guest.leave().await;
    app.wait_for_viewer_count(ROOM, 0).await;
    // As a lost connection leaves it once its time to return has passed:
    // still on stage, away for longer than STAGE_RETURN_SECONDS (60 s).
    app.db()
        .await
        .execute(
            "UPDATE live_stage SET on_stage_since = now() - interval '5 minutes', was_on_stage = true,
                                   away_since = now() - interval '61 seconds'
             WHERE room_name = $1 AND user_id = $2",
            &[&ROOM, &viewer],
        )
        .await
        .unwrap();

    let mut back = app.join(&old_token).await.expect("the old token still joins");
    back.wait_for("the stage grant taken back", |e| {
        e["event"] == "permissions_changed" && e["can_publish"] == false
    })
    .await;
    let row = app
        .db()
        .await
        .query_one(
            "SELECT on_stage_since IS NULL AND away_since IS NULL FROM live_stage
             WHERE room_name = $1 AND user_id = $2",
            &[&ROOM, &viewer],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the join ended the turn");
    let refused = back.publish_tracks().await;
    assert!(refused.is_err(), "off stage, publishing is refused: {refused:?}");
    drop(host_client);
}

/// Guests whose connections dropped come back with the tokens they have,
/// but LiveKit never delivers their joins' webhooks (its queue for the room
/// was full). A full stage meanwhile frees no place of a guest LiveKit
/// lists. The reconciler's next run, after their time to return (2 s here),
/// finds them listed and judges each by when LiveKit says they joined: back
/// in time, the guest keeps the turn and goes on publishing; back late, the
/// turn is over and the room takes the grant back.
#[tokio::test]
async fn a_guest_back_whose_join_was_lost_is_judged_by_when_they_joined() {
    use crate::helpers::deliver_participant_event;
    use shared::handlers::invite_to_stage;
    let app = TestApp::spawn_with_settings(vec![("STAGE_RETURN_SECONDS", "2".into())]).await;
    let (host, _host_client) = live_host(&app).await;
    let host_t = app.token_for(host);
    let standing = |guest: Uuid| app.on_stage_and_away(ROOM, guest);

    // Two guests on stage, each with a token minted there.
    let mut guests = Vec::new();
    for n in 1..=2 {
        let (guest, connection) = app.viewer_in(ROOM).await;
        app.wait_for_viewer_count(ROOM, n).await;
        app.take_stage(host, ROOM, guest).await;
        let token = app.request_token(&app.token_for(guest), ROOM).await.body["token"]
            .as_str()
            .unwrap()
            .to_owned();
        guests.push((guest, connection, token));
    }
    let listed = app.livekit().participants(ROOM).await;
    let sid_of = |guest: Uuid| {
        listed
            .iter()
            .find(|p| p.identity == guest.to_string())
            .expect("the guest is in the room")
            .sid
            .clone()
    };

    // Both connections drop (told as lost signal connections); the webhooks
    // of what follows are lost.
    app.lose_webhooks(true);
    for (guest, connection, _) in &mut guests {
        connection.leave().await;
        let fields = json!({
            "name": "Guest", "state": "DISCONNECTED",
            "permission": {"canSubscribe": true, "canPublish": true, "canPublishData": true},
            "disconnectReason": "SIGNAL_CLOSE",
        });
        let (sid, identity) = (sid_of(*guest), guest.to_string());
        deliver_participant_event(
            &app,
            "participant_left",
            ROOM,
            (&sid, &identity),
            fields,
            chrono::Utc::now(),
        )
        .await;
    }
    let (in_time, late) = (guests[0].0, guests[1].0);
    let mut in_time_back = app.join(&guests[0].2).await.expect("back with the token it has");
    // The other comes back once the time to return has passed.
    let settle = std::time::Instant::now() + SETTLE;
    loop {
        let passed: bool = app
            .db_value(
                "SELECT away_since < now() - interval '2.5 seconds' FROM live_stage WHERE room_name = $1 AND user_id = $2",
                &[&ROOM, &late],
            )
            .await;
        if passed {
            break;
        }
        assert!(std::time::Instant::now() < settle);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let late_back = app.join(&guests[1].2).await.expect("back with the token it has");
    app.wait_for_lost_webhooks("participant_joined", 2).await;
    app.lose_webhooks(false);

    // A third guest fills the stage; one more invitation looks for lapsed
    // places to free, and finds none: both guests away are listed, back.
    for (n, other) in [Uuid::new_v4(), Uuid::new_v4()].into_iter().enumerate() {
        let fields = json!({
            "name": "Other", "state": "ACTIVE",
            "permission": {"canSubscribe": true, "canPublishData": true},
        });
        let (sid, identity) = (format!("PA_other_{n}"), other.to_string());
        deliver_participant_event(
            &app,
            "participant_joined",
            ROOM,
            (&sid, &identity),
            fields,
            chrono::Utc::now(),
        )
        .await;
        if n == 0 {
            app.take_stage(host, ROOM, other).await;
        } else {
            let invite = json!({"roomName": ROOM, "userId": other}).to_string();
            app.call(invite_to_stage, Some(&host_t), &invite)
                .await
                .assert_error(409, "stage_full");
        }
    }
    assert_eq!(standing(in_time).await, (true, true), "listed: left alone");
    assert_eq!(standing(late).await, (true, true), "listed: left alone");

    shared::scheduled::reconcile::reconcile(&app.state, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        standing(in_time).await,
        (true, false),
        "joined within the time to return: the same turn"
    );
    assert_eq!(
        standing(late).await,
        (false, false),
        "joined after it: the turn is over"
    );
    late_back
        .wait_for("the stage grant taken back", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == false
        })
        .await;
    in_time_back
        .publish_tracks()
        .await
        .expect("still on stage, the guest publishes");
}

/// A guest's client reconnecting in full (a network switch): it joins again
/// as a new participant with the token it has, and the server replaces the
/// old one (`DUPLICATE_IDENTITY`). The guest is still on stage and publishes
/// from the new connection; the host receives it.
#[tokio::test]
async fn a_guest_whose_client_rejoins_stays_on_stage() {
    let app = TestApp::spawn().await;
    let (host, host_client) = live_host(&app).await;
    let (viewer, first_connection) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let viewer_t = app.token_for(viewer);
    bring_on_stage(&app, host, viewer).await;
    first_connection
        .wait_for("permission to publish", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == true
        })
        .await;
    let token = app.request_token(&viewer_t, ROOM).await;

    let mut second_connection = app
        .join(token.body["token"].as_str().unwrap())
        .await
        .expect("the guest's client joins again");
    first_connection.wait_disconnected().await;
    // Both webhooks handled: the replaced session closed, the new one open.
    let identity = viewer.to_string();
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (open, closed): (i64, i64) = {
            let row = app
                .db()
                .await
                .query_one(
                    "SELECT count(*) FILTER (WHERE left_at IS NULL), count(*) FILTER (WHERE left_at IS NOT NULL)
                     FROM live_participant_sessions WHERE room_name = $1 AND identity = $2",
                    &[&ROOM, &identity],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        if (open, closed) == (1, 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions open/closed: {open}/{closed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let row = app
        .db()
        .await
        .query_one(
            "SELECT on_stage_since IS NOT NULL, away_since IS NULL FROM live_stage WHERE room_name = $1 AND user_id = $2",
            &[&ROOM, &viewer],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, bool>(1)),
        (true, true),
        "still on stage, not away"
    );
    second_connection
        .publish_tracks()
        .await
        .expect("back on the same turn, the guest publishes");
    for kind in ["video", "audio"] {
        host_client
            .wait_for("the guest's media from the new connection", |e| {
                e["event"] == "media_received" && e["kind"] == kind && e["participant"] == identity
            })
            .await;
    }
    app.wait_for_viewer_count(ROOM, 1).await;
}

/// Every other change of the stage reaches the room too: a lowered hand, a
/// declined invitation, an accept (which clears both), and a guest who
/// leaves the stage by themselves, whose tracks then stop at the host.
#[tokio::test]
async fn a_lowered_hand_a_declined_invitation_and_a_guests_own_leave_reach_the_room() {
    use shared::handlers::{accept_stage, decline_stage, invite_to_stage, raise_hand, remove_from_stage};
    let app = TestApp::spawn().await;
    let (host, mut host_client) = live_host(&app).await;
    let (viewer, mut guest) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let (host_t, viewer_t) = (app.token_for(host), app.token_for(viewer));
    let hand = |raised: bool| json!({"roomName": ROOM, "raised": raised}).to_string();
    let room_only = json!({"roomName": ROOM}).to_string();
    let invite = json!({"roomName": ROOM, "userId": viewer}).to_string();

    stage_changed(app.call(raise_hand, Some(&viewer_t), &hand(true)).await);
    until_attribute(&mut host_client, viewer, "hand_raised", "true").await;
    stage_changed(app.call(raise_hand, Some(&viewer_t), &hand(false)).await);
    until_attribute(&mut host_client, viewer, "hand_raised", "false").await;

    stage_changed(app.call(invite_to_stage, Some(&host_t), &invite).await);
    until_attribute(&mut host_client, viewer, "stage_invited", "true").await;
    stage_changed(app.call(decline_stage, Some(&viewer_t), &room_only).await);
    until_attribute(&mut host_client, viewer, "stage_invited", "false").await;

    stage_changed(app.call(raise_hand, Some(&viewer_t), &hand(true)).await);
    stage_changed(app.call(invite_to_stage, Some(&host_t), &invite).await);
    until_attribute(&mut host_client, viewer, "stage_invited", "true").await;
    stage_changed(app.call(accept_stage, Some(&viewer_t), &room_only).await);
    until_attribute(&mut host_client, viewer, "on_stage", "true").await;
    until_attribute(&mut host_client, viewer, "hand_raised", "false").await;
    until_attribute(&mut host_client, viewer, "stage_invited", "false").await;
    guest
        .wait_for("permission to publish", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == true
        })
        .await;
    guest_publishes_to_the_host(&host_client, &mut guest, viewer).await;

    // Their own leave (no userId): the same as the host's removal.
    stage_changed(app.call(remove_from_stage, Some(&viewer_t), &room_only).await);
    guest_went_off_stage(&mut host_client, &guest, viewer).await;
}

/// LiveKit keeps a room open while anyone is in it: a host who left (the app
/// closed without `/live/end`, a phone that died) left viewers in a room with
/// nothing in it, the stream live, for as long as one stayed. The reconciler
/// ends the stream once the host has been out of the room for
/// `HOST_RETURN_SECONDS` (120 s by default), and closes the room, which
/// disconnects the viewers; a host in the room, or out of it for less, keeps
/// the stream.
#[tokio::test]
async fn a_stream_whose_host_left_ends_and_its_room_closes_though_viewers_stay() {
    use shared::scheduled::reconcile::reconcile;
    const GRACE: std::time::Duration = std::time::Duration::from_secs(120);
    let app = TestApp::spawn().await;
    let (host, mut host_phone) = live_host(&app).await;
    let (_, viewer) = app.viewer_in(ROOM).await;
    app.wait_for_viewer_count(ROOM, 1).await;
    let admin = app.db().await;
    admin
        .execute(
            "UPDATE live_streams SET created_at = now() - interval '1 hour' WHERE id = $1",
            &[&ROOM],
        )
        .await
        .unwrap();
    let is_live = || async { app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live") };

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.synced, report.hosts_gone), (1, 0), "{report:?}");
    assert!(is_live().await, "the host is in the room");

    host_phone.leave().await;
    app.wait_for_webhooks("participant_left", 1).await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.hosts_gone, 0, "{report:?}");
    assert!(is_live().await, "the host left a moment ago and may come back");

    let left_at: chrono::DateTime<chrono::Utc> = admin
        .query_one(
            "UPDATE live_participant_sessions SET left_at = now() - interval '121 seconds'
             WHERE room_name = $1 AND identity = $2 RETURNING left_at",
            &[&ROOM, &host.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.hosts_gone, report.ended), (1, 1), "{report:?}");
    let row = app.stream_row(ROOM).await.unwrap();
    assert!(!row.get::<_, bool>("is_live"));
    let ended_at: chrono::DateTime<chrono::Utc> = row.get("ended_at");
    assert!(
        ended_at >= left_at + chrono::Duration::seconds(120),
        "ended at the run, not when the host left: {ended_at} against {left_at}"
    );
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_closed_at")
            .is_some()
    );
    viewer.wait_disconnected().await;
    assert!(!app.livekit().has_room(ROOM).await, "the room is closed");
    assert_eq!(app.viewer_count(ROOM).await, 0);
}
