//! The scheduled reconciler. Webhooks are best-effort; every run compares the
//! streams with LiveKit:
//! - live streams: viewer counts follow `ListParticipants` and are told to
//!   the room, banned users are removed and mutes re-applied, and a stream
//!   whose room has been gone for longer than the grace period ends;
//! - ended streams whose room LiveKit never confirmed closed (it was down
//!   during `/live/end`): `DeleteRoom` again;
//! - what grows with use is pruned in bounded batches: webhook ids, idle
//!   rate-limit rows, closed participant sessions and the sessions and
//!   unique-viewer marks of ended streams past the retention period, and any
//!   presence row an ended stream still has (a first join that committed
//!   while the end ran);
//! - in each live room, after its sync (which records the guests LiveKit
//!   lists back), the stage turns of those whose time to return ran out end.
//!
//! Each write is conditional or made under the stream's row lock, so two runs
//! at once do the same work twice, never anything wrong (a room's sessions
//! are synced by one run at a time, migration 0053); with nothing live and
//! nothing to close a run is a few indexed statements and no LiveKit call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::{ApiError, Dependency};
use crate::livekit::room_rules::{self, StreamState};
use crate::state::AppState;
use crate::store::chat;
use crate::store::streams::{self, LiveRoom};
use crate::store::viewers::{self, Presence};

use super::past;

/// Webhook event ids are kept this long for deduplication; LiveKit retries
/// within minutes.
const EVENT_ID_RETENTION: &str = "1 day";
/// Most rows one pruning statement deletes, so a run never holds long locks
/// or writes a huge transaction after a long outage; the next run goes on.
const PRUNE_BATCH: i64 = 5_000;
/// Most pruning statements per table per run. What grows per request grows
/// at most as fast as the routes' throttles let requests in: a webhook id
/// and a session per event (1,000/s at the template's defaults), a
/// rate-limit row per new user and rate-limited route (3,650/s, all those
/// routes at once). 48 × 5,000 a minute is 4,000/s a table, so no backlog
/// outgrows its pruning even then.
const PRUNE_BATCHES: usize = 48;
/// The most of a run pruning may take (it starts no statement after it, and
/// one runs at most `statement_timeout`, 5 s): the rest of the 50 s is the
/// rooms'.
const PRUNE_BUDGET: Duration = Duration::from_secs(20);
/// Ended streams one run retires (their unique-viewer marks and stage rows
/// deleted, their shards folded): 1,440,000 a day at one run a minute, far
/// more streams than end in a day.
const RETIRED_STREAMS_PER_RUN: i64 = 1_000;
/// Streams one fold statement takes: at most 16 count and 80 reaction
/// shards each, so it touches under [`PRUNE_BATCH`] rows.
const FOLDED_STREAMS_PER_STATEMENT: usize = 50;
/// Most ended streams whose room one run tries to close.
const CLOSE_BATCH: i64 = 50;
/// Closing rooms stops for the run after this many `DeleteRoom` failures in
/// a row: LiveKit is down or hanging (each call may take 6 s), and the next
/// run tries again.
const CLOSE_FAILURES_IN_A_ROW: usize = 3;
/// A scheduled run starts no room, and no RoomService call within a room,
/// later than this before its invocation's deadline: the call started last
/// may take 6 s (two attempts) and a correction's follow-up reads 2 s more,
/// the statements after it up to the functions' 5 s statement timeout, and
/// the run's report must still be logged.
const RUN_MARGIN: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub live: usize,
    pub synced: usize,
    pub missing: usize,
    pub ended: usize,
    /// Ended streams whose LiveKit room this run closed.
    pub rooms_closed: usize,
    /// Participants removed or re-muted to match the database.
    pub corrected: usize,
    pub sessions_pruned: usize,
    /// Unique-viewer marks (`live_viewers_seen`) of streams that ended longer
    /// ago than the session retention: their figure is final.
    pub viewers_seen_pruned: usize,
    /// Streams that ended longer ago than the session retention whose count
    /// and reaction shards were folded into one row each (migration 0067).
    pub streams_folded: usize,
    /// Stage rows (raised hands, invitations, turns) of those streams.
    pub stage_rows_pruned: usize,
    /// Presence rows of ended streams: a first join whose row committed while
    /// the end ran, which the end could not see (migration 0023).
    pub presence_pruned: usize,
    pub webhook_ids_pruned: usize,
    /// Claims on room names left by starts that died before committing or
    /// releasing them (migration 0027). Their rooms had no host token and
    /// close themselves once empty for `empty_timeout`.
    pub claims_pruned: usize,
    /// Guests (or raised hands, or invitations) of viewers whose connection
    /// was lost longer than `STAGE_RETURN_SECONDS` ago and who are not back.
    pub stage_turns_ended: usize,
    /// Live streams whose room LiveKit lost and the streamer opened again
    /// (a new instance): recorded, so its webhooks are applied.
    pub instances_adopted: usize,
    /// Live streams ended because their host had been out of the room for
    /// `HOST_RETURN_SECONDS` (LiveKit keeps a room open while anyone is in
    /// it); also counted in `ended`.
    pub hosts_gone: usize,
    pub failed: usize,
    /// Rooms (live, or ended and unclosed) this run had no time left for, or
    /// left after LiveKit refused closing rooms a few times in a row; the
    /// next run starts from a different room, so none waits for ever.
    pub left_for_next_run: usize,
    /// The clean-up's steps that failed (a lock given up on, a statement
    /// timed out, a privilege missing); the others ran all the same.
    pub clean_up_failed: Vec<&'static str>,
}

