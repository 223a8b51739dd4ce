//! Who is in each room, from LiveKit webhooks and from the reconciler, and the
//! viewer count that follows from it.
//!
//! State, not arithmetic: each participant session (LiveKit's `sid`) is a row,
//! present once its join was seen and until its leave was seen, so duplicate,
//! late or out-of-order events cannot drive the count wrong or negative. Work on
//! one room is serialised by locking its stream row.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;

/// A participant as counted: the streamer and hidden participants are not viewers.
pub struct Presence {
    pub sid: String,
    pub identity: String,
    pub hidden: bool,
}

/// Records a webhook event id; `false` if it was seen before.
pub async fn first_delivery(tx: &Transaction<'_>, event_id: &str) -> Result<bool, ApiError> {
    let inserted = tx
        .query_typed(
            "INSERT INTO live_webhook_events (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id",
            &[(&event_id, Type::TEXT)],
        )
        .await?;
    Ok(!inserted.is_empty())
}

/// Locks the stream's row for the rest of the transaction and returns its
/// streamer, or `None` for a room we do not know.
pub async fn lock_room(tx: &Transaction<'_>, room: &RoomName) -> Result<Option<Uuid>, ApiError> {
    let row = tx
        .query_typed_opt(
            "SELECT streamer_id FROM live_streams WHERE id = $1 FOR UPDATE",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    row.map(|row| row.try_get(0).map_err(ApiError::internal))
        .transpose()
}

fn counted(presence: &Presence, streamer: Uuid) -> bool {
    !presence.hidden && presence.identity != streamer.to_string()
}

pub async fn joined(
    tx: &Transaction<'_>,
    room: &RoomName,
    streamer: Uuid,
    who: &Presence,
) -> Result<(), ApiError> {
    tx.query_typed(
        "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined)
         VALUES ($1, $2, $3, $4, true)
         ON CONFLICT (room_name, sid) DO UPDATE SET joined = true, updated_at = now()",
        &[
            (&room.as_str(), Type::TEXT),
            (&who.sid.as_str(), Type::TEXT),
            (&who.identity.as_str(), Type::TEXT),
            (&counted(who, streamer), Type::BOOL),
        ],
    )
    .await?;
    Ok(())
}

pub async fn left(
    tx: &Transaction<'_>,
    room: &RoomName,
    streamer: Uuid,
    who: &Presence,
) -> Result<(), ApiError> {
    tx.query_typed(
        "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at)
         VALUES ($1, $2, $3, $4, false, now())
         ON CONFLICT (room_name, sid) DO UPDATE
         SET left_at = COALESCE(live_participant_sessions.left_at, now()), updated_at = now()",
        &[
            (&room.as_str(), Type::TEXT),
            (&who.sid.as_str(), Type::TEXT),
            (&who.identity.as_str(), Type::TEXT),
            (&counted(who, streamer), Type::BOOL),
        ],
    )
    .await?;
    Ok(())
}

/// Makes the sessions match who LiveKit says is in the room right now.
pub async fn sync(
    tx: &Transaction<'_>,
    room: &RoomName,
    streamer: Uuid,
    present: &[Presence],
) -> Result<(), ApiError> {
    let sids: Vec<&str> = present.iter().map(|p| p.sid.as_str()).collect();
    let identities: Vec<&str> = present.iter().map(|p| p.identity.as_str()).collect();
    let counts: Vec<bool> = present.iter().map(|p| counted(p, streamer)).collect();
    tx.query_typed(
        "UPDATE live_participant_sessions SET left_at = now(), updated_at = now()
         WHERE room_name = $1 AND left_at IS NULL AND NOT (sid = ANY($2))",
        &[(&room.as_str(), Type::TEXT), (&sids, Type::TEXT_ARRAY)],
    )
    .await?;
    // A session we saw leave stays gone: its leave event may be newer than this listing.
    tx.query_typed(
        "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined)
         SELECT $1, p.sid, p.identity, p.counted, true
         FROM unnest($2::text[], $3::text[], $4::bool[]) AS p (sid, identity, counted)
         ON CONFLICT (room_name, sid) DO UPDATE SET joined = true, updated_at = now()",
        &[
            (&room.as_str(), Type::TEXT),
            (&sids, Type::TEXT_ARRAY),
            (&identities, Type::TEXT_ARRAY),
            (&counts, Type::BOOL_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

/// Sets `viewer_count` to the distinct identities present and counted; writes
/// only when it changes, so Realtime subscribers see real changes only.
pub async fn recount(tx: &Transaction<'_>, room: &RoomName) -> Result<(), ApiError> {
    tx.query_typed(
        "UPDATE live_streams s SET viewer_count = c.n
         FROM (SELECT count(DISTINCT identity)::int AS n FROM live_participant_sessions
               WHERE room_name = $1 AND counted AND joined AND left_at IS NULL) c
         WHERE s.id = $1 AND s.viewer_count <> c.n",
        &[(&room.as_str(), Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// LiveKit closed the room: the stream ends as `/live/end` would end it, and
/// nobody is in it any more.
pub async fn room_finished(tx: &Transaction<'_>, room: &RoomName) -> Result<(), ApiError> {
    tx.query_typed(
        "UPDATE live_participant_sessions SET left_at = now(), updated_at = now()
         WHERE room_name = $1 AND left_at IS NULL",
        &[(&room.as_str(), Type::TEXT)],
    )
    .await?;
    tx.query_typed(
        "UPDATE live_streams
         SET is_live = false, ended_at = COALESCE(ended_at, now()),
             room_closed_at = COALESCE(room_closed_at, now()), viewer_count = 0
         WHERE id = $1",
        &[(&room.as_str(), Type::TEXT)],
    )
    .await?;
    Ok(())
}
