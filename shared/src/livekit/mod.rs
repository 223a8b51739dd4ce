//! LiveKit: access tokens for clients and RoomService calls; what LiveKit
//! must enforce because of what Postgres says is in [`room_rules`].

pub mod room_rules;

use std::future::Future;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, TokenVerifier, VideoGrants};
use livekit_api::services::room::{
    CreateRoomOptions, RemoveParticipantOptions, RoomClient, SendDataOptions, UpdateParticipantOptions,
};
use livekit_api::services::{ServerError, ServerErrorCode, ServiceError};
use livekit_api::webhooks::{WebhookError, WebhookReceiver};
use livekit_protocol as proto;
use uuid::Uuid;

use crate::config::{LiveKitConfig, RoomOptions};
use crate::domain::{ParticipantName, RoomName};
use crate::error::ApiError;
use crate::store::stage::StageStanding;

/// The topic of the viewer counts pushed into rooms.
pub const VIEWERS_TOPIC: &str = "viewers";

/// A RoomService call must answer within this, or the caller moves on.
const ROOM_SERVICE_TIMEOUT: Duration = Duration::from_secs(3);

/// Which tokens of a removed participant LiveKit should refuse from then on
/// (`RemoveParticipant`'s `revoke_token_ts`, compared with a token's `nbf`).
/// Where the server enforces it (LiveKit's open-source server 1.13.5 does
/// not), a banned user's old tokens stop working; our webhook removes them on
/// `participant_joined` wherever it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// None: a kicked viewer may come back with a new token at once. LiveKit
    /// reads an unset (0) `revoke_token_ts` as "now plus a minute of leeway",
    /// which would refuse that new token too, so this asks for the tokens
    /// issued before 1970-01-01T00:00:01: none.
    Nothing,
    /// Every token issued before this Unix second. Seconds, as the field's
    /// definition in LiveKit's protocol says (it is compared with `nbf`),
    /// though livekit-api's doc comment on `RemoveParticipantOptions` says
    /// milliseconds.
    IssuedBefore(i64),
}

impl Revocation {
    pub fn revoke_token_ts(self) -> i64 {
        match self {
            Revocation::Nothing => 1,
            Revocation::IssuedBefore(unix_seconds) => unix_seconds,
        }
    }
}

/// What a participant may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The streamer: publishes audio and video.
    Host,
    /// Everyone else: watches, chats unless the streamer muted them, and
    /// publishes camera and microphone while on stage.
    Viewer {
        muted: bool,
        stage: StageStanding,
        /// A Supabase anonymous sign-in: no data packets unless anonymous
        /// sign-ins may take part.
        anonymous: bool,
    },
}

/// Whether a participant's attributes mark an anonymous sign-in.
pub fn is_anonymous(attributes: &std::collections::HashMap<String, String>) -> bool {
    attributes.get(ANONYMOUS_ATTRIBUTE).is_some_and(|v| v == "true")
}

/// The participant attribute, set in the token, that marks a Supabase
/// anonymous sign-in (`"true"`). Viewer tokens cannot change their own
/// attributes, so LiveKit's listings and webhooks carry it as we set it.
pub const ANONYMOUS_ATTRIBUTE: &str = "anonymous";

/// The track sources a guest on stage may publish (no screen share).
const GUEST_SOURCES: [proto::TrackSource; 2] = [proto::TrackSource::Camera, proto::TrackSource::Microphone];

pub struct LiveKit {
    client_url: String,
    api_key: String,
    api_secret: String,
    token_ttl: Duration,
    room_options: RoomOptions,
    viewer_can_publish_data: bool,
    anonymous_can_publish_data: bool,
    rooms: RoomClient,
    webhooks: WebhookReceiver,
}

