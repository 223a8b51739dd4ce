//! Who is in each room, from LiveKit webhooks and from the reconciler, and the
//! viewer count that follows from it (migration 0009).
//!
//! State, not arithmetic: each participant session (LiveKit's `sid`) is a row,
//! present once its join was seen and until its leave was seen, so duplicate,
//! late or out-of-order events cannot drive the count wrong or negative. A
//! change touches only its session, the identity's presence and one of the
//! room's 16 count shards, never the stream's row: a burst of joins into one
//! room runs side by side. Reads sum the shards; `live_streams.viewer_count`
//! is a copy for Realtime subscribers, written at most once a second per room.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::store::chat::Standing;
use crate::store::stage::StageStanding;

/// A participant as LiveKit reports it, in a webhook or a listing: the
/// streamer, hidden participants and those that are not people watching are
/// not viewers.
#[derive(Debug, Clone)]
pub struct Presence {
    pub sid: String,
    pub identity: String,
    /// The display name from their token (shown in the viewer list).
    pub name: String,
    /// Hidden (a recorder), or not a person watching: an agent, an ingress
    /// (OBS publishing into the room), an egress, a SIP caller, a connector,
    /// or a user's publish-only side connection ([`Presence::side_connection_of`]).
    /// Neither counted, listed nor held to the viewers' rules.
    pub not_audience: bool,
    /// The user whose publish-only side connection this is: LiveKit admits a
    /// second connection on any token that may publish when the client asks
    /// for it (`/rtc?publish=<name>`), as `<identity>#<name>`, subscribing
    /// nothing. It watches nothing, so it is not counted, but it publishes:
    /// the room rules remove it unless it is the streamer's.
    pub side_connection_of: Option<Uuid>,
    /// The permission the participant has in the room now.
    pub can_publish: bool,
    pub can_publish_data: bool,
    /// What their attributes say of the stage.
    pub stage: StageStanding,
    /// Their token marked them a Supabase anonymous sign-in.
    pub anonymous: bool,
    /// When LiveKit says they joined, if it says.
    pub joined_at: Option<DateTime<Utc>>,
}

impl From<&livekit_protocol::ParticipantInfo> for Presence {
    fn from(participant: &livekit_protocol::ParticipantInfo) -> Presence {
        let permission = participant.permission.as_ref();
        let not_a_viewer = permission.is_some_and(|p| p.hidden)
            || participant.kind != livekit_protocol::participant_info::Kind::Standard as i32;
        let side_connection_of = if not_a_viewer {
            None
        } else {
            participant
                .identity
                .split_once('#')
                .and_then(|(user, _)| Uuid::parse_str(user).ok())
        };
        Presence {
            sid: participant.sid.clone(),
            identity: participant.identity.clone(),
            name: participant.name.clone(),
            not_audience: not_a_viewer || side_connection_of.is_some(),
            side_connection_of,
            can_publish: permission.is_some_and(|p| p.can_publish),
            can_publish_data: permission.is_some_and(|p| p.can_publish_data),
            stage: StageStanding::from_attributes(&participant.attributes),
            anonymous: crate::livekit::is_anonymous(&participant.attributes),
            joined_at: if participant.joined_at_ms > 0 {
                DateTime::from_timestamp_millis(participant.joined_at_ms)
            } else {
                DateTime::from_timestamp(participant.joined_at, 0).filter(|_| participant.joined_at > 0)
            },
        }
    }
}

impl Presence {
    /// The identity as one of our users, when it is one.
    pub fn user(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.identity).ok()
    }

    /// The user this connection is of: their own, or a side connection of
    /// theirs.
    pub fn owner(&self) -> Option<Uuid> {
        self.user().or(self.side_connection_of)
    }
}

/// A participant's join or leave, as LiveKit reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    Joined,
    /// They left, were removed, or the room closed.
    Left,
    /// Their connection was lost, or replaced by a new one of theirs (a
    /// client's full reconnect joins as a new participant): for the count a
    /// leave, but a guest keeps the stage for `STAGE_RETURN_SECONDS`
    /// (migration 0028).
    Dropped,
}

impl SessionChange {
    /// A `participant_left` by LiveKit's `disconnect_reason`. Servers that
    /// report none (`UNKNOWN_REASON`) get the leave they always got. `None`
    /// for a migration: the participant is moving to another node, not
    /// leaving. A move that resumes the session keeps its sid, and the join
    /// the new node may tell changes nothing for a session still open, while
    /// closing it here would lose the viewer from the count until they left.
    /// A move the new node cannot resume (LiveKit v1.13.5 refuses to resume
    /// a participant it does not hold, and the client joins afresh) opens a
    /// new session of the same identity, counted once; the reconciler closes
    /// the old one, which LiveKit no longer lists.
    pub fn left_because(reason: i32) -> Option<SessionChange> {
        use livekit_protocol::DisconnectReason as Reason;
        Some(match Reason::try_from(reason) {
            Ok(Reason::Migration) => return None,
            Ok(
                Reason::DuplicateIdentity
                | Reason::ServerShutdown
                | Reason::SignalClose
                | Reason::ConnectionTimeout
                | Reason::MediaFailure
                | Reason::JoinFailure
                | Reason::StateMismatch,
            ) => SessionChange::Dropped,
            _ => SessionChange::Left,
        })
    }
}

