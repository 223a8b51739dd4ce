//! The rate limiter (GCRA, migration 0008): exactly the limit passes in a
//! burst, whatever the limit; the state is one timestamp per key in an
//! UNLOGGED table; the refusal says when to come back.

use serde_json::json;
use shared::handlers::{
    accept_stage, decline_stage, end_stream, invite_to_stage, issue_token, moderate, post_message,
    raise_hand, react, remove_from_stage, stage_state, start_stream, stream_stats,
};
use uuid::Uuid;

use crate::helpers::{LIVEKIT_API_SECRET, TestApp, get_request, signed_webhook, webhook_event};

async fn hit(client: &tokio_postgres::Client, key: &str, window: f64, max: i64) -> Option<i64> {
    client
        .query_one("SELECT rate_limit_hit($1, $2, $3)", &[&key, &window, &max])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_burst_gets_exactly_the_limit_whatever_the_limit() {
    let app = TestApp::spawn().await;
    let client = app.state.db.get().await.unwrap();
    // GCRA lets one more hit through for every interval (window / max) the
    // burst takes, so each window makes that interval far longer than a
    // burst of round trips takes on a busy machine (2,000 of them can take
    // more than the 1.8 s a one-hour window gives).
    for (max, window) in [(5_i64, 600.0), (60, 3_600.0), (2_000, 36_000.0)] {
        let key = format!("burst:{max}");
        for n in 0..max {
            assert_eq!(hit(&client, &key, window, max).await, None, "hit {n} of {max}");
        }
        let retry = hit(&client, &key, window, max)
            .await
            .unwrap_or_else(|| panic!("one over the limit of {max} is refused"));
        // The next hit is due one interval (window / max) after the burst.
        let interval = (window / max as f64).ceil() as i64;
        assert!(
            (1..=interval.max(1)).contains(&retry),
            "max {max}: retry after {retry}s"
        );
    }
}

#[tokio::test]
async fn the_state_is_one_timestamp_per_key_in_an_unlogged_table() {
    let app = TestApp::spawn().await;
    let client = app.state.db.get().await.unwrap();
    for _ in 0..1_000 {
        hit(&client, "busy", 60.0, 100_000).await;
    }
    let admin = app.db().await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM rate_limits WHERE key = 'busy'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let persistence: i8 = admin
        .query_one(
            "SELECT relpersistence::\"char\" FROM pg_class WHERE relname = 'rate_limits'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        persistence as u8, b'u',
        "UNLOGGED: no WAL, no durable commit to wait for"
    );
    let columns: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'rate_limits'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 2, "key and one timestamp, whatever the limit");
}

