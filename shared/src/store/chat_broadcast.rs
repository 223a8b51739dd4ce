//! Chat to the room in batches. In a busy room, one `SendData` per message
//! would be hundreds of LiveKit calls a second; instead one poster at a time
//! per room holds a short lease and sends every message since the room's
//! last batch in order, in as few packets as fit, batches at least
//! [`BATCH_INTERVAL`] apart: in a quiet room (last batch older than that) at
//! once, in a busy one after what is left of the interval. Everyone else
//! stores their message and returns. The holder starts the next batch itself
//! when messages arrived while it was sending; the scheduled flusher sends
//! whatever a holder left (see [`crate::scheduled::flush`]).
//!
//! The packet, reliable on topic `chat`, carries no sender (it comes from the
//! server) and is `{"event":"chat_messages","messages":[…in order…]}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::domain::RoomName;
use crate::error::ApiError;
use crate::livekit::RoomServiceError;
use crate::state::AppState;
use crate::store::chat::{self, BatchLease, ChatMessage};

/// Data packets for chat use this topic, so clients can tell them apart.
pub const CHAT_TOPIC: &str = "chat";
/// The least time between two batches of a room.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a lease lasts: the interval, a bounded RoomService call (6 s) and
/// a margin. A holder that vanished (its Lambda timed out) is replaced then.
const LEASE: Duration = Duration::from_secs(8);
/// A packet still on its way this close to the lease's end is given up: the
/// next holder may start once the lease lapses, and LiveKit must have passed
/// ours to the room (or dropped it with its connection) before the next
/// holder's packets, or the room would get them interleaved.
const LEASE_MARGIN: Duration = Duration::from_millis(500);
/// Most messages one batch reads; more wait for the next.
const BATCH_MESSAGES: i64 = 500;
/// Packets stay under LiveKit's recommended 15 KiB for reliable data.
const PACKET_BYTES: usize = 14 * 1024;
/// Most packets one batch sends before it records what it sent. A room far
/// behind (LiveKit down a while: up to 500 long messages, some 75 packets)
/// catches up a few packets per batch, each batch recorded, instead of in
/// one run that a request's deadline cuts off before anything is recorded,
/// which had the next poster send the same packets again.
const BATCH_PACKETS: usize = 4;
/// A holder stops starting new batches after this, so its own request
/// returns; others (or the flusher) carry on.
const HOLDER_BUDGET: Duration = Duration::from_secs(1);

#[derive(Serialize)]
#[serde(tag = "event", rename = "chat_messages")]
struct Batch<'a> {
    messages: &'a [&'a ChatMessage],
}

/// What became of a message handed to the room's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// This request sent it, in a batch.
    Sent,
    /// Another poster's batch in progress will send it.
    Queued,
    /// This request's batch failed before its message went out (LiveKit
    /// unreachable or too slow for the lease); the message is stored and a
    /// later batch retries it.
    Failed,
    /// This request stopped holding the room's batches (its second spent on
    /// a room far behind) before its own message came; the next poster's
    /// batch, or the flusher's, sends it.
    Later,
}

/// The caller's message (its seq), and whether it has gone out. Kept
/// outside the batches' future, so that a request whose deadline drops that
/// future (a batch after its own, waiting on a connection or a lock) still
/// knows its message went out, and does not answer otherwise.
#[derive(Debug)]
pub struct Mine {
    seq: i64,
    sent: AtomicBool,
}

impl Mine {
    pub fn new(seq: i64) -> Mine {
        Mine {
            seq,
            sent: AtomicBool::new(false),
        }
    }

    /// Notes that the room's messages up to `through` have gone out.
    fn out_through(&self, through: i64) {
        if self.seq <= through {
            self.sent.store(true, Ordering::Relaxed);
        }
    }

    /// `outcome`, unless the message went out: one an earlier batch or
    /// packet sent stays sent (after a later one failed, or the deadline
    /// came, the app must not show it undelivered, or post it again).
    pub fn unless_sent(&self, outcome: Delivery) -> Delivery {
        if self.sent.load(Ordering::Relaxed) {
            Delivery::Sent
        } else {
            outcome
        }
    }
}

