//! `POST /live/chat`, `GET /live/chat` and `DELETE /live/chat/{id}`.

use lambda_http::Request;
use lambda_http::http::{Method, StatusCode};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{ChatRequest, RoomName};
use crate::error::ApiError;
use crate::http::{FromRequest, Reply};
use crate::state::AppState;
use crate::store::chat::{self, Action, ChatMessage, PostOutcome};
use crate::store::chat_broadcast::{self, Delivery};
use crate::store::rate_limit;

pub use crate::store::chat_broadcast::CHAT_TOPIC;

/// What the room is told when a message is deleted (messages themselves go
/// out in batches, see [`crate::store::chat_broadcast`]).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChatEvent<'a> {
    ChatDeleted {
        id: Uuid,
        #[serde(rename = "roomName")]
        room_name: &'a RoomName,
    },
}

#[derive(Debug, Serialize)]
pub struct PostedMessage {
    pub message: ChatMessage,
    /// True when the message went out to the room, or is in a batch another
    /// request is sending; false when this request's batch could not reach
    /// LiveKit: the message is stored, a later batch retries it, and clients
    /// also see it on their next `GET /live/chat`.
    pub broadcast: bool,
}

/// `POST /live/chat`: store the message, then hand it to the room's batches.
/// A retry naming the `id` of a message stored before answers 200 with it
/// (and hands it to the batches again, to say whether it went out).
pub async fn post_message(
    state: &AppState,
    user: AuthUser,
    request: ChatRequest,
) -> Result<Reply<PostedMessage>, ApiError> {
    user.require_participant(&state.rules)?;
    let room = request.room_name;
    let (status, message, seq) = {
        let client = state.db.get().await?;
        let limit_key = format!("chat:{room}:{}", user.id);
        match chat::post(
            &client,
            &room,
            user.id,
            request.text.as_str(),
            request.id,
            &limit_key,
            state.limits.chat,
        )
        .await?
        {
            PostOutcome::Posted(message, seq) => (StatusCode::CREATED, message, seq),
            PostOutcome::Repeated(message, seq) => (StatusCode::OK, message, seq),
            PostOutcome::Deleted => return Err(ApiError::MessageDeleted),
            PostOutcome::IdTaken => return Err(ApiError::MessageIdTaken),
            PostOutcome::NotFound => return Err(ApiError::StreamNotFound),
            PostOutcome::Ended => return Err(ApiError::StreamEnded),
            PostOutcome::Banned => return Err(ApiError::Banned),
            PostOutcome::Muted => return Err(ApiError::Muted),
            PostOutcome::RateLimited(retry_after) => return Err(rate_limit::limited(Some(retry_after))),
        }
    };
    // The message is stored, so its answer must be 201 whatever LiveKit
    // does: a 503 at the request's deadline would have the app post it again.
    // The broadcast gets the time left as its deadline: its room lease ends
    // then, so the next post or the flusher sends at once, and a connection
    // cut off in a statement is not pooled.
    let mine = chat_broadcast::Mine::new(seq);
    let sending = chat_broadcast::send_batches(state, &room, Some(&mine));
    let delivery = crate::store::db::while_the_answer_can_wait(sending)
        .await
        .unwrap_or_else(|| mine.unless_sent(Delivery::Failed));
    let broadcast = matches!(delivery, Delivery::Sent | Delivery::Queued);
    Ok(Reply::new(status, PostedMessage { message, broadcast }))
}

async fn broadcast(state: &AppState, room: &RoomName, event: &ChatEvent<'_>) -> bool {
    let payload = match serde_json::to_vec(event) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "cannot serialize a chat event");
            return false;
        }
    };
    match state.livekit.broadcast(room, CHAT_TOPIC, payload).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%room, %error, "chat event stored but not broadcast");
            false
        }
    }
}

pub const DEFAULT_HISTORY_PAGE: i64 = 50;
pub const MAX_HISTORY_PAGE: i64 = 100;

/// `?roomName=…&before=<message id>&limit=1..100`
const BEFORE_MUST_BE_IN_ROOM: &str = "before must be the id of a message from this room";

#[derive(Debug)]
pub struct ChatHistoryQuery {
    pub room_name: RoomName,
    pub before: Option<Uuid>,
    pub limit: i64,
}

