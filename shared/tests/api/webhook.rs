//! LiveKit webhooks: signed bodies only, exact viewer counts whatever the
//! delivery order, room_finished ends the stream.

use lambda_http::Request;
use uuid::Uuid;

use crate::helpers::{
    LIVEKIT_API_SECRET, Participant, TestApp, signed_webhook, webhook_event, webhook_request,
};

struct Room {
    app: TestApp,
    streamer: Uuid,
}

const ROOM: &str = "webhook-room";

async fn live_room() -> Room {
    let app = TestApp::spawn().await;
    let streamer = Uuid::new_v4();
    app.start_stream(streamer, ROOM).await;
    Room { app, streamer }
}

impl Room {
    async fn send(&self, id: &str, event: &str, participant: Option<(&str, &str, bool)>) -> String {
        let body = webhook_event(id, event, ROOM, participant);
        let response = self.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.body["outcome"].as_str().unwrap().to_owned()
    }

    async fn count(&self) -> i32 {
        self.app.viewer_count(ROOM).await
    }
}

/// A participant event of `identity`'s session `participant_sid`, signed, as
/// the instance `room_sid` of the room reports it.
fn event_in_instance(id: &str, kind: &str, identity: &str, participant_sid: &str, room_sid: &str) -> Request {
    let body = webhook_event(id, kind, ROOM, Some((identity, participant_sid, false)));
    let mut event: serde_json::Value = serde_json::from_str(&body).unwrap();
    event["room"]["sid"] = room_sid.into();
    signed_webhook(&event.to_string(), LIVEKIT_API_SECRET)
}

/// An instance of the room that Postgres never recorded (a start re-created
/// the room and never committed its sid).
const UNRECORDED_INSTANCE: &str = "RM_an_instance_postgres_never_recorded";

impl Room {
    /// The room's instance closes with its `room_finished` lost, and the
    /// streamer's retried start makes a new one, which Postgres records.
    /// Returns the sids of the first instance and of the second.
    async fn restarted_in_a_new_instance(&self) -> (String, String) {
        let first = self.app.livekit().room(ROOM).await.unwrap().sid;
        assert_eq!(stored_sid(&self.app, ROOM).await.as_deref(), Some(first.as_str()));
        self.app.lose_webhooks(true);
        self.app.livekit().delete_room(ROOM).await;
        let retried = self
            .app
            .call(
                shared::handlers::start_stream,
                Some(&self.app.token_for(self.streamer)),
                &format!(r#"{{"title":"A stream","roomName":"{ROOM}"}}"#),
            )
            .await;
        assert_eq!(retried.status, 200, "{}", retried.body);
        let second = self.app.livekit().room(ROOM).await.unwrap().sid;
        assert_ne!(first, second);
        assert_eq!(
            stored_sid(&self.app, ROOM).await.as_deref(),
            Some(second.as_str())
        );
        (first, second)
    }
}

#[tokio::test]
async fn joins_and_leaves_keep_an_exact_count_of_viewers() {
    let room = live_room().await;
    let (ada, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let streamer = room.streamer.to_string();
    assert_eq!(
        room.send("EV_1", "participant_joined", Some((&streamer, "PA_host", false)))
            .await,
        "applied"
    );
    assert_eq!(room.count().await, 0, "the streamer is not a viewer");
    room.send("EV_2", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    room.send("EV_3", "participant_joined", Some((&bob, "PA_bob", false)))
        .await;
    room.send(
        "EV_4",
        "participant_joined",
        Some(("egress-recorder", "PA_rec", true)),
    )
    .await;
    assert_eq!(room.count().await, 2, "hidden participants are not viewers");
    room.send("EV_5", "participant_left", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 1);
    room.send(
        "EV_6",
        "participant_connection_aborted",
        Some((&bob, "PA_bob", false)),
    )
    .await;
    assert_eq!(room.count().await, 0);
}

#[tokio::test]
async fn a_replayed_event_id_is_applied_once() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_join", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    room.send("EV_leave", "participant_left", Some((&ada, "PA_ada", false)))
        .await;
    // LiveKit retries the join; the viewer must not come back.
    assert_eq!(
        room.send("EV_join", "participant_joined", Some((&ada, "PA_ada", false)))
            .await,
        "duplicate"
    );
    assert_eq!(room.count().await, 0);
}

#[tokio::test]
async fn a_leave_delivered_before_its_join_never_goes_negative_or_sticks() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_2", "participant_left", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 0);
    room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.count().await, 0, "that session already left");
}

