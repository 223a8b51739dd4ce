//! Chat messages and moderation state in Postgres.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Row, Transaction};
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::store::rate_limit::Limit;
use crate::store::stage::StageStanding;

/// A chat message as clients see it, in responses and in the broadcast.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: Uuid,
    pub room_name: RoomName,
    pub user_id: Uuid,
    pub text: String,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}

fn message_from_row(row: &Row) -> Result<ChatMessage, ApiError> {
    let room: String = row.try_get("room_name").map_err(ApiError::internal)?;
    Ok(ChatMessage {
        id: row.try_get("id").map_err(ApiError::internal)?,
        room_name: RoomName::parse(room).map_err(ApiError::internal)?,
        user_id: row.try_get("user_id").map_err(ApiError::internal)?,
        text: row.try_get("text").map_err(ApiError::internal)?,
        created_at: row.try_get("created_at").map_err(ApiError::internal)?,
    })
}

/// What became of a post (`live_chat_say`, migrations 0022 and 0057).
pub enum PostOutcome {
    /// Stored: the message and its place in the room's order (`seq`).
    Posted(ChatMessage, i64),
    /// A retry of a post that was stored: the message as stored.
    Repeated(ChatMessage, i64),
    /// The id the post named is of the caller's own message in this room,
    /// deleted since.
    Deleted,
    /// The id the post named belongs to another message.
    IdTaken,
    NotFound,
    Ended,
    Banned,
    Muted,
    /// Over the caller's limit for this room; seconds until a post is admitted.
    RateLimited(i64),
}

/// Checks and stores a message in one round trip: under the room's standing
/// lock (so an end or a ban is either seen or ordered after the post), the
/// stream and the caller's restrictions, then the rate-limit hit, then the
/// insert, which holds the room's chat-order lock from its `seq` to its
/// commit, so [`unsent`] never reads past a post in flight. A post naming
/// the `id` of a message stored before is answered with it, before any check.
pub async fn post(
    client: &Client,
    room: &RoomName,
    user: Uuid,
    text: &str,
    id: Option<Uuid>,
    limit_key: &str,
    limit: Limit,
) -> Result<PostOutcome, ApiError> {
    let (window, max) = (limit.window_seconds(), limit.max_hits());
    let row = client
        .query_typed_one(
            "SELECT outcome, retry_after, id, room_name, user_id, text, created_at, seq
             FROM live_chat_say($1, $2, $3, $4, $5, $6, $7)",
            &[
                (&room.as_str(), Type::TEXT),
                (&user, Type::UUID),
                (&text, Type::TEXT),
                (&limit_key, Type::TEXT),
                (&window, Type::FLOAT8),
                (&max, Type::INT8),
                (&id, Type::UUID),
            ],
        )
        .await?;
    let outcome: String = row.try_get("outcome").map_err(ApiError::internal)?;
    Ok(match outcome.as_str() {
        "posted" => PostOutcome::Posted(
            message_from_row(&row)?,
            row.try_get("seq").map_err(ApiError::internal)?,
        ),
        "repeated" => PostOutcome::Repeated(
            message_from_row(&row)?,
            row.try_get("seq").map_err(ApiError::internal)?,
        ),
        "deleted" => PostOutcome::Deleted,
        "id_taken" => PostOutcome::IdTaken,
        "not_found" => PostOutcome::NotFound,
        "ended" => PostOutcome::Ended,
        "banned" => PostOutcome::Banned,
        "muted" => PostOutcome::Muted,
        "rate_limited" => PostOutcome::RateLimited(row.try_get("retry_after").map_err(ApiError::internal)?),
        other => return Err(ApiError::internal(format!("live_chat_say answered {other:?}"))),
    })
}

/// A room's batch lease, held until `until`: what it was taken on, and the
/// name it is let go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLease {
    /// Every message of the room up to this seq had been sent.
    pub sent_up_to: i64,
    pub until: DateTime<Utc>,
    /// `until` on this machine's clock, never later than it: the hold
    /// counted from before the lease was asked for. A holder sends nothing
    /// it cannot finish before then, or the next holder's batch, taken once
    /// the lease lapses, would overlap its own.
    pub held_until: std::time::Instant,
    /// How long the holder waits before sending: what is left of the spacing
    /// since the room's last batch, zero in a room that has been quiet.
    pub send_in: std::time::Duration,
}

