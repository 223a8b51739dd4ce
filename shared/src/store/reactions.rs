//! Reactions (migration 0012): viewers tap hearts, claps and the like; each
//! tap is counted per stream and kind (in 16 shards, by user, so a room full
//! of tapping viewers does not queue on one row) and the room hears of them
//! in aggregate: one lossy packet per room at most every
//! [`BROADCAST_INTERVAL`], carrying how many of each kind arrived since the
//! last one and the totals so far, never one packet per tap.
//!
//! The tap that finds the room's broadcast lease free takes it and sends,
//! in the same statement that counts it (`live_react`); taps while the lease
//! is held are only counted, and the next tap after it, or the flusher within
//! about a second, sends them. The packet, on topic `reactions` with no
//! sender, is `{"event":"reactions","roomName","counts":{kind:n},"totals":{kind:n}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::store::rate_limit::Limit;

/// The topic of the aggregated reaction packets.
pub const REACTIONS_TOPIC: &str = "reactions";
/// At most one packet per room this often.
pub const BROADCAST_INTERVAL: Duration = Duration::from_millis(250);
/// What a tap's answer keeps, after a packet LiveKit did not take in time,
/// for giving its mark back: a pooled connection's check and one statement.
const GIVE_BACK_TIME: Duration = Duration::from_millis(500);

/// The reactions there are. A fixed set: the client draws each one, and
/// counts per kind stay a handful of rows per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReactionKind {
    Heart,
    Clap,
    Laugh,
    Wow,
    Fire,
}

impl ReactionKind {
    pub const ALL: [ReactionKind; 5] = [
        ReactionKind::Heart,
        ReactionKind::Clap,
        ReactionKind::Laugh,
        ReactionKind::Wow,
        ReactionKind::Fire,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReactionKind::Heart => "heart",
            ReactionKind::Clap => "clap",
            ReactionKind::Laugh => "laugh",
            ReactionKind::Wow => "wow",
            ReactionKind::Fire => "fire",
        }
    }
}

/// Counts per kind; kinds with none are left out.
pub type ReactionCounts = BTreeMap<ReactionKind, i64>;

/// What one packet tells the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename = "reactions", rename_all = "camelCase")]
pub struct ReactionBroadcast {
    pub room_name: RoomName,
    /// Reactions since the previous packet.
    pub counts: ReactionCounts,
    /// Every reaction of the stream so far.
    pub totals: ReactionCounts,
}

impl ReactionBroadcast {
    pub fn payload(&self) -> Result<Vec<u8>, ApiError> {
        serde_json::to_vec(self).map_err(ApiError::internal)
    }
}

fn counts(text: Option<String>) -> Result<Option<ReactionCounts>, ApiError> {
    text.map(|text| serde_json::from_str(&text).map_err(ApiError::internal))
        .transpose()
}

/// Counts one reaction of `user` in `room` (rate limit, stream and ban
/// checked in the same statement) and, when this tap takes the room's
/// broadcast lease, returns what the room should be told now.
pub async fn react(
    client: &Client,
    room: &RoomName,
    user: Uuid,
    kind: ReactionKind,
    limit: Limit,
) -> Result<Option<ReactionBroadcast>, ApiError> {
    let key = format!("reaction:{user}");
    let interval = BROADCAST_INTERVAL.as_secs_f64();
    let row = client
        .query_typed_one(
            "SELECT retry_after, streamer_id, is_live, banned, counts::text, totals::text
             FROM live_react($1, $2, $3, $4, $5, $6, make_interval(secs => $7))",
            &[
                (&room.as_str(), Type::TEXT),
                (&user, Type::UUID),
                (&kind.as_str(), Type::TEXT),
                (&key, Type::TEXT),
                (&limit.window_seconds(), Type::FLOAT8),
                (&limit.max_hits(), Type::INT8),
                (&interval, Type::FLOAT8),
            ],
        )
        .await?;
    let retry_after: Option<i64> = row.try_get("retry_after").map_err(ApiError::internal)?;
    if retry_after.is_some() {
        return Err(crate::store::rate_limit::limited(retry_after));
    }
    let streamer: Option<Uuid> = row.try_get("streamer_id").map_err(ApiError::internal)?;
    if streamer.is_none() {
        return Err(ApiError::StreamNotFound);
    }
    if !row.try_get::<_, bool>("is_live").map_err(ApiError::internal)? {
        return Err(ApiError::StreamEnded);
    }
    if row.try_get::<_, bool>("banned").map_err(ApiError::internal)? {
        return Err(ApiError::Banned);
    }
    let (Some(counts), Some(totals)) = (
        counts(row.try_get(4).map_err(ApiError::internal)?)?,
        counts(row.try_get(5).map_err(ApiError::internal)?)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(ReactionBroadcast {
        room_name: room.clone(),
        counts,
        totals,
    }))
}

