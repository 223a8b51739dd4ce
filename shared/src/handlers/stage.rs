//! The stage: `POST /live/stage/hand`, `GET /live/stage`, and
//! `POST /live/stage/invite`, `/accept`, `/decline`, `/remove`.
//!
//! Each change is committed in Postgres first (one statement, see
//! [`crate::store::stage`]) and then applied in the room with `UpdateParticipant`:
//! the user's permission (camera and microphone while on stage) and the
//! stage attributes every client draws. A LiveKit outage delays the room's
//! view, never the decision: `roomUpdated: false` says so, the webhook and
//! the reconciler correct the participant, and a fresh `/live/token` carries
//! the same grant.

use lambda_http::Request;
use lambda_http::http::Method;
use serde::Serialize;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{HandRequest, InviteRequest, RoomName, StageAnswerRequest, StageRemoveRequest};
use crate::error::ApiError;
use crate::http::{FromRequest, Reply};
use crate::livekit::RoomServiceError;
use crate::livekit::room_rules::{self, Correction, Told};
use crate::state::AppState;
use crate::store::chat::Standing;
use crate::store::rate_limit;
use crate::store::stage::{self, HandKey, StageAction, StageEntry, StageStanding};
use crate::store::streams;

pub const DEFAULT_HANDS_PAGE: i64 = 50;
pub const MAX_HANDS_PAGE: i64 = 100;
/// How many lapsed away turns a change refused for a full stage ends in its
/// room before it tries again: more than a stage has places.
const STAGE_PLACES_FREED: i64 = 100;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageOutcome {
    pub room_name: RoomName,
    pub user_id: Uuid,
    #[serde(flatten)]
    pub standing: StageStanding,
    /// Whether LiveKit has the change already. False when it could not be
    /// reached: the change stands, and the room catches up (the webhook, the
    /// reconciler, or the user's next token).
    pub room_updated: bool,
}

/// Ends the turns in `room` whose time to return ran out, but not of those
/// LiveKit lists there (back, their join not yet told: ending theirs would
/// let a new guest publish beside them). Says whether a place was freed;
/// with LiveKit or Postgres failing, none is, and the stage stays full (the
/// reconciler frees them). LiveKit lists the room only when a guest has been
/// away too long ([`stage::has_lapsed_guest`]): a refusal spends no rate
/// limit, and a viewer retrying an accept into a full stage must not have
/// a big room listed each time. No connection is held while LiveKit lists
/// the room: that can take seconds.
async fn free_lapsed_places(state: &AppState, room: &RoomName) -> bool {
    let listed_since = std::time::Instant::now();
    let lapsed_guest = async {
        let client = state.db.get().await?;
        stage::has_lapsed_guest(&client, room, state.rules.stage_return).await
    }
    .await;
    match lapsed_guest {
        Ok(true) => {}
        Ok(false) => return false,
        Err(error) => {
            tracing::warn!(%room, %error, "the stage is full; whether a guest's place lapsed could not be read");
            return false;
        }
    }
    let participants = match state.livekit.participants(room).await {
        Ok(participants) => participants,
        Err(error) => {
            tracing::warn!(%room, %error, "the stage is full; LiveKit's listing, needed to free lapsed places, failed");
            return false;
        }
    };
    let listed: Vec<&str> = participants.iter().map(|p| p.identity.as_str()).collect();
    let freed = async {
        let client = state.db.get().await?;
        stage::end_lapsed_away_turns(
            &client,
            Some(room),
            &listed,
            listed_since,
            state.rules.stage_return,
            STAGE_PLACES_FREED,
        )
        .await
    }
    .await;
    match freed {
        Ok(lapsed) => lapsed.ended > 0,
        Err(error) => {
            tracing::warn!(%room, %error, "the stage is full; its lapsed places could not be freed");
            false
        }
    }
}

