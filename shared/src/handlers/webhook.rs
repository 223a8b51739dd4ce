//! `POST /live/webhook`: LiveKit's webhooks. No Supabase auth: LiveKit signs
//! each call with our API secret over the SHA-256 of the exact body.

use lambda_http::http::Method;
use lambda_http::http::header::AUTHORIZATION;
use lambda_http::{Body, Request, Response};
use livekit_api::webhooks::WebhookError;
use serde::Serialize;

use tokio_postgres::types::Type;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::http::{
    BoxFuture, Endpoint, error_response, invocation_time_left, json_response, within_deadline,
};
use crate::livekit::room_rules::{self, StreamState};
use crate::state::AppState;
use crate::store::viewers::{self, Presence, SessionChange};

/// Webhook bodies carry a room and a participant: a few KiB at most.
const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

/// The webhook endpoint, for [`crate::http::serve_endpoint`].
pub struct LiveKitWebhook;

impl Endpoint for LiveKitWebhook {
    fn respond<'a>(&'a self, state: &'a AppState, request: Request) -> BoxFuture<'a, Response<Body>> {
        Box::pin(async move {
            let mut response = within_deadline(state, invocation_time_left(&request), async {
                match receive_webhook(state, &request).await {
                    Ok(ack) => json_response(lambda_http::http::StatusCode::OK, &ack),
                    Err(error) => error_response(&error),
                }
            })
            .await;
            without_retry_after(&mut response);
            response
        })
    }

    fn unavailable(&self, error: &ApiError) -> Response<Body> {
        let mut response = error_response(error);
        without_retry_after(&mut response);
        response
    }
}

/// LiveKit's webhook client (go-retryablehttp's default backoff) waits what
/// a 503's Retry-After says instead of backing off (four retries that far
/// apart), where its own 1, 2, 4 and 8 s give the database, or a startup that
/// failed, 15 s to come back before the event is dropped.
fn without_retry_after(response: &mut Response<Body>) {
    response
        .headers_mut()
        .remove(lambda_http::http::header::RETRY_AFTER);
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
        // Signed by LiveKit (the signature is checked before the body is
        // decoded), but not all of it decodes.
        Err(WebhookError::InvalidData(error)) => match the_fields_read(body) {
            Some(event) => {
                tracing::warn!(%error, event = %event.event, "a signed webhook with values this build does not know; applied from the fields it reads");
                event
            }
            None => {
                // Not an event we can read: retrying will not help.
                tracing::error!(%error, "signed webhook body is not a LiveKit event; ignored");
                return Ok(WebhookAck {
                    outcome: Outcome::Ignored,
                });
            }
        },
        Err(error) => {
            tracing::info!(%error, "webhook signature rejected");
            return Err(ApiError::InvalidSignature);
        }
    };
    let outcome = apply(state, &event).await?;
    tracing::info!(event = %event.event, id = %event.id, ?outcome, "webhook handled");
    Ok(WebhookAck { outcome })
}

/// The event decoded from only the fields this handler reads, for a signed
/// body the whole of which does not decode. A newer LiveKit (LiveKit Cloud
/// runs the newest) can send an enum value this build's protocol does not
/// know anywhere in an event (a track's source, a kind detail), and one such
/// value fails the whole decode: the join or leave would be lost until the
/// reconciler's next run. Among the fields read, an unknown participant kind
/// reads as hidden (neither counted nor listed, as every kind but a standard
/// one), and an unknown disconnect reason as none given.
fn the_fields_read(body: &str) -> Option<livekit_protocol::WebhookEvent> {
    use livekit_protocol::{DisconnectReason, participant_info::Kind};
    use serde_json::{Map, Value, json};
    fn pick(from: &Value, fields: &[&str]) -> Map<String, Value> {
        fields
            .iter()
            .filter_map(|field| Some(((*field).to_owned(), from.get(*field)?.clone())))
            .collect()
    }
    // Decoded from text, as the whole event is: `from_value` would build a
    // second copy of every decoder of the protocol's types into the binary
    // (about 100 KB of the webhook's zip).
    fn known<T: serde::de::DeserializeOwned>(value: Option<&Value>) -> bool {
        value.is_none_or(|value| serde_json::from_str::<T>(&value.to_string()).is_ok())
    }
    let body: Value = serde_json::from_str(body).ok()?;
    let mut event = pick(&body, &["event", "id", "createdAt"]);
    if let Some(room) = body.get("room") {
        event.insert("room".into(), Value::Object(pick(room, &["name", "sid"])));
    }
    if let Some(from) = body.get("participant") {
        let mut participant = pick(
            from,
            &[
                "sid",
                "identity",
                "name",
                "kind",
                "joinedAt",
                "joinedAtMs",
                "disconnectReason",
                "attributes",
            ],
        );
        let mut permission = from
            .get("permission")
            .map(|permission| pick(permission, &["hidden", "canPublish", "canPublishData"]))
            .unwrap_or_default();
        if !known::<Kind>(participant.get("kind")) {
            participant.remove("kind");
            permission.insert("hidden".into(), json!(true));
        }
        if !known::<DisconnectReason>(participant.get("disconnectReason")) {
            participant.remove("disconnectReason");
        }
        participant.insert("permission".into(), Value::Object(permission));
        event.insert("participant".into(), Value::Object(participant));
    }
    serde_json::from_str(&Value::Object(event).to_string()).ok()
}