#[tokio::test]
async fn one_viewer_on_two_devices_counts_once() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_1", "participant_joined", Some((&ada, "PA_phone", false)))
        .await;
    room.send("EV_2", "participant_joined", Some((&ada, "PA_tablet", false)))
        .await;
    assert_eq!(room.count().await, 1);
    room.send("EV_3", "participant_left", Some((&ada, "PA_phone", false)))
        .await;
    assert_eq!(room.count().await, 1, "still watching on the tablet");
}

#[tokio::test]
async fn concurrent_joins_are_all_counted() {
    let room = live_room().await;
    let identities: Vec<String> = (0..20).map(|_| Uuid::new_v4().to_string()).collect();
    let deliveries = identities.iter().enumerate().map(|(i, identity)| {
        let body = webhook_event(
            &format!("EV_{i}"),
            "participant_joined",
            ROOM,
            Some((identity, &format!("PA_{i}"), false)),
        );
        room.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
    });
    let statuses: Vec<u16> = futures::future::join_all(deliveries)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(room.count().await, 20);
}

#[tokio::test]
async fn room_finished_ends_the_stream_like_end_does() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
        .await;
    assert_eq!(room.send("EV_2", "room_finished", None).await, "applied");
    let row = room.app.stream_row(ROOM).await.unwrap();
    assert!(!row.get::<_, bool>("is_live"));
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("ended_at")
            .is_some()
    );
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_closed_at")
            .is_some()
    );
    assert_eq!(row.get::<_, i32>("viewer_count"), 0);
    let token = room.app.token_for(Uuid::new_v4());
    let late = room
        .app
        .call(
            shared::handlers::issue_token,
            Some(&token),
            &format!(r#"{{"roomName":"{ROOM}","participantName":"x"}}"#),
        )
        .await;
    late.assert_error(409, "stream_ended");
    assert!(
        room.app.has_room(ROOM).await,
        "room_finished is LiveKit's news, not a reason to delete a room"
    );
}

#[tokio::test]
async fn unknown_events_and_unknown_rooms_are_acknowledged_and_ignored() {
    let room = live_room().await;
    assert_eq!(room.send("EV_1", "track_published", None).await, "ignored");
    let body = webhook_event(
        "EV_2",
        "participant_joined",
        "some-other-room",
        Some(("x", "PA_x", false)),
    );
    let response = room.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(
        (response.status, response.body["outcome"].as_str()),
        (200, Some("ignored"))
    );
    assert_eq!(room.count().await, 0);
}

#[tokio::test]
async fn unsigned_or_tampered_webhooks_are_401_and_change_nothing() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    let body = webhook_event("EV_1", "participant_joined", ROOM, Some((&ada, "PA_ada", false)));

    let signed = signed_webhook(&body, LIVEKIT_API_SECRET);
    let authorization = signed.headers()["authorization"].to_str().unwrap().to_owned();
    // One byte of the body changed after signing: "PA_ada" becomes "PA_adb".
    let altered = body.replacen("PA_ada", "PA_adb", 1);
    assert_eq!(altered.len(), body.len());

    for request in [
        webhook_request(&altered, Some(&authorization)),
        webhook_request(&body, None),
        webhook_request(&body, Some("not-a-jwt")),
        signed_webhook(&body, "another-secret-that-livekit-did-not-use"),
    ] {
        let response = room.app.deliver(request).await;
        response.assert_error(401, "invalid_signature");
    }
    assert_eq!(room.count().await, 0);
    // The event id was not burned by the rejected deliveries.
    assert_eq!(
        room.send("EV_1", "participant_joined", Some((&ada, "PA_ada", false)))
            .await,
        "applied"
    );
    assert_eq!(room.count().await, 1);
}

#[tokio::test]
async fn a_base64_encoded_api_gateway_body_is_verified_on_its_decoded_bytes() {
    let room = live_room().await;
    let ada = Uuid::new_v4().to_string();
    let body = webhook_event("EV_1", "participant_joined", ROOM, Some((&ada, "PA_ada", false)));
    let signed = signed_webhook(&body, LIVEKIT_API_SECRET);
    let authorization = signed.headers()["authorization"].to_str().unwrap().to_owned();
    use base64::Engine;
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /live/webhook",
        "rawPath": "/live/webhook",
        "rawQueryString": "",
        "headers": {"authorization": authorization, "content-type": "application/webhook+json"},
        "requestContext": {"http": {"method": "POST", "path": "/live/webhook", "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1", "userAgent": "Go-http-client/1.1"},
            "accountId": "123456789012", "apiId": "local", "domainName": "localhost", "domainPrefix": "localhost",
            "requestId": "webhook", "routeKey": "POST /live/webhook", "stage": "$default",
            "time": "26/Nov/2026:10:00:00 +0000", "timeEpoch": 1795687200000_i64},
        "body": base64::engine::general_purpose::STANDARD.encode(&body),
        "isBase64Encoded": true,
    });
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = room.app.deliver(request).await;
    assert_eq!(
        (response.status, response.body["outcome"].as_str()),
        (200, Some("applied")),
        "{}",
        response.body
    );
    assert_eq!(room.count().await, 1);
}

