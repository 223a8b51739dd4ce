//! LiveKit's real server for the tests, and real participants in its rooms.
//!
//! Each test app gets its own server (`scripts/livekit-server`, config written
//! by `scripts/lib.sh`), started on first use behind a TCP proxy: the proxy's
//! address is the app's `LIVEKIT_URL`, so a test can make LiveKit stop
//! (nothing listens), drop connections or stall mid-call without a stand-in. The server sends its
//! webhooks to the app's own webhook endpoint. Participants are LiveKit's
//! Python SDK (`shared/tests/clients/participant.py`) in processes of their own.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_api::services::room::{CreateRoomOptions, RoomClient};
use livekit_protocol as proto;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, OnceCell, oneshot, watch};

/// How the proxy in front of the server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Nothing listens on LiveKit's address: connections are refused, and
    /// open ones are cut. A stopped or restarting server looks like this.
    Stopped,
    /// Connections are closed as soon as they are made, and open ones are cut:
    /// LiveKit is down.
    Failing,
    /// Connections are accepted and nothing passes, either way: LiveKit hangs.
    /// Once it is back, a connection that carried a request meanwhile stays
    /// silent (that call gets no answer) and an idle one is cut, as a
    /// restarted server resets it: a client's next call does not meet a
    /// dead keep-alive connection.
    Hanging,
    /// Connections open now are closed by the far end the moment they carry
    /// the next request, which gets no answer; new ones work. A keep-alive
    /// connection that a load balancer, a proxy or a restarted server closed
    /// while the Lambda container was frozen looks like this on thaw.
    ClosingIdle,
}

const UP: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;
const CLOSING_IDLE: u8 = 3;

/// How long a test waits for something LiveKit does asynchronously.
pub const SETTLE: Duration = Duration::from_secs(10);

struct Launch {
    api_key: String,
    api_secret: String,
    webhook_url: String,
    departure_timeout: u32,
}

struct ServerProcess {
    port: u16,
    _child: Child,
    dir: std::path::PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // TEST_KEEP_LIVEKIT_LOGS=1 keeps each server's config and log for a look.
        if std::env::var_os("TEST_KEEP_LIVEKIT_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Inner {
    launch: Launch,
    server: OnceCell<ServerProcess>,
    mode: AtomicU8,
    /// Bumped on every mode change: it cuts the pipes opened before it at
    /// once, as an outage cuts every open connection. Cut only when data next
    /// passed, a keep-alive connection left idle through an outage would fail
    /// its first request after LiveKit came back.
    generation: watch::Sender<u64>,
    /// Reads of a client's bytes while LiveKit hung: how a test knows its
    /// call reached the hang before it lets LiveKit answer again.
    held: watch::Sender<u64>,
    listening: tokio::sync::Mutex<Listening>,
}

/// The proxy's port, listened on or only held. The port stays bound all
/// along (a socket bound but not listening refuses connections), so a test
/// that stops LiveKit finds it at the same address when it comes back, and
/// no other socket can take the port in between.
struct Listening {
    proxy_port: u16,
    /// The accept loop of the listening socket, stopped by the sender.
    accepting: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// Bound to the port beside the listener (`SO_REUSEPORT`), not listening:
    /// it holds the port while the listener is closed.
    reserve: Option<TcpSocket>,
}

/// A socket bound to `port` on loopback that shares the port with the
/// proxy's other socket (0: a port the kernel picks).
fn proxy_socket(port: u16) -> TcpSocket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap_or_else(|error| panic!("the LiveKit proxy's port {port}: {error}"));
    socket
}

/// One LiveKit server behind its proxy. Clones share the server (several
/// "containers" of one deployment talk to one LiveKit).
#[derive(Clone)]
pub struct LiveKitServer {
    proxy_port: u16,
    inner: Arc<Inner>,
}

