//! Counts the round trips a request makes to Postgres, with a proxy that reads
//! the wire protocol: each round trip ends with a `Sync` (extended protocol)
//! or is one `Query` (simple protocol).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shared::handlers::issue_token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::helpers::{AppOptions, TestApp};

/// Forwards to Postgres and counts the client's Sync and Query messages.
async fn counting_proxy(target: std::net::SocketAddr, round_trips: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let round_trips = round_trips.clone();
            tokio::spawn(async move {
                let outbound = TcpStream::connect(target).await.unwrap();
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut server_read, mut server_write) = outbound.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
                let mut pending = Vec::new();
                let mut started = false;
                let mut buffer = [0u8; 8192];
                while let Ok(n) = client_read.read(&mut buffer).await {
                    if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    pending.extend_from_slice(&buffer[..n]);
                    loop {
                        // The startup message has no type byte: length, then body.
                        let (header, kind) = if started {
                            (5, pending.first().copied())
                        } else {
                            (4, None)
                        };
                        if pending.len() < header {
                            break;
                        }
                        let len_at = header - 4;
                        let len =
                            u32::from_be_bytes(pending[len_at..len_at + 4].try_into().unwrap()) as usize;
                        let total = len_at + len;
                        if pending.len() < total {
                            break;
                        }
                        if matches!(kind, Some(b'S') | Some(b'Q')) {
                            round_trips.fetch_add(1, Ordering::SeqCst);
                        }
                        pending.drain(..total);
                        started = true;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_warm_token_request_makes_exactly_one_database_round_trip() {
    let url = crate::helpers::migrated_database().await;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let target = format!("127.0.0.1:{}", config.get_ports()[0]).parse().unwrap();
    let round_trips = Arc::new(AtomicUsize::new(0));
    let port = counting_proxy(target, round_trips.clone()).await;
    let database = url.rsplit_once('/').unwrap().1;
    let proxied = format!(
        "postgres://{}@127.0.0.1:{port}/{database}?sslmode=disable",
        crate::helpers::API_ROLE
    );
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(proxied),
        ..AppOptions::default()
    })
    .await;
    app.start_stream(Uuid::new_v4(), "counted").await;
    let viewer = app.token_for(Uuid::new_v4());
    let body = r#"{"roomName":"counted","participantName":"Ada"}"#;
    assert_eq!(
        app.call(issue_token, Some(&viewer), body).await.status,
        200,
        "warm-up"
    );

    let before = round_trips.load(Ordering::SeqCst);
    assert_eq!(app.call(issue_token, Some(&viewer), body).await.status, 200);
    assert_eq!(round_trips.load(Ordering::SeqCst) - before, 1);
}