/// Takes the room's batch lease for `hold` (`live_chat_take_batch_lease`),
/// `None` when another poster is sending. Batches are at least `spacing`
/// apart: the lease says how long of it is left.
pub async fn take_batch_lease(
    client: &Client,
    room: &RoomName,
    hold: std::time::Duration,
    spacing: std::time::Duration,
) -> Result<Option<BatchLease>, ApiError> {
    let (hold_seconds, spacing_seconds) = (hold.as_secs_f64(), spacing.as_secs_f64());
    let asked_at = std::time::Instant::now();
    let row = client
        .query_typed_opt(
            "SELECT sent_up_to, lease_until, send_in FROM live_chat_take_batch_lease(
                 $1, make_interval(secs => $2), make_interval(secs => $3))",
            &[
                (&room.as_str(), Type::TEXT),
                (&hold_seconds, Type::FLOAT8),
                (&spacing_seconds, Type::FLOAT8),
            ],
        )
        .await?;
    row.map(|row| {
        let send_in: f64 = row.try_get("send_in").map_err(ApiError::internal)?;
        Ok(BatchLease {
            sent_up_to: row.try_get("sent_up_to").map_err(ApiError::internal)?,
            until: row.try_get("lease_until").map_err(ApiError::internal)?,
            held_until: asked_at + hold,
            // At most the spacing, whatever the clocks say.
            send_in: std::time::Duration::try_from_secs_f64(send_in)
                .unwrap_or_default()
                .min(spacing),
        })
    })
    .transpose()
}