/// Gives back the mark of a packet that was not sent (LiveKit down, or too
/// slow for the request), unless a later packet has moved it since, and
/// frees the room's lease: the next tap or the flusher sends the totals
/// (migration 0051). Otherwise the last taps of a room could be counted and
/// never told. A packet that did reach the room after all is told again,
/// which is harmless: clients take `totals`.
pub async fn unsent(client: &Client, broadcast: &ReactionBroadcast) -> Result<(), ApiError> {
    all_unsent(client, vec![broadcast]).await
}

/// [`unsent`] for many rooms in one statement (the flusher's rooms its tick
/// did not tell), in the order of their names, so two such statements never
/// take the same rows in different orders. A mark given back already, or
/// moved by a later packet, is left as it is.
pub async fn all_unsent(client: &Client, mut broadcasts: Vec<&ReactionBroadcast>) -> Result<(), ApiError> {
    broadcasts.sort_by(|a, b| a.room_name.as_str().cmp(b.room_name.as_str()));
    let mut rooms = Vec::with_capacity(broadcasts.len());
    let mut totals = Vec::with_capacity(broadcasts.len());
    let mut counts = Vec::with_capacity(broadcasts.len());
    for broadcast in broadcasts {
        rooms.push(broadcast.room_name.as_str());
        totals.push(serde_json::to_string(&broadcast.totals).map_err(ApiError::internal)?);
        counts.push(serde_json::to_string(&broadcast.counts).map_err(ApiError::internal)?);
    }
    client
        .query_typed(
            "SELECT live_reactions_unsent(u.room, u.totals::jsonb, u.counts::jsonb)
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u(room, totals, counts)",
            &[
                (&rooms, Type::TEXT_ARRAY),
                (&totals, Type::TEXT_ARRAY),
                (&counts, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(())
}

/// Sends `broadcast` into its room over the lossy channel and says whether
/// it went; one that did not gets its mark back ([`unsent`]). Under a
/// deadline (a tap's answer, the flusher's budget for LiveKit) the send
/// stops early enough for that to follow in time.
pub async fn send(state: &crate::AppState, broadcast: &ReactionBroadcast) -> bool {
    let room = &broadcast.room_name;
    match broadcast.payload() {
        Ok(payload) => {
            let sending = state.livekit.send_lossy(room, REACTIONS_TOPIC, payload);
            match crate::livekit::before_the_answer_leaving(GIVE_BACK_TIME, sending).await {
                Ok(()) => return true,
                Err(error) => tracing::warn!(%room, %error, "reactions counted; their packet was not sent"),
            }
        }
        Err(error) => tracing::error!(%room, %error, "cannot encode a reactions packet"),
    }
    let given_back = async {
        let client = state.db.get().await?;
        unsent(&client, broadcast).await
    };
    // The tap is counted: its answer must come in time even if giving the
    // mark back cannot (a held row, a reconnect), or the app taps again.
    match crate::store::db::while_the_answer_can_wait(given_back).await {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::warn!(%room, %error, "an unsent reactions packet kept its mark; the next tap sends the totals")
        }
        None => tracing::warn!(
            %room,
            "an unsent reactions packet kept its mark, out of the tap's time; the next tap sends the totals"
        ),
    }
    false
}

/// The broadcasts taps left for the flusher: every live room whose counts
/// are ahead of what it was told and whose lease is free.
pub async fn flush(client: &Client) -> Result<Vec<ReactionBroadcast>, ApiError> {
    let interval = BROADCAST_INTERVAL.as_secs_f64();
    let rows = client
        .query_typed(
            "SELECT room_name, counts::text, totals::text FROM live_flush_reactions(make_interval(secs => $1))",
            &[(&interval, Type::FLOAT8)],
        )
        .await?;
    rows.into_iter()
        .map(|row| {
            let room: String = row.try_get(0).map_err(ApiError::internal)?;
            Ok(ReactionBroadcast {
                room_name: RoomName::parse(room).map_err(ApiError::internal)?,
                counts: counts(row.try_get(1).map_err(ApiError::internal)?)?.unwrap_or_default(),
                totals: counts(row.try_get(2).map_err(ApiError::internal)?)?.unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_lowercase_names_the_database_checks() {
        for kind in ReactionKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ReactionKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<ReactionKind>("\"poop\"").is_err());
    }

    #[test]
    fn the_packet_names_its_event_room_and_counts() {
        let broadcast = ReactionBroadcast {
            room_name: RoomName::parse("room-1".into()).unwrap(),
            counts: [(ReactionKind::Heart, 3)].into_iter().collect(),
            totals: [(ReactionKind::Heart, 5), (ReactionKind::Fire, 1)]
                .into_iter()
                .collect(),
        };
        let packet: serde_json::Value = serde_json::from_slice(&broadcast.payload().unwrap()).unwrap();
        assert_eq!(
            packet,
            serde_json::json!({
                "event": "reactions",
                "roomName": "room-1",
                "counts": {"heart": 3},
                "totals": {"heart": 5, "fire": 1},
            })
        );
    }
}
