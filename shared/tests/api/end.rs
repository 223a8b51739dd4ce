use chrono::{DateTime, Utc};
use shared::handlers::end_stream;
use uuid::Uuid;

use crate::helpers::{LiveKitMode, TestApp};

const END_BODY: &str = r#"{"roomName":"ending"}"#;

#[tokio::test]
async fn the_streamer_ends_the_stream_and_livekit_closes_the_room() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "ending").await;

    let response = app.call(end_stream, Some(&app.token_for(host)), END_BODY).await;

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body["success"], true);
    assert_eq!(response.body["roomClosed"], true);
    assert_eq!(response.body["stream"]["id"], "ending");
    assert_eq!(response.body["stream"]["isLive"], false);
    let ended_at: DateTime<Utc> = response.body["stream"]["endedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let row = app.stream_row("ending").await.unwrap();
    assert!(!row.get::<_, bool>("is_live"));
    assert_eq!(row.get::<_, Option<DateTime<Utc>>>("ended_at"), Some(ended_at));
    assert!(row.get::<_, Option<DateTime<Utc>>>("room_closed_at").is_some());

    assert!(!app.has_room("ending").await, "LiveKit's server deleted the room");
}

#[tokio::test]
async fn someone_else_cannot_end_the_stream() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "ending").await;
    let response = app
        .call(end_stream, Some(&app.token_for(Uuid::new_v4())), END_BODY)
        .await;
    response.assert_error(403, "forbidden");
    let row = app.stream_row("ending").await.unwrap();
    assert!(row.get::<_, bool>("is_live"), "the stream is still live");
    assert!(app.has_room("ending").await, "the room was not touched");
}

#[tokio::test]
async fn ending_an_unknown_stream_is_404() {
    let app = TestApp::spawn().await;
    let response = app
        .call(end_stream, Some(&app.token_for(Uuid::new_v4())), END_BODY)
        .await;
    response.assert_error(404, "stream_not_found");
}

#[tokio::test]
async fn ending_twice_keeps_the_first_ended_at_and_closes_the_room_once() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "ending").await;
    let token = app.token_for(host);
    let first = app.call(end_stream, Some(&token), END_BODY).await;
    // The room is closed and recorded so: a second end needs no LiveKit at all.
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let second = app.call(end_stream, Some(&token), END_BODY).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body["roomClosed"], true, "{}", first.body);
    assert!(!app.has_room("ending").await, "the room is closed");
    assert_eq!(
        first.body, second.body,
        "same endedAt, same answer, roomClosed still true"
    );
}

#[tokio::test]
async fn concurrent_ends_agree_on_one_ended_at() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "ending").await;
    let token = app.token_for(host);
    let responses =
        futures::future::join_all((0..5).map(|_| app.call(end_stream, Some(&token), END_BODY))).await;
    let ended: Vec<_> = responses
        .iter()
        .map(|r| (r.status, r.body["stream"]["endedAt"].clone()))
        .collect();
    assert!(ended.iter().all(|e| *e == ended[0] && e.0 == 200), "{ended:?}");
}

#[tokio::test]
async fn a_room_livekit_no_longer_has_counts_as_closed() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    let body = serde_json::json!({"title": "t", "roomName": "never-joined"}).to_string();
    assert_eq!(
        app.call(shared::handlers::start_stream, Some(&token), &body)
            .await
            .status,
        201
    );
    // Nobody joined, so LiveKit closed the empty room: DeleteRoom answers not_found.
    app.livekit().delete_room("never-joined").await;
    let response = app
        .call(end_stream, Some(&token), r#"{"roomName":"never-joined"}"#)
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body["roomClosed"], true);
    let row = app.stream_row("never-joined").await.unwrap();
    assert!(row.get::<_, Option<DateTime<Utc>>>("room_closed_at").is_some());
}

#[tokio::test]
async fn when_livekit_is_down_the_stream_still_ends_and_a_later_end_closes_the_room() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "ending").await;
    let token = app.token_for(host);

    app.set_livekit_mode(LiveKitMode::Failing).await;
    let first = app.call(end_stream, Some(&token), END_BODY).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["stream"]["isLive"], false);
    assert_eq!(first.body["roomClosed"], false);
    let row = app.stream_row("ending").await.unwrap();
    assert!(
        !row.get::<_, bool>("is_live"),
        "ended in the database although LiveKit is down"
    );
    assert!(row.get::<_, Option<DateTime<Utc>>>("room_closed_at").is_none());
    assert!(app.has_room("ending").await);

    app.set_livekit_mode(LiveKitMode::Up).await;
    let retry = app.call(end_stream, Some(&token), END_BODY).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["roomClosed"], true);
    assert_eq!(retry.body["stream"]["endedAt"], first.body["stream"]["endedAt"]);
    assert!(!app.has_room("ending").await, "the retry deleted the room");
}

#[tokio::test]
async fn a_hanging_livekit_does_not_hold_the_end_request() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "ending").await;
    app.set_livekit_mode(LiveKitMode::Hanging).await;
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        app.call(end_stream, Some(&app.token_for(host)), END_BODY),
    )
    .await
    .expect("end answers although LiveKit never does");
    assert_eq!(response.status, 200);
    assert_eq!(response.body["roomClosed"], false);
}
