//! The `live_streams` store. Every query is one unnamed statement
//! (`query_typed`), one round trip, safe behind a transaction-mode pooler.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::domain::{RoomName, Stream, Title};
use crate::error::ApiError;
use crate::store::rate_limit::{self, Limit};
use crate::store::stage::StageStanding;

/// What `/live/start` finds or makes of a room name (the functions
/// `live_start_check`, migration 0037, and `live_start_stream`, migrations
/// 0007, 0021 and 0027).
pub enum StartOutcome {
    /// Checked only: the caller may start a stream under this name, and holds
    /// a claim on it until the stream commits or the claim is released.
    Available,
    Created(Stream),
    /// The caller's own stream under that name is still live: a retried start.
    AlreadyLive(Stream),
    /// Another streamer's stream has this name, or another streamer is
    /// starting one under it.
    RoomTaken,
    /// The caller's stream of this name has ended; names are never reused.
    RoomEnded,
    /// The caller already has as many live streams as allowed; the newest.
    OverLimit {
        live_room: String,
    },
}

/// The columns both statements answer with; the count is the exact one (the
/// shards), not Realtime's copy.
const START_COLUMNS: &str = "outcome, live_room, id, title, streamer_id, is_live, created_at, ended_at,
     CASE WHEN id IS NULL THEN 0 ELSE live_viewer_count(id) END AS viewer_count";

/// Checks a start before the LiveKit room exists, in one statement
/// (`live_start_check`): the caller's profile (where streams reference
/// profiles), the name, their live streams, and then, for a start that will
/// reach LiveKit (`Available` or `AlreadyLive`), their start `limit`. A
/// refusal keeps its answer and spends nothing; over the limit, the claim it
/// took is undone and the answer is 429.
pub async fn check_start(
    client: &Client,
    room: &RoomName,
    streamer: Uuid,
    title: &Title,
    max_live: u32,
    limit: Limit,
) -> Result<StartOutcome, ApiError> {
    let max_live = i32::try_from(max_live).unwrap_or(i32::MAX);
    let key = format!("start:{streamer}");
    let row = client
        .query_typed_one(
            &format!("SELECT retry_after, {START_COLUMNS} FROM live_start_check($1, $2, $3, $4, $5, $6, $7)"),
            &[
                (&room.as_str(), Type::TEXT),
                (&streamer, Type::UUID),
                (&title.as_str(), Type::TEXT),
                (&max_live, Type::INT4),
                (&key, Type::TEXT),
                (&limit.window_seconds(), Type::FLOAT8),
                (&limit.max_hits(), Type::INT8),
            ],
        )
        .await?;
    let outcome: String = row.try_get("outcome").map_err(ApiError::internal)?;
    match outcome.as_str() {
        "profile_required" => Err(ApiError::ProfileRequired),
        "rate_limited" => {
            let retry_after: Option<i64> = row.try_get("retry_after").map_err(ApiError::internal)?;
            Err(rate_limit::limited(retry_after))
        }
        _ => start_outcome(&outcome, &row),
    }
}

/// Creates the stream once its LiveKit room `room_sid` exists
/// (`live_start_stream`), or finds what took the name meanwhile. One
/// statement, which locks the row of an existing stream and serialises the
/// caller's starts.
pub async fn create_stream(
    client: &Client,
    room: &RoomName,
    streamer: Uuid,
    title: &Title,
    max_live: u32,
    room_sid: &str,
) -> Result<StartOutcome, ApiError> {
    let max_live = i32::try_from(max_live).unwrap_or(i32::MAX);
    let row = client
        .query_typed_one(
            &format!("SELECT {START_COLUMNS} FROM live_start_stream($1, $2, $3, $4, true, $5)"),
            &[
                (&room.as_str(), Type::TEXT),
                (&streamer, Type::UUID),
                (&title.as_str(), Type::TEXT),
                (&max_live, Type::INT4),
                (&room_sid, Type::TEXT),
            ],
        )
        .await
        // Still possible after the check: the profile deleted meanwhile.
        .map_err(|e| match e.code() {
            Some(code) if *code == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION => {
                ApiError::ProfileRequired
            }
            _ => ApiError::from(e),
        })?;
    let outcome: String = row.try_get("outcome").map_err(ApiError::internal)?;
    start_outcome(&outcome, &row)
}

