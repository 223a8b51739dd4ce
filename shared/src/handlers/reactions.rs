//! `POST /live/reactions`: a viewer's tap, counted per stream and kind and
//! told to the room in aggregate (see [`crate::store::reactions`]).

use serde::Serialize;

use crate::auth::AuthUser;
use crate::domain::{ReactionRequest, RoomName};
use crate::error::ApiError;
use crate::http::Reply;
use crate::state::AppState;
use crate::store::reactions::{self, ReactionKind};

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
    // Lossy: a packet lost leaves the totals right for the next; one not
    // sent gives its mark back for the next tap or the flusher.
    let broadcast = match due {
        Some(due) => reactions::send(state, &due).await,
        None => false,
    };
    Ok(Reply::ok(ReactionOutcome {
        room_name: room,
        kind: request.kind,
        broadcast,
    }))
}