/// LiveKit may let a token minted before a ban or a mute join again (this
/// server version ignores `revoke_token_ts`): the webhook enforces the
/// database on every join, here with LiveKit's own `participant_joined`.
#[tokio::test]
async fn a_banned_user_who_joins_is_removed_and_a_muted_one_muted_again() {
    let room = live_room().await;
    let host = room.app.token_for(room.streamer);
    let (banned, muted, fine) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Their tokens come from before the ban and the mute.
    let mut tokens = Vec::new();
    for user in [banned, muted, fine] {
        let response = room.app.request_token(&room.app.token_for(user), ROOM).await;
        tokens.push(response.body["token"].as_str().unwrap().to_owned());
    }
    for (user, action) in [(banned, "ban"), (muted, "mute")] {
        let body = serde_json::json!({"roomName": ROOM, "userId": user, "action": action}).to_string();
        let response = room
            .app
            .call(shared::handlers::moderate, Some(&host), &body)
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
    }

    // LiveKit admits a token it was not told to revoke: only the webhook's
    // removal on participant_joined keeps the banned viewer out.
    let banned_client = room.app.join(&tokens[0]).await.expect("LiveKit admits the token");
    let muted_client = room.app.join(&tokens[1]).await.expect("a muted viewer may watch");
    let fine_client = room.app.join(&tokens[2]).await.expect("others join");
    banned_client.wait_disconnected().await;
    muted_client
        .wait_for("its data permission taken away", |e| {
            e["event"] == "permissions_changed" && e["can_publish_data"] == false
        })
        .await;
    let present = room
        .app
        .livekit()
        .wait_for_participants(ROOM, "the banned viewer removed", |ps| {
            ps.iter().all(|p| p.identity != banned.to_string()) && ps.len() == 2
        })
        .await;
    let fine_permission = present
        .iter()
        .find(|p| p.identity == fine.to_string())
        .and_then(|p| p.permission.clone())
        .unwrap();
    assert!(
        fine_permission.can_publish_data,
        "nothing against them, nothing changed"
    );
    drop(fine_client);
}

