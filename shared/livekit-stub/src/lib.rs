//! A stand-in for LiveKit's RoomService, for the few tests that need what
//! LiveKit's real server cannot be made to do on cue (everything else runs
//! against the real server, see `shared/tests/api/livekit_server.rs`):
//! - hold one call at an exact point while the test does something else
//!   ([`LiveKitStub::hold`]), for deterministic interleavings;
//! - list participants who are not really there, or leave out one who is
//!   ([`LiveKitStub::set_participants`]): a stale view of the room;
//! - show what a `RemoveParticipant` asked for ([`LiveKitStub::removals`]):
//!   the real server (1.13.5) ignores `revoke_token_ts`, so only a recording
//!   of the call shows which tokens we asked LiveKit to refuse.
//!
//! It speaks the Twirp API the backend calls, in protobuf on loopback, checks
//! each call's bearer token and grants the way LiveKit does, and keeps rooms in
//! memory. No media, no webhooks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use livekit_api::access_token::{Claims, TokenVerifier};
use livekit_protocol as proto;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;

/// A room as the server holds it.
#[derive(Clone, Debug, Default)]
pub struct StubRoom {
    /// This instance of the room: `RM_<name>` the first time a name is
    /// created, `RM_<name>_<n>` when it is created again after being removed.
    pub sid: String,
    pub create_request: Option<proto::CreateRoomRequest>,
    pub participants: Vec<proto::ParticipantInfo>,
}

struct Inner {
    api_key: String,
    api_secret: String,
    rooms: BTreeMap<String, StubRoom>,
    /// How many times each name was created, for the rooms' sids.
    generations: BTreeMap<String, u32>,
    /// Every `RemoveParticipant` request, in the order they came.
    removals: Vec<proto::RoomParticipantIdentity>,
    /// Methods whose next call waits for the test (see [`LiveKitStub::hold`]).
    holds: BTreeMap<String, Arc<Hold>>,
}