/// What a participant event did, and what the room must enforce about them.
pub struct EventApplied {
    /// `applied`, `duplicate` (event id seen before) or `ignored` (unknown
    /// room, another instance of it, or a stream that has ended). A leave of
    /// a session still open here is applied whatever the instance (0041).
    pub outcome: String,
    /// `None` for a room we do not know (or another instance of it).
    pub streamer: Option<Uuid>,
    pub is_live: bool,
    pub standing: Standing,
    /// The count this event wrote into `live_streams` (at most once a second
    /// per room), to push into the room too.
    pub count_written: Option<i32>,
}

/// The webhook event a participant change comes from.
#[derive(Debug, Clone, Copy)]
pub struct EventSource<'a> {
    /// LiveKit's event id, by which a repeated delivery is known.
    pub id: &'a str,
    /// When LiveKit created the event: a join waits in the room's webhook
    /// queue behind others, and is not late for that.
    pub made_at: Option<DateTime<Utc>>,
}

/// Applies one participant event in one statement (`live_participant_event`).
/// A join made more than `stage_return` after its user's connection was lost
/// ends the stage standing that waited for them (migration 0054), as the
/// reconciler would have.
pub async fn participant_event(
    client: &Client,
    event: EventSource<'_>,
    room: &RoomName,
    room_sid: &str,
    change: SessionChange,
    who: &Presence,
    stage_return: std::time::Duration,
) -> Result<EventApplied, ApiError> {
    let change = match change {
        SessionChange::Joined => "join",
        SessionChange::Left => "leave",
        SessionChange::Dropped => "drop",
    };
    let row = client
        .query_typed_one(
            "SELECT outcome, streamer_id, is_live, banned, muted, hand_raised, invited, on_stage, count_written
             FROM live_participant_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                (&event.id, Type::TEXT),
                (&room.as_str(), Type::TEXT),
                (&room_sid, Type::TEXT),
                (&change, Type::TEXT),
                (&who.sid.as_str(), Type::TEXT),
                (&who.identity.as_str(), Type::TEXT),
                (&who.user(), Type::UUID),
                (&who.not_audience, Type::BOOL),
                (&who.name.as_str(), Type::TEXT),
                (&stage_return.as_secs_f64(), Type::FLOAT8),
                (&event.made_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    let flag = |name: &str| -> Result<bool, ApiError> {
        Ok(row
            .try_get::<_, Option<bool>>(name)
            .map_err(ApiError::internal)?
            .unwrap_or(false))
    };
    Ok(EventApplied {
        outcome: row.try_get("outcome").map_err(ApiError::internal)?,
        streamer: row.try_get("streamer_id").map_err(ApiError::internal)?,
        is_live: flag("is_live")?,
        standing: Standing {
            banned: flag("banned")?,
            muted: flag("muted")?,
            stage: StageStanding {
                hand_raised: flag("hand_raised")?,
                invited: flag("invited")?,
                on_stage: flag("on_stage")?,
            },
        },
        count_written: row.try_get("count_written").map_err(ApiError::internal)?,
    })
}

/// The stream of `room` and `user`'s standing there, for a join LiveKit
/// delivered again: the first delivery recorded the event but may have died
/// before LiveKit was made to enforce the standing, and the retry is all that
/// is left to do it. Whatever the instance the join was in, as for a first
/// delivery (migration 0034): the standing is the user's in the room name.
/// `None` for a room we do not know.
pub async fn standing_at_join(
    client: &Client,
    room: &RoomName,
    user: Uuid,
) -> Result<Option<(Uuid, bool, Standing)>, ApiError> {
    let stream = client
        .query_typed_opt(
            "SELECT streamer_id, is_live FROM live_streams WHERE id = $1",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    let Some(stream) = stream else { return Ok(None) };
    let streamer = stream.try_get(0).map_err(ApiError::internal)?;
    let is_live = stream.try_get(1).map_err(ApiError::internal)?;
    let standing = crate::store::chat::standings_among(client, room, &[user])
        .await?
        .remove(&user)
        .unwrap_or_default();
    Ok(Some((streamer, is_live, standing)))
}

/// Makes the sessions match who LiveKit listed in the room at `listed_at`
/// (the database's clock, read before `ListParticipants` was called); see
/// `live_sync_sessions`. A session written after `listed_at` (a join that
/// committed while the listing was on its way) is newer than the listing and
/// stays; a listed session is reopened only if a previous run closed it,
/// never if its leave event was seen. A listed session no webhook told of
/// (a join LiveKit dropped) is a join as of when LiveKit says it joined: a
/// guest back after `stage_return` is off the stage (migration 0054).
/// Returns how many sessions changed.
pub async fn sync(
    client: &Client,
    room: &RoomName,
    streamer: Uuid,
    present: &[Presence],
    listed_at: DateTime<Utc>,
    stage_return: std::time::Duration,
) -> Result<i32, ApiError> {
    let sids: Vec<&str> = present.iter().map(|p| p.sid.as_str()).collect();
    let identities: Vec<&str> = present.iter().map(|p| p.identity.as_str()).collect();
    let names: Vec<&str> = present.iter().map(|p| p.name.as_str()).collect();
    let joined_at: Vec<Option<DateTime<Utc>>> = present.iter().map(|p| p.joined_at).collect();
    let counted: Vec<bool> = present
        .iter()
        .map(|p| !p.not_audience && p.user() != Some(streamer))
        .collect();
    let row = client
        .query_typed_one(
            "SELECT live_sync_sessions($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                (&room.as_str(), Type::TEXT),
                (&listed_at, Type::TIMESTAMPTZ),
                (&sids, Type::TEXT_ARRAY),
                (&identities, Type::TEXT_ARRAY),
                (&counted, Type::BOOL_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&joined_at, Type::TIMESTAMPTZ_ARRAY),
                (&stage_return.as_secs_f64(), Type::FLOAT8),
            ],
        )
        .await?;
    row.try_get(0).map_err(ApiError::internal)
}

/// LiveKit's room is gone: the stream ends as `/live/end` would end it (with
/// `grace`, only once the room has been missing that long). Returns whether
/// the stream ended now.
pub async fn finish(
    client: &impl GenericClient,
    room: &RoomName,
    grace: Option<Duration>,
) -> Result<bool, ApiError> {
    let grace_seconds = grace.map(|g| g.as_secs_f64());
    let row = client
        .query_typed_one(
            "SELECT live_finish_stream($1, make_interval(secs => $2))",
            &[(&room.as_str(), Type::TEXT), (&grace_seconds, Type::FLOAT8)],
        )
        .await?;
    row.try_get(0).map_err(ApiError::internal)
}

/// Copies the exact counts into `live_streams.viewer_count` for every live
/// room whose copy is stale and a second old (`live_flush_viewer_counts`):
/// the trailing update a burst's last events could not write. Returns the
/// rooms written, with their counts.
pub async fn flush(client: &Client) -> Result<Vec<(RoomName, i32)>, ApiError> {
    let rows = client
        .query_typed(
            "SELECT room_name, viewer_count FROM live_flush_viewer_counts()",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let room: String = row.try_get(0).map_err(ApiError::internal)?;
            Ok((
                RoomName::parse(room).map_err(ApiError::internal)?,
                row.try_get(1).map_err(ApiError::internal)?,
            ))
        })
        .collect()
}

/// A viewer present in a room now, for the viewer list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Viewer {
    /// Their LiveKit identity: the user id for every token this API mints.
    pub user_id: String,
    pub display_name: Option<String>,
    /// When they arrived (their first session of those present).
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub joined_at: DateTime<Utc>,
}