/// A viewer banned after they got their token joins with it while
/// RoomService is down: LiveKit's own join webhook cannot remove them, so
/// they stay in the room. Returns them, their client and their session's
/// sid; RoomService is left down.
async fn banned_in_the_room_while_livekit_is_down(room: &Room) -> (Uuid, Participant, String) {
    let banned = Uuid::new_v4();
    let token = room
        .app
        .request_token(&room.app.token_for(banned), ROOM)
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ban = serde_json::json!({"roomName": ROOM, "userId": banned, "action": "ban"}).to_string();
    let response = room
        .app
        .call(
            shared::handlers::moderate,
            Some(&room.app.token_for(room.streamer)),
            &ban,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    room.app
        .set_livekit_mode(crate::helpers::LiveKitMode::Failing)
        .await;
    let client = room
        .app
        .join(&token)
        .await
        .expect("this LiveKit version lets a token from before the ban join");
    room.app.wait_for_webhooks("participant_joined", 1).await;
    let present = room
        .app
        .livekit()
        .wait_for_participants(ROOM, "the banned viewer in the room", |ps| {
            ps.iter().any(|p| p.identity == banned.to_string())
        })
        .await;
    (banned, client, present[0].sid.clone())
}

/// A join whose first delivery committed but never made LiveKit act (LiveKit
/// unreachable here; a Lambda timeout between the commit and the call in
/// production) is delivered again, and that repeat is a duplicate for the
/// counts: it must still remove a banned participant.
#[tokio::test]
async fn a_repeated_join_of_a_banned_user_still_removes_them() {
    let room = live_room().await;
    let (banned, client, sid) = banned_in_the_room_while_livekit_is_down(&room).await;
    let identity = banned.to_string();
    let first = room
        .send(
            "EV_delivered_twice",
            "participant_joined",
            Some((&identity, &sid, false)),
        )
        .await;
    assert_eq!(first, "applied");

    room.app.set_livekit_mode(crate::helpers::LiveKitMode::Up).await;
    let again = room
        .send(
            "EV_delivered_twice",
            "participant_joined",
            Some((&identity, &sid, false)),
        )
        .await;
    assert_eq!(again, "duplicate");
    client.wait_disconnected().await;
    assert_eq!(room.count().await, 0, "the duplicate counted nothing");
}

/// A join reported from an instance of the room that Postgres does not
/// record (a start re-created the room and never committed its sid) counts
/// nowhere, but the standing is the user's in that room name whatever the
/// instance: a banned user is still removed.
#[tokio::test]
async fn a_banned_user_joining_another_instance_of_the_room_is_still_removed() {
    let room = live_room().await;
    let (banned, client, _) = banned_in_the_room_while_livekit_is_down(&room).await;
    room.app.set_livekit_mode(crate::helpers::LiveKitMode::Up).await;
    let count = room.count().await;

    let response = room
        .app
        .deliver(event_in_instance(
            "EV_other_instance",
            "participant_joined",
            &banned.to_string(),
            "PA_in_the_other_instance",
            UNRECORDED_INSTANCE,
        ))
        .await;
    assert_eq!(response.body["outcome"], "ignored", "{}", response.body);
    client.wait_disconnected().await;
    // The removal's own leave closes the one session that counted.
    room.app.wait_for_viewer_count(ROOM, count - 1).await;
}

/// Both at once: the join of a banned user into an instance Postgres does not
/// record, whose first delivery committed but never made LiveKit act, is
/// delivered again; the repeat still removes them (the standing is the
/// user's in the room name, whatever the instance).
#[tokio::test]
async fn a_repeated_join_of_a_banned_user_into_another_instance_still_removes_them() {
    let room = live_room().await;
    let (banned, client, sid) = banned_in_the_room_while_livekit_is_down(&room).await;
    let join = || {
        event_in_instance(
            "EV_other_instance_twice",
            "participant_joined",
            &banned.to_string(),
            &sid,
            UNRECORDED_INSTANCE,
        )
    };
    let first = room.app.deliver(join()).await;
    assert_eq!(first.body["outcome"], "ignored", "{}", first.body);

    room.app.set_livekit_mode(crate::helpers::LiveKitMode::Up).await;
    let again = room.app.deliver(join()).await;
    assert_eq!(again.body["outcome"], "duplicate", "{}", again.body);
    client.wait_disconnected().await;
}

/// A stream ended while LiveKit was down keeps its room open for a while: a
/// viewer with a token from before the end is removed as they join, and no
/// webhook changes the ended stream's counts.
#[tokio::test]
async fn after_the_stream_ended_joins_are_removed_and_no_webhook_changes_counts() {
    let room = live_room().await;
    let (_, mut early) = room.app.viewer_in(ROOM).await;
    room.app.wait_for_viewer_count(ROOM, 1).await;
    let leftover = room
        .app
        .request_token(&room.app.token_for(Uuid::new_v4()), ROOM)
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    room.app
        .set_livekit_mode(crate::helpers::LiveKitMode::Failing)
        .await;
    let ended = room
        .app
        .call(
            shared::handlers::end_stream,
            Some(&room.app.token_for(room.streamer)),
            &format!(r#"{{"roomName":"{ROOM}"}}"#),
        )
        .await;
    assert_eq!(ended.body["roomClosed"], false, "{}", ended.body);
    room.app.set_livekit_mode(crate::helpers::LiveKitMode::Up).await;
    assert_eq!(room.count().await, 0, "an ended stream has no viewers");

    let late = room.app.join(&leftover).await;
    if let Ok(client) = &late {
        client.wait_disconnected().await;
    }
    room.app
        .livekit()
        .wait_for_participants(ROOM, "the late joiner removed", |ps| ps.len() == 1)
        .await;
    early.leave().await; // its leave arrives as a webhook too
    room.app.wait_for_webhooks("participant_left", 2).await;
    assert_eq!(room.count().await, 0);
    let outcomes: Vec<String> = room
        .app
        .delivered_webhooks()
        .into_iter()
        .filter(|(event, _)| event.starts_with("participant_"))
        .map(|(event, outcome)| format!("{event} {outcome}"))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            "participant_joined applied",
            "participant_joined ignored",
            "participant_left ignored",
            "participant_left ignored",
        ],
        "after the end nothing counts"
    );
}

