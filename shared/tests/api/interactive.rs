//! The stage, reactions, the viewer list and the stats beyond their statuses
//! (those are in `openapi.rs`): what the numbers say after real events, what
//! the room is told, and which layer enforces what.

use std::time::{Duration, Instant};

use lambda_http::http::Method;
use serde_json::{Value, json};
use shared::handlers::{
    accept_stage, decline_stage, delete_message, end_stream, invite_to_stage, list_viewers, moderate,
    post_message, react, remove_from_stage, stream_stats,
};
use uuid::Uuid;

use crate::helpers::{
    LiveKitMode, Participant, SETTLE, TestApp, deliver_participant_event, get_request, request_with,
    verify_livekit_token,
};

/// A participant webhook as LiveKit sends it, with the display name.
async fn participant(
    app: &TestApp,
    event: &str,
    room: &str,
    identity: &str,
    sid: &str,
    name: &str,
    hidden: bool,
) {
    let fields = json!({
        "name": name, "state": "ACTIVE",
        "permission": {"canSubscribe": true, "canPublishData": true, "hidden": hidden},
    });
    deliver_participant_event(app, event, room, (sid, identity), fields, chrono::Utc::now()).await;
}

/// A `participant_left` for which LiveKit gives `reason` (its
/// `DisconnectReason`, as the server's JSON names it).
async fn left_because(app: &TestApp, room: &str, identity: &str, sid: &str, reason: &str) {
    let fields = json!({
        "name": "Guest", "state": "DISCONNECTED",
        "permission": {"canSubscribe": true, "canPublish": true, "canPublishData": true},
        "disconnectReason": reason,
    });
    let answer = deliver_participant_event(
        app,
        "participant_left",
        room,
        (sid, identity),
        fields,
        chrono::Utc::now(),
    )
    .await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
}

/// Marks `user`'s stage row in `room` away since `seconds` ago (their
/// connection lost then, as a leave would record it).
async fn away_for(db: &tokio_postgres::Client, room: &str, user: Uuid, seconds: u32) {
    db.execute(
        "UPDATE live_stage SET away_since = now() - make_interval(secs => $3) WHERE room_name = $1 AND user_id = $2",
        &[&room, &user, &f64::from(seconds)],
    )
    .await
    .unwrap();
}

