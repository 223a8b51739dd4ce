//! `GET /live/streams` (live streams, newest first, keyset-paginated) and
//! `GET /live/streams/{id}` (one stream, live or ended).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use lambda_http::http::Method;
use lambda_http::{Request, RequestExt};
use serde::Serialize;

use crate::auth::AuthUser;
use crate::domain::{RoomName, Stream};
use crate::error::ApiError;
use crate::http::{FromRequest, Reply};
use crate::state::AppState;
use crate::streams::{self, PageKey};

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
        let params = request.query_string_parameters();
        let mut limit = DEFAULT_PAGE_SIZE;
        let mut after = None;
        for (name, value) in params.iter() {
            match name {
                "limit" => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                        .ok_or_else(|| {
                            ApiError::InvalidRequest(format!(
                                "limit must be a whole number from 1 to {MAX_PAGE_SIZE}"
                            ))
                        })?
                }
                "cursor" => after = Some(decode_cursor(value)?),
                other => {
                    return Err(ApiError::InvalidRequest(format!(
                        "unknown query parameter `{other}`; expected `limit` or `cursor`"
                    )));
                }
            }
        }
        Ok(ListStreamsQuery { limit, after })
    }
}

/// The cursor is opaque to clients: base64url of `<created_at µs>.<id>`.
fn encode_cursor(key: &PageKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", key.created_at.timestamp_micros(), key.id))
}

fn decode_cursor(cursor: &str) -> Result<PageKey, ApiError> {
    let invalid = || ApiError::InvalidRequest("cursor is not one this API returned".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let created_at = micros
        .parse::<i64>()
        .ok()
        // Only times this API can have written: Postgres refuses dates before 4713 BC.
        .filter(|micros| (0..=253_402_300_799_999_999).contains(micros))
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = RoomName::parse(id.to_owned()).map_err(|_| invalid())?;
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

/// The `{id}` of `/live/streams/{id}`.
#[derive(Debug)]
pub struct StreamId(pub RoomName);

impl FromRequest for StreamId {
    const METHOD: Method = Method::GET;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
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
