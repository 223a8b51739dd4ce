//! What LiveKit must enforce in a room because of what Postgres says: a banned
//! user or anyone in a stream that is not live must not be in the room, and a
//! viewer's permission and stage attributes must match their mute and their
//! place on the stage (only a guest on stage publishes). The moderation and
//! stage endpoints tell LiveKit at once; when that call fails, or a client
//! joins with a token minted before the change (LiveKit does not revoke
//! tokens on every server), the webhook on `participant_joined` and the
//! scheduled reconciler correct the room from here.

use std::time::Duration;

use uuid::Uuid;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::livekit::{LiveKit, Revocation, RoomServiceError};
use crate::state::AppState;
use crate::store::chat::{self, Standing};
use crate::store::stage::StageStanding;
use crate::store::viewers::Presence;

/// One change LiveKit must make about one participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Disconnect them (and revoke their earlier tokens where supported).
    Remove,
    /// Set their permission and stage attributes to what their standing
    /// gives; `shown` is the stage their attributes say now, when known from
    /// a listing or a join (not after a call that may not have been applied).
    Update {
        muted: bool,
        stage: StageStanding,
        shown: Option<StageStanding>,
    },
}

/// The stream a participant is in, as Postgres has it.
pub struct StreamState {
    pub streamer: Uuid,
    pub is_live: bool,
}

/// What must change about `participant` for the room to match Postgres, if
/// anything. Participants that are not audience (recorders, agents, ingress)
/// and identities that are not our users are the operator's business, not
/// the viewers' rules. A user's publish-only side connection is removed
/// unless it is the streamer's (a second camera) in a live stream: this API
/// hands out no other, and a guest's token kept after their turn, or a
/// banned user's, would otherwise go on publishing through one, out of
/// reach of every rule kept for their own identity.
pub fn correction(
    livekit: &LiveKit,
    stream: &StreamState,
    participant: &Presence,
    standing: Option<Standing>,
) -> Option<Correction> {
    if let Some(user) = participant.side_connection_of {
        return (user != stream.streamer || !stream.is_live).then_some(Correction::Remove);
    }
    if participant.not_audience {
        return None;
    }
    let user = Uuid::parse_str(&participant.identity).ok()?;
    if !stream.is_live {
        return Some(Correction::Remove);
    }
    if user == stream.streamer {
        return None;
    }
    let Standing { banned, muted, stage } = standing.unwrap_or_default();
    if banned {
        return Some(Correction::Remove);
    }
    let muted = muted || livekit.withholds_data_from(participant.anonymous);
    let expected = livekit.viewer_permission(muted, stage.on_stage);
    let differs = participant.can_publish_data != expected.can_publish_data
        || participant.can_publish != expected.can_publish
        || participant.stage != stage;
    differs.then_some(Correction::Update {
        muted,
        stage,
        shown: Some(participant.stage),
    })
}

/// Makes the correction in LiveKit.
pub async fn apply(
    livekit: &LiveKit,
    room: &RoomName,
    identity: &str,
    correction: Correction,
) -> Result<(), RoomServiceError> {
    match correction {
        Correction::Remove => {
            let revoke_before = chrono::Utc::now().timestamp() + 1;
            livekit
                .remove_participant(room, identity, Revocation::IssuedBefore(revoke_before))
                .await
        }
        Correction::Update {
            muted,
            stage,
            shown: Some(shown),
        } => livekit.set_viewer(room, identity, muted, stage, shown).await,
        // As a standing committed: LiveKit's own attributes and anonymity
        // mark are read where they matter.
        Correction::Update {
            muted,
            stage,
            shown: None,
        } => livekit.update_viewer(room, identity, muted, stage).await,
    }
}

/// How many times a correction, or a change's `UpdateParticipant`, is
/// followed by another because the standing moved on while LiveKit was told;
/// a user's standing does not change faster than that.
const STANDING_FOLLOW_UPS: usize = 2;
/// How long one of those follow-up calls may take: a LiveKit that slow is
/// left to the reconciler rather than holding the caller.
const FOLLOW_UP_LIMIT: Duration = Duration::from_secs(1);

/// What LiveKit was last told about a user, to compare their standing with.
pub enum Told<'a> {
    /// A standing just committed (a stage change, a mute), told with
    /// [`LiveKit::update_viewer`], which reads the participant's anonymity
    /// from LiveKit when it grants data.
    Standing(Standing),
    /// A correction of this participant, as listed or joined, in this stream.
    Corrected(Presence, &'a StreamState),
}

