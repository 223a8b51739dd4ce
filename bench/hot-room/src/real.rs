//! The flash crowd's path with LiveKit's own events: real participants
//! (LiveKit's Python SDK) join the room with tokens from `/live/token`,
//! LiveKit's server delivers its webhooks over HTTP to `/live/webhook`
//! served here through the adapter (as API Gateway hands them over), on the
//! template's webhook containers; then half the viewers leave and half are
//! killed (a phone losing its network: no clean leave). The count must
//! follow both, the way the synthetic crowd's does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use lambda_http::{Body, Request};
use serde_json::{Value, json};
use shared::http::Endpoint;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::fleet::{self, Outcome};
use crate::listener::Listener;
use crate::{Setup, admin};

const ROOM: &str = "hot-room-real";

type Delivered = Arc<Mutex<Vec<(String, Outcome)>>>;

/// `POST /live/webhook` on `port`, for LiveKit's server.
async fn serve_webhooks(setup: &Setup, port: u16, delivered: Delivered) -> tokio::task::JoinHandle<()> {
    let containers = Arc::new(fleet::containers(setup, "WebhookConcurrency"));
    let next = Arc::new(AtomicUsize::new(0));
    let router = axum::Router::new().route(
        "/live/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (containers, next, delivered) = (containers.clone(), next.clone(), delivered.clone());
            async move {
                let started = Instant::now();
                let mut request = Request::new(Body::Binary(body.to_vec()));
                *request.method_mut() = lambda_http::http::Method::POST;
                for (name, value) in &headers {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
                let event = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let state = &containers[next.fetch_add(1, Ordering::Relaxed) % containers.len()];
                let response = shared::handlers::LiveKitWebhook.respond(state, request).await;
                let status = response.status().as_u16();
                delivered.lock().await.push((
                    event,
                    Outcome {
                        latency: started.elapsed(),
                        status,
                    },
                ));
                (
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    response.body().to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the webhook port scripts/bench gave LiveKit");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    })
}

/// A viewer token for a new user, through the adapter.
async fn viewer_token(setup: &Setup, state: &shared::AppState, i: usize) -> Value {
    let bearer = format!(
        "Bearer {}",
        crate::supabase_token(&setup.supabase_secret, Uuid::new_v4())
    );
    let request = fleet::post(
        &bearer,
        json!({"roomName": ROOM, "participantName": format!("Viewer {i}")}).to_string(),
    );
    let response = shared::http::handle(state, request, &shared::handlers::issue_token).await;
    assert_eq!(response.status(), 200, "a viewer token for {ROOM}");
    serde_json::from_slice(response.body().as_ref()).expect("JSON")
}

/// Seconds after `since` until the exact count is `expected` (None if not
/// within `bound`).
async fn count_reaches(
    db: &tokio_postgres::Client,
    expected: i64,
    since: Instant,
    bound: Duration,
) -> Option<f64> {
    while since.elapsed() < bound {
        let count: i64 = db
            .query_one("SELECT live_viewer_count($1)::int8", &[&ROOM])
            .await
            .expect("read the count")
            .get(0);
        if count == expected {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

pub async fn run(setup: &Setup) -> Value {
    let Some(port) = setup.webhook_port else {
        return json!({"skipped": "BENCH_WEBHOOK_PORT is not set"});
    };
    let delivered: Delivered = Arc::default();
    let server = serve_webhooks(setup, port, delivered.clone()).await;
    fleet::start_stream(setup, ROOM, "Real participants").await;
    let db = admin(setup).await;
    let tokens_state = fleet::container(setup, &[]);
    let mut tokens = Vec::with_capacity(setup.real_viewers);
    for i in 0..setup.real_viewers {
        tokens.push(viewer_token(setup, &tokens_state, i).await);
    }

    let joining = Instant::now();
    let viewers: Vec<Listener> = futures_util::future::join_all(tokens.iter().map(|token| {
        Listener::join(
            setup,
            token["serverUrl"].as_str().unwrap_or_default(),
            token["token"].as_str().unwrap_or_default(),
            "none",
        )
    }))
    .await;
    let connected_after = joining.elapsed().as_secs_f64();
    let joined_after = count_reaches(&db, setup.real_viewers as i64, joining, Duration::from_secs(30)).await;

    // Half leave cleanly, half vanish.
    let leaving = Instant::now();
    let mut killed = 0;
    for (i, viewer) in viewers.into_iter().enumerate() {
        if i % 2 == 0 {
            viewer.leave().await;
        } else {
            drop(viewer);
            killed += 1;
        }
    }
    let left_after = count_reaches(&db, 0, leaving, Duration::from_secs(90)).await;
    server.abort();

    let delivered = std::mem::take(&mut *delivered.lock().await);
    let mut by_event: std::collections::BTreeMap<String, usize> = Default::default();
    for (event, _) in &delivered {
        *by_event.entry(event.clone()).or_default() += 1;
    }
    let outcomes: Vec<Outcome> = delivered.into_iter().map(|(_, outcome)| outcome).collect();
    json!({
        "participants": setup.real_viewers,
        "killed": killed,
        "connected_after_s": connected_after,
        "count_exact_after_joins_s": joined_after,
        "count_zero_after_leaves_s": left_after,
        "webhooks": fleet::summary(&outcomes),
        "webhooks_by_event": by_event,
        "non_2xx": outcomes.iter().filter(|o| !(200..300).contains(&o.status)).count(),
    })
}
