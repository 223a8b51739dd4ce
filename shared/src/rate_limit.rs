//! Sliding-window rate limits kept in Postgres, so they hold across every
//! Lambda container. One row per key holds the times of its hits inside the
//! window; the upsert locks that row, so concurrent requests for one key are
//! counted one after another and never both slip under the limit.

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

/// Records a hit for `key` if it is under the limit. Over it: `RateLimited`
/// with the seconds until the oldest hit in the window falls out.
pub async fn hit(client: &Client, key: &str, limit: Limit) -> Result<(), ApiError> {
    let window = limit.window.as_secs_f64();
    let max = i64::from(limit.max);
    let admitted = client
        .query_typed(
            "INSERT INTO rate_limit_windows AS w (key, hits) VALUES ($1, ARRAY[now()])
             ON CONFLICT (key) DO UPDATE
             SET hits = ARRAY(SELECT h FROM unnest(w.hits) AS h
                              WHERE h > now() - make_interval(secs => $2) ORDER BY h) || now(),
                 updated_at = now()
             WHERE (SELECT count(*) FROM unnest(w.hits) AS h WHERE h > now() - make_interval(secs => $2)) < $3
             RETURNING 1",
            &[(&key, Type::TEXT), (&window, Type::FLOAT8), (&max, Type::INT8)],
        )
        .await?;
    if !admitted.is_empty() {
        return Ok(());
    }
    let row = client
        .query_typed_one(
            "SELECT ceil(extract(epoch FROM min(h) + make_interval(secs => $2) - now()))::bigint
             FROM rate_limit_windows, unnest(hits) AS h
             WHERE key = $1 AND h > now() - make_interval(secs => $2)",
            &[(&key, Type::TEXT), (&window, Type::FLOAT8)],
        )
        .await?;
    let retry_after: Option<i64> = row.try_get(0).map_err(ApiError::internal)?;
    Err(ApiError::RateLimited {
        retry_after_seconds: retry_after.unwrap_or(1).max(1) as u64,
    })
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
