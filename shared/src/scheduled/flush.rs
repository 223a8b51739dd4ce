//! The viewer-count flusher. Counts live in shards (see [`crate::store::viewers`]);
//! `live_streams.viewer_count`, which Supabase Realtime sends to subscribers,
//! is a copy written at most once a second per room. An event writes it when
//! the last copy is a second old; the events of a burst's last second find it
//! fresh and do not. This job writes those trailing copies: started every
//! minute by the scheduler, it flushes every second until its invocation is
//! nearly over, so a count reaches `live_streams` within about two seconds of
//! its last change, bursts or not, and pushes each new count into its room.
//! It also sends the chat a batch holder left behind (see
//! [`crate::store::chat_broadcast`]) and the reactions the last taps only counted
//! (see [`crate::store::reactions`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::reactions::ReactionBroadcast;
use crate::store::viewers;

/// How often the copies are brought up to date.
pub const TICK: Duration = Duration::from_secs(1);

/// Rooms told at once (counts, chat, reactions). Each room's packet is its
/// own RoomService call, which LiveKit answers in milliseconds, or, slow or
/// down, after the call's timeout: one after another, a hundred live rooms
/// would stretch one tick past the invocation. A room's own chat batches
/// stay in order (its lease); rooms are independent.
const ROOMS_AT_ONCE: usize = 16;

/// How long each part of a tick waits for LiveKit once its Postgres work is
/// done. The rooms are taken from a random starting point, so that with
/// LiveKit slow the ones a tick does not reach are not the same every tick. A LiveKit that answers answers in milliseconds; one that hangs
/// would hold each wave of [`ROOMS_AT_ONCE`] rooms for a bounded call (up to
/// 6 s), and the next tick, with the copies Realtime sends, would wait for
/// every wave. What is not sent by then is the next tick's: a count's push
/// is lossy (the next write, or the reconciler's run, pushes again), a chat
/// batch's lease lapses with the budget and its messages stay unsent, and a
/// reactions packet stops in time to give its mark back.
const LIVEKIT_BUDGET: Duration = Duration::from_millis(1_500);

/// Runs a part's LiveKit work for at most [`LIVEKIT_BUDGET`] (and never past
/// the tick's own deadline), as a request with that deadline: leases and
/// connections taken inside know when it ends. False when it was stopped.
/// Boxed: the work's closures, inside this generic wrapper, leave a tick's
/// future otherwise not provably `Send` for whoever spawns it.
async fn within_livekit_budget(work: futures_util::future::BoxFuture<'_, ()>) -> bool {
    let budget = Instant::now() + LIVEKIT_BUDGET;
    let deadline = crate::store::db::request_deadline().map_or(budget, |tick| tick.min(budget));
    crate::store::db::until_cut_off(deadline, work).await.is_some()
}

/// One flush of every stale copy, each new count pushed into its room, the
/// chat any batch left unsent and the reactions the last taps only counted.
/// The three parts stand alone and run at once: a failing one (its query
/// refused, its table locked) holds back nothing else, and with LiveKit slow
/// a tick lasts as long as its slowest part's calls, not all three parts'
/// one after another (no part holds a connection across a LiveKit call, so
/// they share the pool). Each failure is logged with its part; the first is
/// returned, which makes the tick a failed one. Returns the rooms whose
/// count was written.
pub async fn flush_once(state: &AppState) -> Result<i32, ApiError> {
    let (counts, chat, reactions) =
        tokio::join!(flush_counts(state), flush_chat(state), flush_reactions(state));
    for (part, failure) in [
        ("viewer counts", counts.as_ref().err()),
        ("chat", chat.as_ref().err()),
        ("reactions", reactions.as_ref().err()),
    ] {
        if let Some(error) = failure {
            tracing::warn!(part, %error, "this part of the flush failed; the next tick retries it");
        }
    }
    let written = counts?;
    chat?;
    reactions?;
    Ok(written)
}

/// Copies every stale count into `live_streams` and pushes each into its room.
async fn flush_counts(state: &AppState) -> Result<i32, ApiError> {
    let (written, counted_at) = {
        let client = state.db.get().await?;
        (viewers::flush(&client).await?, chrono::Utc::now())
    };
    let rooms = written.len();
    let pushes =
        futures_util::stream::iter(written).for_each_concurrent(ROOMS_AT_ONCE, |(room, count)| async move {
            if let Err(error) = state.livekit.push_viewer_count(&room, count, counted_at).await {
                tracing::warn!(%room, %error, "viewer count not pushed into the room");
            }
        });
    if !within_livekit_budget(Box::pin(pushes)).await {
        tracing::warn!(
            rooms,
            "LiveKit too slow: counts written, some not pushed this tick"
        );
    }
    Ok(rooms as i32)
}

