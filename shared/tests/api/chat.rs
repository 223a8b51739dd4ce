//! Chat: stored, broadcast through LiveKit, rate-limited across containers.

use serde_json::{Value, json};
use shared::handlers::{chat_history, delete_message, post_message};
use uuid::Uuid;

use crate::helpers::{
    AppOptions, LiveKitChoice, LiveKitMode, Participant, TestApp, get_request, request_with,
};

const ROOM: &str = "chatty";

async fn chat_room() -> (TestApp, Uuid) {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, ROOM).await;
    (app, host)
}

/// A live room with a real viewer in it, who receives what the room is sent.
async fn chat_room_with_listener() -> (TestApp, Uuid, Participant) {
    let (app, host) = chat_room().await;
    let (_, listener) = app.viewer_in(ROOM).await;
    (app, host, listener)
}

async fn say(app: &TestApp, user: Uuid, text: &str) -> crate::helpers::TestResponse {
    let body = json!({"roomName": ROOM, "text": text}).to_string();
    app.call(post_message, Some(&app.token_for(user)), &body).await
}

/// `DELETE /live/chat/{id}` as `user`.
async fn delete(app: &TestApp, user: Uuid, id: &str) -> crate::helpers::TestResponse {
    app.send(
        delete_message,
        request_with(
            lambda_http::http::Method::DELETE,
            Some(&app.token_for(user)),
            &[],
            Some(id),
        ),
    )
    .await
}