/// Sends the room's unsent messages in batches if nobody else is; `mine` is
/// the caller's message, to say what became of it.
pub async fn send_batches(state: &AppState, room: &RoomName, mine: Option<&Mine>) -> Delivery {
    let started = Instant::now();
    let unless_sent = |outcome| mine.map_or(outcome, |mine| mine.unless_sent(outcome));
    loop {
        // A lease held no longer than that could send nothing (see
        // `within_the_lease`): taking and letting it go would only cost two
        // statements (each flusher tick's rooms past LiveKit's budget).
        if crate::store::db::request_deadline()
            .is_some_and(|deadline| deadline.saturating_duration_since(Instant::now()) <= LEASE_MARGIN)
        {
            return unless_sent(Delivery::Later);
        }
        let lease = match state.db.get().await {
            Ok(client) => {
                // A holder cut off at its deadline leaves the lease held: it
                // must lapse then, not a whole LEASE later, for the room's
                // chat to go on. Measured once the connection is had, which
                // may have taken a reconnect.
                let hold = crate::store::db::request_deadline().map_or(LEASE, |deadline| {
                    LEASE.min(deadline.saturating_duration_since(Instant::now()))
                });
                chat::take_batch_lease(&client, room, hold, BATCH_INTERVAL).await
            }
            Err(error) => Err(error.into()),
        };
        let lease = match lease {
            Ok(Some(lease)) => lease,
            Ok(None) => return unless_sent(Delivery::Queued), // another poster is sending
            Err(error) => {
                tracing::warn!(%room, %error, "chat stored; its batch lease could not be taken");
                return unless_sent(Delivery::Failed);
            }
        };
        // A retried post's message went out in an earlier batch: this one's
        // failure must not say otherwise.
        if let Some(mine) = mine {
            mine.out_through(lease.sent_up_to);
        }
        tokio::time::sleep(lease.send_in).await;
        match send_one_batch(state, room, &lease, mine).await {
            Ok(batch) => {
                if let Some(mine) = mine {
                    mine.out_through(batch.through);
                }
                if !batch.recorded {
                    release(state, room, &lease).await;
                    return unless_sent(Delivery::Failed);
                }
                if !batch.more {
                    return unless_sent(Delivery::Queued);
                }
                if started.elapsed() > HOLDER_BUDGET {
                    // Its lease let go: no batch in progress carries what is
                    // left, its own message maybe among it.
                    return unless_sent(Delivery::Later);
                }
            }
            Err(error) => {
                tracing::warn!(%room, %error, "chat stored but its batch not sent; a later batch retries");
                release(state, room, &lease).await;
                return unless_sent(Delivery::Failed);
            }
        }
    }
}

/// What one batch did.
struct BatchSent {
    /// The room's messages up to this seq have gone out (the lease's
    /// `sent_up_to` when there was nothing to send).
    through: i64,
    /// Whether more messages are waiting.
    more: bool,
    /// Whether Postgres has it. When not, the lease is let go and the next
    /// batch sends the same messages again: the room gets them twice, in
    /// order, and clients key the chat by id.
    recorded: bool,
}

/// Reads and sends one batch, then records it, noting `mine` sent as soon as
/// its packet is. An error means nothing went out.
async fn send_one_batch(
    state: &AppState,
    room: &RoomName,
    lease: &BatchLease,
    mine: Option<&Mine>,
) -> Result<BatchSent, ApiError> {
    let messages = {
        let client = state.db.get().await?;
        chat::unsent(&client, room, lease.sent_up_to, BATCH_MESSAGES).await?
    };
    let mut sent_through = lease.sent_up_to;
    if let Some(last) = messages.last().map(|(_, seq)| *seq) {
        let packets = packets(&messages)?;
        let (to_send, through) = this_batch(&packets, last);
        sent_through = through;
        for (sent, packet) in to_send.iter().enumerate() {
            let sending = state.livekit.broadcast(room, CHAT_TOPIC, packet.bytes.clone());
            let Err(error) = within_the_lease(lease, sending).await else {
                if let Some(mine) = mine {
                    mine.out_through(packet.last_seq);
                }
                continue;
            };
            if sent == 0 {
                return Err(ApiError::unavailable(crate::error::Dependency::LiveKit, error));
            }
            // What went out is recorded; the rest is the next batch's.
            tracing::warn!(%room, %error, "a chat batch sent only its first packets");
            sent_through = to_send[sent - 1].last_seq;
            break;
        }
    }
    let recorded = async {
        let client = state.db.get().await?;
        chat::batch_sent(&client, room, sent_through, lease).await
    }
    .await;
    Ok(match recorded {
        Ok(more) => BatchSent {
            through: sent_through,
            more,
            recorded: true,
        },
        Err(error) => {
            tracing::warn!(%room, %error, "a chat batch went out but could not be recorded; the next batch sends it again");
            BatchSent {
                through: sent_through,
                more: true,
                recorded: false,
            }
        }
    })
}