impl ReconcileReport {
    /// Rooms were tried and not one got through: the run did nothing, and
    /// the scheduled function reports it as failed (its alarm counts those).
    pub fn nothing_got_through(&self) -> bool {
        self.failed > 0 && self.synced + self.missing + self.rooms_closed == 0
    }

    /// Why the scheduled function reports this run as failed, if it does: not
    /// one room got through, or a step of the clean-up failed. One such run
    /// is a lock given up on; the alarm fires on three within its window, a
    /// step failing run after run (its table growing, nothing pruning it).
    pub fn failure(&self) -> Option<String> {
        if self.nothing_got_through() {
            Some(format!(
                "not one of the {} rooms this run tried got through",
                self.failed
            ))
        } else if !self.clean_up_failed.is_empty() {
            Some(format!(
                "the clean-up's {} failed",
                self.clean_up_failed.join(", ")
            ))
        } else {
            None
        }
    }
}

pub async fn reconcile(state: &AppState, grace: Duration) -> Result<ReconcileReport, ApiError> {
    reconcile_until(state, grace, None).await
}

/// [`reconcile`], starting no room after `until`: with LiveKit slow, each
/// room may take seconds, and a run cut by Lambda's timeout would log
/// nothing. The rooms are taken from a random starting point, so a list too
/// long for one run is covered across runs rather than its head every time.
pub async fn reconcile_until(
    state: &AppState,
    grace: Duration,
    until: Option<Instant>,
) -> Result<ReconcileReport, ApiError> {
    // Pruning starts no statement after PRUNE_BUDGET (nor after `until`): a
    // backlog is worked off run by run, and the rooms always get their turn.
    let budget = Instant::now() + PRUNE_BUDGET;
    let prune_until = until.map_or(budget, |until| until.min(budget));
    let mut report = ReconcileReport::default();
    let (live, listed_at, unclosed) = {
        let client = state.db.get().await?;
        // A pruning statement that fails (a lock it gave up on) leaves its
        // step to the next run, never the other steps or the rooms.
        clean_up(state, &client, prune_until, &mut report).await;
        // Read before any LiveKit call: a session written after this is newer
        // than every listing this run gets.
        let listed_at: DateTime<Utc> = client
            .query_typed_one("SELECT clock_timestamp()", &[])
            .await?
            .try_get(0)
            .map_err(ApiError::internal)?;
        (
            streams::live_rooms(&client).await?,
            listed_at,
            streams::unclosed_rooms(&client, CLOSE_BATCH).await?,
        )
    };
    report.live = live.len();
    let (unclosed, live) = (super::from_random_start(unclosed), super::from_random_start(live));
    // Live rooms first: their counts and rules matter now, while closing an
    // ended stream's room can wait for a later run.
    sync_live_rooms(state, &live, grace, listed_at, until, &mut report).await?;
    close_rooms_of_ended_streams(state, &unclosed, until, &mut report).await;
    tracing::info!(?report, "reconciled with LiveKit");
    Ok(report)
}

