//! Dependencies that are down: the client gets a clear 503 quickly, and the warm
//! state recovers by itself once the dependency is back.

use std::net::SocketAddr;
use std::time::Instant;

use shared::handlers::{end_stream, start_stream};
use shared::scheduled::flush::flush_until;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::helpers::{AppOptions, ClosedPort, LiveKitMode, TestApp};

/// Forwards every connection on `listener` to `target`, like a network path to the database.
async fn start_proxy(listener: TcpListener, target: SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

fn postgres_addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[tokio::test]
async fn a_database_down_at_cold_start_is_a_503_and_the_warm_state_recovers() {
    let real_url = crate::helpers::migrated_database().await;
    let database_port = ClosedPort::bind();
    let port = database_port.port();
    let database = real_url.rsplit_once('/').unwrap().1;
    let via_proxy = format!(
        "postgres://{}@127.0.0.1:{port}/{database}",
        crate::helpers::API_ROLE
    );
    // The state builds although nothing listens on the database port.
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(via_proxy),
        ..AppOptions::default()
    })
    .await;
    let token = app.token_for(Uuid::new_v4());

    let down = app
        .call(start_stream, Some(&token), r#"{"title":"x","roomName":"outage"}"#)
        .await;
    down.assert_error(503, "unavailable");
    assert!(
        down.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database"),
        "the pool's own timeouts answered, not the request's deadline: {}",
        down.body
    );

    start_proxy(database_port.listen(), postgres_addr(&real_url)).await;
    let up = app
        .call(start_stream, Some(&token), r#"{"title":"x","roomName":"outage"}"#)
        .await;
    assert_eq!(up.status, 201, "same state, no cold start: {}", up.body);
    let joined = app.request_token(&token, "outage").await;
    assert_eq!(joined.status, 200);
}

#[tokio::test]
async fn a_database_that_accepts_but_never_answers_is_a_503_within_seconds() {
    // A listener that accepts connections and never speaks: a hung database.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(url),
        ..AppOptions::default()
    })
    .await;
    let response = app.request_token(&app.token_for(Uuid::new_v4()), "r").await;
    response.assert_error(503, "unavailable");
    // The pool's connect timeout answered, not the request's deadline ("The
    // request took too long"), which would answer too without it.
    assert_eq!(
        response.body["error"]["message"], "The database is temporarily unavailable; please retry shortly.",
        "{}",
        response.body
    );
}

#[tokio::test]
async fn a_database_restart_is_a_503_while_down_and_the_same_warm_state_recovers() {
    let cluster = crate::helpers::RestartableCluster::start().await;
    shared::store::migrate::migrate_url(&cluster.url())
        .await
        .expect("migrations apply");
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(crate::helpers::as_api_role(&cluster.url())),
        ..AppOptions::default()
    })
    .await;
    let host = Uuid::new_v4();
    app.start_stream(host, "before-restart").await;

    // A fast shutdown ends every session: the pooled connection is dead.
    cluster.stop().await;
    let token = app.token_for(host);
    let viewer_token = app.token_for(Uuid::new_v4());
    let down = app
        .call(
            start_stream,
            Some(&token),
            r#"{"title":"x","roomName":"during-restart"}"#,
        )
        .await;
    down.assert_error(503, "unavailable");
    let down_too = app.request_token(&viewer_token, "before-restart").await;
    down_too.assert_error(503, "unavailable");
    for answer in [&down, &down_too] {
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("database"),
            "the database's 503, not the deadline's: {}",
            answer.body
        );
    }
    // The flusher's invocation fails as a whole, so Lambda's Errors metric
    // (the template's alarm) sees a minute of counts not copied.
    let flushed = flush_until(&app.state, Instant::now(), None).await;
    assert!(flushed.all_failed(), "{flushed:?}");

    cluster.resume().await;
    let up = app.request_token(&viewer_token, "before-restart").await;
    assert_eq!(
        up.status, 200,
        "the stream started before the restart is still live: {}",
        up.body
    );
    app.start_stream(Uuid::new_v4(), "after-restart").await;
    let flushed = flush_until(&app.state, Instant::now(), None).await;
    assert_eq!((flushed.ticks, flushed.failed_ticks), (1, 0), "{flushed:?}");
    assert!(!flushed.all_failed());
    assert!(
        app.stream_row("during-restart").await.is_none(),
        "the refused start left nothing behind"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_closed_while_the_container_slept_costs_no_request() {
    // A load balancer, a proxy or a restarted LiveKit closes idle keep-alive
    // connections; a frozen Lambda container does not notice, and its next
    // RoomService call goes out on a closed connection and gets no answer.
    let app = TestApp::spawn().await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(first, "before-the-nap").await;

    app.set_livekit_mode(LiveKitMode::ClosingIdle).await;
    let started = app
        .call(
            start_stream,
            Some(&app.token_for(second)),
            r#"{"title":"x","roomName":"after-the-nap"}"#,
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    assert!(app.has_room("after-the-nap").await);

    app.set_livekit_mode(LiveKitMode::ClosingIdle).await;
    let ended = app
        .call(
            end_stream,
            Some(&app.token_for(first)),
            r#"{"roomName":"before-the-nap"}"#,
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.body["roomClosed"], true, "{}", ended.body);
    assert!(!app.has_room("before-the-nap").await);
}
