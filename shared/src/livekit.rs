//! LiveKit: access tokens for clients and RoomService calls.

use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_api::services::room::RoomClient;
use livekit_api::services::{ServerErrorCode, ServiceError};
use uuid::Uuid;

use crate::config::LiveKitConfig;
use crate::domain::{ParticipantName, RoomName};
use crate::error::ApiError;

/// A RoomService call must answer within this, or the caller moves on.
const ROOM_SERVICE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a participant may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The streamer: publishes audio and video.
    Host,
    /// Everyone else: watches and chats.
    Viewer,
}

pub struct LiveKit {
    client_url: String,
    api_key: String,
    api_secret: String,
    token_ttl: Duration,
    rooms: RoomClient,
}

#[derive(Debug, thiserror::Error)]
#[error("LiveKit RoomService call failed: {0}")]
pub struct RoomServiceError(String);

impl LiveKit {
    pub fn new(config: &LiveKitConfig) -> LiveKit {
        LiveKit {
            client_url: config.client_url.clone(),
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.clone(),
            token_ttl: config.token_ttl,
            rooms: RoomClient::with_api_key(&config.api_url, &config.api_key, &config.api_secret)
                .with_request_timeout(ROOM_SERVICE_TIMEOUT),
        }
    }

    /// The URL clients connect to.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Mints a token for `user` to join `room`. The identity is the user id, so
    /// nobody can join as someone else; the display name is only a label.
    pub fn mint_token(
        &self,
        user: Uuid,
        display_name: Option<&ParticipantName>,
        room: &RoomName,
        role: Role,
    ) -> Result<String, ApiError> {
        let identity = user.to_string();
        let name = display_name.map_or(identity.as_str(), ParticipantName::as_str);
        AccessToken::with_api_key(&self.api_key, &self.api_secret)
            .with_identity(&identity)
            .with_name(name)
            .with_ttl(self.token_ttl)
            .with_grants(grants_for(room, role))
            .to_jwt()
            .map_err(ApiError::internal)
    }

    /// Closes the room, disconnecting everyone. A room LiveKit no longer has
    /// counts as closed.
    pub async fn delete_room(&self, room: &RoomName) -> Result<(), RoomServiceError> {
        // The client's own timeout is per attempt; this bounds the whole call.
        let outcome =
            tokio::time::timeout(ROOM_SERVICE_TIMEOUT * 2, self.rooms.delete_room(room.as_str())).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ServiceError::Twirp(livekit_api::services::ServerError::Twirp(ServerErrorCode {
                code,
                ..
            }))))
                if code == ServerErrorCode::NOT_FOUND =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(RoomServiceError(e.to_string())),
            Err(_) => Err(RoomServiceError("timed out".into())),
        }
    }
}

/// Every grant is spelled out: `VideoGrants::default()` allows publishing, and
/// LiveKit treats a missing `canPublishData` as equal to `canPublish`.
fn grants_for(room: &RoomName, role: Role) -> VideoGrants {
    VideoGrants {
        room_join: true,
        room: room.to_string(),
        can_publish: Some(role == Role::Host),
        can_subscribe: Some(true),
        can_publish_data: Some(true),
        can_publish_sources: Vec::new(),
        can_update_own_metadata: Some(false),
        room_create: false,
        room_list: false,
        room_record: false,
        room_admin: false,
        destination_room: String::new(),
        ingress_admin: false,
        hidden: false,
        recorder: false,
        agent: false,
    }
}
