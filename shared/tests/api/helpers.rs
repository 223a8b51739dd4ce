//! The test harness: `TestApp::spawn()` gives each test its own database, its own
//! LiveKit server (the real one; the stand-in on request) and JWKS endpoint, a
//! webhook endpoint LiveKit calls, and the `AppState` the functions use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use crate::livekit_server::{LiveKitServer, Mode as LiveKitMode, Participant, SETTLE};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lambda_http::{Body, Request};
use livekit_api::access_token::{Claims as LiveKitClaims, TokenVerifier};
pub use livekit_stub::LiveKitStub;
use serde_json::{Value, json};
use shared::AppState;
use shared::config::Config;
use tokio::net::TcpListener;
use uuid::Uuid;

pub const LIVEKIT_API_KEY: &str = "test-api-key";
pub const LIVEKIT_API_SECRET: &str = "test-api-secret-that-is-long-enough-for-hs256";
/// The same secret `scripts/dev` uses, so the committed `events/` files verify.
pub const SUPABASE_JWT_SECRET: &str = "local-dev-supabase-jwt-secret-at-least-32-chars";

/// A loopback port that is bound but not listening: connections to it are
/// refused, like a server that is down, and no other process can take it
/// meanwhile (the socket does not set `SO_REUSEADDR`), which a port merely
/// seen free could not promise. `listen` brings the "server" up on it.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    port: u16,
}

