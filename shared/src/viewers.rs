//! Who is in each room, from LiveKit webhooks and from the reconciler, and the
//! viewer count that follows from it.
//!
//! State, not arithmetic: each participant session (LiveKit's `sid`) is a row,
//! present once its join was seen and until its leave was seen, so duplicate,
//! late or out-of-order events cannot drive the count wrong or negative. Work on
//! one room is serialised by locking its stream row (`FOR NO KEY UPDATE`, so
//! chat and moderation writes of that room, which take `FOR KEY SHARE` on it
//! through their foreign keys, never wait for a webhook).

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;

/// A participant as LiveKit reports it, in a webhook or a listing: the
/// streamer and hidden participants are not viewers.
pub struct Presence {
    pub sid: String,
    pub identity: String,
    pub hidden: bool,
    /// The permission the participant has in the room now.
    pub can_publish_data: bool,
}

impl From<&livekit_protocol::ParticipantInfo> for Presence {
    fn from(participant: &livekit_protocol::ParticipantInfo) -> Presence {
        let permission = participant.permission.as_ref();
        Presence {
            sid: participant.sid.clone(),
            identity: participant.identity.clone(),
            hidden: permission.is_some_and(|p| p.hidden),
            can_publish_data: permission.is_some_and(|p| p.can_publish_data),
        }
    }
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

/// A stream's row, locked for the rest of the transaction.
pub struct LockedRoom {
    pub streamer: Uuid,
    pub is_live: bool,
    /// The LiveKit room instance `CreateRoom` made for this stream.
    pub room_sid: Option<String>,
}

impl LockedRoom {
    /// Whether an event about room instance `sid` is about this stream's
    /// room. LiveKit always sends the sid; an event without one is taken as ours.
    pub fn is_instance(&self, sid: &str) -> bool {
        sid.is_empty() || self.room_sid.as_deref().is_none_or(|ours| ours == sid)
    }
}

/// Locks the stream's row for the rest of the transaction, or `None` for a
/// room we do not know.
pub async fn lock_room(tx: &Transaction<'_>, room: &RoomName) -> Result<Option<LockedRoom>, ApiError> {
    let row = tx
        .query_typed_opt(
            "SELECT streamer_id, is_live, room_sid FROM live_streams WHERE id = $1 FOR NO KEY UPDATE",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    row.map(|row| {
        Ok(LockedRoom {
            streamer: row.try_get(0).map_err(ApiError::internal)?,
            is_live: row.try_get(1).map_err(ApiError::internal)?,
            room_sid: row.try_get(2).map_err(ApiError::internal)?,
        })
    })
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
         SET left_at = COALESCE(live_participant_sessions.left_at, now()),
             closed_by_reconciler = false, updated_at = now()",
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

/// Makes the sessions match who LiveKit listed in the room at `listed_at`
/// (the database's clock, read before `ListParticipants` was called).
///
/// A session written after `listed_at` (a join that committed while the
/// listing was on its way) is newer than the listing and stays open. A
/// session the listing has is reopened only if a previous run closed it,
/// never if its leave event was seen: that leave may be newer than the listing.
pub async fn sync(
    tx: &Transaction<'_>,
    room: &RoomName,
    streamer: Uuid,
    present: &[Presence],
    listed_at: DateTime<Utc>,
) -> Result<(), ApiError> {
    let sids: Vec<&str> = present.iter().map(|p| p.sid.as_str()).collect();
    let identities: Vec<&str> = present.iter().map(|p| p.identity.as_str()).collect();
    let counts: Vec<bool> = present.iter().map(|p| counted(p, streamer)).collect();
    tx.query_typed(
        "UPDATE live_participant_sessions
         SET left_at = now(), closed_by_reconciler = true, updated_at = now()
         WHERE room_name = $1 AND left_at IS NULL AND NOT (sid = ANY($2)) AND updated_at < $3",
        &[
            (&room.as_str(), Type::TEXT),
            (&sids, Type::TEXT_ARRAY),
            (&listed_at, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    tx.query_typed(
        "INSERT INTO live_participant_sessions AS s (room_name, sid, identity, counted, joined)
         SELECT $1, p.sid, p.identity, p.counted, true
         FROM unnest($2::text[], $3::text[], $4::bool[]) AS p (sid, identity, counted)
         ON CONFLICT (room_name, sid) DO UPDATE
         SET joined = true,
             left_at = CASE WHEN s.closed_by_reconciler THEN NULL ELSE s.left_at END,
             closed_by_reconciler = false,
             updated_at = now()",
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