/// A refused token request, tap or chat post (banned, muted, unknown room,
/// ended stream) gets its refusal every time, never a 429 once the limit is
/// spent, and leaves the caller's budget to the requests that are served.
/// (Each call's future is boxed: inlined, the test's own future outgrew the
/// test thread's stack.)
#[tokio::test]
async fn refusals_keep_their_answer_and_do_not_use_up_the_limit() {
    let app = TestApp::spawn_with_settings(vec![
        ("TOKEN_RATE_LIMIT_REQUESTS", "2".into()),
        ("REACTION_RATE_LIMIT_TAPS", "2".into()),
        ("CHAT_RATE_LIMIT_MESSAGES", "2".into()),
        ("CHAT_RATE_LIMIT_WINDOW_SECONDS", "600".into()),
    ])
    .await;
    let (host, banned, muted, viewer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "limited-refusals").await;
    let ended_host = Uuid::new_v4();
    app.start_stream(ended_host, "limited-ended").await;
    for (user, action) in [(banned, "ban"), (muted, "mute")] {
        let body = json!({"roomName": "limited-refusals", "userId": user, "action": action}).to_string();
        assert_eq!(
            app.call(moderate, Some(&app.token_for(host)), &body).await.status,
            200
        );
    }
    let end = json!({"roomName": "limited-ended"}).to_string();
    assert_eq!(
        app.call(end_stream, Some(&app.token_for(ended_host)), &end)
            .await
            .status,
        200
    );
    let app = &app;
    let token = |user: Uuid, room: &str| {
        let body = json!({"roomName": room, "participantName": "Ada"}).to_string();
        async move { Box::pin(app.call(issue_token, Some(&app.token_for(user)), &body)).await }
    };
    let tap = |user: Uuid, room: &str| {
        let body = json!({"roomName": room, "kind": "heart"}).to_string();
        async move { Box::pin(app.call(react, Some(&app.token_for(user)), &body)).await }
    };
    let say = |user: Uuid, room: &str| {
        let body = json!({"roomName": room, "text": "hello"}).to_string();
        async move { Box::pin(app.call(post_message, Some(&app.token_for(user)), &body)).await }
    };

    for _ in 0..4 {
        token(banned, "limited-refusals")
            .await
            .assert_error(403, "banned");
        tap(banned, "limited-refusals").await.assert_error(403, "banned");
        say(banned, "limited-refusals").await.assert_error(403, "banned");
        say(muted, "limited-refusals").await.assert_error(403, "muted");
        token(viewer, "nowhere")
            .await
            .assert_error(404, "stream_not_found");
        tap(viewer, "nowhere").await.assert_error(404, "stream_not_found");
        say(viewer, "nowhere").await.assert_error(404, "stream_not_found");
        say(viewer, "limited-ended")
            .await
            .assert_error(409, "stream_ended");
    }
    // The refusals spent nothing: the limit is theirs whole.
    let unmute = json!({"roomName": "limited-refusals", "userId": muted, "action": "unmute"}).to_string();
    assert_eq!(
        app.call(moderate, Some(&app.token_for(host)), &unmute)
            .await
            .status,
        200
    );
    for _ in 0..2 {
        assert_eq!(token(viewer, "limited-refusals").await.status, 200);
        assert_eq!(tap(viewer, "limited-refusals").await.status, 200);
        assert_eq!(say(viewer, "limited-refusals").await.status, 201);
        assert_eq!(say(muted, "limited-refusals").await.status, 201);
    }
    token(viewer, "limited-refusals")
        .await
        .assert_error(429, "rate_limited");
    tap(viewer, "limited-refusals")
        .await
        .assert_error(429, "rate_limited");
    say(viewer, "limited-refusals")
        .await
        .assert_error(429, "rate_limited");
    say(muted, "limited-refusals")
        .await
        .assert_error(429, "rate_limited");
}

/// The chat limit is per stream (a viewer who spent it in one room may talk
/// in another), and a ban or a mute holds in its stream only.
#[tokio::test]
async fn the_chat_limit_and_moderation_hold_in_their_own_stream_only() {
    let app = TestApp::spawn_with_settings(vec![
        ("CHAT_RATE_LIMIT_MESSAGES", "1".into()),
        ("CHAT_RATE_LIMIT_WINDOW_SECONDS", "600".into()),
    ])
    .await;
    let (host, other_host, chatty, banned) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "room-a").await;
    app.start_stream(other_host, "room-b").await;
    let app = &app;
    let say = |user: Uuid, room: &str| {
        let body = json!({"roomName": room, "text": "hello"}).to_string();
        async move { app.call(post_message, Some(&app.token_for(user)), &body).await }
    };
    assert_eq!(say(chatty, "room-a").await.status, 201);
    say(chatty, "room-a").await.assert_error(429, "rate_limited");
    assert_eq!(say(chatty, "room-b").await.status, 201, "another stream's budget");

    let ban = json!({"roomName": "room-a", "userId": banned, "action": "ban"}).to_string();
    assert_eq!(
        app.call(moderate, Some(&app.token_for(host)), &ban).await.status,
        200
    );
    say(banned, "room-a").await.assert_error(403, "banned");
    app.request_token(&app.token_for(banned), "room-a")
        .await
        .assert_error(403, "banned");
    assert_eq!(say(banned, "room-b").await.status, 201, "banned from room-a only");
    assert_eq!(
        app.request_token(&app.token_for(banned), "room-b").await.status,
        200
    );
}

