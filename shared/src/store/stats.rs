//! A stream's stats, kept as events arrive (migration 0012) and read in one
//! statement of a few dozen rows whatever the audience: nothing is counted
//! by scanning sessions, messages or reactions at read time.
//!
//! - viewers now, unique viewers, watch time: the count shards (16, folded
//!   into one once the reconciler retires the ended stream, 0067). Each keeps
//!   the watch time of viewers who left and the sum of the present viewers'
//!   arrival times, so the watch time so far is `left + present × now − Σ arrivals`;
//!   when the stream ends the present viewers' time is added and the shards close;
//! - peak and when: exact per event (migration 0020): every join notes, on its
//!   own count shard, the total it brought the room to, and the peak is the
//!   highest of the shards'; the samples taken when the Realtime copy is
//!   written, and the count at the end, are kept as a floor (streams from
//!   before 0020); a live stream's current count counts too;
//! - chat messages: added once per chat batch (with the few a batch has not
//!   sent yet, while the stream is live; its end settles those, 0045);
//!   reactions: their shards;
//!   stage guests: once per viewer who ever went on stage.
//!
//! An ended stream's figures are final: its shards are closed, and chat,
//! reactions and the stage refuse an ended stream.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::store::reactions::ReactionCounts;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStats {
    pub stream_id: RoomName,
    pub is_live: bool,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub started_at: DateTime<Utc>,
    /// `null` while live.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Until the end, or until now while live.
    pub duration_seconds: f64,
    pub viewer_count: i32,
    pub peak_viewers: i32,
    /// `null` if nobody ever watched.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub peak_at: Option<DateTime<Utc>>,
    pub unique_viewers: i32,
    pub total_watch_seconds: f64,
    /// Total watch time per unique viewer; 0 without viewers.
    pub average_watch_seconds: f64,
    pub chat_messages: i64,
    /// Per kind; kinds nobody sent are left out.
    pub reactions: ReactionCounts,
    /// Viewers who went on stage, each counted once.
    pub stage_guests: i32,
}

/// The stream's stats and its streamer (the caller checks who may see
/// them), or `None` for an unknown stream.
pub async fn read(client: &Client, room: &RoomName) -> Result<Option<(Uuid, StreamStats)>, ApiError> {
    let row = client
        .query_typed_opt(
            "SELECT s.streamer_id, s.is_live, s.created_at, s.ended_at,
                    extract(epoch FROM coalesce(s.ended_at, now()) - s.created_at)::float8 AS duration,
                    c.viewers,
                    coalesce(p.n, 0) AS peak, p.at AS peak_at,
                    c.unique_viewers,
                    greatest(c.watched + c.viewers * extract(epoch FROM now())::float8 - c.arrivals, 0) AS watch,
                    coalesce(b.messages_sent, 0)
                      + (SELECT count(*) FROM live_messages m
                         WHERE m.room_name = s.id AND m.seq > coalesce(b.sent_up_to, 0)) AS chat_messages,
                    coalesce(t.stage_guests, 0) AS stage_guests,
                    (SELECT jsonb_object_agg(k.kind, k.n)::text
                     FROM (SELECT r.kind, sum(r.n)::int8 AS n FROM live_reaction_counts r
                           WHERE r.room_name = s.id GROUP BY r.kind) k) AS reactions
             FROM live_streams s
             LEFT JOIN live_stream_stats t ON t.room_name = s.id
             LEFT JOIN live_chat_broadcasts b ON b.room_name = s.id
             CROSS JOIN LATERAL (
                 SELECT coalesce(sum(v.viewers), 0)::int AS viewers,
                        coalesce(sum(v.unique_viewers), 0)::int AS unique_viewers,
                        coalesce(sum(v.watch_seconds), 0)::float8 AS watched,
                        coalesce(sum(v.present_since_sum), 0)::float8 AS arrivals
                 FROM live_viewer_counts v WHERE v.room_name = s.id
             ) c
             -- The peak: the highest of the shards' peaks, the sampled one
             -- and the count now, reached first (a tie keeps the earliest).
             LEFT JOIN LATERAL (
                 SELECT x.n, x.at FROM (
                     SELECT v.peak_seen AS n, v.peak_seen_at AS at FROM live_viewer_counts v
                     WHERE v.room_name = s.id
                     UNION ALL SELECT t.peak_viewers, t.peak_at
                     UNION ALL SELECT c.viewers, now()
                 ) x
                 WHERE x.n > 0
                 ORDER BY x.n DESC, x.at
                 LIMIT 1
             ) p ON true
             WHERE s.id = $1",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let get_err = ApiError::internal;
    let unique_viewers: i32 = row.try_get("unique_viewers").map_err(get_err)?;
    let total_watch_seconds: f64 = row.try_get("watch").map_err(get_err)?;
    let reactions: Option<String> = row.try_get("reactions").map_err(get_err)?;
    let stats = StreamStats {
        stream_id: room.clone(),
        is_live: row.try_get("is_live").map_err(get_err)?,
        started_at: row.try_get("created_at").map_err(get_err)?,
        ended_at: row.try_get("ended_at").map_err(get_err)?,
        duration_seconds: row.try_get("duration").map_err(get_err)?,
        viewer_count: row.try_get("viewers").map_err(get_err)?,
        peak_viewers: row.try_get("peak").map_err(get_err)?,
        peak_at: row.try_get("peak_at").map_err(get_err)?,
        unique_viewers,
        total_watch_seconds,
        average_watch_seconds: if unique_viewers > 0 {
            total_watch_seconds / f64::from(unique_viewers)
        } else {
            0.0
        },
        chat_messages: row.try_get("chat_messages").map_err(get_err)?,
        reactions: match reactions {
            Some(text) => serde_json::from_str(&text).map_err(ApiError::internal)?,
            None => ReactionCounts::new(),
        },
        stage_guests: row.try_get("stage_guests").map_err(get_err)?,
    };
    Ok(Some((row.try_get("streamer_id").map_err(get_err)?, stats)))
}