/// The room's messages after `after` in order, at most `limit`, each with its
/// seq: `None` for a deleted one (it is not sent, but counts as sent).
/// `live_chat_unsent` first waits for the room's posts in flight: one that
/// took a smaller seq but commits later is read, not skipped.
pub async fn unsent(
    client: &Client,
    room: &RoomName,
    after: i64,
    limit: i64,
) -> Result<Vec<(Option<ChatMessage>, i64)>, ApiError> {
    let rows = client
        .query_typed(
            "SELECT id, room_name, user_id, text, created_at, seq, deleted FROM live_chat_unsent($1, $2, $3)",
            &[
                (&room.as_str(), Type::TEXT),
                (&after, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let deleted: bool = row.try_get("deleted").map_err(ApiError::internal)?;
            let seq = row.try_get("seq").map_err(ApiError::internal)?;
            Ok((
                if deleted {
                    None
                } else {
                    Some(message_from_row(row)?)
                },
                seq,
            ))
        })
        .collect()
}

/// Records the room's messages up to `sent` as sent and lets `lease` go if
/// it is still the room's (`live_chat_batch_done`): a holder that outlived
/// it leaves the lease of the poster that took over alone. Returns whether
/// more are waiting.
pub async fn batch_sent(
    client: &Client,
    room: &RoomName,
    sent: i64,
    lease: &BatchLease,
) -> Result<bool, ApiError> {
    let row = client
        .query_typed_one(
            "SELECT live_chat_batch_done($1, $2, $3)",
            &[
                (&room.as_str(), Type::TEXT),
                (&sent, Type::INT8),
                (&lease.until, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    row.try_get(0).map_err(ApiError::internal)
}

/// Lets go of a batch's lease after its send failed, recording nothing sent
/// but the attempt's time: the room's next attempt waits out the batch
/// interval as after a sent batch (migration 0052), so posts to a room LiveKit
/// refuses do not each call it at once.
pub async fn batch_failed(client: &Client, room: &RoomName, lease: &BatchLease) -> Result<(), ApiError> {
    client
        .query_typed(
            "SELECT live_chat_batch_failed($1, $2)",
            &[(&room.as_str(), Type::TEXT), (&lease.until, Type::TIMESTAMPTZ)],
        )
        .await?;
    Ok(())
}

/// Live rooms with messages nobody has sent for a second: a batch whose
/// sender stopped early, or gave up when LiveKit failed, or a room's first
/// message whose request stopped before any batch of the room ran (the room
/// has no batch row yet: nothing of it was ever sent).
pub async fn rooms_with_stale_messages(client: &Client) -> Result<Vec<RoomName>, ApiError> {
    let rows = client
        .query_typed(
            "SELECT s.id FROM live_streams s LEFT JOIN live_chat_broadcasts b ON b.room_name = s.id
             WHERE s.is_live AND coalesce(b.lease_until < clock_timestamp(), true) AND EXISTS (
                 SELECT FROM live_messages m
                 WHERE m.room_name = s.id AND m.seq > coalesce(b.sent_up_to, 0)
                   AND m.created_at < clock_timestamp() - interval '1 second')",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(ApiError::internal)?;
            RoomName::parse(id).map_err(ApiError::internal)
        })
        .collect()
}

/// Whether the room exists at all (history is readable after the stream
/// ends), and whether `before`, when given, is one of its messages (a deleted
/// one still marks a place).
pub async fn history_start(
    client: &Client,
    room: &RoomName,
    before: Option<Uuid>,
) -> Result<(bool, bool), ApiError> {
    let row = client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM live_streams WHERE id = $1),
                    $2::uuid IS NULL OR EXISTS (SELECT 1 FROM live_messages WHERE id = $2 AND room_name = $1)",
            &[(&room.as_str(), Type::TEXT), (&before, Type::UUID)],
        )
        .await?;
    Ok((
        row.try_get(0).map_err(ApiError::internal)?,
        row.try_get(1).map_err(ApiError::internal)?,
    ))
}

/// A page of a room's visible messages, newest first in the order the room
/// received them (seq, migration 0055), before `before`.
pub async fn page(
    client: &Client,
    room: &RoomName,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ChatMessage>, ApiError> {
    let rows = client
        .query_typed(
            "SELECT id, room_name, user_id, text, created_at FROM live_messages
             WHERE room_name = $1 AND deleted_at IS NULL
               AND ($2::uuid IS NULL OR seq < (
                    SELECT seq FROM live_messages WHERE id = $2 AND room_name = $1))
             ORDER BY seq DESC
             LIMIT $3",
            &[
                (&room.as_str(), Type::TEXT),
                (&before, Type::UUID),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(message_from_row).collect()
}

/// A message, who may delete it, and whether its stream is still live (a
/// room to tell of its deletion).
pub struct MessageOwnership {
    pub room: RoomName,
    pub author: Uuid,
    pub streamer: Uuid,
    pub live: bool,
}

pub async fn ownership(client: &Client, message: Uuid) -> Result<Option<MessageOwnership>, ApiError> {
    let row = client
        .query_typed_opt(
            "SELECT m.room_name, m.user_id, s.streamer_id, s.is_live
             FROM live_messages m JOIN live_streams s ON s.id = m.room_name
             WHERE m.id = $1",
            &[(&message, Type::UUID)],
        )
        .await?;
    row.map(|row| {
        let room: String = row.try_get(0).map_err(ApiError::internal)?;
        Ok(MessageOwnership {
            room: RoomName::parse(room).map_err(ApiError::internal)?,
            author: row.try_get(1).map_err(ApiError::internal)?,
            streamer: row.try_get(2).map_err(ApiError::internal)?,
            live: row.try_get(3).map_err(ApiError::internal)?,
        })
    })
    .transpose()
}

/// Deletes the message for everyone: its row is blanked (Realtime sends an
/// updated row to subscribers, so the text must not be in it) and the text
/// moves to `live_message_deletions`, which no API user can read; a tombstone
/// (id, room, time) tells Realtime's subscribers, from whom the policy hides
/// the deleted row itself (migration 0048). `false` if it was already
/// deleted.
pub async fn soft_delete(tx: &Transaction<'_>, message: Uuid, by: Uuid) -> Result<bool, ApiError> {
    let rows = tx
        .query_typed(
            "WITH target AS (
                 SELECT id, room_name, user_id, text FROM live_messages
                 WHERE id = $1 AND deleted_at IS NULL
                 FOR UPDATE
             ), kept AS (
                 INSERT INTO live_message_deletions (message_id, room_name, author_id, original_text, deleted_by)
                 SELECT id, room_name, user_id, text, $2 FROM target
             ), tombstone AS (
                 INSERT INTO live_message_tombstones (message_id, room_name, deleted_at)
                 SELECT id, room_name, now() FROM target
             )
             UPDATE live_messages m SET text = '', deleted_at = now(), deleted_by = $2
             FROM target t WHERE m.id = t.id
             RETURNING m.id",
            &[(&message, Type::UUID), (&by, Type::UUID)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// The moderation actions, as stored in `live_moderation_actions.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Kick,
    Ban,
    Unban,
    Mute,
    Unmute,
    DeleteMessage,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kick => "kick",
            Action::Ban => "ban",
            Action::Unban => "unban",
            Action::Mute => "mute",
            Action::Unmute => "unmute",
            Action::DeleteMessage => "delete_message",
        }
    }
}

pub async fn record_action(
    tx: &Transaction<'_>,
    room: &RoomName,
    moderator: Uuid,
    target: Uuid,
    action: Action,
    message: Option<Uuid>,
) -> Result<(), ApiError> {
    tx.query_typed(
        "INSERT INTO live_moderation_actions (room_name, moderator_id, target_id, action, message_id)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            (&room.as_str(), Type::TEXT),
            (&moderator, Type::UUID),
            (&target, Type::UUID),
            (&action.as_str(), Type::TEXT),
            (&message, Type::UUID),
        ],
    )
    .await?;
    Ok(())
}

/// A user's standing in a room, as Postgres has it: what the streamer
/// restricted, and where they are on the stage. LiveKit must enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Standing {
    pub banned: bool,
    pub muted: bool,
    pub stage: StageStanding,
}

/// A moderation action as committed: the user's standing after it, and when
/// (Unix seconds, the database's clock).
pub struct Moderated {
    pub standing: Standing,
    pub at_unix_seconds: i64,
}

/// Applies `action` to `user`'s standing in `room` and records it, in one
/// statement (`live_moderate`, migration 0040: both commit together, with no
/// transaction left open), which reads the user's place on the stage once
/// the room's standing lock is held, so LiveKit is told no place older than
/// the database's.
pub async fn moderate(
    client: &Client,
    room: &RoomName,
    moderator: Uuid,
    user: Uuid,
    action: Action,
) -> Result<Moderated, ApiError> {
    // NULL leaves a flag as it is.
    let (banned, muted): (Option<bool>, Option<bool>) = match action {
        Action::Ban => (Some(true), None),
        Action::Unban => (Some(false), None),
        Action::Mute => (None, Some(true)),
        Action::Unmute => (None, Some(false)),
        Action::Kick | Action::DeleteMessage => (None, None),
    };
    let row = client
        .query_typed_one(
            "SELECT banned, muted, at_unix_seconds, hand_raised, invited, on_stage
             FROM live_moderate($1, $2, $3, $4, $5, $6)",
            &[
                (&room.as_str(), Type::TEXT),
                (&user, Type::UUID),
                (&banned, Type::BOOL),
                (&muted, Type::BOOL),
                (&moderator, Type::UUID),
                (&action.as_str(), Type::TEXT),
            ],
        )
        .await?;
    let flag = |i: usize| -> Result<bool, ApiError> {
        Ok(row
            .try_get::<_, Option<bool>>(i)
            .map_err(ApiError::internal)?
            .unwrap_or(false))
    };
    Ok(Moderated {
        standing: Standing {
            banned: flag(0)?,
            muted: flag(1)?,
            stage: StageStanding {
                hand_raised: flag(3)?,
                invited: flag(4)?,
                on_stage: flag(5)?,
            },
        },
        at_unix_seconds: row.try_get(2).map_err(ApiError::internal)?,
    })
}

/// The standing of those of `users` in `room` who are restricted or on the
/// stage in any way (everyone else has the default standing).
pub async fn standings_among(
    client: &impl GenericClient,
    room: &RoomName,
    users: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Standing>, ApiError> {
    if users.is_empty() {
        return Ok(Default::default());
    }
    let rows = client
        .query_typed(
            "SELECT u.user_id, coalesce(r.banned, false), coalesce(r.muted, false),
                    g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
             FROM unnest($2::uuid[]) AS u (user_id)
             LEFT JOIN live_room_restrictions r ON r.room_name = $1 AND r.user_id = u.user_id
             LEFT JOIN live_stage g ON g.room_name = $1 AND g.user_id = u.user_id
             WHERE r.banned OR r.muted OR g.hand_raised_at IS NOT NULL OR g.invited_at IS NOT NULL
                OR g.on_stage_since IS NOT NULL",
            &[(&room.as_str(), Type::TEXT), (&users, Type::UUID_ARRAY)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0).map_err(ApiError::internal)?,
                Standing {
                    banned: row.try_get(1).map_err(ApiError::internal)?,
                    muted: row.try_get(2).map_err(ApiError::internal)?,
                    stage: StageStanding {
                        hand_raised: row.try_get(3).map_err(ApiError::internal)?,
                        invited: row.try_get(4).map_err(ApiError::internal)?,
                        on_stage: row.try_get(5).map_err(ApiError::internal)?,
                    },
                },
            ))
        })
        .collect()
}
