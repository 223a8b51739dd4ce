use lambda_http::http::StatusCode;

use crate::auth::AuthUser;
use crate::domain::{RoomName, StartRequest, StartResponse};
use crate::error::{ApiError, Dependency};
use crate::http::Reply;
use crate::livekit::Role;
use crate::state::AppState;
use crate::store::rate_limit;
use crate::store::streams::{self, StartOutcome};

/// `POST /live/start`: the caller goes live in a new room (201), or gets their
/// still-live stream of that name back with a fresh token (200, a retried start).
///
/// The name is checked first, so a taken or ended name never reaches LiveKit;
/// then LiveKit creates the room (no transaction is open meanwhile); then one
/// locked statement commits the stream, which is reported live only once its
/// room exists. A failed `CreateRoom` leaves nothing behind, nor does a commit
/// refused or failed after it (the new room is deleted).
pub async fn start_stream(
    state: &AppState,
    user: AuthUser,
    request: StartRequest,
) -> Result<Reply<StartResponse>, ApiError> {
    user.require_participant(&state.rules)?;
    let room = request.room_name.unwrap_or_else(RoomName::generate);
    let max_live = state.rules.max_live_streams_per_streamer;
    let new_room = {
        let client = state.db.get().await?;
        rate_limit::hit(&client, &format!("start:{}", user.id), state.limits.start).await?;
        match streams::start(&client, &room, user.id, &request.title, max_live, None).await? {
            StartOutcome::Available => true,
            StartOutcome::AlreadyLive(_) => false,
            refused => return Err(refusal(refused)),
        }
    };
    // Also for a retried start: CreateRoom returns the room if it exists, and
    // recreates it if it was closed for being empty before the host joined.
    let room_sid = state
        .livekit
        .create_room(&room, user.id, request.title.as_str())
        .await
        .map_err(|error| ApiError::unavailable(Dependency::LiveKit, error))?;
    let outcome = async {
        let client = state.db.get().await?;
        streams::start(&client, &room, user.id, &request.title, max_live, Some(&room_sid)).await
    }
    .await;
    // Refused only now (no profile: the foreign key is checked by the insert)
    // or not known to have committed: the room just made has no live stream,
    // and it must not wait in LiveKit for whoever starts that name next. A
    // start that did commit is repaired by its retry (CreateRoom again) or,
    // without one, ended by the reconciler for having no room.
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            if new_room {
                close_unused_room(state, &room).await;
            }
            return Err(error);
        }
    };
    let (status, stream) = match outcome {
        StartOutcome::Created(stream) => (StatusCode::CREATED, stream),
        StartOutcome::AlreadyLive(stream) => (StatusCode::OK, stream),
        refused => {
            // Lost a race after the check (an end of this stream committed,
            // or another start of the caller's took the last live slot): the
            // room just made serves no live stream. A name another streamer
            // took is theirs, and so is its room.
            if !matches!(refused, StartOutcome::RoomTaken) {
                close_unused_room(state, &room).await;
            }
            return Err(refusal(refused));
        }
    };
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

async fn close_unused_room(state: &AppState, room: &RoomName) {
    if let Err(error) = state.livekit.delete_room(room).await {
        tracing::warn!(%room, %error, "could not close a room no live stream uses");
    }
}

fn refusal(outcome: StartOutcome) -> ApiError {
    match outcome {
        StartOutcome::OverLimit { live_room } => ApiError::AlreadyLive { live_room },
        StartOutcome::RoomTaken | StartOutcome::RoomEnded => ApiError::RoomTaken,
        StartOutcome::Available | StartOutcome::Created(_) | StartOutcome::AlreadyLive(_) => {
            ApiError::internal("a start that succeeded was refused")
        }
    }
}