/// Sends the chat holders left behind in every live room.
async fn flush_chat(state: &AppState) -> Result<(), ApiError> {
    let rooms = {
        let client = state.db.get().await?;
        crate::store::chat::rooms_with_stale_messages(&client).await?
    };
    let room_count = rooms.len();
    let sends = futures_util::stream::iter(super::from_random_start(rooms)).for_each_concurrent(
        ROOMS_AT_ONCE,
        |room| async move {
            crate::store::chat_broadcast::send_batches(state, &room, None).await;
        },
    );
    if !within_livekit_budget(Box::pin(sends)).await {
        tracing::warn!(
            rooms = room_count,
            "LiveKit too slow: chat left unsent goes with a later tick"
        );
    }
    Ok(())
}

/// Sends each live room the reactions counted since its last packet.
async fn flush_reactions(state: &AppState) -> Result<(), ApiError> {
    let due = {
        let client = state.db.get().await?;
        crate::store::reactions::flush(&client).await?
    };
    // Taking them marked every room told. A send that fails gives its own
    // mark back, but the rooms LiveKit was too slow to reach within the
    // budget, and the give-backs the budget cut short, are given back below
    // in one statement: a mark kept for a packet never sent leaves the room
    // due no more, and its last taps would never be shown.
    let told: Vec<AtomicBool> = due.iter().map(|_| AtomicBool::new(false)).collect();
    let rooms = due.len();
    let sends = futures_util::stream::iter(super::from_random_start((0..rooms).collect()))
        .for_each_concurrent(ROOMS_AT_ONCE, |room: usize| {
            let (due, told) = (&due, &told);
            async move {
                if crate::store::reactions::send(state, &due[room]).await {
                    told[room].store(true, Ordering::Relaxed);
                }
            }
        });
    if !within_livekit_budget(Box::pin(sends)).await {
        tracing::warn!(
            rooms,
            "LiveKit too slow: reactions left unsent go with a later tick"
        );
    }
    let untold: Vec<&ReactionBroadcast> = due
        .iter()
        .zip(&told)
        .filter(|(_, told)| !told.load(Ordering::Relaxed))
        .map(|(broadcast, _)| broadcast)
        .collect();
    if !untold.is_empty() {
        let client = state.db.get().await?;
        crate::store::reactions::all_unsent(&client, untold).await?;
    }
    Ok(())
}

/// What one invocation's flushes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushReport {
    /// Rooms whose count was written, over all ticks.
    pub written: i64,
    pub ticks: u32,
    pub failed_ticks: u32,
    /// The last tick was still running at the cut-off and was stopped there.
    pub stopped_at_cut_off: bool,
}

impl FlushReport {
    /// Not one flush got through: the invocation reports an error, which is
    /// what Lambda's `Errors` metric (and the template's alarm) counts. A tick
    /// that failed among good ones is logged only; the next one repairs it.
    pub fn all_failed(&self) -> bool {
        self.ticks > 0 && self.failed_ticks == self.ticks
    }
}

/// Flushes every [`TICK`], the ticks placed so that the last one falls at
/// `until` (within a tenth of a second), and at least once: the last tick of a
/// minute's invocation falls 58 s into it, so the next minute's first follows
/// about two seconds later, which is what bounds how far the copies lag at
/// the turn of the minute; and no tick starts after `until`, which an
/// invocation that started late sets to 59 s past its scheduled time, before
/// the next one is due. A span that is not a whole number of ticks delays
/// the first tick instead. An invocation with little time left (a short
/// local timeout) still starts one pass. A
/// failed flush is logged and the next tick tries again. A tick still
/// running at `cut_off` (LiveKit slow for many rooms) is stopped there and
/// counted as failed, so the invocation ends before Lambda's timeout does:
/// the packets it had not sent are lost like any failed one, and the next
/// invocation's ticks go on writing the counts.
pub async fn flush_until(state: &AppState, until: Instant, cut_off: Option<Instant>) -> FlushReport {
    let mut report = FlushReport::default();
    let now = Instant::now();
    let whole_ticks = until.checked_duration_since(now).map_or(0, |left| {
        ((left + TICK_SLACK).as_nanos() / TICK.as_nanos()) as u32
    });
    let first = (until.checked_sub(TICK * whole_ticks).unwrap_or(now)).max(now);
    let mut ticks = tokio::time::interval_at(first.into(), TICK);
    // A tick that overran skips the times it missed, so every tick stays on
    // the schedule that ends at `until`.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        report.ticks += 1;
        // Under the cut-off as a request's deadline, so a statement still
        // running when the tick is stopped is cancelled, not handed to the
        // next invocation on the pooled connection.
        let flushed = crate::store::db::invocation_until(cut_off, flush_once(state)).await;
        match flushed {
            Some(Ok(rooms)) => report.written += i64::from(rooms),
            // flush_once logged what failed.
            Some(Err(_)) => report.failed_ticks += 1,
            None => {
                tracing::warn!("a flush still running at the invocation's end was stopped");
                report.failed_ticks += 1;
                report.stopped_at_cut_off = true;
                return report;
            }
        }
        let passed = Instant::now().saturating_duration_since(first);
        let next_due = first + TICK * (passed.as_nanos() / TICK.as_nanos() + 1) as u32;
        if next_due > until + TICK_SLACK {
            return report;
        }
    }
}

