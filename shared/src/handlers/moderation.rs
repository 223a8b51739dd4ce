//! `POST /live/moderation`: the streamer kicks, bans, mutes and restores viewers.

use serde::Serialize;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::chat::{self, Action, Restrictions};
use crate::domain::{ModerationAction, ModerationRequest, RoomName};
use crate::error::{ApiError, Dependency};
use crate::http::Reply;
use crate::state::AppState;
use crate::streams;

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
}

/// Applies the action in the database and in LiveKit together: the change is
/// committed only once LiveKit has done its part, so a LiveKit outage answers
/// 503 and leaves nothing half done.
pub async fn moderate(
    state: &AppState,
    user: AuthUser,
    request: ModerationRequest,
) -> Result<Reply<ModerationOutcome>, ApiError> {
    let room = request.room_name;
    let target = request.user_id;
    let mut client = state.db.get().await?;
    let access = streams::access(&client, &room, target)
        .await?
        .ok_or(ApiError::StreamNotFound)?;
    if access.streamer_id != user.id {
        return Err(ApiError::Forbidden("Only the streamer can moderate this stream."));
    }
    if target == user.id {
        return Err(ApiError::InvalidRequest(
            "The streamer cannot moderate themselves.".into(),
        ));
    }

    let tx = client.transaction().await?;
    let restrictions = chat::restrict(&tx, &room, target, request.action.into()).await?;
    chat::record_action(&tx, &room, user.id, target, request.action.into(), None).await?;
    let livekit = match request.action {
        ModerationAction::Kick | ModerationAction::Ban => {
            state.livekit.remove_participant(&room, target).await
        }
        ModerationAction::Mute => state.livekit.set_viewer_chat(&room, target, false).await,
        ModerationAction::Unmute => state.livekit.set_viewer_chat(&room, target, true).await,
        ModerationAction::Unban => Ok(()),
    };
    if let Err(error) = livekit {
        let _ = tx.rollback().await;
        return Err(ApiError::unavailable(Dependency::LiveKit, error));
    }
    tx.commit().await?;
    tracing::info!(%room, moderator = %user.id, %target, action = ?request.action, "moderation applied");
    let Restrictions { banned, muted } = restrictions;
    Ok(Reply::ok(ModerationOutcome {
        room_name: room,
        user_id: target,
        action: request.action,
        banned,
        muted,
    }))
}