impl FromRequest for ChatHistoryQuery {
    const METHOD: Method = Method::GET;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let [room_name, before, limit] =
            crate::http::query_parameters(request, ["roomName", "before", "limit"])?;
        let room_name = room_name.ok_or_else(|| ApiError::InvalidRequest("roomName is required".into()))?;
        let room_name = RoomName::parse(room_name).map_err(ApiError::InvalidRequest)?;
        let before = before
            .map(|id| {
                Uuid::parse_str(&id).map_err(|_| ApiError::InvalidRequest(BEFORE_MUST_BE_IN_ROOM.into()))
            })
            .transpose()?;
        let limit = crate::http::page_limit(limit, MAX_HISTORY_PAGE, DEFAULT_HISTORY_PAGE)?;
        Ok(ChatHistoryQuery {
            room_name,
            before,
            limit,
        })
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatPage {
    pub messages: Vec<ChatMessage>,
    /// Pass as `before` for older messages; `null` when there are none.
    pub next_before: Option<Uuid>,
}

/// `GET /live/chat`: a room's messages, newest first, deleted ones left out.
pub async fn chat_history(
    state: &AppState,
    _user: AuthUser,
    query: ChatHistoryQuery,
) -> Result<Reply<ChatPage>, ApiError> {
    let client = state.db.get().await?;
    let (room_exists, before_is_in_room) =
        chat::history_start(&client, &query.room_name, query.before).await?;
    if !room_exists {
        return Err(ApiError::StreamNotFound);
    }
    if !before_is_in_room {
        // Not an empty page: a client would take that for the start of the chat.
        return Err(ApiError::InvalidRequest(BEFORE_MUST_BE_IN_ROOM.into()));
    }
    let mut messages = chat::page(&client, &query.room_name, query.before, query.limit + 1).await?;
    let next_before = if messages.len() as i64 > query.limit {
        messages.truncate(query.limit as usize);
        messages.last().map(|m| m.id)
    } else {
        None
    };
    Ok(Reply::ok(ChatPage {
        messages,
        next_before,
    }))
}

/// The `{id}` of `DELETE /live/chat/{id}`.
#[derive(Debug)]
pub struct MessageId(pub Uuid);

impl FromRequest for MessageId {
    const METHOD: Method = Method::DELETE;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let [] = crate::http::query_parameters(request, [])?;
        Uuid::parse_str(&crate::http::path_id(request))
            .map(MessageId)
            .map_err(|_| ApiError::MessageNotFound)
    }
}

#[derive(Debug, Serialize)]
pub struct DeletedMessage {
    pub id: Uuid,
    pub deleted: bool,
    /// Whether the room was told now (false if LiveKit is unreachable, or a
    /// repeat is over the user's chat allowance in that room), or has nobody
    /// left to tell: the stream ended, so its room is closed or closing.
    /// False is the app's cue to delete again.
    pub broadcast: bool,
}

/// `DELETE /live/chat/{id}`: the author or the room's streamer removes a message.
pub async fn delete_message(
    state: &AppState,
    user: AuthUser,
    id: MessageId,
) -> Result<Reply<DeletedMessage>, ApiError> {
    user.require_participant(&state.rules)?;
    let message = id.0;
    let (room, live, tell_the_room) = {
        let mut client = state.db.get().await?;
        let owner = chat::ownership(&client, message)
            .await?
            .ok_or(ApiError::MessageNotFound)?;
        if user.id != owner.author && user.id != owner.streamer {
            return Err(ApiError::Forbidden(
                "Only the author or the streamer can delete this message.",
            ));
        }
        let tx = client.transaction().await?;
        let newly_deleted = chat::soft_delete(&tx, message, user.id).await?;
        if newly_deleted && user.id != owner.author {
            chat::record_action(
                &tx,
                &owner.room,
                user.id,
                owner.author,
                Action::DeleteMessage,
                Some(message),
            )
            .await?;
        }
        tx.commit().await?;
        // A repeat tells the room again: the first packet may have been lost
        // (LiveKit down, or the answer that said so), and nothing else would
        // ever send it. As often as the user may chat there, no more, so
        // repeats cannot flood a room's viewers. An ended stream's room is
        // closed, or closing with its viewers disconnected: nobody is left to
        // tell, and telling it would fail every time, so an app repeating the
        // delete until the answer says `broadcast: true` would never stop.
        let tell_the_room = owner.live
            && (newly_deleted
                || match rate_limit::hit(
                    &client,
                    &format!("chat-delete:{}:{}:repeat", owner.room, user.id),
                    state.limits.chat,
                )
                .await
                {
                    Ok(()) => true,
                    Err(ApiError::RateLimited { .. }) => false,
                    // The deletion is committed: not a 503 that has the app
                    // delete again, only the room left untold.
                    Err(error) => {
                        tracing::warn!(%error, "a repeated deletion's allowance could not be read; the room is not told again");
                        false
                    }
                });
        (owner.room, owner.live, tell_the_room)
    };
    let deleted = ChatEvent::ChatDeleted {
        id: message,
        room_name: &room,
    };
    // Deleted is committed: LiveKit too slow is `broadcast: false`, not a 503.
    let broadcast = !live
        || (tell_the_room
            && crate::store::db::while_the_answer_can_wait(broadcast(state, &room, &deleted))
                .await
                .unwrap_or(false));
    Ok(Reply::ok(DeletedMessage {
        id: message,
        deleted: true,
        broadcast,
    }))
}
