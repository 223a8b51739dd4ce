//! The stage (migration 0012): viewers raise hands, the streamer invites one,
//! the viewer accepts, and while on stage they may publish camera and
//! microphone beside the streamer. Both sides must agree before anyone is on
//! camera: an invitation alone grants nothing.
//!
//! Postgres holds the state (`live_stage`, changed by `live_stage_change`,
//! serialised per room so the guest limit holds). LiveKit enforces it: the
//! guest's permission (`canPublish` with camera and microphone sources only)
//! and the participant attributes every client draws the stage from
//! (`hand_raised`, `stage_invited`, `on_stage`: `"true"` or `"false"`, set
//! only by the backend, since viewer tokens cannot update their own
//! attributes). Tokens minted while on stage carry the same grant and
//! attributes; the webhook corrects a participant whose token is out of date.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::config::Rules;
use crate::domain::RoomName;
use crate::error::ApiError;
use crate::store::rate_limit::{self, Limit};

/// The participant attribute keys the backend keeps in step with the stage.
pub const HAND_RAISED_ATTRIBUTE: &str = "hand_raised";
pub const INVITED_ATTRIBUTE: &str = "stage_invited";
pub const ON_STAGE_ATTRIBUTE: &str = "on_stage";

/// Where a user is on the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageStanding {
    pub hand_raised: bool,
    pub invited: bool,
    pub on_stage: bool,
}

impl StageStanding {
    /// The participant attributes that say so, every key spelled out.
    pub fn attributes(self) -> HashMap<String, String> {
        self.attribute_pairs()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    /// [`Self::attributes`] as borrowed pairs, for a consumer that builds its
    /// own map (a LiveKit token's claims): one map per token, not two.
    pub fn attribute_pairs(self) -> [(&'static str, &'static str); 3] {
        let spelled = |set: bool| if set { "true" } else { "false" };
        [
            (HAND_RAISED_ATTRIBUTE, spelled(self.hand_raised)),
            (INVITED_ATTRIBUTE, spelled(self.invited)),
            (ON_STAGE_ATTRIBUTE, spelled(self.on_stage)),
        ]
    }

    /// What a participant's attributes say (a missing key is `false`).
    pub fn from_attributes(attributes: &HashMap<String, String>) -> StageStanding {
        let set = |key: &str| attributes.get(key).is_some_and(|value| value == "true");
        StageStanding {
            hand_raised: set(HAND_RAISED_ATTRIBUTE),
            invited: set(INVITED_ATTRIBUTE),
            on_stage: set(ON_STAGE_ATTRIBUTE),
        }
    }
}

/// One change of the stage, by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageAction {
    Raise,
    Lower,
    Invite,
    Accept,
    Decline,
    Remove,
}

impl StageAction {
    /// Takes standing away: a lowered hand, a declined invitation, a guest
    /// taken off or leaving. Consent withdrawn always goes through (never
    /// refused for the stage limit, migration 0044, nor for an anonymous
    /// sign-in, who may have been invited without being able to accept).
    pub fn withdraws(self) -> bool {
        matches!(
            self,
            StageAction::Lower | StageAction::Decline | StageAction::Remove
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            StageAction::Raise => "raise",
            StageAction::Lower => "lower",
            StageAction::Invite => "invite",
            StageAction::Accept => "accept",
            StageAction::Decline => "decline",
            StageAction::Remove => "remove",
        }
    }
}

/// The user's place on the stage after a change.
#[derive(Debug, Clone, Copy)]
pub struct StageChanged {
    /// Whether anything changed (a repeated request changes nothing).
    pub changed: bool,
    pub standing: StageStanding,
    pub hand_raised_at: Option<DateTime<Utc>>,
    pub on_stage_since: Option<DateTime<Utc>>,
    /// Their chat mute, which their permission in the room keeps.
    pub muted: bool,
}

