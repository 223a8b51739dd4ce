//! The rate limiter: cost per hit at limits 60 and 100,000, today's GCRA on
//! one timestamp (UNLOGGED) next to the previous sliding window (an array of
//! every hit's time, in a logged table), both recreated here side by side.
//! Directly on Postgres (no proxy): what is measured is the database's work,
//! and whether a hit waits for a durable commit.

use std::time::{Duration, Instant};

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

/// Mean µs per hit of `function` on one key, `HITS` hits in a row, each its
/// own transaction (as each request is).
async fn per_hit(client: &tokio_postgres::Client, function: &str, max: i64) -> f64 {
    let key = format!("bench:{function}:{max}:{}", uuid::Uuid::new_v4());
    let sql = format!("SELECT {function}($1, 3600, $2)");
    let started = Instant::now();
    for _ in 0..HITS {
        client
            .query_typed(
                &sql,
                &[
                    (&key, tokio_postgres::types::Type::TEXT),
                    (&max, tokio_postgres::types::Type::INT8),
                ],
            )
            .await
            .expect("a hit");
    }
    started.elapsed().as_secs_f64() * 1e6 / HITS as f64
}

pub async fn run(setup: &Setup) -> Value {
    let client = admin(setup).await;
    client
        .batch_execute(PREVIOUS)
        .await
        .expect("the previous limiter");
    let mut results = serde_json::Map::new();
    for max in [60_i64, 100_000] {
        let today = per_hit(&client, "rate_limit_hit", max).await;
        let logged = per_hit(&client, "bench_previous.rate_limit_hit_logged", max).await;
        let previous = per_hit(&client, "bench_previous.rate_limit_hit", max).await;
        results.insert(
            format!("limit_{max}"),
            json!({"today_us": today, "today_logged_us": logged, "previous_us": previous}),
        );
    }
    let _ = Duration::ZERO;
    json!({"hits_per_key": HITS, "per_hit": results})
}
