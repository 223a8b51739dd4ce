//! The `live_streams` store. Every query is one unnamed statement
//! (`query_typed`), one round trip, safe behind a transaction-mode pooler.

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

use crate::domain::{RoomName, Stream, Title};
use crate::error::ApiError;

pub enum StartOutcome {
    Created(Stream),
    /// The caller's own stream under that name is still live: a retried start.
    AlreadyLive(Stream),
    Taken,
}

/// Creates the stream, or finds the caller's live stream of the same name.
///
/// Insert-or-read in one statement. If a concurrent start commits the same name
/// between this statement's snapshot and its insert, neither branch sees a row;
/// running it again then reads the committed one.
const START_SQL: &str = "
    WITH inserted AS (
        INSERT INTO live_streams (id, streamer_id, title)
        VALUES ($1, $2, $3)
        ON CONFLICT (id) DO NOTHING
        RETURNING id, title, streamer_id, is_live, viewer_count, created_at, ended_at, true AS created
    )
    SELECT * FROM inserted
    UNION ALL
    SELECT id, title, streamer_id, is_live, viewer_count, created_at, ended_at, false AS created
    FROM live_streams
    WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)";

pub async fn start(
    client: &Transaction<'_>,
    room: &RoomName,
    streamer: Uuid,
    title: &Title,
) -> Result<StartOutcome, ApiError> {
    for _ in 0..2 {
        let rows = client
            .query_typed(
                START_SQL,
                &[
                    (&room.as_str(), Type::TEXT),
                    (&streamer, Type::UUID),
                    (&title.as_str(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| match e.code() {
                Some(code) if *code == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION => {
                    ApiError::ProfileRequired
                }
                _ => ApiError::from(e),
            })?;
        let Some(row) = rows.first() else { continue };
        let stream = stream_from_row(row)?;
        let created: bool = row.try_get("created").map_err(ApiError::internal)?;
        return Ok(if created {
            StartOutcome::Created(stream)
        } else if stream.streamer_id == streamer && stream.is_live {
            StartOutcome::AlreadyLive(stream)
        } else {
            StartOutcome::Taken
        });
    }
    Err(ApiError::internal(format!(
        "start of room {room} found neither a new nor an existing row"
    )))
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

const STREAM_COLUMNS: &str = "id, title, streamer_id, is_live, viewer_count, created_at, ended_at";

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

/// The live streams the reconciler checks against LiveKit.
pub async fn live_rooms(client: &Client) -> Result<Vec<(RoomName, Uuid)>, ApiError> {
    let rows = client
        .query_typed("SELECT id, streamer_id FROM live_streams WHERE is_live", &[])
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(ApiError::internal)?;
            Ok((
                RoomName::parse(id).map_err(ApiError::internal)?,
                row.try_get(1).map_err(ApiError::internal)?,
            ))
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
        })
    })
    .transpose()
}

/// [`access`] and the caller's token rate limit together, in one round trip:
/// the function `live_token_access` (migration 0005), planned once per connection.
pub async fn token_access(
    client: &Client,
    room: &RoomName,
    user: Uuid,
    limit: crate::rate_limit::Limit,
) -> Result<Option<RoomAccess>, ApiError> {
    let key = format!("token:{user}");
    let (window, max) = (limit.window_seconds(), limit.max_hits());
    let row = client
        .query_typed_one(
            "SELECT retry_after, streamer_id, is_live, banned, muted FROM live_token_access($1, $2, $3, $4, $5)",
            &[
                (&room.as_str(), Type::TEXT),
                (&user, Type::UUID),
                (&key, Type::TEXT),
                (&window, Type::FLOAT8),
                (&max, Type::INT8),
            ],
        )
        .await?;
    let retry_after: Option<i64> = row.try_get("retry_after").map_err(ApiError::internal)?;
    if retry_after.is_some() {
        return Err(crate::rate_limit::limited(retry_after));
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

/// Ends the stream if the caller is its streamer; ending twice keeps the first
/// `ended_at`. `FOR UPDATE` makes a concurrent second end wait and then read the
/// row as the first one left it.
const END_SQL: &str = "
    WITH target AS (
        SELECT id, streamer_id, is_live, ended_at, room_closed_at
        FROM live_streams
        WHERE id = $1
        FOR UPDATE
    ), ended AS (
        UPDATE live_streams s
        SET is_live = false, ended_at = now()
        FROM target t
        WHERE s.id = t.id AND t.streamer_id = $2 AND t.is_live
        RETURNING s.ended_at
    )
    SELECT t.streamer_id,
           COALESCE((SELECT ended_at FROM ended), t.ended_at) AS ended_at,
           t.room_closed_at IS NOT NULL AS room_closed
    FROM target t";

pub async fn end(client: &Client, room: &RoomName, caller: Uuid) -> Result<EndOutcome, ApiError> {
    let Some(row) = client
        .query_typed_opt(END_SQL, &[(&room.as_str(), Type::TEXT), (&caller, Type::UUID)])
        .await?
    else {
        return Ok(EndOutcome::NotFound);
    };
    let streamer_id: Uuid = row.try_get("streamer_id").map_err(ApiError::internal)?;
    if streamer_id != caller {
        return Ok(EndOutcome::NotStreamer);
    }
    Ok(EndOutcome::Ended {
        ended_at: row.try_get("ended_at").map_err(ApiError::internal)?,
        room_closed: row.try_get("room_closed").map_err(ApiError::internal)?,
    })
}

/// Records that LiveKit has closed the room, so later ends do not call it again.
pub async fn mark_room_closed(client: &Client, room: &RoomName) -> Result<(), ApiError> {
    client
        .query_typed(
            "UPDATE live_streams SET room_closed_at = now() WHERE id = $1 AND room_closed_at IS NULL",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?;
    Ok(())
}