/// How far past `until` the last tick may fall: the span is measured a
/// moment before the ticks start, and a whole number of ticks is meant.
const TICK_SLACK: Duration = Duration::from_millis(100);

/// How long after its scheduled time an invocation stops flushing: just
/// before the next minute's starts.
const SCHEDULED_SPAN: Duration = Duration::from_secs(59);

/// How long an invocation flushes from now: until two seconds before its
/// deadline, and no later than 59 s after its scheduled time.
/// An invocation that started late (a cold start, a retry after the previous
/// one ran over) so still ends before the next minute's is due; ended by its
/// own deadline alone, each late start would make the next one later, until
/// a minute's event aged past its 60 s and was dropped.
pub fn flush_span(remaining: Option<Duration>, since_scheduled: Option<Duration>) -> Duration {
    let by_deadline = remaining
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(2));
    match since_scheduled {
        Some(since) => by_deadline.min(SCHEDULED_SPAN.saturating_sub(since)),
        None => by_deadline,
    }
}

/// How long ago the event's schedule fired: `scheduledTime` (the template's
/// input, `<aws.scheduler.scheduled-time>`) or an EventBridge event's `time`.
fn since_scheduled(event: &serde_json::Value) -> Option<Duration> {
    let at = event
        .get("scheduledTime")
        .or_else(|| event.get("time"))?
        .as_str()?;
    let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
    // A time a little ahead of this clock is now.
    Some(
        (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .to_std()
            .unwrap_or_default(),
    )
}

/// Runs the scheduled function: each invocation flushes for [`flush_span`]
/// (the template gives it 60 s, started every minute), and stops a tick
/// still running one second before its deadline.
pub async fn serve() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};
    crate::logging::init();
    let state = crate::http::LazyState::default();
    state.get().await.ok();
    let state = &state;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let app = state.get().await.map_err(lambda_http::Error::from)?;
            // No usable deadline (cargo lambda watch): flush once, whole.
            let remaining = crate::http::time_to_deadline(&event.context);
            let now = Instant::now();
            let until = now + flush_span(remaining, since_scheduled(&event.payload));
            let cut_off = remaining.map(|remaining| now + remaining.saturating_sub(Duration::from_secs(1)));
            let report = flush_until(app, until, cut_off).await;
            if report.all_failed() {
                tracing::error!(?report, "every flush of this invocation failed");
                return Err(lambda_http::Error::from(format!(
                    "every flush of this invocation failed ({} of {})",
                    report.failed_ticks, report.ticks
                )));
            }
            if report.written > 0 || report.failed_ticks > 0 {
                tracing::info!(?report, "flushed viewer counts");
            }
            Ok::<_, lambda_http::Error>(report)
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_invocation_ends_before_the_next_minutes_is_due() {
        // On time: the deadline and the schedule agree.
        assert_eq!(flush_span(Some(60 * SECOND), Some(Duration::ZERO)), 58 * SECOND);
        // Started 20 s late: ends 59 s after its scheduled time, not 58 s
        // after it started.
        assert_eq!(flush_span(Some(60 * SECOND), Some(20 * SECOND)), 39 * SECOND);
        // An event older than a minute (a local invoke of the sample event):
        // one flush.
        assert_eq!(flush_span(Some(60 * SECOND), Some(600 * SECOND)), Duration::ZERO);
        // No scheduled time, or no deadline (cargo lambda watch).
        assert_eq!(flush_span(Some(60 * SECOND), None), 58 * SECOND);
        assert_eq!(flush_span(None, Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn the_scheduled_time_is_read_from_the_input_or_the_event() {
        let scheduled = (chrono::Utc::now() - chrono::Duration::seconds(30)).to_rfc3339();
        for event in [
            serde_json::json!({ "scheduledTime": scheduled }),
            serde_json::json!({ "time": scheduled, "detail": {} }),
        ] {
            let since = since_scheduled(&event).unwrap();
            assert!((29 * SECOND..=90 * SECOND).contains(&since), "{since:?}");
        }
        assert_eq!(since_scheduled(&serde_json::json!({})), None);
        let ahead = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        assert_eq!(
            since_scheduled(&serde_json::json!({ "scheduledTime": ahead })),
            Some(Duration::ZERO)
        );
        assert_eq!(
            since_scheduled(&serde_json::json!({ "scheduledTime": "soon" })),
            None
        );
    }
}
