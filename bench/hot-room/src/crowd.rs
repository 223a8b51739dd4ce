//! The flash crowd: a minute of joins into one room, a minute of leaves, as
//! LiveKit's signed webhooks (some joins never followed by a leave, which the
//! reconciler's run against LiveKit repairs); then the previous design's
//! transaction replayed next to today's at the same audience, for the ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use lambda_http::{Body, Request};
use serde_json::{Value, json};
use sha2::Digest;
use shared::http::Endpoint;
use uuid::Uuid;

use crate::fleet::{self, Outcome};
use crate::{Setup, admin};

/// The template's WebhookConcurrency.
fn webhook_containers() -> usize {
    fleet::template_default("WebhookConcurrency")
}

pub const ROOM: &str = "hot-room";

fn signed(setup: &Setup, body: &str) -> String {
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body.as_bytes()));
    livekit_api::access_token::AccessToken::with_api_key(&setup.livekit_key, &setup.livekit_secret)
        .with_sha256(&digest)
        .to_jwt()
        .expect("sign a webhook")
}

fn event(id: &str, name: &str, room_sid: &str, identity: &str, sid: &str) -> String {
    json!({
        "id": id, "event": name,
        "room": {"name": ROOM, "sid": room_sid},
        "participant": {"sid": sid, "identity": identity, "state": "ACTIVE",
                        "permission": {"canSubscribe": true, "canPublishData": true}},
        "createdAt": chrono::Utc::now().timestamp().to_string(),
    })
    .to_string()
}

/// A webhook as API Gateway hands it to the function.
struct Webhook {
    body: String,
    authorization: String,
}

fn request(webhook: &Webhook) -> Request {
    let mut request = Request::new(Body::Text(webhook.body.clone()));
    *request.method_mut() = lambda_http::http::Method::POST;
    request.headers_mut().insert(
        "authorization",
        webhook.authorization.parse().expect("a header value"),
    );
    request
}

/// Joins (and LiveKit's habits) for phase one, leaves for phase two, with
/// the count each phase must leave.
struct Plan {
    joins: Vec<(Duration, Webhook)>,
    leaves: Vec<(Duration, Webhook)>,
    peak: i64,
    duplicates: usize,
    reordered: usize,
    aborted: usize,
    /// Joins whose leave never comes (a webhook LiveKit gave up on): the
    /// count the leaves leave, until the reconciler's run.
    unleft: usize,
}

fn plan(setup: &Setup, room_sid: &str, host: Uuid) -> Plan {
    let n = setup.viewers;
    let window = setup.window;
    let mut joins = Vec::with_capacity(n + n / 50);
    let mut leaves = Vec::with_capacity(n + n / 50);
    // The host is in the room first and stays, not counted: a room whose
    // host never came would be ended by the reconciler's run below (after
    // HOST_RETURN_SECONDS), an end's write of 0 that no second waits for.
    let host_join = event(
        "EV_join_host",
        "participant_joined",
        room_sid,
        &host.to_string(),
        "PA_host",
    );
    joins.push((
        Duration::ZERO,
        Webhook {
            authorization: signed(setup, &host_join),
            body: host_join,
        },
    ));
    let (mut duplicates, mut reordered, mut aborted, mut unleft) = (0, 0, 0, 0);
    let at = |i: usize, of: usize| window.mul_f64(i as f64 / of as f64);
    // Leaves in another order than joins: a stride through the viewers.
    let stride = 7919 % n.max(1);
    for i in 0..n {
        let identity = Uuid::new_v4().to_string();
        let sid = format!("PA_{i}");
        let join = event(
            &format!("EV_join_{i}"),
            "participant_joined",
            room_sid,
            &identity,
            &sid,
        );
        let leave_name = if i % 50 == 7 {
            aborted += 1;
            "participant_connection_aborted"
        } else {
            "participant_left"
        };
        let leave = event(&format!("EV_leave_{i}"), leave_name, room_sid, &identity, &sid);
        let j = at(i, n);
        let wrap = |body: String| Webhook {
            authorization: signed(setup, &body),
            body,
        };
        if i % 200 == 3 {
            // The leave overtakes the join: this session never counts.
            reordered += 1;
            joins.push((j, wrap(leave)));
            joins.push((j + Duration::from_millis(1), wrap(join)));
            continue;
        }
        if i % 100 == 11 {
            duplicates += 1;
            joins.push((j + Duration::from_millis(50), wrap(join.clone())));
        }
        joins.push((j, wrap(join)));
        if i % 100 == 29 {
            unleft += 1;
            continue;
        }
        let l = at((i * stride.max(1)) % n, n);
        if i % 100 == 13 {
            duplicates += 1;
            leaves.push((l + Duration::from_millis(50), wrap(leave.clone())));
        }
        leaves.push((l, wrap(leave)));
    }
    joins.sort_by_key(|(t, _)| *t);
    leaves.sort_by_key(|(t, _)| *t);
    Plan {
        joins,
        leaves,
        peak: (n - reordered) as i64,
        duplicates,
        reordered,
        aborted,
        unleft,
    }
}

