//! Bad days: a frozen connection, a slow database, a failed cold start, JWKS
//! key rotation, and abuse limits on start and token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shared::handlers::{issue_token, start_stream};
use shared::http::LazyState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::helpers::{AppOptions, TestApp, asymmetric, public_jwk};

const FORWARD: u8 = 0;
/// Established connections stop passing bytes and stay open, like a socket
/// whose far end vanished while the Lambda container was frozen.
const FREEZE: u8 = 1;
/// Server replies are held back for 20 s: a database that has slowed down.
const SLOW: u8 = 2;
/// The first statement that carries a LiveKit room sid (`RM_…`) reaches the
/// server, which runs and commits it, but its connection is cut before the
/// answer: a start that committed and never heard so. Then back to FORWARD.
const CUT_ANSWER_TO_ROOM_SID: u8 = 3;

/// A TCP proxy to Postgres whose behaviour the test switches at run time.
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    generation: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let generation = Arc::new(AtomicUsize::new(0));
        let (m, g) = (mode.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (mode, generation) = (m.clone(), g.clone());
                // Freezing affects connections made before it, not new ones.
                let born = generation.load(Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = inbound.into_split();
                let (server_read, server_write) = outbound.into_split();
                let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                            mut to: tokio::net::tcp::OwnedWriteHalf,
                            from_server: bool| {
                    let (mode, generation, cut) = (mode.clone(), generation.clone(), cut.clone());
                    tokio::spawn(async move {
                        let mut buffer = [0u8; 8192];
                        while let Ok(n) = from.read(&mut buffer).await {
                            if n == 0 {
                                break;
                            }
                            loop {
                                let frozen = mode.load(Ordering::SeqCst) == FREEZE
                                    && generation.load(Ordering::SeqCst) > born;
                                if !frozen {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            if from_server && mode.load(Ordering::SeqCst) == SLOW {
                                tokio::time::sleep(Duration::from_secs(20)).await;
                            }
                            if !from_server
                                && buffer[..n].windows(3).any(|w| w == b"RM_")
                                && mode
                                    .compare_exchange(
                                        CUT_ANSWER_TO_ROOM_SID,
                                        FORWARD,
                                        Ordering::SeqCst,
                                        Ordering::SeqCst,
                                    )
                                    .is_ok()
                            {
                                cut.store(true, Ordering::SeqCst);
                            }
                            if from_server && cut.load(Ordering::SeqCst) {
                                // The answer is dropped with the connection.
                                break;
                            }
                            if to.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    })
                };
                pipe(client_read, server_write, false);
                pipe(server_read, client_write, true);
            }
        });
        Proxy {
            port,
            mode,
            generation,
        }
    }

    fn set(&self, mode: u8) {
        if mode == FREEZE {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn app_behind_proxy() -> (TestApp, Proxy) {
    let url = crate::helpers::migrated_database().await;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let target = format!("127.0.0.1:{}", config.get_ports()[0]).parse().unwrap();
    let proxy = Proxy::start(target).await;
    let database = url.rsplit_once('/').unwrap().1;
    let via_proxy = format!(
        "postgres://{}@127.0.0.1:{}/{database}?sslmode=disable",
        crate::helpers::API_ROLE,
        proxy.port
    );
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(via_proxy),
        ..AppOptions::default()
    })
    .await;
    (app, proxy)
}

/// The start's statement commits, but the connection dies before its answer
/// arrives: the start answers 503, and keeps the room its stream now lives
/// in (closing it would end the stream), so the retry answers 200 with the
/// live stream and a host token for that room.
#[tokio::test]
async fn a_start_that_committed_but_lost_its_answer_keeps_its_room_for_the_retry() {
    let (app, proxy) = app_behind_proxy().await;
    let host = Uuid::new_v4();
    let token = app.token_for(host);
    let body = json!({"title": "Lost answer", "roomName": "lost-answer"}).to_string();
    proxy.set(CUT_ANSWER_TO_ROOM_SID);
    let first = app.call(start_stream, Some(&token), &body).await;
    first.assert_error(503, "unavailable");
    let row = app.stream_row("lost-answer").await.expect("the start committed");
    assert!(row.get::<_, bool>("is_live"));
    assert!(app.has_room("lost-answer").await, "its room is kept");

    let retried = app.call(start_stream, Some(&token), &body).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.body["stream"]["isLive"], true);
    assert!(app.has_room("lost-answer").await);
}

