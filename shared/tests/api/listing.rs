//! `GET /live/streams` and `GET /live/streams/{id}`.

use std::collections::BTreeSet;

use shared::handlers::{get_stream, list_streams};
use uuid::Uuid;

use crate::helpers::{TestApp, get_request};

const PUBLIC_FIELDS: [&str; 7] = [
    "createdAt",
    "endedAt",
    "id",
    "isLive",
    "streamerId",
    "title",
    "viewerCount",
];

fn fields(stream: &serde_json::Value) -> BTreeSet<&str> {
    stream.as_object().unwrap().keys().map(String::as_str).collect()
}

/// One page of `GET /live/streams`: its streams and the next cursor.
async fn page(
    app: &TestApp,
    token: &str,
    limit: &str,
    cursor: Option<&str>,
) -> (Vec<serde_json::Value>, Option<String>) {
    let mut query = vec![("limit", limit)];
    if let Some(c) = cursor {
        query.push(("cursor", c));
    }
    let response = app
        .send(list_streams, get_request(Some(token), &query, None))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let streams = response.body["streams"].as_array().unwrap().clone();
    let next = response.body["nextCursor"].as_str().map(str::to_owned);
    (streams, next)
}

#[tokio::test]
async fn live_streams_are_listed_newest_first_and_paginated_by_cursor() {
    let app = TestApp::spawn().await;
    for i in 0..7 {
        app.start_stream(Uuid::new_v4(), &format!("room-{i}")).await;
    }
    let host = Uuid::new_v4();
    app.start_stream(host, "ended-room").await;
    let ended = app
        .call(
            shared::handlers::end_stream,
            Some(&app.token_for(host)),
            r#"{"roomName":"ended-room"}"#,
        )
        .await;
    assert_eq!(ended.status, 200);
    app.db()
        .await
        .execute(
            "INSERT INTO live_viewer_counts (room_name, shard, viewers) VALUES ('room-3', 7, 4)",
            &[],
        )
        .await
        .unwrap();

    let token = app.token_for(Uuid::new_v4());
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0.. {
        let (streams, next) = page(&app, &token, "3", cursor.as_deref()).await;
        assert!(streams.len() <= 3);
        for stream in &streams {
            assert_eq!(
                fields(stream),
                PUBLIC_FIELDS.into_iter().collect(),
                "only public fields"
            );
            assert_eq!(stream["isLive"], true);
            seen.push(stream["id"].as_str().unwrap().to_owned());
            if stream["id"] == "room-3" {
                assert_eq!(stream["viewerCount"], 4);
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(page_number < 5, "pagination must end");
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("room-{i}")).collect();
    assert_eq!(
        seen, expected,
        "every live stream once, newest first, no ended ones"
    );
}

/// Streams started in the same microsecond are ordered by id after their
/// start time, so a page boundary between them neither repeats nor skips
/// one; and a stream that starts or ends while a client pages changes
/// nothing of the pages still to come but itself.
#[tokio::test]
async fn pages_stay_stable_across_equal_start_times_and_streams_that_start_or_end() {
    let app = TestApp::spawn().await;
    let mut hosts = Vec::new();
    for room in ["tie-a", "tie-b", "tie-c", "tie-d", "older"] {
        let host = Uuid::new_v4();
        app.start_stream(host, room).await;
        hosts.push((room, host));
    }
    app.db()
        .await
        .batch_execute(
            "UPDATE live_streams SET created_at = '2026-01-01 12:00:00.123456+00' WHERE id LIKE 'tie-%';
             UPDATE live_streams SET created_at = '2026-01-01 11:00:00+00' WHERE id = 'older';",
        )
        .await
        .unwrap();
    let token = app.token_for(Uuid::new_v4());
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0.. {
        let (streams, next) = page(&app, &token, "1", cursor.as_deref()).await;
        for stream in &streams {
            seen.push(stream["id"].as_str().unwrap().to_owned());
        }
        if page_number == 1 {
            // Meanwhile a new stream starts (newer than every page: not in
            // the pages to come) and one already listed ends.
            app.start_stream(Uuid::new_v4(), "newcomer").await;
            let (room, host) = hosts[3];
            let end = serde_json::json!({"roomName": room}).to_string();
            let ended = app
                .call(shared::handlers::end_stream, Some(&app.token_for(host)), &end)
                .await;
            assert_eq!(ended.status, 200, "{}", ended.body);
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(page_number < 10, "pagination must end");
    }
    assert_eq!(
        seen,
        ["tie-d", "tie-c", "tie-b", "tie-a", "older"],
        "newest first, equal times by id, each once"
    );
}

#[tokio::test]
async fn the_default_page_is_20_and_an_empty_list_has_no_cursor() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    let empty = app.send(list_streams, get_request(Some(&token), &[], None)).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body, serde_json::json!({"streams": [], "nextCursor": null}));
    for i in 0..21 {
        app.start_stream(Uuid::new_v4(), &format!("r{i}")).await;
    }
    let page = app.send(list_streams, get_request(Some(&token), &[], None)).await;
    assert_eq!(page.body["streams"].as_array().unwrap().len(), 20);
    assert!(page.body["nextCursor"].is_string());
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    for query in [
        vec![("limit", "0")],
        vec![("limit", "101")],
        vec![("limit", "ten")],
        vec![("cursor", "garbage!")],
        vec![("cursor", "bm90LWEtY3Vyc29y")],
        vec![("page", "2")],
        vec![("limit", "5"), ("limit", "50")],
    ] {
        let response = app
            .send(list_streams, get_request(Some(&token), &query, None))
            .await;
        response.assert_error(400, "invalid_request");
    }
    let unauthenticated = app.send(list_streams, get_request(None, &[], None)).await;
    unauthenticated.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn one_stream_is_returned_live_or_ended_and_unknown_is_404() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "single").await;
    let token = app.token_for(Uuid::new_v4());

    let live = app
        .send(get_stream, get_request(Some(&token), &[], Some("single")))
        .await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(fields(&live.body["stream"]), PUBLIC_FIELDS.into_iter().collect());
    assert_eq!(live.body["stream"]["streamerId"], host.to_string());
    assert_eq!(live.body["stream"]["endedAt"], serde_json::Value::Null);

    let end = app
        .call(
            shared::handlers::end_stream,
            Some(&app.token_for(host)),
            r#"{"roomName":"single"}"#,
        )
        .await;
    assert_eq!(end.status, 200, "{}", end.body);
    let ended = app
        .send(get_stream, get_request(Some(&token), &[], Some("single")))
        .await;
    assert_eq!(ended.body["stream"]["isLive"], false);
    assert!(ended.body["stream"]["endedAt"].is_string());

    for id in ["missing", "not a room"] {
        let response = app
            .send(get_stream, get_request(Some(&token), &[], Some(id)))
            .await;
        response.assert_error(404, "stream_not_found");
    }
    let wrong_method = app.call(get_stream, Some(&token), "{}").await;
    wrong_method.assert_error(405, "method_not_allowed");
    assert_eq!(wrong_method.headers.get("allow").unwrap(), "GET");
}
