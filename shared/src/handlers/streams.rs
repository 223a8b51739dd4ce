//! `GET /live/streams` (live streams, newest first, keyset-paginated) and
//! `GET /live/streams/{id}` (one stream, live or ended).

use lambda_http::Request;
use lambda_http::http::Method;
use serde::Serialize;

use crate::auth::AuthUser;
use crate::domain::{RoomName, Stream};
use crate::error::ApiError;
use crate::http::{FromRequest, Reply};
use crate::state::AppState;
use crate::store::streams::{self, PageKey};

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

/// `?limit=1..100&cursor=<opaque>`
#[derive(Debug)]
pub struct ListStreamsQuery {
    pub limit: i64,
    pub after: Option<PageKey>,
}

impl FromRequest for ListStreamsQuery {
    const METHOD: Method = Method::GET;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let [limit, cursor] = crate::http::query_parameters(request, ["limit", "cursor"])?;
        let limit = crate::http::page_limit(limit, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE)?;
        let after = cursor.map(|cursor| decode_cursor(&cursor)).transpose()?;
        Ok(ListStreamsQuery { limit, after })
    }
}

/// The cursor is opaque to clients: the last stream's `created_at` and id.
fn encode_cursor(key: &PageKey) -> String {
    crate::http::encode_cursor(key.created_at, &key.id)
}

fn decode_cursor(cursor: &str) -> Result<PageKey, ApiError> {
    let (created_at, id) = crate::http::decode_cursor(cursor)?;
    let id = RoomName::parse(id)
        .map_err(|_| ApiError::InvalidRequest("cursor is not one this API returned".into()))?;
    Ok(PageKey {
        created_at,
        id: id.to_string(),
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPage {
    pub streams: Vec<Stream>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

pub async fn list_streams(
    state: &AppState,
    _user: AuthUser,
    query: ListStreamsQuery,
) -> Result<Reply<StreamPage>, ApiError> {
    let client = state.db.get().await?;
    // One row more than asked tells whether another page follows.
    let mut rows = streams::live_page(&client, query.after.as_ref(), query.limit + 1).await?;
    let next_cursor = if rows.len() as i64 > query.limit {
        rows.truncate(query.limit as usize);
        rows.last().map(|(_, key)| encode_cursor(key))
    } else {
        None
    };
    Ok(Reply::ok(StreamPage {
        streams: rows.into_iter().map(|(stream, _)| stream).collect(),
        next_cursor,
    }))
}

/// The `{id}` of `/live/streams/{id}` (and of its `/stats`), routes that
/// take no query parameter: one is refused, as the listings refuse one they
/// do not know, rather than silently ignored.
#[derive(Debug)]
pub struct StreamId(pub RoomName);

impl FromRequest for StreamId {
    const METHOD: Method = Method::GET;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let [] = crate::http::query_parameters(request, [])?;
        RoomName::parse(crate::http::path_id(request))
            .map(StreamId)
            .map_err(|_| ApiError::StreamNotFound)
    }
}

#[derive(Debug, Serialize)]
pub struct StreamEnvelope {
    pub stream: Stream,
}

pub async fn get_stream(
    state: &AppState,
    _user: AuthUser,
    id: StreamId,
) -> Result<Reply<StreamEnvelope>, ApiError> {
    let client = state.db.get().await?;
    let stream = streams::find(&client, &id.0)
        .await?
        .ok_or(ApiError::StreamNotFound)?;
    Ok(Reply::ok(StreamEnvelope { stream }))
}