/// A retried start after the empty room timed out makes a new LiveKit room
/// instance under the same name; a late `room_finished` of the previous
/// instance must not end the stream.
#[tokio::test]
async fn events_of_another_instance_of_the_room_are_ignored() {
    let room = live_room().await;
    // The first instance closes; its room_finished is held up somewhere.
    let (first, second) = room.restarted_in_a_new_instance().await;

    // A join the first instance reported late changes no count; the same
    // join in the current instance does.
    let viewer = Uuid::new_v4().to_string();
    let join_in = |id: &str, sid: &str| event_in_instance(id, "participant_joined", &viewer, "PA_late", sid);
    let count = room.app.viewer_count(ROOM).await;
    let response = room.app.deliver(join_in("EV_old_join", &first)).await;
    assert_eq!(response.body["outcome"], "ignored", "{}", response.body);
    assert_eq!(room.app.viewer_count(ROOM).await, count);
    let response = room.app.deliver(join_in("EV_join", &second)).await;
    assert_eq!(response.body["outcome"], "applied", "{}", response.body);
    assert_eq!(room.app.viewer_count(ROOM).await, count + 1);

    let finished = |id: &str, sid: &str| {
        serde_json::json!({"id": id, "event": "room_finished", "room": {"sid": sid, "name": ROOM}})
            .to_string()
    };
    let response = room
        .app
        .deliver(signed_webhook(
            &finished("EV_old_finished", &first),
            LIVEKIT_API_SECRET,
        ))
        .await;
    assert_eq!(response.body["outcome"], "ignored");
    assert!(room.app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live"));

    let response = room
        .app
        .deliver(signed_webhook(
            &finished("EV_finished", &second),
            LIVEKIT_API_SECRET,
        ))
        .await;
    assert_eq!(response.body["outcome"], "applied");
    assert!(!room.app.stream_row(ROOM).await.unwrap().get::<_, bool>("is_live"));
}

/// A viewer of the first instance whose leave is delivered only after a
/// retried start recorded a new instance (LiveKit retried it after a 503)
/// leaves all the same: the session it closes was counted, and its sid can be
/// no other's. A leave of a session this room never opened still counts
/// nowhere.
#[tokio::test]
async fn a_late_leave_from_the_previous_instance_closes_the_session_it_counted() {
    let room = live_room().await;
    let first = room.app.livekit().room(ROOM).await.unwrap().sid;
    let viewer = Uuid::new_v4().to_string();
    let event_in = |id: &str, kind: &str, participant_sid: &str, room_sid: &str| {
        event_in_instance(id, kind, &viewer, participant_sid, room_sid)
    };
    let joined = room
        .app
        .deliver(event_in("EV_join", "participant_joined", "PA_first", &first))
        .await;
    assert_eq!(joined.body["outcome"], "applied", "{}", joined.body);
    assert_eq!(room.count().await, 1);

    room.restarted_in_a_new_instance().await;
    assert_eq!(room.count().await, 1, "the viewer's leave is not told yet");

    let unknown = room
        .app
        .deliver(event_in(
            "EV_unknown_left",
            "participant_left",
            "PA_never_here",
            &first,
        ))
        .await;
    assert_eq!(unknown.body["outcome"], "ignored", "{}", unknown.body);
    let left = room
        .app
        .deliver(event_in("EV_left", "participant_left", "PA_first", &first))
        .await;
    assert_eq!(left.body["outcome"], "applied", "{}", left.body);
    assert_eq!(room.count().await, 0);
    let open: i64 = room
        .app
        .db_value(
            "SELECT count(*) FROM live_participant_sessions WHERE room_name = $1 AND left_at IS NULL",
            &[&ROOM],
        )
        .await;
    assert_eq!(open, 0, "the session is closed, its watch time with it");
}

/// A participant LiveKit migrates to another node leaves the first with
/// reason MIGRATION and goes on, same sid, on the second, which tells no
/// join: the viewer is still watching and stays counted until a real leave.
#[tokio::test]
async fn a_migrated_viewer_stays_counted_until_they_really_leave() {
    let room = live_room().await;
    let viewer = Uuid::new_v4().to_string();
    let left = |id: &str, reason: &str| {
        let body = webhook_event(
            id,
            "participant_left",
            ROOM,
            Some((&viewer, "PA_migrating", false)),
        );
        let mut event: serde_json::Value = serde_json::from_str(&body).unwrap();
        event["participant"]["disconnectReason"] = reason.into();
        signed_webhook(&event.to_string(), LIVEKIT_API_SECRET)
    };
    let joined = room
        .send(
            "EV_join",
            "participant_joined",
            Some((&viewer, "PA_migrating", false)),
        )
        .await;
    assert_eq!(joined, "applied");
    assert_eq!(room.count().await, 1);

    let migrated = room.app.deliver(left("EV_migrated", "MIGRATION")).await;
    assert_eq!(migrated.status, 200, "{}", migrated.body);
    assert_eq!(migrated.body["outcome"], "ignored", "{}", migrated.body);
    assert_eq!(room.count().await, 1, "still watching, from another node");

    let gone = room.app.deliver(left("EV_left", "CLIENT_INITIATED")).await;
    assert_eq!(gone.body["outcome"], "applied", "{}", gone.body);
    assert_eq!(room.count().await, 0);
}

async fn stored_sid(app: &TestApp, room: &str) -> Option<String> {
    app.stream_row(room).await.unwrap().get("room_sid")
}

/// The count a burst of joins leaves: exact at once where the API reads it,
/// and in `live_streams` (what Supabase Realtime sends subscribers) written at
/// most once a second, the trailing value by the flusher.
#[tokio::test]
async fn a_burst_writes_the_realtime_copy_at_most_once_a_second_and_the_flusher_writes_the_last() {
    let room = live_room().await;
    let admin = room.app.db().await;
    admin
        .batch_execute(
            "CREATE TABLE copy_writes (at timestamptz NOT NULL DEFAULT clock_timestamp(), count int);
             CREATE FUNCTION log_copy_write() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO copy_writes (count) VALUES (NEW.viewer_count); RETURN NEW; END $$;
             CREATE TRIGGER log_copy_write AFTER UPDATE OF viewer_count ON live_streams
             FOR EACH ROW WHEN (OLD.viewer_count IS DISTINCT FROM NEW.viewer_count) EXECUTE FUNCTION log_copy_write();
             GRANT INSERT ON copy_writes TO live_api;",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let joins = (0..60).map(|i| {
        let body = webhook_event(
            &format!("EV_burst_{i}"),
            "participant_joined",
            ROOM,
            Some((&Uuid::new_v4().to_string(), &format!("PA_burst_{i}"), false)),
        );
        room.app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
    });
    let statuses: Vec<u16> = futures::future::join_all(joins)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let burst = started.elapsed();
    assert_eq!(room.count().await, 60, "exact at once");

    // The flusher writes whatever the burst's last second left behind.
    let deadline = std::time::Instant::now() + crate::helpers::SETTLE;
    while room.app.realtime_viewer_count(ROOM).await != 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "the trailing copy was never written"
        );
        shared::scheduled::flush::flush_once(&room.app.state)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let writes: Vec<(chrono::DateTime<chrono::Utc>, i32)> = admin
        .query("SELECT at, count FROM copy_writes ORDER BY at", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(writes.last().map(|w| w.1), Some(60));
    for pair in writes.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= chrono::Duration::milliseconds(990),
            "two writes {gap} apart: {writes:?}"
        );
    }
    assert!(
        writes.len() as u128 <= burst.as_millis() / 1000 + 3,
        "{} writes for a burst of {burst:?}",
        writes.len()
    );
}