fn start_outcome(outcome: &str, row: &Row) -> Result<StartOutcome, ApiError> {
    Ok(match outcome {
        "available" => StartOutcome::Available,
        "created" => StartOutcome::Created(stream_from_row(row)?),
        "already_live" => StartOutcome::AlreadyLive(stream_from_row(row)?),
        "room_taken" => StartOutcome::RoomTaken,
        "room_ended" => StartOutcome::RoomEnded,
        "over_limit" => StartOutcome::OverLimit {
            live_room: row.try_get("live_room").map_err(ApiError::internal)?,
        },
        other => {
            return Err(ApiError::internal(format!(
                "starting a stream answered {other:?}"
            )));
        }
    })
}

/// How long a claim on a room name holds before another streamer's start may
/// take it over: far longer than any start runs (10 s at most). It is the
/// interval `live_start_stream` (migration 0027) compares with.
pub const CLAIM_LIFETIME: &str = "60 seconds";

/// Deletes at most `limit` claims past [`CLAIM_LIFETIME`] (left by starts
/// that died between `CreateRoom` and their commit); returns how many. The
/// lapse is checked again on the row it deletes: a claim another streamer's
/// start took over while the delete waited for it is theirs now, and stays.
pub async fn prune_lapsed_claims(client: &Client, limit: i64) -> Result<usize, ApiError> {
    let statement = format!(
        "DELETE FROM live_room_claims c
         WHERE c.claimed_at < now() - interval '{CLAIM_LIFETIME}'
           AND c.room_name IN (
             SELECT room_name FROM live_room_claims
             WHERE claimed_at < now() - interval '{CLAIM_LIFETIME}'
             LIMIT $1)"
    );
    Ok(client.execute_typed(&statement, &[(&limit, Type::INT8)]).await? as usize)
}

/// Whether `streamer`'s stream `room` is live, in whatever room instance: a
/// failed start learns here that it, or a retry of it, committed.
pub async fn is_live(client: &Client, room: &RoomName, streamer: Uuid) -> Result<bool, ApiError> {
    let row = client
        .query_typed_opt(
            "SELECT FROM live_streams WHERE id = $1 AND streamer_id = $2 AND is_live",
            &[(&room.as_str(), Type::TEXT), (&streamer, Type::UUID)],
        )
        .await?;
    Ok(row.is_some())
}

/// Lets go of the caller's claim on a name it did not start a stream under
/// (migration 0027). Another streamer's claim is never touched.
pub async fn release_claim(client: &Client, room: &RoomName, streamer: Uuid) -> Result<(), ApiError> {
    client
        .execute_typed(
            "DELETE FROM live_room_claims WHERE room_name = $1 AND streamer_id = $2",
            &[(&room.as_str(), Type::TEXT), (&streamer, Type::UUID)],
        )
        .await?;
    Ok(())
}

fn stream_from_row(row: &Row) -> Result<Stream, ApiError> {
    let id: String = row.try_get("id").map_err(ApiError::internal)?;
    Ok(Stream {
        id: RoomName::parse(id).map_err(ApiError::internal)?,
        title: row.try_get("title").map_err(ApiError::internal)?,
        streamer_id: row.try_get("streamer_id").map_err(ApiError::internal)?,
        is_live: row.try_get("is_live").map_err(ApiError::internal)?,
        viewer_count: row.try_get("viewer_count").map_err(ApiError::internal)?,
        created_at: row.try_get("created_at").map_err(ApiError::internal)?,
        ended_at: row.try_get("ended_at").map_err(ApiError::internal)?,
    })
}

/// A stream as clients see it; the count is summed from its shards (16 rows
/// whatever the audience), exact at once, where `live_streams.viewer_count`
/// is Realtime's copy, written at most once a second.
const STREAM_COLUMNS: &str =
    "id, title, streamer_id, is_live, live_viewer_count(id) AS viewer_count, created_at, ended_at";