impl ClosedPort {
    pub fn bind() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind an ephemeral port");
        let port = socket.local_addr().expect("a bound socket has an address").port();
        ClosedPort { socket, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn listen(self) -> tokio::net::TcpListener {
        self.socket.listen(128).expect("listen on the reserved port")
    }
}

/// A Secrets Manager client for the `moto_server` that `scripts/test` starts.
pub fn moto_client() -> aws_sdk_secretsmanager::Client {
    use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
    let endpoint = std::env::var("TEST_MOTO_ENDPOINT")
        .expect("TEST_MOTO_ENDPOINT is not set: run the tests with scripts/test, which starts moto_server");
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(shared::secrets::https_client())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// Creates a secret holding `value` under a fresh name and returns the name.
pub async fn create_secret(client: &aws_sdk_secretsmanager::Client, value: &str) -> String {
    let name = format!("live-backend/test/{}", Uuid::new_v4());
    client
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .expect("moto creates the secret");
    name
}

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts Postgres")
}

/// Creates an empty database and returns its URL.
pub async fn create_database() -> String {
    let admin_url = admin_database_url();
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(connection);
    let name = format!("test_{}", Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

/// A plain connection for checking what the code under test stored.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// A live stream of `streamer` named `room`, made directly in the database:
/// for tests where only a later request is to meet a short deadline, which
/// a start (a LiveKit call and a few round trips) could meet too on a busy
/// machine. It has no LiveKit room.
pub async fn insert_live_stream(db: &tokio_postgres::Client, room: &str, streamer: Uuid) {
    db.execute(
        "INSERT INTO live_streams (id, streamer_id, title) VALUES ($1, $2, 'Made directly')",
        &[&room, &streamer],
    )
    .await
    .unwrap();
}

/// The first column of every row `sql` returns, as text.
pub async fn first_column(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    let rows = client.query(sql, params).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// Waits (at most 3 s) until no statement of the functions runs in this
/// database: the cancel of an abandoned one travels on a connection of its
/// own. Fails naming the statements still running.
pub async fn wait_until_no_api_statement_runs(admin: &tokio_postgres::Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let running = api_statements_running(admin).await;
        if running.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned statement still runs on the server: {running:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The statements the functions' role is running in this database now (pid,
/// wait, age and text of each).
pub async fn api_statements_running(admin: &tokio_postgres::Client) -> Vec<String> {
    admin
        .query(
            "SELECT pid::text || ' ' || coalesce(wait_event_type, '-') || ' ' || now() - query_start || ' ' || query
             FROM pg_stat_activity WHERE usename = $1 AND state = 'active' AND datname = current_database()",
            &[&API_ROLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The role the functions connect as (migration 0006): no superuser, owns
/// nothing, exactly the privileges the handlers use.
pub const API_ROLE: &str = "live_api";

/// The same database as `admin_url` (the test cluster's superuser), reached
/// as the functions' role. Trust authentication: no password on loopback.
pub fn as_api_role(admin_url: &str) -> String {
    let replaced = admin_url.replacen("://postgres@", &format!("://{API_ROLE}@"), 1);
    assert_ne!(replaced, admin_url, "the admin URL connects as postgres");
    replaced
}

/// Prepares an empty database the way a Supabase project is prepared: the
/// API roles `anon` and `authenticated` and the `service_role` (which
/// bypasses RLS), usage of `public` for those three alone (PUBLIC's is
/// revoked), default privileges that grant everything the migrating role
/// creates in `public` to all three (as Supabase does for `postgres`), and
/// an empty `supabase_realtime` publication.
pub async fn prepare_like_supabase(url: &str) {
    prepare_like_supabase_with_publication(url, "CREATE PUBLICATION supabase_realtime").await;
}

/// [`prepare_like_supabase`] with `publication`, the statement that creates
/// `supabase_realtime` (the dashboard can make it publish every table).
pub async fn prepare_like_supabase_with_publication(url: &str, publication: &str) {
    connect(url)
        .await
        .batch_execute(&format!(
            "{}{}{}
             REVOKE USAGE ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
             {publication};",
            create_role_once("anon", ""),
            create_role_once("authenticated", ""),
            create_role_once("service_role", "BYPASSRLS"),
        ))
        .await
        .expect("prepare the database like Supabase's");
}

/// SQL creating the cluster role `name` (NOLOGIN NOINHERIT, and
/// `attributes`) unless it exists. Roles belong to the cluster; concurrent
/// tests race to create them, and losing that race is fine.
pub fn create_role_once(name: &str, attributes: &str) -> String {
    format!(
        "DO $$
         BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                 BEGIN
                     CREATE ROLE {name} NOLOGIN NOINHERIT {attributes};
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN
                     NULL;
                 END;
             END IF;
         END
         $$;"
    )
}

/// A fresh database prepared like Supabase's, with every migration applied.
/// Returns the superuser URL; the functions use [`as_api_role`] of it.
pub async fn migrated_database() -> String {
    let url = create_database().await;
    prepare_like_supabase(&url).await;
    shared::store::migrate::migrate_url(&url)
        .await
        .expect("migrations apply");
    url
}

pub struct TestApp {
    /// Shared with the app's webhook endpoint, which LiveKit's server calls.
    pub state: Arc<AppState>,
    /// The superuser's URL, for checking what the code under test stored (or
    /// the URL a test passed in [`AppOptions::database_url`]).
    pub database_url: String,
    /// The URL the functions' state connects with.
    pub api_database_url: String,
    livekit: LiveKitUnderTest,
    pub jwks: JwksServer,
    pub supabase_url: Option<String>,
    /// Every webhook LiveKit's server delivered to this app: `(event, outcome)`,
    /// the outcome [`LOST`] for one thrown away.
    webhooks: Arc<Mutex<Vec<(String, String)>>>,
    /// While set, LiveKit's webhooks are answered 200 and thrown away: lost.
    losing_webhooks: Arc<std::sync::atomic::AtomicBool>,
}

/// What the app's `LIVEKIT_URL` points at.
pub enum LiveKitUnderTest {
    /// LiveKit's real server (the default), behind a fault-injecting proxy.
    Real(LiveKitServer),
    /// The RoomService stand-in, for what only it can do: hold one call at an
    /// exact point of a test, or list participants the real server would not
    /// (a stale listing). See `shared/livekit-stub`.
    Stub(LiveKitStub),
}

/// Which LiveKit a test app talks to.
#[derive(Default)]
pub enum LiveKitChoice {
    #[default]
    Real,
    /// The same server as another app: two containers of one deployment.
    SharedWith(LiveKitServer),
    Stub,
}

pub struct AppOptions {
    /// Also trust asymmetric tokens through the JWKS endpoint, and require `iss`.
    pub supabase_url: bool,
    /// The URL the functions connect with, used as given. Without it, a fresh
    /// Supabase-like database reached as [`API_ROLE`].
    pub database_url: Option<String>,
    pub livekit_url: Option<String>,
    pub livekit: LiveKitChoice,
    pub database_ca_cert: Option<String>,
    /// More settings by name, e.g. `("RECONCILE_GRACE_SECONDS", "300")`.
    pub settings: Vec<(&'static str, String)>,
    /// A Secrets Manager secret whose settings win over the ones above, as
    /// with `APP_SECRET_ID` in production.
    pub secret: Option<shared::secrets::SecretSource>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            supabase_url: true,
            database_url: None,
            livekit_url: None,
            livekit: LiveKitChoice::Real,
            database_ca_cert: None,
            settings: Vec::new(),
            secret: None,
        }
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(AppOptions::default()).await
    }

    /// The default app with these settings on top.
    pub async fn spawn_with_settings(settings: Vec<(&'static str, String)>) -> TestApp {
        TestApp::spawn_with(AppOptions {
            settings,
            ..AppOptions::default()
        })
        .await
    }

    pub async fn spawn_with(options: AppOptions) -> TestApp {
        let (database_url, api_database_url) = match options.database_url {
            Some(url) => (url.clone(), url),
            None => {
                let admin = migrated_database().await;
                let api = as_api_role(&admin);
                (admin, api)
            }
        };
        let setting = |name: &str, default: &str| {
            options
                .settings
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(default.to_owned(), |(_, v)| v.clone())
        };
        let (api_key, api_secret) = (
            setting("LIVEKIT_API_KEY", LIVEKIT_API_KEY),
            setting("LIVEKIT_API_SECRET", LIVEKIT_API_SECRET),
        );
        // LiveKit's webhooks come here; the state behind it is set below.
        let webhook_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook_url = format!("http://{}/live/webhook", webhook_listener.local_addr().unwrap());
        let livekit = match options.livekit {
            LiveKitChoice::Real => {
                LiveKitUnderTest::Real(LiveKitServer::start(&api_key, &api_secret, &webhook_url, 20).await)
            }
            LiveKitChoice::SharedWith(server) => LiveKitUnderTest::Real(server),
            LiveKitChoice::Stub => LiveKitUnderTest::Stub(
                LiveKitStub::start("127.0.0.1:0".parse().unwrap(), &api_key, &api_secret)
                    .await
                    .expect("LiveKit stub starts"),
            ),
        };
        let livekit_ws_url = match &livekit {
            LiveKitUnderTest::Real(server) => server.ws_url(),
            LiveKitUnderTest::Stub(stub) => stub.ws_url(),
        };
        let jwks = JwksServer::start().await;
        let supabase_url = options.supabase_url.then(|| jwks.base_url());
        let mut settings: HashMap<&str, String> = HashMap::from([
            ("DATABASE_URL", api_database_url.clone()),
            ("LIVEKIT_URL", options.livekit_url.unwrap_or(livekit_ws_url)),
            ("LIVEKIT_API_KEY", LIVEKIT_API_KEY.into()),
            ("LIVEKIT_API_SECRET", LIVEKIT_API_SECRET.into()),
            ("SUPABASE_JWT_SECRET", SUPABASE_JWT_SECRET.into()),
        ]);
        if let Some(url) = &supabase_url {
            settings.insert("SUPABASE_URL", url.clone());
        }
        if let Some(pem) = options.database_ca_cert {
            settings.insert("DATABASE_CA_CERT", pem);
        }
        settings.extend(options.settings);
        let lookup = |name: &str| settings.get(name).cloned();
        let config = match options.secret {
            Some(source) => Config::from_secret_source(source, lookup).await,
            None => Config::from_lookup(lookup),
        }
        .expect("test config is valid");
        let state = Arc::new(AppState::new(&config).expect("state builds"));
        let webhooks = Arc::new(Mutex::new(Vec::new()));
        let losing_webhooks = Arc::new(std::sync::atomic::AtomicBool::new(false));
        serve_webhooks(
            webhook_listener,
            state.clone(),
            webhooks.clone(),
            losing_webhooks.clone(),
        );
        TestApp {
            state,
            database_url,
            api_database_url,
            livekit,
            jwks,
            supabase_url,
            webhooks,
            losing_webhooks,
        }
    }

    /// From now on LiveKit's webhooks are lost (acknowledged, never applied),
    /// or, with `false`, delivered again.
    pub fn lose_webhooks(&self, lose: bool) {
        self.losing_webhooks
            .store(lose, std::sync::atomic::Ordering::SeqCst);
    }

    /// The real LiveKit server of this app.
    pub fn livekit(&self) -> &LiveKitServer {
        match &self.livekit {
            LiveKitUnderTest::Real(server) => server,
            LiveKitUnderTest::Stub(_) => panic!("this app runs the RoomService stand-in: use app.stub()"),
        }
    }

    /// The RoomService stand-in of an app spawned with [`LiveKitChoice::Stub`].
    pub fn stub(&self) -> &LiveKitStub {
        match &self.livekit {
            LiveKitUnderTest::Stub(stub) => stub,
            LiveKitUnderTest::Real(_) => panic!("this app runs LiveKit's real server: use app.livekit()"),
        }
    }

    /// Makes LiveKit stop, drop connections, hang, or work again (the real
    /// server, behind the proxy that is the app's `LIVEKIT_URL`).
    pub async fn set_livekit_mode(&self, mode: LiveKitMode) {
        self.livekit().set_mode(mode).await;
    }

    pub async fn has_room(&self, room: &str) -> bool {
        match &self.livekit {
            LiveKitUnderTest::Real(server) => server.has_room(room).await,
            LiveKitUnderTest::Stub(stub) => stub.has_room(room),
        }
    }

    /// The URL clients connect to, as the API hands it out.
    pub fn livekit_url(&self) -> String {
        self.state.livekit.client_url().to_owned()
    }

    /// The webhooks LiveKit's server delivered so far: `(event, outcome)`.
    pub fn delivered_webhooks(&self) -> Vec<(String, String)> {
        self.webhooks.lock().unwrap().clone()
    }

    /// Waits (at most [`SETTLE`]) until LiveKit delivered a webhook `event`
    /// that applied (or was ignored, or a duplicate), `count` times in all.
    pub async fn wait_for_webhooks(&self, event: &str, count: usize) {
        self.wait_for_webhooks_within(event, count, SETTLE).await;
    }

    /// [`Self::wait_for_webhooks`] with a bound of its own, for events LiveKit
    /// sends late by design (a vanished client is reported after its ICE
    /// timeouts).
    pub async fn wait_for_webhooks_within(&self, event: &str, count: usize, bound: std::time::Duration) {
        self.wait_for_delivered(event, count, bound, false).await;
    }

    /// Waits (at most [`SETTLE`]) until LiveKit sent a webhook `event` that
    /// was lost ([`Self::lose_webhooks`]), `count` times in all: the loss a
    /// repair test starts from has happened.
    pub async fn wait_for_lost_webhooks(&self, event: &str, count: usize) {
        self.wait_for_delivered(event, count, SETTLE, true).await;
    }

    async fn wait_for_delivered(&self, event: &str, count: usize, bound: std::time::Duration, lost: bool) {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let seen = self
                .delivered_webhooks()
                .iter()
                .filter(|(e, outcome)| e == event && (outcome == LOST) == lost)
                .count();
            if seen >= count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{count} {event} webhooks not {} within {bound:?}: {:?}",
                if lost { "lost" } else { "delivered" },
                self.delivered_webhooks()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Polls `viewer_count` until it is `expected`, for at most [`SETTLE`].
    pub async fn wait_for_viewer_count(&self, room: &str, expected: i32) {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let count = self.viewer_count(room).await;
            if count == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "viewer count of {room} is {count}, not {expected}, after {SETTLE:?}; webhooks: {:?}",
                self.delivered_webhooks()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// A real participant joining with `token`. Participants connect to the
    /// server itself, not through the proxy that fakes outages of LiveKit for
    /// the functions, so an outage of RoomService leaves them connected (as
    /// the media path of a real deployment is not the API's).
    pub async fn join(&self, token: &str) -> Result<Participant, String> {
        Participant::connect(&self.livekit().direct_ws_url().await, token).await
    }

    /// `user` asks `/live/token` for `room` and joins it for real.
    pub async fn join_as(&self, user: Uuid, room: &str) -> Participant {
        let response = self.request_token(&self.token_for(user), room).await;
        assert_eq!(response.status, 200, "{}", response.body);
        self.join(response.body["token"].as_str().unwrap())
            .await
            .unwrap_or_else(|error| panic!("{user} could not join {room}: {error}"))
    }

    /// A new viewer who joins `room` for real.
    pub async fn viewer_in(&self, room: &str) -> (Uuid, Participant) {
        let viewer = Uuid::new_v4();
        (viewer, self.join_as(viewer, room).await)
    }

    /// A valid HS256 access token for `user`, as Supabase issues it.
    pub fn token_for(&self, user: Uuid) -> String {
        hs256(&self.claims_for(user))
    }

    /// A valid access token of a Supabase anonymous sign-in (`is_anonymous`).
    pub fn anonymous_token_for(&self, user: Uuid) -> String {
        let mut claims = self.claims_for(user);
        claims["is_anonymous"] = json!(true);
        claims.as_object_mut().map(|c| c.remove("email"));
        hs256(&claims)
    }

    pub fn claims_for(&self, user: Uuid) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "sub": user.to_string(),
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": now + 3600,
            "email": "someone@example.com",
            "session_id": Uuid::new_v4().to_string(),
        });
        if let Some(url) = &self.supabase_url {
            claims["iss"] = json!(format!("{url}/auth/v1"));
        }
        claims
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.database_url).await
    }

    /// The one value (first column of the one row) `sql` reads from the test database.
    pub async fn db_value<T>(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> T
    where
        T: for<'r> tokio_postgres::types::FromSql<'r>,
    {
        self.db()
            .await
            .query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Sends `body` to an endpoint through the HTTP adapter, as API Gateway would.
    pub async fn call<Req, Resp, H>(&self, handler: H, bearer: Option<&str>, body: &str) -> TestResponse
    where
        Req: shared::http::FromRequest,
        Resp: serde::Serialize,
        H: for<'a> shared::http::Handler<'a, Req, Resp>,
    {
        self.send(handler, post_request(bearer, body)).await
    }

    pub async fn send<Req, Resp, H>(&self, handler: H, request: Request) -> TestResponse
    where
        Req: shared::http::FromRequest,
        Resp: serde::Serialize,
        H: for<'a> shared::http::Handler<'a, Req, Resp>,
    {
        TestResponse::from(shared::http::handle(&self.state, request, &handler).await)
    }

    /// Asks `/live/token` for a viewer token to `room` with `bearer`.
    pub async fn request_token(&self, bearer: &str, room: &str) -> TestResponse {
        let body = json!({"roomName": room, "participantName": "Ade"}).to_string();
        self.call(shared::handlers::issue_token, Some(bearer), &body)
            .await
    }

    /// `host` invites `guest` onto `room`'s stage and `guest` accepts.
    pub async fn take_stage(&self, host: Uuid, room: &str, guest: Uuid) {
        let invite = json!({"roomName": room, "userId": guest}).to_string();
        let invited = self
            .call(
                shared::handlers::invite_to_stage,
                Some(&self.token_for(host)),
                &invite,
            )
            .await;
        assert_eq!(invited.status, 200, "{}", invited.body);
        let accept = json!({"roomName": room}).to_string();
        let accepted = self
            .call(
                shared::handlers::accept_stage,
                Some(&self.token_for(guest)),
                &accept,
            )
            .await;
        assert_eq!(accepted.status, 200, "{}", accepted.body);
    }

    /// `streamer` ends their stream in `room` through `/live/end`.
    pub async fn end_stream(&self, streamer: Uuid, room: &str) -> TestResponse {
        self.call(
            shared::handlers::end_stream,
            Some(&self.token_for(streamer)),
            &json!({"roomName": room}).to_string(),
        )
        .await
    }

    /// Whether `guest` is on `room`'s stage, and whether marked away (their
    /// connection lost, their time to return running).
    pub async fn on_stage_and_away(&self, room: &str, guest: Uuid) -> (bool, bool) {
        let row = self
            .db()
            .await
            .query_one(
                "SELECT on_stage_since IS NOT NULL, away_since IS NOT NULL FROM live_stage
                 WHERE room_name = $1 AND user_id = $2",
                &[&room, &guest],
            )
            .await
            .unwrap();
        (row.get::<_, bool>(0), row.get::<_, bool>(1))
    }

    /// Starts a live stream for `user` in `room` and returns the response body.
    pub async fn start_stream(&self, user: Uuid, room: &str) -> Value {
        let response = self
            .call(
                shared::handlers::start_stream,
                Some(&self.token_for(user)),
                &json!({"title": "A stream", "roomName": room}).to_string(),
            )
            .await;
        assert_eq!(response.status, 201, "{}", response.body);
        assert!(self.has_room(room).await, "start created the LiveKit room");
        response.body
    }

    pub async fn stream_row(&self, room: &str) -> Option<tokio_postgres::Row> {
        self.db()
            .await
            .query_opt("SELECT * FROM live_streams WHERE id = $1", &[&room])
            .await
            .expect("query live_streams")
    }
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: lambda_http::http::HeaderMap,
    pub body: Value,
}

impl From<lambda_http::Response<Body>> for TestResponse {
    fn from(response: lambda_http::Response<Body>) -> Self {
        let (parts, body) = response.into_parts();
        let bytes: &[u8] = body.as_ref();
        assert_eq!(
            parts.headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "every response is JSON"
        );
        let body: Value = serde_json::from_slice(bytes).expect("response body is JSON");
        TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

impl TestResponse {
    /// Asserts the documented error shape and returns the code.
    pub fn error_code(&self) -> &str {
        let error = self
            .body
            .get("error")
            .unwrap_or_else(|| panic!("not an error body: {}", self.body));
        let message = error["message"].as_str().expect("error.message is a string");
        assert!(!message.is_empty());
        let code = error["code"].as_str().expect("error.code is a string");
        // `already_live` also names the stream the caller is live in.
        let fields = if code == "already_live" { 3 } else { 2 };
        assert_eq!(
            error.as_object().unwrap().len(),
            fields,
            "error has exactly code and message (and roomName for already_live): {error}"
        );
        code
    }

    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.error_code()), (status, code), "{}", self.body);
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn hs256(claims: &Value) -> String {
    hs256_with_secret(claims, SUPABASE_JWT_SECRET.as_bytes())
}

pub fn hs256_with_secret(claims: &Value, secret: &[u8]) -> String {
    shared::jwt_crypto::install();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Signs with one of the fixture keys (`es256-a`, `es256-b`, `rs256`), `kid` = key name.
pub fn asymmetric(key: &str, claims: &Value) -> String {
    asymmetric_with_header(key, claims, |_| {})
}

/// [`asymmetric`], its header changed by `edit` before signing: a token
/// whose signature is good, so only what the header says can refuse it.
pub fn asymmetric_with_header(key: &str, claims: &Value, edit: impl FnOnce(&mut Header)) -> String {
    shared::jwt_crypto::install();
    let pem = fixture(&format!("{key}.pem"));
    let (alg, encoding_key) = if key.starts_with("es256") {
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
    } else {
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
    };
    let mut header = Header::new(alg);
    header.kid = Some(key.to_owned());
    edit(&mut header);
    jsonwebtoken::encode(&header, claims, &encoding_key).unwrap()
}

pub fn public_jwk(key: &str) -> Value {
    serde_json::from_str(&fixture(&format!("{key}.jwk.json"))).unwrap()
}

pub fn public_pem(key: &str) -> String {
    fixture(&format!("{key}.pub.pem"))
}

/// Builds a JWT from raw header and claims JSON with an arbitrary signature, for
/// tokens no honest library would produce.
pub fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        b64.encode(signature)
    )
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A JWKS endpoint on loopback at `/auth/v1/.well-known/jwks.json`.
pub struct JwksServer {
    addr: SocketAddr,
    shared: Arc<Mutex<JwksState>>,
}

struct JwksState {
    keys: Value,
    fetches: usize,
    failing: bool,
    hanging: bool,
}

impl JwksServer {
    pub async fn start() -> JwksServer {
        let shared = Arc::new(Mutex::new(JwksState {
            keys: json!({"keys": [public_jwk("es256-a"), public_jwk("rs256")]}),
            fetches: 0,
            failing: false,
            hanging: false,
        }));
        let router = Router::new()
            .route(
                "/auth/v1/.well-known/jwks.json",
                get(|State(shared): State<Arc<Mutex<JwksState>>>| async move {
                    let (hanging, answer) = {
                        let mut state = shared.lock().unwrap();
                        state.fetches += 1;
                        let answer = if state.failing {
                            StatusCode::SERVICE_UNAVAILABLE.into_response()
                        } else {
                            Json(state.keys.clone()).into_response()
                        };
                        (state.hanging, answer)
                    };
                    if hanging {
                        std::future::pending::<()>().await;
                    }
                    answer
                }),
            )
            .with_state(shared.clone());
        JwksServer {
            addr: serve(router).await,
            shared,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn fetches(&self) -> usize {
        self.shared.lock().unwrap().fetches
    }

    pub fn set_keys(&self, keys: Value) {
        self.shared.lock().unwrap().keys = keys;
    }

    pub fn set_failing(&self, failing: bool) {
        self.shared.lock().unwrap().failing = failing;
    }

    /// Requests are taken and never answered: Supabase Auth hangs.
    pub fn set_hanging(&self, hanging: bool) {
        self.shared.lock().unwrap().hanging = hanging;
    }
}

/// Verifies a LiveKit token with the Rust SDK's verifier and returns its claims.
pub fn verify_livekit_token(token: &str) -> LiveKitClaims {
    TokenVerifier::with_api_key(LIVEKIT_API_KEY, LIVEKIT_API_SECRET)
        .verify(token)
        .expect("LiveKit token verifies")
}

async fn run_node_verifier(token: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let script = format!(
        "{}/tests/node/verify-livekit-token.mjs",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .args([LIVEKIT_API_KEY, LIVEKIT_API_SECRET])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is installed (scripts/test installs the verifier's packages)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(token.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// Verifies a token with LiveKit's npm `livekit-server-sdk` and returns its claims.
pub async fn verify_with_node_sdk(token: &str) -> Value {
    let output = run_node_verifier(token).await;
    assert!(
        output.status.success(),
        "livekit-server-sdk rejected the token: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("verifier prints the claims as JSON")
}

pub async fn node_sdk_rejects(token: &str) -> bool {
    let output = run_node_verifier(token).await;
    !output.status.success() && !output.stderr.is_empty()
}

/// A JSON `POST` as API Gateway passes it on, with `bearer` if given.
pub fn post_request(bearer: Option<&str>, body: &str) -> Request {
    post_with(
        "application/json",
        bearer.map(|token| format!("Bearer {token}")).as_deref(),
        body,
    )
}

/// A `POST` of `body` with its content type and, if given, the whole
/// `Authorization` header.
fn post_with(content_type: &str, authorization: Option<&str>, body: &str) -> Request {
    let mut request = Request::new(Body::Text(body.to_owned()));
    *request.method_mut() = lambda_http::http::Method::POST;
    request
        .headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

/// A GET request as API Gateway delivers it, with query and path parameters.
pub fn get_request(bearer: Option<&str>, query: &[(&str, &str)], path_id: Option<&str>) -> Request {
    request_with(lambda_http::http::Method::GET, bearer, query, path_id)
}

pub fn request_with(
    method: lambda_http::http::Method,
    bearer: Option<&str>,
    query: &[(&str, &str)],
    path_id: Option<&str>,
) -> Request {
    use lambda_http::RequestExt;
    let mut request = Request::new(Body::Empty);
    *request.method_mut() = method;
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    // Every value of a repeated name, as a raw query string parses.
    let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in query {
        parameters
            .entry(name.to_string())
            .or_default()
            .push(value.to_string());
    }
    let mut request = request.with_query_string_parameters(parameters);
    if let Some(id) = path_id {
        request = request.with_path_parameters(HashMap::from([("id".to_string(), id.to_string())]));
    }
    request
}

/// A participant event as LiveKit's server sends it, signed, made at
/// `made_at`, for participant `sid`/`identity`; `fields` are the rest of its
/// `participant` (name, state, permission, disconnect reason). Returns the
/// webhook's answer body, after checking it was 200.
pub async fn deliver_participant_event(
    app: &TestApp,
    event: &str,
    room: &str,
    (sid, identity): (&str, &str),
    fields: serde_json::Value,
    made_at: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let mut participant = json!({"sid": sid, "identity": identity});
    if let (Some(all), serde_json::Value::Object(rest)) = (participant.as_object_mut(), fields) {
        all.extend(rest);
    }
    let body = json!({
        "id": format!("EV_{}", Uuid::new_v4().simple()),
        "event": event,
        "room": {"name": room},
        "participant": participant,
        "createdAt": made_at.timestamp().to_string(),
    })
    .to_string();
    let response = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.body
}

/// A webhook signed the way LiveKit signs it: a JWT from our API key and
/// secret whose `sha256` claim is the base64 SHA-256 of the exact body.
pub fn signed_webhook(body: &str, api_secret: &str) -> Request {
    use base64::Engine;
    use sha2::Digest;
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body.as_bytes()));
    let token = livekit_api::access_token::AccessToken::with_api_key(LIVEKIT_API_KEY, api_secret)
        .with_sha256(&digest)
        .to_jwt()
        .unwrap();
    webhook_request(body, Some(&token))
}

/// A webhook as LiveKit posts it: `authorization` is its signed JWT, sent bare.
pub fn webhook_request(body: &str, authorization: Option<&str>) -> Request {
    post_with("application/webhook+json", authorization, body)
}

/// A LiveKit webhook event body.
pub fn webhook_event(id: &str, event: &str, room: &str, participant: Option<(&str, &str, bool)>) -> String {
    let mut body = json!({
        "id": id,
        "event": event,
        // No sid: LiveKit always sends one, but the tests' own events stand
        // for whichever instance the stream's room is.
        "room": {"name": room},
        "createdAt": chrono::Utc::now().timestamp().to_string(),
    });
    if let Some((identity, sid, hidden)) = participant {
        body["participant"] = json!({
            "sid": sid, "identity": identity, "state": "ACTIVE",
            "permission": {"canSubscribe": true, "canPublishData": true, "hidden": hidden},
        });
    }
    body.to_string()
}

impl TestApp {
    pub async fn deliver(&self, request: Request) -> TestResponse {
        use shared::http::Endpoint;
        TestResponse::from(
            shared::handlers::LiveKitWebhook
                .respond(&self.state, request)
                .await,
        )
    }

    /// A connection of the test's own holding the stream's row lock (`FOR
    /// UPDATE`) in an open transaction, until `ROLLBACK` (or `COMMIT`) on it.
    pub async fn hold_stream_row(&self, room: &str) -> tokio_postgres::Client {
        let holder = self.db().await;
        holder.batch_execute("BEGIN").await.unwrap();
        holder
            .execute("SELECT 1 FROM live_streams WHERE id = $1 FOR UPDATE", &[&room])
            .await
            .unwrap();
        holder
    }

    /// Returns once a statement of this database waits for a lock (true), or
    /// once `done` is set (the statement under test did not wait), or after
    /// [`SETTLE`] (false): a test holding a lock then lets go knowing whether
    /// the other side queued behind it.
    pub async fn until_a_statement_waits_for_a_lock(&self, done: &std::sync::atomic::AtomicBool) -> bool {
        let observer = self.db().await;
        let settle = std::time::Instant::now() + SETTLE;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < settle {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    /// The room's exact count (its shards summed), as the API reports it.
    pub async fn viewer_count(&self, room: &str) -> i32 {
        assert!(self.stream_row(room).await.is_some(), "stream {room} exists");
        self.db()
            .await
            .query_one("SELECT live_viewer_count($1)", &[&room])
            .await
            .expect("count the room")
            .get(0)
    }

    /// `live_streams.viewer_count`: the copy Realtime subscribers see,
    /// written at most once a second.
    pub async fn realtime_viewer_count(&self, room: &str) -> i32 {
        self.stream_row(room)
            .await
            .expect("stream exists")
            .get("viewer_count")
    }
}

/// A room's chat count as the batches' row holds it, and whether every
/// message is settled there (nothing left to count at read time); `None`
/// without the row.
pub async fn chat_settled(client: &tokio_postgres::Client, room: &str) -> Option<(i64, bool)> {
    client
        .query_opt(
            "SELECT b.messages_sent, b.sent_up_to = (SELECT max(seq) FROM live_messages m WHERE m.room_name = b.room_name)
             FROM live_chat_broadcasts b WHERE b.room_name = $1",
            &[&room],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

/// The outcome recorded for a webhook the app threw away while losing them.
pub const LOST: &str = "lost";

/// The app's `POST /live/webhook` over HTTP, for LiveKit's server: each call
/// goes through the real endpoint (signature, body, database) as API Gateway
/// would deliver it.
fn serve_webhooks(
    listener: TcpListener,
    state: Arc<AppState>,
    delivered: Arc<Mutex<Vec<(String, String)>>>,
    losing: Arc<std::sync::atomic::AtomicBool>,
) {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let router = Router::new().route(
        "/live/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (state, delivered, losing) = (state.clone(), delivered.clone(), losing.clone());
            async move {
                use shared::http::Endpoint;
                let event = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if losing.load(std::sync::atomic::Ordering::SeqCst) {
                    delivered.lock().unwrap().push((event, LOST.to_owned()));
                    return (axum::http::StatusCode::OK, "{}".to_owned());
                }
                let mut request = Request::new(Body::Binary(body.to_vec()));
                *request.method_mut() = lambda_http::http::Method::POST;
                for (name, value) in &headers {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
                let response = shared::handlers::LiveKitWebhook.respond(&state, request).await;
                let status = response.status();
                let answer: Value = serde_json::from_slice(response.body().as_ref()).unwrap_or_default();
                let outcome = answer["outcome"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{status} {answer}"));
                delivered.lock().unwrap().push((event, outcome));
                (
                    axum::http::StatusCode::from_u16(status.as_u16()).unwrap(),
                    answer.to_string(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
}

/// A Postgres cluster of its own (`scripts/postgres-cluster`), so stopping it
/// leaves the other tests' database alone.
pub struct RestartableCluster {
    port: u16,
    dir: String,
}

impl RestartableCluster {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres-cluster")
    }

    async fn run(args: &[&str]) -> String {
        let output = tokio::process::Command::new(Self::script())
            .args(args)
            .output()
            .await
            .expect("scripts/postgres-cluster runs");
        assert!(
            output.status.success(),
            "scripts/postgres-cluster {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub async fn start() -> RestartableCluster {
        // Not created here: the script makes it, owned by the server's OS user.
        let dir = std::env::temp_dir().join(format!("live-backend-restart-{}", Uuid::new_v4().simple()));
        let printed = Self::run(&["start", &dir.to_string_lossy()]).await;
        let (port, dir) = printed.split_once(' ').expect("the script prints PORT DIR");
        RestartableCluster {
            port: port.parse().expect("a port number"),
            dir: dir.to_owned(),
        }
    }

    /// The cluster's `postgres` database, as its superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn stop(&self) {
        Self::run(&["stop", &self.dir]).await;
    }

    pub async fn resume(&self) {
        Self::run(&["resume", &self.dir]).await;
    }
}

impl Drop for RestartableCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .args(["destroy", &self.dir])
            .status();
    }
}