/// A flush-counts invocation with no time left (cargo-lambda's short local
/// deadline, or a late start) still makes one pass, so a trailing count is
/// never left unwritten for a whole invocation.
#[tokio::test]
async fn a_flush_invocation_out_of_time_still_writes_the_trailing_count() {
    let room = live_room().await;
    for i in 0..2 {
        let body = webhook_event(
            &format!("EV_trailing_{i}"),
            "participant_joined",
            ROOM,
            Some((&Uuid::new_v4().to_string(), &format!("PA_trailing_{i}"), false)),
        );
        assert_eq!(
            room.app
                .deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
                .await
                .status,
            200
        );
    }
    assert_eq!(room.count().await, 2);
    let deadline = std::time::Instant::now() + crate::helpers::SETTLE;
    while room.app.realtime_viewer_count(ROOM).await != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "an invocation without time left never flushed"
        );
        shared::scheduled::flush::flush_until(&room.app.state, std::time::Instant::now(), None).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An invocation ticks through the last second of its span: with 58 s to
/// flush it ticks at 0, 1, …, 58 s, so the next minute's invocation (due at
/// 60 s) leaves the copies at most about two seconds unflushed at the turn
/// of the minute (before, it stopped a tick early, at 57 s). A span that is
/// not a whole number of ticks delays the first: its last tick is at the
/// span's end, never after it (the next invocation may be due then).
#[tokio::test]
async fn a_flush_invocation_ticks_until_the_end_of_its_span_and_not_past_it() {
    use std::time::{Duration, Instant};
    let room = live_room().await;
    for span_ms in [2_000, 2_500] {
        let until = Instant::now() + Duration::from_millis(span_ms);
        let report = shared::scheduled::flush::flush_until(&room.app.state, until, None).await;
        assert_eq!(
            (report.ticks, report.failed_ticks),
            (3, 0),
            "{span_ms} ms: three ticks, the last at the span's end: {report:?}"
        );
        // Not sooner than the end (a lower bound, which load cannot break).
        assert!(
            Instant::now() + Duration::from_millis(100) >= until,
            "{span_ms} ms: the last tick came before the span's end"
        );
    }
}