/// One page of live streams, newest first, after `after` (exclusive).
pub async fn live_page(
    client: &Client,
    after: Option<&PageKey>,
    limit: i64,
) -> Result<Vec<(Stream, PageKey)>, ApiError> {
    let (after_created, after_id) = match after {
        Some(key) => (Some(key.created_at), Some(key.id.as_str())),
        None => (None, None),
    };
    let rows = client
        .query_typed(
            &format!(
                "SELECT {STREAM_COLUMNS} FROM live_streams
                 WHERE is_live AND ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
                 ORDER BY created_at DESC, id DESC
                 LIMIT $3"
            ),
            &[
                (&after_created, Type::TIMESTAMPTZ),
                (&after_id, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let stream = stream_from_row(row)?;
            let key = PageKey {
                created_at: stream.created_at,
                id: stream.id.to_string(),
            };
            Ok((stream, key))
        })
        .collect()
}

/// Where a page of the listing ends: the keyset `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageKey {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

pub async fn find(client: &Client, room: &RoomName) -> Result<Option<Stream>, ApiError> {
    let row = client
        .query_typed_opt(
            &format!("SELECT {STREAM_COLUMNS} FROM live_streams WHERE id = $1"),
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    row.as_ref().map(stream_from_row).transpose()
}

/// A live stream as the reconciler checks it against LiveKit.
#[derive(Debug, Clone)]
pub struct LiveRoom {
    pub room: RoomName,
    pub streamer: Uuid,
    /// The room instance its webhooks must come from (`None` for a stream
    /// started before instances were recorded).
    pub room_sid: Option<String>,
}

/// The live streams the reconciler checks against LiveKit.
pub async fn live_rooms(client: &Client) -> Result<Vec<LiveRoom>, ApiError> {
    let rows = client
        .query_typed(
            "SELECT id, streamer_id, room_sid FROM live_streams WHERE is_live",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(ApiError::internal)?;
            Ok(LiveRoom {
                room: RoomName::parse(id).map_err(ApiError::internal)?,
                streamer: row.try_get(1).map_err(ApiError::internal)?,
                room_sid: row.try_get(2).map_err(ApiError::internal)?,
            })
        })
        .collect()
}

/// Records `listed` as the instance of `room`'s live stream, if it is still
/// in `recorded`: LiveKit lost that instance without a `room_finished` (a
/// restarted server) and the streamer's reconnect opened the room again
/// (LiveKit's `auto_create`). The new instance's webhooks are then applied,
/// not ignored as another instance's. Says whether it was recorded; a start
/// that recorded an instance meanwhile keeps its own.
pub async fn adopt_room_instance(
    client: &Client,
    room: &RoomName,
    recorded: Option<&str>,
    listed: &str,
) -> Result<bool, ApiError> {
    let adopted = client
        .execute_typed(
            "UPDATE live_streams SET room_sid = $3
             WHERE id = $1 AND is_live AND room_sid IS NOT DISTINCT FROM $2",
            &[
                (&room.as_str(), Type::TEXT),
                (&recorded, Type::TEXT),
                (&listed, Type::TEXT),
            ],
        )
        .await?;
    Ok(adopted == 1)
}

/// The rooms left to close: those of deleted streams whose room may still
/// be open (their names claimed for good until then, migrations 0062 and
/// 0063), and those of ended streams LiveKit has not confirmed closed,
/// oldest first; at most `limit` in all, the deleted streams' before the
/// ended ones'.
pub async fn unclosed_rooms(client: &Client, limit: i64) -> Result<Vec<RoomName>, ApiError> {
    let rows = client
        .query_typed(
            "(SELECT room_name FROM live_room_claims WHERE claimed_at = 'infinity' ORDER BY room_name LIMIT $1)
             UNION ALL
             (SELECT id FROM live_streams WHERE NOT is_live AND room_closed_at IS NULL ORDER BY ended_at LIMIT $1)
             LIMIT $1",
            &[(&limit, Type::INT8)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(ApiError::internal)?;
            RoomName::parse(id).map_err(ApiError::internal)
        })
        .collect()
}

/// Who streams in a room, whether it is still live, and whether `user` is
/// banned or muted there: everything `/live/token` needs, in one round trip.
pub struct RoomAccess {
    pub streamer_id: Uuid,
    pub is_live: bool,
    pub banned: bool,
    pub muted: bool,
    /// Their place on the stage (read by [`token_access`] only).
    pub stage: StageStanding,
}

pub async fn access(client: &Client, room: &RoomName, user: Uuid) -> Result<Option<RoomAccess>, ApiError> {
    let row = client
        .query_typed_opt(
            "SELECT s.streamer_id, s.is_live, COALESCE(r.banned, false) AS banned, COALESCE(r.muted, false) AS muted
             FROM live_streams s
             LEFT JOIN live_room_restrictions r ON r.room_name = s.id AND r.user_id = $2
             WHERE s.id = $1",
            &[(&room.as_str(), Type::TEXT), (&user, Type::UUID)],
        )
        .await?;
    row.map(|row| {
        Ok(RoomAccess {
            streamer_id: row.try_get("streamer_id").map_err(ApiError::internal)?,
            is_live: row.try_get("is_live").map_err(ApiError::internal)?,
            banned: row.try_get("banned").map_err(ApiError::internal)?,
            muted: row.try_get("muted").map_err(ApiError::internal)?,
            stage: StageStanding::default(),
        })
    })
    .transpose()
}

/// [`access`] and the caller's token rate limit together, in one round trip
/// (see [`limited_access`]).
pub async fn token_access(
    client: &Client,
    room: &RoomName,
    user: Uuid,
    limit: crate::store::rate_limit::Limit,
    stage_return: std::time::Duration,
) -> Result<Option<RoomAccess>, ApiError> {
    limited_access(client, room, user, &format!("token:{user}"), limit, stage_return).await
}

/// [`access`] and a hit on the caller's rate limit `key` together, in one
/// round trip: the procedure `live_token_access` (migration 0014, named for
/// its first caller), planned once per connection; it also reads the caller's
/// place on the stage, as the reconciler's next run leaves it: away longer
/// than `stage_return`, the caller is off the stage (migration 0058). Over
/// the limit, the error is 429 with `Retry-After`. Its INOUT parameters come
/// back as the row; the NULLs stand for them (see migration 0014 for why
/// they are not left to defaults).
pub async fn limited_access(
    client: &Client,
    room: &RoomName,
    user: Uuid,
    key: &str,
    limit: crate::store::rate_limit::Limit,
    stage_return: std::time::Duration,
) -> Result<Option<RoomAccess>, ApiError> {
    let (window, max) = (limit.window_seconds(), limit.max_hits());
    let stage_return_seconds = stage_return.as_secs_f64();
    let row = client
        .query_typed_one(
            "CALL live_token_access($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
            &[
                (&room.as_str(), Type::TEXT),
                (&user, Type::UUID),
                (&key, Type::TEXT),
                (&window, Type::FLOAT8),
                (&max, Type::INT8),
                (&stage_return_seconds, Type::FLOAT8),
            ],
        )
        .await?;
    let retry_after: Option<i64> = row.try_get("retry_after").map_err(ApiError::internal)?;
    if retry_after.is_some() {
        return Err(crate::store::rate_limit::limited(retry_after));
    }
    let Some(streamer_id) = row
        .try_get::<_, Option<Uuid>>("streamer_id")
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    Ok(Some(RoomAccess {
        streamer_id,
        is_live: row.try_get("is_live").map_err(ApiError::internal)?,
        banned: row.try_get("banned").map_err(ApiError::internal)?,
        muted: row.try_get("muted").map_err(ApiError::internal)?,
        stage: StageStanding {
            hand_raised: row.try_get("hand_raised").map_err(ApiError::internal)?,
            invited: row.try_get("invited").map_err(ApiError::internal)?,
            on_stage: row.try_get("on_stage").map_err(ApiError::internal)?,
        },
    }))
}

pub enum EndOutcome {
    NotFound,
    NotStreamer,
    Ended {
        ended_at: DateTime<Utc>,
        room_closed: bool,
    },
}

/// Ends the stream if the caller is its streamer, closing its counts
/// (`live_end_stream`, one statement); ending twice keeps the first
/// `ended_at`.
pub async fn end(client: &Client, room: &RoomName, caller: Uuid) -> Result<EndOutcome, ApiError> {
    let row = client
        .query_typed_one(
            "SELECT streamer_id, ended_at, room_closed FROM live_end_stream($1, $2)",
            &[(&room.as_str(), Type::TEXT), (&caller, Type::UUID)],
        )
        .await?;
    let Some(streamer_id) = row
        .try_get::<_, Option<Uuid>>("streamer_id")
        .map_err(ApiError::internal)?
    else {
        return Ok(EndOutcome::NotFound);
    };
    if streamer_id != caller {
        return Ok(EndOutcome::NotStreamer);
    }
    Ok(EndOutcome::Ended {
        ended_at: row.try_get("ended_at").map_err(ApiError::internal)?,
        room_closed: row.try_get("room_closed").map_err(ApiError::internal)?,
    })
}

/// Stops the grace clock (`room_missing_since`) of every stream whose room
/// LiveKit lists: a room that is there is not missing. A stream row held
/// now (every webhook's count write holds it a moment, an end of a big room
/// a while) is skipped, not waited for, so that one held row cannot fail
/// the statement and with it every room's turn; the rooms skipped so are
/// returned, for [`room_found`] to stop each clock on its own.
pub async fn rooms_found(client: &Client, rooms: &[&str]) -> Result<HashSet<String>, ApiError> {
    let held = client
        .query_typed(
            "WITH found AS (
                 SELECT id FROM live_streams
                 WHERE id = ANY($1) AND room_missing_since IS NOT NULL
                 FOR NO KEY UPDATE SKIP LOCKED),
             stopped AS (
                 UPDATE live_streams s SET room_missing_since = NULL
                 FROM found WHERE s.id = found.id
                 RETURNING s.id)
             SELECT id FROM live_streams
             WHERE id = ANY($1) AND room_missing_since IS NOT NULL
               AND id NOT IN (SELECT id FROM stopped)",
            &[(&rooms, Type::TEXT_ARRAY)],
        )
        .await?;
    held.iter()
        .map(|row| row.try_get(0).map_err(ApiError::internal))
        .collect()
}

