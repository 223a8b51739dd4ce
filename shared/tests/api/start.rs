use serde_json::json;
use shared::handlers::start_stream;
use uuid::Uuid;

use crate::helpers::{AppOptions, LiveKitMode, TestApp, verify_livekit_token};

#[tokio::test]
async fn start_creates_a_live_stream_and_returns_a_host_token() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let body =
        json!({"title": "  Learning Yoruba Today!  ", "roomName": "stream-abc123", "participantName": "Ada"});
    let response = app
        .call(start_stream, Some(&app.token_for(user)), &body.to_string())
        .await;

    assert_eq!(response.status, 201, "{}", response.body);
    let stream = &response.body["stream"];
    assert_eq!(stream["id"], "stream-abc123");
    assert_eq!(stream["title"], "Learning Yoruba Today!", "title is trimmed");
    assert_eq!(stream["streamerId"], user.to_string());
    assert_eq!(stream["isLive"], true);
    assert_eq!(stream["viewerCount"], 0);
    let created_at = chrono::DateTime::parse_from_rfc3339(stream["createdAt"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - created_at.to_utc()).num_seconds().abs() < 60);
    assert_eq!(response.body["serverUrl"], app.livekit_url());

    let claims = verify_livekit_token(response.body["token"].as_str().unwrap());
    assert_eq!(claims.sub, user.to_string(), "identity is the user id");
    assert_eq!(claims.name, "Ada");
    assert_eq!(claims.video.room, "stream-abc123");
    assert!(claims.video.room_join);
    assert_eq!(claims.video.can_publish, Some(true));

    let row = app.stream_row("stream-abc123").await.expect("stream stored");
    assert_eq!(row.get::<_, Uuid>("streamer_id"), user);
    assert_eq!(row.get::<_, String>("title"), "Learning Yoruba Today!");
    assert!(row.get::<_, bool>("is_live"));
    assert_eq!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("ended_at"),
        None
    );
}

#[tokio::test]
async fn start_without_a_room_name_generates_a_uuid_room() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let response = app
        .call(start_stream, Some(&app.token_for(user)), r#"{"title":"Hi"}"#)
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let room = response.body["stream"]["id"].as_str().unwrap();
    assert_eq!(Uuid::parse_str(room).unwrap().get_version_num(), 4);
    let claims = verify_livekit_token(response.body["token"].as_str().unwrap());
    assert_eq!(claims.video.room, room);
    assert_eq!(
        claims.name,
        user.to_string(),
        "without participantName the name is the user id"
    );
    assert!(app.stream_row(room).await.is_some());
}

#[tokio::test]
async fn retried_start_by_the_same_streamer_returns_the_live_stream_with_200() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let token = app.token_for(user);
    let body = json!({"title": "First", "roomName": "retry-room"}).to_string();
    let first = app.call(start_stream, Some(&token), &body).await;
    let again = json!({"title": "Second", "roomName": "retry-room"}).to_string();
    let second = app.call(start_stream, Some(&token), &again).await;

    assert_eq!((first.status, second.status), (201, 200), "{}", second.body);
    assert_eq!(
        second.body["stream"], first.body["stream"],
        "the existing stream, unchanged"
    );
    verify_livekit_token(second.body["token"].as_str().unwrap());
    let count: i64 = app.db_value("SELECT count(*) FROM live_streams", &[]).await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn concurrent_starts_of_one_room_by_its_streamer_create_it_once() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    let body = json!({"title": "Race", "roomName": "race-room"}).to_string();
    let calls = (0..8).map(|_| app.call(start_stream, Some(&token), &body));
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 7, "{statuses:?}");
}

#[tokio::test]
async fn a_room_name_used_by_another_streamer_is_taken() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "popular").await;
    let response = app
        .call(
            start_stream,
            Some(&app.token_for(Uuid::new_v4())),
            r#"{"title":"Mine now","roomName":"popular"}"#,
        )
        .await;
    response.assert_error(409, "room_taken");
    let row = app.stream_row("popular").await.unwrap();
    assert_eq!(
        row.get::<_, String>("title"),
        "A stream",
        "the original stream is untouched"
    );
}