impl LiveKit {
    pub fn new(config: &LiveKitConfig) -> LiveKit {
        LiveKit {
            client_url: config.client_url.clone(),
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.clone(),
            token_ttl: config.token_ttl,
            room_options: config.room,
            viewer_can_publish_data: config.viewer_can_publish_data,
            anonymous_can_publish_data: config.anonymous_can_publish_data,
            webhooks: WebhookReceiver::new(TokenVerifier::with_api_key(&config.api_key, &config.api_secret)),
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
        let token = AccessToken::with_api_key(&self.api_key, &self.api_secret)
            .with_identity(&identity)
            .with_name(name)
            .with_ttl(self.token_ttl)
            .with_grants(self.grants_for(room, role));
        // Only what is so: LiveKit broadcasts every join and leave of a
        // participant with any attribute to everyone in the room, which LiveKit
        // Cloud's mode for rooms of thousands otherwise spares its viewers. A
        // missing stage key reads as false; the anonymous mark is only worth
        // its cost where anonymous sign-ins get no data.
        let token = match role {
            Role::Viewer { stage, anonymous, .. } => token.with_attributes(
                stage
                    .attribute_pairs()
                    .into_iter()
                    .filter(|(_, value)| *value == "true")
                    .chain(
                        (anonymous && self.withholds_data_from(true))
                            .then_some((ANONYMOUS_ATTRIBUTE, "true")),
                    ),
            ),
            Role::Host => token,
        };
        token.to_jwt().map_err(ApiError::internal)
    }

    /// Creates the stream's room, or finds it if it exists, and returns the
    /// room instance's sid. The metadata names the streamer and the title, so
    /// clients and LiveKit-side tools can tell whose room it is. A room found
    /// with other metadata while starting a `new_stream` was left open by
    /// another streamer's start that died before it committed (LiveKit
    /// keeps an unused room for its empty timeout, 300 s by default, and the
    /// name's claim lapses after 60): it gets this stream's metadata, or its
    /// clients would look for the other streamer. A retried start's room
    /// keeps what the stream's first start wrote.
    pub async fn create_room(
        &self,
        room: &RoomName,
        streamer: Uuid,
        title: &str,
        new_stream: bool,
    ) -> Result<String, RoomServiceError> {
        let metadata = serde_json::json!({ "streamerId": streamer, "title": title }).to_string();
        let options = CreateRoomOptions {
            empty_timeout: self.room_options.empty_timeout_seconds,
            departure_timeout: self.room_options.departure_timeout_seconds,
            max_participants: self.room_options.max_participants,
            metadata,
            ..CreateRoomOptions::default()
        };
        let found = repeatable(|| self.rooms.create_room(room.as_str(), options.clone())).await?;
        if new_stream && found.metadata != options.metadata {
            repeatable(|| self.rooms.update_room_metadata(room.as_str(), &options.metadata)).await?;
        }
        Ok(found.sid)
    }

    /// Closes the room, disconnecting everyone. A room LiveKit no longer has
    /// counts as closed.
    pub async fn delete_room(&self, room: &RoomName) -> Result<(), RoomServiceError> {
        match repeatable(|| self.rooms.delete_room(room.as_str())).await {
            Err(RoomServiceError::NotFound) => Ok(()),
            other => other,
        }
    }

    /// Those of `rooms` that LiveKit has open: each name, and the sid of
    /// the instance open under it.
    pub async fn existing_rooms(
        &self,
        rooms: Vec<String>,
    ) -> Result<Vec<(String, String)>, RoomServiceError> {
        let found = repeatable(|| self.rooms.list_rooms(rooms.clone())).await?;
        Ok(found.into_iter().map(|room| (room.name, room.sid)).collect())
    }

    /// Whether `identity` is in the room now (a room that is gone has
    /// nobody): one `GetParticipant`, not the whole room's listing.
    pub async fn is_in_room(&self, room: &RoomName, identity: &str) -> Result<bool, RoomServiceError> {
        match repeatable(|| self.rooms.get_participant(room.as_str(), identity)).await {
            Ok(_) => Ok(true),
            Err(RoomServiceError::NotFound) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Who is in the room now. A room that is gone has nobody.
    pub async fn participants(
        &self,
        room: &RoomName,
    ) -> Result<Vec<proto::ParticipantInfo>, RoomServiceError> {
        match repeatable(|| self.rooms.list_participants(room.as_str())).await {
            Err(RoomServiceError::NotFound) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Sends `payload` to everyone in the room over the reliable data channel.
    /// Repeated if its connection closed unanswered, so a client may receive
    /// it twice.
    pub async fn broadcast(
        &self,
        room: &RoomName,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), RoomServiceError> {
        let options = SendDataOptions {
            kind: proto::data_packet::Kind::Reliable,
            topic: Some(topic.to_owned()),
            ..SendDataOptions::default()
        };
        repeatable(|| {
            self.rooms
                .send_data(room.as_str(), payload.clone(), options.clone())
        })
        .await
    }

    /// Tells everyone in the room its viewer count: a lossy packet on topic
    /// `viewers`, `{"event":"viewer_count","roomName","viewerCount","countedAt"}`,
    /// sent at most once a second per room. Viewers need no Realtime
    /// subscription for it. Pushes come from several functions (the webhook,
    /// the flusher, the reconciler) over an unordered channel, so an older
    /// count can land after a newer one: `countedAt` (Unix milliseconds, when
    /// the count was read, not when its push began: a push that waited for
    /// LiveKit behind others must not look newer than a count read after it)
    /// lets clients keep the newest.
    pub async fn push_viewer_count(
        &self,
        room: &RoomName,
        count: i32,
        counted_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), RoomServiceError> {
        let payload = serde_json::json!({
            "event": "viewer_count",
            "roomName": room,
            "viewerCount": count,
            "countedAt": counted_at.timestamp_millis(),
        });
        self.send_lossy(room, VIEWERS_TOPIC, payload.to_string().into_bytes())
            .await
    }

    /// Sends `payload` to everyone in the room over the lossy data channel:
    /// for state the next packet supersedes (counts), where a late packet is
    /// worse than a lost one.
    pub async fn send_lossy(
        &self,
        room: &RoomName,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), RoomServiceError> {
        let options = SendDataOptions {
            kind: proto::data_packet::Kind::Lossy,
            topic: Some(topic.to_owned()),
            ..SendDataOptions::default()
        };
        bounded(self.rooms.send_data(room.as_str(), payload, options)).await
    }

    /// Disconnects `identity` from the room, and tells LiveKit which of their
    /// tokens to refuse from now on. Someone who is not there is fine.
    pub async fn remove_participant(
        &self,
        room: &RoomName,
        identity: &str,
        revocation: Revocation,
    ) -> Result<(), RoomServiceError> {
        let options = RemoveParticipantOptions {
            revoke_token_ts: revocation.revoke_token_ts(),
        };
        match repeatable(|| {
            self.rooms
                .remove_participant_with_options(room.as_str(), identity, options.clone())
        })
        .await
        {
            Err(RoomServiceError::NotFound) => Ok(()),
            other => other,
        }
    }

    /// Gives a viewer in the room now what their tokens get: the data
    /// permission of their mute (none while muted, otherwise
    /// `LIVEKIT_VIEWER_CAN_PUBLISH_DATA`), camera and microphone while on
    /// stage (LiveKit unpublishes their tracks when that goes), and the stage
    /// attributes every client draws. Someone not in the room is fine.
    ///
    /// The database does not know who signed in anonymously; the participant
    /// does (the attribute its token set, which viewer tokens cannot change).
    /// So when the update would give data (an unmute, a stage change), the
    /// participant is read first, and an anonymous sign-in who may only watch
    /// gets the update without it: never data for a moment.
    ///
    /// A standing without a stage is told with the participant read first
    /// too, so that its attributes are set only where they show a stage to
    /// clear: a plain viewer's mute sets none (see [`LiveKit::set_viewer`]).
    pub async fn update_viewer(
        &self,
        room: &RoomName,
        identity: &str,
        muted: bool,
        stage: StageStanding,
    ) -> Result<(), RoomServiceError> {
        let anonymity_matters = self.viewer_can_publish_data(muted) && self.withholds_data_from(true);
        let (muted, shown) = if anonymity_matters || stage == StageStanding::default() {
            match repeatable(|| self.rooms.get_participant(room.as_str(), identity)).await {
                Ok(participant) => (
                    if anonymity_matters {
                        self.withholds_data_from(is_anonymous(&participant.attributes))
                    } else {
                        muted
                    },
                    StageStanding::from_attributes(&participant.attributes),
                ),
                Err(RoomServiceError::NotFound) => return Ok(()),
                Err(error) => return Err(error),
            }
        } else {
            // A stage to show is set whatever is shown now.
            (muted, StageStanding::default())
        };
        self.set_viewer(room, identity, muted, stage, shown).await
    }

    /// [`LiveKit::update_viewer`] for a participant whose anonymity is known
    /// (from a webhook or a listing) and already in `muted`.
    ///
    /// The stage attributes go only where they change what the participant
    /// `shown` has: LiveKit marks a participant whose attributes are set, to
    /// whatever values, as one every client must hear of (see
    /// [`LiveKit::mint_token`]), so a plain viewer's mute sets none.
    pub async fn set_viewer(
        &self,
        room: &RoomName,
        identity: &str,
        muted: bool,
        stage: StageStanding,
        shown: StageStanding,
    ) -> Result<(), RoomServiceError> {
        let options = UpdateParticipantOptions {
            permission: Some(self.viewer_permission(muted, stage.on_stage)),
            attributes: if stage == shown {
                std::collections::HashMap::new()
            } else {
                stage.attributes()
            },
            ..UpdateParticipantOptions::default()
        };
        match repeatable(|| {
            self.rooms
                .update_participant(room.as_str(), identity, options.clone())
        })
        .await
        {
            Err(RoomServiceError::NotFound) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The permission a viewer with this mute and place on the stage has.
    pub fn viewer_permission(&self, muted: bool, on_stage: bool) -> proto::ParticipantPermission {
        proto::ParticipantPermission {
            can_subscribe: true,
            can_publish: on_stage,
            can_publish_data: self.viewer_can_publish_data(muted),
            can_publish_sources: if on_stage {
                GUEST_SOURCES.iter().map(|source| *source as i32).collect()
            } else {
                Vec::new()
            },
            ..proto::ParticipantPermission::default()
        }
    }

    /// Whether a viewer, muted or not, may publish data packets.
    pub fn viewer_can_publish_data(&self, muted: bool) -> bool {
        self.viewer_can_publish_data && !muted
    }

    /// Whether a participant is kept from publishing data for being an
    /// anonymous sign-in (who may only watch unless anonymous sign-ins may
    /// take part): as if muted.
    pub fn withholds_data_from(&self, anonymous: bool) -> bool {
        anonymous && !self.anonymous_can_publish_data
    }

    /// Checks a webhook's signature (a JWT signed with our API secret carrying
    /// the SHA-256 of the exact body) and decodes the event.
    pub fn receive_webhook(
        &self,
        body: &str,
        authorization: &str,
    ) -> Result<proto::WebhookEvent, WebhookError> {
        self.webhooks.receive(body, authorization)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoomServiceError {
    #[error("LiveKit has no such room")]
    NotFound,
    #[error("LiveKit RoomService call failed: {0}")]
    Failed(String),
    /// The request went out and no usable answer came back (the connection
    /// closed, or the answer did not arrive or decode): LiveKit may have
    /// acted on it.
    #[error("LiveKit RoomService call got no answer: {0}")]
    Unanswered(String),
    /// No answer in time: the request may have gone out, and LiveKit may
    /// still act on it later.
    #[error("LiveKit RoomService did not answer in time")]
    TimedOut,
}

impl RoomServiceError {
    /// Whether LiveKit may have acted on the call (it went out and no answer
    /// said otherwise), now or later.
    pub fn may_have_acted(&self) -> bool {
        matches!(self, RoomServiceError::TimedOut | RoomServiceError::Unanswered(_))
    }
}

/// Runs RoomService work that follows a committed decision for as long as
/// the current request can still answer in time
/// ([`crate::store::db::while_the_answer_can_wait`]); out of time is
/// [`RoomServiceError::TimedOut`], as a call that timed out by itself.
pub async fn before_the_answer<T>(
    work: impl Future<Output = Result<T, RoomServiceError>>,
) -> Result<T, RoomServiceError> {
    before_the_answer_leaving(Duration::ZERO, work).await
}

/// As [`before_the_answer`], stopping `reserve` sooner, for a step of the
/// request's own that must still follow it within the answer's time
/// ([`crate::store::db::while_the_answer_can_wait_leaving`]).
pub async fn before_the_answer_leaving<T>(
    reserve: Duration,
    work: impl Future<Output = Result<T, RoomServiceError>>,
) -> Result<T, RoomServiceError> {
    crate::store::db::while_the_answer_can_wait_leaving(reserve, work)
        .await
        .unwrap_or(Err(RoomServiceError::TimedOut))
}

/// Bounds a RoomService call: the client's own timeout is per attempt and may
/// be retried, this bounds the whole call.
async fn bounded<T>(call: impl Future<Output = Result<T, ServiceError>>) -> Result<T, RoomServiceError> {
    match tokio::time::timeout(ROOM_SERVICE_TIMEOUT * 2, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(ServiceError::Twirp(ServerError::Twirp(ServerErrorCode { code, .. }))))
            if code == ServerErrorCode::NOT_FOUND =>
        {
            Err(RoomServiceError::NotFound)
        }
        // The client's own per-attempt timeout: the request went out and may
        // still be acted on, as when the whole call's bound runs out.
        Ok(Err(ServiceError::Twirp(ServerError::Request(e)))) if e.is_timeout() => {
            Err(RoomServiceError::TimedOut)
        }
        // Not a connection that was never made: the request may have arrived.
        Ok(Err(ServiceError::Twirp(ServerError::Request(e)))) if !e.is_connect() => {
            Err(RoomServiceError::Unanswered(e.to_string()))
        }
        // LiveKit answered, and the answer did not decode: it acted.
        Ok(Err(ServiceError::Twirp(ServerError::Prost(e)))) => {
            Err(RoomServiceError::Unanswered(e.to_string()))
        }
        Ok(Err(e)) => Err(RoomServiceError::Failed(e.to_string())),
        Err(_) => Err(RoomServiceError::TimedOut),
    }
}

/// How many times a repeatable call is sent when its connection closes
/// without an answer: every keep-alive connection of a container can be
/// stale at once, and each stale one fails at once.
const SENDS_ON_CLOSED_CONNECTIONS: usize = 3;

/// [`bounded`], for a call whose repetition does no harm: sent again when the
/// connection it went out on closed before any answer. A load balancer, a
/// proxy or a restarted LiveKit closes idle keep-alive connections, and a
/// Lambda container frozen between invocations does not see it happen, so
/// its first call after a pause goes out on a closed connection. livekit-api
/// retries only for LiveKit Cloud hosts (region failover), so a self-hosted
/// server would otherwise cost that call a 503 or a late chat message.
/// Repeatable: the RoomService calls that set or read state, and the reliable
/// chat packets (clients key messages by id; a deletion twice is one). Lossy
/// packets (counts, reaction tallies) are sent once: the next one follows
/// within a second, and a tally shown twice would double the taps.
async fn repeatable<T, F, Fut>(call: F) -> Result<T, RoomServiceError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    bounded(async {
        let mut sends = 1;
        loop {
            match call().await {
                Err(error) if sends < SENDS_ON_CLOSED_CONNECTIONS && closed_unanswered(&error) => {
                    tracing::info!(%error, sends, "LiveKit connection closed unanswered; sending again");
                    sends += 1;
                }
                answered => return answered,
            }
        }
    })
    .await
}

/// The request went out on a connection that was there, and the connection
/// closed or was reset before any answer: not a refused connection, not a
/// timeout, and not an answer whose body failed to arrive or decode (LiveKit
/// had acted on that one).
fn closed_unanswered(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Twirp(ServerError::Request(e)) if e.is_request() && !e.is_timeout() && !e.is_connect()
    )
}

impl LiveKit {
    /// Every grant is spelled out: `VideoGrants::default()` allows publishing,
    /// and LiveKit treats a missing `canPublishData` as equal to `canPublish`.
    fn grants_for(&self, room: &RoomName, role: Role) -> VideoGrants {
        match role {
            Role::Host => video_grants(room, true, true, Vec::new()),
            Role::Viewer {
                muted,
                stage,
                anonymous,
            } => {
                let can_publish_data =
                    self.viewer_can_publish_data(muted || self.withholds_data_from(anonymous));
                // Tokens name sources as LiveKit's JSON does: "camera", "microphone".
                let sources = if stage.on_stage {
                    GUEST_SOURCES
                        .iter()
                        .map(|source| source.as_str_name().to_ascii_lowercase())
                        .collect()
                } else {
                    Vec::new()
                };
                video_grants(room, stage.on_stage, can_publish_data, sources)
            }
        }
    }
}

fn video_grants(
    room: &RoomName,
    can_publish: bool,
    can_publish_data: bool,
    can_publish_sources: Vec<String>,
) -> VideoGrants {
    VideoGrants {
        room_join: true,
        room: room.to_string(),
        can_publish: Some(can_publish),
        can_subscribe: Some(true),
        can_publish_data: Some(can_publish_data),
        can_publish_sources,
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