/// A call held at the server: the test learns it arrived, does something in
/// between, and lets it go on. Deterministic interleavings, no sleeps.
#[derive(Default)]
pub struct Hold {
    arrived: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Hold {
    /// Waits until the held call has reached the server.
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Lets the held call go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

#[derive(Clone)]
pub struct LiveKitStub {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl LiveKitStub {
    /// Serves on `addr` (port 0 picks a free one) until the process ends.
    pub async fn start(addr: SocketAddr, api_key: &str, api_secret: &str) -> std::io::Result<LiveKitStub> {
        let inner = Arc::new(Mutex::new(Inner {
            api_key: api_key.to_owned(),
            api_secret: api_secret.to_owned(),
            rooms: BTreeMap::new(),
            generations: BTreeMap::new(),
            removals: Vec::new(),
            holds: BTreeMap::new(),
        }));
        let router = Router::new()
            .route("/twirp/livekit.RoomService/{method}", post(room_service))
            .with_state(inner.clone());
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(LiveKitStub { addr, inner })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client would be given (`ws://127.0.0.1:<port>`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Every `RemoveParticipant` request so far (room, identity,
    /// `revoke_token_ts`), whether or not the participant was there.
    pub fn removals(&self) -> Vec<proto::RoomParticipantIdentity> {
        self.lock().removals.clone()
    }

    /// Holds the next call to `method` (e.g. `ListParticipants`) before it is
    /// answered, until the returned hold is released.
    pub fn hold(&self, method: &str) -> Arc<Hold> {
        let hold = Arc::new(Hold::default());
        self.lock().holds.insert(method.to_owned(), hold.clone());
        hold
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.lock().rooms.contains_key(room)
    }

    /// Replaces who is in `room` (creating the room if needed).
    pub fn set_participants(&self, room: &str, participants: Vec<proto::ParticipantInfo>) {
        self.lock().room_entry(room).participants = participants;
    }
}

impl Inner {
    /// The room of that name, created (as a new instance) if missing.
    fn room_entry(&mut self, name: &str) -> &mut StubRoom {
        if !self.rooms.contains_key(name) {
            let generation = self.generations.entry(name.to_owned()).or_default();
            *generation += 1;
            let sid = match *generation {
                1 => format!("RM_{name}"),
                n => format!("RM_{name}_{n}"),
            };
            self.rooms.insert(
                name.to_owned(),
                StubRoom {
                    sid,
                    ..StubRoom::default()
                },
            );
        }
        self.rooms
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }
}

/// A participant as LiveKit reports it.
pub fn participant(identity: &str, sid: &str, hidden: bool) -> proto::ParticipantInfo {
    proto::ParticipantInfo {
        sid: sid.to_owned(),
        identity: identity.to_owned(),
        state: proto::participant_info::State::Active as i32,
        permission: Some(proto::ParticipantPermission {
            can_subscribe: true,
            can_publish_data: true,
            hidden,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn twirp_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (status, Json(json!({"code": code, "msg": msg}))).into_response()
}

fn protobuf(message: impl Message) -> Response {
    (
        [("content-type", "application/protobuf")],
        message.encode_to_vec(),
    )
        .into_response()
}

async fn room_service(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (verifier, hold) = {
        let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
        (
            TokenVerifier::with_api_key(&inner.api_key, &inner.api_secret),
            inner.holds.remove(&method),
        )
    };
    if let Some(hold) = hold {
        hold.arrived.notify_one();
        hold.release.notified().await;
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(claims) = token.and_then(|t| verifier.verify(t).ok()) else {
        return twirp_error(StatusCode::UNAUTHORIZED, "unauthenticated", "invalid token");
    };
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/protobuf") {
        return twirp_error(
            StatusCode::BAD_REQUEST,
            "malformed",
            "expected application/protobuf",
        );
    }
    let denied = |grant: &str| twirp_error(StatusCode::FORBIDDEN, "permission_denied", grant);
    let malformed = || twirp_error(StatusCode::BAD_REQUEST, "malformed", "cannot decode the request");
    let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
    let room_admin = |claims: &Claims, room: &str| claims.video.room_admin && claims.video.room == room;
    match method.as_str() {
        "CreateRoom" => {
            let Ok(request) = proto::CreateRoomRequest::decode(body) else {
                return malformed();
            };
            if !claims.video.room_create {
                return denied("roomCreate required");
            }
            let room = inner.room_entry(&request.name);
            if room.create_request.is_none() {
                room.create_request = Some(request.clone());
            }
            protobuf(room_info(&request.name, room))
        }
        "DeleteRoom" => {
            let Ok(request) = proto::DeleteRoomRequest::decode(body) else {
                return malformed();
            };
            if !claims.video.room_create {
                return denied("roomCreate required");
            }
            if inner.rooms.remove(&request.room).is_none() {
                return twirp_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "requested room does not exist",
                );
            }
            protobuf(proto::DeleteRoomResponse::default())
        }
        "ListRooms" => {
            let Ok(request) = proto::ListRoomsRequest::decode(body) else {
                return malformed();
            };
            if !claims.video.room_list {
                return denied("roomList required");
            }
            let rooms = inner
                .rooms
                .iter()
                .filter(|(name, _)| request.names.is_empty() || request.names.contains(name))
                .map(|(name, room)| room_info(name, room))
                .collect();
            protobuf(proto::ListRoomsResponse { rooms })
        }
        "ListParticipants" => {
            let Ok(request) = proto::ListParticipantsRequest::decode(body) else {
                return malformed();
            };
            if !room_admin(&claims, &request.room) {
                return denied("roomAdmin for this room required");
            }
            match inner.rooms.get(&request.room) {
                Some(room) => protobuf(proto::ListParticipantsResponse {
                    participants: room.participants.clone(),
                }),
                None => twirp_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "requested room does not exist",
                ),
            }
        }
        "GetParticipant" => {
            let Ok(request) = proto::RoomParticipantIdentity::decode(body) else {
                return malformed();
            };
            if !room_admin(&claims, &request.room) {
                return denied("roomAdmin for this room required");
            }
            let found = inner.rooms.get(&request.room).and_then(|room| {
                room.participants
                    .iter()
                    .find(|p| p.identity == request.identity)
                    .cloned()
            });
            match found {
                Some(participant) => protobuf(participant),
                None => twirp_error(StatusCode::NOT_FOUND, "not_found", "participant not found"),
            }
        }
        "SendData" => {
            let Ok(request) = proto::SendDataRequest::decode(body) else {
                return malformed();
            };
            if !room_admin(&claims, &request.room) {
                return denied("roomAdmin for this room required");
            }
            let exists = inner.rooms.contains_key(&request.room);
            if !exists {
                return twirp_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "requested room does not exist",
                );
            }
            protobuf(proto::SendDataResponse::default())
        }
        "RemoveParticipant" | "UpdateParticipant" => {
            let (room, identity, permission) = if method == "RemoveParticipant" {
                let Ok(request) = proto::RoomParticipantIdentity::decode(body) else {
                    return malformed();
                };
                if room_admin(&claims, &request.room) {
                    inner.removals.push(request.clone());
                }
                (request.room, request.identity, None)
            } else {
                let Ok(request) = proto::UpdateParticipantRequest::decode(body) else {
                    return malformed();
                };
                (request.room, request.identity, request.permission)
            };
            if !room_admin(&claims, &room) {
                return denied("roomAdmin for this room required");
            }
            let Some(stub_room) = inner.rooms.get_mut(&room) else {
                return twirp_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "requested room does not exist",
                );
            };
            let Some(index) = stub_room.participants.iter().position(|p| p.identity == identity) else {
                return twirp_error(StatusCode::NOT_FOUND, "not_found", "participant not found");
            };
            if method == "RemoveParticipant" {
                stub_room.participants.remove(index);
                protobuf(proto::RemoveParticipantResponse::default())
            } else {
                let participant = &mut stub_room.participants[index];
                if permission.is_some() {
                    participant.permission = permission;
                }
                protobuf(participant.clone())
            }
        }
        _ => twirp_error(StatusCode::NOT_FOUND, "bad_route", "no such method"),
    }
}

fn room_info(name: &str, room: &StubRoom) -> proto::Room {
    let request = room.create_request.clone().unwrap_or_default();
    proto::Room {
        sid: room.sid.clone(),
        name: name.to_owned(),
        empty_timeout: request.empty_timeout,
        departure_timeout: request.departure_timeout,
        max_participants: request.max_participants,
        metadata: request.metadata,
        num_participants: room.participants.len() as u32,
        ..Default::default()
    }
}