/// Where a page of viewers starts: after this one (arrival order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerKey {
    pub joined_at: DateTime<Utc>,
    pub identity: String,
}

/// The room's present viewers in arrival order, from the presence rows the
/// webhooks keep (never a `ListParticipants` per request): the streamer and
/// hidden participants are not in them. One index range scan.
pub async fn present_page(
    client: &Client,
    room: &RoomName,
    after: Option<&ViewerKey>,
    limit: i64,
) -> Result<Vec<Viewer>, ApiError> {
    let (after_at, after_identity) = match after {
        Some(key) => (Some(key.joined_at), Some(key.identity.as_str())),
        None => (None, None),
    };
    let rows = client
        .query_typed(
            "SELECT identity, display_name, joined_at FROM live_presence
             WHERE room_name = $1
               AND ($2::timestamptz IS NULL OR (joined_at, identity) > ($2, $3::text))
             ORDER BY joined_at, identity
             LIMIT $4",
            &[
                (&room.as_str(), Type::TEXT),
                (&after_at, Type::TIMESTAMPTZ),
                (&after_identity, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Viewer {
                user_id: row.try_get(0).map_err(ApiError::internal)?,
                display_name: row.try_get(1).map_err(ApiError::internal)?,
                joined_at: row.try_get(2).map_err(ApiError::internal)?,
            })
        })
        .collect()
}

/// The exact count of a room: its shards summed (16 rows).
pub async fn count(client: &Client, room: &RoomName) -> Result<i32, ApiError> {
    let row = client
        .query_typed_one("SELECT live_viewer_count($1)", &[(&room.as_str(), Type::TEXT)])
        .await?;
    row.try_get(0).map_err(ApiError::internal)
}
