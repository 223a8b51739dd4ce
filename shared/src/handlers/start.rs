use lambda_http::http::StatusCode;

use crate::auth::AuthUser;
use crate::domain::{RoomName, StartRequest, StartResponse};
use crate::error::{ApiError, Dependency};
use crate::http::Reply;
use crate::livekit::Role;
use crate::rate_limit;
use crate::state::AppState;
use crate::streams::{self, StartOutcome};

/// `POST /live/start`: the caller goes live in a new room (201), or gets their
/// still-live stream of that name back with a fresh token (200, a retried start).
pub async fn start_stream(
    state: &AppState,
    user: AuthUser,
    request: StartRequest,
) -> Result<Reply<StartResponse>, ApiError> {
    let room = request.room_name.unwrap_or_else(RoomName::generate);
    let mut client = state.db.get().await?;
    rate_limit::hit(&client, &format!("start:{}", user.id), state.limits.start).await?;
    // The row is committed only once LiveKit has the room, so a failed
    // CreateRoom leaves no live stream behind; a concurrent start of the same
    // name waits on this uncommitted row.
    let transaction = client.transaction().await?;
    let (status, stream) = match streams::start(&transaction, &room, user.id, &request.title).await? {
        StartOutcome::Created(stream) => (StatusCode::CREATED, stream),
        StartOutcome::AlreadyLive(stream) => (StatusCode::OK, stream),
        StartOutcome::Taken => return Err(ApiError::RoomTaken),
    };
    // Also for a retried start: CreateRoom returns the room if it exists, and
    // recreates it if it was closed for being empty before the host joined.
    if let Err(error) = state
        .livekit
        .create_room(&stream.id, user.id, &stream.title)
        .await
    {
        let _ = transaction.rollback().await;
        return Err(ApiError::unavailable(Dependency::LiveKit, error));
    }
    transaction.commit().await?;
    drop(client);
    tracing::info!(room = %stream.id, user = %user.id, created = status == StatusCode::CREATED, "stream started");
    let token =
        state
            .livekit
            .mint_token(user.id, request.participant_name.as_ref(), &stream.id, Role::Host)?;
    Ok(Reply::new(
        status,
        StartResponse {
            stream,
            token,
            server_url: state.livekit.client_url().to_owned(),
        },
    ))
}