/// Ends `room`'s live stream now if its host (the streamer's identity, or
/// one of the streamer's side connections) has had no session open in the
/// room for `host_return` (migration 0065). Returns whether it ended; its
/// room is left for the caller to close.
pub async fn end_if_its_host_left(
    client: &Client,
    room: &RoomName,
    host_return: std::time::Duration,
) -> Result<bool, ApiError> {
    let row = client
        .query_typed_one(
            "SELECT live_end_stream_its_host_left($1, make_interval(secs => $2))",
            &[
                (&room.as_str(), Type::TEXT),
                (&host_return.as_secs_f64(), Type::FLOAT8),
            ],
        )
        .await?;
    row.try_get(0).map_err(ApiError::internal)
}

/// Stops the grace clock of one stream whose room LiveKit lists, waiting
/// for its row (up to the role's lock timeout).
pub async fn room_found(client: &Client, room: &RoomName) -> Result<(), ApiError> {
    client
        .query_typed(
            "UPDATE live_streams SET room_missing_since = NULL WHERE id = $1 AND room_missing_since IS NOT NULL",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    Ok(())
}

/// An ended stream's room is open again (a start raced its end and made it
/// after the end had closed it): the reconciler closes it
/// ([`unclosed_rooms`]). The new instance is recorded too: the closed one's
/// `room_finished`, still on its way (LiveKit sends it after every leave
/// before it), is then another instance's, and does not mark the new room
/// closed before anything closed it.
pub async fn mark_room_open(client: &Client, room: &RoomName, room_sid: &str) -> Result<(), ApiError> {
    client
        .query_typed(
            "UPDATE live_streams SET room_closed_at = NULL, room_sid = $2
             WHERE id = $1 AND NOT is_live AND room_closed_at IS NOT NULL",
            &[(&room.as_str(), Type::TEXT), (&room_sid, Type::TEXT)],
        )
        .await?;
    Ok(())
}

/// Records that LiveKit has closed the room, so later ends do not call it
/// again, and lets go of the name a deleted stream held until then.
pub async fn mark_room_closed(client: &Client, room: &RoomName) -> Result<(), ApiError> {
    client
        .query_typed(
            "WITH released AS (
                 DELETE FROM live_room_claims WHERE room_name = $1 AND claimed_at = 'infinity')
             UPDATE live_streams SET room_closed_at = now() WHERE id = $1 AND room_closed_at IS NULL",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    Ok(())
}
