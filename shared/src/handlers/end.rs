use crate::auth::AuthUser;
use crate::domain::{EndRequest, EndResponse, EndedStream};
use crate::error::ApiError;
use crate::http::Reply;
use crate::state::AppState;
use crate::store::streams::{self, EndOutcome};

/// `POST /live/end`: the streamer ends the stream and LiveKit closes the room.
///
/// The stream ends in the database first, so it ends even when LiveKit is
/// unreachable; the response then says `roomClosed: false` and a later call
/// retries closing the room.
pub async fn end_stream(
    state: &AppState,
    user: AuthUser,
    request: EndRequest,
) -> Result<Reply<EndResponse>, ApiError> {
    let room = request.room_name;
    let outcome = {
        let client = state.db.get().await?;
        streams::end(&client, &room, user.id).await?
    };
    let (ended_at, already_closed) = match outcome {
        EndOutcome::NotFound => return Err(ApiError::StreamNotFound),
        EndOutcome::NotStreamer => return Err(ApiError::Forbidden("Only the streamer can end this stream.")),
        EndOutcome::Ended {
            ended_at,
            room_closed,
        } => (ended_at, room_closed),
    };

    // The pooled connection is not held across the LiveKit call. The end
    // is committed: LiveKit too slow is `roomClosed: false`, not a 503.
    let room_closed = already_closed
        || crate::store::db::while_the_answer_can_wait(close_room(state, &room))
            .await
            .unwrap_or(false);
    Ok(Reply::ok(EndResponse {
        success: true,
        stream: EndedStream {
            id: room,
            is_live: false,
            ended_at,
        },
        room_closed,
    }))
}

async fn close_room(state: &AppState, room: &crate::domain::RoomName) -> bool {
    if let Err(e) = state.livekit.delete_room(room).await {
        tracing::warn!(%room, error = %e, "stream ended but its LiveKit room is not closed yet");
        return false;
    }
    let recorded = match state.db.get().await {
        Ok(client) => streams::mark_room_closed(&client, room).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = recorded {
        // The room is gone; the worst case is a redundant DeleteRoom on a later end.
        tracing::warn!(%room, error = %e, "room closed but not recorded as closed");
    }
    true
}