/// The stage's limit counts only the changes that stand: refusals (not the
/// streamer, not invited) keep their answer and spend nothing, and a change
/// over the limit is refused and undone.
#[tokio::test]
async fn refused_stage_changes_keep_their_answer_and_do_not_use_up_the_limit() {
    let app = TestApp::spawn_with_settings(vec![("STAGE_RATE_LIMIT_REQUESTS", "2".into())]).await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    let room = "limited-stage";
    app.start_stream(host, room).await;
    let app = &app;
    let hand = |raised: bool| {
        let body = json!({"roomName": room, "raised": raised}).to_string();
        async move { app.call(raise_hand, Some(&app.token_for(viewer)), &body).await }
    };
    let as_viewer = Some(app.token_for(viewer));
    let about_the_host = json!({"roomName": room, "userId": host}).to_string();
    let answer = json!({"roomName": room}).to_string();

    for _ in 0..4 {
        app.call(invite_to_stage, as_viewer.as_deref(), &about_the_host)
            .await
            .assert_error(403, "forbidden");
        app.call(remove_from_stage, as_viewer.as_deref(), &about_the_host)
            .await
            .assert_error(403, "forbidden");
        app.call(accept_stage, as_viewer.as_deref(), &answer)
            .await
            .assert_error(409, "not_invited");
    }
    // Its refusals spent nothing: the viewer's two raises are served (a
    // lowering takes standing away, which spends nothing).
    assert_eq!(hand(true).await.status, 200);
    assert_eq!(hand(false).await.status, 200);
    assert_eq!(hand(true).await.status, 200);
    assert_eq!(hand(false).await.status, 200);
    // The third is over the limit, and its change does not stand.
    let limited = hand(true).await;
    limited.assert_error(429, "rate_limited");
    assert!(
        limited.headers.contains_key("retry-after"),
        "{:?}",
        limited.headers
    );
    assert!(
        !stage_mark(app, room, viewer, "hand_raised_at").await,
        "the refused raise was undone"
    );
}

/// Whether `user`'s stage row in `room` has `column` (a time) set.
async fn stage_mark(app: &TestApp, room: &str, user: Uuid, column: &str) -> bool {
    app.db_value(
        &format!(
            "SELECT EXISTS (SELECT FROM live_stage WHERE room_name = $1 AND user_id = $2
                            AND {column} IS NOT NULL)"
        ),
        &[&room, &user],
    )
    .await
}