#[tokio::test]
async fn an_ended_room_name_cannot_be_started_again() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    app.start_stream(user, "once").await;
    let token = app.token_for(user);
    let end = app
        .call(
            shared::handlers::end_stream,
            Some(&token),
            r#"{"roomName":"once"}"#,
        )
        .await;
    assert_eq!(end.status, 200);
    let again = app
        .call(
            start_stream,
            Some(&token),
            r#"{"title":"Again","roomName":"once"}"#,
        )
        .await;
    again.assert_error(409, "room_taken");
    assert!(!app.stream_row("once").await.unwrap().get::<_, bool>("is_live"));
}

#[tokio::test]
async fn invalid_titles_and_room_names_are_rejected_with_400() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    let long_title = "x".repeat(201);
    let long_room = "r".repeat(129);
    for (body, mentions) in [
        (json!({"title": "   "}), "title"),
        (json!({"title": long_title}), "title"),
        (json!({"title": 42}), "invalid type"),
        (json!({}), "missing field `title`"),
        (json!({"title": "ok", "roomName": "no spaces"}), "roomName"),
        (json!({"title": "ok", "roomName": long_room}), "roomName"),
        (json!({"title": "ok", "roomName": ""}), "roomName"),
        (json!({"title": "ok", "participantName": ""}), "participantName"),
        (json!({"title": "ok", "isLive": false}), "unknown field `isLive`"),
    ] {
        let response = app.call(start_stream, Some(&token), &body.to_string()).await;
        response.assert_error(400, "invalid_request");
        let message = response.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{body}: {message}");
    }
    let count: i64 = app.db_value("SELECT count(*) FROM live_streams", &[]).await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_title_of_exactly_200_characters_is_accepted() {
    let app = TestApp::spawn().await;
    let title = "ö".repeat(200);
    let body = json!({"title": title}).to_string();
    let response = app
        .call(start_stream, Some(&app.token_for(Uuid::new_v4())), &body)
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["stream"]["title"], title);
}

