//! The scheduled reconciler. Webhooks are best-effort; every run compares the
//! live streams with LiveKit: it corrects viewer counts from `ListParticipants`
//! and ends a live stream whose room has been gone for longer than the grace
//! period. Each write is conditional or made under the stream's row lock, so
//! two runs at once do the same work twice, never anything wrong; with nothing
//! live a run is one indexed query and no LiveKit call.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::types::Type;

use crate::domain::RoomName;
use crate::error::{ApiError, Dependency};
use crate::state::AppState;
use crate::streams;
use crate::viewers::{self, Presence};

/// Webhook event ids are kept this long for deduplication; LiveKit retries
/// within minutes.
const EVENT_ID_RETENTION: &str = "1 day";

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub live: usize,
    pub synced: usize,
    pub missing: usize,
    pub ended: usize,
    pub failed: usize,
}

pub async fn reconcile(state: &AppState, grace: Duration) -> Result<ReconcileReport, ApiError> {
    let live = {
        let client = state.db.get().await?;
        client
            .query_typed(
                &format!("DELETE FROM live_webhook_events WHERE received_at < now() - interval '{EVENT_ID_RETENTION}'"),
                &[],
            )
            .await?;
        crate::rate_limit::prune(&client).await?;
        streams::live_rooms(&client).await?
    };
    let mut report = ReconcileReport {
        live: live.len(),
        ..ReconcileReport::default()
    };
    if live.is_empty() {
        return Ok(report);
    }

    let names = live.iter().map(|(room, _)| room.to_string()).collect();
    let open: HashSet<String> = state
        .livekit
        .existing_rooms(names)
        .await
        .map_err(|e| ApiError::unavailable(Dependency::LiveKit, e))?
        .into_iter()
        .collect();

    for (room, streamer) in &live {
        let outcome = if open.contains(room.as_str()) {
            sync_room(state, room, *streamer)
                .await
                .map(|()| report.synced += 1)
        } else {
            room_missing(state, room, grace).await.map(|ended| {
                report.missing += 1;
                report.ended += usize::from(ended);
            })
        };
        if let Err(error) = outcome {
            // One room's trouble must not stop the others; the next run retries.
            tracing::warn!(%room, %error, "reconciling room failed");
            report.failed += 1;
        }
    }
    tracing::info!(?report, "reconciled live streams with LiveKit");
    Ok(report)
}

async fn sync_room(state: &AppState, room: &RoomName, streamer: uuid::Uuid) -> Result<(), ApiError> {
    let participants = state
        .livekit
        .participants(room)
        .await
        .map_err(|e| ApiError::unavailable(Dependency::LiveKit, e))?;
    let present: Vec<Presence> = participants
        .into_iter()
        .map(|p| Presence {
            hidden: p.permission.as_ref().is_some_and(|perm| perm.hidden),
            sid: p.sid,
            identity: p.identity,
        })
        .collect();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    if viewers::lock_room(&tx, room).await?.is_none() {
        return Ok(());
    }
    viewers::sync(&tx, room, streamer, &present).await?;
    viewers::recount(&tx, room).await?;
    tx.query_typed(
        "UPDATE live_streams SET room_missing_since = NULL WHERE id = $1 AND room_missing_since IS NOT NULL",
        &[(&room.as_str(), Type::TEXT)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Starts the grace clock for a live stream whose room LiveKit does not have,
/// and ends the stream once the clock has run out. Returns whether it ended.
async fn room_missing(state: &AppState, room: &RoomName, grace: Duration) -> Result<bool, ApiError> {
    let client = state.db.get().await?;
    let grace_seconds = grace.as_secs_f64();
    client
        .query_typed(
            "UPDATE live_streams SET room_missing_since = now()
             WHERE id = $1 AND is_live AND room_missing_since IS NULL",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    let ended = client
        .query_typed(
            "UPDATE live_streams
             SET is_live = false, ended_at = now(), room_closed_at = COALESCE(room_closed_at, now()),
                 viewer_count = 0
             WHERE id = $1 AND is_live AND room_missing_since <= now() - make_interval(secs => $2)
             RETURNING id",
            &[(&room.as_str(), Type::TEXT), (&grace_seconds, Type::FLOAT8)],
        )
        .await?;
    if !ended.is_empty() {
        tracing::info!(%room, "ended a live stream whose LiveKit room is gone");
    }
    Ok(!ended.is_empty())
}

/// Runs the scheduled function: every EventBridge event is one reconciliation.
/// A failed run is an error, so it shows in the function's error metric; the
/// next scheduled run tries again.
pub async fn serve() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};
    lambda_http::tracing::init_default_subscriber();
    let state = crate::http::LazyState::default();
    state.get().await.ok();
    let state = &state;
    lambda_runtime::run(service_fn(
        move |_event: LambdaEvent<serde_json::Value>| async move {
            let run = async {
                let app = state.get().await?;
                reconcile(app, app.reconcile_grace).await
            };
            run.await.map_err(|error| {
                tracing::error!(%error, "reconciliation failed");
                lambda_http::Error::from(error)
            })
        },
    ))
    .await
}