/// Taking standing away is never refused for the limit: a host who spent it
/// still takes a guest off the stage, and a viewer who spent theirs still
/// declines an invitation. A withdrawal that changes nothing (a repeat: how
/// the app retries one LiveKit missed) counts against an allowance of its
/// own (migration 0056), so a spent limit does not refuse the retry, and
/// repeats stay bounded.
#[tokio::test]
async fn taking_someone_off_the_stage_is_never_over_the_limit() {
    let app = TestApp::spawn_with_settings(vec![("STAGE_RATE_LIMIT_REQUESTS", "2".into())]).await;
    let (host, guest, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let room = "limited-withdrawals";
    app.start_stream(host, room).await;
    for (user, sid) in [(guest, "PA_guest"), (other, "PA_other")] {
        let body = webhook_event(
            &format!("EV_{sid}"),
            "participant_joined",
            room,
            Some((&user.to_string(), sid, false)),
        );
        assert_eq!(
            app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
                .await
                .status,
            200
        );
    }
    let (as_host, as_guest) = (app.token_for(host), app.token_for(guest));
    let about = |user: Uuid| json!({"roomName": room, "userId": user}).to_string();
    let answer = json!({"roomName": room}).to_string();
    // The other viewer spends their own limit on their hand.
    let as_other = app.token_for(other);
    let hand = json!({"roomName": room, "raised": true}).to_string();
    for _ in 0..2 {
        let raised = app.call(raise_hand, Some(&as_other), &hand).await;
        assert_eq!(raised.status, 200, "{}", raised.body);
    }
    app.call(raise_hand, Some(&as_other), &hand)
        .await
        .assert_error(429, "rate_limited");

    // The host's two invitations spend theirs; the guest's accept is the guest's.
    for user in [guest, other] {
        let invited = app.call(invite_to_stage, Some(&as_host), &about(user)).await;
        assert_eq!(invited.status, 200, "{}", invited.body);
    }
    let accepted = app.call(accept_stage, Some(&as_guest), &answer).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    app.call(invite_to_stage, Some(&as_host), &about(other))
        .await
        .assert_error(429, "rate_limited");

    let removed = app.call(remove_from_stage, Some(&as_host), &about(guest)).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(
        !stage_mark(&app, room, guest, "on_stage_since").await,
        "off the stage, though the host's limit is spent"
    );
    for _ in 0..2 {
        let repeated = app.call(remove_from_stage, Some(&as_host), &about(guest)).await;
        assert_eq!(
            (repeated.status, &repeated.body["roomUpdated"]),
            (200, &json!(true)),
            "a retried removal though the host's limit is spent: {}",
            repeated.body
        );
    }
    app.call(remove_from_stage, Some(&as_host), &about(guest))
        .await
        .assert_error(429, "rate_limited");
    let declined = app.call(decline_stage, Some(&as_other), &answer).await;
    assert_eq!(
        declined.status, 200,
        "a decline though their limit is spent: {}",
        declined.body
    );
    assert!(!stage_mark(&app, room, other, "invited_at").await);
}

/// `/live/start` counts only the starts that reach LiveKit (a new room, or a
/// retried start of the caller's live stream): a name that is taken, or one
/// live stream too many, keeps its refusal; a start over the limit gives up
/// the claim on its name.
#[tokio::test]
async fn refused_starts_keep_their_answer_and_do_not_use_up_the_limit() {
    let app = TestApp::spawn_with_settings(vec![("START_RATE_LIMIT_REQUESTS", "2".into())]).await;
    let (host, other) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(other, "others-room").await;
    app.start_stream(host, "hosts-room").await;
    let start = |room: &str| {
        let body = json!({"title": "t", "roomName": room}).to_string();
        let app = &app;
        async move { app.call(start_stream, Some(&app.token_for(host)), &body).await }
    };
    for _ in 0..4 {
        start("others-room").await.assert_error(409, "room_taken");
        start("a-second-room").await.assert_error(409, "already_live");
    }
    // The host's first start spent one; a retried start is served and spends
    // the other.
    assert_eq!(start("hosts-room").await.status, 200);
    start("hosts-room").await.assert_error(429, "rate_limited");

    // Over the limit, a new name's claim is undone with the hit: another
    // streamer may take the name at once (a claim holds it for a minute).
    let ended = app.end_stream(host, "hosts-room").await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    start("wanted-name").await.assert_error(429, "rate_limited");
    let claims: i64 = app
        .db_value(
            "SELECT count(*) FROM live_room_claims WHERE room_name = 'wanted-name'",
            &[],
        )
        .await;
    assert_eq!(claims, 0);
    app.start_stream(Uuid::new_v4(), "wanted-name").await;
}

/// The reads of a room share one budget, spent only by reads that are
/// served: someone else's stats or raised hands (403), or an unknown
/// stream's (404), keep their answer.
#[tokio::test]
async fn refused_reads_keep_their_answer_and_do_not_use_up_the_limit() {
    let app = TestApp::spawn_with_settings(vec![("READ_RATE_LIMIT_REQUESTS", "2".into())]).await;
    let (host, other) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "read-limits").await;
    let stats = |user: Uuid, id: &str| {
        let request = get_request(Some(&app.token_for(user)), &[], Some(id));
        let app = &app;
        async move { app.send(stream_stats, request).await }
    };
    let hands = |user: Uuid, room: &str| {
        let request = get_request(Some(&app.token_for(user)), &[("roomName", room)], None);
        let app = &app;
        async move { app.send(stage_state, request).await }
    };
    for _ in 0..4 {
        stats(other, "read-limits").await.assert_error(403, "forbidden");
        stats(host, "nowhere").await.assert_error(404, "stream_not_found");
        hands(other, "read-limits").await.assert_error(403, "forbidden");
        hands(host, "nowhere").await.assert_error(404, "stream_not_found");
    }
    assert_eq!(stats(host, "read-limits").await.status, 200);
    assert_eq!(hands(host, "read-limits").await.status, 200);
    stats(host, "read-limits").await.assert_error(429, "rate_limited");
    hands(host, "read-limits").await.assert_error(429, "rate_limited");
}
