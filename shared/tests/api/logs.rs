//! Logs never carry a bearer token, a LiveKit token or a secret, and 5xx bodies
//! never carry internal error text. The whole run (configuration, every
//! endpoint, webhooks good and forged, a LiveKit outage and a database outage)
//! is logged at TRACE into memory, in the JSON format Lambda is configured
//! with and in the plain one, and the text is then searched.

use std::io::Write;
use std::sync::{Arc, Mutex};

use lambda_http::http::header::AUTHORIZATION;
use serde_json::{Value, json};
use shared::AppState;
use shared::config::Config;
use shared::handlers::{
    chat_history, end_stream, issue_token, list_streams, moderate, post_message, start_stream,
};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

use crate::helpers::{
    AppOptions, ClosedPort, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, LiveKitMode, SUPABASE_JWT_SECRET, TestApp,
    TestResponse, get_request, hs256, hs256_with_secret, migrated_database, signed_webhook, webhook_event,
};

/// The database password of this run. The test cluster uses trust auth and
/// ignores it, but the code under test holds it like a real one.
const DB_PASSWORD: &str = "SeCrEtPw123";

/// Everything the subscriber writes, shared with the test.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// What `shared::logging::init` installs, at TRACE instead of INFO, with its
/// format written twice: as JSON (`AWS_LAMBDA_LOG_FORMAT=JSON`, as
/// `template.yaml` sets) and as plain text.
pub(crate) fn subscriber(captured: &Captured) -> impl tracing::Subscriber + Send + Sync {
    let (json, plain) = (captured.clone(), captured.clone());
    tracing_subscriber::registry()
        .with(shared::logging::filter(LevelFilter::TRACE))
        .with(shared::logging::format_layer(true, move || json.clone()))
        .with(shared::logging::format_layer(false, move || plain.clone()))
}

/// The settings `TestApp` builds its state from, as a Lambda would read them.
fn settings(app: &TestApp, database_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("LIVEKIT_URL", app.livekit_url()),
        ("LIVEKIT_API_KEY", LIVEKIT_API_KEY.into()),
        ("LIVEKIT_API_SECRET", LIVEKIT_API_SECRET.into()),
        ("SUPABASE_JWT_SECRET", SUPABASE_JWT_SECRET.into()),
        ("SUPABASE_URL", app.supabase_url.clone().unwrap()),
    ]
}

fn lookup(settings: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> {
    move |name| settings.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
}

/// What must never be logged, each with a name for the failure message.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let value = value.into();
        assert!(value.len() >= 8, "too short to search for: {value:?}");
        self.0.push((what.into(), value));
    }

    /// A JWT, and its signature on its own (a truncated token is a leak too).
    fn add_jwt(&mut self, what: &str, token: &str) {
        self.add(what, token);
        let signature = token.rsplit('.').next().unwrap();
        self.add(format!("{what} (signature)"), signature);
    }
}

/// Every response of the run, to check the bodies too.
#[derive(Default)]
struct Responses(Vec<(String, TestResponse)>);

impl Responses {
    fn keep(&mut self, what: &str, response: TestResponse) -> &TestResponse {
        self.0.push((what.to_owned(), response));
        &self.0.last().unwrap().1
    }
}