impl LiveKitServer {
    pub async fn start(
        api_key: &str,
        api_secret: &str,
        webhook_url: &str,
        departure_timeout: u32,
    ) -> LiveKitServer {
        let inner = Arc::new(Inner {
            launch: Launch {
                api_key: api_key.to_owned(),
                api_secret: api_secret.to_owned(),
                webhook_url: webhook_url.to_owned(),
                departure_timeout,
            },
            server: OnceCell::new(),
            mode: AtomicU8::new(UP),
            generation: watch::Sender::new(0),
            held: watch::Sender::new(0),
            listening: tokio::sync::Mutex::new(Listening {
                proxy_port: 0,
                accepting: None,
                reserve: None,
            }),
        });
        let first = proxy_socket(0);
        let proxy_port = first.local_addr().unwrap().port();
        {
            let mut listening = inner.listening.lock().await;
            listening.proxy_port = proxy_port;
            listening.reserve = Some(first);
            inner.listen(&mut listening);
        }
        LiveKitServer { proxy_port, inner }
    }

    /// The URL the app hands to clients and calls RoomService on.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.proxy_port)
    }

    /// How many times a client's bytes reached the proxy while LiveKit hung.
    pub fn held_requests(&self) -> u64 {
        *self.inner.held.borrow()
    }

    /// Waits (at most [`SETTLE`]) until [`Self::held_requests`] reaches `count`.
    pub async fn until_held_requests(&self, count: u64) {
        let mut held = self.inner.held.subscribe();
        tokio::time::timeout(SETTLE, held.wait_for(|held| *held >= count))
            .await
            .unwrap_or_else(|_| panic!("no call reached the hanging LiveKit ({count} expected)"))
            .unwrap();
    }

    /// Returns once the proxy behaves as `mode` says: after a stop, the next
    /// connection is refused.
    pub async fn set_mode(&self, mode: Mode) {
        let value = match mode {
            Mode::Up => UP,
            // Open pipes are cut as in an outage; new connections never get in.
            Mode::Stopped | Mode::Failing => FAILING,
            Mode::Hanging => HANGING,
            Mode::ClosingIdle => CLOSING_IDLE,
        };
        // Under the listener's lock, so two changes at once end in the last
        // one's mode and listener alike.
        let mut listening = self.inner.listening.lock().await;
        // The mode first: a pipe woken by the new generation reads it.
        self.inner.mode.store(value, Ordering::SeqCst);
        self.inner.generation.send_modify(|generation| *generation += 1);
        if mode == Mode::Stopped {
            if let Some((stop, accepting)) = listening.accepting.take() {
                // The reserve holds the port before the listener closes.
                let port = listening.proxy_port;
                listening.reserve = Some(proxy_socket(port));
                let _ = stop.send(());
                accepting.await.unwrap();
            }
        } else if listening.accepting.is_none() {
            self.inner.listen(&mut listening);
        }
    }

    /// The server's own address, for the test's RoomService calls and for
    /// participants that must not go through the proxy's faults.
    pub async fn direct_http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.server().await.port)
    }

    pub async fn direct_ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.inner.server().await.port)
    }

    async fn rooms_client(&self) -> RoomClient {
        RoomClient::with_api_key(
            &self.direct_http_url().await,
            &self.inner.launch.api_key,
            &self.inner.launch.api_secret,
        )
    }

    /// Every room the server has.
    pub async fn rooms(&self) -> Vec<proto::Room> {
        self.rooms_client()
            .await
            .list_rooms(Vec::new())
            .await
            .expect("ListRooms on the real server")
    }

    pub async fn room(&self, name: &str) -> Option<proto::Room> {
        let rooms = self
            .rooms_client()
            .await
            .list_rooms(vec![name.to_owned()])
            .await
            .expect("ListRooms on the real server");
        rooms.into_iter().find(|room| room.name == name)
    }

    pub async fn has_room(&self, name: &str) -> bool {
        self.room(name).await.is_some()
    }

    /// Makes a room as if someone else had (not through our API), with
    /// `metadata`.
    pub async fn create_room(&self, name: &str, metadata: &str) -> proto::Room {
        let options = CreateRoomOptions {
            metadata: metadata.to_owned(),
            ..CreateRoomOptions::default()
        };
        self.rooms_client()
            .await
            .create_room(name, options)
            .await
            .expect("CreateRoom on the real server")
    }

    /// Closes a room as LiveKit does when it empties out.
    pub async fn delete_room(&self, name: &str) {
        self.rooms_client()
            .await
            .delete_room(name)
            .await
            .expect("DeleteRoom on the real server");
    }

    /// Who is in `room`; a room that is gone has nobody in it. Any other
    /// failure fails the test: read as "nobody", it would pass every check
    /// that someone is gone.
    pub async fn participants(&self, room: &str) -> Vec<proto::ParticipantInfo> {
        use livekit_api::services::{ServerError, ServerErrorCode, ServiceError};
        match self.rooms_client().await.list_participants(room).await {
            Ok(participants) => participants,
            Err(ServiceError::Twirp(ServerError::Twirp(ServerErrorCode { code, .. })))
                if code == ServerErrorCode::NOT_FOUND =>
            {
                Vec::new()
            }
            Err(error) => panic!("ListParticipants of {room} on the real server: {error}"),
        }
    }

    /// The participant of `identity` in `room`, if LiveKit lists one.
    pub async fn participant(&self, room: &str, identity: &str) -> Option<proto::ParticipantInfo> {
        self.participants(room)
            .await
            .into_iter()
            .find(|p| p.identity == identity)
    }

    /// Polls the room's participants until `done` holds, for at most [`SETTLE`].
    pub async fn wait_for_participants(
        &self,
        room: &str,
        what: &str,
        done: impl Fn(&[proto::ParticipantInfo]) -> bool,
    ) -> Vec<proto::ParticipantInfo> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let participants = self.participants(room).await;
            if done(&participants) {
                return participants;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SETTLE:?}; participants: {:?}",
                participants.iter().map(|p| &p.identity).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A token of our own making, e.g. for a hidden recorder, signed with the
    /// server's key.
    pub fn token(&self, identity: &str, room: &str, grants: VideoGrants) -> String {
        AccessToken::with_api_key(&self.inner.launch.api_key, &self.inner.launch.api_secret)
            .with_identity(identity)
            .with_grants(VideoGrants {
                room_join: true,
                room: room.to_owned(),
                ..grants
            })
            .to_jwt()
            .unwrap()
    }
}