#[tokio::test]
async fn a_connection_that_died_while_the_container_was_frozen_is_replaced_not_served() {
    let (app, proxy) = app_behind_proxy().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "frozen").await;
    let body = r#"{"roomName":"frozen","participantName":"Ada"}"#;
    let token = app.token_for(Uuid::new_v4());
    assert_eq!(app.call(issue_token, Some(&token), body).await.status, 200);

    // The pooled connection goes dead silently, and the container sits idle.
    proxy.set(FREEZE);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    // Served on the dead connection, the request would hang until its
    // deadline's 503: the 200 is the fresh connection's.
    let response = app.call(issue_token, Some(&token), body).await;
    assert_eq!(
        response.status, 200,
        "a fresh connection answered: {}",
        response.body
    );
}

#[tokio::test]
async fn a_slow_database_gets_a_503_before_the_deadline_and_the_next_request_recovers() {
    let (app, proxy) = app_behind_proxy().await;
    app.start_stream(Uuid::new_v4(), "slow").await;
    let body = r#"{"roomName":"slow","participantName":"Ada"}"#;
    let token = app.token_for(Uuid::new_v4());

    proxy.set(SLOW);
    let started = Instant::now();
    let response = app.call(issue_token, Some(&token), body).await;
    response.assert_error(503, "unavailable");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(10),
        "answered after {took:?}"
    );

    proxy.set(FORWARD);
    let recovered = app.call(issue_token, Some(&token), body).await;
    assert_eq!(recovered.status, 200, "{}", recovered.body);
}

#[tokio::test]
async fn a_failed_cold_start_answers_503_and_retries_without_a_crash_loop() {
    static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);
    fn loader() -> shared::http::BoxFuture<'static, Result<shared::AppState, shared::config::ConfigError>> {
        Box::pin(async {
            match ATTEMPTS.fetch_add(1, Ordering::SeqCst) {
                0 => Err(shared::config::ConfigError::Secret {
                    id: "live-backend/app".into(),
                    reason: "dispatch failure: connection refused".into(),
                }),
                _ => {
                    let settings = std::collections::HashMap::from([
                        (
                            "DATABASE_URL",
                            "postgres://postgres@127.0.0.1:1/postgres".to_owned(),
                        ),
                        ("LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned()),
                        ("LIVEKIT_API_KEY", "k".to_owned()),
                        ("LIVEKIT_API_SECRET", "s".to_owned()),
                        (
                            "SUPABASE_JWT_SECRET",
                            "a-test-secret-of-at-least-32-characters".to_owned(),
                        ),
                    ]);
                    let config = shared::config::Config::from_lookup(|n| settings.get(n).cloned())?;
                    shared::AppState::new(&config)
                }
            }
        })
    }
    // Long enough that the second attempt below is surely within it on a
    // loaded machine, short enough to wait out.
    let retry_interval = Duration::from_secs(2);
    let state = LazyState::new(loader, retry_interval);
    let first = state.get().await.err().expect("the secret could not be read");
    assert_eq!((first.status().as_u16(), first.code()), (503, "unavailable"));
    let answer = shared::http::error_response(&first);
    assert_eq!(
        answer.headers()["retry-after"],
        shared::http::STARTUP_RETRY_INTERVAL
            .as_secs()
            .to_string()
            .as_str(),
        "a retry sooner than the next startup attempt meets the same 503"
    );
    assert!(
        state.get().await.is_err(),
        "within the retry interval: no new attempt"
    );
    assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 1);
    tokio::time::sleep(retry_interval + Duration::from_millis(50)).await;
    assert!(state.get().await.is_ok(), "recovered without a new cold start");
    assert!(state.get().await.is_ok());
    assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 2, "built once, then kept");
}