async fn sync_live_rooms(
    state: &AppState,
    live: &[LiveRoom],
    grace: Duration,
    listed_at: DateTime<Utc>,
    until: Option<Instant>,
    report: &mut ReconcileReport,
) -> Result<(), ApiError> {
    if live.is_empty() || past(until) {
        report.left_for_next_run += live.len();
        return Ok(());
    }
    let names = live.iter().map(|live| live.room.to_string()).collect();
    let open: HashMap<String, String> = state
        .livekit
        .existing_rooms(names)
        .await
        .map_err(|e| ApiError::unavailable(Dependency::LiveKit, e))?
        .into_iter()
        .collect();
    // A room LiveKit lists is not missing, whatever its sync does next: its
    // grace clock stops now, or a failed sync would keep an old clock that a
    // later gap in the listing then ends the stream by, as of long ago. Those
    // whose row was held are stopped one by one, before their participants
    // are listed.
    let listed: Vec<&str> = open.keys().map(String::as_str).collect();
    let client = state.db.get().await?;
    let clocks_left = streams::rooms_found(&client, &listed).await?;
    drop(client);

    for (done, live_room) in live.iter().enumerate() {
        let room = &live_room.room;
        if past(until) {
            report.left_for_next_run += live.len() - done;
            break;
        }
        let outcome = if let Some(open_sid) = open.get(room.as_str()) {
            let clock_left = clocks_left.contains(room.as_str());
            sync_room(state, live_room, open_sid, listed_at, until, clock_left)
                .await
                .and_then(|synced| {
                    report.corrected += synced.corrected;
                    synced.database_failed.map_or(Ok(()), Err)?;
                    report.synced += 1;
                    report.stage_turns_ended += synced.stage_turns_ended;
                    report.instances_adopted += usize::from(synced.adopted);
                    report.ended += usize::from(synced.ended);
                    report.hosts_gone += usize::from(synced.ended);
                    Ok(())
                })
        } else {
            room_missing(state, room, grace).await.map(|missing| {
                report.missing += 1;
                report.ended += usize::from(missing.ended);
                report.stage_turns_ended += missing.stage_turns_ended;
            })
        };
        if let Err(error) = outcome {
            // One room's trouble must not stop the others; the next run retries.
            tracing::warn!(%room, %error, "reconciling room failed");
            report.failed += 1;
        }
    }
    Ok(())
}

/// `DeleteRoom` again for ended streams whose room LiveKit never confirmed
/// closed, and for deleted streams whose room may still be open (their
/// names held until then, [`streams::unclosed_rooms`]). One room's failure
/// stops none of the others, but a few in a row (LiveKit down) end this
/// run's attempts.
async fn close_rooms_of_ended_streams(
    state: &AppState,
    unclosed: &[RoomName],
    until: Option<Instant>,
    report: &mut ReconcileReport,
) {
    let mut failures_in_a_row = 0;
    for (done, room) in unclosed.iter().enumerate() {
        if past(until) || failures_in_a_row == CLOSE_FAILURES_IN_A_ROW {
            report.left_for_next_run += unclosed.len() - done;
            break;
        }
        match close_room(state, room).await {
            Ok(()) => {
                report.rooms_closed += 1;
                failures_in_a_row = 0;
            }
            Err(error) => {
                tracing::warn!(%room, %error, "ended stream's room still not closed");
                report.failed += 1;
                failures_in_a_row += 1;
            }
        }
    }
}

/// Closes an ended stream's room (`DeleteRoom`, which disconnects everyone)
/// and records it closed. A failure leaves it for the next run's
/// [`close_rooms_of_ended_streams`].
async fn close_room(state: &AppState, room: &RoomName) -> Result<(), ApiError> {
    state
        .livekit
        .delete_room(room)
        .await
        .map_err(|error| ApiError::unavailable(Dependency::LiveKit, error))?;
    let client = state.db.get().await?;
    streams::mark_room_closed(&client, room).await
}

