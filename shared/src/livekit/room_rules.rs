//! What LiveKit must enforce in a room because of what Postgres says: a banned
//! user or anyone in a stream that is not live must not be in the room, and a
//! viewer's permission and stage attributes must match their mute and their
//! place on the stage (only a guest on stage publishes). The moderation and
//! stage endpoints tell LiveKit at once; when that call fails, or a client
//! joins with a token minted before the change (LiveKit does not revoke
//! tokens on every server), the webhook on `participant_joined` and the
//! scheduled reconciler correct the room from here.

use uuid::Uuid;

use crate::domain::RoomName;
use crate::livekit::{LiveKit, Revocation, RoomServiceError};
use crate::store::chat::Standing;
use crate::store::stage::StageStanding;
use crate::store::viewers::Presence;

/// One change LiveKit must make about one participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Disconnect them (and revoke their earlier tokens where supported).
    Remove,
    /// Set their permission and stage attributes to what their standing gives.
    Update { muted: bool, stage: StageStanding },
}

/// The stream a participant is in, as Postgres has it.
pub struct StreamState {
    pub streamer: Uuid,
    pub is_live: bool,
}

/// What must change about `participant` for the room to match Postgres, if
/// anything. Hidden participants (recorders, agents) and identities that are
/// not our users are the operator's business, not the viewers' rules.
pub fn correction(
    livekit: &LiveKit,
    stream: &StreamState,
    participant: &Presence,
    standing: Option<Standing>,
) -> Option<Correction> {
    if participant.hidden {
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
    differs.then_some(Correction::Update { muted, stage })
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
        Correction::Update { muted, stage } => livekit.set_viewer(room, identity, muted, stage).await,
    }
}

/// Makes every correction, logging (not failing on) the ones LiveKit refuses:
/// the next webhook or reconciler run tries again. Returns how many were made.
pub async fn apply_all(livekit: &LiveKit, room: &RoomName, corrections: &[(String, Correction)]) -> usize {
    let mut applied = 0;
    for (identity, correction) in corrections {
        match apply(livekit, room, identity, *correction).await {
            Ok(()) => {
                tracing::info!(%room, %identity, ?correction, "room corrected to match the database");
                applied += 1;
            }
            Err(error) => {
                tracing::warn!(%room, %identity, ?correction, %error, "could not correct the room yet")
            }
        }
    }
    applied
}