/// One stage change by `user` about `target`, then the room.
async fn change(
    state: &AppState,
    user: &AuthUser,
    room: RoomName,
    target: Uuid,
    action: StageAction,
) -> Result<Reply<StageOutcome>, ApiError> {
    if !action.withdraws() {
        user.require_participant(&state.rules)?;
    }
    let attempt = || async {
        let client = state.db.get().await?;
        stage::change(
            &client,
            &room,
            user.id,
            target,
            action,
            &state.rules,
            state.limits.stage,
        )
        .await
    };
    let changed = match attempt().await {
        // A guest whose time to return ran out still holds a place until
        // the reconciler's next run: free those places now and try again.
        Err(ApiError::StageFull { .. }) if free_lapsed_places(state, &room).await => attempt().await?,
        outcome => outcome?,
    };
    // A repeat that changed nothing tells the room too: it is how the app
    // retries a change that answered `roomUpdated: false`, and LiveKit may
    // still have the standing from before it.
    let committed = Standing {
        banned: false,
        muted: changed.muted,
        stage: changed.standing,
    };
    let telling = apply_standing_in_room(state, &room, target, committed);
    let room_updated = match crate::livekit::before_the_answer(telling).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%room, %target, ?action, %error,
                "stage change committed; LiveKit gets it from the webhook, the reconciler or the next token");
            false
        }
    };
    tracing::info!(%room, actor = %user.id, %target, ?action, changed = changed.changed, room_updated, "stage");
    Ok(Reply::ok(StageOutcome {
        room_name: room,
        user_id: target,
        standing: changed.standing,
        room_updated,
    }))
}

/// Tells LiveKit `user`'s standing as just committed (`UpdateParticipant`:
/// their permission and stage attributes), then reads it again and tells the
/// newer one while it has moved on meanwhile
/// ([`room_rules::follow_newer_standing`]: the streamer's removal and the
/// guest's accept, a mute and an unmute, can reach LiveKit in the other
/// order). A banned user is LiveKit's to remove, not to update: they are
/// removed instead. The first call's failure is the caller's
/// (`roomUpdated: false`).
pub async fn apply_standing_in_room(
    state: &AppState,
    room: &RoomName,
    user: Uuid,
    committed: Standing,
) -> Result<(), RoomServiceError> {
    let identity = user.to_string();
    if committed.banned {
        // Their ban's removal may not have got through: an unmute must not
        // hand data back to someone who should be out.
        return room_rules::apply(&state.livekit, room, &identity, Correction::Remove).await;
    }
    let told = state
        .livekit
        .update_viewer(room, &identity, committed.muted, committed.stage)
        .await;
    // An update with no answer may still reach the room, after a newer
    // change was told there (an accept landing after the removal that
    // followed it): follow it with the latest, as a told one is.
    if told.as_ref().err().is_none_or(RoomServiceError::may_have_acted) {
        room_rules::follow_newer_standing(state, room, user, &identity, Told::Standing(committed)).await;
    }
    told
}

/// A viewer raises or lowers their hand.
pub async fn raise_hand(
    state: &AppState,
    user: AuthUser,
    request: HandRequest,
) -> Result<Reply<StageOutcome>, ApiError> {
    let action = if request.raised {
        StageAction::Raise
    } else {
        StageAction::Lower
    };
    change(state, &user, request.room_name, user.id, action).await
}

/// The streamer invites a viewer who is watching.
pub async fn invite(
    state: &AppState,
    user: AuthUser,
    request: InviteRequest,
) -> Result<Reply<StageOutcome>, ApiError> {
    change(
        state,
        &user,
        request.room_name,
        request.user_id,
        StageAction::Invite,
    )
    .await
}

/// The invitee comes on stage.
pub async fn accept(
    state: &AppState,
    user: AuthUser,
    request: StageAnswerRequest,
) -> Result<Reply<StageOutcome>, ApiError> {
    change(state, &user, request.room_name, user.id, StageAction::Accept).await
}