/// Sends a packet if it can go out before the lease runs out: a holder slowed
/// down (a pooled connection, a lock, LiveKit answering late) must not still
/// be sending when the next holder starts the same messages over.
async fn within_the_lease(
    lease: &BatchLease,
    sending: impl Future<Output = Result<(), RoomServiceError>>,
) -> Result<(), RoomServiceError> {
    let left = lease
        .held_until
        .saturating_duration_since(Instant::now())
        .saturating_sub(LEASE_MARGIN);
    if left.is_zero() {
        return Err(RoomServiceError::TimedOut);
    }
    tokio::time::timeout(left, sending)
        .await
        .unwrap_or(Err(RoomServiceError::TimedOut))
}

/// A packet of a batch, and the seq of its last message.
struct Packet {
    bytes: Vec<u8>,
    last_seq: i64,
}

/// The packets this batch sends (at most [`BATCH_PACKETS`]), and the seq it
/// covers once they are all sent: every message read (`last`, deleted ones
/// after the last packet included) when they all fit, else the last sent
/// packet's.
fn this_batch(packets: &[Packet], last: i64) -> (&[Packet], i64) {
    if packets.len() <= BATCH_PACKETS {
        (packets, last)
    } else {
        let to_send = &packets[..BATCH_PACKETS];
        (to_send, to_send[BATCH_PACKETS - 1].last_seq)
    }
}

/// The messages as packets of at most [`PACKET_BYTES`] each, in order.
fn packets(messages: &[(Option<ChatMessage>, i64)]) -> Result<Vec<Packet>, ApiError> {
    let encode = |current: &[&ChatMessage]| {
        serde_json::to_vec(&Batch { messages: current }).map_err(ApiError::internal)
    };
    let mut packets = Vec::new();
    let mut current: Vec<&ChatMessage> = Vec::new();
    // The seq of the last message in `current`.
    let mut current_last = 0;
    for (message, seq) in messages
        .iter()
        .filter_map(|(message, seq)| Some((message.as_ref()?, *seq)))
    {
        current.push(message);
        if encode(&current)?.len() > PACKET_BYTES && current.len() > 1 {
            current.pop();
            packets.push(Packet {
                bytes: encode(&current)?,
                last_seq: current_last,
            });
            current = vec![message];
        }
        current_last = seq;
    }
    if !current.is_empty() {
        packets.push(Packet {
            bytes: encode(&current)?,
            last_seq: current_last,
        });
    }
    Ok(packets)
}