async fn stats(app: &TestApp, host: Uuid, room: &str) -> Value {
    let response = app
        .send(
            stream_stats,
            get_request(Some(&app.token_for(host)), &[], Some(room)),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.body["stats"].clone()
}

/// Flushes until the Realtime copy of the count (and so the sampled peak)
/// says `count`: the flusher writes it at most once a second.
async fn flushed(app: &TestApp, room: &str, count: i32) {
    let deadline = Instant::now() + SETTLE;
    while app.realtime_viewer_count(room).await != count {
        assert!(Instant::now() < deadline, "the copy never said {count}");
        shared::scheduled::flush::flush_once(&app.state).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Chat that never went out (LiveKit down in the stream's last seconds) is
/// counted once the stream ends, on the row the batches count on: the final
/// stats no longer count unsent messages at every read (migration 0045).
#[tokio::test]
async fn an_ended_streams_unsent_chat_is_settled_into_its_count() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "unsent-chat";
    app.start_stream(host, room).await;
    let said = json!({"roomName": room, "text": "sent"}).to_string();
    let posted = app
        .call(post_message, Some(&app.token_for(Uuid::new_v4())), &said)
        .await;
    assert_eq!((posted.status, &posted.body["broadcast"]), (201, &json!(true)));
    app.set_livekit_mode(LiveKitMode::Failing).await;
    for _ in 0..3 {
        let unsent = json!({"roomName": room, "text": "never sent"}).to_string();
        let posted = app
            .call(post_message, Some(&app.token_for(Uuid::new_v4())), &unsent)
            .await;
        assert_eq!((posted.status, &posted.body["broadcast"]), (201, &json!(false)));
    }
    let ended = app
        .call(
            shared::handlers::end_stream,
            Some(&app.token_for(host)),
            &json!({"roomName": room}).to_string(),
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(
        crate::helpers::chat_settled(&app.db().await, room).await,
        Some((4, true)),
        "every message counted on the batches' row, none left to count at read time"
    );
    assert_eq!(stats(&app, host, room).await["chatMessages"], 4);
}

#[tokio::test]
async fn stats_follow_the_events_and_are_final_once_the_stream_ends() {
    let app = TestApp::spawn().await;
    let (host, ada, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let room = "stats-room";
    app.start_stream(host, room).await;
    let fresh = stats(&app, host, room).await;
    assert_eq!(
        (
            &fresh["uniqueViewers"],
            &fresh["peakViewers"],
            &fresh["peakAt"],
            &fresh["averageWatchSeconds"]
        ),
        (&json!(0), &json!(0), &Value::Null, &json!(0.0))
    );

    // Ada on two devices, Bob once; the host and a hidden recorder are not viewers.
    participant(
        &app,
        "participant_joined",
        room,
        &ada.to_string(),
        "PA_ada1",
        "Ada",
        false,
    )
    .await;
    participant(
        &app,
        "participant_joined",
        room,
        &ada.to_string(),
        "PA_ada2",
        "Ada",
        false,
    )
    .await;
    participant(
        &app,
        "participant_joined",
        room,
        &bob.to_string(),
        "PA_bob",
        "Bob",
        false,
    )
    .await;
    participant(
        &app,
        "participant_joined",
        room,
        &host.to_string(),
        "PA_host",
        "Host",
        false,
    )
    .await;
    participant(&app, "participant_joined", room, "recorder", "PA_rec", "", true).await;
    flushed(&app, room, 2).await;
    participant(
        &app,
        "participant_left",
        room,
        &bob.to_string(),
        "PA_bob",
        "Bob",
        false,
    )
    .await;
    // Bob again: still one unique viewer.
    participant(
        &app,
        "participant_joined",
        room,
        &bob.to_string(),
        "PA_bob2",
        "Bob",
        false,
    )
    .await;
    participant(
        &app,
        "participant_left",
        room,
        &bob.to_string(),
        "PA_bob2",
        "Bob",
        false,
    )
    .await;

    for text in ["one", "two", "three"] {
        let posted = app
            .call(
                post_message,
                Some(&app.token_for(ada)),
                &json!({"roomName": room, "text": text}).to_string(),
            )
            .await;
        assert_eq!(posted.status, 201, "{}", posted.body);
    }
    for (user, kind) in [(ada, "heart"), (bob, "heart"), (bob, "fire")] {
        let tapped = app
            .call(
                react,
                Some(&app.token_for(user)),
                &json!({"roomName": room, "kind": kind}).to_string(),
            )
            .await;
        assert_eq!(tapped.status, 200, "{}", tapped.body);
    }
    let invite = json!({"roomName": room, "userId": ada}).to_string();
    assert_eq!(
        app.call(invite_to_stage, Some(&app.token_for(host)), &invite)
            .await
            .status,
        200
    );
    let answer = json!({"roomName": room}).to_string();
    assert_eq!(
        app.call(accept_stage, Some(&app.token_for(ada)), &answer)
            .await
            .status,
        200
    );
    // Off and on again: one guest.
    assert_eq!(
        app.call(remove_from_stage, Some(&app.token_for(ada)), &answer)
            .await
            .status,
        200
    );
    assert_eq!(
        app.call(invite_to_stage, Some(&app.token_for(host)), &invite)
            .await
            .status,
        200
    );
    assert_eq!(
        app.call(accept_stage, Some(&app.token_for(ada)), &answer)
            .await
            .status,
        200
    );

    let live = stats(&app, host, room).await;
    assert_eq!(live["isLive"], true);
    assert_eq!(live["viewerCount"], 1, "{live}");
    assert_eq!(live["uniqueViewers"], 2, "{live}");
    assert_eq!(live["peakViewers"], 2, "{live}");
    assert!(live["peakAt"].is_string());
    assert_eq!(live["chatMessages"], 3, "{live}");
    assert_eq!(live["reactions"], json!({"heart": 2, "fire": 1}));
    assert_eq!(live["stageGuests"], 1);
    let watched = live["totalWatchSeconds"].as_f64().unwrap();
    let duration = live["durationSeconds"].as_f64().unwrap();
    assert!(watched > 0.0 && watched <= 2.0 * duration + 0.01, "{live}");
    assert!((live["averageWatchSeconds"].as_f64().unwrap() - watched / 2.0).abs() < 1e-6);
    // While live, Ada's time keeps adding up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = stats(&app, host, room).await;
    assert!(
        later["totalWatchSeconds"].as_f64().unwrap() >= watched + 0.25,
        "{later}"
    );

    let ended = app
        .call(shared::handlers::end_stream, Some(&app.token_for(host)), &answer)
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let last = stats(&app, host, room).await;
    assert_eq!(
        (&last["isLive"], &last["viewerCount"]),
        (&json!(false), &json!(0))
    );
    assert!(last["endedAt"].is_string());
    assert_eq!(
        (&last["peakViewers"], &last["uniqueViewers"]),
        (&json!(2), &json!(2))
    );
    // Events after the end change nothing: the figures are final.
    participant(
        &app,
        "participant_left",
        room,
        &ada.to_string(),
        "PA_ada1",
        "Ada",
        false,
    )
    .await;
    participant(
        &app,
        "participant_joined",
        room,
        &Uuid::new_v4().to_string(),
        "PA_late",
        "Late",
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats(&app, host, room).await, last);
    let stranger = app
        .send(
            stream_stats,
            get_request(Some(&app.token_for(ada)), &[], Some(room)),
        )
        .await;
    stranger.assert_error(403, "forbidden");
}

#[tokio::test]
async fn the_viewer_list_shows_present_viewers_only_and_others_what_the_setting_allows() {
    for (visible_to, others_see_list) in [("host", false), ("viewers", true)] {
        let app = TestApp::spawn_with_settings(vec![("VIEWER_LIST_VISIBLE_TO", visible_to.to_owned())]).await;
        let (host, ada, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let room = "watchers";
        app.start_stream(host, room).await;
        participant(
            &app,
            "participant_joined",
            room,
            &host.to_string(),
            "PA_host",
            "Host",
            false,
        )
        .await;
        participant(
            &app,
            "participant_joined",
            room,
            "egress-1",
            "PA_egress",
            "",
            true,
        )
        .await;
        participant(
            &app,
            "participant_joined",
            room,
            &ada.to_string(),
            "PA_ada",
            "Ada",
            false,
        )
        .await;
        // Ada on a second device: still one viewer, listed once.
        participant(
            &app,
            "participant_joined",
            room,
            &ada.to_string(),
            "PA_ada_tablet",
            "Ada",
            false,
        )
        .await;
        participant(
            &app,
            "participant_joined",
            room,
            &bob.to_string(),
            "PA_bob",
            "Bob",
            false,
        )
        .await;
        participant(
            &app,
            "participant_left",
            room,
            &bob.to_string(),
            "PA_bob",
            "Bob",
            false,
        )
        .await;

        let list = |user: Uuid| {
            app.send(
                list_viewers,
                get_request(Some(&app.token_for(user)), &[], Some(room)),
            )
        };
        let hosts = list(host).await;
        assert_eq!(hosts.status, 200, "{}", hosts.body);
        assert_eq!(hosts.body["viewerCount"], 1);
        let viewers = hosts.body["viewers"].as_array().unwrap();
        assert_eq!(
            viewers.len(),
            1,
            "no streamer, no hidden participant, no one who left, each viewer once: {viewers:?}"
        );
        assert_eq!(
            (&viewers[0]["userId"], &viewers[0]["displayName"]),
            (&json!(ada.to_string()), &json!("Ada"))
        );
        let adas = list(ada).await;
        assert_eq!(adas.body["viewerCount"], 1);
        assert_eq!(
            adas.body["viewers"].is_array(),
            others_see_list,
            "{visible_to}: {}",
            adas.body
        );
    }
}

#[tokio::test]
async fn reactions_reach_the_room_aggregated_with_no_sender() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "applause";
    app.start_stream(host, room).await;
    let (_, listener) = app.viewer_in(room).await;
    let tappers: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    let started = Instant::now();
    // 10 users, 3 taps each, all at once.
    let taps = tappers.iter().flat_map(|user| {
        let app = &app;
        (0..3).map(move |_| async move {
            let body = json!({"roomName": room, "kind": "heart"}).to_string();
            app.call(react, Some(&app.token_for(*user)), &body).await
        })
    });
    let answered = futures::future::join_all(taps).await;
    let elapsed = started.elapsed();
    assert!(
        answered.iter().all(|r| r.status == 200),
        "{:?}",
        answered.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let sent_by_taps = answered.iter().filter(|r| r.body["broadcast"] == true).count();
    let bound = (elapsed.as_millis() / 250 + 1) as usize;
    assert!(
        sent_by_taps <= bound,
        "{sent_by_taps} packets from taps in {elapsed:?}"
    );

    // The trailing taps reach the room through the flusher.
    let deadline = Instant::now() + SETTLE;
    loop {
        let packets = listener.data_on("reactions");
        let counted: i64 = packets
            .iter()
            .map(|p| p.payload["counts"]["heart"].as_i64().unwrap_or(0))
            .sum();
        if counted == 30 {
            assert!(packets.len() <= sent_by_taps + 1, "{} packets", packets.len());
            for packet in &packets {
                assert_eq!(packet.sender, None, "from the server: {:?}", packet.payload);
                assert!(!packet.reliable, "lossy: the next packet supersedes it");
                assert_eq!(packet.payload["event"], "reactions");
                assert_eq!(packet.payload["roomName"], room);
            }
            assert_eq!(packets.last().unwrap().payload["totals"]["heart"], 30);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} of 30 taps told: {packets:?}"
        );
        shared::scheduled::flush::flush_once(&app.state).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reactions packet that could not be sent (LiveKit down) gives its mark
/// back, so the flusher sends the totals once LiveKit answers, though no tap
/// comes after: a tap is never counted and left untold (migration 0051).
#[tokio::test]
async fn reactions_not_sent_while_livekit_was_down_reach_the_room_after() {
    let app = TestApp::spawn().await;
    let room = "reactions-down";
    app.start_stream(Uuid::new_v4(), room).await;
    let (_, listener) = app.viewer_in(room).await;
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let tapped = app
        .call(
            react,
            Some(&app.token_for(Uuid::new_v4())),
            &json!({"roomName": room, "kind": "wow"}).to_string(),
        )
        .await;
    assert_eq!(
        (tapped.status, &tapped.body["broadcast"]),
        (200, &json!(false)),
        "{}",
        tapped.body
    );
    app.set_livekit_mode(LiveKitMode::Up).await;
    let deadline = Instant::now() + SETTLE;
    loop {
        shared::scheduled::flush::flush_once(&app.state).await.unwrap();
        if listener
            .data_on("reactions")
            .last()
            .is_some_and(|packet| packet.payload["totals"]["wow"] == 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tap never reached the room: {:?}",
            listener.data_on("reactions")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_flusher_sends_the_trailing_reactions_while_its_chat_part_fails() {
    let app = TestApp::spawn().await;
    let room = "chat-part-down";
    app.start_stream(Uuid::new_v4(), room).await;
    let (_, listener) = app.viewer_in(room).await;
    // The chat part's query is refused from now on; the rest of the flush
    // must not be.
    crate::helpers::connect(&app.database_url)
        .await
        .batch_execute("REVOKE SELECT ON live_chat_broadcasts FROM live_api")
        .await
        .unwrap();
    let taps = (0..10).map(|_| {
        let app = &app;
        async move {
            let body = json!({"roomName": room, "kind": "clap"}).to_string();
            app.call(react, Some(&app.token_for(Uuid::new_v4())), &body).await
        }
    });
    let answered = futures::future::join_all(taps).await;
    assert!(answered.iter().all(|r| r.status == 200), "{answered:?}");
    assert!(
        answered.iter().any(|r| r.body["broadcast"] == false),
        "taps inside one interval leave some for the flusher: {answered:?}"
    );

    let deadline = Instant::now() + SETTLE;
    loop {
        let flushed = shared::scheduled::flush::flush_once(&app.state).await;
        assert!(flushed.is_err(), "the chat part was refused: {flushed:?}");
        let packets = listener.data_on("reactions");
        if packets
            .last()
            .is_some_and(|last| last.payload["totals"]["clap"] == 10)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trailing taps never reached the room: {packets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// More rooms with reactions due than one tick can send while LiveKit
/// hangs: the flusher marks every due room as told before it sends, so each
/// room it did not send to (not reached within its budget, or its own
/// give-back cut short) must get its mark back, or its last taps are counted
/// and never shown to anyone.
#[tokio::test]
async fn the_rooms_a_hanging_tick_did_not_reach_keep_their_reactions_due() {
    const ROOMS: i32 = 2_000;
    let app = TestApp::spawn().await;
    let admin = crate::helpers::connect(&app.database_url).await;
    admin
        .execute(
            "WITH rooms AS (
                 INSERT INTO live_streams (id, streamer_id, title)
                 SELECT 'due-' || i, gen_random_uuid(), 'Made directly' FROM generate_series(1, $1) AS i
                 RETURNING id),
             counted AS (
                 INSERT INTO live_reaction_counts (room_name, kind, shard, n)
                 SELECT id, 'heart', 0, 1 FROM rooms)
             INSERT INTO live_reaction_broadcasts (room_name) SELECT id FROM rooms",
            &[&ROOMS],
        )
        .await
        .unwrap();
    let due = "SELECT count(*)::int4 FROM live_reaction_broadcasts b
               WHERE (SELECT sum(n) FROM live_reaction_counts c WHERE c.room_name = b.room_name)
                     > (SELECT coalesce(sum(e.v::bigint), 0) FROM jsonb_each_text(b.sent) AS e (k, v))";
    assert_eq!(app.db_value::<i32>(due, &[]).await, ROOMS);

    app.set_livekit_mode(LiveKitMode::Hanging).await;
    shared::scheduled::flush::flush_once(&app.state).await.unwrap();
    assert_eq!(
        app.db_value::<i32>(due, &[]).await,
        ROOMS,
        "every room not told is still due for the next tick"
    );
}

/// LiveKit hanging after a change is committed: every route that tells the
/// room afterwards answers what was committed, in time, with its "not told"
/// flag, never the deadline's 503 that would have the app retry what
/// already happened (a retried stage change spends the stage limit).
#[tokio::test]
async fn committed_changes_answer_in_time_while_livekit_hangs() {
    let app = TestApp::spawn_with_settings(vec![("REQUEST_DEADLINE_SECONDS", "2".into())]).await;
    let host = Uuid::new_v4();
    let room = "livekit-hangs";
    app.start_stream(host, room).await;
    let (viewer, _client) = app.viewer_in(room).await;
    app.wait_for_viewer_count(room, 1).await;
    let said = app
        .call(
            post_message,
            Some(&app.token_for(viewer)),
            &json!({"roomName": room, "text": "soon deleted"}).to_string(),
        )
        .await;
    assert_eq!(said.status, 201, "{}", said.body);
    let message = said.body["message"]["id"].as_str().unwrap().to_owned();
    app.set_livekit_mode(LiveKitMode::Hanging).await;
    let host_t = app.token_for(host);

    let invited = app
        .call(
            invite_to_stage,
            Some(&host_t),
            &json!({"roomName": room, "userId": viewer}).to_string(),
        )
        .await;
    assert_eq!(
        (
            invited.status,
            &invited.body["invited"],
            &invited.body["roomUpdated"]
        ),
        (200, &json!(true), &json!(false)),
        "{}",
        invited.body
    );
    let muted = app
        .call(
            moderate,
            Some(&host_t),
            &json!({"roomName": room, "userId": viewer, "action": "mute"}).to_string(),
        )
        .await;
    assert_eq!(
        (muted.status, &muted.body["muted"], &muted.body["roomUpdated"]),
        (200, &json!(true), &json!(false)),
        "{}",
        muted.body
    );
    let reacted = app
        .call(
            react,
            Some(&app.token_for(Uuid::new_v4())),
            &json!({"roomName": room, "kind": "fire"}).to_string(),
        )
        .await;
    assert_eq!(
        (reacted.status, &reacted.body["broadcast"]),
        (200, &json!(false)),
        "{}",
        reacted.body
    );
    let deleted = app
        .send(
            delete_message,
            request_with(Method::DELETE, Some(&host_t), &[], Some(&message)),
        )
        .await;
    assert_eq!(
        (
            deleted.status,
            &deleted.body["deleted"],
            &deleted.body["broadcast"]
        ),
        (200, &json!(true), &json!(false)),
        "{}",
        deleted.body
    );
    let committed: (Option<bool>, Option<bool>, i64, bool) = {
        let row = app
            .db()
            .await
            .query_one(
                "SELECT (SELECT invited_at IS NOT NULL FROM live_stage
                          WHERE room_name = $1 AND user_id = $2),
                        (SELECT muted FROM live_room_restrictions WHERE room_name = $1 AND user_id = $2),
                        (SELECT coalesce(sum(n), 0)::int8 FROM live_reaction_counts WHERE room_name = $1),
                        (SELECT deleted_at IS NOT NULL FROM live_messages WHERE room_name = $1)",
                &[&room, &viewer],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert_eq!(
        committed,
        (Some(true), Some(true), 1, true),
        "every change stands"
    );

    let ended = app
        .call(end_stream, Some(&host_t), &json!({"roomName": room}).to_string())
        .await;
    assert_eq!(
        (ended.status, &ended.body["roomClosed"]),
        (200, &json!(false)),
        "{}",
        ended.body
    );
    let is_live: bool = app
        .db_value("SELECT is_live FROM live_streams WHERE id = $1", &[&room])
        .await;
    assert!(!is_live, "the end stands");
}

/// A tap is counted before its packet goes out. With LiveKit hanging, the
/// packet's mark is given back after the send gives up; when that must wait
/// too (here its row is held), the tap still answers in time with
/// `broadcast: false`: a 503 would have the app tap again, counted twice.
#[tokio::test]
async fn a_tap_answers_in_time_when_giving_its_mark_back_must_wait() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::spawn_with_settings(vec![("REQUEST_DEADLINE_SECONDS", "2".into())]).await;
    let room = "mark-held";
    app.start_stream(Uuid::new_v4(), room).await;
    app.set_livekit_mode(LiveKitMode::Hanging).await;
    let tapper = app.token_for(Uuid::new_v4());
    let answered = AtomicBool::new(false);
    let tap = async {
        let reacted = app
            .call(
                react,
                Some(&tapper),
                &json!({"roomName": room, "kind": "fire"}).to_string(),
            )
            .await;
        answered.store(true, Ordering::SeqCst);
        reacted
    };
    let hold_the_mark = async {
        // Once the tap is counted (its packet now hanging), the row its
        // give-back updates is held until the tap has answered.
        let mut holder_connection = app.db().await;
        let settle = Instant::now() + SETTLE;
        loop {
            let counted: i64 = holder_connection
                .query_one(
                    "SELECT coalesce(sum(n), 0)::int8 FROM live_reaction_counts WHERE room_name = $1",
                    &[&room],
                )
                .await
                .unwrap()
                .get(0);
            if counted == 1 {
                break;
            }
            assert!(Instant::now() < settle, "the tap was never counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let holder = holder_connection.transaction().await.unwrap();
        holder
            .execute(
                "SELECT FROM live_reaction_broadcasts WHERE room_name = $1 FOR UPDATE",
                &[&room],
            )
            .await
            .unwrap();
        let observer = app.db().await;
        let mut give_back_waited = false;
        while !answered.load(Ordering::SeqCst) {
            assert!(Instant::now() < settle, "the tap never answered");
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND query LIKE '%live_reactions_unsent%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            give_back_waited |= waiting > 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        holder.commit().await.unwrap();
        give_back_waited
    };
    let (reacted, give_back_waited) = tokio::join!(tap, hold_the_mark);
    assert!(give_back_waited, "the give-back waited for the held row");
    assert_eq!(
        (reacted.status, &reacted.body["broadcast"]),
        (200, &json!(false)),
        "{}",
        reacted.body
    );
    let counted: i64 = app
        .db_value(
            "SELECT sum(n)::int8 FROM live_reaction_counts WHERE room_name = $1",
            &[&room],
        )
        .await;
    assert_eq!(counted, 1, "the tap stands, once");
}

/// A guest whose connection was lost keeps their turn for
/// `STAGE_RETURN_SECONDS` (`away_since`); a ban, or the host taking them off,
/// ends the turn and with it the clock, which would otherwise run on a row
/// with nothing to return to (migration 0050).
#[tokio::test]
async fn ending_an_away_guests_turn_stops_their_return_clock() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "away-guests";
    app.start_stream(host, room).await;
    let (banned, removed) = (Uuid::new_v4(), Uuid::new_v4());
    let db = app.db().await;
    db.execute(
        "INSERT INTO live_stage (room_name, user_id, on_stage_since, was_on_stage, away_since)
         SELECT $1, u, now() - interval '1 minute', true, now() FROM unnest($2::uuid[]) AS u",
        &[&room, &vec![banned, removed]],
    )
    .await
    .unwrap();
    let host_t = app.token_for(host);
    let ban = json!({"roomName": room, "userId": banned, "action": "ban"}).to_string();
    assert_eq!(app.call(moderate, Some(&host_t), &ban).await.status, 200);
    let remove = json!({"roomName": room, "userId": removed}).to_string();
    let taken_off = app.call(remove_from_stage, Some(&host_t), &remove).await;
    assert_eq!(
        (taken_off.status, &taken_off.body["onStage"]),
        (200, &json!(false)),
        "{}",
        taken_off.body
    );
    let rows: Vec<(Uuid, bool, bool)> = db
        .query(
            "SELECT user_id, on_stage_since IS NULL, away_since IS NULL FROM live_stage
             WHERE room_name = $1 ORDER BY user_id",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let mut expected = vec![(banned, true, true), (removed, true, true)];
    expected.sort();
    assert_eq!(rows, expected, "off the stage, and no clock left running");
}

/// A guest whose time to return ran out frees their place for the next
/// guest at once, not at the reconciler's next run; one still within it
/// keeps the place.
#[tokio::test]
async fn a_guest_whose_time_to_return_ran_out_frees_their_place_at_once() {
    let app = TestApp::spawn_with_settings(vec![("MAX_STAGE_GUESTS", "1".into())]).await;
    let host = Uuid::new_v4();
    let room = "lapsed-place";
    app.start_stream(host, room).await;
    let (viewer, _client) = app.viewer_in(room).await;
    app.wait_for_viewer_count(room, 1).await;
    let away = Uuid::new_v4();
    let db = app.db().await;
    db.execute(
        "INSERT INTO live_stage (room_name, user_id, on_stage_since, was_on_stage, away_since)
         VALUES ($1, $2, now() - interval '5 minutes', true, now() - interval '10 seconds')",
        &[&room, &away],
    )
    .await
    .unwrap();
    let host_t = app.token_for(host);
    let invite = json!({"roomName": room, "userId": viewer}).to_string();
    app.call(invite_to_stage, Some(&host_t), &invite)
        .await
        .assert_error(409, "stage_full");

    // Past STAGE_RETURN_SECONDS (60 by default) since the connection was lost.
    away_for(&db, room, away, 61).await;
    let invited = app.call(invite_to_stage, Some(&host_t), &invite).await;
    assert_eq!(
        (invited.status, &invited.body["invited"]),
        (200, &json!(true)),
        "{}",
        invited.body
    );
    let place_freed: bool = app
        .db_value(
            "SELECT on_stage_since IS NULL AND away_since IS NULL FROM live_stage WHERE room_name = $1 AND user_id = $2",
            &[&room, &away],
        )
        .await;
    assert!(place_freed, "the lapsed guest's turn ended");
}

/// A change refused for a full stage lists the room in LiveKit only when a
/// guest has been away past their time to return: refusals spend no rate
/// limit, and a viewer retrying an accept must not have the room listed
/// each time while every guest is there. With LiveKit down, a listing shows
/// as its logged failure.
#[tokio::test]
async fn a_full_stage_lists_the_room_only_when_a_guests_place_may_have_lapsed() {
    let app = TestApp::spawn_with_settings(vec![("MAX_STAGE_GUESTS", "1".into())]).await;
    let host = Uuid::new_v4();
    let room = "full-stage-listing";
    app.start_stream(host, room).await;
    let (viewer, guest) = (Uuid::new_v4(), Uuid::new_v4());
    participant(
        &app,
        "participant_joined",
        room,
        &viewer.to_string(),
        "PA_full_viewer",
        "Viewer",
        false,
    )
    .await;
    let db = app.db().await;
    db.execute(
        "INSERT INTO live_stage (room_name, user_id, on_stage_since, was_on_stage)
         VALUES ($1, $2, now() - interval '5 minutes', true)",
        &[&room, &guest],
    )
    .await
    .unwrap();
    app.set_livekit_mode(LiveKitMode::Stopped).await;
    let captured = crate::logs::Captured::default();
    let _logging = tracing::subscriber::set_default(crate::logs::subscriber(&captured));
    let listing_failed = "LiveKit's listing, needed to free lapsed places, failed";
    let invite = json!({"roomName": room, "userId": viewer}).to_string();
    let host_t = app.token_for(host);

    for _ in 0..3 {
        app.call(invite_to_stage, Some(&host_t), &invite)
            .await
            .assert_error(409, "stage_full");
    }
    // The same guest, away for a while but within STAGE_RETURN_SECONDS (60).
    away_for(&db, room, guest, 30).await;
    app.call(invite_to_stage, Some(&host_t), &invite)
        .await
        .assert_error(409, "stage_full");
    assert!(
        !captured.text().contains(listing_failed),
        "no listing while the guest's place holds:\n{}",
        captured.text()
    );

    away_for(&db, room, guest, 61).await;
    app.call(invite_to_stage, Some(&host_t), &invite)
        .await
        .assert_error(409, "stage_full");
    assert_eq!(
        captured.text().matches(listing_failed).count(),
        // Each line twice: the capture writes JSON and plain text.
        2,
        "the lapsed place is worth a listing, which LiveKit's outage fails:\n{}",
        captured.text()
    );
}

/// Lapsed standings end guests first (a full stage waits for their places,
/// not for raised hands), and as of when LiveKit's listing began: a guest
/// absent from it whose time ran out only after it began may be back by
/// now, and keeps the place.
#[tokio::test]
async fn lapsed_standings_end_guests_first_and_as_of_the_listing() {
    use shared::store::stage::end_lapsed_away_turns;
    let app = TestApp::spawn().await;
    let room = "lapse-order";
    app.start_stream(Uuid::new_v4(), room).await;
    let room_name = shared::domain::RoomName::parse(room.into()).unwrap();
    let (hand, guest, late_guest) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let db = app.db().await;
    db.execute(
        "INSERT INTO live_stage (room_name, user_id, hand_raised_at, away_since)
         VALUES ($1, $2, now() - interval '10 minutes', now() - interval '10 minutes')",
        &[&room, &hand],
    )
    .await
    .unwrap();
    for (user, away_seconds) in [(guest, 120.0), (late_guest, 62.0)] {
        db.execute(
            "INSERT INTO live_stage (room_name, user_id, on_stage_since, was_on_stage, away_since)
             VALUES ($1, $2, now() - interval '5 minutes', true, now() - make_interval(secs => $3))",
            &[&room, &user, &away_seconds],
        )
        .await
        .unwrap();
    }
    let standing = |user: Uuid| {
        let db = &db;
        async move {
            let held: bool = db
                .query_one(
                    "SELECT EXISTS (SELECT FROM live_stage WHERE room_name = $1 AND user_id = $2
                         AND (on_stage_since IS NOT NULL OR invited_at IS NOT NULL OR hand_raised_at IS NOT NULL))",
                    &[&room, &user],
                )
                .await
                .unwrap()
                .get(0);
            held
        }
    };
    let client = app.state.db.get().await.unwrap();
    let stage_return = Duration::from_secs(60);
    let listing_began = Instant::now() - Duration::from_secs(5);

    let first = end_lapsed_away_turns(&client, Some(&room_name), &[], listing_began, stage_return, 1)
        .await
        .unwrap();
    assert_eq!((first.rows, first.ended), (1, 1));
    assert!(!standing(guest).await, "the guest's place is freed first");
    assert!(standing(hand).await, "the older hand waits");

    let rest = end_lapsed_away_turns(&client, Some(&room_name), &[], listing_began, stage_return, 100)
        .await
        .unwrap();
    assert_eq!((rest.rows, rest.ended), (1, 1), "the hand; not the late guest");
    assert!(!standing(hand).await);
    assert!(
        standing(late_guest).await,
        "62 s away now, 57 when the listing began: within the 60 s to return"
    );

    let now = end_lapsed_away_turns(&client, Some(&room_name), &[], Instant::now(), stage_return, 100)
        .await
        .unwrap();
    assert_eq!((now.rows, now.ended), (1, 1));
    assert!(
        !standing(late_guest).await,
        "absent from a listing begun after the time ran out"
    );
}

/// The streamer cannot tell who signed in anonymously, so they may invite
/// such a viewer; the viewer cannot accept (they may only watch), and must
/// be able to say no, so the invitation does not hang over them.
#[tokio::test]
async fn an_anonymous_viewer_invited_on_stage_can_decline_but_not_accept() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "anonymous-invitee";
    app.start_stream(host, room).await;
    let viewer = Uuid::new_v4();
    let anonymous = app.anonymous_token_for(viewer);
    let token = app.request_token(&anonymous, room).await;
    assert_eq!(token.status, 200, "{}", token.body);
    let _client = app.join(token.body["token"].as_str().unwrap()).await.unwrap();
    app.wait_for_viewer_count(room, 1).await;

    let invite = json!({"roomName": room, "userId": viewer}).to_string();
    let invited = app
        .call(invite_to_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(
        (invited.status, &invited.body["invited"]),
        (200, &json!(true)),
        "{}",
        invited.body
    );
    let answer = json!({"roomName": room}).to_string();
    app.call(accept_stage, Some(&anonymous), &answer)
        .await
        .assert_error(403, "anonymous_not_allowed");
    let declined = app.call(decline_stage, Some(&anonymous), &answer).await;
    assert_eq!(
        (
            declined.status,
            &declined.body["invited"],
            &declined.body["onStage"]
        ),
        (200, &json!(false), &json!(false)),
        "{}",
        declined.body
    );
    let attributes = app.livekit().participants(room).await[0].attributes.clone();
    assert_eq!(
        attributes.get("stage_invited").map(String::as_str),
        Some("false"),
        "the room learns the invitation is gone: {attributes:?}"
    );
    let permission = app.livekit().participants(room).await[0]
        .permission
        .clone()
        .unwrap();
    assert!(
        !permission.can_publish && !permission.can_publish_data,
        "declining gives an anonymous viewer nothing: {permission:?}"
    );
}

#[tokio::test]
async fn a_chat_mute_keeps_a_guest_on_camera_and_a_ban_ends_their_turn() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "guests";
    app.start_stream(host, room).await;
    let (guest, _client) = app.viewer_in(room).await;
    app.wait_for_viewer_count(room, 1).await;
    let invite = json!({"roomName": room, "userId": guest}).to_string();
    assert_eq!(
        app.call(invite_to_stage, Some(&app.token_for(host)), &invite)
            .await
            .status,
        200
    );
    let answer = json!({"roomName": room}).to_string();
    assert_eq!(
        app.call(accept_stage, Some(&app.token_for(guest)), &answer)
            .await
            .status,
        200
    );

    let moderation = |action: &str| json!({"roomName": room, "userId": guest, "action": action}).to_string();
    let muted = app
        .call(moderate, Some(&app.token_for(host)), &moderation("mute"))
        .await;
    assert_eq!(
        (muted.status, &muted.body["roomUpdated"]),
        (200, &json!(true)),
        "{}",
        muted.body
    );
    let permission = app.livekit().participants(room).await[0]
        .permission
        .clone()
        .unwrap();
    assert!(
        permission.can_publish && !permission.can_publish_data,
        "{permission:?}"
    );

    let banned = app
        .call(moderate, Some(&app.token_for(host)), &moderation("ban"))
        .await;
    assert_eq!(banned.status, 200, "{}", banned.body);
    let row = app
        .db()
        .await
        .query_one(
            "SELECT on_stage_since IS NULL AND invited_at IS NULL FROM live_stage WHERE room_name = $1 AND user_id = $2",
            &[&room, &guest],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the ban took them off the stage");
    let again = app
        .call(invite_to_stage, Some(&app.token_for(host)), &invite)
        .await;
    again.assert_error(403, "forbidden");
}

/// A kicked guest loses the stage with the kick, not with their leave's
/// webhook (which ends a turn only on the last session's leave, and may be
/// applied after their return): back in the room, they are a viewer, and a
/// token they get now cannot publish.
#[tokio::test]
async fn a_kick_ends_the_guests_turn() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "kicked-guest";
    let (guest, client, _) = live_with_a_guest_on_stage(&app, host, room).await;
    // The kicked session's leave is late.
    app.lose_webhooks(true);
    let kick = json!({"roomName": room, "userId": guest, "action": "kick"}).to_string();
    let kicked = app.call(moderate, Some(&app.token_for(host)), &kick).await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    client.wait_disconnected().await;
    let (on_stage, away) = app.on_stage_and_away(room, guest).await;
    assert!(!on_stage && !away, "the kick ended the turn");
    let token = app.request_token(&app.token_for(guest), room).await;
    assert_eq!(token.status, 200, "{}", token.body);
    let claims = verify_livekit_token(token.body["token"].as_str().unwrap());
    assert_eq!(
        claims.video.can_publish,
        Some(false),
        "back as a viewer: {claims:?}"
    );
}

/// `host`'s live stream `room` with one real viewer who accepted the host's
/// invitation: on stage, as LiveKit has it. Returns the guest, their client,
/// and the invitation's body (the host's removal takes the same).
async fn live_with_a_guest_on_stage(app: &TestApp, host: Uuid, room: &str) -> (Uuid, Participant, String) {
    app.start_stream(host, room).await;
    let (guest, client) = app.viewer_in(room).await;
    app.wait_for_viewer_count(room, 1).await;
    let invite = json!({"roomName": room, "userId": guest}).to_string();
    let invited = app
        .call(invite_to_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(invited.status, 200, "{}", invited.body);
    let accept = json!({"roomName": room}).to_string();
    let accepted = app.call(accept_stage, Some(&app.token_for(guest)), &accept).await;
    assert_eq!(accepted.body["roomUpdated"], true, "{}", accepted.body);
    assert!(can_publish(app, room).await, "on stage");
    (guest, client, invite)
}

/// Whether the room's one viewer may publish, as LiveKit has it.
async fn can_publish(app: &TestApp, room: &str) -> bool {
    app.livekit().participants(room).await[0]
        .permission
        .as_ref()
        .is_some_and(|permission| permission.can_publish)
}

#[tokio::test]
async fn a_removal_livekit_missed_is_applied_by_the_reconciler() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "stubborn";
    let (_, _client, invite) = live_with_a_guest_on_stage(&app, host, room).await;

    app.set_livekit_mode(LiveKitMode::Failing).await;
    let removed = app
        .call(remove_from_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(
        (removed.status, &removed.body["roomUpdated"]),
        (200, &json!(false)),
        "{}",
        removed.body
    );
    app.set_livekit_mode(LiveKitMode::Up).await;
    assert!(can_publish(&app, room).await, "LiveKit still lets them publish");
    shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(60))
        .await
        .unwrap();
    let participant = app.livekit().participants(room).await.remove(0);
    assert!(
        !participant.permission.unwrap().can_publish,
        "the reconciler took the grant back"
    );
    assert_eq!(participant.attributes["on_stage"], "false");
}

/// A correction computed from a standing read before a stage change (a
/// reconciler run, or a join's webhook, while the guest accepted) reaches
/// LiveKit after that change's own call: the standing is read again after
/// it, and the room gets the newer one back at once instead of keeping the
/// stale one until the next run.
#[tokio::test]
async fn a_correction_read_before_a_newer_stage_change_is_followed_by_it() {
    use shared::livekit::room_rules::{self, Correction, StreamState};
    use shared::store::stage::StageStanding;
    use shared::store::viewers::Presence;
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "stale-correction";
    let _guest = live_with_a_guest_on_stage(&app, host, room).await;

    // What a run that read the guest's standing before the accept corrects.
    let listed = app.livekit().participants(room).await;
    let presence = Presence::from(&listed[0]);
    let stale = Correction::Update {
        muted: false,
        stage: StageStanding::default(),
        shown: Some(presence.stage),
    };
    let stream = StreamState {
        streamer: host,
        is_live: true,
    };
    let room_name = shared::domain::RoomName::parse(room.to_owned()).unwrap();
    let made = room_rules::correct_all(&app.state, &room_name, &stream, &[(presence, stale)], None).await;
    assert_eq!(made, 1);
    let participant = app.livekit().participants(room).await.remove(0);
    assert!(
        participant.permission.unwrap().can_publish,
        "the guest, on stage since, keeps their camera"
    );
    assert_eq!(participant.attributes["on_stage"], "true");
}

/// A stage change whose `UpdateParticipant` timed out may still reach the
/// room, after a newer change was told there (an accept landing after the
/// removal that followed it): the standing is read again after the timeout
/// and the newer one told, so the room does not keep the older until the
/// reconciler's next run.
#[tokio::test]
async fn a_stage_update_that_timed_out_is_followed_by_the_newer_standing() {
    use shared::handlers::stage::apply_standing_in_room;
    use shared::store::chat::Standing;
    use shared::store::stage::{self, StageAction, StageStanding};
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "late-accept";
    let (guest, _client, _) = live_with_a_guest_on_stage(&app, host, room).await;
    let room_name = shared::domain::RoomName::parse(room.to_owned()).unwrap();

    // The host's removal commits while the accept's call is on its way.
    let removed = {
        let client = app.state.db.get().await.unwrap();
        stage::change(
            &client,
            &room_name,
            host,
            guest,
            StageAction::Remove,
            &app.state.rules,
            app.state.limits.stage,
        )
        .await
        .unwrap()
    };
    assert!(removed.changed && !removed.standing.on_stage);

    // The accept's call hangs; LiveKit answers again before it times out.
    app.set_livekit_mode(LiveKitMode::Hanging).await;
    let held = app.livekit().held_requests();
    let accepted = Standing {
        banned: false,
        muted: false,
        stage: StageStanding {
            on_stage: true,
            ..StageStanding::default()
        },
    };
    let telling = tokio::spawn({
        let state = app.state.clone();
        let room_name = room_name.clone();
        async move { apply_standing_in_room(&state, &room_name, guest, accepted).await }
    });
    app.livekit().until_held_requests(held + 1).await;
    app.set_livekit_mode(LiveKitMode::Up).await;
    let told = telling.await.unwrap();
    assert!(told.is_err(), "the accept's own call got no answer");
    assert!(
        !can_publish(&app, room).await,
        "after the timeout the room was told the removal that followed"
    );
}

/// A ban whose removal LiveKit missed: the host's next stage change about
/// that user removes them from the room (the standing read after the change
/// says banned), rather than only updating their permission and leaving them
/// there until the reconciler's next run.
#[tokio::test]
async fn a_stage_change_about_a_banned_user_livekit_kept_removes_them() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "missed-ban";
    let (guest, _client, invite) = live_with_a_guest_on_stage(&app, host, room).await;

    app.set_livekit_mode(LiveKitMode::Failing).await;
    let ban = json!({"roomName": room, "userId": guest, "action": "ban"}).to_string();
    let banned = app.call(moderate, Some(&app.token_for(host)), &ban).await;
    assert_eq!(
        (banned.status, &banned.body["roomUpdated"]),
        (200, &json!(false)),
        "{}",
        banned.body
    );
    app.set_livekit_mode(LiveKitMode::Up).await;
    assert_eq!(
        app.livekit().participants(room).await.len(),
        1,
        "LiveKit missed the ban"
    );

    let removed = app
        .call(remove_from_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let deadline = Instant::now() + SETTLE;
    while !app.livekit().participants(room).await.is_empty() {
        assert!(Instant::now() < deadline, "the banned guest is still in the room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The app retries a change that answered `roomUpdated: false`: the retry
/// changes nothing in Postgres, and tells LiveKit what it missed.
#[tokio::test]
async fn a_retried_removal_tells_livekit_what_the_first_one_could_not() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "retried-removal";
    let (_, _client, invite) = live_with_a_guest_on_stage(&app, host, room).await;

    app.set_livekit_mode(LiveKitMode::Failing).await;
    let removed = app
        .call(remove_from_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(removed.body["roomUpdated"], false, "{}", removed.body);
    app.set_livekit_mode(LiveKitMode::Up).await;
    assert!(can_publish(&app, room).await, "LiveKit missed the removal");

    let retried = app
        .call(remove_from_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(
        (
            retried.status,
            &retried.body["onStage"],
            &retried.body["roomUpdated"]
        ),
        (200, &json!(false), &json!(true)),
        "{}",
        retried.body
    );
    assert!(!can_publish(&app, room).await, "the retry took the grant back");
}

/// Six invited viewers accept at the same moment, with room for three on the
/// stage: three get on and three are told the stage is full, never four on
/// it (the stage's changes of one room run one after another).
#[tokio::test]
async fn concurrent_accepts_never_put_more_guests_on_stage_than_allowed() {
    // A connection for each accept, so that all six run in Postgres at once.
    let app = TestApp::spawn_with_settings(vec![("DATABASE_POOL_SIZE", "6".into())]).await;
    let host = Uuid::new_v4();
    app.start_stream(host, "crowded-stage").await;
    let viewers: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    for (n, viewer) in viewers.iter().enumerate() {
        let (identity, sid) = (viewer.to_string(), format!("PA_guest_{n}"));
        participant(
            &app,
            "participant_joined",
            "crowded-stage",
            &identity,
            &sid,
            "Guest",
            false,
        )
        .await;
        let invite = json!({"roomName": "crowded-stage", "userId": viewer}).to_string();
        let invited = app
            .call(invite_to_stage, Some(&app.token_for(host)), &invite)
            .await;
        assert_eq!(invited.status, 200, "{}", invited.body);
    }
    let tokens: Vec<String> = viewers.iter().map(|viewer| app.token_for(*viewer)).collect();
    let accept = json!({"roomName": "crowded-stage"}).to_string();
    let answers = futures::future::join_all(
        tokens
            .iter()
            .map(|token| app.call(accept_stage, Some(token), &accept)),
    )
    .await;
    let on_stage = answers.iter().filter(|answer| answer.status == 200).count();
    for answer in answers.iter().filter(|answer| answer.status != 200) {
        answer.assert_error(409, "stage_full");
    }
    assert_eq!(on_stage, 3, "MAX_STAGE_GUESTS defaults to 3");
    let guests: i64 = app.db_value("SELECT count(*) FROM live_stage WHERE room_name = 'crowded-stage' AND on_stage_since IS NOT NULL", &[]).await;
    assert_eq!(guests, 3);
}

/// The streamer's list of raised hands shows only viewers in the room: a
/// hand raised before its viewer's join arrived shows once it does, and
/// leaving the room takes it away (no hands of users who are not watching).
#[tokio::test]
async fn only_the_hands_of_viewers_in_the_room_are_listed() {
    use shared::handlers::{raise_hand, stage_state};
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "hands").await;
    let hands = || async {
        let listed = app
            .send(
                stage_state,
                get_request(Some(&app.token_for(host)), &[("roomName", "hands")], None),
            )
            .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        listed.body["hands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hand| hand["userId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let raise = json!({"roomName": "hands", "raised": true}).to_string();
    let raised = app.call(raise_hand, Some(&app.token_for(viewer)), &raise).await;
    assert_eq!(raised.status, 200, "{}", raised.body);
    assert!(hands().await.is_empty(), "not in the room yet");

    let identity = viewer.to_string();
    let viewer_event = |event| participant(&app, event, "hands", &identity, "PA_hand", "Hand", false);
    viewer_event("participant_joined").await;
    assert_eq!(hands().await, std::slice::from_ref(&identity));
    viewer_event("participant_left").await;
    assert!(hands().await.is_empty(), "gone with its viewer");
}

/// The streamer pages through the raised hands while a raise that began
/// before others commits after them (it waited for the room's stage lock):
/// the walk still lists it, on a later page, since hands are stamped in
/// their commit order (migration 0068); stamped when its transaction began,
/// it fell behind the cursor of the page already served.
#[tokio::test]
async fn a_hand_raised_late_in_commit_order_is_on_a_later_page() {
    use shared::handlers::{raise_hand, stage_state};
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "late-hand";
    app.start_stream(host, room).await;
    let viewers: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for (n, viewer) in viewers.iter().enumerate() {
        let (identity, sid) = (viewer.to_string(), format!("PA_late_hand{n}"));
        participant(&app, "participant_joined", room, &identity, &sid, "Hand", false).await;
    }
    let raise = |viewer: Uuid| {
        let app = &app;
        async move {
            let body = json!({"roomName": room, "raised": true}).to_string();
            let raised = app.call(raise_hand, Some(&app.token_for(viewer)), &body).await;
            assert_eq!(raised.status, 200, "{}", raised.body);
        }
    };
    let page = |cursor: Option<String>| {
        let app = &app;
        async move {
            let mut query = vec![("roomName", room.to_owned()), ("limit", "2".to_owned())];
            query.extend(cursor.map(|cursor| ("cursor", cursor)));
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let listed = app
                .send(stage_state, get_request(Some(&app.token_for(host)), &query, None))
                .await;
            assert_eq!(listed.status, 200, "{}", listed.body);
            let hands: Vec<String> = listed.body["hands"]
                .as_array()
                .unwrap()
                .iter()
                .map(|hand| hand["userId"].as_str().unwrap().to_owned())
                .collect();
            (hands, listed.body["nextCursor"].as_str().map(str::to_owned))
        }
    };
    let [first, late, second, third] = [viewers[0], viewers[1], viewers[2], viewers[3]];
    raise(first).await;
    // The late raise's transaction begins now and its statement runs only
    // after the next raises commit, as one that waited for the lock.
    let mut late_connection = app.db().await;
    let late_raise = late_connection.transaction().await.unwrap();
    late_raise.execute("SELECT now()", &[]).await.unwrap();
    raise(second).await;
    raise(third).await;
    let (listed, cursor) = page(None).await;
    assert_eq!(listed, [first.to_string(), second.to_string()]);
    let outcome: String = late_raise
        .query_one(
            "SELECT outcome FROM live_stage_change_within_limit($1, $2, $2, 'raise', 3, $3, 10, 100, 120)",
            &[&room, &late, &format!("stage:{late}")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "ok");
    late_raise.commit().await.unwrap();
    let (rest, _) = page(cursor).await;
    assert_eq!(
        rest,
        [third.to_string(), late.to_string()],
        "the late hand is on the next page"
    );
}

/// A hand raised by someone not in the room waits for their join as a lost
/// connection waits for its return: the reconciler lowers it once
/// `STAGE_RETURN_SECONDS` passed without one (migration 0068), rather than
/// keep it, unlisted, for every listing to read past until the stream ends.
/// A viewer in the room raises with no such clock.
#[tokio::test]
async fn a_hand_raised_from_outside_the_room_is_lowered_if_they_never_come() {
    use shared::handlers::raise_hand;
    let app = TestApp::spawn().await;
    let room = "absent-hand";
    app.start_stream(Uuid::new_v4(), room).await;
    let (absent, watching) = (Uuid::new_v4(), Uuid::new_v4());
    participant(
        &app,
        "participant_joined",
        room,
        &watching.to_string(),
        "PA_watching",
        "In",
        false,
    )
    .await;
    for viewer in [absent, watching] {
        let body = json!({"roomName": room, "raised": true}).to_string();
        let raised = app.call(raise_hand, Some(&app.token_for(viewer)), &body).await;
        assert_eq!(raised.status, 200, "{}", raised.body);
    }
    let db = app.db().await;
    let away: Vec<(String, bool)> = db
        .query(
            "SELECT user_id::text, away_since IS NOT NULL FROM live_stage WHERE room_name = $1 ORDER BY 2",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(away, [(watching.to_string(), false), (absent.to_string(), true)]);

    // Their time to return, passed.
    db.execute(
        "UPDATE live_stage SET away_since = away_since - interval '1 hour' WHERE room_name = $1 AND away_since IS NOT NULL",
        &[&room],
    )
    .await
    .unwrap();
    shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(120))
        .await
        .unwrap();
    let raised: Vec<String> = db
        .query(
            "SELECT user_id::text FROM live_stage WHERE room_name = $1 AND hand_raised_at IS NOT NULL",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        raised,
        [watching.to_string()],
        "only the hand of the viewer in the room is still up"
    );
}

/// A crowd that comes and goes between two writes of the Realtime copy (at
/// most one a second) still sets the peak: each join notes the total it
/// brought the room to.
#[tokio::test]
async fn a_peak_shorter_than_a_second_is_kept() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "flash").await;
    let viewers: Vec<String> = (0..5).map(|_| Uuid::new_v4().to_string()).collect();
    let everyone = |event: &'static str| {
        let (app, viewers) = (&app, &viewers);
        async move {
            for (n, viewer) in viewers.iter().enumerate() {
                participant(
                    app,
                    event,
                    "flash",
                    viewer,
                    &format!("PA_flash_{n}"),
                    "Fan",
                    false,
                )
                .await;
            }
        }
    };
    everyone("participant_joined").await;
    let joined_by = chrono::Utc::now();
    everyone("participant_left").await;
    let stats = stats(&app, host, "flash").await;
    assert_eq!(
        (stats["viewerCount"].as_i64(), stats["peakViewers"].as_i64()),
        (Some(0), Some(5)),
        "{stats}"
    );
    let peak_at: chrono::DateTime<chrono::Utc> = stats["peakAt"].as_str().unwrap().parse().unwrap();
    assert!(
        peak_at <= joined_by,
        "the peak was reached by the fifth join: {stats}"
    );
}

/// `guest` joins (a webhook for session `sid`, no real connection), is
/// invited by `host` and accepts.
async fn join_and_take_stage(app: &TestApp, host: Uuid, room: &str, guest: Uuid, sid: &str) {
    participant(
        app,
        "participant_joined",
        room,
        &guest.to_string(),
        sid,
        "Guest",
        false,
    )
    .await;
    app.take_stage(host, room, guest).await;
}

/// Backdates `guest`'s away mark past `STAGE_RETURN_SECONDS` (60 s).
async fn away_past_the_time_to_return(app: &TestApp, room: &str, guest: Uuid) {
    app.db()
        .await
        .execute(
            "UPDATE live_stage SET away_since = now() - interval '61 seconds' WHERE room_name = $1 AND user_id = $2",
            &[&room, &guest],
        )
        .await
        .unwrap();
}

/// A hand raised while the viewer's join commits sees no presence and marks
/// them away just after the join looked for a mark to clear (migration
/// 0068), so the mark stays on a viewer in the room. Nothing reads it as
/// away while they are there: the stage listing, a full stage's check for
/// lapsed places, their token; and the pass the reconciler makes after each
/// room's sync (called here directly) clears it.
#[tokio::test]
async fn an_away_mark_left_on_a_viewer_in_the_room_is_not_read_as_away_and_is_cleared() {
    use shared::handlers::stage_state;
    use shared::store::stage::{Lapsed, end_lapsed_away_turns, has_lapsed_guest};
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "stale-away-mark";
    app.start_stream(host, room).await;
    let room_name = shared::domain::RoomName::parse(room.into()).unwrap();
    let guest = Uuid::new_v4();
    join_and_take_stage(&app, host, room, guest, "PA_stale_mark").await;
    // What the race leaves, aged past the time to return.
    away_past_the_time_to_return(&app, room, guest).await;

    let listed = app
        .send(
            stage_state,
            get_request(Some(&app.token_for(host)), &[("roomName", room)], None),
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["guests"][0]["userId"], guest.to_string());
    assert_eq!(
        listed.body["guests"][0]["awaySince"],
        Value::Null,
        "{}",
        listed.body
    );
    let client = app.state.db.get().await.unwrap();
    let stage_return = Duration::from_secs(60);
    assert!(!has_lapsed_guest(&client, &room_name, stage_return).await.unwrap());
    // Their token is a guest's (migration 0072).
    let token = app.request_token(&app.token_for(guest), room).await;
    assert_eq!(token.status, 200, "{}", token.body);
    let claims = verify_livekit_token(token.body["token"].as_str().unwrap());
    assert_eq!(
        (
            claims.video.can_publish,
            claims.attributes.get("on_stage").map(String::as_str)
        ),
        (Some(true), Some("true"))
    );

    let guest_identity = guest.to_string();
    let cleared = end_lapsed_away_turns(
        &client,
        Some(&room_name),
        &[guest_identity.as_str()],
        Instant::now(),
        stage_return,
        100,
    )
    .await
    .unwrap();
    assert_eq!(cleared, Lapsed { rows: 1, ended: 0 });
    assert_eq!(app.on_stage_and_away(room, guest).await, (true, false));
}

/// An invitation outlives a lost connection only for the time to return:
/// after it, accepting (the viewer back, their join not yet told) ends the
/// invitation and answers 409 `not_invited`, as the reconciler, a join and
/// a token judge it; within it, the viewer may still accept.
#[tokio::test]
async fn an_invitation_whose_time_to_return_ran_out_cannot_be_accepted() {
    let app = TestApp::spawn().await;
    let (host, too_late, in_time) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let room = "accept-too-late";
    app.start_stream(host, room).await;
    for (viewer, sid) in [(too_late, "PA_late_1"), (in_time, "PA_in_time_1")] {
        participant(
            &app,
            "participant_joined",
            room,
            &viewer.to_string(),
            sid,
            "Guest",
            false,
        )
        .await;
        let invite = json!({"roomName": room, "userId": viewer}).to_string();
        let invited = app
            .call(invite_to_stage, Some(&app.token_for(host)), &invite)
            .await;
        assert_eq!(invited.status, 200, "{}", invited.body);
        left_because(&app, room, &viewer.to_string(), sid, "SIGNAL_CLOSE").await;
    }
    away_past_the_time_to_return(&app, room, too_late).await;
    let invitation_kept = |viewer: Uuid| {
        let app = &app;
        async move {
            let kept: bool = app
                .db_value(
                    "SELECT EXISTS (SELECT FROM live_stage WHERE room_name = $1 AND user_id = $2
                         AND invited_at IS NOT NULL)",
                    &[&room, &viewer],
                )
                .await;
            kept
        }
    };
    assert!(invitation_kept(too_late).await, "kept until someone judges it");

    let answer = json!({"roomName": room}).to_string();
    app.call(accept_stage, Some(&app.token_for(too_late)), &answer)
        .await
        .assert_error(409, "not_invited");
    assert!(!invitation_kept(too_late).await, "the lapsed invitation ended");

    let accepted = app
        .call(accept_stage, Some(&app.token_for(in_time)), &answer)
        .await;
    assert_eq!(
        (accepted.status, &accepted.body["onStage"]),
        (200, &json!(true)),
        "{}",
        accepted.body
    );
}

/// A guest whose time to return ran out asks for a token before the
/// reconciler's run that ends their turn: it carries no camera or
/// microphone and says they are off the stage, rather than a grant their
/// join's webhook must take back once they are in. Within the time, the
/// token still puts them back on stage.
#[tokio::test]
async fn a_token_for_a_guest_whose_time_to_return_ran_out_grants_no_camera() {
    let app = TestApp::spawn().await;
    let (host, guest) = (Uuid::new_v4(), Uuid::new_v4());
    let room = "token-too-late";
    app.start_stream(host, room).await;
    join_and_take_stage(&app, host, room, guest, "PA_guest_1").await;
    left_because(&app, room, &guest.to_string(), "PA_guest_1", "SIGNAL_CLOSE").await;
    assert_eq!(app.on_stage_and_away(room, guest).await, (true, true));

    let grants = |response: crate::helpers::TestResponse| {
        assert_eq!(response.status, 200, "{}", response.body);
        let claims = verify_livekit_token(response.body["token"].as_str().unwrap());
        (
            claims.video.can_publish,
            claims.attributes.get("on_stage").cloned(),
        )
    };
    let in_time = grants(app.request_token(&app.token_for(guest), room).await);
    assert_eq!(in_time, (Some(true), Some("true".to_owned())), "back in time");

    away_past_the_time_to_return(&app, room, guest).await;
    let too_late = grants(app.request_token(&app.token_for(guest), room).await);
    // Its token carries no stage attribute: a missing one reads as false.
    assert_eq!(too_late, (Some(false), None), "back too late");
}

/// A guest's phone switching networks: LiveKit's client rejoins as a new
/// participant and the old one leaves as `DUPLICATE_IDENTITY` (or times out
/// first). That is no choice to leave the stage: the turn stays while they
/// come back, and ends only if they are not back within
/// `STAGE_RETURN_SECONDS` (the reconciler ends it). Leaving on purpose ends
/// it at once, as before.
#[tokio::test]
async fn a_guest_whose_connection_drops_keeps_the_stage_until_the_time_to_return_passes() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "comeback";
    app.start_stream(host, room).await;
    let on_stage = |guest: Uuid| app.on_stage_and_away(room, guest);
    let bring_on_stage = |guest: Uuid, sid: &'static str| join_and_take_stage(&app, host, room, guest, sid);
    let reconcile = || shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(120));

    let (roaming, leaving) = (Uuid::new_v4(), Uuid::new_v4());
    bring_on_stage(roaming, "PA_roam_1").await;
    bring_on_stage(leaving, "PA_leave").await;
    let roaming_id = roaming.to_string();

    // Replaced by their own new connection: still on stage, marked away until
    // the new connection's join arrives.
    let listed_away = || async {
        use shared::handlers::stage_state;
        let listed = app
            .send(
                stage_state,
                get_request(Some(&app.token_for(host)), &[("roomName", room)], None),
            )
            .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        let guest = listed.body["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["userId"] == roaming_id.as_str())
            .cloned()
            .expect("still listed as a guest");
        !guest["awaySince"].is_null()
    };
    left_because(&app, room, &roaming_id, "PA_roam_1", "DUPLICATE_IDENTITY").await;
    assert_eq!(
        on_stage(roaming).await,
        (true, true),
        "the turn outlives the lost connection"
    );
    assert!(listed_away().await, "the streamer's list shows the guest away");
    participant(
        &app,
        "participant_joined",
        room,
        &roaming_id,
        "PA_roam_2",
        "Guest",
        false,
    )
    .await;
    assert_eq!(on_stage(roaming).await, (true, false), "back: no longer away");
    assert!(!listed_away().await, "and back");
    assert_eq!(app.viewer_count(room).await, 2);

    // Timed out and not back: the turn holds its place until the time to
    // return has passed, then the reconciler ends it.
    left_because(&app, room, &roaming_id, "PA_roam_2", "CONNECTION_TIMEOUT").await;
    assert_eq!(app.viewer_count(room).await, 1, "a dropped viewer is not counted");
    let report = reconcile().await.unwrap();
    assert_eq!(report.stage_turns_ended, 0, "{report:?}");
    assert_eq!(on_stage(roaming).await, (true, true));
    away_past_the_time_to_return(&app, room, roaming).await;
    let report = reconcile().await.unwrap();
    assert_eq!(report.stage_turns_ended, 1, "{report:?}");
    assert_eq!(
        on_stage(roaming).await,
        (false, false),
        "not back within STAGE_RETURN_SECONDS"
    );

    // Leaving on purpose ends the turn at once.
    left_because(&app, room, &leaving.to_string(), "PA_leave", "CLIENT_INITIATED").await;
    assert_eq!(on_stage(leaving).await, (false, false));
    let guests: i64 = app
        .db_value(
            "SELECT count(*) FROM live_stage WHERE room_name = 'comeback' AND on_stage_since IS NOT NULL",
            &[],
        )
        .await;
    assert_eq!(guests, 0);
}

/// Back after the time to return, before the reconciler's run came by: the
/// turn is over, as that run would have ended it (migration 0054); the
/// place is free, and being on stage again takes a new invitation. A viewer
/// back in time keeps their raised hand, and so does a guest whose join was
/// made in time but told late (it waited in LiveKit's webhook queue for the
/// room): lateness is judged by when LiveKit made the join.
#[tokio::test]
async fn a_guest_back_after_the_time_to_return_finds_the_turn_over() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "back-too-late";
    app.start_stream(host, room).await;
    let (late, prompt, queued) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (late_id, prompt_id, queued_id) = (late.to_string(), prompt.to_string(), queued.to_string());
    join_and_take_stage(&app, host, room, late, "PA_late_1").await;
    join_and_take_stage(&app, host, room, queued, "PA_queued_1").await;
    participant(
        &app,
        "participant_joined",
        room,
        &prompt_id,
        "PA_prompt_1",
        "Viewer",
        false,
    )
    .await;
    let raised = app
        .call(
            shared::handlers::raise_hand,
            Some(&app.token_for(prompt)),
            &json!({"roomName": room, "raised": true}).to_string(),
        )
        .await;
    assert_eq!(raised.status, 200, "{}", raised.body);

    for (identity, sid) in [
        (&late_id, "PA_late_1"),
        (&prompt_id, "PA_prompt_1"),
        (&queued_id, "PA_queued_1"),
    ] {
        left_because(&app, room, identity, sid, "SIGNAL_CLOSE").await;
    }
    assert_eq!(app.on_stage_and_away(room, late).await, (true, true));
    away_past_the_time_to_return(&app, room, late).await;
    away_past_the_time_to_return(&app, room, queued).await;
    participant(
        &app,
        "participant_joined",
        room,
        &late_id,
        "PA_late_2",
        "Guest",
        false,
    )
    .await;
    participant(
        &app,
        "participant_joined",
        room,
        &prompt_id,
        "PA_prompt_2",
        "Viewer",
        false,
    )
    .await;
    // Made 30 s after the drop, told 61 s after it.
    let fields = json!({
        "name": "Guest", "state": "ACTIVE",
        "permission": {"canSubscribe": true, "canPublishData": true},
    });
    let made_at = chrono::Utc::now() - chrono::Duration::seconds(31);
    deliver_participant_event(
        &app,
        "participant_joined",
        room,
        ("PA_queued_2", &queued_id),
        fields,
        made_at,
    )
    .await;

    assert_eq!(
        app.on_stage_and_away(room, late).await,
        (false, false),
        "back after STAGE_RETURN_SECONDS: the turn is over"
    );
    assert_eq!(
        app.on_stage_and_away(room, queued).await,
        (true, false),
        "made in time: the turn goes on"
    );
    let hand: bool = app
        .db_value(
            "SELECT hand_raised_at IS NOT NULL AND away_since IS NULL FROM live_stage
             WHERE room_name = $1 AND user_id = $2",
            &[&room, &prompt],
        )
        .await;
    assert!(hand, "back in time: the hand is still up");
    let accepted = app
        .call(
            accept_stage,
            Some(&app.token_for(late)),
            &json!({"roomName": room}).to_string(),
        )
        .await;
    accepted.assert_error(409, "not_invited");
}

/// The invitee's last leave and the streamer's invitation at the same
/// moment, the invitation first: the leave waits for it and clears it, so no
/// one who is gone can accept and hold a guest slot.
#[tokio::test]
async fn an_invitation_racing_the_invitees_leave_never_puts_someone_gone_on_stage() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "invite-race";
    app.start_stream(host, room).await;
    let viewer = Uuid::new_v4();
    let viewer_id = viewer.to_string();
    participant(
        &app,
        "participant_joined",
        room,
        &viewer_id,
        "PA_gone",
        "Viewer",
        false,
    )
    .await;

    // The invitation, its transaction left open; the viewer never raised a
    // hand, so there is no stage row of theirs to lock.
    let inviting = app.db().await;
    inviting.batch_execute("BEGIN").await.unwrap();
    let outcome: String = inviting
        .query_one(
            "SELECT outcome FROM live_stage_change($1, $2, $3, 'invite', 3)",
            &[&room, &host, &viewer],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "ok");

    let left = AtomicBool::new(false);
    let leave = async {
        left_because(&app, room, &viewer_id, "PA_gone", "CLIENT_INITIATED").await;
        left.store(true, Ordering::SeqCst);
    };
    let commit = async {
        // The leave waits for the invitation (or, without the lock, is done).
        app.until_a_statement_waits_for_a_lock(&left).await;
        inviting.batch_execute("COMMIT").await.unwrap();
    };
    tokio::join!(leave, commit);

    let invited: bool = app
        .db_value(
            "SELECT coalesce(bool_or(invited_at IS NOT NULL), false) FROM live_stage
             WHERE room_name = $1 AND user_id = $2",
            &[&room, &viewer],
        )
        .await;
    assert!(!invited, "the leave cleared the invitation it waited for");
    let accept = json!({"roomName": room}).to_string();
    let accepted = app
        .call(accept_stage, Some(&app.token_for(viewer)), &accept)
        .await;
    accepted.assert_error(409, "not_invited");
}

/// A session the reconciler closes (its leave never told) may have been a
/// lost connection: a guest keeps the stage, away, for the time to return,
/// as after a drop; the late leave, if it says it was chosen, ends the turn.
#[tokio::test]
async fn a_guest_session_the_reconciler_closes_keeps_the_stage_for_the_time_to_return() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "closed-by-reconciler";
    app.start_stream(host, room).await;
    let mut guests = Vec::new();
    for sid in ["PA_quiet_1", "PA_quiet_2"] {
        // Told joined by a webhook, never connected to the real server: the
        // reconciler's listing does not have them.
        let guest = Uuid::new_v4();
        join_and_take_stage(&app, host, room, guest, sid).await;
        guests.push(guest);
    }
    let standing = |guest: Uuid| app.on_stage_and_away(room, guest);
    let report = shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(app.viewer_count(room).await, 0, "closed: {report:?}");
    assert_eq!(report.stage_turns_ended, 0, "{report:?}");
    for guest in &guests {
        assert_eq!(standing(*guest).await, (true, true), "on stage, away");
    }

    // The first one's leave arrives late, chosen: their turn ends now.
    left_because(
        &app,
        room,
        &guests[0].to_string(),
        "PA_quiet_1",
        "CLIENT_INITIATED",
    )
    .await;
    assert_eq!(standing(guests[0]).await, (false, false));
    // The second is not back in time: the reconciler ends their turn.
    away_past_the_time_to_return(&app, room, guests[1]).await;
    let report = shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(report.stage_turns_ended, 1, "{report:?}");
    assert_eq!(standing(guests[1]).await, (false, false));
}

/// The reconciler closed a guest's session (away from then); they came back
/// on a new connection and lost that one too (away again, from later). The
/// first session's leave, told late and chosen, ends the away turn its own
/// close began, not the newer one: that one is a drop, kept for the time to
/// return like any other.
#[tokio::test]
async fn a_late_chosen_leave_leaves_a_newer_drops_turn_alone() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "closed-then-dropped";
    app.start_stream(host, room).await;
    let guest = Uuid::new_v4();
    let identity = guest.to_string();
    join_and_take_stage(&app, host, room, guest, "PA_closed").await;
    shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(app.on_stage_and_away(room, guest).await, (true, true));

    participant(
        &app,
        "participant_joined",
        room,
        &identity,
        "PA_back",
        "Guest",
        false,
    )
    .await;
    assert_eq!(app.on_stage_and_away(room, guest).await, (true, false), "back");
    left_because(&app, room, &identity, "PA_back", "SIGNAL_CLOSE").await;
    assert_eq!(app.on_stage_and_away(room, guest).await, (true, true), "dropped");

    left_because(&app, room, &identity, "PA_closed", "CLIENT_INITIATED").await;
    assert_eq!(
        app.on_stage_and_away(room, guest).await,
        (true, true),
        "the newer drop keeps its time to return"
    );
    away_past_the_time_to_return(&app, room, guest).await;
    let report = shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(report.stage_turns_ended, 1, "{report:?}");
    assert_eq!(app.on_stage_and_away(room, guest).await, (false, false));
}

/// The guest's accept and the streamer's removal committed close together,
/// their `UpdateParticipant`s reaching LiveKit in the other order: the
/// accept's, now out of date, arrives last. Told a standing the database has
/// moved on from, the room gets the newer one as well, at once, instead of
/// keeping the guest's camera until the reconciler's next run.
#[tokio::test]
async fn a_standing_told_late_is_followed_by_the_one_committed_since() {
    use shared::store::chat::Standing;
    use shared::store::stage::StageStanding;
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "late-accept";
    let (guest, _client, invite) = live_with_a_guest_on_stage(&app, host, room).await;
    let removed = app
        .call(remove_from_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(!can_publish(&app, room).await, "removed");

    // The accept's call, arriving after the removal's.
    let accepted_standing = Standing {
        banned: false,
        muted: false,
        stage: StageStanding {
            hand_raised: false,
            invited: false,
            on_stage: true,
        },
    };
    let room_name = shared::domain::RoomName::parse(room.to_owned()).unwrap();
    shared::handlers::stage::apply_standing_in_room(&app.state, &room_name, guest, accepted_standing)
        .await
        .unwrap();
    assert!(
        !can_publish(&app, room).await,
        "the removal, committed last, is what the room has"
    );
    let attributes = app.livekit().participants(room).await[0].attributes.clone();
    assert_eq!(
        attributes.get("on_stage").map(String::as_str),
        Some("false"),
        "{attributes:?}"
    );
}

/// Every kind the API accepts is one the database counts (its CHECK lists
/// them too) and the stats report by its name.
#[tokio::test]
async fn every_reaction_kind_is_counted_and_reported_by_name() {
    use shared::store::reactions::ReactionKind;
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "every-kind";
    app.start_stream(host, room).await;
    for kind in ReactionKind::ALL {
        let body = json!({"roomName": room, "kind": kind.as_str()}).to_string();
        let tapped = app.call(react, Some(&app.token_for(Uuid::new_v4())), &body).await;
        assert_eq!(tapped.status, 200, "{}: {}", kind.as_str(), tapped.body);
    }
    let reported = stats(&app, host, room).await;
    let expected: serde_json::Map<String, Value> = ReactionKind::ALL
        .iter()
        .map(|kind| (kind.as_str().to_owned(), json!(1)))
        .collect();
    assert_eq!(reported["reactions"], Value::Object(expected), "{reported}");
}

/// An unmute waiting for the streamer's removal of that guest (a
/// restriction change waits for stage changes in flight) answers, and tells
/// LiveKit, the place the removal committed: off stage. It read the stage
/// before the wait, and gave the removed guest their camera back.
#[tokio::test]
async fn moderation_tells_the_stage_place_committed_before_it() {
    use shared::store::chat::{self, Action};
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::spawn().await;
    let (host, guest) = (Uuid::new_v4(), Uuid::new_v4());
    let room = "unmute-racing-removal";
    app.start_stream(host, room).await;
    join_and_take_stage(&app, host, room, guest, "PA_guest").await;
    let muted = app
        .call(
            moderate,
            Some(&app.token_for(host)),
            &json!({"roomName": room, "userId": guest, "action": "mute"}).to_string(),
        )
        .await;
    assert_eq!(muted.status, 200, "{}", muted.body);

    // The removal, its transaction left open.
    let mut removing = crate::helpers::connect(&app.api_database_url).await;
    let removal = removing.transaction().await.unwrap();
    let outcome: String = removal
        .query_one(
            "SELECT outcome FROM live_stage_change($1, $2, $3, 'remove', 3)",
            &[&room, &host, &guest],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "ok");

    let done = AtomicBool::new(false);
    let room_name = shared::domain::RoomName::parse(room.into()).unwrap();
    let unmute = async {
        let client = app.state.db.get().await.unwrap();
        let moderated = chat::moderate(&client, &room_name, host, guest, Action::Unmute)
            .await
            .unwrap();
        done.store(true, Ordering::SeqCst);
        moderated
    };
    let commit = async {
        app.until_a_statement_waits_for_a_lock(&done).await;
        removal.commit().await.unwrap();
    };
    let (moderated, ()) = tokio::join!(unmute, commit);
    assert!(!moderated.standing.muted);
    assert!(
        !moderated.standing.stage.on_stage,
        "the removal committed before the unmute: off stage"
    );
}

/// The fold takes a stream's row before its count rows, as an account
/// deletion's cascade does (migration 0071): a stream whose row another
/// session holds is passed over, not waited for (waiting, while holding the
/// count rows that cascade deletes next, deadlocked with it), and folded on a
/// later run.
#[tokio::test]
async fn a_fold_passes_over_a_stream_whose_row_another_session_holds() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "fold-held-row";
    app.start_stream(host, room).await;
    let ended = app
        .call(
            end_stream,
            Some(&app.token_for(host)),
            &json!({"roomName": room}).to_string(),
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let mut admin = app.db().await;
    admin
        .execute(
            "UPDATE live_streams SET created_at = created_at - interval '3 hours', ended_at = ended_at - interval '2 hours'
             WHERE id = $1",
            &[&room],
        )
        .await
        .unwrap();
    // A kind tapped only in shard 5: folding it inserts its shard 0.
    admin
        .execute(
            "INSERT INTO live_reaction_counts (room_name, kind, shard, n) VALUES ($1, 'wow', 5, 3)",
            &[&room],
        )
        .await
        .unwrap();
    let rooms = vec![room.to_owned()];
    let fold = "SELECT live_fold_ended_streams($1)";
    let client = app.state.db.get().await.unwrap();

    let deleting = admin.transaction().await.unwrap();
    deleting
        .execute("SELECT FROM live_streams WHERE id = $1 FOR UPDATE", &[&room])
        .await
        .unwrap();
    let folded: i32 = client
        .query_one(fold, &[&rooms])
        .await
        .expect("the fold does not wait for the held row")
        .get(0);
    assert_eq!(folded, 0);
    deleting.rollback().await.unwrap();

    let folded: i32 = client.query_one(fold, &[&rooms]).await.unwrap().get(0);
    assert_eq!(folded, 1);
    let wow: Vec<(i16, i64)> = app
        .db()
        .await
        .query(
            "SELECT shard, n FROM live_reaction_counts WHERE room_name = $1 AND kind = 'wow'",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(wow, [(0, 3)]);
}

/// An account deleted while the reconciler retires two of its long-ended
/// streams: the deletion holds the streams' rows and deletes their stage rows
/// stream by stream (the cascade). The retire takes the streams' rows first
/// and passes over one held elsewhere; taking the stage rows of both at once
/// instead, it waited for the deletion's of one while holding the other's,
/// which the deletion needed next: a deadlock, and Postgres aborting one of
/// them, perhaps the user's deletion.
#[tokio::test]
async fn retiring_old_streams_never_deadlocks_with_their_accounts_deletion() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let mut admin = app.db().await;
    for room in ["retired-a", "retired-b"] {
        crate::helpers::insert_live_stream(&admin, room, host).await;
        admin
            .execute(
                "UPDATE live_streams SET is_live = false, created_at = now() - interval '9 days',
                        ended_at = now() - interval '8 days', room_closed_at = now() - interval '8 days'
                 WHERE id = $1",
                &[&room],
            )
            .await
            .unwrap();
        admin
            .execute(
                "INSERT INTO live_stage (room_name, user_id, hand_raised_at) VALUES ($1, $2, now() - interval '8 days')",
                &[&room, &Uuid::new_v4()],
            )
            .await
            .unwrap();
    }
    let deletion = admin.transaction().await.unwrap();
    // The cascade's first stream: its row and its stage row held.
    deletion
        .execute("DELETE FROM live_streams WHERE id = 'retired-b'", &[])
        .await
        .unwrap();
    let started = Instant::now();
    let report = shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        (report.stage_rows_pruned, report.clean_up_failed.as_slice()),
        (1, [].as_slice()),
        "the stream held elsewhere is passed over, not waited for: {report:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The cascade's next stream: nothing of the reconciler's holds it up.
    deletion
        .execute("DELETE FROM live_streams WHERE id = 'retired-a'", &[])
        .await
        .expect("the account's deletion goes through");
    deletion.commit().await.unwrap();
}

/// A stream that ended longer ago than the session retention is retired by
/// the reconciler: its 16 count shards and its reaction shards folded into
/// one row each, its stage rows deleted (migration 0067), and its stats read
/// the same afterwards; a webhook that arrives for it later still changes
/// nothing, and the next run has nothing left to fold.
#[tokio::test]
async fn a_long_ended_streams_shards_are_folded_and_its_stats_stay_the_same() {
    use shared::handlers::raise_hand;
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "folded-room";
    app.start_stream(host, room).await;
    let viewers: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    for (n, viewer) in viewers.iter().enumerate() {
        let (identity, sid) = (viewer.to_string(), format!("PA_fold{n}"));
        participant(&app, "participant_joined", room, &identity, &sid, "Viewer", false).await;
    }
    for (n, viewer) in viewers.iter().enumerate().take(4) {
        let (identity, sid) = (viewer.to_string(), format!("PA_fold{n}"));
        participant(&app, "participant_left", room, &identity, &sid, "Viewer", false).await;
    }
    for (n, viewer) in viewers.iter().enumerate() {
        let kind = if n % 3 == 0 { "fire" } else { "heart" };
        let tapped = app
            .call(
                react,
                Some(&app.token_for(*viewer)),
                &json!({"roomName": room, "kind": kind}).to_string(),
            )
            .await;
        assert_eq!(tapped.status, 200, "{}", tapped.body);
    }
    for viewer in &viewers[4..6] {
        let raised = app
            .call(
                raise_hand,
                Some(&app.token_for(*viewer)),
                &json!({"roomName": room, "raised": true}).to_string(),
            )
            .await;
        assert_eq!(raised.status, 200, "{}", raised.body);
    }
    let ended = app
        .call(
            end_stream,
            Some(&app.token_for(host)),
            &json!({"roomName": room}).to_string(),
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let db = app.db().await;
    db.execute(
        "UPDATE live_streams SET created_at = created_at - interval '8 days', ended_at = ended_at - interval '8 days'
         WHERE id = $1",
        &[&room],
    )
    .await
    .unwrap();
    let rows = |table: &'static str| {
        let db = &db;
        async move {
            let sql = format!("SELECT count(*) FROM {table} WHERE room_name = $1");
            db.query_one(&sql, &[&room]).await.unwrap().get::<_, i64>(0)
        }
    };
    assert_eq!(rows("live_viewer_counts").await, 16);
    assert!(
        rows("live_reaction_counts").await > 2,
        "the taps spread over shards"
    );
    assert_eq!(rows("live_stage").await, 2);
    let before = stats(&app, host, room).await;
    assert_eq!(
        (
            &before["uniqueViewers"],
            &before["peakViewers"],
            &before["reactions"]
        ),
        (&json!(12), &json!(12), &json!({"heart": 8, "fire": 4})),
        "{before}"
    );

    let report = shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        (report.streams_folded, report.stage_rows_pruned),
        (1, 2),
        "{report:?}"
    );
    assert_eq!(rows("live_viewer_counts").await, 1);
    assert_eq!(rows("live_reaction_counts").await, 2, "one row a kind");
    assert_eq!(rows("live_stage").await, 0);
    let after = stats(&app, host, room).await;
    let same_but_the_sums = |stats: &Value| {
        let mut stats = stats.clone();
        for sum in ["totalWatchSeconds", "averageWatchSeconds"] {
            stats[sum] = Value::Null;
        }
        stats
    };
    assert_eq!(same_but_the_sums(&after), same_but_the_sums(&before));
    for sum in ["totalWatchSeconds", "averageWatchSeconds"] {
        let (was, is) = (before[sum].as_f64().unwrap(), after[sum].as_f64().unwrap());
        assert!((was - is).abs() < 1e-6 * was.max(1.0), "{sum}: {was} then {is}");
    }

    let late = deliver_participant_event(
        &app,
        "participant_joined",
        room,
        ("PA_late", &Uuid::new_v4().to_string()),
        json!({"name": "Late", "state": "ACTIVE", "permission": {"canSubscribe": true}}),
        chrono::Utc::now(),
    )
    .await;
    assert_eq!(late["outcome"], "ignored", "{late}");
    assert_eq!(rows("live_viewer_counts").await, 1);
    assert_eq!(stats(&app, host, room).await, after);
    let next = shared::scheduled::reconcile::reconcile(&app.state, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((next.streams_folded, next.stage_rows_pruned), (0, 0), "{next:?}");
}
