//! The floor of any function that makes one database round trip: the echo
//! Lambda (see `echo.rs`) plus one `SELECT 1` through the functions' own pool
//! (`shared::AppState`: the same settings, TLS and `sslmode` as every
//! function), sent as an unnamed statement as `/live/token`'s one query is
//! (the transaction-mode pooler keeps no prepared statements). What
//! `/live/token` adds above this figure is its own work: the JWT check, the
//! token, and what Postgres does for `live_token_access` beyond `SELECT 1`.
//!
//!   cargo build --release -p lambda-harness --example round_trip
//!   target/release/lambda-harness --binary target/release/examples/round_trip --event events/token.json \
//!       --invocations 3000 --env DATABASE_URL=... (and the functions' other settings)

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let state = shared::AppState::load().await?;
    let state = &state;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| async move {
        let client = state.db.get().await?;
        let row = client.query_typed_one("SELECT 1", &[]).await?;
        let one: i32 = row.try_get(0)?;
        Ok::<_, Error>(json!({ "statusCode": 200, "body": one.to_string() }))
    }))
    .await
}