/// The invitee says no (and lowers their hand).
pub async fn decline(
    state: &AppState,
    user: AuthUser,
    request: StageAnswerRequest,
) -> Result<Reply<StageOutcome>, ApiError> {
    change(state, &user, request.room_name, user.id, StageAction::Decline).await
}

/// The streamer takes someone off the stage, or a guest leaves it.
pub async fn remove(
    state: &AppState,
    user: AuthUser,
    request: StageRemoveRequest,
) -> Result<Reply<StageOutcome>, ApiError> {
    let target = request.user_id.unwrap_or(user.id);
    change(state, &user, request.room_name, target, StageAction::Remove).await
}

/// `?roomName=…&limit=1..100&cursor=<opaque>`: the cursor pages the raised hands.
#[derive(Debug)]
pub struct StageQuery {
    pub room_name: RoomName,
    pub limit: i64,
    pub after: Option<HandKey>,
}

impl FromRequest for StageQuery {
    const METHOD: Method = Method::GET;

    fn from_request(request: &Request) -> Result<Self, ApiError> {
        let [room_name, limit, cursor] =
            crate::http::query_parameters(request, ["roomName", "limit", "cursor"])?;
        let room_name = room_name
            .ok_or_else(|| ApiError::InvalidRequest("the query parameter roomName is required".into()))?;
        let room_name = RoomName::parse(room_name).map_err(ApiError::InvalidRequest)?;
        let limit = crate::http::page_limit(limit, MAX_HANDS_PAGE, DEFAULT_HANDS_PAGE)?;
        let after = cursor
            .map(|cursor| {
                let (raised_at, user) = crate::http::decode_cursor(&cursor)?;
                let user_id = Uuid::parse_str(&user)
                    .map_err(|_| ApiError::InvalidRequest("cursor is not one this API returned".into()))?;
                Ok::<_, ApiError>(HandKey { raised_at, user_id })
            })
            .transpose()?;
        Ok(StageQuery {
            room_name,
            limit,
            after,
        })
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageListing {
    pub room_name: RoomName,
    /// On stage now, the earliest first (`since`: when they came on).
    pub guests: Vec<StageEntry>,
    /// Invited, not answered yet (`since`: when invited).
    pub invited: Vec<StageEntry>,
    /// Raised hands not invited yet, oldest first (`since`: when raised).
    pub hands: Vec<StageEntry>,
    /// Pass as `cursor` for the next page of hands; `null` on the last page.
    pub next_cursor: Option<String>,
    pub max_guests: u32,
}

/// The streamer's view of the stage.
pub async fn stage_state(
    state: &AppState,
    user: AuthUser,
    query: StageQuery,
) -> Result<Reply<StageListing>, ApiError> {
    let client = state.db.get().await?;
    let access = streams::access(&client, &query.room_name, user.id)
        .await?
        .ok_or(ApiError::StreamNotFound)?;
    if access.streamer_id != user.id {
        return Err(ApiError::Forbidden(
            "Only the streamer can see the stage's raised hands.",
        ));
    }
    if !access.is_live {
        return Err(ApiError::StreamEnded);
    }
    // Counted once it will be served (a refusal keeps its answer), and sent
    // with the read on the same connection: pipelined, one round trip.
    let read_key = super::audience::read_key(&user);
    let (hit, listing) = tokio::join!(
        rate_limit::hit(&client, &read_key, state.limits.read),
        stage::state(&client, &query.room_name, query.after.as_ref(), query.limit + 1),
    );
    hit?;
    let mut listing = listing?;
    let next_cursor = if listing.hands.len() as i64 > query.limit {
        listing.hands.truncate(query.limit as usize);
        listing
            .hands
            .last()
            .map(|hand| crate::http::encode_cursor(hand.since, &hand.user_id.to_string()))
    } else {
        None
    };
    Ok(Reply::ok(StageListing {
        room_name: query.room_name,
        guests: listing.guests,
        invited: listing.invited,
        hands: listing.hands,
        next_cursor,
        max_guests: state.rules.max_stage_guests,
    }))
}