#[tokio::test]
async fn a_full_run_logs_no_token_or_secret_and_5xx_bodies_no_internals() {
    // `#[tokio::test]` runs on one thread, so this subscriber sees every event
    // of the run: the handlers, and the tasks of the stubs and the pool.
    // tracing-core caches each callsite's interest process-wide, and while a
    // single `Dispatch` exists it asks only the default of the thread that hits
    // the callsite first: a concurrent test thread without a subscriber would
    // switch "request refused" off for this one too (tokio-rs/tracing#3611).
    // With a second live `Dispatch` it asks every registered one.
    let _second_dispatch = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(subscriber(&captured));
    let mut secrets = Secrets::default();
    let mut responses = Responses::default();

    let plain_url = migrated_database().await;
    let database_url = plain_url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert_ne!(database_url, plain_url, "the URL carries the password");
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(database_url.clone()),
        // The run starts a second stream while the first is live.
        settings: vec![("MAX_LIVE_STREAMS_PER_STREAMER", "2".into())],
        ..AppOptions::default()
    })
    .await;
    secrets.add("the database password", DB_PASSWORD);
    secrets.add("the LiveKit API secret", LIVEKIT_API_SECRET);
    secrets.add("the Supabase JWT secret", SUPABASE_JWT_SECRET);

    // Cold start: the configuration is logged as `AppState::load` logs it.
    let settings = settings(&app, &database_url);
    let config = Config::from_lookup(lookup(&settings)).expect("valid settings");
    tracing::info!(?config, "configuration loaded");
    AppState::new(&config).expect("the state builds");
    // A cold start that fails is logged as `LazyState::get` logs it.
    for bad_url in [
        format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:notaport/db"),
        format!("postgres://postgres:{DB_PASSWORD}@[::1/db"),
        format!("host=127.0.0.1 password={DB_PASSWORD} port=x"),
        format!("host=127.0.0.1 password='{DB_PASSWORD} sslmode=require"),
        format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1/db?sslmode={DB_PASSWORD}"),
    ] {
        let mut bad = settings.clone();
        bad[0].1 = bad_url.clone();
        let error = Config::from_lookup(lookup(&bad))
            .err()
            .unwrap_or_else(|| panic!("{bad_url} is refused"));
        tracing::error!(%error, "cannot build the function's state; answering 503 until it can");
    }

    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    let host_bearer = app.token_for(host);
    let viewer_bearer = app.token_for(viewer);
    secrets.add_jwt("the host's bearer", &host_bearer);
    secrets.add_jwt("the viewer's bearer", &viewer_bearer);

    // Start, join, chat.
    let started = responses.keep(
        "start",
        app.call(
            start_stream,
            Some(&host_bearer),
            r#"{"title":"Logged","roomName":"logged-room"}"#,
        )
        .await,
    );
    assert_eq!(started.status, 201, "{}", started.body);
    secrets.add_jwt(
        "the host's LiveKit token",
        started.body["token"].as_str().unwrap(),
    );
    let host_livekit_token = started.body["token"].as_str().unwrap().to_owned();

    let joined = responses.keep(
        "token",
        app.call(
            issue_token,
            Some(&viewer_bearer),
            r#"{"roomName":"logged-room","participantName":"Viewer"}"#,
        )
        .await,
    );
    assert_eq!(joined.status, 200, "{}", joined.body);
    secrets.add_jwt(
        "the viewer's LiveKit token",
        joined.body["token"].as_str().unwrap(),
    );

    let said = responses.keep(
        "chat",
        app.call(
            post_message,
            Some(&viewer_bearer),
            r#"{"roomName":"logged-room","text":"hello"}"#,
        )
        .await,
    );
    assert_eq!(
        (said.status, &said.body["broadcast"]),
        (201, &json!(true)),
        "{}",
        said.body
    );

    // LiveKit's webhook, signed and forged.
    let event = webhook_event(
        "EV_logged_join",
        "participant_joined",
        "logged-room",
        Some((&viewer.to_string(), "PA_viewer", false)),
    );
    let signed = signed_webhook(&event, LIVEKIT_API_SECRET);
    let authorization = signed.headers()[AUTHORIZATION].to_str().unwrap().to_owned();
    secrets.add_jwt("a webhook's Authorization", &authorization);
    let delivered = responses.keep("webhook", app.deliver(signed).await);
    assert_eq!(delivered.body, json!({"outcome": "applied"}));

    let forged_event = webhook_event("EV_logged_forged", "room_finished", "logged-room", None);
    let forged = signed_webhook(&forged_event, "not-the-livekit-api-secret-at-all");
    let forged_authorization = forged.headers()[AUTHORIZATION].to_str().unwrap().to_owned();
    secrets.add_jwt("a forged webhook's Authorization", &forged_authorization);
    responses
        .keep("forged webhook", app.deliver(forged).await)
        .assert_error(401, "invalid_signature");

    // Listings, moderation.
    let listed = responses.keep(
        "streams",
        app.send(
            list_streams,
            get_request(Some(&viewer_bearer), &[("limit", "5")], None),
        )
        .await,
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    let history = responses.keep(
        "chat history",
        app.send(
            chat_history,
            get_request(Some(&viewer_bearer), &[("roomName", "logged-room")], None),
        )
        .await,
    );
    assert_eq!(history.status, 200, "{}", history.body);
    let muted = responses.keep(
        "moderate",
        app.call(
            moderate,
            Some(&host_bearer),
            &json!({"roomName": "logged-room", "userId": viewer, "action": "mute"}).to_string(),
        )
        .await,
    );
    assert_eq!(muted.status, 200, "{}", muted.body);

    // Tokens that are refused: garbage, expired, wrongly signed, the anon
    // role, and a LiveKit token passed off as a Supabase one.
    let mut expired = app.claims_for(viewer);
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let mut anon = app.claims_for(viewer);
    anon["role"] = json!("anon");
    let refused = [
        (
            "a garbage bearer",
            "not-a-jwt-but-secret-looking-0123456789".to_owned(),
        ),
        ("an expired bearer", hs256(&expired)),
        (
            "a bearer signed with another secret",
            hs256_with_secret(&app.claims_for(viewer), b"another-secret-that-is-32-bytes-long!"),
        ),
        ("an anon bearer", hs256(&anon)),
        ("a LiveKit token as a bearer", host_livekit_token.clone()),
    ];
    for (what, bearer) in refused {
        if bearer.contains('.') {
            secrets.add_jwt(what, &bearer);
        } else {
            secrets.add(what, &bearer);
        }
        responses
            .keep(
                what,
                app.call(
                    issue_token,
                    Some(&bearer),
                    r#"{"roomName":"logged-room","participantName":"x"}"#,
                )
                .await,
            )
            .assert_error(401, "unauthorized");
    }

    // End.
    let ended = responses.keep(
        "end",
        app.call(end_stream, Some(&host_bearer), r#"{"roomName":"logged-room"}"#)
            .await,
    );
    assert_eq!(
        (ended.status, &ended.body["roomClosed"]),
        (200, &json!(true)),
        "{}",
        ended.body
    );

    // LiveKit down: chat is stored but not broadcast, end cannot close the
    // room, start and moderation answer 503.
    let second = responses.keep(
        "start before the outage",
        app.call(
            start_stream,
            Some(&host_bearer),
            r#"{"title":"Outage","roomName":"outage-room"}"#,
        )
        .await,
    );
    assert_eq!(second.status, 201, "{}", second.body);
    secrets.add_jwt("the second LiveKit token", second.body["token"].as_str().unwrap());
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let unsent = responses.keep(
        "chat during the LiveKit outage",
        app.call(
            post_message,
            Some(&viewer_bearer),
            r#"{"roomName":"outage-room","text":"anyone?"}"#,
        )
        .await,
    );
    assert_eq!(
        (unsent.status, &unsent.body["broadcast"]),
        (201, &json!(false)),
        "{}",
        unsent.body
    );
    responses
        .keep(
            "moderation during the LiveKit outage",
            app.call(
                moderate,
                Some(&host_bearer),
                &json!({"roomName": "outage-room", "userId": viewer, "action": "kick"}).to_string(),
            )
            .await,
        )
        .assert_error(503, "unavailable");
    responses
        .keep(
            "start during the LiveKit outage",
            app.call(
                start_stream,
                Some(&host_bearer),
                r#"{"title":"Outage","roomName":"outage-room-2"}"#,
            )
            .await,
        )
        .assert_error(503, "unavailable");
    let unclosed = responses.keep(
        "end during the LiveKit outage",
        app.call(end_stream, Some(&host_bearer), r#"{"roomName":"outage-room"}"#)
            .await,
    );
    assert_eq!(
        (unclosed.status, &unclosed.body["roomClosed"]),
        (200, &json!(false)),
        "{}",
        unclosed.body
    );
    app.set_livekit_mode(LiveKitMode::Up).await;

    // The database down: nothing listens on its port.
    let database = plain_url.rsplit_once('/').unwrap().1;
    let database_port = ClosedPort::bind();
    let down_url = format!(
        "postgres://postgres:{DB_PASSWORD}@127.0.0.1:{}/{database}",
        database_port.port()
    );
    let down = TestApp::spawn_with(AppOptions {
        database_url: Some(down_url.clone()),
        ..AppOptions::default()
    })
    .await;
    let down_bearer = down.token_for(host);
    secrets.add_jwt("the bearer sent to the app without a database", &down_bearer);
    let down_config = Config::from_lookup(lookup(&self::settings(&down, &down_url))).unwrap();
    tracing::info!(config = ?down_config, "configuration loaded");
    responses
        .keep(
            "token without a database",
            down.call(
                issue_token,
                Some(&down_bearer),
                r#"{"roomName":"logged-room","participantName":"x"}"#,
            )
            .await,
        )
        .assert_error(503, "unavailable");
    responses
        .keep(
            "start without a database",
            down.call(start_stream, Some(&down_bearer), r#"{"title":"x"}"#)
                .await,
        )
        .assert_error(503, "unavailable");
    responses
        .keep(
            "listing without a database",
            down.send(list_streams, get_request(Some(&down_bearer), &[], None))
                .await,
        )
        .assert_error(503, "unavailable");

    drop(_guard);
    let logs = captured.text();

    // The capture works and covers the run: these lines must be there, so a
    // subscriber that saw nothing cannot pass the checks below.
    for expected in [
        "configuration loaded",
        "stream started",
        "request refused",
        "bearer token rejected",
        "webhook handled",
        "webhook signature rejected",
        "moderation applied",
        "chat stored but its batch not sent",
        "stream ended but its LiveKit room is not closed yet",
        "request failed",
        "cannot build the function's state",
        "logged-room",
        &host.to_string(),
    ] {
        assert!(logs.contains(expected), "the logs mention {expected:?}:\n{logs}");
    }
    let json_lines: Vec<Value> = logs
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        json_lines
            .iter()
            .any(|line| line["fields"]["message"] == "stream started"),
        "the JSON format is captured too"
    );

    // Nothing secret, and no JWT at all (a JWT's header always starts `eyJ`).
    for (what, secret) in &secrets.0 {
        assert!(
            !logs.contains(secret.as_str()),
            "{what} is in the logs:\n{}",
            lines_with(&logs, secret)
        );
    }
    assert!(
        !logs.contains("eyJ"),
        "a JWT is in the logs:\n{}",
        lines_with(&logs, "eyJ")
    );

    // 5xx bodies say which dependency is down, and nothing of the cause.
    let server_errors: Vec<_> = responses.0.iter().filter(|(_, r)| r.status >= 500).collect();
    assert_eq!(server_errors.len(), 5, "the outages above answered 503");
    for (what, response) in server_errors {
        let body = response.body.to_string();
        for internal in [
            "Connection refused",
            "connection refused",
            "os error",
            "error connecting",
            "error returned from database",
            "tokio",
            "postgres",
            "Postgres",
            "deadpool",
            "127.0.0.1",
            "twirp",
            "Twirp",
            "RoomService",
            "LiveKit",
            "Database",
            "unavailable:",
            "Unavailable",
            "timed out",
            DB_PASSWORD,
        ] {
            assert!(
                !body.contains(internal),
                "{what}: the body carries {internal:?}: {body}"
            );
        }
        assert!(body.len() < 300, "{what}: a short, fixed message: {body}");
    }
    // And no body of the run carries a secret either (LiveKit tokens are
    // returned on purpose, so only the other secrets are checked).
    for (what, response) in &responses.0 {
        let body = response.body.to_string();
        for secret in [DB_PASSWORD, LIVEKIT_API_SECRET, SUPABASE_JWT_SECRET] {
            assert!(!body.contains(secret), "{what}: {body}");
        }
    }
}

fn lines_with<'a>(logs: &'a str, needle: &str) -> String {
    logs.lines()
        .filter(|line| line.contains(needle))
        .take(5)
        .collect::<Vec<&'a str>>()
        .join("\n")
}

/// lambda_runtime traces every raw event it receives (headers and body, the
/// caller's bearer token among them) under its own target: at the template's
/// TRACE level, our code logs at TRACE and that line is still left out.
#[test]
fn the_raw_events_lambda_runtime_traces_stay_out_of_the_logs_at_trace() {
    let captured = Captured::default();
    tracing::subscriber::with_default(subscriber(&captured), || {
        tracing::trace!(
            target: "lambda_runtime::layers::api_response",
            body = r#"{"headers":{"authorization":"Bearer eyJraw-event-marker"}}"#,
            "raw JSON event received from Lambda"
        );
        tracing::trace!(target: "shared::handlers::token", "our own trace line");
    });
    let text = captured.text();
    assert!(!text.contains("raw-event-marker"), "{text}");
    assert!(text.contains("our own trace line"), "{text}");
}

/// tokio-postgres says only "db error" of any error Postgres sends; the log
/// of a 5xx carries Postgres's own message and SQLSTATE from its causes (a
/// release deployed before its migration, a missing grant), while the body
/// stays generic.
#[tokio::test]
async fn a_database_error_is_logged_with_postgres_own_message_and_sqlstate() {
    let app = TestApp::spawn().await;
    let client = app.state.db.get().await.unwrap();
    let failed = client
        .query("SELECT * FROM live_no_such_table", &[])
        .await
        .expect_err("the table does not exist");
    let error = shared::error::ApiError::from(failed);

    let captured = Captured::default();
    let _logging = tracing::subscriber::set_default(subscriber(&captured));
    let answer = shared::http::error_response(&error);
    assert_eq!(answer.status(), 500);
    let logged = captured.text();
    for said in ["live_no_such_table", "does not exist", "SQLSTATE 42P01"] {
        assert!(logged.contains(said), "{said} not in:\n{logged}");
    }
    let lambda_http::Body::Text(body) = answer.body() else {
        panic!("a JSON body")
    };
    assert!(!body.contains("live_no_such_table"), "{body}");
}