/// How long a webhook waits for the count it wrote to reach the room.
const PUSH_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Applies the event (one statement), then makes LiveKit enforce what the
/// database says about a participant who just joined: banned, muted, or in a
/// stream that is over.
async fn apply(state: &AppState, event: &livekit_protocol::WebhookEvent) -> Result<Outcome, ApiError> {
    let Some((room, room_sid)) = event
        .room
        .as_ref()
        .and_then(|r| Some((RoomName::parse(r.name.clone()).ok()?, r.sid.as_str())))
    else {
        return Ok(Outcome::Ignored);
    };
    if event.event == "room_finished" {
        return room_finished(state, event, &room, room_sid).await;
    }
    let Some(participant) = event.participant.as_ref() else {
        return Ok(Outcome::Ignored);
    };
    let change = match event.event.as_str() {
        "participant_joined" => SessionChange::Joined,
        "participant_left" => match SessionChange::left_because(participant.disconnect_reason) {
            Some(change) => change,
            None => return Ok(Outcome::Ignored),
        },
        "participant_connection_aborted" => SessionChange::Dropped,
        _ => return Ok(Outcome::Ignored),
    };
    let who = Presence::from(participant);
    let applied = {
        let client = state.db.get().await?;
        let source = viewers::EventSource {
            id: &event.id,
            made_at: chrono::DateTime::from_timestamp(event.created_at, 0).filter(|_| event.created_at > 0),
        };
        let mut applied = viewers::participant_event(
            &client,
            source,
            &room,
            room_sid,
            change,
            &who,
            state.rules.stage_return,
        )
        .await?;
        // LiveKit delivers again what was not answered 2xx: the first delivery
        // may have committed and then died (a timeout) before it made LiveKit
        // enforce the standing, so a repeated join still gets its correction.
        if change == SessionChange::Joined
            && applied.outcome == "duplicate"
            && let Some(user) = who.owner()
            && let Some((streamer, is_live, standing)) =
                viewers::standing_at_join(&client, &room, user).await?
        {
            applied.streamer = Some(streamer);
            applied.is_live = is_live;
            applied.standing = standing;
        }
        applied
    };
    let counted_at = chrono::Utc::now();
    // LiveKit sends a room's webhooks one at a time, each after the one
    // before it is answered, and drops those queued past 200 or 30 s: what
    // this answer waits for delays every later event of the room. The count's
    // push is lossy (the next write pushes again), so it gets a short bound
    // and runs beside the correction, which is not.
    let push = async {
        let Some(count) = applied.count_written else {
            return;
        };
        let pushed = tokio::time::timeout(
            PUSH_LIMIT,
            state.livekit.push_viewer_count(&room, count, counted_at),
        )
        .await
        .unwrap_or(Err(crate::livekit::RoomServiceError::TimedOut));
        if let Err(error) = pushed {
            tracing::warn!(%room, %error, "viewer count not pushed into the room; the next write pushes it");
        }
    };
    let correct = async {
        if change == SessionChange::Joined
            && let Some(streamer) = applied.streamer
        {
            let stream = StreamState {
                streamer,
                is_live: applied.is_live,
            };
            if let Some(correction) =
                room_rules::correction(&state.livekit, &stream, &who, Some(applied.standing))
            {
                room_rules::correct_all(state, &room, &stream, &[(who.clone(), correction)], None).await;
            }
        }
    };
    tokio::join!(push, correct);
    Ok(match applied.outcome.as_str() {
        "applied" => Outcome::Applied,
        "duplicate" => Outcome::Duplicate,
        _ => Outcome::Ignored,
    })
}

/// LiveKit closed the room: the stream ends as `/live/end` would end it. An
/// event of another instance of the room (a late `room_finished` of the one
/// before a retried start) changes nothing.
async fn room_finished(
    state: &AppState,
    event: &livekit_protocol::WebhookEvent,
    room: &RoomName,
    room_sid: &str,
) -> Result<Outcome, ApiError> {
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // The id is recorded in the same transaction as the change: if applying
    // fails, LiveKit's retry is not mistaken for a duplicate.
    if !event.id.is_empty() {
        let first = tx
            .query_typed(
                "INSERT INTO live_webhook_events (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id",
                &[(&event.id.as_str(), Type::TEXT)],
            )
            .await?;
        if first.is_empty() {
            return Ok(Outcome::Duplicate);
        }
    }
    // Under the row lock a retried /live/start takes to record a new
    // instance: read without it, the old sid could pass the check below and
    // the end then land on the stream the start had just moved.
    let instance: Option<Option<String>> = tx
        .query_typed_opt(
            "SELECT room_sid FROM live_streams WHERE id = $1 FOR NO KEY UPDATE",
            &[(&room.as_str(), Type::TEXT)],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(ApiError::internal)?;
    let outcome = match instance {
        None => Outcome::Ignored,
        Some(Some(ours)) if !room_sid.is_empty() && ours != room_sid => {
            tracing::info!(%room, event_room_sid = room_sid, "room_finished of another instance of the room; ignored");
            Outcome::Ignored
        }
        Some(_) => {
            viewers::finish(&*tx, room, None).await?;
            Outcome::Applied
        }
    };
    tx.commit().await?;
    Ok(outcome)
}
