//! The rate limiter: cost per hit at limits 60 and 100,000, today's GCRA on
//! one timestamp (UNLOGGED) next to the previous sliding window (an array of
//! every hit's time, in a logged table), both recreated here side by side.
//! Directly on Postgres (no proxy, unlike the other phases): what is
//! measured is the database's work, and whether a hit waits for a durable
//! commit. Every measured hit is one the limit lets through (a refusal
//! writes nothing and would flatter a low limit): the hits are spread over
//! as many keys as keep each within its limit, so at limit 60 every key
//! ends full, its previous-design array at 60 timestamps.

use std::time::Instant;

use serde_json::{Value, json};

use crate::{Setup, admin};

const HITS: usize = 3_000;

/// The previous design (migrations 0004 and 0005), in a schema of its own.
const PREVIOUS: &str = "
    CREATE SCHEMA IF NOT EXISTS bench_previous;
    CREATE TABLE IF NOT EXISTS bench_previous.rate_limit_windows (
        key TEXT PRIMARY KEY, hits TIMESTAMPTZ[] NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE OR REPLACE FUNCTION bench_previous.rate_limit_hit(p_key TEXT, p_window_seconds FLOAT8, p_max BIGINT)
    RETURNS BIGINT LANGUAGE plpgsql AS $$
    DECLARE v_window INTERVAL := make_interval(secs => p_window_seconds); v_retry_after BIGINT;
    BEGIN
        INSERT INTO bench_previous.rate_limit_windows AS w (key, hits) VALUES (p_key, ARRAY[now()])
        ON CONFLICT (key) DO UPDATE
        SET hits = ARRAY(SELECT h FROM unnest(w.hits) AS h WHERE h > now() - v_window ORDER BY h) || now(),
            updated_at = now()
        WHERE (SELECT count(*) FROM unnest(w.hits) AS h WHERE h > now() - v_window) < p_max;
        IF FOUND THEN RETURN NULL; END IF;
        SELECT ceil(extract(epoch FROM min(h) + v_window - now()))::BIGINT INTO v_retry_after
        FROM bench_previous.rate_limit_windows AS w, unnest(w.hits) AS h WHERE w.key = p_key AND h > now() - v_window;
        RETURN greatest(coalesce(v_retry_after, 1), 1);
    END $$;
    -- Today's function on a logged copy of today's table: what UNLOGGED saves.
    CREATE TABLE IF NOT EXISTS bench_previous.rate_limits_logged (key TEXT PRIMARY KEY, tat TIMESTAMPTZ NOT NULL);
    CREATE OR REPLACE FUNCTION bench_previous.rate_limit_hit_logged(p_key TEXT, p_window_seconds FLOAT8, p_max BIGINT)
    RETURNS BIGINT LANGUAGE plpgsql AS $$
    DECLARE v_interval INTERVAL := make_interval(secs => p_window_seconds / greatest(p_max, 1));
            v_tolerance INTERVAL := make_interval(secs => p_window_seconds) - make_interval(secs => p_window_seconds / greatest(p_max, 1));
    BEGIN
        INSERT INTO bench_previous.rate_limits_logged AS r (key, tat) VALUES (p_key, now() + v_interval)
        ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, now()) + v_interval
        WHERE greatest(r.tat, now()) - now() <= v_tolerance;
        RETURN CASE WHEN FOUND THEN NULL ELSE 1 END;
    END $$;";

/// How many keys `HITS` hits are spread over so that none passes `max`.
fn keys_for(max: i64) -> usize {
    HITS.div_ceil(max.max(1) as usize)
}

/// Mean µs per hit of `function`, `HITS` hits in a row over [`keys_for`]
/// keys in turn, each its own transaction (as each request is), and how many
/// were refused (0 unless the limiter is wrong).
async fn per_hit(client: &tokio_postgres::Client, function: &str, max: i64) -> (f64, usize) {
    let run = uuid::Uuid::new_v4();
    let keys: Vec<String> = (0..keys_for(max))
        .map(|k| format!("bench:{function}:{max}:{run}:{k}"))
        .collect();
    let sql = format!("SELECT {function}($1, 3600, $2)");
    let mut refused = 0;
    let started = Instant::now();
    for hit in 0..HITS {
        let retry_after: Option<i64> = client
            .query_typed(
                &sql,
                &[
                    (&keys[hit % keys.len()], tokio_postgres::types::Type::TEXT),
                    (&max, tokio_postgres::types::Type::INT8),
                ],
            )
            .await
            .expect("a hit")
            .first()
            .and_then(|row| row.get(0));
        refused += usize::from(retry_after.is_some());
    }
    (started.elapsed().as_secs_f64() * 1e6 / HITS as f64, refused)
}

pub async fn run(setup: &Setup) -> Value {
    let client = admin(setup).await;
    client
        .batch_execute(PREVIOUS)
        .await
        .expect("the previous limiter");
    let mut results = serde_json::Map::new();
    for max in [60_i64, 100_000] {
        let (today, today_refused) = per_hit(&client, "rate_limit_hit", max).await;
        let (logged, logged_refused) = per_hit(&client, "bench_previous.rate_limit_hit_logged", max).await;
        let (previous, previous_refused) = per_hit(&client, "bench_previous.rate_limit_hit", max).await;
        results.insert(
            format!("limit_{max}"),
            json!({
                "today_us": today, "today_logged_us": logged, "previous_us": previous,
                "keys": keys_for(max),
                "refused": today_refused + logged_refused + previous_refused,
            }),
        );
    }
    json!({"hits": HITS, "per_hit": results})
}