/// While a cold start cannot build its state, every function answers 503;
/// the API's answer says when to retry (`Retry-After`), the webhook's does
/// not, as for every other 503 of the webhook: LiveKit would otherwise wait
/// that long between its retries instead of backing off.
#[tokio::test]
async fn a_webhook_during_a_failed_cold_start_gets_its_503_without_retry_after() {
    fn loader() -> shared::http::BoxFuture<'static, Result<shared::AppState, shared::config::ConfigError>> {
        Box::pin(async {
            Err(shared::config::ConfigError::Secret {
                id: "live-backend/app".into(),
                reason: "dispatch failure: connection refused".into(),
            })
        })
    }
    let state = LazyState::new(loader, Duration::from_secs(60));
    let event = json!({"event": "room_started", "id": "EV_cold", "room": {"name": "r"}}).to_string();
    let webhook = shared::http::answer(
        &state,
        &shared::handlers::LiveKitWebhook,
        crate::helpers::post_request(None, &event),
    )
    .await;
    let api = shared::http::answer(
        &state,
        &shared::http::Authenticated::new(issue_token),
        crate::helpers::post_request(Some("a-token"), r#"{"roomName":"r"}"#),
    )
    .await;
    for (name, answer) in [("webhook", &webhook), ("token", &api)] {
        assert_eq!(answer.status(), 503, "{name}");
        let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{name}: {body}");
    }
    assert_eq!(webhook.headers().get("retry-after"), None);
    assert_eq!(
        api.headers()["retry-after"],
        shared::http::STARTUP_RETRY_INTERVAL
            .as_secs()
            .to_string()
            .as_str()
    );
}

#[tokio::test]
async fn a_signing_key_removed_from_the_jwks_stops_verifying_once_the_cache_expires() {
    let app = TestApp::spawn_with_settings(vec![("SUPABASE_JWKS_CACHE_SECONDS", "1".into())]).await;
    let user = Uuid::new_v4();
    let old = asymmetric("es256-a", &app.claims_for(user));
    assert_eq!(app.state.auth.authenticate(&old).await.unwrap().id, user);
    // Rotation: the new key is published and the old one withdrawn.
    app.jwks
        .set_keys(json!({"keys": [public_jwk("es256-b"), public_jwk("rs256")]}));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(
        matches!(
            app.state.auth.authenticate(&old).await,
            Err(shared::auth::AuthError::Rejected(_) | shared::auth::AuthError::Invalid(_))
        ),
        "the withdrawn key is refused"
    );
    let new = asymmetric("es256-b", &app.claims_for(user));
    assert_eq!(app.state.auth.authenticate(&new).await.unwrap().id, user);
    assert_eq!(app.jwks.fetches(), 2);
}