/// Applies `action` by `actor` to `user`'s place on the stage, in one
/// statement (`live_stage_change_within_limit`), and maps its refusals to
/// API errors. Only a change that stands counts against the actor's stage
/// `limit` (migration 0036): a refusal keeps its answer and spends nothing,
/// and a change over the limit is undone. The `rules` give the stage's
/// places and the time to return, after which an away viewer's invitation
/// can no longer be accepted (migration 0060).
pub async fn change(
    client: &Client,
    room: &RoomName,
    actor: Uuid,
    user: Uuid,
    action: StageAction,
    rules: &Rules,
    limit: Limit,
) -> Result<StageChanged, ApiError> {
    let max_guests = rules.max_stage_guests;
    let max = i32::try_from(max_guests).unwrap_or(i32::MAX);
    let stage_return = rules.stage_return.as_secs_f64();
    let limit_key = format!("stage:{actor}");
    let (window, max_hits) = (limit.window_seconds(), limit.max_hits());
    let row = client
        .query_typed_one(
            "SELECT outcome, retry_after, changed, hand_raised_at, invited_at, on_stage_since, muted
             FROM live_stage_change_within_limit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                (&room.as_str(), Type::TEXT),
                (&actor, Type::UUID),
                (&user, Type::UUID),
                (&action.as_str(), Type::TEXT),
                (&max, Type::INT4),
                (&limit_key, Type::TEXT),
                (&window, Type::FLOAT8),
                (&max_hits, Type::INT8),
                (&stage_return, Type::FLOAT8),
            ],
        )
        .await?;
    let outcome: String = row.try_get("outcome").map_err(ApiError::internal)?;
    match outcome.as_str() {
        "ok" => {}
        "rate_limited" => {
            let retry_after: Option<i64> = row.try_get("retry_after").map_err(ApiError::internal)?;
            return Err(rate_limit::limited(retry_after));
        }
        "not_found" => return Err(ApiError::StreamNotFound),
        "not_live" => return Err(ApiError::StreamEnded),
        "banned" if actor == user => return Err(ApiError::Banned),
        "banned" => return Err(ApiError::Forbidden("That user is banned from this stream.")),
        "not_host" => return Err(ApiError::Forbidden("Only the streamer can do that.")),
        "host" => {
            return Err(ApiError::InvalidRequest(
                "The streamer is always on their own stage; this is for viewers.".into(),
            ));
        }
        "not_watching" => return Err(ApiError::NotWatching),
        "not_invited" => return Err(ApiError::NotInvited),
        "stage_full" => return Err(ApiError::StageFull { max_guests }),
        other => {
            return Err(ApiError::internal(format!(
                "live_stage_change_within_limit said {other}"
            )));
        }
    }
    let hand_raised_at: Option<DateTime<Utc>> = row.try_get("hand_raised_at").map_err(ApiError::internal)?;
    let invited_at: Option<DateTime<Utc>> = row.try_get("invited_at").map_err(ApiError::internal)?;
    let on_stage_since: Option<DateTime<Utc>> = row.try_get("on_stage_since").map_err(ApiError::internal)?;
    Ok(StageChanged {
        changed: row.try_get("changed").map_err(ApiError::internal)?,
        standing: StageStanding {
            hand_raised: hand_raised_at.is_some(),
            invited: invited_at.is_some(),
            on_stage: on_stage_since.is_some(),
        },
        hand_raised_at,
        on_stage_since,
        muted: row
            .try_get::<_, Option<bool>>("muted")
            .map_err(ApiError::internal)?
            .unwrap_or(false),
    })
}

/// What [`end_lapsed_away_turns`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lapsed {
    /// Marks taken (at most the limit): their time to return had run out,
    /// or their viewer is in the room (a mark their join raced). A mark
    /// found changed once taken (its viewer left again meanwhile) is left
    /// as it is.
    pub rows: usize,
    /// Of those, the standings ended (the others' viewers were back).
    pub ended: usize,
}