impl Told<'_> {
    /// What LiveKit must be told for the standing `now`, if anything.
    fn next(&self, livekit: &LiveKit, now: Option<Standing>) -> Option<Correction> {
        match self {
            Told::Standing(told) => {
                let now = now.unwrap_or_default();
                if now.banned {
                    // Told a standing without the ban (a stage change about a
                    // banned user, or one the ban overtook): the ban's own
                    // removal may have failed, so this one removes them too.
                    return (!told.banned).then_some(Correction::Remove);
                }
                let moved = (now.muted, now.stage) != (told.muted, told.stage);
                moved.then_some(Correction::Update {
                    muted: now.muted,
                    stage: now.stage,
                    // What an earlier call may or may not have set.
                    shown: None,
                })
            }
            Told::Corrected(participant, stream) => correction(livekit, stream, participant, now),
        }
    }

    async fn tell(
        &self,
        livekit: &LiveKit,
        room: &RoomName,
        identity: &str,
        next: Correction,
    ) -> Result<(), RoomServiceError> {
        match (self, next) {
            (Told::Standing(_), Correction::Update { muted, stage, .. }) => {
                livekit.update_viewer(room, identity, muted, stage).await
            }
            _ => apply(livekit, room, identity, next).await,
        }
    }

    /// What LiveKit has once it was told `next`.
    fn after(self, livekit: &LiveKit, next: Correction) -> Self {
        match (self, next) {
            (Told::Standing(_), Correction::Update { muted, stage, .. }) => Told::Standing(Standing {
                banned: false,
                muted,
                stage,
            }),
            (Told::Corrected(participant, stream), next) => {
                Told::Corrected(as_told(livekit, &participant, next), stream)
            }
            (told, Correction::Remove) => told,
        }
    }
}

/// Makes every correction, logging (not failing on) the ones LiveKit refuses:
/// the next webhook or reconciler run tries again. Each viewer updated is
/// then checked against their standing as it is now: a stage change or a
/// mute committed while the correction, read before it, was on its way
/// would otherwise be undone by it until the next run. Starts none after
/// `until` (a scheduled run's deadline; the rest are the next run's).
/// Returns how many corrections were made.
pub async fn correct_all(
    state: &AppState,
    room: &RoomName,
    stream: &StreamState,
    corrections: &[(Presence, Correction)],
    until: Option<std::time::Instant>,
) -> usize {
    let mut applied = 0;
    for (participant, correction) in corrections {
        if crate::scheduled::past(until) {
            tracing::info!(%room, "out of time: the other corrections are the next run's");
            break;
        }
        let identity = &participant.identity;
        match apply(&state.livekit, room, identity, *correction).await {
            Ok(()) => {
                tracing::info!(%room, %identity, ?correction, "room corrected to match the database");
                applied += 1;
                if let (Correction::Update { .. }, Some(user)) = (correction, participant.user()) {
                    let told = Told::Corrected(as_told(&state.livekit, participant, *correction), stream);
                    follow_newer_standing(state, room, user, identity, told).await;
                }
            }
            Err(error) => {
                tracing::warn!(%room, %identity, ?correction, %error, "could not correct the room yet")
            }
        }
    }
    applied
}

/// `participant` as LiveKit has them once it made `correction`.
fn as_told(livekit: &LiveKit, participant: &Presence, correction: Correction) -> Presence {
    let mut told = participant.clone();
    if let Correction::Update { muted, stage, .. } = correction {
        let permission = livekit.viewer_permission(muted, stage.on_stage);
        told.can_publish = permission.can_publish;
        told.can_publish_data = permission.can_publish_data;
        told.stage = stage;
    }
    told
}

/// Reads the standing of `user`, whom LiveKit was just told `told` about,
/// and tells LiveKit again while it moved on meanwhile. Two changes
/// committed close together, or a correction read before a change, can reach
/// LiveKit in the other order, and the older would stand in the room until
/// the reconciler's next run; each caller's last call follows its read of
/// the latest commit, so whichever finishes last leaves the latest. A
/// follow-up that fails, or a read that does, is only logged: the reconciler
/// compares the rest.
pub async fn follow_newer_standing(
    state: &AppState,
    room: &RoomName,
    user: Uuid,
    identity: &str,
    mut told: Told<'_>,
) {
    for _ in 0..STANDING_FOLLOW_UPS {
        let now = async {
            let client = state.db.get().await?;
            let mut standings = chat::standings_among(&**client, room, &[user]).await?;
            Ok::<_, ApiError>(standings.remove(&user))
        }
        .await;
        let next = match now {
            Ok(now) => told.next(&state.livekit, now),
            Err(error) => {
                tracing::warn!(%room, %user, %error, "could not check the standing LiveKit was told");
                return;
            }
        };
        let Some(next) = next else {
            return;
        };
        tracing::info!(%room, %user, ?next, "the standing moved on while LiveKit was told; telling it again");
        let follow_up = told.tell(&state.livekit, room, identity, next);
        match tokio::time::timeout(FOLLOW_UP_LIMIT, follow_up).await {
            Ok(Ok(())) if next == Correction::Remove => return,
            Ok(Ok(())) => told = told.after(&state.livekit, next),
            Ok(Err(error)) => {
                tracing::warn!(%room, %user, %error, "the newer standing was not told; the reconciler compares it");
                return;
            }
            Err(_) => {
                tracing::warn!(%room, %user, "LiveKit too slow for the newer standing; the reconciler compares it");
                return;
            }
        }
    }
}