/// Supabase Auth unreachable: the keys fetched before keep verifying past
/// the cache period, but not for ever (six periods): after that a token is
/// a 503 (the keys are unknown), never a pass on a key that may have been
/// withdrawn meanwhile. Once the JWKS answers again, tokens verify.
#[tokio::test]
async fn while_the_jwks_cannot_be_fetched_the_previous_keys_verify_for_a_bounded_time() {
    let app = TestApp::spawn_with_settings(vec![("SUPABASE_JWKS_CACHE_SECONDS", "1".into())]).await;
    let user = Uuid::new_v4();
    let token = asymmetric("es256-a", &app.claims_for(user));
    assert_eq!(app.state.auth.authenticate(&token).await.unwrap().id, user);
    app.jwks.set_failing(true);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        app.state.auth.authenticate(&token).await.unwrap().id,
        user,
        "a stale copy beats none"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match app.state.auth.authenticate(&token).await {
            Ok(_) => assert!(Instant::now() < deadline, "the stale keys verified for ever"),
            Err(error) => break error,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        matches!(refused, shared::auth::AuthError::KeysUnavailable(_)),
        "{refused:?}"
    );
    app.jwks.set_failing(false);
    // The next fetch waits out the refetch interval (here the cache period).
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state.auth.authenticate(&token).await.is_err() {
        assert!(Instant::now() < deadline, "never verified again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Supabase Auth hanging when the keys are due for a refresh, with a
/// request deadline shorter than a JWKS fetch's own bound: the fetch gives
/// up in time for the request to verify with the previous keys, and the
/// next request within the retry interval does not fetch again.
#[tokio::test]
async fn a_hanging_jwks_refresh_gives_up_within_the_request_deadline() {
    let app = TestApp::spawn_with_settings(vec![
        ("SUPABASE_JWKS_CACHE_SECONDS", "1".into()),
        ("REQUEST_DEADLINE_SECONDS", "2".into()),
    ])
    .await;
    let room = "keys-hang";
    app.start_stream(Uuid::new_v4(), room).await;
    let viewer = asymmetric("es256-a", &app.claims_for(Uuid::new_v4()));
    let body = json!({"roomName": room, "participantName": "Ann"}).to_string();
    let first = app.call(issue_token, Some(&viewer), &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    app.jwks.set_hanging(true);
    // Past the cache period: the next request refreshes the keys.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for attempt in ["the refresh", "within its retry interval"] {
        let answer = app.call(issue_token, Some(&viewer), &body).await;
        assert_eq!(answer.status, 200, "{attempt}: {}", answer.body);
    }
    assert_eq!(app.jwks.fetches(), 2, "one refresh tried, not one per request");
}

#[tokio::test]
async fn starts_and_tokens_are_rate_limited_per_user_across_containers() {
    let app = TestApp::spawn_with_settings(vec![
        ("START_RATE_LIMIT_REQUESTS", "3".into()),
        ("TOKEN_RATE_LIMIT_REQUESTS", "4".into()),
    ])
    .await;
    let other = TestApp::spawn_with(AppOptions {
        database_url: Some(app.api_database_url.clone()),
        settings: vec![
            ("START_RATE_LIMIT_REQUESTS", "3".into()),
            ("TOKEN_RATE_LIMIT_REQUESTS", "4".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let host = Uuid::new_v4();
    let start = json!({"title": "t", "roomName": "limited"}).to_string();
    let statuses: Vec<u16> = futures::future::join_all((0..5).map(|i| {
        let container = if i % 2 == 0 { &app } else { &other };
        let (container, start) = (container, start.clone());
        async move {
            container
                .call(start_stream, Some(&container.token_for(host)), &start)
                .await
        }
    }))
    .await
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| (200..300).contains(*s)).count(),
        3,
        "the other three started or found the stream: {statuses:?}"
    );

    let viewer = Uuid::new_v4();
    let body = r#"{"roomName":"limited","participantName":"Ada"}"#;
    for _ in 0..4 {
        assert_eq!(
            app.call(issue_token, Some(&app.token_for(viewer)), body)
                .await
                .status,
            200
        );
    }
    let limited = other
        .call(issue_token, Some(&other.token_for(viewer)), body)
        .await;
    limited.assert_error(429, "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // A refusal is answered as one even past the limit (it spends nothing):
    // whether a room exists is no secret, `GET /live/streams/{id}` says it.
    let probe = app
        .call(
            issue_token,
            Some(&app.token_for(viewer)),
            r#"{"roomName":"x","participantName":"y"}"#,
        )
        .await;
    probe.assert_error(404, "stream_not_found");
    assert_eq!(
        app.call(issue_token, Some(&app.token_for(Uuid::new_v4())), body)
            .await
            .status,
        200,
        "per user"
    );
}

/// A query that cannot succeed however often it is tried (a row that must be
/// there and is not, a value read as another type) is a 500, a bug that the
/// alarm reports; a connection the database dropped, before and after the
/// client notices, is a 503 the app retries.
#[tokio::test]
async fn our_own_mistakes_are_a_500_and_a_lost_connection_a_503() {
    let url = crate::helpers::migrated_database().await;
    let client = crate::helpers::connect(&url).await;
    let status = |error: tokio_postgres::Error| shared::ApiError::from(error).status().as_u16();

    let no_row = client.query_one("SELECT 1 WHERE false", &[]).await.unwrap_err();
    assert_eq!(status(no_row), 500);
    let row = client.query_one("SELECT 1::int4", &[]).await.unwrap();
    let wrong_type = row.try_get::<_, String>(0).unwrap_err();
    assert_eq!(status(wrong_type), 500);
    let bad_sql = client.query_one("SELECT no_such_column", &[]).await.unwrap_err();
    assert_eq!(status(bad_sql), 500, "a statement of ours Postgres refuses");

    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    crate::helpers::connect(&url)
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !client.is_closed() {
        assert!(Instant::now() < deadline, "the connection never closed");
        if let Err(error) = client.query_one("SELECT 1", &[]).await {
            seen.push(status(error));
        }
    }
    let closed = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(closed.is_closed(), "{closed}");
    seen.push(status(closed));
    assert!(seen.iter().all(|s| *s == 503), "{seen:?}");
}