/// Ends the stage standing (turn, invitation, raised hand) of viewers whose
/// connection was lost more than `stage_return` ago (migration 0028) and who
/// have not come back, in `room` or every room, at most `limit` of them,
/// guests' turns first (the places a full stage waits for). A row a stage
/// change or a join holds now is left for later rather than waited for; one
/// whose viewer is back (their join raced the mark) only loses the mark,
/// whatever its age: a hand raised while the viewer's join was committing
/// saw no presence and marked them away after the join had looked for a mark
/// to clear, so the mark stays on a viewer in the room until this clears it
/// (its readers take a viewer present as not away meanwhile). Those among
/// the identities LiveKit `listed` in the room and not present are left
/// alone: they are back, and their join (told late, or found by the
/// reconciler's sync) decides whether in time. The others were seen absent only when the
/// listing began (`listed_since`), so their time to return is judged then:
/// one back after the listing but in time keeps their place. Nobody in the room needs
/// telling: the viewer is not there, and the join of a token minted on stage
/// is corrected by the webhook. The reconciler runs it for each room right
/// after that room's sync (which records who LiveKit lists); a change
/// refused for a full stage runs it for its room first, with the room's
/// listing, so a lapsed guest's place does not wait for that run.
pub async fn end_lapsed_away_turns(
    client: &Client,
    room: Option<&RoomName>,
    listed: &[&str],
    listed_since: std::time::Instant,
    stage_return: std::time::Duration,
    limit: i64,
) -> Result<Lapsed, ApiError> {
    let stage_return_seconds = stage_return.as_secs_f64();
    let listing_age_seconds = listed_since.elapsed().as_secs_f64();
    // One call (migration 0073): the marks are taken first and presence read
    // after, in a statement of its own, so a leave that committed while
    // the marks were being taken is not read as the viewer still there.
    let row = client
        .query_typed_one(
            "SELECT taken, ended FROM live_end_lapsed_away_turns($1, $2, $3, $4, $5)",
            &[
                (&room.map(RoomName::as_str), Type::TEXT),
                (&listed, Type::TEXT_ARRAY),
                (&listing_age_seconds, Type::FLOAT8),
                (&stage_return_seconds, Type::FLOAT8),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    let count = |column: usize| -> Result<usize, ApiError> {
        let value: i32 = row.try_get(column).map_err(ApiError::internal)?;
        usize::try_from(value).map_err(ApiError::internal)
    };
    Ok(Lapsed {
        rows: count(0)?,
        ended: count(1)?,
    })
}

/// Whether a guest of `room` has been away longer than `stage_return`, as
/// [`end_lapsed_away_turns`] judges it: only such a guest's place can be
/// freed before the reconciler's next run. A change refused for a full stage
/// asks this first, so that refusals (which spend no rate limit) do not each
/// list the room in LiveKit while every guest is there. The guests' rows
/// only (`live_stage_guests_idx`), at most `MAX_STAGE_GUESTS` of them.
pub async fn has_lapsed_guest(
    client: &Client,
    room: &RoomName,
    stage_return: std::time::Duration,
) -> Result<bool, ApiError> {
    let row = client
        .query_typed_one(
            "SELECT EXISTS (SELECT FROM live_stage g
                            WHERE g.room_name = $1 AND g.on_stage_since IS NOT NULL
                              AND g.away_since < now() - make_interval(secs => $2)
                              AND NOT EXISTS (SELECT FROM live_presence p
                                              WHERE p.room_name = g.room_name
                                                AND p.identity = g.user_id::text))",
            &[
                (&room.as_str(), Type::TEXT),
                (&stage_return.as_secs_f64(), Type::FLOAT8),
            ],
        )
        .await?;
    row.try_get(0).map_err(ApiError::internal)
}

/// A viewer on the stage list.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageEntry {
    pub user_id: Uuid,
    /// The name LiveKit reports for them while they are in the room.
    pub display_name: Option<String>,
    /// A guest: since they came on stage; an invitee: since the invitation;
    /// a raised hand: since it was raised.
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub since: DateTime<Utc>,
    /// Since when their connection is lost, while they have
    /// `STAGE_RETURN_SECONDS` to come back (migration 0028); a guest away
    /// still holds their place. `null` while they are in the room.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub away_since: Option<DateTime<Utc>>,
}