/// Lets the lease of a failed batch go: nothing recorded sent, and the
/// room's next attempt spaced from this one.
async fn release(state: &AppState, room: &RoomName, lease: &BatchLease) {
    let released = match state.db.get().await {
        Ok(client) => chat::batch_failed(&client, room, lease).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = released {
        tracing::warn!(%room, %error, "could not let the chat lease go; it expires by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChatText;
    use uuid::Uuid;

    fn message(n: usize, text: String) -> (Option<ChatMessage>, i64) {
        let message = ChatMessage {
            id: Uuid::from_u128(n as u128),
            room_name: RoomName::parse("busy-room".to_owned()).unwrap(),
            user_id: Uuid::from_u128(7),
            text,
            created_at: chrono::DateTime::UNIX_EPOCH,
        };
        (Some(message), n as i64)
    }

    fn ids(packet: &[u8]) -> Vec<String> {
        let batch: serde_json::Value = serde_json::from_slice(packet).unwrap();
        assert_eq!(batch["event"], "chat_messages");
        batch["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A busy interval of long messages in four-byte characters (500 of
    /// them, the most a message holds: 2,000 bytes and more once escaped):
    /// split into packets under LiveKit's recommended size, every message
    /// once, in order.
    #[test]
    fn a_batch_too_big_for_one_packet_is_split_in_order() {
        let messages: Vec<_> = (0..40)
            .map(|n| message(n, "🎉".repeat(ChatText::MAX_CHARS)))
            .collect();
        let packets = packets(&messages).unwrap();
        assert!(packets.len() > 1, "{} packets", packets.len());
        for packet in &packets {
            assert!(packet.bytes.len() <= PACKET_BYTES, "{} bytes", packet.bytes.len());
            let last_id = ids(&packet.bytes).last().cloned().unwrap();
            assert_eq!(
                last_id,
                Uuid::from_u128(packet.last_seq as u128).to_string(),
                "each packet knows the seq of its last message"
            );
        }
        let sent: Vec<String> = packets.iter().flat_map(|p| ids(&p.bytes)).collect();
        let expected: Vec<String> = (0..40).map(|n| Uuid::from_u128(n as u128).to_string()).collect();
        assert_eq!(sent, expected);
    }

    /// A room far behind sends a few packets per batch and records up to the
    /// last of them; a batch whose packets all fit covers every message read,
    /// the deleted ones after its last packet too.
    #[test]
    fn a_batch_sends_a_few_packets_and_covers_what_it_sent() {
        let messages: Vec<_> = (0..60)
            .map(|n| message(n, "🎉".repeat(ChatText::MAX_CHARS)))
            .collect();
        let packets = packets(&messages).unwrap();
        assert!(packets.len() > BATCH_PACKETS, "{} packets", packets.len());
        let (to_send, through) = this_batch(&packets, 59);
        assert_eq!(to_send.len(), BATCH_PACKETS);
        assert_eq!(through, packets[BATCH_PACKETS - 1].last_seq);
        assert!(through < 59);

        let mut few: Vec<_> = (0..3).map(|n| message(n, format!("hi {n}"))).collect();
        few.push((None, 7));
        let short = super::packets(&few).unwrap();
        let (to_send, through) = this_batch(&short, 7);
        assert_eq!((to_send.len(), through), (1, 7));
    }

    fn lease_held_for(left: Duration) -> BatchLease {
        BatchLease {
            sent_up_to: 0,
            until: chrono::Utc::now(),
            held_until: Instant::now() + left,
            send_in: Duration::ZERO,
        }
    }

    /// A packet that could not reach the room before the lease lapses is not
    /// sent: the next holder would be sending the same messages beside it.
    #[tokio::test]
    async fn a_packet_is_not_started_when_the_lease_is_about_to_lapse() {
        let started = std::sync::atomic::AtomicBool::new(false);
        let sending = async {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        };
        let outcome = within_the_lease(&lease_held_for(LEASE_MARGIN / 2), sending).await;
        assert!(matches!(outcome, Err(RoomServiceError::TimedOut)), "{outcome:?}");
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));

        let sent = within_the_lease(&lease_held_for(LEASE), async { Ok(()) }).await;
        assert!(sent.is_ok(), "{sent:?}");
    }

    /// A packet LiveKit has not taken when the lease is about to lapse is
    /// given up, not left going beside the next holder's.
    #[tokio::test]
    async fn a_packet_still_going_at_the_end_of_the_lease_is_given_up() {
        let lease = lease_held_for(LEASE_MARGIN + Duration::from_millis(50));
        let hanging = std::future::pending::<Result<(), RoomServiceError>>();
        let outcome = tokio::time::timeout(LEASE, within_the_lease(&lease, hanging))
            .await
            .expect("the send was given up within the lease");
        assert!(matches!(outcome, Err(RoomServiceError::TimedOut)), "{outcome:?}");
    }

    /// A message a packet carried out stays sent, whatever comes after.
    #[test]
    fn a_message_once_out_stays_sent() {
        let mine = Mine::new(7);
        mine.out_through(6);
        assert_eq!(mine.unless_sent(Delivery::Failed), Delivery::Failed);
        mine.out_through(7);
        assert_eq!(mine.unless_sent(Delivery::Failed), Delivery::Sent);
        // A later batch's failure, an older record, or the deadline.
        mine.out_through(3);
        assert_eq!(mine.unless_sent(Delivery::Later), Delivery::Sent);
    }

    /// Deleted messages in the range are skipped; a short batch is one packet.
    #[test]
    fn a_small_batch_is_one_packet_without_the_deleted() {
        let mut messages: Vec<_> = (0..3).map(|n| message(n, format!("hi {n}"))).collect();
        messages.insert(1, (None, 10));
        let packets = packets(&messages).unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(ids(&packets[0].bytes).len(), 3);
    }
}
