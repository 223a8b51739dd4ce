//! `GET /live/streams/{id}/viewers` (who is watching now) and
//! `GET /live/streams/{id}/stats` (how the stream did), both for the
//! streamer; others see the viewer count, and the list only where
//! `VIEWER_LIST_VISIBLE_TO=viewers`.

use lambda_http::Request;
use lambda_http::http::Method;
use serde::Serialize;

use crate::auth::AuthUser;
use crate::config::ViewerListVisibility;
use crate::domain::RoomName;
use crate::error::ApiError;
use crate::http::{FromRequest, Reply};
use crate::state::AppState;
use crate::store::stats::{self, StreamStats};
use crate::store::streams;
use crate::store::viewers::{self, Viewer, ViewerKey};

pub const DEFAULT_VIEWERS_PAGE: i64 = 50;
pub const MAX_VIEWERS_PAGE: i64 = 200;

/// `/live/streams/{id}/viewers?limit=1..200&cursor=<opaque>`
#[derive(Debug)]
pub struct ViewersQuery {
    pub room_name: RoomName,
    pub limit: i64,
    pub after: Option<ViewerKey>,
}

impl FromRequest for ViewersQuery {
    const METHOD: Method = Method::GET;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let room_name =
            RoomName::parse(crate::http::path_id(request)).map_err(|_| ApiError::StreamNotFound)?;
        let [limit, cursor] = crate::http::query_parameters(request, ["limit", "cursor"])?;
        let limit = crate::http::page_limit(limit, MAX_VIEWERS_PAGE, DEFAULT_VIEWERS_PAGE)?;
        let after = cursor
            .map(|cursor| {
                let (joined_at, identity) = crate::http::decode_cursor(&cursor)?;
                Ok::<_, ApiError>(ViewerKey { joined_at, identity })
            })
            .transpose()?;
        Ok(ViewersQuery {
            room_name,
            limit,
            after,
        })
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewerPage {
    pub stream_id: RoomName,
    /// Distinct viewers now (the streamer and hidden participants excluded).
    pub viewer_count: i32,
    /// In arrival order; `null` when the caller may see the count only.
    pub viewers: Option<Vec<Viewer>>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

pub async fn list_viewers(
    state: &AppState,
    user: AuthUser,
    query: ViewersQuery,
) -> Result<Reply<ViewerPage>, ApiError> {
    let room = query.room_name;
    let client = state.db.get().await?;
    let access = streams::limited_access(
        &client,
        &room,
        user.id,
        &read_key(&user),
        state.limits.read,
        state.rules.stage_return,
    )
    .await?
    .ok_or(ApiError::StreamNotFound)?;
    let is_host = access.streamer_id == user.id;
    if !is_host && access.banned {
        return Err(ApiError::Banned);
    }
    if !access.is_live {
        return Err(ApiError::StreamEnded);
    }
    let viewer_count = viewers::count(&client, &room).await?;
    let may_list = is_host || state.rules.viewer_list == ViewerListVisibility::Viewers;
    if !may_list {
        return Ok(Reply::ok(ViewerPage {
            stream_id: room,
            viewer_count,
            viewers: None,
            next_cursor: None,
        }));
    }
    let mut page = viewers::present_page(&client, &room, query.after.as_ref(), query.limit + 1).await?;
    let next_cursor = if page.len() as i64 > query.limit {
        page.truncate(query.limit as usize);
        page.last()
            .map(|viewer| crate::http::encode_cursor(viewer.joined_at, &viewer.user_id))
    } else {
        None
    };
    Ok(Reply::ok(ViewerPage {
        stream_id: room,
        viewer_count,
        viewers: Some(page),
        next_cursor,
    }))
}

/// The rate-limit key the reads of a live room share (the viewer list, the
/// stage, the stats): one budget per user, so polling several of them at once
/// is bounded as a whole.
pub(crate) fn read_key(user: &AuthUser) -> String {
    format!("read:{}", user.id)
}

#[derive(Debug, Serialize)]
pub struct StatsEnvelope {
    pub stats: StreamStats,
}

pub async fn stream_stats(
    state: &AppState,
    user: AuthUser,
    id: super::streams::StreamId,
) -> Result<Reply<StatsEnvelope>, ApiError> {
    let client = state.db.get().await?;
    let (streamer, stats) = stats::read(&client, &id.0)
        .await?
        .ok_or(ApiError::StreamNotFound)?;
    if streamer != user.id {
        return Err(ApiError::Forbidden(
            "Only the streamer can see the stream's stats.",
        ));
    }
    // Counted once served, as every limit is: a refusal keeps its answer.
    crate::store::rate_limit::hit(&client, &read_key(&user), state.limits.read).await?;
    Ok(Reply::ok(StatsEnvelope { stats }))
}