/// What grows with use, pruned. What users wait for first (a room name a
/// dead start still claims), then the backlogs, which after a long outage
/// can use up the budget. Each step stands alone: one that fails is logged
/// and named in the report, and the next goes on (a step failing run after
/// run must not stop the pruning of every table after it). The stage turns
/// of the gone end in each synced room's turn ([`sync_room`]).
async fn clean_up(
    state: &AppState,
    client: &tokio_postgres::Client,
    until: Instant,
    report: &mut ReconcileReport,
) {
    fn settled(report: &mut ReconcileReport, step: &'static str, result: Result<usize, ApiError>) -> usize {
        result.unwrap_or_else(|error| {
            tracing::warn!(step, %error, "a clean-up step failed; the next run tries it again");
            report.clean_up_failed.push(step);
            0
        })
    }
    let retention = state.rules.session_retention;
    let claims = in_batches(until, || streams::prune_lapsed_claims(client, PRUNE_BATCH)).await;
    report.claims_pruned = settled(report, "claims", claims);
    let webhook_ids = prune_webhook_ids(client, until).await;
    report.webhook_ids_pruned = settled(report, "webhook ids", webhook_ids);
    let rate_limits = in_batches(until, || crate::store::rate_limit::prune(client, PRUNE_BATCH)).await;
    settled(report, "rate limits", rate_limits);
    let sessions = prune_sessions(client, retention, until).await;
    report.sessions_pruned = settled(report, "sessions", sessions);
    let retired = retire_ended_streams(client, retention, until, report)
        .await
        .map(|()| 0);
    settled(report, "ended streams", retired);
    let presence = in_batches(until, || prune_presence_of_ended(client)).await;
    report.presence_pruned = settled(report, "presence", presence);
}

/// Runs `prune` (one statement, its own transaction, deleting at most
/// [`PRUNE_BATCH`] rows and returning how many) until it deletes less than a
/// batch, [`PRUNE_BATCHES`] statements ran, or `until` has passed.
async fn in_batches<F, Fut>(until: impl Into<Option<Instant>>, mut prune: F) -> Result<usize, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, ApiError>>,
{
    let until = until.into();
    let mut pruned = 0;
    for _ in 0..PRUNE_BATCHES {
        if past(until) {
            break;
        }
        let deleted = prune().await?;
        pruned += deleted;
        if deleted < PRUNE_BATCH as usize {
            break;
        }
    }
    Ok(pruned)
}

/// Deletes webhook ids past their retention.
async fn prune_webhook_ids(client: &tokio_postgres::Client, until: Instant) -> Result<usize, ApiError> {
    let statement = format!(
        "DELETE FROM live_webhook_events WHERE id IN (
             SELECT id FROM live_webhook_events
             WHERE received_at < now() - interval '{EVENT_ID_RETENTION}'
             LIMIT $1)"
    );
    in_batches(until, || async {
        Ok(client
            .execute_typed(&statement, &[(&PRUNE_BATCH, Type::INT8)])
            .await? as usize)
    })
    .await
}

/// Deletes closed sessions older than `retention`, and the sessions still
/// open in streams that ended longer ago than that (a join that committed
/// while its stream ended; the end closes every other). Open sessions are
/// few, the viewers present now, so the second search starts from them, not
/// from every stream that ever ended.
async fn prune_sessions(
    client: &tokio_postgres::Client,
    retention: Duration,
    until: Instant,
) -> Result<usize, ApiError> {
    let retention_seconds = retention.as_secs_f64();
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&retention_seconds, Type::FLOAT8), (&PRUNE_BATCH, Type::INT8)];
    let closed = in_batches(until, || async {
        Ok(client
            .execute_typed(
                "DELETE FROM live_participant_sessions WHERE (room_name, sid) IN (
                     SELECT room_name, sid FROM live_participant_sessions
                     WHERE left_at < now() - make_interval(secs => $1)
                     LIMIT $2)",
                &params,
            )
            .await? as usize)
    })
    .await?;
    let open_in_ended = in_batches(until, || async {
        Ok(client
            .execute_typed(
                "DELETE FROM live_participant_sessions WHERE (room_name, sid) IN (
                     SELECT p.room_name, p.sid
                     FROM live_participant_sessions p JOIN live_streams s ON s.id = p.room_name
                     WHERE p.left_at IS NULL AND NOT s.is_live
                       AND s.ended_at < now() - make_interval(secs => $1)
                     LIMIT $2)",
                &params,
            )
            .await? as usize)
    })
    .await?;
    Ok(closed + open_in_ended)
}

