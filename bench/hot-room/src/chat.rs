//! Busy chat in the viral room: `chat_rate` messages a second from 10,000
//! users, plus a few spammers over the limit, on the template's chat
//! containers. A real participant (LiveKit's Python SDK, the tests' client)
//! in the room checks that every stored message arrives once and in order;
//! LiveKit's own log counts the SendData calls.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::listener::Listener;
use crate::{Setup, admin, fleet};

const ROOM: &str = "hot-room-chat";
const USERS: usize = 10_000;
const SPAMMERS: usize = 20;
const SPAM_EACH: usize = 10;

fn post(setup: &Setup, user: Uuid, text: &str) -> (String, String) {
    (
        format!("Bearer {}", crate::supabase_token(&setup.supabase_secret, user)),
        json!({"roomName": ROOM, "text": text}).to_string(),
    )
}

pub async fn run(setup: &Setup) -> Value {
    let body = fleet::start_stream(setup, ROOM, "Busy chat").await;
    let url = body["serverUrl"].as_str().unwrap_or_default();
    let listener = Listener::join(setup, url, body["token"].as_str().unwrap_or_default(), "chat").await;
    let received_ids = |packets: Vec<crate::listener::Packet>| -> Vec<String> {
        packets
            .iter()
            .flat_map(|p| p.payload["messages"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect()
    };

    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    let total = setup.chat_rate * setup.window.as_secs() as usize;
    let mut jobs: Vec<(Duration, (String, String))> = (0..total)
        .map(|i| {
            let at = setup.window.mul_f64(i as f64 / total as f64);
            (at, post(setup, users[i % USERS], &format!("message {i}")))
        })
        .collect();
    for s in 0..SPAMMERS {
        let spammer = Uuid::new_v4();
        for k in 0..SPAM_EACH {
            let at = Duration::from_millis((s * 37 + k * 100) as u64);
            jobs.push((at, post(setup, spammer, &format!("spam {s}.{k}"))));
        }
    }
    jobs.sort_by_key(|(at, _)| *at);
    let containers = fleet::containers(setup, "ChatConcurrency");
    let chat_containers = containers.len();
    let calls_before = fleet::send_data_calls(setup, ROOM);
    let outcomes = fleet::run(
        containers,
        jobs,
        |state, (bearer, body): (String, String)| async move {
            let request = fleet::post(&bearer, body);
            shared::http::handle(&state, request, &shared::handlers::post_message)
                .await
                .status()
                .as_u16()
        },
    )
    .await;

    // What was stored, in the room's order, against what the listener got.
    let db = admin(setup).await;
    let stored: Vec<String> = db
        .query(
            "SELECT id::text FROM live_messages WHERE room_name = $1 ORDER BY seq",
            &[&ROOM],
        )
        .await
        .expect("the stored chat")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let flusher = fleet::container(setup, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while received_ids(listener.packets().await).len() < stored.len()
        && tokio::time::Instant::now() < deadline
    {
        let _ = shared::scheduled::flush::flush_once(&flusher).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let packets = listener.packets().await;
    let from_the_backend = packets.iter().all(|p| p.sender.is_none());
    let chat_packets = packets.len();
    let got = received_ids(packets);
    let calls = fleet::send_data_calls(setup, ROOM).saturating_sub(calls_before);
    listener.leave().await;
    let refused = outcomes.iter().filter(|o| o.status == 429).count();
    json!({
        "containers": chat_containers,
        "users": USERS,
        "posts": fleet::summary(&outcomes),
        "stored": stored.len(),
        "expected_stored": total + SPAMMERS * 5,
        "rate_limited": refused,
        "expected_rate_limited": SPAMMERS * (SPAM_EACH - 5),
        "received": got.len(),
        "received_in_order": got == stored,
        "chat_packets": chat_packets,
        "packets_without_sender": from_the_backend,
        "send_data_calls": calls,
        "seconds": setup.window.as_secs(),
        "send_data_calls_per_s": calls as f64 / setup.window.as_secs_f64(),
    })
}
