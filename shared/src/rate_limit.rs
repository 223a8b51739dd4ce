//! Sliding-window rate limits kept in Postgres, so they hold across every
//! Lambda container. One row per key holds the times of its hits inside the
//! window; the upsert locks that row, so concurrent requests for one key are
//! counted one after another and never both slip under the limit.

use std::sync::LazyLock;
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

/// The statement that records a hit for key `$key` if fewer than `$max` hits
/// fall in the last `$window` seconds, returning a row only when admitted.
/// Parameter numbers are given so a caller can embed it in a larger statement
/// (`WITH hit AS (…)`) and keep a request to one round trip.
pub fn hit_sql(key: usize, window: usize, max: usize) -> String {
    format!(
        "INSERT INTO rate_limit_windows AS w (key, hits) VALUES (${key}, ARRAY[now()])
         ON CONFLICT (key) DO UPDATE
         SET hits = ARRAY(SELECT h FROM unnest(w.hits) AS h
                          WHERE h > now() - make_interval(secs => ${window}) ORDER BY h) || now(),
             updated_at = now()
         WHERE (SELECT count(*) FROM unnest(w.hits) AS h
                WHERE h > now() - make_interval(secs => ${window})) < ${max}
         RETURNING 1"
    )
}

/// The whole seconds until the oldest hit of `$key` leaves the window.
pub fn retry_after_sql(key: usize, window: usize) -> String {
    format!(
        "SELECT ceil(extract(epoch FROM min(h) + make_interval(secs => ${window}) - now()))::bigint
         FROM rate_limit_windows, unnest(hits) AS h
         WHERE key = ${key} AND h > now() - make_interval(secs => ${window})"
    )
}

/// The error for a refused hit; `Retry-After` is at least one second.
pub fn limited(retry_after_seconds: Option<i64>) -> ApiError {
    ApiError::RateLimited {
        retry_after_seconds: retry_after_seconds.unwrap_or(1).max(1) as u64,
    }
}

static HIT: LazyLock<String> = LazyLock::new(|| hit_sql(1, 2, 3));
static RETRY_AFTER: LazyLock<String> = LazyLock::new(|| retry_after_sql(1, 2));

/// Records a hit for `key` if it is under the limit. Over it: `RateLimited`
/// with the seconds until the oldest hit in the window falls out.
pub async fn hit(client: &Client, key: &str, limit: Limit) -> Result<(), ApiError> {
    let (window, max) = (limit.window_seconds(), limit.max_hits());
    let admitted = client
        .query_typed(
            &HIT,
            &[(&key, Type::TEXT), (&window, Type::FLOAT8), (&max, Type::INT8)],
        )
        .await?;
    if !admitted.is_empty() {
        return Ok(());
    }
    let row = client
        .query_typed_one(&RETRY_AFTER, &[(&key, Type::TEXT), (&window, Type::FLOAT8)])
        .await?;
    Err(limited(row.try_get(0).map_err(ApiError::internal)?))
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
