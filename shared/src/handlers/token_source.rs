//! `POST /live/token-source`: LiveKit's standard token endpoint, so the client
//! SDKs' `TokenSource.endpoint` can fetch credentials by themselves with the
//! app's Supabase bearer header. Same rules as `POST /live/token`.

use lambda_http::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::auth::AuthUser;
use crate::domain::{ParticipantName, RoomName, TokenRequest};
use crate::error::ApiError;
use crate::http::Reply;
use crate::state::AppState;

/// The request body of LiveKit's standard token endpoint. Every field is
/// optional in LiveKit's schema; here `room_name` is required, identity stays
/// bound to the authenticated user, and what a client may not decide is refused.
/// A field sent as `null` counts as left out (SDKs whose encoders write
/// unset fields as `null`), and so does a `room_config`,
/// `participant_metadata` or `participant_attributes` that sets nothing: an
/// empty object, list or string (the iOS and Android SDKs send
/// `"room_config": {}` on every request, its fields unset).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardTokenRequest {
    #[serde(default)]
    pub room_name: Option<String>,
    #[serde(default)]
    pub participant_name: Option<String>,
    #[serde(default)]
    pub participant_identity: Option<String>,
    #[serde(default)]
    pub participant_metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub participant_attributes: Option<serde_json::Value>,
    #[serde(default)]
    pub room_config: Option<serde_json::Value>,
}

crate::json_body!(StandardTokenRequest);

/// Whether a field's value sets anything: not `null`, nor an object, list
/// or string with nothing in it (an object whose fields set nothing
/// included). A number or a boolean always does.
fn sets_something(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => fields.values().any(sets_something),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// LiveKit's standard token response.
#[derive(Debug, Serialize)]
pub struct StandardTokenResponse {
    pub server_url: String,
    pub participant_token: String,
}

pub async fn issue_standard_token(
    state: &AppState,
    user: AuthUser,
    request: StandardTokenRequest,
) -> Result<Reply<StandardTokenResponse>, ApiError> {
    let refuse =
        |field: &str, why: &str| Err(ApiError::InvalidRequest(format!("{field} cannot be set: {why}")));
    if request.room_config.as_ref().is_some_and(sets_something) {
        return refuse(
            "room_config",
            "rooms are created and configured by POST /live/start",
        );
    }
    if request.participant_metadata.as_ref().is_some_and(sets_something) {
        return refuse(
            "participant_metadata",
            "other participants would trust what a client wrote",
        );
    }
    if request
        .participant_attributes
        .as_ref()
        .is_some_and(sets_something)
    {
        return refuse(
            "participant_attributes",
            "other participants would trust what a client wrote",
        );
    }
    let room_name = request
        .room_name
        .ok_or_else(|| ApiError::InvalidRequest("room_name is required".into()))
        .and_then(|room| {
            RoomName::parse(room).map_err(|e| ApiError::InvalidRequest(e.replace("roomName", "room_name")))
        })?;
    // Compared as ids, not as text: the caller's own id in capitals is theirs.
    if let Some(identity) = &request.participant_identity
        && uuid::Uuid::parse_str(identity).ok() != Some(user.id)
    {
        return Err(ApiError::Forbidden(
            "participant_identity must be absent or your own user id.",
        ));
    }
    let participant_name = match request.participant_name {
        Some(name) => ParticipantName::parse(&name)
            .map_err(|e| ApiError::InvalidRequest(e.replace("participantName", "participant_name")))?,
        None => ParticipantName::parse(&user.id.to_string()).map_err(ApiError::internal)?,
    };
    let reply = super::issue_token(
        state,
        user,
        TokenRequest {
            room_name,
            participant_name,
        },
    )
    .await?;
    Ok(Reply::new(
        StatusCode::CREATED,
        StandardTokenResponse {
            server_url: reply.body.server_url,
            participant_token: reply.body.token,
        },
    ))
}
