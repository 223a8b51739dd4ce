//! `POST /live/reactions`: a viewer's tap, counted per stream and kind and
//! told to the room in aggregate (see [`crate::store::reactions`]).

use serde::Serialize;

use crate::auth::AuthUser;
use crate::domain::{ReactionRequest, RoomName};
use crate::error::ApiError;
use crate::http::Reply;
use crate::state::AppState;
use crate::store::reactions::{self, REACTIONS_TOPIC, ReactionKind};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionOutcome {
    pub room_name: RoomName,
    pub kind: ReactionKind,
    /// Whether this request sent the room's packet (with every tap since the
    /// previous one); otherwise the next tap or the flusher sends it.
    pub broadcast: bool,
}

pub async fn react(
    state: &AppState,
    user: AuthUser,
    request: ReactionRequest,
) -> Result<Reply<ReactionOutcome>, ApiError> {
    user.require_participant(&state.rules)?;
    let room = request.room_name;
    let due = {
        let client = state.db.get().await?;
        reactions::react(&client, &room, user.id, request.kind, state.limits.reaction).await?
    };
    let mut broadcast = false;
    if let Some(due) = due {
        // Lossy: a packet lost or not sent leaves the totals right for the next.
        let sending = state.livekit.send_lossy(&room, REACTIONS_TOPIC, due.payload()?);
        match crate::store::db::while_the_answer_can_wait(sending).await {
            Some(Ok(())) => broadcast = true,
            Some(Err(error)) => tracing::warn!(%room, %error, "reactions counted; their packet was not sent"),
            None => tracing::warn!(%room, "reactions counted; LiveKit too slow for their packet"),
        }
    }
    Ok(Reply::ok(ReactionOutcome {
        room_name: room,
        kind: request.kind,
        broadcast,
    }))
}