/// Samples the functions' Postgres sessions until stopped; returns the peak.
fn sample_sessions(setup: &Setup, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let url = setup.admin_url.clone();
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("sampler");
        tokio::spawn(connection);
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'live-backend'",
                    &[],
                )
                .await
                .map(|row| row.get(0))
                .unwrap_or(0);
            peak = peak.max(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    })
}

/// The scheduled flusher as the template runs it: an invocation due every
/// minute from the burst's start (a 60 s timeout), each flushing for
/// `flush_span` with its cut-off a second before its deadline, so the
/// copy's lag at the turn of a minute, where one invocation's last tick and
/// the next one's first are two seconds apart, is in the figures (the burst's
/// minutes end there: the worst phase). The scheduler's own delivery delay
/// is not added. Aborted when the phase is done.
fn run_flusher(state: Arc<shared::AppState>) -> tokio::task::JoinHandle<()> {
    use shared::scheduled::flush::{flush_span, flush_until};
    const MINUTE: Duration = Duration::from_secs(60);
    tokio::spawn(async move {
        let mut due = Instant::now();
        loop {
            let started = Instant::now();
            let span = flush_span(Some(MINUTE), Some(started - due));
            let cut_off = started + MINUTE - Duration::from_secs(1);
            flush_until(&state, started + span, Some(cut_off)).await;
            due += MINUTE;
            tokio::time::sleep_until(due.into()).await;
        }
    })
}

