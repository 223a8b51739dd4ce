//! Sliding-window rate limits kept in Postgres, so they hold across every
//! Lambda container. One row per key holds the times of its hits inside the
//! window; the upsert locks that row, so concurrent requests for one key are
//! counted one after another and never both slip under the limit. The SQL is
//! the function `rate_limit_hit` (migration 0005), planned once per connection.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::ApiError;

/// At most `max` hits in any `window`.
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

/// Records a hit for `key` if it is under the limit (`rate_limit_hit`, in
/// migration 0005). Over it: `RateLimited` with the seconds until the oldest
/// hit in the window falls out.
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

/// Drops windows idle for a day; run by the scheduled reconciler.
pub async fn prune(client: &Client) -> Result<usize, ApiError> {
    let rows = client
        .query_typed(
            "DELETE FROM rate_limit_windows WHERE updated_at < now() - interval '1 day' RETURNING 1",
            &[],
        )
        .await?;
    Ok(rows.len())
}
