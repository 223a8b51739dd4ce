//! Busy chat in the viral room: `chat_rate` messages a second from 10,000
//! users, plus a few spammers over the limit, on the template's chat
//! containers. A real participant (LiveKit's Python SDK, the tests' client)
//! in the room checks that every stored message arrives once and in order;
//! LiveKit's own log counts the SendData calls.

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{Body, Request};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

use crate::fleet;
use crate::{Setup, admin};

/// The template's ChatConcurrency.
const CHAT_CONTAINERS: usize = 20;
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

/// The room's SendData calls so far, from LiveKit's log.
fn send_data_calls(setup: &Setup) -> usize {
    std::fs::read_to_string(&setup.livekit_log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("RoomService.SendData") && line.contains(ROOM))
        .count()
}

pub async fn run(setup: &Setup) -> Value {
    let starter = fleet::container(setup, &[]);
    let host = Uuid::new_v4();
    let mut start = Request::new(Body::Text(
        json!({"title": "Busy chat", "roomName": ROOM}).to_string(),
    ));
    *start.method_mut() = lambda_http::http::Method::POST;
    let bearer = format!("Bearer {}", crate::supabase_token(&setup.supabase_secret, host));
    start
        .headers_mut()
        .insert("authorization", bearer.parse().expect("header"));
    let started = shared::http::handle(&starter, start, &shared::handlers::start_stream).await;
    assert_eq!(started.status(), 201, "the chat room starts");
    let body: Value = serde_json::from_slice(started.body().as_ref()).expect("JSON");

    // A real viewer in the room, listening.
    let mut listener = tokio::process::Command::new(&setup.python)
        .arg(format!(
            "{}/../../shared/tests/clients/participant.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("LiveKit's Python SDK in the tools venv");
    let mut stdin = listener.stdin.take().expect("stdin");
    let connect = json!({"cmd": "connect", "url": body["serverUrl"], "token": body["token"]});
    stdin
        .write_all(format!("{connect}\n").as_bytes())
        .await
        .expect("connect");
    let mut lines = BufReader::new(listener.stdout.take().expect("stdout")).lines();
    let received: Arc<tokio::sync::Mutex<Vec<String>>> = Arc::default();
    let packets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connected = lines.next_line().await.ok().flatten().unwrap_or_default();
    assert!(
        connected.contains("\"connected\""),
        "the listener joined: {connected}"
    );
    let (sink, counted) = (received.clone(), packets.clone());
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["event"] != "data_received" || event["topic"] != "chat" {
                continue;
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let payload: Value =
                serde_json::from_str(event["payload"].as_str().unwrap_or("{}")).unwrap_or_default();
            let ids = payload["messages"].as_array().cloned().unwrap_or_default();
            let mut sink = sink.lock().await;
            sink.extend(ids.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)));
        }
    });

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
    let containers: Vec<Arc<shared::AppState>> = (0..CHAT_CONTAINERS)
        .map(|_| Arc::new(fleet::container(setup, &[])))
        .collect();
    let calls_before = send_data_calls(setup);
    let outcomes = fleet::run(
        containers,
        jobs,
        |state, (bearer, body): (String, String)| async move {
            let mut request = Request::new(Body::Text(body));
            *request.method_mut() = lambda_http::http::Method::POST;
            request
                .headers_mut()
                .insert("authorization", bearer.parse().expect("a header value"));
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
    while received.lock().await.len() < stored.len() && tokio::time::Instant::now() < deadline {
        let _ = shared::flush::flush_once(&flusher).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = received.lock().await.clone();
    let calls = send_data_calls(setup).saturating_sub(calls_before);
    let _ = stdin.write_all(b"{\"cmd\": \"exit\"}\n").await;
    reader.abort();
    let refused = outcomes.iter().filter(|o| o.status == 429).count();
    json!({
        "containers": CHAT_CONTAINERS,
        "users": USERS,
        "posts": fleet::summary(&outcomes),
        "stored": stored.len(),
        "expected_stored": total + SPAMMERS * 5,
        "rate_limited": refused,
        "expected_rate_limited": SPAMMERS * (SPAM_EACH - 5),
        "received": got.len(),
        "received_in_order": got == stored,
        "chat_packets": packets.load(std::sync::atomic::Ordering::Relaxed),
        "send_data_calls": calls,
        "seconds": setup.window.as_secs(),
        "send_data_calls_per_s": calls as f64 / setup.window.as_secs_f64(),
    })
}