/// With LiveKit hanging, a flush still writes the counts (Postgres first),
/// and each part of a tick waits for LiveKit only so long: the next tick
/// writes the copies Realtime sends on time, instead of after every room's
/// call has timed out (a bounded call of up to 6 s for each wave of rooms),
/// and no tick is failed or stopped at the invocation's cut-off for it.
#[tokio::test]
async fn a_hanging_livekit_does_not_hold_up_the_next_ticks_copies() {
    use std::time::{Duration, Instant};
    let room = live_room().await;
    for i in 0..2 {
        room.send(
            &format!("EV_hang_{i}"),
            "participant_joined",
            Some((&Uuid::new_v4().to_string(), &format!("PA_hang_{i}"), false)),
        )
        .await;
    }
    // The copy as the burst's last second leaves it: behind the count, and
    // written more than a second ago, so the flusher writes it.
    room.app
        .db()
        .await
        .execute(
            "UPDATE live_streams SET viewer_count = 0, viewer_count_written_at = now() - interval '10 seconds' WHERE id = $1",
            &[&ROOM],
        )
        .await
        .unwrap();
    room.app
        .set_livekit_mode(crate::helpers::LiveKitMode::Hanging)
        .await;
    let started = Instant::now();
    // Ticks at 0, 1, 2 and 3 s; cut off long after.
    let flushing = shared::scheduled::flush::flush_until(
        &room.app.state,
        started + Duration::from_secs(3),
        Some(started + Duration::from_secs(30)),
    );
    let third_viewer = async {
        let settle = Instant::now() + crate::helpers::SETTLE;
        while room.app.realtime_viewer_count(ROOM).await != 2 {
            assert!(Instant::now() < settle, "the first tick never wrote the copy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The copy is fresh: this join leaves it to a later tick.
        room.send(
            "EV_hang_2",
            "participant_joined",
            Some((&Uuid::new_v4().to_string(), "PA_hang_2", false)),
        )
        .await;
    };
    let (report, ()) = tokio::join!(flushing, third_viewer);
    assert_eq!(
        room.app.realtime_viewer_count(ROOM).await,
        3,
        "a later tick of the same invocation wrote the copy: {report:?}"
    );
    assert_eq!(
        (report.failed_ticks, report.stopped_at_cut_off),
        (0, false),
        "{report:?}"
    );
}

/// LiveKit's leave overtaking its join, both at once for a session never
/// seen: both answer 200 (neither fails on the other's insert), and the
/// session never counts.
#[tokio::test]
async fn a_join_and_its_leave_at_the_same_moment_both_apply() {
    let room = live_room().await;
    for i in 0..20 {
        let identity = Uuid::new_v4().to_string();
        let sid = format!("PA_race_{i}");
        let leave = webhook_event(
            &format!("EV_l{i}"),
            "participant_left",
            ROOM,
            Some((&identity, &sid, false)),
        );
        let join = webhook_event(
            &format!("EV_j{i}"),
            "participant_joined",
            ROOM,
            Some((&identity, &sid, false)),
        );
        let (a, b) = tokio::join!(
            room.app.deliver(signed_webhook(&leave, LIVEKIT_API_SECRET)),
            room.app.deliver(signed_webhook(&join, LIVEKIT_API_SECRET))
        );
        assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    }
    // Whichever landed first, the session has left: nobody counts.
    assert_eq!(room.count().await, 0);
}

/// LiveKit sends a room's webhooks one at a time, each once the one before
/// it is answered: a join whose count push meets a hanging LiveKit is
/// answered before its request's deadline (the push is lossy and bounded),
/// not held until LiveKit gives up, which would hold every later event of
/// the room behind it.
#[tokio::test]
async fn a_join_is_answered_in_time_while_livekit_hangs() {
    let app = TestApp::spawn_with_settings(vec![("REQUEST_DEADLINE_SECONDS", "2".into())]).await;
    app.start_stream(Uuid::new_v4(), ROOM).await;
    app.set_livekit_mode(crate::helpers::LiveKitMode::Hanging).await;
    let body = webhook_event(
        "EV_while_hanging",
        "participant_joined",
        ROOM,
        Some((&Uuid::new_v4().to_string(), "PA_while_hanging", false)),
    );
    let response = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        app.realtime_viewer_count(ROOM).await,
        1,
        "counted, and the copy written"
    );
}

/// Agents, ingress (OBS publishing into the room), egress, SIP callers are
/// in the room without being people watching, and LiveKit does not hide
/// them: their kind says so. None is counted, whatever its identity.
#[tokio::test]
async fn agents_ingress_egress_and_sip_participants_are_not_viewers() {
    let room = live_room().await;
    for (i, kind) in ["AGENT", "INGRESS", "EGRESS", "SIP"].into_iter().enumerate() {
        let event = webhook_event(
            &format!("EV_kind_{i}"),
            "participant_joined",
            ROOM,
            Some((&Uuid::new_v4().to_string(), &format!("PA_kind_{i}"), false)),
        );
        let mut event: serde_json::Value = serde_json::from_str(&event).unwrap();
        event["participant"]["kind"] = serde_json::json!(kind);
        let answer = room
            .app
            .deliver(signed_webhook(&event.to_string(), LIVEKIT_API_SECRET))
            .await;
        assert_eq!(answer.status, 200, "{kind}: {}", answer.body);
    }
    assert_eq!(room.count().await, 0, "nobody watching yet");
    let viewer = Uuid::new_v4().to_string();
    room.send(
        "EV_kind_viewer",
        "participant_joined",
        Some((&viewer, "PA_kind_viewer", false)),
    )
    .await;
    assert_eq!(room.count().await, 1, "only the person watching");
}

/// A newer LiveKit (LiveKit Cloud runs the newest) sends enum values this
/// build's protocol does not know: in a track (a new source), as the kind
/// of a participant, or as the reason for a leave. One such value fails the
/// decode of the whole event; the events still apply from the fields the
/// handler reads, an unknown kind as a participant who is not audience.
#[tokio::test]
async fn events_with_values_a_newer_livekit_added_still_apply() {
    let room = live_room().await;
    let app = &room.app;
    let deliver = |event: &str, participant: serde_json::Value| {
        let body = serde_json::json!({
            "id": format!("EV_{}", Uuid::new_v4().simple()),
            "event": event,
            "room": {"name": ROOM, "numParticipants": 2, "enabledCodecs": [{"mime": "video/H266"}]},
            "participant": participant,
            "createdAt": chrono::Utc::now().timestamp().to_string(),
            "newTopLevelField": {"anything": true},
        })
        .to_string();
        app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
    };
    let viewer = Uuid::new_v4().to_string();
    let joined = deliver(
        "participant_joined",
        serde_json::json!({
            "sid": "PA_viewer", "identity": viewer, "name": "Viewer", "state": "ACTIVE",
            "kind": "STANDARD", "kindDetails": ["SOMETHING_NEWER"],
            "tracks": [{"sid": "TR_1", "type": "VIDEO", "source": "HOLOGRAM"}],
            "permission": {"canSubscribe": true, "canPublishData": true},
        }),
    )
    .await;
    assert_eq!(
        (joined.status, &joined.body["outcome"]),
        (200, &serde_json::json!("applied")),
        "{}",
        joined.body
    );
    assert_eq!(room.count().await, 1);

    let robot = deliver(
        "participant_joined",
        serde_json::json!({
            "sid": "PA_robot", "identity": "robot-1", "state": "ACTIVE", "kind": "TELEPORTER",
            "permission": {"canSubscribe": true},
        }),
    )
    .await;
    assert_eq!(robot.status, 200, "{}", robot.body);
    assert_eq!(
        room.count().await,
        1,
        "a participant of an unknown kind is not audience"
    );
    let left = deliver(
        "participant_left",
        serde_json::json!({
            "sid": "PA_viewer", "identity": viewer, "state": "DISCONNECTED",
            "disconnectReason": "WORMHOLE_COLLAPSED",
        }),
    )
    .await;
    assert_eq!(
        (left.status, &left.body["outcome"]),
        (200, &serde_json::json!("applied")),
        "{}",
        left.body
    );
    assert_eq!(room.count().await, 0);
}
