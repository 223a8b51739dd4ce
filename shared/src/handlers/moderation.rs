//! `POST /live/moderation`: the streamer kicks, bans, mutes and restores viewers.

use serde::Serialize;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{ModerationAction, ModerationRequest, RoomName};
use crate::error::{ApiError, Dependency};
use crate::http::Reply;
use crate::livekit::Revocation;
use crate::state::AppState;
use crate::store::chat::{self, Action, Standing};
use crate::store::streams;

impl From<ModerationAction> for Action {
    fn from(action: ModerationAction) -> Action {
        match action {
            ModerationAction::Kick => Action::Kick,
            ModerationAction::Ban => Action::Ban,
            ModerationAction::Unban => Action::Unban,
            ModerationAction::Mute => Action::Mute,
            ModerationAction::Unmute => Action::Unmute,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModerationOutcome {
    pub room_name: RoomName,
    pub user_id: Uuid,
    pub action: ModerationAction,
    /// The user's standing in this stream after the action.
    pub banned: bool,
    pub muted: bool,
    /// Whether LiveKit has applied the action in the room already. False when
    /// it could not be reached: the ban or mute stands in Postgres (tokens and
    /// chat are refused) and the webhook and the reconciler apply it in the
    /// room as soon as they can.
    pub room_updated: bool,
}

/// A kick is LiveKit's alone: it happens there or not at all (503). Its record
/// follows; if Postgres fails to write it, the answer is 503 as well, and the
/// retry removes nobody twice (gone counts as removed) and records it. Every
/// other action is committed in Postgres first, in one statement and with no
/// transaction held across the LiveKit call, and then applied in the room:
/// a LiveKit outage can delay it in the room, never undo it.
pub async fn moderate(
    state: &AppState,
    user: AuthUser,
    request: ModerationRequest,
) -> Result<Reply<ModerationOutcome>, ApiError> {
    user.require_participant(&state.rules)?;
    let room = request.room_name;
    let target = request.user_id;
    let identity = target.to_string();
    let client = state.db.get().await?;
    let access = streams::access(&client, &room, target)
        .await?
        .ok_or(ApiError::StreamNotFound)?;
    if access.streamer_id != user.id {
        return Err(ApiError::Forbidden("Only the streamer can moderate this stream."));
    }
    // An ended stream's room is gone and its name is never used again: an
    // action there would change nothing anyone sees, and answering 200 would
    // tell a moderation panel left open that it did.
    if !access.is_live {
        return Err(ApiError::StreamEnded);
    }
    if target == user.id {
        return Err(ApiError::InvalidRequest(
            "The streamer cannot moderate themselves.".into(),
        ));
    }

    let (standing, room_updated) = if request.action == ModerationAction::Kick {
        drop(client);
        state
            .livekit
            .remove_participant(&room, &identity, Revocation::Nothing)
            .await
            .map_err(|e| ApiError::unavailable(Dependency::LiveKit, e))?;
        let client = state.db.get().await?;
        let moderated = chat::moderate(&client, &room, user.id, target, Action::Kick).await?;
        drop(client);
        // A guest may be back already, their join read on stage before this
        // record ended their turn (migration 0043; the record waits for the
        // room's standing lock behind posts and stage changes), so LiveKit
        // let their turn's token publish: it is told the standing committed.
        // Not back, they are not found, which is no error.
        let telling = super::stage::apply_standing_in_room(state, &room, target, moderated.standing);
        if let Err(error) = crate::livekit::before_the_answer(telling).await {
            tracing::warn!(%room, %target, %error,
                "kick committed; a guest who came straight back is corrected by the reconciler");
        }
        (moderated.standing, true)
    } else {
        let moderated = chat::moderate(&client, &room, user.id, target, request.action.into()).await?;
        drop(client);
        let in_room = async {
            match request.action {
                // Tokens minted before the ban (nbf up to this second) are revoked too.
                ModerationAction::Ban => {
                    state
                        .livekit
                        .remove_participant(
                            &room,
                            &identity,
                            Revocation::IssuedBefore(moderated.at_unix_seconds + 1),
                        )
                        .await
                }
                // A guest on stage keeps their camera and microphone through a chat mute.
                ModerationAction::Mute | ModerationAction::Unmute => {
                    super::stage::apply_standing_in_room(state, &room, target, moderated.standing).await
                }
                ModerationAction::Unban | ModerationAction::Kick => Ok(()),
            }
        };
        // Committed: LiveKit too slow is `roomUpdated: false`, not a 503.
        let room_updated = match crate::livekit::before_the_answer(in_room).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%room, %target, action = ?request.action, %error,
                    "moderation committed; LiveKit will get it from the webhook or the reconciler");
                false
            }
        };
        (moderated.standing, room_updated)
    };
    tracing::info!(%room, moderator = %user.id, %target, action = ?request.action, room_updated, "moderation applied");
    let Standing { banned, muted, .. } = standing;
    Ok(Reply::ok(ModerationOutcome {
        room_name: room,
        user_id: target,
        action: request.action,
        banned,
        muted,
        room_updated,
    }))
}