impl Inner {
    /// Turns the reserve socket into the proxy's listener and accepts on it
    /// until stopped; the listener closes when the loop ends.
    fn listen(self: &Arc<Self>, listening: &mut Listening) {
        let listener: TcpListener = listening
            .reserve
            .take()
            .expect("a socket holds the proxy's port while it is not listening")
            .listen(1024)
            .unwrap();
        let (stop, mut stopped) = oneshot::channel();
        let inner = self.clone();
        let accepting = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { return };
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.forward(inbound).await });
                    }
                }
            }
        });
        listening.accepting = Some((stop, accepting));
    }

    async fn server(&self) -> &ServerProcess {
        self.server.get_or_init(|| self.launch_server()).await
    }

    /// Starts LiveKit's server on ports the script picks. A port that was free
    /// when picked can be taken before the server binds it (the kernel hands
    /// the same range to outgoing connections, and the tests open many), so a
    /// server that exits with "address already in use" is started again on new
    /// ports; any other exit fails the test.
    async fn launch_server(&self) -> ServerProcess {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            // scripts/test's directory for the run, which it removes however the run ends.
            let base = std::env::var_os("TEST_TEMP_DIR").map_or_else(std::env::temp_dir, Into::into);
            let dir = base.join(format!("livekit-test-{}", uuid::Uuid::new_v4().simple()));
            let script = format!("{}/../scripts/livekit-server", env!("CARGO_MANIFEST_DIR"));
            let mut child = Command::new(&script)
                .arg("run")
                .arg(&dir)
                .args([
                    &self.launch.api_key,
                    &self.launch.api_secret,
                    &self.launch.webhook_url,
                    &self.launch.departure_timeout.to_string(),
                ])
                // At info, it logs when its port is bound (below).
                .env("LIVEKIT_LOG_LEVEL", "info")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("scripts/livekit-server runs (scripts/test builds LiveKit's server first)");
            let mut port_line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut port_line)
                .await
                .unwrap();
            let port: u16 = port_line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("scripts/livekit-server printed {port_line:?}, not a port"));
            let deadline = Instant::now() + SETTLE;
            loop {
                let log = std::fs::read_to_string(dir.join("livekit.log")).unwrap_or_default();
                // The server logs this once its HTTP port is bound: a connection
                // accepted before that may be another process's, on a port it
                // took in between.
                let bound = log.contains("starting LiveKit server");
                if bound && TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return ServerProcess {
                        port,
                        _child: child,
                        dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "LiveKit's server did not listen on {port}:\n{log}"
                );
                if let Ok(Some(status)) = child.try_wait() {
                    if log.contains("address already in use") && attempt < ATTEMPTS {
                        eprintln!(
                            "LiveKit's server lost a port it was given (attempt {attempt}); starting it again"
                        );
                        let _ = std::fs::remove_dir_all(&dir);
                        break;
                    }
                    panic!("LiveKit's server exited with {status}:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn forward(self: Arc<Self>, inbound: TcpStream) {
        // Subscribed before the mode is read, so no change in between is missed.
        let mut changes = self.generation.subscribe();
        changes.borrow_and_update();
        match self.mode.load(Ordering::SeqCst) {
            FAILING => return,
            HANGING => {
                let mut inbound = inbound;
                self.hang(Some(&mut inbound), &mut changes, &AtomicBool::new(false))
                    .await;
                return; // cut
            }
            _ => {}
        }
        let port = self.server().await.port;
        let Ok(outbound) = TcpStream::connect(("127.0.0.1", port)).await else {
            return;
        };
        let (client_read, client_write) = inbound.into_split();
        let (server_read, server_write) = outbound.into_split();
        let carried = Arc::new(AtomicBool::new(false));
        let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    from_client: bool| {
            let (mut changes, inner, carried) = (changes.clone(), self.clone(), carried.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                let mut closing = false;
                loop {
                    tokio::select! {
                        read = from.read(&mut buffer) => match read {
                            Ok(n) if n > 0 => {
                                if closing || to.write_all(&buffer[..n]).await.is_err() {
                                    break;
                                }
                            }
                            _ => break,
                        },
                        _ = changes.changed() => {
                            match inner.mode.load(Ordering::SeqCst) {
                                // Stalled, not closed: the connection stays open and silent.
                                HANGING => {
                                    let client = from_client.then_some(&mut from);
                                    inner.hang(client, &mut changes, &carried).await;
                                    break;
                                }
                                // Dropped unanswered when next used (the other
                                // direction then ends with the server's close).
                                CLOSING_IDLE => closing = true,
                                _ => break, // cut: LiveKit went away
                            }
                        }
                    }
                }
            })
        };
        pipe(client_read, server_write, true);
        pipe(server_read, client_write, false);
    }

    /// A connection while LiveKit hangs: nothing passes. The client's bytes
    /// (`client`, its side of the connection, in one of the two directions)
    /// are read and dropped, counted in `held`, and mark the connection as
    /// `carried` a request. Once the mode changes, a connection that carried
    /// one stays silent for good, its call unanswered as in a real hang;
    /// returns (the caller cuts the connection) for an idle one.
    async fn hang(
        &self,
        mut client: Option<&mut (impl AsyncReadExt + Unpin)>,
        changes: &mut watch::Receiver<u64>,
        carried: &AtomicBool,
    ) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let reading = async {
                match client.as_mut() {
                    Some(client) => client.read(&mut buffer).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = reading => match read {
                    Ok(n) if n > 0 => {
                        carried.store(true, Ordering::SeqCst);
                        self.held.send_modify(|held| *held += 1);
                    }
                    _ => client = None, // the client closed its side
                },
                changed = changes.changed() => {
                    if changed.is_err() || self.mode.load(Ordering::SeqCst) == HANGING {
                        continue;
                    }
                    if carried.load(Ordering::SeqCst) {
                        return std::future::pending().await;
                    }
                    return;
                }
            }
        }
    }
}

