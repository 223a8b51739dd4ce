//! `POST /live/webhook`: LiveKit's webhooks. No Supabase auth: LiveKit signs
//! each call with our API secret over the SHA-256 of the exact body.

use lambda_http::http::Method;
use lambda_http::http::header::AUTHORIZATION;
use lambda_http::{Body, Request, Response};
use livekit_api::webhooks::WebhookError;
use serde::Serialize;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::http::{BoxFuture, Endpoint, error_response, json_response, within_deadline};
use crate::state::AppState;
use crate::viewers::{self, Presence};

/// Webhook bodies carry a room and a participant: a few KiB at most.
const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

/// The webhook endpoint, for [`crate::http::serve_endpoint`].
pub struct LiveKitWebhook;

impl Endpoint for LiveKitWebhook {
    fn respond<'a>(&'a self, state: &'a AppState, request: Request) -> BoxFuture<'a, Response<Body>> {
        Box::pin(within_deadline(async move {
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

async fn apply(state: &AppState, event: &livekit_protocol::WebhookEvent) -> Result<Outcome, ApiError> {
    let presence = || {
        event.participant.as_ref().map(|p| Presence {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            hidden: p.permission.as_ref().is_some_and(|perm| perm.hidden),
        })
    };
    let change = match event.event.as_str() {
        "participant_joined" => presence().map(Change::Joined),
        "participant_left" | "participant_connection_aborted" => presence().map(Change::Left),
        "room_finished" => Some(Change::RoomFinished),
        _ => None,
    };
    let Some(change) = change else {
        return Ok(Outcome::Ignored);
    };
    let Some(room) = event
        .room
        .as_ref()
        .and_then(|r| RoomName::parse(r.name.clone()).ok())
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
    let Some(streamer) = viewers::lock_room(&tx, &room).await? else {
        tx.commit().await?;
        return Ok(Outcome::Ignored);
    };
    match change {
        Change::Joined(who) => viewers::joined(&tx, &room, streamer, &who).await?,
        Change::Left(who) => viewers::left(&tx, &room, streamer, &who).await?,
        Change::RoomFinished => viewers::room_finished(&tx, &room).await?,
    }
    viewers::recount(&tx, &room).await?;
    tx.commit().await?;
    Ok(Outcome::Applied)
}
