use crate::auth::AuthUser;
use crate::domain::{TokenRequest, TokenResponse};
use crate::error::ApiError;
use crate::http::Reply;
use crate::livekit::Role;
use crate::state::AppState;
use crate::store::streams;

/// `POST /live/token`: a token to join a live stream. The streamer gets publish
/// rights; everyone else watches and chats, unless banned (no token) or muted
/// (no data publishing).
pub async fn issue_token(
    state: &AppState,
    user: AuthUser,
    request: TokenRequest,
) -> Result<Reply<TokenResponse>, ApiError> {
    let access = {
        let client = state.db.get().await?;
        streams::token_access(
            &client,
            &request.room_name,
            user.id,
            state.limits.token,
            state.rules.stage_return,
        )
        .await?
    };
    let access = access.ok_or(ApiError::StreamNotFound)?;
    if !access.is_live {
        return Err(ApiError::StreamEnded);
    }
    let role = if access.streamer_id == user.id {
        Role::Host
    } else if access.banned {
        return Err(ApiError::Banned);
    } else {
        Role::Viewer {
            muted: access.muted,
            stage: access.stage,
            anonymous: user.is_anonymous,
        }
    };
    let token =
        state
            .livekit
            .mint_token(user.id, Some(&request.participant_name), &request.room_name, role)?;
    Ok(Reply::ok(TokenResponse {
        token,
        server_url: state.livekit.client_url().to_owned(),
    }))
}