/// The tools venv's Python, with LiveKit's Python SDK (scripts/test sets it).
fn python() -> String {
    std::env::var("TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/../target/tools/venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

/// A real participant: a process of LiveKit's Python SDK connected to a room.
pub struct Participant {
    pub identity: String,
    child: Child,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
}

impl Participant {
    /// Connects with `token` to `url` (the `serverUrl` our API returned).
    /// `Err` carries the SDK's error when the server refuses.
    pub async fn connect(url: &str, token: &str) -> Result<Participant, String> {
        Participant::connect_as(url, token, None).await
    }

    /// A publish-only side connection of `token`'s identity, as LiveKit
    /// admits one on any token that may publish (`/rtc?publish=<name>`):
    /// identity `<identity>#<name>`, subscribing nothing.
    pub async fn connect_publish_only(url: &str, token: &str, name: &str) -> Result<Participant, String> {
        Participant::connect_as(url, token, Some(name)).await
    }

    async fn connect_as(url: &str, token: &str, publish_only: Option<&str>) -> Result<Participant, String> {
        let script = format!("{}/tests/clients/participant.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python with LiveKit's SDK (scripts/test installs it into target/tools/venv)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        // The last lines the client wrote to stderr (an SDK traceback, say),
        // kept for the "exited" event, so a client that dies says why.
        let stderr = child.stderr.take().unwrap();
        let stderr_tail = tokio::spawn(async move {
            let mut tail = std::collections::VecDeque::new();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail).join("\n")
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (sink, notify) = (events.clone(), arrived.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(event);
                    notify.notify_waiters();
                }
            }
            let stderr = tokio::time::timeout(Duration::from_secs(2), stderr_tail)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            sink.lock()
                .unwrap()
                .push(json!({"event": "exited", "stderr": stderr}));
            notify.notify_waiters();
        });
        let mut participant = Participant {
            identity: String::new(),
            child,
            stdin,
            events,
            arrived,
        };
        participant
            .send(json!({"cmd": "connect", "url": url, "token": token, "publish_only": publish_only}))
            .await;
        let outcome = participant
            .wait_for("connected or connect_failed", |e| {
                matches!(
                    e["event"].as_str(),
                    Some("connected" | "connect_failed" | "exited")
                )
            })
            .await;
        match outcome["event"].as_str() {
            Some("connected") => {
                participant.identity = outcome["identity"].as_str().unwrap_or_default().to_owned();
                Ok(participant)
            }
            _ => Err(match outcome["error"].as_str() {
                Some(error) => error.to_owned(),
                None => format!("the client exited; its stderr: {}", outcome["stderr"]),
            }),
        }
    }

    async fn send(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("the participant process reads its commands");
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (at most [`SETTLE`]) for an event matching `wanted` and returns it.
    pub async fn wait_for(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        self.try_wait_for(wanted, SETTLE).await.unwrap_or_else(|| {
            panic!(
                "{}: no {what} within {SETTLE:?}; events: {:?}",
                self.identity,
                self.events()
            )
        })
    }

    /// An event matching `wanted` within `limit`, if one comes.
    pub async fn try_wait_for(&self, wanted: impl Fn(&Value) -> bool, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            if let Some(event) = self.events.lock().unwrap().iter().find(|e| wanted(e)) {
                return Some(event.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Publishes a synthetic camera (test pattern) and microphone (tone).
    pub async fn publish_tracks(&mut self) -> Result<(), String> {
        self.command(json!({"cmd": "publish_tracks"}), "published", "publish_failed")
            .await
    }

    pub async fn publish_data(&mut self, topic: &str, payload: &str) -> Result<(), String> {
        self.command(
            json!({"cmd": "publish_data", "topic": topic, "payload": payload}),
            "data_sent",
            "data_failed",
        )
        .await
    }

    /// Asks the server to set this participant's own attributes, as a client
    /// may try whatever its token says; the server's view says what it did.
    pub async fn set_own_attributes(&mut self, attributes: Value) -> Result<(), String> {
        self.command(
            json!({"cmd": "set_attributes", "attributes": attributes}),
            "attributes_sent",
            "attributes_failed",
        )
        .await
    }

    /// Sends `command` and waits for its answer, `ok` or `failed` (with the
    /// SDK's error). Publishing a track the server refuses times out in the
    /// SDK after about 10 s, so this waits up to twice [`SETTLE`].
    async fn command(&mut self, command: Value, ok: &str, failed: &str) -> Result<(), String> {
        let seen = self.events().len();
        self.send(command).await;
        let deadline = tokio::time::Instant::now() + SETTLE * 2;
        loop {
            let notified = self.arrived.notified();
            let answer = self.events()[seen..]
                .iter()
                .find(|e| e["event"] == ok || e["event"] == failed || e["event"] == "exited")
                .cloned();
            if let Some(answer) = answer {
                return if answer["event"] == ok {
                    Ok(())
                } else {
                    Err(answer["error"].as_str().unwrap_or("the client exited").to_owned())
                };
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{}: no {ok} or {failed}; events: {:?}",
                    self.identity,
                    self.events()
                );
            }
        }
    }

    /// The attributes of every other participant, as this client knows them now.
    pub async fn remote_attributes(&mut self) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(json!({"cmd": "participants", "id": id})).await;
        let answer = self
            .wait_for("the participant list", |e| {
                e["event"] == "participants" && e["id"] == id
            })
            .await;
        answer["attributes"].clone()
    }

    /// Leaves the room cleanly.
    pub async fn leave(&mut self) {
        self.send(json!({"cmd": "disconnect"})).await;
        self.wait_for("left", |e| e["event"] == "left" || e["event"] == "exited")
            .await;
    }

    /// Kills the process: a phone that lost its network, no clean leave.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the server disconnected this participant (kicked, banned,
    /// room closed), and why.
    pub async fn wait_disconnected(&self) -> String {
        let event = self
            .wait_for("disconnected", |e| e["event"] == "disconnected")
            .await;
        event["reason"].as_str().unwrap_or_default().to_owned()
    }

    /// The data packets received on `topic` so far.
    pub fn data_on(&self, topic: &str) -> Vec<Packet> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "data_received" && e["topic"] == topic)
            .map(|e| Packet {
                payload: serde_json::from_str(e["payload"].as_str().unwrap_or_default())
                    .unwrap_or_else(|_| e["payload"].clone()),
                sender: e["participant"].as_str().map(str::to_owned),
                reliable: e["reliable"].as_bool().unwrap_or_default(),
            })
            .collect()
    }

    /// Waits (at most [`SETTLE`]) until `count` packets arrived on `topic`.
    pub async fn wait_for_data(&self, topic: &str, count: usize) -> Vec<Packet> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let notified = self.arrived.notified();
            let packets = self.data_on(topic);
            if packets.len() >= count {
                return packets;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} of {count} packets on {topic} within {SETTLE:?}: {packets:?}",
                self.identity,
                packets.len()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

/// A data packet as a participant received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub payload: Value,
    /// The sending participant as the SDK reports it: `None` for the server
    /// (`SendData`), and also for a participant the client has not learned of
    /// yet (a packet can overtake the participant's join).
    pub sender: Option<String>,
    pub reliable: bool,
}
