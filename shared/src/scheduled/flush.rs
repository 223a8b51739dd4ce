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

use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::viewers;

/// How often the copies are brought up to date.
pub const TICK: Duration = Duration::from_secs(1);

/// One flush of every stale copy, each new count pushed into its room, and
/// the chat any batch left unsent. Returns the rooms whose count was written.
pub async fn flush_once(state: &AppState) -> Result<i32, ApiError> {
    let written = {
        let client = state.db.get().await?;
        viewers::flush(&client).await?
    };
    for (room, count) in &written {
        if let Err(error) = state.livekit.push_viewer_count(room, *count).await {
            tracing::warn!(%room, %error, "viewer count not pushed into the room");
        }
    }
    crate::store::chat_broadcast::send_stale(state).await?;
    let reactions = {
        let client = state.db.get().await?;
        crate::store::reactions::flush(&client).await?
    };
    for due in &reactions {
        let sent = state
            .livekit
            .send_lossy(
                &due.room_name,
                crate::store::reactions::REACTIONS_TOPIC,
                due.payload()?,
            )
            .await;
        if let Err(error) = sent {
            tracing::warn!(room = %due.room_name, %error, "reactions not pushed into the room");
        }
    }
    Ok(written.len() as i32)
}

/// Flushes every [`TICK`] until `until`, and at least once: an invocation
/// with little time left (a short local timeout) still does one pass. A
/// failed flush is logged and the next tick tries again. Returns the rooms
/// written in all.
pub async fn flush_until(state: &AppState, until: Instant) -> i64 {
    let mut written = 0i64;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match flush_once(state).await {
            Ok(rooms) => written += i64::from(rooms),
            Err(error) => tracing::warn!(%error, "flushing viewer counts failed; the next tick retries"),
        }
        if Instant::now() + TICK >= until {
            return written;
        }
    }
}

/// Runs the scheduled function: each invocation flushes until two seconds
/// before its deadline (the template gives it 60 s, started every minute).
pub async fn serve() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};
    crate::logging::init();
    let state = crate::http::LazyState::default();
    state.get().await.ok();
    let state = &state;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let app = state.get().await.map_err(lambda_http::Error::from)?;
            // No usable deadline (cargo lambda watch): flush once.
            let remaining = crate::http::time_to_deadline(&event.context).unwrap_or_default();
            let until = Instant::now() + remaining.saturating_sub(Duration::from_secs(2));
            let written = flush_until(app, until).await;
            if written > 0 {
                tracing::info!(written, "flushed viewer counts");
            }
            Ok::<_, lambda_http::Error>(serde_json::json!({ "written": written }))
        },
    ))
    .await
}
