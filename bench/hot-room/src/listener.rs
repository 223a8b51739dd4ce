//! A real viewer in the room: LiveKit's Python SDK driven by the tests'
//! client (`shared/tests/clients/participant.py`), keeping every data packet
//! it receives on one topic with its arrival time.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::Mutex;

use crate::Setup;

#[derive(Clone)]
pub struct Packet {
    pub at: Instant,
    pub payload: Value,
    /// The sending participant's identity; `None` for the backend's packets.
    pub sender: Option<String>,
}

pub struct Listener {
    process: Child,
    stdin: ChildStdin,
    packets: Arc<Mutex<Vec<Packet>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Connects with `token` to `url` and waits until the SDK says connected.
    pub async fn join(setup: &Setup, url: &str, token: &str, topic: &'static str) -> Listener {
        let mut process = tokio::process::Command::new(&setup.python)
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
        let mut stdin = process.stdin.take().expect("stdin");
        let connect = json!({"cmd": "connect", "url": url, "token": token});
        stdin
            .write_all(format!("{connect}\n").as_bytes())
            .await
            .expect("connect");
        let mut lines = BufReader::new(process.stdout.take().expect("stdout")).lines();
        let connected = lines.next_line().await.ok().flatten().unwrap_or_default();
        assert!(
            connected.contains("\"connected\""),
            "the listener joined: {connected}"
        );
        let packets: Arc<Mutex<Vec<Packet>>> = Arc::default();
        let sink = packets.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["event"] != "data_received" || event["topic"] != topic {
                    continue;
                }
                let payload =
                    serde_json::from_str(event["payload"].as_str().unwrap_or("null")).unwrap_or_default();
                sink.lock().await.push(Packet {
                    at: Instant::now(),
                    payload,
                    sender: event["participant"].as_str().map(str::to_owned),
                });
            }
        });
        Listener {
            process,
            stdin,
            packets,
            reader,
        }
    }

    pub async fn packets(&self) -> Vec<Packet> {
        self.packets.lock().await.clone()
    }

    /// A clean leave: the client disconnects from the room and exits (killed
    /// if it has not within 10 s).
    pub async fn leave(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\": \"exit\"}\n").await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.process.wait()).await;
        self.reader.abort();
    }
}

/// The most packets that arrived within any one second.
pub fn most_in_one_second(packets: &[Packet]) -> usize {
    let times: Vec<Instant> = packets.iter().map(|p| p.at).collect();
    let mut most = 0;
    let mut first = 0;
    for last in 0..times.len() {
        while times[last].duration_since(times[first]).as_secs_f64() >= 1.0 {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}
