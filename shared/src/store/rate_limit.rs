//! Rate limits kept in Postgres, so they hold across every Lambda container:
//! GCRA on one timestamp per key (migration 0008), so a hit costs the same
//! whatever the limit, in an UNLOGGED table, so a request whose only write is
//! its hit does not wait for a durable commit (limiter state lost in a crash
//! only lets a limit start afresh). The upsert locks the key's row, so
//! concurrent requests for one key are counted one after another and never
//! both slip under the limit. The SQL is the function `rate_limit_hit`,
//! planned once per connection.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::ApiError;

/// `max` hits per `window`, as GCRA counts them: up to `max` at once, then
/// one every `window / max` as the allowance refills. Over a long run that
/// is `max` per `window`; a user who bursts and then keeps to the pace gets
/// at most `2 × max − 1` into one window (5 per 10 s: five at once, then one
/// every 2 s). Exactly `max` in every sliding window would need every hit's
/// time kept, the per-hit cost this state avoids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

impl Limit {
    pub fn window_seconds(&self) -> f64 {
        self.window.as_secs_f64()
    }

    pub fn max_hits(&self) -> i64 {
        i64::from(self.max)
    }
}

/// The error for a refused hit; `Retry-After` is at least one second.
pub fn limited(retry_after_seconds: Option<i64>) -> ApiError {
    ApiError::RateLimited {
        retry_after_seconds: retry_after_seconds.unwrap_or(1).max(1) as u64,
    }
}

/// Records a hit for `key` if it is under the limit (`rate_limit_hit`). Over
/// it: `RateLimited` with the seconds until a hit would be admitted.
pub async fn hit(client: &Client, key: &str, limit: Limit) -> Result<(), ApiError> {
    let (window, max) = (limit.window_seconds(), limit.max_hits());
    let row = client
        .query_typed_one(
            "SELECT rate_limit_hit($1, $2, $3)",
            &[(&key, Type::TEXT), (&window, Type::FLOAT8), (&max, Type::INT8)],
        )
        .await?;
    match row.try_get::<_, Option<i64>>(0).map_err(ApiError::internal)? {
        None => Ok(()),
        Some(retry_after) => Err(limited(Some(retry_after))),
    }
}

/// Drops the state of keys rested for an hour (their next hit would start
/// afresh anyway), at most `batch` per call; run by the scheduled reconciler.
pub async fn prune(client: &Client, batch: i64) -> Result<usize, ApiError> {
    let rows = client
        .query_typed(
            "DELETE FROM rate_limits WHERE key IN (
                 SELECT key FROM rate_limits WHERE tat < now() - interval '1 hour' LIMIT $1)
             RETURNING 1",
            &[(&batch, Type::INT8)],
        )
        .await?;
    Ok(rows.len())
}