/// Every visible message's text, read page by page (`limit` a page)
/// through `nextBefore`, as a newly joined viewer would.
async fn history_texts(app: &TestApp, limit: usize) -> Vec<String> {
    let reader = app.token_for(Uuid::new_v4());
    let limit = limit.to_string();
    let mut texts = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = vec![("roomName", ROOM), ("limit", limit.as_str())];
        if let Some(b) = &before {
            query.push(("before", b));
        }
        let page = app
            .send(chat_history, get_request(Some(&reader), &query, None))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        for message in page.body["messages"].as_array().unwrap() {
            texts.push(message["text"].as_str().unwrap().to_owned());
        }
        match page.body["nextBefore"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    texts
}

/// The packets the listener received on topic `chat` once they carry
/// `count` events (a `chat_messages` batch counts one per message); each must
/// come from the server (no sending participant), reliably.
async fn broadcasts(listener: &Participant, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + crate::helpers::SETTLE;
    loop {
        let packets = listener.data_on("chat");
        let events: usize = packets.iter().map(|p| events_in(&p.payload)).sum();
        if events >= count {
            return packets
                .into_iter()
                .map(|packet| {
                    assert_eq!(packet.sender, None, "the backend's packets have no sender");
                    assert!(packet.reliable);
                    packet.payload
                })
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{events} of {count} chat events arrived: {packets:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn events_in(payload: &Value) -> usize {
    payload["messages"].as_array().map_or(1, Vec::len)
}

/// The messages of every `chat_messages` batch, in the order received.
fn batched_messages(payloads: &[Value]) -> Vec<Value> {
    payloads
        .iter()
        .filter(|p| p["event"] == "chat_messages")
        .flat_map(|p| p["messages"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_message_is_stored_and_broadcast_to_the_room() {
    let (app, _, listener) = chat_room_with_listener().await;
    let viewer = Uuid::new_v4();
    let response = say(&app, viewer, "  Ẹ káàbọ̀!\nWelcome  ").await;

    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["broadcast"], true);
    let message = &response.body["message"];
    assert_eq!(message["roomName"], ROOM);
    assert_eq!(message["userId"], viewer.to_string());
    assert_eq!(message["text"], "Ẹ káàbọ̀!\nWelcome");
    let id: Uuid = message["id"].as_str().unwrap().parse().unwrap();

    let stored = app
        .db()
        .await
        .query_one("SELECT text, user_id FROM live_messages WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(stored.get::<_, String>(0), "Ẹ káàbọ̀!\nWelcome");
    assert_eq!(stored.get::<_, Uuid>(1), viewer);

    let sent = broadcasts(&listener, 1).await;
    assert_eq!(
        sent,
        vec![json!({"event": "chat_messages", "messages": [message]})],
        "the same message JSON as the response, in a batch of one"
    );
}

#[tokio::test]
async fn when_the_broadcast_fails_the_message_stays_stored() {
    for mode in [LiveKitMode::Stopped, LiveKitMode::Failing] {
        let (app, _) = chat_room().await;
        app.set_livekit_mode(mode).await;
        let response = say(&app, Uuid::new_v4(), "still here").await;
        assert_eq!(response.status, 201, "{mode:?}: {}", response.body);
        assert_eq!(response.body["broadcast"], false, "{mode:?}");
        let history = app
            .send(
                chat_history,
                get_request(Some(&app.token_for(Uuid::new_v4())), &[("roomName", ROOM)], None),
            )
            .await;
        assert_eq!(history.body["messages"][0]["text"], "still here", "{mode:?}");
    }
}

#[tokio::test]
async fn a_post_after_livekit_closed_the_idle_connection_is_broadcast_once() {
    let (app, _, listener) = chat_room_with_listener().await;
    // The join's webhook pushes the count into the room: after it, nothing
    // else of ours talks to LiveKit, so the post meets the closed connection.
    app.wait_for_webhooks("participant_joined", 1).await;
    app.set_livekit_mode(LiveKitMode::ClosingIdle).await;
    let response = say(&app, Uuid::new_v4(), "after the nap").await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["broadcast"], true, "{}", response.body);
    // A copy sent twice would reach the listener before the next message:
    // the reliable channel keeps the order.
    assert_eq!(say(&app, Uuid::new_v4(), "next").await.status, 201);
    let texts: Vec<Value> = batched_messages(&broadcasts(&listener, 2).await)
        .iter()
        .map(|message| message["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("after the nap"), json!("next")]);
}

#[tokio::test]
async fn chat_needs_a_live_stream_and_valid_text() {
    let (app, host) = chat_room().await;
    let viewer = Uuid::new_v4();
    for text in [
        json!(""),
        json!("   "),
        json!("x".repeat(501)),
        json!("tab\there"),
        json!(null),
    ] {
        let body = json!({"roomName": ROOM, "text": text}).to_string();
        app.call(post_message, Some(&app.token_for(viewer)), &body)
            .await
            .assert_error(400, "invalid_request");
    }
    assert_eq!(say(&app, viewer, &"x".repeat(500)).await.status, 201);
    let unknown = json!({"roomName": "nowhere", "text": "hi"}).to_string();
    app.call(post_message, Some(&app.token_for(viewer)), &unknown)
        .await
        .assert_error(404, "stream_not_found");
    let ended = app
        .call(
            shared::handlers::end_stream,
            Some(&app.token_for(host)),
            &json!({"roomName": ROOM}).to_string(),
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    say(&app, viewer, "too late")
        .await
        .assert_error(409, "stream_ended");
}

#[tokio::test]
async fn the_sixth_message_in_ten_seconds_is_429_with_retry_after() {
    let (app, _) = chat_room().await;
    let viewer = Uuid::new_v4();
    for i in 0..5 {
        assert_eq!(say(&app, viewer, &format!("m{i}")).await.status, 201);
    }
    let limited = say(&app, viewer, "one too many").await;
    limited.assert_error(429, "rate_limited");
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    // Per user and room: someone else may still talk.
    assert_eq!(say(&app, Uuid::new_v4(), "my turn").await.status, 201);
    let stored: i64 = app.db_value("SELECT count(*) FROM live_messages", &[]).await;
    assert_eq!(stored, 6, "the limited message was not stored");
}

#[tokio::test]
async fn concurrent_senders_in_separate_containers_share_the_limit() {
    let (app, _) = chat_room().await;
    // A second container: its own state and pool, the same database.
    let other = TestApp::spawn_with(AppOptions {
        database_url: Some(app.api_database_url.clone()),
        livekit: LiveKitChoice::SharedWith(app.livekit().clone()),
        ..AppOptions::default()
    })
    .await;
    let viewer = Uuid::new_v4();
    let sends = (0..12).map(|i| {
        let container = if i % 2 == 0 { &app } else { &other };
        say(container, viewer, "spam")
    });
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
}

#[tokio::test]
async fn the_limit_is_configurable() {
    let app = TestApp::spawn_with_settings(vec![
        ("CHAT_RATE_LIMIT_MESSAGES", "2".into()),
        ("CHAT_RATE_LIMIT_WINDOW_SECONDS", "1".into()),
    ])
    .await;
    app.start_stream(Uuid::new_v4(), ROOM).await;
    let viewer = Uuid::new_v4();
    assert_eq!(say(&app, viewer, "a").await.status, 201);
    assert_eq!(say(&app, viewer, "b").await.status, 201);
    say(&app, viewer, "c").await.assert_error(429, "rate_limited");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        say(&app, viewer, "d").await.status,
        201,
        "the window slid past the first two"
    );
}

/// An id made by iOS's `UUID().uuidString` is upper case: the message comes
/// back (and goes to the room) under the lower-case form, as every id this
/// API answers, and a retry in upper case is still the same message. The
/// README tells apps to key the chat by the id lower-cased.
#[tokio::test]
async fn an_upper_case_message_id_comes_back_in_lower_case_and_still_repeats() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), ROOM).await;
    let (user, id) = (Uuid::new_v4(), Uuid::new_v4());
    let upper = id.to_string().to_uppercase();
    let body = json!({"roomName": ROOM, "text": "from an iPhone", "id": upper}).to_string();
    let first = app.call(post_message, Some(&app.token_for(user)), &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["message"]["id"], json!(id.to_string()));
    let retried = app.call(post_message, Some(&app.token_for(user)), &body).await;
    assert_eq!(retried.status, 200, "the same message: {}", retried.body);
    assert_eq!(retried.body["message"], first.body["message"]);
}

/// A post the app retries with the same `id` (its first answer lost, or
/// cut off at the deadline after its commit) is stored once: the retry
/// answers 200 with the stored message, spends no rate limit, and is
/// answered even after the stream ended; an id that belongs to another
/// message is refused, and a repeat of the caller's message deleted since
/// is refused as deleted, so the app does not post it again.
#[tokio::test]
async fn a_retried_post_is_stored_once() {
    let app = TestApp::spawn_with_settings(vec![("CHAT_RATE_LIMIT_MESSAGES", "1".into())]).await;
    let host = Uuid::new_v4();
    app.start_stream(host, ROOM).await;
    let (user, id) = (Uuid::new_v4(), Uuid::new_v4());
    let post = |user: Uuid, text: &str| {
        let body = json!({"roomName": ROOM, "text": text, "id": id}).to_string();
        let app = &app;
        async move { app.call(post_message, Some(&app.token_for(user)), &body).await }
    };
    let first = post(user, "only once").await;
    assert_eq!(
        (first.status, &first.body["message"]["id"]),
        (201, &json!(id)),
        "{}",
        first.body
    );
    let retried = post(user, "only once").await;
    assert_eq!(
        (retried.status, &retried.body["broadcast"]),
        (200, &json!(true)),
        "a repeat spends no limit (1 per 10 s here): {}",
        retried.body
    );
    assert_eq!(retried.body["message"], first.body["message"]);

    post(Uuid::new_v4(), "only once")
        .await
        .assert_error(409, "message_id_taken");
    post(user, "something else")
        .await
        .assert_error(409, "message_id_taken");

    let (author, doomed) = (Uuid::new_v4(), Uuid::new_v4());
    let doomed_post = json!({"roomName": ROOM, "text": "soon gone", "id": doomed}).to_string();
    let stored = app
        .call(post_message, Some(&app.token_for(author)), &doomed_post)
        .await;
    assert_eq!(stored.status, 201, "{}", stored.body);
    let deleted = delete(&app, author, &doomed.to_string()).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    app.call(post_message, Some(&app.token_for(author)), &doomed_post)
        .await
        .assert_error(409, "message_deleted");
    let ended = app.end_stream(host, ROOM).await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let after_the_end = post(user, "only once").await;
    assert_eq!(after_the_end.status, 200, "{}", after_the_end.body);
    assert_eq!(after_the_end.body["message"], first.body["message"]);

    let stored: i64 = app
        .db_value(
            "SELECT count(*) FROM live_messages WHERE room_name = $1 AND deleted_at IS NULL",
            &[&ROOM],
        )
        .await;
    assert_eq!(stored, 1);
}

/// Two attempts of one post in flight at once store it once, and the second
/// is neither counted nor refused beside the first: it waits for the
/// first's commit before reading anything, then answers the message the
/// first stored, though the first spent the whole limit (one per 10 s).
#[tokio::test]
async fn two_attempts_of_one_post_in_flight_store_it_once() {
    const SAY: &str = "SELECT outcome, id FROM live_chat_say($1, $2, 'twice at once', $3, 10, 1, $4)";
    let (app, _host) = chat_room().await;
    let (user, id) = (Uuid::new_v4(), Uuid::new_v4());
    let key = format!("chat:{ROOM}:{user}");
    let mut first = app.db().await;
    let first = first.transaction().await.unwrap();
    let posted = first.query_one(SAY, &[&ROOM, &user, &key, &id]).await.unwrap();
    assert_eq!(posted.get::<_, String>(0), "posted");

    let second = tokio::spawn({
        let client = app.db().await;
        async move { client.query_one(SAY, &[&ROOM, &user, &key, &id]).await.unwrap() }
    });
    assert!(
        app.until_a_statement_waits_for_a_lock(&std::sync::atomic::AtomicBool::new(false))
            .await,
        "the second attempt never waited for the first"
    );
    first.commit().await.unwrap();
    let answered = second.await.unwrap();
    assert_eq!(
        (answered.get::<_, String>(0), answered.get::<_, Uuid>(1)),
        ("repeated".to_owned(), id)
    );
    let stored: i64 = app
        .db_value("SELECT count(*) FROM live_messages WHERE id = $1", &[&id])
        .await;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn history_is_newest_first_paginated_and_skips_deleted_messages() {
    let (app, host) = chat_room().await;
    let viewer = Uuid::new_v4();
    let other = TestApp::spawn_with(AppOptions {
        database_url: Some(app.api_database_url.clone()),
        livekit: LiveKitChoice::SharedWith(app.livekit().clone()),
        ..AppOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..7 {
        // Alternate senders so the rate limit does not get in the way.
        let sender = if i % 2 == 0 { viewer } else { host };
        let sent = say(if i % 2 == 0 { &app } else { &other }, sender, &format!("m{i}")).await;
        assert_eq!(sent.status, 201, "{}", sent.body);
        ids.push(sent.body["message"]["id"].as_str().unwrap().to_owned());
    }
    let deleted = delete(&app, viewer, &ids[2]).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);

    let texts = history_texts(&app, 4).await;
    assert_eq!(texts, ["m6", "m5", "m4", "m3", "m1", "m0"]);
}

/// A post that waited for its turn (its transaction began before another
/// post's, its seq was taken after) sits in the history where the room
/// received it, not where its `createdAt` would put it: paging back from the
/// newest page reads the chat in the order the room showed it.
#[tokio::test]
async fn history_follows_the_order_the_room_received_the_messages() {
    let (app, _host) = chat_room().await;
    let mut ids = Vec::new();
    for text in ["first", "waited", "third"] {
        let sent = say(&app, Uuid::new_v4(), text).await;
        assert_eq!(sent.status, 201, "{}", sent.body);
        ids.push(Uuid::parse_str(sent.body["message"]["id"].as_str().unwrap()).unwrap());
    }
    app.db()
        .await
        .execute(
            "UPDATE live_messages SET created_at = (
                 SELECT created_at - interval '1 second' FROM live_messages WHERE id = $1)
             WHERE id = $2",
            &[&ids[0], &ids[1]],
        )
        .await
        .unwrap();

    let texts = history_texts(&app, 1).await;
    assert_eq!(texts, ["third", "waited", "first"]);
}

#[tokio::test]
async fn history_before_a_message_of_another_room_is_refused_and_a_deleted_one_still_marks_its_place() {
    let (app, host) = chat_room().await;
    let elsewhere_host = Uuid::new_v4();
    app.start_stream(elsewhere_host, "elsewhere").await;
    let elsewhere = app
        .call(
            post_message,
            Some(&app.token_for(elsewhere_host)),
            &json!({"roomName": "elsewhere", "text": "over there"}).to_string(),
        )
        .await;
    assert_eq!(elsewhere.status, 201, "{}", elsewhere.body);
    let elsewhere_id = elsewhere.body["message"]["id"].as_str().unwrap().to_owned();
    assert_eq!(say(&app, host, "first").await.status, 201);
    let second = say(&app, host, "second").await;
    let second_id = second.body["message"]["id"].as_str().unwrap().to_owned();

    let reader = app.token_for(Uuid::new_v4());
    // An empty page would tell the client it has reached the start of the chat.
    for before in [elsewhere_id, Uuid::new_v4().to_string()] {
        let page = app
            .send(
                chat_history,
                get_request(Some(&reader), &[("roomName", ROOM), ("before", &before)], None),
            )
            .await;
        page.assert_error(400, "invalid_request");
        assert_eq!(
            page.body["error"]["message"],
            "before must be the id of a message from this room"
        );
    }

    let deleted = delete(&app, host, &second_id).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let page = app
        .send(
            chat_history,
            get_request(Some(&reader), &[("roomName", ROOM), ("before", &second_id)], None),
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let texts: Vec<&str> = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first"]);
}

#[tokio::test]
async fn history_parameters_are_checked() {
    let (app, _) = chat_room().await;
    let token = app.token_for(Uuid::new_v4());
    for query in [
        vec![],
        vec![("roomName", "bad room")],
        vec![("roomName", ROOM), ("limit", "0")],
        vec![("roomName", ROOM), ("before", "nope")],
        vec![("roomName", ROOM), ("page", "1")],
        vec![("roomName", ROOM), ("roomName", "another-room")],
    ] {
        app.send(chat_history, get_request(Some(&token), &query, None))
            .await
            .assert_error(400, "invalid_request");
    }
    app.send(
        chat_history,
        get_request(Some(&token), &[("roomName", "unknown")], None),
    )
    .await
    .assert_error(404, "stream_not_found");
    app.send(chat_history, get_request(None, &[("roomName", ROOM)], None))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn the_author_or_the_streamer_may_delete_a_message_and_the_room_is_told() {
    // An hour's window: no allowance refills while the test counts repeats.
    let app = TestApp::spawn_with_settings(vec![("CHAT_RATE_LIMIT_WINDOW_SECONDS", "3600".into())]).await;
    let host = Uuid::new_v4();
    app.start_stream(host, ROOM).await;
    let (_, listener) = app.viewer_in(ROOM).await;
    let (author, stranger) = (Uuid::new_v4(), Uuid::new_v4());
    let first = say(&app, author, "oops").await.body["message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = say(&app, author, "rude").await.body["message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    delete(&app, stranger, &first)
        .await
        .assert_error(403, "forbidden");
    let by_author = delete(&app, author, &first).await;
    assert_eq!(by_author.status, 200, "{}", by_author.body);
    assert_eq!(
        (
            by_author.body["deleted"].as_bool(),
            by_author.body["broadcast"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let by_streamer = delete(&app, host, &second).await;
    assert_eq!(by_streamer.status, 200);
    // A repeat changes nothing and tells the room again (its first packet
    // may have been lost), as often as the user may chat in the room.
    let again = delete(&app, host, &second).await;
    assert_eq!(
        (again.status, &again.body["deleted"], &again.body["broadcast"]),
        (200, &json!(true), &json!(true)),
        "idempotent, told again: {}",
        again.body
    );
    let allowance = app.state.limits.chat.max;
    for repeat in 2..=allowance {
        let told = delete(&app, host, &second).await;
        assert_eq!(
            told.body["broadcast"],
            json!(true),
            "repeat {repeat} of {allowance}"
        );
    }
    let over = delete(&app, host, &second).await;
    assert_eq!(
        (over.status, &over.body["deleted"], &over.body["broadcast"]),
        (200, &json!(true), &json!(false)),
        "over the allowance: still deleted, the room not told: {}",
        over.body
    );
    delete(&app, host, &Uuid::new_v4().to_string())
        .await
        .assert_error(404, "message_not_found");
    delete(&app, host, "not-a-uuid")
        .await
        .assert_error(404, "message_not_found");

    // Two messages, then the two deletions and the allowed repeats.
    let told = 2 + allowance as usize;
    let deletions: Vec<Value> = broadcasts(&listener, 2 + told)
        .await
        .into_iter()
        .filter(|p| p["event"] == "chat_deleted")
        .collect();
    let mut expected = vec![json!({"event": "chat_deleted", "id": first, "roomName": ROOM})];
    expected.extend((1..told).map(|_| json!({"event": "chat_deleted", "id": second, "roomName": ROOM})));
    assert_eq!(deletions, expected);

    let actions = app
        .db()
        .await
        .query(
            "SELECT moderator_id, target_id, action, message_id::text FROM live_moderation_actions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        actions.len(),
        1,
        "the streamer's deletion is recorded; the author's own is not moderation"
    );
    assert_eq!(
        (
            actions[0].get::<_, Uuid>(0),
            actions[0].get::<_, Uuid>(1),
            actions[0].get::<_, String>(2)
        ),
        (host, author, "delete_message".to_owned())
    );
    assert_eq!(actions[0].get::<_, String>(3), second);
}

/// The history of an ended stream stays readable, so its messages are still
/// deleted from it; with no room left to tell, the answer says there is
/// nothing more to do (`broadcast: true`) however often the app repeats it,
/// instead of a `false` that would have it repeat forever.
#[tokio::test]
async fn deleting_from_an_ended_streams_history_leaves_nothing_to_repeat() {
    let (app, host) = chat_room().await;
    let author = Uuid::new_v4();
    let id = say(&app, author, "regret").await.body["message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ended = app.end_stream(host, ROOM).await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    // Past the allowance of repeats a live room has.
    for (n, user) in std::iter::once(author)
        .chain(std::iter::repeat_n(host, app.state.limits.chat.max as usize + 1))
        .enumerate()
    {
        let deleted = delete(&app, user, &id).await;
        assert_eq!(
            (
                deleted.status,
                &deleted.body["deleted"],
                &deleted.body["broadcast"]
            ),
            (200, &json!(true), &json!(true)),
            "deletion {n}: {}",
            deleted.body
        );
    }
    let text: String = app
        .db_value("SELECT text FROM live_messages WHERE id = $1::text::uuid", &[&id])
        .await;
    assert_eq!(text, "", "deleted for everyone");
}

/// Busy chat: many users at once. Every message is stored and reaches the
/// room once, in order, in far fewer LiveKit calls than messages (one batch
/// per room per 100 ms interval).
#[tokio::test]
async fn busy_chat_is_sent_in_order_in_batches() {
    let (app, _, listener) = chat_room_with_listener().await;
    let started = std::time::Instant::now();
    let posts = (0..40).map(|i| {
        let (app, user) = (&app, Uuid::new_v4());
        async move { say(app, user, &format!("message {i}")).await }
    });
    let responses = futures::future::join_all(posts).await;
    let elapsed = started.elapsed();
    assert!(
        responses
            .iter()
            .all(|r| r.status == 201 && r.body["broadcast"] == true),
        "{:?}",
        responses.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let payloads = broadcasts(&listener, 40).await;
    let received: Vec<String> = batched_messages(&payloads)
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    // In the room's order, which is the order they were stored in.
    let stored: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT id::text FROM live_messages WHERE room_name = $1 ORDER BY seq",
            &[&ROOM],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored.len(), 40, "every message stored");
    assert_eq!(received, stored, "each message once, in order");
    let batches = payloads.len();
    let intervals = (elapsed.as_millis() / 100) as usize + 2;
    assert!(
        batches < 40 && batches <= intervals,
        "{batches} packets for 40 messages in {elapsed:?}"
    );
    eprintln!("40 messages in {elapsed:?}: {batches} packets");
}

/// A room far behind (LiveKit back after an outage: thousands of messages
/// unsent) is caught up a few packets per batch; the post that holds the
/// batches stops after its second (`HOLDER_BUDGET`) with its own message
/// not yet sent, and says so (`broadcast: false`) rather than that a batch
/// in progress carries it: none does, the next poster's or the flusher's
/// will, and the lease is free for them.
#[tokio::test]
async fn a_post_whose_turn_ends_before_its_message_says_not_broadcast() {
    let (app, _) = chat_room().await;
    app.db()
        .await
        .execute(
            "INSERT INTO live_messages (room_name, user_id, text)
             SELECT $1, gen_random_uuid(), repeat('backlog ', 60) || n FROM generate_series(1, 3000) n",
            &[&ROOM],
        )
        .await
        .unwrap();
    let response = say(&app, Uuid::new_v4(), "at the end of the queue").await;
    assert_eq!(
        (response.status, &response.body["broadcast"]),
        (201, &json!(false)),
        "{}",
        response.body
    );
    let id: Uuid = response.body["message"]["id"].as_str().unwrap().parse().unwrap();
    let (left, lease_free): (bool, bool) = {
        let row = app
            .db()
            .await
            .query_one(
                "SELECT m.seq > b.sent_up_to AND b.sent_up_to > 0, b.lease_until < now()
                 FROM live_messages m JOIN live_chat_broadcasts b USING (room_name)
                 WHERE m.id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        left,
        "the room was caught up part of the way (not a failed batch), not up to this message"
    );
    assert!(lease_free, "the next poster or the flusher can go on at once");
}

/// A batch that cannot reach LiveKit leaves its messages stored and unsent;
/// the flusher sends them once LiveKit is back.
#[tokio::test]
async fn a_batch_livekit_refused_is_sent_later_by_the_flusher() {
    let (app, _, listener) = chat_room_with_listener().await;
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let response = say(&app, Uuid::new_v4(), "into the void").await;
    assert_eq!(
        (response.status, &response.body["broadcast"]),
        (201, &json!(false))
    );
    app.set_livekit_mode(LiveKitMode::Up).await;
    let deadline = std::time::Instant::now() + crate::helpers::SETTLE;
    while listener.data_on("chat").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the flusher never sent it");
        shared::scheduled::flush::flush_once(&app.state).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let sent = batched_messages(&broadcasts(&listener, 1).await);
    assert_eq!(sent, vec![response.body["message"].clone()]);
}

/// A room's first message whose request stopped after the commit (the
/// container frozen or the deadline hit before its batch) is sent by the
/// flusher, although no batch of the room has ever run.
#[tokio::test]
async fn a_rooms_first_message_left_unsent_is_sent_by_the_flusher() {
    use shared::store::chat::{self, PostOutcome};
    let (app, _, listener) = chat_room_with_listener().await;
    let room = shared::domain::RoomName::parse(ROOM.into()).unwrap();
    let client = app.state.db.get().await.unwrap();
    let limit = app.state.limits.chat;
    let posted = chat::post(
        &client,
        &room,
        Uuid::new_v4(),
        "first words",
        None,
        "chat:test",
        limit,
    )
    .await
    .unwrap();
    let PostOutcome::Posted(message, _) = posted else {
        panic!("the post was refused");
    };
    let deadline = std::time::Instant::now() + crate::helpers::SETTLE;
    while listener.data_on("chat").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the flusher never sent it");
        shared::scheduled::flush::flush_once(&app.state).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let sent = batched_messages(&broadcasts(&listener, 1).await);
    assert_eq!(sent, vec![serde_json::to_value(&message).unwrap()]);
}

/// A post whose broadcast outlasts the request's deadline (LiveKit hanging)
/// is stored, so it answers 201 with `broadcast: false` in time, never the
/// deadline's 503, which would have the app post it a second time.
#[tokio::test]
async fn a_post_whose_broadcast_hangs_answers_201_before_the_deadline() {
    let app = TestApp::spawn_with_settings(vec![("REQUEST_DEADLINE_SECONDS", "2".into())]).await;
    app.start_stream(Uuid::new_v4(), ROOM).await;
    app.set_livekit_mode(LiveKitMode::Hanging).await;
    let response = say(&app, Uuid::new_v4(), "into the silence").await;
    assert_eq!(
        (response.status, &response.body["broadcast"]),
        (201, &json!(false)),
        "{}",
        response.body
    );
    let stored: i64 = app
        .db_value(
            "SELECT count(*) FROM live_messages WHERE room_name = $1",
            &[&ROOM],
        )
        .await;
    assert_eq!(stored, 1);

    // The abandoned send's room lease ended with the post's answer: the next
    // post takes it and sends both at once, not after the lease's 8 s.
    app.set_livekit_mode(LiveKitMode::Up).await;
    let next = say(&app, Uuid::new_v4(), "heard again").await;
    assert_eq!(
        (next.status, &next.body["broadcast"]),
        (201, &json!(true)),
        "{}",
        next.body
    );
    let unsent: i64 = app
        .db_value(
            "SELECT count(*) FROM live_messages m JOIN live_chat_broadcasts b USING (room_name)
             WHERE m.room_name = $1 AND m.seq > b.sent_up_to",
            &[&ROOM],
        )
        .await;
    assert_eq!(unsent, 0, "the next post sent both messages itself");
}

/// A batch LiveKit refused lets its lease go and spaces the room's next
/// attempt from its own, as a sent batch does: posts to a room LiveKit
/// refuses (down, or its room gone while the stream is live) do not each
/// call it at once.
#[tokio::test]
async fn a_failed_batch_spaces_the_rooms_next_attempt() {
    let (app, _host) = chat_room().await;
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let posted = say(&app, Uuid::new_v4(), "into a refusing room").await;
    assert_eq!(
        (posted.status, &posted.body["broadcast"]),
        (201, &json!(false)),
        "{}",
        posted.body
    );
    let row = app
        .db()
        .await
        .query_one(
            "SELECT sent_up_to, lease_until = '-infinity', last_sent_at > now() - interval '1 minute'
             FROM live_chat_broadcasts WHERE room_name = $1",
            &[&ROOM],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, bool>(1), row.get::<_, bool>(2)),
        (0, true, true),
        "nothing sent, the lease free, the attempt's time noted"
    );
}