/// Retires the streams that ended longer ago than `retention`: deletes
/// their unique-viewer marks (the figure is final) and stage rows, and folds
/// their count and reaction shards into one row each (migration 0067; the
/// stats read the same figures). It goes through those streams in the order
/// they ended from where the last run stopped (`live_prune_progress`,
/// migrations 0042 and 0067), at most [`RETIRED_STREAMS_PER_RUN`] a run:
/// bounded whatever the history, and a backlog is worked off run by run.
/// The position moves past a stream only once it is retired whole.
async fn retire_ended_streams(
    client: &tokio_postgres::Client,
    retention: Duration,
    until: Instant,
    report: &mut ReconcileReport,
) -> Result<(), ApiError> {
    const TASK: &str = "ended_streams";
    let retention_seconds = retention.as_secs_f64();
    let ended = client
        .query_typed(
            // The position read once (an InitPlan), so the scan of the
            // ended streams starts at it in their ended_at index.
            "WITH position AS (SELECT ended_at, room_name FROM live_prune_progress WHERE task = $2)
             SELECT s.id, s.ended_at FROM live_streams s
             WHERE NOT s.is_live AND s.ended_at < now() - make_interval(secs => $1)
               AND s.ended_at >= coalesce((SELECT ended_at FROM position), '-infinity')
               AND (s.ended_at, s.id) > (coalesce((SELECT ended_at FROM position), '-infinity'),
                                         coalesce((SELECT room_name FROM position), ''))
             ORDER BY s.ended_at, s.id
             LIMIT $3",
            &[
                (&retention_seconds, Type::FLOAT8),
                (&TASK, Type::TEXT),
                (&RETIRED_STREAMS_PER_RUN, Type::INT8),
            ],
        )
        .await?;
    let Some(last) = ended.last().filter(|_| Instant::now() < until) else {
        return Ok(());
    };
    let last: (DateTime<Utc>, String) = (
        last.try_get(1).map_err(ApiError::internal)?,
        last.try_get(0).map_err(ApiError::internal)?,
    );
    let rooms = ended
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<Vec<String>, _>>()
        .map_err(ApiError::internal)?;
    // Each table's rows of those streams, by its key. The streams' rows
    // first, as the fold takes them (migration 0071), skipping one held
    // elsewhere: an account deleted meanwhile holds its streams' rows and
    // then deletes their stage rows and marks (cascade, trigger), stream by
    // stream, so a statement that deleted rows of two of its streams in
    // another order could deadlock with it and have Postgres abort one,
    // perhaps the user's deletion. A skipped stream keeps the walk's
    // position (below) until a later run retires it, or its deletion does.
    for (table, key, pruned) in [
        ("live_viewers_seen", "identity", &mut report.viewers_seen_pruned),
        ("live_stage", "user_id", &mut report.stage_rows_pruned),
    ] {
        let statement = format!(
            "DELETE FROM {table} WHERE (room_name, {key}) IN (
                 SELECT room_name, {key} FROM {table}
                 WHERE room_name IN (SELECT s.id FROM live_streams s WHERE s.id = ANY($1) FOR KEY SHARE SKIP LOCKED)
                 LIMIT $2)"
        );
        *pruned += in_batches(until, || async {
            Ok(client
                .execute_typed(
                    &statement,
                    &[(&rooms, Type::TEXT_ARRAY), (&PRUNE_BATCH, Type::INT8)],
                )
                .await? as usize)
        })
        .await?;
    }
    for chunk in rooms.chunks(FOLDED_STREAMS_PER_STATEMENT) {
        if past(Some(until)) {
            break;
        }
        let folded: i32 = client
            .query_typed_one(
                "SELECT live_fold_ended_streams($1)",
                &[(&chunk, Type::TEXT_ARRAY)],
            )
            .await?
            .try_get(0)
            .map_err(ApiError::internal)?;
        report.streams_folded += folded as usize;
    }
    client
        .execute_typed(
            "INSERT INTO live_prune_progress AS p (task, ended_at, room_name)
             SELECT $1, $2, $3
             WHERE NOT EXISTS (SELECT FROM live_viewers_seen WHERE room_name = ANY($4))
               AND NOT EXISTS (SELECT FROM live_stage WHERE room_name = ANY($4))
               AND NOT EXISTS (SELECT FROM live_viewer_counts WHERE room_name = ANY($4) AND shard <> 0)
               AND NOT EXISTS (SELECT FROM live_reaction_counts WHERE room_name = ANY($4) AND shard <> 0)
             ON CONFLICT (task) DO UPDATE SET ended_at = EXCLUDED.ended_at, room_name = EXCLUDED.room_name
             WHERE (p.ended_at, p.room_name) < (EXCLUDED.ended_at, EXCLUDED.room_name)",
            &[
                (&TASK, Type::TEXT),
                (&last.0, Type::TIMESTAMPTZ),
                (&last.1, Type::TEXT),
                (&rooms, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(())
}

/// Deletes the presence rows of ended streams. An end deletes its stream's
/// rows, but not one a first join inserts and commits while the end runs;
/// nothing counts or lists such a row (the stream's shards are closed), so
/// it would only stay. Ended streams never go live again, so no later event
/// needs it.
async fn prune_presence_of_ended(client: &tokio_postgres::Client) -> Result<usize, ApiError> {
    Ok(client
        .execute_typed(
            "DELETE FROM live_presence WHERE (room_name, identity) IN (
                 SELECT p.room_name, p.identity
                 FROM live_presence p JOIN live_streams s ON s.id = p.room_name
                 WHERE NOT s.is_live
                 LIMIT $1)",
            &[(&PRUNE_BATCH, Type::INT8)],
        )
        .await? as usize)
}

/// What a room's turn in a run did.
#[derive(Debug, Default)]
struct RoomDone {
    /// Participants corrected in LiveKit.
    corrected: usize,
    /// The room's open instance was recorded as the stream's.
    adopted: bool,
    /// Stage turns ended whose time to return had run out.
    stage_turns_ended: usize,
    /// A missing room's stream ended, or (after the room's sync) one whose
    /// host had been out of the room for `HOST_RETURN_SECONDS`.
    ended: bool,
    /// The database's side of the room (its grace clock, its instance, its
    /// sessions) failed and is left to the next run; the room was still told
    /// its count and corrected.
    database_failed: Option<ApiError>,
}

/// Makes the room's sessions match LiveKit's listing, ends the stage turns
/// of those whose time to return ran out (after the sync: a guest back whose
/// join LiveKit never told is present by then, if back in time), then
/// corrects the room where it disagrees with the database (banned users
/// present, mutes not applied, a turn that ended). The corrections and the
/// count's push need only the listing and the standings: when the room's
/// grace clock, left running by the run's first statement (`clock_left`,
/// stopped here before the listing), cannot be stopped, or its sync fails (a
/// lock given up on, a statement cut off in a room of tens of thousands),
/// they are still made, and the failure is [`RoomDone::database_failed`]:
/// a ban whose removal failed must not wait for a sync to succeed.
async fn sync_room(
    state: &AppState,
    live_room: &LiveRoom,
    open_sid: &str,
    listed_at: DateTime<Utc>,
    until: Option<Instant>,
    clock_left: bool,
) -> Result<RoomDone, ApiError> {
    let (room, streamer) = (&live_room.room, live_room.streamer);
    // Before the participants are listed, which may fail or time out: a room
    // ListRooms listed must not keep an old clock, whatever its sync does.
    let clock_stopped = if clock_left {
        async {
            let client = state.db.get().await?;
            streams::room_found(&client, room).await
        }
        .await
    } else {
        Ok(())
    };
    let listed_since = Instant::now();
    let participants = state
        .livekit
        .participants(room)
        .await
        .map_err(|e| ApiError::unavailable(Dependency::LiveKit, e))?;
    let present: Vec<Presence> = participants.iter().map(Presence::from).collect();
    let users: Vec<Uuid> = present.iter().filter_map(Presence::user).collect();
    let host_listed = present.iter().any(|p| p.owner() == Some(streamer));
    // Another instance than the stream's is open under its name: LiveKit
    // lost the recorded one without a `room_finished` (a restart) and a
    // client's reconnect opened the room again. Every webhook of it is
    // ignored as another instance's, so the counts would move only once a
    // run, and its `room_finished` would not end the stream. It is the
    // stream's once the streamer is in it; one only viewers opened (the
    // streamer gone, the old instance's `room_finished` perhaps on its way)
    // is not adopted, so that end still ends the stream. The participants
    // are listed by name, so the room is listed again after them: the
    // streamer was in the instance this run found only if it is still open.
    let adopt = live_room.room_sid.as_deref() != Some(open_sid)
        && !open_sid.is_empty()
        && present.iter().any(|p| p.user() == Some(streamer))
        && still_open_as(state, room, open_sid).await;
    let client = state.db.get().await?;
    let synced = async {
        clock_stopped?;
        let adopted = adopt
            && streams::adopt_room_instance(&client, room, live_room.room_sid.as_deref(), open_sid).await?;
        if adopted {
            tracing::info!(%room, recorded = ?live_room.room_sid, open_sid, "the streamer is in a new instance of the room: recorded as the stream's");
        }
        viewers::sync(
            &client,
            room,
            streamer,
            &present,
            listed_at,
            state.rules.stage_return,
        )
        .await?;
        Ok(adopted)
    }
    .await;
    let mut done = RoomDone::default();
    match synced {
        Ok(adopted) => {
            let listed: Vec<&str> = present.iter().map(|p| p.identity.as_str()).collect();
            done.adopted = adopted;
            // After the sync only: a guest back whose join was never told is
            // present once it has run.
            done.stage_turns_ended = end_lapsed_turns_of_room(
                &client,
                room,
                &listed,
                listed_since,
                state.rules.stage_return,
                until,
            )
            .await;
            // The sessions match the listing now: a host out of the room
            // that long has left the stream. LiveKit would keep the room
            // open, the viewers watching nothing, while anyone is in it.
            // Only for a host the listing missed, and asked again just
            // before: one who came back since, their join's webhook still on
            // its way, must not be cut off by the room's close.
            if !host_listed && host_still_away(state, room, streamer).await {
                match streams::end_if_its_host_left(&client, room, state.rules.host_return).await {
                    Ok(ended) => done.ended = ended,
                    Err(error) => done.database_failed = Some(error),
                }
            }
        }
        Err(error) => done.database_failed = Some(error),
    }
    if done.ended {
        drop(client);
        tracing::info!(%room, "ended a live stream whose host left the room");
        if !past(until)
            && let Err(error) = close_room(state, room).await
        {
            tracing::warn!(%room, %error, "the room of a stream its host left is not closed yet; the next run closes it");
        }
        return Ok(done);
    }
    let mut standings = chat::standings_among(&**client, room, &users).await?;
    // Read last, just before the push: a webhook's newer count pushed in
    // between would otherwise be overwritten by an older one.
    let count = viewers::count(&client, room).await?;
    let counted_at = chrono::Utc::now();
    drop(client);
    if past(until) {
        // The sessions match; the push and the corrections are the next
        // run's (a join's webhook corrects its own participant meanwhile).
        tracing::info!(%room, "out of time after the sync: push and corrections left for the next run");
        return Ok(done);
    }
    // Told to the room on every run, changed or not: pushes happen only as
    // counts are written, so a count this sync repaired (its write may be
    // the last for a while) or a push that failed in a quiet room would
    // otherwise stay wrong on every screen; once a minute a room costs one
    // lossy packet.
    if let Err(error) = state.livekit.push_viewer_count(room, count, counted_at).await {
        tracing::warn!(%room, %error, "viewer count not pushed into the room");
    }

    let stream = StreamState {
        streamer,
        is_live: true,
    };
    let corrections: Vec<(Presence, room_rules::Correction)> = present
        .iter()
        .filter_map(|p| {
            let restriction = Uuid::parse_str(&p.identity)
                .ok()
                .and_then(|user| standings.remove(&user));
            room_rules::correction(&state.livekit, &stream, p, restriction).map(|c| (p.clone(), c))
        })
        .collect();
    done.corrected = room_rules::correct_all(state, room, &stream, &corrections, until).await;
    Ok(done)
}

/// Whether the streamer is still out of `room` by LiveKit's own word (a
/// failed call counts as back: nothing is ended on a guess).
async fn host_still_away(state: &AppState, room: &RoomName, streamer: Uuid) -> bool {
    match state.livekit.is_in_room(room, &streamer.to_string()).await {
        Ok(in_room) => !in_room,
        Err(error) => {
            tracing::warn!(%room, %error, "could not ask whether the host is back; the next run decides");
            false
        }
    }
}

/// Whether LiveKit still has `room` open as the instance `sid`.
async fn still_open_as(state: &AppState, room: &RoomName, sid: &str) -> bool {
    match state.livekit.existing_rooms(vec![room.to_string()]).await {
        Ok(open) => open
            .iter()
            .any(|(name, open_sid)| name == room.as_str() && open_sid == sid),
        Err(error) => {
            tracing::warn!(%room, %error, "could not list the room again; its instance is left for the next run");
            false
        }
    }
}

/// Ends the stage turns in `room` whose time to return ran out when the
/// listing began, of those not `listed` there by LiveKit
/// ([`crate::store::stage::end_lapsed_away_turns`]), in batches, none after
/// `until`. A failure is the next run's to retry; the room's count and
/// corrections go on.
async fn end_lapsed_turns_of_room(
    client: &tokio_postgres::Client,
    room: &RoomName,
    listed: &[&str],
    listed_since: Instant,
    stage_return: Duration,
    until: Option<Instant>,
) -> usize {
    let ended = std::cell::Cell::new(0);
    let ending = in_batches(until, || async {
        let lapsed = crate::store::stage::end_lapsed_away_turns(
            client,
            Some(room),
            listed,
            listed_since,
            stage_return,
            PRUNE_BATCH,
        )
        .await?;
        ended.set(ended.get() + lapsed.ended);
        Ok(lapsed.rows)
    })
    .await;
    if let Err(error) = ending {
        tracing::warn!(%room, %error, "lapsed stage turns not ended; the next run retries");
    }
    ended.get()
}

/// Starts the grace clock for a live stream whose room LiveKit does not have,
/// and ends the stream once the clock has run out. Its lapsed stage turns
/// wait: the room may be back (a start re-created it after this run's
/// listing), and the end clears the stage anyway.
async fn room_missing(state: &AppState, room: &RoomName, grace: Duration) -> Result<RoomDone, ApiError> {
    let client = state.db.get().await?;
    client
        .query_typed(
            "UPDATE live_streams SET room_missing_since = now()
             WHERE id = $1 AND is_live AND room_missing_since IS NULL",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    let ended = viewers::finish(&**client, room, Some(grace)).await?;
    if ended {
        tracing::info!(%room, "ended a live stream whose LiveKit room is gone");
    }
    Ok(RoomDone {
        ended,
        ..RoomDone::default()
    })
}

/// How long before its invocation's deadline a run still going is stopped:
/// time to cancel its statement and log that it was stopped, which a run
/// Lambda's timeout ended would not.
const CUT_OFF_MARGIN: Duration = Duration::from_secs(2);

/// [`reconcile_until`], stopped at `cut_off` if it is still running then
/// (`None`): the run's margin keeps a room's LiveKit calls from starting too
/// late, but its statements, each bounded by the statement timeout, can
/// still add up past the deadline while the database is slow. Stopped, the
/// statement running is cancelled (each is its own transaction, so what
/// committed stands) rather than left on the pooled connection.
pub async fn reconcile_before(
    state: &AppState,
    grace: Duration,
    until: Option<Instant>,
    cut_off: Option<Instant>,
) -> Option<Result<ReconcileReport, ApiError>> {
    crate::store::db::invocation_until(cut_off, reconcile_until(state, grace, until)).await
}

/// Runs the scheduled function: every EventBridge event is one reconciliation.
/// A failed run is an error, so it shows in the function's error metric; the
/// next scheduled run tries again.
pub async fn serve() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};
    crate::logging::init();
    let state = crate::http::LazyState::default();
    state.get().await.ok();
    let state = &state;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let left = crate::http::time_to_deadline(&event.context);
            let now = Instant::now();
            let until = left.map(|left| now + left.saturating_sub(RUN_MARGIN));
            let cut_off = left.map(|left| now + left.saturating_sub(CUT_OFF_MARGIN));
            let run = async {
                let app = state.get().await?;
                match reconcile_before(app, app.reconcile_grace, until, cut_off).await {
                    Some(outcome) => outcome,
                    None => Err(ApiError::unavailable(
                        crate::error::Dependency::Timeout,
                        "the run was still going at its invocation's deadline and was stopped; the next run goes on",
                    )),
                }
            };
            match run.await {
                Ok(report) => match report.failure() {
                    Some(failure) => {
                        tracing::error!(%failure, "reconciliation failed");
                        Err(lambda_http::Error::from(failure))
                    }
                    None => Ok(()),
                },
                Err(error) => {
                    tracing::error!(%error, "reconciliation failed");
                    Err(lambda_http::Error::from(error))
                }
            }
        },
    ))
    .await
}