/// Polls until the exact count and its Realtime copy are both `expected`;
/// returns how long after `since` each got there (None if not within 30 s).
async fn settle(setup: &Setup, expected: i64, since: Instant) -> (Option<f64>, Option<f64>) {
    let db = admin(setup).await;
    let (mut exact, mut copy) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (exact.is_none() || copy.is_none()) && Instant::now() < deadline {
        let row = db
            .query_one(
                "SELECT live_viewer_count($1)::int8, viewer_count::int8 FROM live_streams WHERE id = $1",
                &[&ROOM],
            )
            .await
            .expect("read the counts");
        let (now_exact, now_copy): (i64, i64) = (row.get(0), row.get(1));
        if exact.is_none() && now_exact == expected {
            exact = Some(since.elapsed().as_secs_f64());
        }
        if copy.is_none() && now_copy == expected {
            copy = Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (exact, copy)
}

pub async fn run(setup: &Setup) -> Value {
    let db = admin(setup).await;
    let host = Uuid::new_v4();
    let starter = fleet::container(setup, &[]);
    let started = shared::http::handle(
        &starter,
        {
            let mut r = Request::new(Body::Text(
                json!({"title": "Viral", "roomName": ROOM}).to_string(),
            ));
            *r.method_mut() = lambda_http::http::Method::POST;
            let bearer = format!("Bearer {}", crate::supabase_token(&setup.supabase_secret, host));
            r.headers_mut()
                .insert("authorization", bearer.parse().expect("header"));
            r
        },
        &shared::handlers::start_stream,
    )
    .await;
    assert_eq!(started.status(), 201, "the viral stream starts");
    let room_sid: String = db
        .query_one("SELECT room_sid FROM live_streams WHERE id = $1", &[&ROOM])
        .await
        .expect("the stream")
        .get::<_, Option<String>>(0)
        .unwrap_or_default();
    // Every write of the Realtime copy, to check it stays at one a second:
    // `written` is the time the writer stamped (what the next writer's
    // one-second rule compares), `at` the time this trigger ran, later by
    // however long the writing backend waited for a CPU in between.
    db.batch_execute(
        "DROP TABLE IF EXISTS bench_copy_writes;
         CREATE TABLE bench_copy_writes (
             at timestamptz NOT NULL DEFAULT clock_timestamp(), written timestamptz, count int);
         CREATE OR REPLACE FUNCTION bench_log_copy_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO bench_copy_writes (written, count) VALUES (NEW.viewer_count_written_at, NEW.viewer_count);
             RETURN NEW;
         END $$;
         DROP TRIGGER IF EXISTS bench_log_copy_write ON live_streams;
         CREATE TRIGGER bench_log_copy_write AFTER UPDATE OF viewer_count ON live_streams
         FOR EACH ROW WHEN (NEW.id = 'hot-room' AND OLD.viewer_count IS DISTINCT FROM NEW.viewer_count)
         EXECUTE FUNCTION bench_log_copy_write();
         GRANT INSERT ON bench_copy_writes TO live_api;",
    )
    .await
    .expect("log the copy's writes");

    let plan = plan(setup, &room_sid, host);
    let containers = fleet::containers(setup, "WebhookConcurrency");
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = sample_sessions(setup, stop.clone());
    let flusher = run_flusher(Arc::new(fleet::container(setup, &[])));
    let deliver = |state: Arc<shared::AppState>, webhook: Webhook| async move {
        shared::handlers::LiveKitWebhook
            .respond(&state, request(&webhook))
            .await
            .status()
            .as_u16()
    };

    let burst_started = chrono::Utc::now();
    let join_events = plan.joins.len();
    let joined = fleet::run(containers.clone(), plan.joins, deliver).await;
    let joins_done = Instant::now();
    let (peak_exact_s, peak_copy_s) = settle(setup, plan.peak, joins_done).await;
    let leave_events = plan.leaves.len();
    let left = fleet::run(containers, plan.leaves, deliver).await;
    let leaves_done = Instant::now();
    let unleft = plan.unleft as i64;
    let (end_exact_s, end_copy_s) = settle(setup, unleft, leaves_done).await;
    // The next scheduled run finds nobody in LiveKit's room (no participant
    // of this phase ever connected) and closes the sessions left open.
    let reconciler = fleet::container(setup, &[]);
    let repair_started = Instant::now();
    let repair = shared::scheduled::reconcile::reconcile(&reconciler, Duration::from_secs(120)).await;
    let repair_run_s = repair_started.elapsed().as_secs_f64();
    let (repaired_exact_s, repaired_copy_s) = settle(setup, 0, repair_started).await;
    stop.store(true, Ordering::Relaxed);
    flusher.abort();
    let peak_sessions = sessions.await.unwrap_or(0);

    type Stamp = chrono::DateTime<chrono::Utc>;
    let writes: Vec<(Stamp, Stamp, i32)> = db
        .query(
            "SELECT written, at, count FROM bench_copy_writes WHERE at >= $1 ORDER BY written",
            &[&burst_started],
        )
        .await
        .expect("the copy's writes")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let min_gap_ms = |stamps: Vec<Stamp>| {
        stamps
            .windows(2)
            .map(|w| (w[1] - w[0]).num_milliseconds())
            .min()
            .unwrap_or(0)
    };
    let min_written_gap_ms = min_gap_ms(writes.iter().map(|w| w.0).collect());
    let mut logged: Vec<Stamp> = writes.iter().map(|w| w.1).collect();
    logged.sort();
    let min_logged_gap_ms = min_gap_ms(logged);
    let all: Vec<Outcome> = joined.into_iter().chain(left).collect();
    let non_2xx = all.iter().filter(|o| !(200..300).contains(&o.status)).count();
    let comparison = compare_designs(setup).await;
    json!({
        "joins": {"events": join_events, "webhooks": fleet::summary(&all[..join_events.min(all.len())])},
        "leaves": {"events": leave_events, "webhooks": fleet::summary(&all[join_events.min(all.len())..])},
        "all": fleet::summary(&all),
        "non_2xx": non_2xx,
        "containers": webhook_containers(),
        "duplicates": plan.duplicates,
        "reordered": plan.reordered,
        "aborted": plan.aborted,
        "unleft": plan.unleft,
        "peak_expected": plan.peak,
        "peak_exact_after_s": peak_exact_s,
        "peak_copy_after_s": peak_copy_s,
        "end_exact_after_s": end_exact_s,
        "end_copy_after_s": end_copy_s,
        "repair": {
            "ok": repair.as_ref().map(|r| r.failed == 0).unwrap_or(false),
            "run_s": repair_run_s,
            "exact_after_s": repaired_exact_s,
            "copy_after_s": repaired_copy_s,
        },
        "copy_writes": writes.len(),
        "copy_min_gap_ms": min_written_gap_ms,
        "copy_min_logged_gap_ms": min_logged_gap_ms,
        "copy_last": writes.last().map(|w| w.2),
        "peak_postgres_sessions": peak_sessions,
        // What the template allows these functions: the webhook's reserved
        // containers, the flusher's one, the start's container and the
        // reconciler's, each with the template's pool.
        "session_budget": (webhook_containers() + 3) * fleet::template_default("DatabasePoolSize"),
        "designs": comparison,
    })
}

/// Today's one-statement join next to the previous design's transaction
/// (lock the stream row, upsert the session, recount the room's distinct
/// present identities, rewrite the stream), each in a room that already has
/// `present` viewers, closed loop from the same number of containers for the
/// same time: joins per second and latency.
async fn compare_designs(setup: &Setup) -> Value {
    let present = setup.viewers.min(45_000) as i64;
    let seconds = Duration::from_secs(10);
    let db = admin(setup).await;
    let host = Uuid::new_v4();
    for (room, design) in [("hot-room-previous", "previous"), ("hot-room-today", "today")] {
        db.execute(
            "INSERT INTO live_streams (id, streamer_id, title) VALUES ($1, $2, $3)",
            &[&room, &host, &design],
        )
        .await
        .expect("a room for the comparison");
        db.execute(
            "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined)
             SELECT $1, 'PA_pre_' || g, 'viewer-' || g, true, true FROM generate_series(1, $2::int8) g",
            &[&room, &present],
        )
        .await
        .expect("prefill the sessions");
    }
    db.batch_execute(&format!(
        "UPDATE live_streams SET viewer_count = {present} WHERE id = 'hot-room-previous';
         INSERT INTO live_presence (room_name, identity, sessions)
         SELECT 'hot-room-today', identity, 1 FROM live_participant_sessions WHERE room_name = 'hot-room-today';
         INSERT INTO live_viewer_counts (room_name, shard, viewers)
         SELECT 'hot-room-today', hashtext(identity) & 15, count(*) FROM live_presence
         WHERE room_name = 'hot-room-today' GROUP BY 2;
         ANALYZE live_participant_sessions; ANALYZE live_presence;"
    ))
    .await
    .expect("prefill today's presence");

    let previous = closed_loop(setup, seconds, |client, n| async move {
        let room = "hot-room-previous";
        let (event, sid, identity) = (format!("EV_prev_{n}"), format!("PA_prev_{n}"), format!("new-{n}"));
        // As tokio-postgres's transaction() does it: BEGIN and COMMIT are round trips too.
        client.batch_execute("BEGIN").await?;
        let tx = &client;
        tx.query_typed(
            "INSERT INTO live_webhook_events (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id",
            &[(&event, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
        tx.query_typed(
            "SELECT streamer_id FROM live_streams WHERE id = $1 FOR UPDATE",
            &[(&room, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
        tx.query_typed(
            "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined)
             VALUES ($1, $2, $3, true, true)
             ON CONFLICT (room_name, sid) DO UPDATE SET joined = true, updated_at = now()",
            &[
                (&room, tokio_postgres::types::Type::TEXT),
                (&sid, tokio_postgres::types::Type::TEXT),
                (&identity, tokio_postgres::types::Type::TEXT),
            ],
        )
        .await?;
        tx.query_typed(
            "UPDATE live_streams s SET viewer_count = c.n
             FROM (SELECT count(DISTINCT identity)::int AS n FROM live_participant_sessions
                   WHERE room_name = $1 AND counted AND joined AND left_at IS NULL) c
             WHERE s.id = $1 AND s.viewer_count <> c.n",
            &[(&room, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
        client.batch_execute("COMMIT").await
    })
    .await;
    let today = closed_loop(setup, seconds, |client, n| async move {
        let (event, sid, identity) = (format!("EV_today_{n}"), format!("PA_today_{n}"), format!("new-{n}"));
        client
            .query_typed(
                "SELECT outcome FROM live_participant_event($1, 'hot-room-today', '', 'join', $2, $3, NULL, false, '', 60, NULL)",
                &[
                    (&event, tokio_postgres::types::Type::TEXT),
                    (&sid, tokio_postgres::types::Type::TEXT),
                    (&identity, tokio_postgres::types::Type::TEXT),
                ],
            )
            .await
            .map(drop)
    })
    .await;
    let ratio =
        today["joins_per_s"].as_f64().unwrap_or(0.0) / previous["joins_per_s"].as_f64().unwrap_or(f64::NAN);
    // Every join timed was applied: each room counts its viewers and the joins.
    let counted = |sql: &'static str| {
        let db = &db;
        async move {
            db.query_one(sql, &[])
                .await
                .expect("a room's count")
                .get::<_, i64>(0)
        }
    };
    let previous_count =
        counted("SELECT viewer_count::int8 FROM live_streams WHERE id = 'hot-room-previous'").await;
    let today_count = counted("SELECT live_viewer_count('hot-room-today')::int8").await;
    let applied = |design: &Value, count: i64| {
        let expected = present + design["joins"].as_i64().unwrap_or(-1);
        json!({"count": count, "expected": expected, "ok": count == expected})
    };
    json!({
        "present": present, "seconds": seconds.as_secs(), "previous": previous, "today": today,
        "throughput_ratio": ratio,
        "previous_applied": applied(&previous, previous_count),
        "today_applied": applied(&today, today_count),
    })
}

/// `containers` clients as `live_api` through the proxy, each running `join`
/// back to back for `seconds`.
async fn closed_loop<F, Fut>(setup: &Setup, seconds: Duration, join: F) -> Value
where
    F: Fn(Arc<tokio_postgres::Client>, i64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send,
{
    let counter = Arc::new(AtomicI64::new(0));
    let until = Instant::now() + seconds;
    let tasks: Vec<_> = (0..webhook_containers())
        .map(|_| {
            let (url, counter, join) = (setup.api_url.clone(), counter.clone(), join.clone());
            tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("a container's connection");
                tokio::spawn(connection);
                let client = Arc::new(client);
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                while Instant::now() < until {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    match join(client.clone(), n).await {
                        Ok(()) => latencies.push(started.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((mine, failed)) = task.await {
            latencies.extend(mine);
            errors += failed;
        }
    }
    let joins = latencies.len();
    json!({
        "joins": joins,
        "errors": errors,
        "joins_per_s": joins as f64 / seconds.as_secs_f64(),
        "p50_us": fleet::percentile_us(&mut latencies, 0.50),
        "p99_us": fleet::percentile_us(&mut latencies, 0.99),
    })
}
