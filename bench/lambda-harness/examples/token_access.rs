//! The floor of `/live/token` itself: the echo Lambda (see `echo.rs`) plus the
//! one database call `/live/token` makes, `shared::store::streams::token_access`
//! (`CALL live_token_access`: the rate-limit hit, the stream, the caller's
//! restrictions and stage standing), through the functions' own pool, with
//! the production token limit. No JWT check, no LiveKit token, no HTTP
//! parsing: what `/live/token` adds above this figure is its own work, and
//! what this adds above `round_trip.rs` is Postgres's for the call.
//!
//! The caller is user k of `BENCH_TOKEN_USERS` (default 2,000) in turn, a
//! rate-limit key of its own per user (first hits on a fresh database, known
//! keys after), as `scripts/bench node-token` gives `/live/token` its events.
//!
//!   cargo build --release -p lambda-harness --example token_access
//!   target/release/lambda-harness --binary target/release/examples/token_access --event events/token.json \
//!       --invocations 2000 --env DATABASE_URL=... (and the functions' other settings)

use std::sync::atomic::{AtomicU64, Ordering};

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use shared::domain::RoomName;
use uuid::Uuid;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let state = shared::AppState::load().await?;
    let users: u64 = match std::env::var("BENCH_TOKEN_USERS") {
        Ok(raw) => raw.parse()?,
        Err(_) => 2_000,
    };
    let room = RoomName::parse("demo-room".to_owned())?;
    let next = AtomicU64::new(0);
    let (state, room, next) = (&state, &room, &next);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| async move {
        // Version 4, variant 8, apart from every real or bench user.
        let k = next.fetch_add(1, Ordering::Relaxed) % users.max(1);
        let user = Uuid::from_u128(0x0000_0000_0000_4000_8000_f000_0000_0000 | u128::from(k));
        let client = state.db.get().await?;
        let access = shared::store::streams::token_access(
            &client,
            room,
            user,
            state.limits.token,
            state.rules.stage_return,
        )
        .await
        .map_err(|e| format!("token_access: {e:?}"))?;
        let status = match access {
            Some(access) if access.is_live => 200,
            Some(_) => 409,
            None => 404,
        };
        Ok::<_, Error>(json!({ "statusCode": status }))
    }))
    .await
}
