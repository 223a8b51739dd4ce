//! Reactions in the viral room: 10,000 viewers tapping, `reaction_rate` taps
//! a second for the window (each viewer within their own limit), plus a few
//! over it, on the template's reactions containers. A real participant counts
//! the packets the room receives and adds up what they carry; LiveKit's log
//! counts the SendData calls. The aggregation bounds both at about one per
//! [`shared::store::reactions::BROADCAST_INTERVAL`] however fast the room taps.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use shared::store::reactions::{BROADCAST_INTERVAL, ReactionKind};
use uuid::Uuid;

use crate::listener::{self, Listener, Packet};
use crate::{Setup, admin, fleet};

const ROOM: &str = "hot-room-reactions";
const USERS: usize = 10_000;
/// Tappers far over their limit (10 per 10 s by default): 20 taps in 0.6 s.
const OVER_THE_LIMIT: usize = 20;
const TAPS_EACH: usize = 20;

fn tap(setup: &Setup, user: Uuid, kind: ReactionKind) -> (String, String) {
    (
        format!("Bearer {}", crate::supabase_token(&setup.supabase_secret, user)),
        json!({"roomName": ROOM, "kind": kind}).to_string(),
    )
}

/// The room's totals per kind, from the last packet that carried them.
fn told_totals(packets: &[Packet]) -> BTreeMap<String, i64> {
    packets
        .last()
        .and_then(|p| p.payload["totals"].as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|(kind, n)| (kind, n.as_i64().unwrap_or(0)))
        .collect()
}

/// Every tap the packets told of, by kind (the sum of their `counts`).
fn told_counts(packets: &[Packet]) -> BTreeMap<String, i64> {
    let mut sum = BTreeMap::new();
    for packet in packets {
        for (kind, n) in packet.payload["counts"].as_object().cloned().unwrap_or_default() {
            *sum.entry(kind).or_insert(0) += n.as_i64().unwrap_or(0);
        }
    }
    sum
}

pub async fn run(setup: &Setup) -> Value {
    let body = fleet::start_stream(setup, ROOM, "Reactions").await;
    let url = body["serverUrl"].as_str().unwrap_or_default();
    let listener = Listener::join(
        setup,
        url,
        body["token"].as_str().unwrap_or_default(),
        "reactions",
    )
    .await;

    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    let total = setup.reaction_rate * setup.window.as_secs() as usize;
    // Viewer i % USERS taps every USERS / rate seconds (10 s at 1,000/s):
    // everyone stays within the default limit of 10 per 10 s.
    let mut jobs: Vec<(Duration, (String, String))> = (0..total)
        .map(|i| {
            let at = setup.window.mul_f64(i as f64 / total as f64);
            let kind = ReactionKind::ALL[i % ReactionKind::ALL.len()];
            (at, tap(setup, users[i % USERS], kind))
        })
        .collect();
    for s in 0..OVER_THE_LIMIT {
        let tapper = Uuid::new_v4();
        for k in 0..TAPS_EACH {
            let at = Duration::from_millis((s * 41 + k * 30) as u64);
            jobs.push((at, tap(setup, tapper, ReactionKind::Heart)));
        }
    }
    jobs.sort_by_key(|(at, _)| *at);
    let containers = fleet::containers(setup, "ReactionsConcurrency");
    let reaction_containers = containers.len();
    let calls_before = fleet::send_data_calls(setup, ROOM);
    let outcomes = fleet::run(
        containers,
        jobs,
        |state, (bearer, body): (String, String)| async move {
            let request = fleet::post(&bearer, body);
            shared::http::handle(&state, request, &shared::handlers::react)
                .await
                .status()
                .as_u16()
        },
    )
    .await;
    let accepted = outcomes.iter().filter(|o| o.status == 200).count() as i64;
    let refused = outcomes.iter().filter(|o| o.status == 429).count();

    let db = admin(setup).await;
    let counted: BTreeMap<String, i64> = db
        .query(
            "SELECT kind, sum(n)::bigint FROM live_reaction_counts WHERE room_name = $1 GROUP BY kind",
            &[&ROOM],
        )
        .await
        .expect("the counted reactions")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // The taps the lease held back reach the room with the flusher
    // (flush-counts runs back to back in production).
    let flusher = fleet::container(setup, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while told_totals(&listener.packets().await) != counted && tokio::time::Instant::now() < deadline {
        let _ = shared::scheduled::flush::flush_once(&flusher).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let packets = listener.packets().await;
    let calls = fleet::send_data_calls(setup, ROOM).saturating_sub(calls_before);
    listener.leave().await;
    let seconds = setup.window.as_secs_f64();
    json!({
        "containers": reaction_containers,
        "users": USERS,
        "taps": fleet::summary(&outcomes),
        "accepted": accepted,
        "expected_accepted": total + OVER_THE_LIMIT * 10,
        "rate_limited": refused,
        "expected_rate_limited": OVER_THE_LIMIT * (TAPS_EACH - 10),
        "counted": counted.values().sum::<i64>(),
        "told_totals_match_counts": told_totals(&packets) == counted,
        "told_counts_add_up": told_counts(&packets) == counted,
        "packets": packets.len(),
        "packets_without_sender": packets.iter().all(|p| p.sender.is_none()),
        "most_packets_in_one_second": listener::most_in_one_second(&packets),
        "bound_per_second": (1.0 / BROADCAST_INTERVAL.as_secs_f64()).ceil() as usize + 1,
        "send_data_calls": calls,
        "seconds": seconds,
        "taps_per_s": outcomes.len() as f64 / seconds,
        "send_data_calls_per_s": calls as f64 / seconds,
    })
}
