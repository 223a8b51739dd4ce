use lambda_http::http::StatusCode;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{RoomName, StartRequest, StartResponse};
use crate::error::{ApiError, Dependency};
use crate::http::Reply;
use crate::livekit::Role;
use crate::state::AppState;
use crate::store::streams::{self, StartOutcome};

/// `POST /live/start`: the caller goes live in a new room (201), or gets their
/// still-live stream of that name back with a fresh token (200, a retried start).
///
/// The start is checked first (the caller's profile, the name, their live
/// streams, then their start limit; one statement, migration 0037), so a
/// refused start never reaches LiveKit nor spends the limit, and a new name
/// is claimed for the caller, so no other streamer's start gets to
/// `CreateRoom` with it meanwhile (migration 0027); then LiveKit creates the
/// room (no transaction is open meanwhile); then one locked
/// statement commits the stream, which is reported live only once its room
/// exists, and releases the claim. A failed `CreateRoom` leaves nothing behind,
/// nor does a commit refused or failed after it (the new room is deleted, and
/// only then the claim released: the room closed is never another's).
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
        let limit = state.limits.start;
        match streams::check_start(&client, &room, user.id, &request.title, max_live, limit).await? {
            StartOutcome::Available => true,
            StartOutcome::AlreadyLive(_) => false,
            refused => return Err(refusal(refused)),
        }
    };
    // Also for a retried start: CreateRoom returns the room if it exists, and
    // recreates it if it was closed for being empty before the host joined.
    let room_sid = match state
        .livekit
        .create_room(&room, user.id, request.title.as_str(), new_room)
        .await
    {
        Ok(sid) => sid,
        Err(error) => {
            if new_room {
                if error.may_have_acted() {
                    // No answer: LiveKit may have made the room, and the name
                    // must not go to another streamer with it.
                    close_unused_room(state, &room, user.id).await;
                } else {
                    // Refused, or never reached: no room was made.
                    release_claim(state, &room, user.id).await;
                }
            }
            return Err(ApiError::unavailable(Dependency::LiveKit, error));
        }
    };
    let outcome = async {
        let client = state.db.get().await?;
        streams::create_stream(&client, &room, user.id, &request.title, max_live, &room_sid).await
    }
    .await;
    // Refused only now (the profile deleted since the check: the foreign key is
    // checked by the insert) or not known to have committed: the room just made
    // has no live stream, and it must not wait in LiveKit for whoever starts
    // that name next. But an answer lost after the commit (the connection cut)
    // leaves a live stream in that room: closing it would end the stream
    // (LiveKit's `room_finished`), and the retry the 503 asks for would find it
    // ended. So the room is kept when a fresh connection finds the stream live
    // (close_unused_room); the retry then answers 200 with it.
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            if new_room {
                close_unused_room(state, &room, user.id).await;
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
            // took (past a claim that lapsed) is theirs, and so is its room.
            if !matches!(refused, StartOutcome::RoomTaken)
                && !close_unused_room(state, &room, user.id).await
                && matches!(refused, StartOutcome::RoomEnded)
            {
                // The stream's end closed its room before this start made it
                // again: the reconciler, which closes the rooms of ended
                // streams, must close it once more.
                leave_to_the_reconciler(state, &room, &room_sid).await;
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

/// Closes the room a failed start made, then lets the name go; says whether
/// it is closed. A room that could not be closed keeps the claim until it
/// lapses, so no other streamer adopts that room meanwhile. Unless the
/// streamer is live in it by now: this start committed and only its answer
/// was lost, or a retry of it (the app gave up on it) got its answer from
/// LiveKit and committed; closing the room would end that stream. Unknown
/// (the database unreachable) counts as not live.
async fn close_unused_room(state: &AppState, room: &RoomName, streamer: Uuid) -> bool {
    let live = async {
        let client = state.db.get().await?;
        streams::is_live(&client, room, streamer).await
    }
    .await;
    match live {
        Ok(true) => {
            tracing::warn!(%room, "a failed start's room serves a live stream (its own lost answer, or a retry's); kept");
            return false;
        }
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%room, %error, "cannot tell whether a live stream uses a failed start's room; closing it");
        }
    }
    match state.livekit.delete_room(room).await {
        Ok(()) => {
            release_claim(state, room, streamer).await;
            true
        }
        Err(error) => {
            tracing::warn!(%room, %error, "could not close a room no live stream uses");
            false
        }
    }
}

/// Marks the ended stream's room as open again, in its instance `room_sid`,
/// for the reconciler to close.
async fn leave_to_the_reconciler(state: &AppState, room: &RoomName, room_sid: &str) {
    let marked = async {
        let client = state.db.get().await?;
        streams::mark_room_open(&client, room, room_sid).await
    }
    .await;
    if let Err(error) = marked {
        tracing::warn!(%room, %error, "an ended stream's room is open again and could not be marked so; LiveKit closes it when it empties");
    }
}

/// Best effort: a claim not released lapses by itself (migration 0027).
async fn release_claim(state: &AppState, room: &RoomName, streamer: Uuid) {
    let released = async {
        let client = state.db.get().await?;
        streams::release_claim(&client, room, streamer).await
    }
    .await;
    if let Err(error) = released {
        tracing::warn!(%room, %error, "could not release the claim on a room name");
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
