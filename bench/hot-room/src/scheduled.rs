//! The scheduled jobs where the viral room and a long history make them big:
//! the reconciler's run over a room of `viewers` present (every one listed),
//! and the flusher's tick with many ended streams behind it. Each against the
//! previous design's function (migrations 0023 and 0012), recreated here in a
//! schema of its own from the migration files themselves. Directly on
//! Postgres as the owner, without the functions' statement timeout, so a
//! previous run that would be cut at 5 s shows how long it really takes.

use std::time::Instant;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::{Setup, admin, knob};

const STEADY_RUNS: usize = 3;
const FLUSH_TICKS: usize = 5;
/// The functions' statement_timeout (migration 0006): a run longer than
/// this is cancelled in production.
const STATEMENT_TIMEOUT_S: f64 = 5.0;

/// `CREATE … FUNCTION name(` up to its closing `$$;`, from a migration file,
/// created again as `bench_previous.name`.
fn previous(migration: &str, name: &str) -> String {
    let start = migration
        .find(&format!("FUNCTION {name}("))
        .unwrap_or_else(|| panic!("{name} is in its migration"));
    let end = start
        + migration[start..]
            .find("\n$$;")
            .unwrap_or_else(|| panic!("{name}'s body ends"))
        + "\n$$;".len();
    format!(
        "CREATE OR REPLACE FUNCTION bench_previous.{}",
        &migration[start + "FUNCTION ".len()..end]
    )
}

async fn seconds(client: &Client, sql: &str) -> f64 {
    let started = Instant::now();
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One run of `function` over the big room, every viewer listed.
fn sync_sql(function: &str) -> String {
    format!("SELECT {function}('bench-sched-big', clock_timestamp(), s, i, c, n) FROM bench_previous.listing")
}

pub async fn run(setup: &Setup) -> Value {
    let client = admin(setup).await;
    let ended = knob("HOT_ROOM_ENDED_STREAMS", 200_000);
    let viewers = setup.viewers;
    client
        .batch_execute("SET statement_timeout = 0; CREATE SCHEMA IF NOT EXISTS bench_previous")
        .await
        .expect("a schema for the previous design");
    for (migration, name) in [
        (
            include_str!("../../../migrations/0023_ends_take_locks_in_the_webhooks_order.sql"),
            "live_sync_sessions",
        ),
        (
            include_str!("../../../migrations/0012_stage_reactions_viewers_stats.sql"),
            "live_flush_viewer_counts",
        ),
    ] {
        client
            .batch_execute(&previous(migration, name))
            .await
            .unwrap_or_else(|e| panic!("the previous {name}: {e}"));
    }

    // The big room and its listing: every viewer present, as LiveKit lists them.
    client
        .batch_execute(&format!(
            "INSERT INTO live_streams (id, streamer_id, title) VALUES ('bench-sched-big', gen_random_uuid(), 'big');
             CREATE TABLE bench_previous.listing AS
             SELECT array_agg(sid ORDER BY sid) s, array_agg(identity ORDER BY sid) i,
                    array_agg(true ORDER BY sid) c, array_agg(''::text ORDER BY sid) n
             FROM (SELECT 'PA_sched_' || g AS sid, gen_random_uuid()::text AS identity
                   FROM generate_series(1, {viewers}) g) listed;"
        ))
        .await
        .expect("the big room");
    // Every webhook of the room lost (an outage during the flash crowd): the
    // run inserts every session.
    let repair_s = seconds(&client, &sync_sql("live_sync_sessions")).await;
    let count: i32 = client
        .query_one("SELECT live_viewer_count('bench-sched-big')", &[])
        .await
        .expect("the count")
        .get(0);
    let mut today = Vec::new();
    let mut before = Vec::new();
    for _ in 0..STEADY_RUNS {
        today.push(seconds(&client, &sync_sql("live_sync_sessions")).await);
        before.push(seconds(&client, &sync_sql("bench_previous.live_sync_sessions")).await);
    }
    let (steady_today, steady_previous) = (median(today), median(before));

    // A long history: `ended` streams, each with its closed shards, and 20
    // live rooms whose counts move between ticks. On a connection of its own,
    // the streams analysed before their shards go in: a session that has
    // checked a foreign key into a small live_streams keeps that plan (a
    // sequential scan), and 3.2 million checks of it would take hours.
    let history = admin(setup).await;
    history
        .batch_execute(&format!(
            "INSERT INTO live_streams (id, streamer_id, title, is_live, ended_at, room_closed_at, created_at)
             SELECT 'bench-ended-' || g, gen_random_uuid(), 'ended', false, now(), now(), now() - interval '1 hour'
             FROM generate_series(1, {ended}) g;
             ANALYZE live_streams"
        ))
        .await
        .expect("a long history of streams");
    let history = admin(setup).await;
    history
        .batch_execute(&format!(
            "INSERT INTO live_viewer_counts (room_name, shard, viewers, closed)
             SELECT 'bench-ended-' || g, s, 0, true FROM generate_series(1, {ended}) g, generate_series(0, 15) s;
             INSERT INTO live_streams (id, streamer_id, title)
             SELECT 'bench-sched-live-' || g, gen_random_uuid(), 'live' FROM generate_series(1, 20) g;
             INSERT INTO live_viewer_counts (room_name, shard, viewers)
             SELECT 'bench-sched-live-' || g, s, 1 FROM generate_series(1, 20) g, generate_series(0, 15) s;
             ANALYZE live_streams; ANALYZE live_viewer_counts;"
        ))
        .await
        .expect("a long history of shards");
    drop(history);
    let tick = |function: &'static str| {
        let client = &client;
        async move {
            let mut ticks = Vec::new();
            for _ in 0..FLUSH_TICKS {
                // Every live room's count changed, and its copy is a second old.
                client
                    .batch_execute(
                        "UPDATE live_viewer_counts SET viewers = viewers + 1 WHERE room_name LIKE 'bench-sched-live-%';
                         UPDATE live_streams SET viewer_count_written_at = now() - interval '2 seconds'
                         WHERE id LIKE 'bench-sched-live-%'",
                    )
                    .await
                    .expect("counts move");
                ticks.push(seconds(client, &format!("SELECT count(*) FROM {function}()")).await);
            }
            median(ticks)
        }
    };
    let flush_today = tick("live_flush_viewer_counts").await;
    let flush_previous = tick("bench_previous.live_flush_viewer_counts").await;

    json!({
        "viewers": viewers,
        "count_after_repair": count,
        "repair_s": repair_s,
        "steady_runs": STEADY_RUNS,
        "steady_today_s": steady_today,
        "steady_previous_s": steady_previous,
        "statement_timeout_s": STATEMENT_TIMEOUT_S,
        "ended_streams": ended,
        "flush_ticks": FLUSH_TICKS,
        "flush_today_s": flush_today,
        "flush_previous_s": flush_previous,
    })
}