/// Where a page of raised hands starts: after this hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandKey {
    pub raised_at: DateTime<Utc>,
    pub user_id: Uuid,
}

/// The room's stage: guests, invitations, and a page of raised hands
/// (oldest first, those not invited or on stage), in one statement. A hand
/// is listed only while its viewer is in the room: one raised by a user who
/// never joined (or before their join's webhook arrived) waits unseen, and
/// leaving the room lowers it. Guests and invitees whose connection was lost
/// are listed with `away_since` while they may still come back.
pub struct StageState {
    pub guests: Vec<StageEntry>,
    pub invited: Vec<StageEntry>,
    pub hands: Vec<StageEntry>,
}

pub async fn state(
    client: &Client,
    room: &RoomName,
    after: Option<&HandKey>,
    hands: i64,
) -> Result<StageState, ApiError> {
    let (after_at, after_user) = match after {
        Some(key) => (Some(key.raised_at), Some(key.user_id)),
        None => (None, None),
    };
    let rows = client
        .query_typed(
            "(SELECT 'guest' AS place, g.user_id, p.display_name, g.on_stage_since AS since,
                     CASE WHEN p.identity IS NULL THEN g.away_since END AS away_since
              FROM live_stage g
              LEFT JOIN live_presence p ON p.room_name = g.room_name AND p.identity = g.user_id::text
              WHERE g.room_name = $1 AND g.on_stage_since IS NOT NULL)
             UNION ALL
             (SELECT 'invited', g.user_id, p.display_name, g.invited_at,
                     CASE WHEN p.identity IS NULL THEN g.away_since END
              FROM live_stage g
              LEFT JOIN live_presence p ON p.room_name = g.room_name AND p.identity = g.user_id::text
              WHERE g.room_name = $1 AND g.invited_at IS NOT NULL AND g.on_stage_since IS NULL)
             UNION ALL
             (SELECT 'hand', g.user_id, p.display_name, g.hand_raised_at, NULL::timestamptz
              FROM live_stage g
              JOIN live_presence p ON p.room_name = g.room_name AND p.identity = g.user_id::text
              WHERE g.room_name = $1 AND g.hand_raised_at IS NOT NULL
                AND g.invited_at IS NULL AND g.on_stage_since IS NULL
                AND ($2::timestamptz IS NULL OR (g.hand_raised_at, g.user_id) > ($2, $3::uuid))
              ORDER BY g.hand_raised_at, g.user_id
              LIMIT $4)
             ORDER BY 1, 4, 2",
            &[
                (&room.as_str(), Type::TEXT),
                (&after_at, Type::TIMESTAMPTZ),
                (&after_user, Type::UUID),
                (&hands, Type::INT8),
            ],
        )
        .await?;
    let mut state = StageState {
        guests: Vec::new(),
        invited: Vec::new(),
        hands: Vec::new(),
    };
    for row in rows {
        let place: String = row.try_get("place").map_err(ApiError::internal)?;
        let entry = StageEntry {
            user_id: row.try_get("user_id").map_err(ApiError::internal)?,
            display_name: row.try_get("display_name").map_err(ApiError::internal)?,
            since: row.try_get("since").map_err(ApiError::internal)?,
            away_since: row.try_get("away_since").map_err(ApiError::internal)?,
        };
        match place.as_str() {
            "guest" => state.guests.push(entry),
            "invited" => state.invited.push(entry),
            _ => state.hands.push(entry),
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_spell_out_every_key() {
        for standing in [
            StageStanding::default(),
            StageStanding {
                hand_raised: true,
                invited: false,
                on_stage: false,
            },
            StageStanding {
                hand_raised: false,
                invited: true,
                on_stage: false,
            },
            StageStanding {
                hand_raised: false,
                invited: false,
                on_stage: true,
            },
        ] {
            let attributes = standing.attributes();
            assert_eq!(attributes.len(), 3);
            assert_eq!(StageStanding::from_attributes(&attributes), standing);
        }
        assert_eq!(
            StageStanding::from_attributes(&HashMap::new()),
            StageStanding::default()
        );
    }
}
