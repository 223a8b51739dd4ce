//! `POST /live/webhook`: LiveKit's webhooks. No Supabase auth: LiveKit signs
//! each call with our API secret over the SHA-256 of the exact body.

use lambda_http::http::Method;
use lambda_http::http::header::AUTHORIZATION;
use lambda_http::{Body, Request, Response};
use livekit_api::webhooks::WebhookError;
use serde::Serialize;

use uuid::Uuid;

use crate::chat;
use crate::domain::RoomName;
use crate::error::ApiError;
use crate::http::{BoxFuture, Endpoint, error_response, json_response, within_deadline};
use crate::room_rules::{self, StreamState};
use crate::state::AppState;
use crate::viewers::{self, Presence};

/// Webhook bodies carry a room and a participant: a few KiB at most.
const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

/// The webhook endpoint, for [`crate::http::serve_endpoint`].
pub struct LiveKitWebhook;

impl Endpoint for LiveKitWebhook {
    fn respond<'a>(&'a self, state: &'a AppState, request: Request) -> BoxFuture<'a, Response<Body>> {
        Box::pin(within_deadline(state, async move {
            match receive_webhook(state, &request).await {
                Ok(ack) => json_response(lambda_http::http::StatusCode::OK, &ack),
                Err(error) => error_response(&error),
            }
        }))
    }
}

/// What happened to a delivered event. Anything but a bad signature is a 200,
/// so LiveKit does not retry what will never apply.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAck {
    pub outcome: Outcome,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Duplicate,
    Ignored,
}

pub async fn receive_webhook(state: &AppState, request: &Request) -> Result<WebhookAck, ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed {
            used: request.method().to_string(),
            allowed: Method::POST,
        });
    }
    // lambda_http has already undone API Gateway's base64: these are the bytes LiveKit signed.
    let body = request.body().as_ref();
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_WEBHOOK_BYTES,
        });
    }
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .filter(|v| !v.is_empty())
        .ok_or(ApiError::InvalidSignature)?;
    let body = std::str::from_utf8(body).map_err(|_| ApiError::InvalidSignature)?;
    let event = match state.livekit.receive_webhook(body, authorization) {
        Ok(event) => event,
        Err(WebhookError::InvalidData(error)) => {
            // Signed by LiveKit but not an event we can read: retrying will not help.
            tracing::warn!(%error, "signed webhook body is not a LiveKit event; ignored");
            return Ok(WebhookAck {
                outcome: Outcome::Ignored,
            });
        }
        Err(error) => {
            tracing::info!(%error, "webhook signature rejected");
            return Err(ApiError::InvalidSignature);
        }
    };
    let outcome = apply(state, &event).await?;
    tracing::info!(event = %event.event, id = %event.id, ?outcome, "webhook handled");
    Ok(WebhookAck { outcome })
}

enum Change {
    Joined(Presence),
    Left(Presence),
    RoomFinished,
}

/// Applies the event in one transaction under the stream's row lock, then,
/// once it has committed, makes LiveKit enforce what the database says about
/// a participant who just joined (banned, muted, or in a stream that is over).
async fn apply(state: &AppState, event: &livekit_protocol::WebhookEvent) -> Result<Outcome, ApiError> {
    let change = match event.event.as_str() {
        "participant_joined" => event.participant.as_ref().map(|p| Change::Joined(p.into())),
        "participant_left" | "participant_connection_aborted" => {
            event.participant.as_ref().map(|p| Change::Left(p.into()))
        }
        "room_finished" => Some(Change::RoomFinished),
        _ => None,
    };
    let Some(change) = change else {
        return Ok(Outcome::Ignored);
    };
    let Some((room, room_sid)) = event
        .room
        .as_ref()
        .and_then(|r| Some((RoomName::parse(r.name.clone()).ok()?, r.sid.as_str())))
    else {
        return Ok(Outcome::Ignored);
    };

    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // The id is recorded in the same transaction as the change: if applying
    // fails, LiveKit's retry is not mistaken for a duplicate.
    if !event.id.is_empty() && !viewers::first_delivery(&tx, &event.id).await? {
        return Ok(Outcome::Duplicate);
    }
    let Some(locked) = viewers::lock_room(&tx, &room).await? else {
        tx.commit().await?;
        return Ok(Outcome::Ignored);
    };
    if !locked.is_instance(room_sid) {
        // An earlier (or later) LiveKit room of the same name: a late
        // room_finished of the instance before a retried start must not end
        // the stream of this one.
        tracing::info!(%room, event_room_sid = room_sid, "webhook of another instance of the room; ignored");
        tx.commit().await?;
        return Ok(Outcome::Ignored);
    }
    let stream = StreamState {
        streamer: locked.streamer,
        is_live: locked.is_live,
    };
    let mut correction = None;
    let outcome = match change {
        Change::Joined(who) if !stream.is_live => {
            // The stream is over: nobody belongs in its room, and counts stay as they ended.
            correction =
                room_rules::correction(&state.livekit, &stream, &who, None).map(|c| (who.identity, c));
            Outcome::Ignored
        }
        Change::Left(_) if !stream.is_live => Outcome::Ignored,
        Change::Joined(who) => {
            viewers::joined(&tx, &room, stream.streamer, &who).await?;
            viewers::recount(&tx, &room).await?;
            let restrictions = match Uuid::parse_str(&who.identity) {
                Ok(user) => chat::restricted_among(&*tx, &room, &[user]).await?.remove(&user),
                Err(_) => None,
            };
            correction = room_rules::correction(&state.livekit, &stream, &who, restrictions)
                .map(|c| (who.identity, c));
            Outcome::Applied
        }
        Change::Left(who) => {
            viewers::left(&tx, &room, stream.streamer, &who).await?;
            viewers::recount(&tx, &room).await?;
            Outcome::Applied
        }
        // Live or already ended: LiveKit has confirmed the room is gone.
        Change::RoomFinished => {
            viewers::room_finished(&tx, &room).await?;
            Outcome::Applied
        }
    };
    tx.commit().await?;
    drop(client);
    if let Some(correction) = correction {
        room_rules::apply_all(&state.livekit, &room, &[correction]).await;
    }
    Ok(outcome)
}