/// On a Supabase database `public.profiles` exists and streams reference it.
async fn app_with_profiles_table() -> TestApp {
    let url = crate::helpers::create_database().await;
    crate::helpers::connect(&url)
        .await
        .batch_execute("CREATE TABLE public.profiles (id UUID PRIMARY KEY, username TEXT)")
        .await
        .unwrap();
    shared::store::migrate::migrate_url(&url).await.unwrap();
    TestApp::spawn_with(AppOptions {
        database_url: Some(url),
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn with_a_profiles_table_a_user_without_a_profile_cannot_go_live() {
    let app = app_with_profiles_table().await;
    let response = app
        .call(
            start_stream,
            Some(&app.token_for(Uuid::new_v4())),
            r#"{"title":"Hi","roomName":"no-profile"}"#,
        )
        .await;
    response.assert_error(403, "profile_required");
    assert!(!app.livekit().has_room("no-profile").await);
    let claims: i64 = app.db_value("SELECT count(*) FROM live_room_claims", &[]).await;
    assert_eq!(claims, 0, "nor a claim on its name");
}

/// The profile is checked before LiveKit is asked for a room: with LiveKit
/// down, the answer is still the refusal (not a 503 from `CreateRoom`), and
/// a refused start spends none of the caller's start limit.
#[tokio::test]
async fn a_start_without_a_profile_never_reaches_livekit() {
    let app = app_with_profiles_table().await;
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let user = Uuid::new_v4();
    for _ in 0..12 {
        app.call(
            start_stream,
            Some(&app.token_for(user)),
            r#"{"title":"Hi","roomName":"no-profile"}"#,
        )
        .await
        .assert_error(403, "profile_required");
    }
    let spent: i64 = app
        .db_value("SELECT count(*) FROM rate_limits WHERE key LIKE 'start:%'", &[])
        .await;
    assert_eq!(spent, 0, "refusals leave the start limit alone");
}

/// A profile deleted between the check and the commit is still refused, by
/// the foreign key, with the same answer.
#[tokio::test]
async fn a_profile_deleted_during_a_start_is_refused_by_the_key() {
    let app = app_with_profiles_table().await;
    let user = Uuid::new_v4();
    let db = app.db().await;
    db.execute("INSERT INTO profiles (id, username) VALUES ($1, 'ada')", &[&user])
        .await
        .unwrap();
    let room = shared::domain::RoomName::parse("deleted-profile".into()).unwrap();
    let client = app.state.db.get().await.unwrap();
    let title = shared::domain::Title::parse("Hi").unwrap();
    let checked =
        shared::store::streams::check_start(&client, &room, user, &title, 1, app.state.limits.start)
            .await
            .unwrap();
    assert!(matches!(checked, shared::store::streams::StartOutcome::Available));
    db.execute("DELETE FROM profiles WHERE id = $1", &[&user])
        .await
        .unwrap();
    let created = shared::store::streams::create_stream(&client, &room, user, &title, 1, "RM_deleted").await;
    assert!(
        matches!(created, Err(shared::error::ApiError::ProfileRequired)),
        "{:?}",
        created.err()
    );
}

#[tokio::test]
async fn with_a_profiles_table_a_user_with_a_profile_goes_live() {
    let app = app_with_profiles_table().await;
    let user = Uuid::new_v4();
    app.db()
        .await
        .execute("INSERT INTO profiles (id, username) VALUES ($1, 'ada')", &[&user])
        .await
        .unwrap();
    let response = app
        .call(start_stream, Some(&app.token_for(user)), r#"{"title":"Hi"}"#)
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
}

#[tokio::test]
async fn start_creates_the_livekit_room_with_the_configured_options() {
    let app = TestApp::spawn_with_settings(vec![
        ("LIVEKIT_ROOM_EMPTY_TIMEOUT_SECONDS", "90".into()),
        ("LIVEKIT_ROOM_DEPARTURE_TIMEOUT_SECONDS", "45".into()),
        ("LIVEKIT_ROOM_MAX_PARTICIPANTS", "500".into()),
    ])
    .await;
    let user = Uuid::new_v4();
    app.start_stream(user, "configured").await;
    // As LiveKit's server has the room, not as we asked for it.
    let room = app.livekit().room("configured").await.expect("the room exists");
    assert_eq!(
        (room.empty_timeout, room.departure_timeout, room.max_participants),
        (90, 45, 500)
    );
    let row = app.stream_row("configured").await.unwrap();
    assert_eq!(
        row.get::<_, Option<String>>("room_sid").as_deref(),
        Some(room.sid.as_str())
    );
    let metadata: serde_json::Value = serde_json::from_str(&room.metadata).unwrap();
    assert_eq!(
        metadata,
        json!({"streamerId": user.to_string(), "title": "A stream"})
    );
}

/// The app gives up on a start whose `CreateRoom` LiveKit holds unanswered
/// and retries it; LiveKit answers the retry, which goes live (201). When
/// the first attempt's call times out at last, it must not close the room
/// it may have made: that room is now the live stream's.
#[tokio::test]
async fn a_start_that_got_no_answer_leaves_the_room_its_retry_went_live_in() {
    let app = TestApp::spawn().await;
    let host = app.token_for(Uuid::new_v4());
    let room = "retried-past-a-hang";
    let body = json!({"title": "Hang", "roomName": room}).to_string();
    app.set_livekit_mode(LiveKitMode::Hanging).await;
    let held = app.livekit().held_requests();
    let first = app.call(start_stream, Some(&host), &body);
    let retry = async {
        app.livekit().until_held_requests(held + 1).await;
        app.set_livekit_mode(LiveKitMode::Up).await;
        app.call(start_stream, Some(&host), &body).await
    };
    let (first, retry) = tokio::join!(first, retry);
    assert_eq!(retry.status, 201, "{}", retry.body);
    first.assert_error(503, "unavailable");
    assert!(app.has_room(room).await, "the live stream's room is still open");
    let again = app.call(start_stream, Some(&host), &body).await;
    assert_eq!(again.status, 200, "the stream is still live: {}", again.body);
}

#[tokio::test]
async fn when_livekit_refuses_the_room_start_is_503_and_leaves_no_stream() {
    for mode in [LiveKitMode::Stopped, LiveKitMode::Failing, LiveKitMode::Hanging] {
        let app = TestApp::spawn().await;
        app.set_livekit_mode(mode).await;
        let body = json!({"title": "t", "roomName": "no-room"}).to_string();
        let streamer = app.token_for(Uuid::new_v4());
        let response = app.call(start_stream, Some(&streamer), &body).await;
        response.assert_error(503, "unavailable");
        assert!(
            response.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("media server")
        );

        assert!(
            app.stream_row("no-room").await.is_none(),
            "{mode:?}: no live stream left behind"
        );

        if mode == LiveKitMode::Hanging {
            // LiveKit may have made the room it never answered for: the name
            // is not another streamer's meanwhile.
            app.call(start_stream, Some(&app.token_for(Uuid::new_v4())), &body)
                .await
                .assert_error(409, "room_taken");
        }
        // Once LiveKit is back the app's retry succeeds (after a timeout,
        // LiveKit may have made the room: the name stays the streamer's).
        app.set_livekit_mode(LiveKitMode::Up).await;
        let retry = app.call(start_stream, Some(&streamer), &body).await;
        assert_eq!(retry.status, 201, "{mode:?}: {}", retry.body);
    }
}

#[tokio::test]
async fn a_retried_start_recreates_a_room_livekit_closed_for_being_empty() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    app.start_stream(user, "early").await;
    let first_instance = app.livekit().room("early").await.unwrap().sid;
    // Closed for being empty, and its room_finished not delivered yet (a
    // delivered one ends the stream: then the retry is 409).
    app.lose_webhooks(true);
    app.livekit().delete_room("early").await;
    let body = json!({"title": "t", "roomName": "early"}).to_string();
    let retry = app.call(start_stream, Some(&app.token_for(user)), &body).await;
    assert_eq!(retry.status, 200);
    let second_instance = app.livekit().room("early").await.expect("re-created").sid;
    assert_ne!(first_instance, second_instance, "a new instance of the room");
    let row = app.stream_row("early").await.unwrap();
    assert_eq!(
        row.get::<_, Option<String>>("room_sid"),
        Some(second_instance),
        "the stream follows the new instance"
    );
}

/// A retried start that re-created a room the reconciler had been missing
/// for longer than its grace stops that clock: a run whose listing predates
/// the retry, reaching the room after it, must not end the stream the retry
/// answered 200 for.
#[tokio::test]
async fn a_retried_start_stops_the_clock_of_a_room_found_missing() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    app.start_stream(user, "missing-a-while").await;
    app.lose_webhooks(true);
    app.livekit().delete_room("missing-a-while").await;
    app.db()
        .await
        .execute(
            "UPDATE live_streams SET room_missing_since = now() - interval '10 minutes' WHERE id = $1",
            &[&"missing-a-while"],
        )
        .await
        .unwrap();
    let body = json!({"title": "t", "roomName": "missing-a-while"}).to_string();
    let retry = app.call(start_stream, Some(&app.token_for(user)), &body).await;
    assert_eq!(retry.status, 200, "{}", retry.body);

    // What a run with a listing from before the retry does next.
    let room = shared::domain::RoomName::parse("missing-a-while".into()).unwrap();
    let client = app.state.db.get().await.unwrap();
    let grace = std::time::Duration::from_secs(120);
    let ended = shared::store::viewers::finish(&**client, &room, Some(grace))
        .await
        .unwrap();
    assert!(!ended, "the stream the retry answered for stays live");
    let row = app.stream_row("missing-a-while").await.unwrap();
    assert!(row.get::<_, bool>("is_live"));
    assert_eq!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_missing_since"),
        None
    );
}

/// A retried start whose room LiveKit made again after the stream's end had
/// closed it (the end committed between the start's check and its commit),
/// and which cannot close that room itself (LiveKit failing), leaves it to
/// the reconciler: nothing else would ever close it.
#[tokio::test]
async fn a_room_a_start_made_again_after_its_streams_end_is_closed_by_the_reconciler() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "made-again";
    app.start_stream(host, room).await;
    start_again_as_its_end_commits(&app, host, room).await;
    let marked_closed: bool = app
        .db_value(
            "SELECT room_closed_at IS NOT NULL FROM live_streams WHERE id = $1",
            &[&room],
        )
        .await;
    assert!(!marked_closed, "left for the reconciler to close");

    app.set_livekit_mode(LiveKitMode::Up).await;
    assert!(app.has_room(room).await, "the room the start made is still open");
    shared::scheduled::reconcile::reconcile(&app.state, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert!(!app.has_room(room).await, "the reconciler closed it");
}

/// The host starts `room` again while its end commits: the start's check
/// reads the stream live and makes the room (CreateRoom), then its commit
/// waits for the row the end holds; the end records the room closed (as
/// /live/end does when LiveKit answers), LiveKit fails from then on (the
/// start's own close of the room included), and the start is refused.
async fn start_again_as_its_end_commits(app: &TestApp, host: Uuid, room: &str) {
    let admin = app.hold_stream_row(room).await;
    let body = json!({"title": "Again", "roomName": room}).to_string();
    let host_token = app.token_for(host);
    let retry = app.call(start_stream, Some(&host_token), &body);
    let end_meanwhile = async {
        assert!(
            app.until_a_statement_waits_for_a_lock(&std::sync::atomic::AtomicBool::new(false))
                .await,
            "the start never waited for the row"
        );
        app.set_livekit_mode(LiveKitMode::Failing).await;
        admin
            .batch_execute(&format!(
                "UPDATE live_streams SET is_live = false, ended_at = now(), room_closed_at = now()
                 WHERE id = '{room}'; COMMIT"
            ))
            .await
            .unwrap();
    };
    let (refused, ()) = tokio::join!(retry, end_meanwhile);
    refused.assert_error(409, "room_taken");
}

/// As above, with the end's first room really closed and its `room_finished`
/// told late (LiveKit sends a room's webhooks one at a time, after every
/// leave before it): it arrives once the start has made the room again and
/// left it to the reconciler. It is the closed instance's, so the reconciler
/// still closes the new one.
#[tokio::test]
async fn a_late_room_finished_of_the_ended_room_leaves_the_room_made_again_to_the_reconciler() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let room = "made-again-late";
    app.start_stream(host, room).await;
    let first_sid: String = app
        .db_value("SELECT room_sid FROM live_streams WHERE id = $1", &[&room])
        .await;
    // The end's DeleteRoom; its room_finished is on its way (delivered below).
    app.lose_webhooks(true);
    app.livekit().delete_room(room).await;
    start_again_as_its_end_commits(&app, host, room).await;
    app.set_livekit_mode(LiveKitMode::Up).await;
    app.lose_webhooks(false);
    let made_again = app
        .livekit()
        .room(room)
        .await
        .expect("the start made the room again");
    assert_ne!(made_again.sid, first_sid, "a new instance");

    let finished = json!({
        "id": "EV_first_room_finished",
        "event": "room_finished",
        "room": {"name": room, "sid": first_sid},
        "createdAt": chrono::Utc::now().timestamp().to_string(),
    })
    .to_string();
    let delivered = app
        .deliver(crate::helpers::signed_webhook(
            &finished,
            crate::helpers::LIVEKIT_API_SECRET,
        ))
        .await;
    assert_eq!(delivered.status, 200, "{}", delivered.body);
    shared::scheduled::reconcile::reconcile(&app.state, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        !app.has_room(room).await,
        "the reconciler closed the room made again"
    );
}
