//! The join rush: a `/live/token` for each viewer of the viral room within a
//! minute, through the adapter (JWT check, one round trip, token minting), on
//! the template's token containers; then the chat's first page that each of
//! them reads as they connect (`GET /live/chat`, the client rule in the
//! README), at the same pace on the template's chat-history containers. One
//! after the other, so each one's round trips and database time are its own.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::Setup;
use crate::fleet;

const ROOM: &str = "hot-room-tokens";

pub async fn run(setup: &Setup) -> Value {
    let db = crate::admin(setup).await;
    db.execute(
        "INSERT INTO live_streams (id, streamer_id, title) VALUES ($1, $2, 'Join rush')",
        &[&ROOM, &Uuid::new_v4()],
    )
    .await
    .expect("the stream everybody joins");
    let body = json!({"roomName": ROOM, "participantName": "Viewer"}).to_string();
    let jobs = joiners(setup);
    let containers = warm_containers(setup, "TokenConcurrency").await;
    let token_containers = containers.len();
    let rush = fleet::run(containers, jobs, move |state, bearer: String| {
        let body = body.clone();
        async move {
            let request = fleet::post(&bearer, body);
            shared::http::handle(&state, request, &shared::handlers::issue_token)
                .await
                .status()
                .as_u16()
        }
    });
    let (outcomes, round_trips, server_nanos) = with_database_counts(setup, rush).await;
    let tokens = outcomes.len().max(1) as f64;
    let chat_history = chat_history_rush(setup).await;
    json!({
        "containers": token_containers,
        "tokens": fleet::summary(&outcomes),
        "chat_history": chat_history,
        "round_trips_per_token": round_trips as f64 / tokens,
        // The database's own time per token (its answer's first byte back at
        // the proxy), and with the proxy's delay on each round trip.
        "database_us_per_token": server_nanos as f64 / 1_000.0 / tokens,
        "database_with_delay_us_per_token": (server_nanos as f64 / 1_000.0
            + round_trips as f64 * crate::PROXY_DELAY.as_secs_f64() * 1e6)
            / tokens,
    })
}

/// Every joiner's read of the chat's first page, at the join rush's pace, on
/// as many containers as the template reserves for chat-history, with a
/// chat going on (a full page to read).
async fn chat_history_rush(setup: &Setup) -> Value {
    let db = crate::admin(setup).await;
    db.execute(
        "INSERT INTO live_messages (room_name, user_id, text)
         SELECT $1, gen_random_uuid(), 'said before the rush ' || i FROM generate_series(1, 120) AS i",
        &[&ROOM],
    )
    .await
    .expect("the room's chat so far");
    let jobs = joiners(setup);
    let containers = warm_containers(setup, "ReadConcurrency").await;
    let container_count = containers.len();
    let rush = fleet::run(containers, jobs, |state, bearer: String| async move {
        let request = fleet::get(&bearer, &[("roomName", ROOM)]);
        shared::http::handle(&state, request, &shared::handlers::chat_history)
            .await
            .status()
            .as_u16()
    });
    let (outcomes, round_trips, server_nanos) = with_database_counts(setup, rush).await;
    let reads = outcomes.len().max(1) as f64;
    json!({
        "containers": container_count,
        "reads": fleet::summary(&outcomes),
        "round_trips_per_read": round_trips as f64 / reads,
        "database_us_per_read": server_nanos as f64 / 1_000.0 / reads,
    })
}

/// Each viewer's bearer token and when they join: evenly over the window.
fn joiners(setup: &Setup) -> Vec<(std::time::Duration, String)> {
    let n = setup.viewers;
    (0..n)
        .map(|i| {
            let bearer = format!(
                "Bearer {}",
                crate::supabase_token(&setup.supabase_secret, Uuid::new_v4())
            );
            (setup.window.mul_f64(i as f64 / n as f64), bearer)
        })
        .collect()
}

/// The function's containers, each with its connection opened before the
/// rush, as a warm one has.
async fn warm_containers(
    setup: &Setup,
    concurrency_parameter: &str,
) -> Vec<std::sync::Arc<shared::AppState>> {
    let containers = fleet::containers(setup, concurrency_parameter);
    for state in &containers {
        let _ = state.db.get().await;
    }
    containers
}

/// `work`'s outcome, with the round trips to Postgres the proxy saw while it
/// ran and the database's time on them (each answer's first byte).
async fn with_database_counts<T>(setup: &Setup, work: impl std::future::Future<Output = T>) -> (T, u64, u64) {
    let round_trips_before = setup.proxy.requests.load(Ordering::Relaxed);
    let server_nanos_before = setup.proxy.server_nanos.load(Ordering::Relaxed);
    let outcome = work.await;
    (
        outcome,
        setup.proxy.requests.load(Ordering::Relaxed) - round_trips_before,
        setup.proxy.server_nanos.load(Ordering::Relaxed) - server_nanos_before,
    )
}
