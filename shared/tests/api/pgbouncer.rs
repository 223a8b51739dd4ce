//! The database suite again, through PgBouncer in `pool_mode = transaction`, the
//! way Supabase's pooler on port 6543 behaves: a server connection belongs to a
//! client only for one transaction, so a named prepared statement made in one
//! transaction is gone (or someone else's) in the next.
//!
//! `scripts/test` runs Debian's PgBouncer 1.18 as it is (no prepared-statement
//! support in transaction mode at all), `default_pool_size = 10`, in front of
//! the test cluster, and sets `TEST_PGBOUNCER_PORT`. Migrations still run on a
//! direct connection, as documented; only the app talks through the pooler.
//!
//! Everything a test checks in the database it checks on a direct connection:
//! `TestApp::db()` would use tokio-postgres's named statements, which this very
//! pooler breaks (see the negative control at the end).

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared::handlers::{
    chat_history, end_stream, get_stream, issue_token, list_streams, post_message, start_stream,
};
use uuid::Uuid;

use crate::helpers::{
    API_ROLE, AppOptions, LIVEKIT_API_SECRET, TestApp, TestResponse, connect, create_database, get_request,
    insert_live_stream, migrated_database, signed_webhook, verify_livekit_token,
    wait_until_no_api_statement_runs, webhook_event,
};

/// `default_pool_size` in scripts/lib.sh `start_pgbouncer`: server connections
/// per database, fewer than the clients of the load tests.
const PGBOUNCER_POOL_SIZE: i64 = 10;
/// Concurrent clients in the load tests.
const CLIENTS: usize = 50;
const ROUNDS: usize = 3;

/// The URL of the same database as `direct_url`, through PgBouncer.
fn via_pgbouncer(direct_url: &str) -> String {
    via_pgbouncer_with(direct_url, "127.0.0.1", "disable")
}

/// As [`via_pgbouncer`], to `host` with `sslmode` (the pooler offers TLS with
/// the test cluster's certificate, for localhost and 127.0.0.1).
fn via_pgbouncer_with(direct_url: &str, host: &str, sslmode: &str) -> String {
    let port = std::env::var("TEST_PGBOUNCER_PORT")
        .expect("TEST_PGBOUNCER_PORT is not set: run the tests with scripts/test, which starts PgBouncer");
    let (_, name) = direct_url.rsplit_once('/').expect("database URL has a path");
    format!("postgres://{API_ROLE}@{host}:{port}/{name}?sslmode={sslmode}")
}

/// One container (one Lambda execution environment, its own pool) whose
/// `DATABASE_URL` points at PgBouncer.
async fn container(direct_url: &str, pool_size: usize) -> TestApp {
    container_with(direct_url, pool_size, crate::helpers::LiveKitChoice::Real).await
}

async fn container_with(
    direct_url: &str,
    pool_size: usize,
    livekit: crate::helpers::LiveKitChoice,
) -> TestApp {
    TestApp::spawn_with(AppOptions {
        database_url: Some(via_pgbouncer(direct_url)),
        settings: vec![("DATABASE_POOL_SIZE", pool_size.to_string())],
        livekit,
        ..AppOptions::default()
    })
    .await
}

/// A migrated database (direct connection) and one container on it through PgBouncer.
async fn pooled_app() -> (TestApp, String) {
    let direct = migrated_database().await;
    let app = container(&direct, 2).await;
    (app, direct)
}

/// A prepared-statement error (SQLSTATE 26000 or 42P05) is no transient class,
/// so the app would answer it 500 `internal` with a generic message: the status
/// is the real check, the body check only guards against leaking it.
fn no_prepared_statement_trouble(response: &TestResponse) {
    assert!(response.status < 500, "{} {}", response.status, response.body);
    assert!(
        !response
            .body
            .to_string()
            .to_lowercase()
            .contains("prepared statement"),
        "{}",
        response.body
    );
}

async fn start(app: &TestApp, user: Uuid, room: &str) -> TestResponse {
    let body = json!({"title": "Through the pooler", "roomName": room}).to_string();
    let response = app.call(start_stream, Some(&app.token_for(user)), &body).await;
    no_prepared_statement_trouble(&response);
    response
}

async fn end(app: &TestApp, user: Uuid, room: &str) -> TestResponse {
    let body = json!({"roomName": room}).to_string();
    let response = app.call(end_stream, Some(&app.token_for(user)), &body).await;
    no_prepared_statement_trouble(&response);
    response
}

async fn token(app: &TestApp, user: Uuid, room: &str) -> TestResponse {
    let body = json!({"roomName": room, "participantName": "Viewer"}).to_string();
    let response = app.call(issue_token, Some(&app.token_for(user)), &body).await;
    no_prepared_statement_trouble(&response);
    response
}

async fn say(app: &TestApp, user: Uuid, room: &str, text: &str) -> TestResponse {
    let body = json!({"roomName": room, "text": text}).to_string();
    let response = app.call(post_message, Some(&app.token_for(user)), &body).await;
    no_prepared_statement_trouble(&response);
    response
}

async fn webhook(app: &TestApp, id: &str, event: &str, room: &str, who: (&str, &str)) -> TestResponse {
    let body = webhook_event(id, event, room, Some((who.0, who.1, false)));
    let response = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    no_prepared_statement_trouble(&response);
    response
}

// ---------------------------------------------------------------------------
// The handler-level checks of the main suite, through PgBouncer
// ---------------------------------------------------------------------------

/// Through the pooler as directly: the role's timeouts are set on every
/// server connection (they are the role's settings in the database, not a
/// `SET` of ours that a transaction-mode pooler would hand to the next
/// client), and a request cut by its deadline leaves no statement running on
/// the server (the cancel goes through PgBouncer) nor anything in the way of
/// the next request on the container's one connection.
#[tokio::test]
async fn timeouts_and_the_deadlines_cancel_hold_through_the_pooler() {
    the_deadlines_cancel_holds_through_the_pooler(None).await;
}

/// As above over TLS to the pooler, as the README recommends
/// (`sslmode=verify-full`): the cancel's TLS connection must not say
/// goodbye (a close_notify) before the pooler has passed the cancel on, or
/// the pooler drops it as from a requester that hung up.
#[tokio::test]
async fn the_deadlines_cancel_holds_through_the_pooler_over_tls() {
    let ca = std::fs::read_to_string(
        std::env::var("TEST_DATABASE_CA_CERT")
            .expect("TEST_DATABASE_CA_CERT: run the tests with scripts/test"),
    )
    .unwrap();
    the_deadlines_cancel_holds_through_the_pooler(Some(ca)).await;
}

/// A request cut off at its deadline through the pooler (over TLS with
/// `ca`) leaves no statement running once it has answered, even if its
/// container is frozen right after (as Lambda freezes it).
async fn the_deadlines_cancel_holds_through_the_pooler(ca: Option<String>) {
    let direct = migrated_database().await;
    let admin = connect(&direct).await;
    let role_setting = |name: &str, value: &str| {
        format!(
            "DO $$ BEGIN EXECUTE format('ALTER ROLE {API_ROLE} IN DATABASE %I SET {name} = ''{value}''', current_database()); END $$"
        )
    };
    // Only the cancel may end the wait below: the role's lock_timeout (2 s)
    // and statement_timeout (5 s) are lifted in this database before the
    // pooler's first server connection.
    for (name, value) in [("lock_timeout", "60s"), ("statement_timeout", "60s")] {
        admin.batch_execute(&role_setting(name, value)).await.unwrap();
    }
    let url = match ca {
        Some(_) => via_pgbouncer_with(&direct, "localhost", "verify-full"),
        None => via_pgbouncer(&direct),
    };
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(url),
        database_ca_cert: ca,
        settings: vec![
            ("DATABASE_POOL_SIZE", "1".to_owned()),
            ("REQUEST_DEADLINE_SECONDS", "1".to_owned()),
        ],
        ..AppOptions::default()
    })
    .await;
    {
        let client = app.state.db.get().await.unwrap();
        // Set the same way as the two lifted above, and untouched here.
        let shown = client
            .simple_query("SHOW idle_in_transaction_session_timeout")
            .await
            .unwrap();
        let value = shown.iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(
            value.as_deref(),
            Some("10s"),
            "the role's settings, through the pooler"
        );
    }

    // Only the end below is to meet the deadline.
    let host = Uuid::new_v4();
    insert_live_stream(&admin, "slow", host).await;
    let held = connect(&direct).await;
    held.batch_execute("BEGIN; SELECT 1 FROM live_streams WHERE id = 'slow' FOR UPDATE")
        .await
        .unwrap();
    app.call(end_stream, Some(&app.token_for(host)), r#"{"roomName":"slow"}"#)
        .await
        .assert_error(503, "unavailable");
    // Frozen, as Lambda freezes a container once it has answered: this
    // (single-threaded) runtime runs nothing, a cancel not yet sent included,
    // until a thread of its own has seen the statement end on the server.
    let checked = direct.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { wait_until_no_api_statement_runs(&connect(&checked).await).await });
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    held.batch_execute("ROLLBACK").await.unwrap();
    let live: bool = admin
        .query_one("SELECT is_live FROM live_streams WHERE id = 'slow'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(live, "the request answered 503 must not end the stream later");
    // The container serves again once the abandoned session is closed and a
    // new one made through the pooler: on a busy machine the first request
    // may still meet the one-second deadline, so a few seconds are allowed.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stream = app
            .send(
                get_stream,
                get_request(Some(&app.token_for(host)), &[], Some("slow")),
            )
            .await;
        if stream.status == 200 {
            break;
        }
        stream.assert_error(503, "unavailable");
        assert!(
            std::time::Instant::now() < until,
            "the container still answers 503 ten seconds after the cancel"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn start_retry_and_room_taken_answer_as_directly() {
    let (app, direct) = pooled_app().await;
    let host = Uuid::new_v4();
    let first = start(&app, host, "pooled-room").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let stream = &first.body["stream"];
    assert_eq!(stream["id"], "pooled-room");
    assert_eq!(stream["title"], "Through the pooler");
    assert_eq!(stream["streamerId"], host.to_string());
    assert_eq!(stream["isLive"], true);
    assert_eq!(stream["viewerCount"], 0);
    assert_eq!(first.body["serverUrl"], app.livekit_url());
    let claims = verify_livekit_token(first.body["token"].as_str().unwrap());
    assert_eq!(claims.sub, host.to_string());
    assert_eq!(claims.video.room, "pooled-room");
    assert_eq!(claims.video.can_publish, Some(true));
    assert!(app.has_room("pooled-room").await);

    let again = start(&app, host, "pooled-room").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["stream"], first.body["stream"], "the same stream");

    start(&app, Uuid::new_v4(), "pooled-room")
        .await
        .assert_error(409, "room_taken");

    // Concurrent retries of one start: still created once.
    let racer = app.token_for(Uuid::new_v4());
    let body = json!({"title": "Race", "roomName": "race-room"}).to_string();
    let answers =
        futures::future::join_all((0..8).map(|_| app.call(start_stream, Some(&racer), &body))).await;
    answers.iter().for_each(no_prepared_statement_trouble);
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let refusals: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|r| r.status >= 400)
        .map(|r| &r.body)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        7,
        "{statuses:?} {refusals:?}"
    );

    let db = connect(&direct).await;
    let rows = db
        .query(
            "SELECT id, streamer_id, is_live FROM live_streams ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(String, Uuid, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0], ("pooled-room".to_owned(), host, true));
    assert_eq!(stored[1].0, "race-room");
}

#[tokio::test]
async fn token_answers_as_directly() {
    let (app, _) = pooled_app().await;
    let host = Uuid::new_v4();
    assert_eq!(start(&app, host, "watch-me").await.status, 201);

    let viewer = Uuid::new_v4();
    let response = token(&app, viewer, "watch-me").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body.as_object().unwrap().len(), 2, "{}", response.body);
    let claims = verify_livekit_token(response.body["token"].as_str().unwrap());
    assert_eq!(claims.sub, viewer.to_string());
    assert_eq!(claims.name, "Viewer");
    assert_eq!(claims.video.room, "watch-me");
    assert_eq!(claims.video.can_publish, Some(false));
    assert_eq!(claims.video.can_subscribe, Some(true));
    assert_eq!(claims.video.can_publish_data, Some(true));

    let host_token = token(&app, host, "watch-me").await;
    assert_eq!(host_token.status, 200, "{}", host_token.body);
    let claims = verify_livekit_token(host_token.body["token"].as_str().unwrap());
    assert_eq!(claims.video.can_publish, Some(true));

    token(&app, viewer, "nowhere")
        .await
        .assert_error(404, "stream_not_found");
    assert_eq!(end(&app, host, "watch-me").await.status, 200);
    token(&app, viewer, "watch-me")
        .await
        .assert_error(409, "stream_ended");
}

#[tokio::test]
async fn end_answers_as_directly() {
    let (app, direct) = pooled_app().await;
    let host = Uuid::new_v4();
    assert_eq!(start(&app, host, "ending").await.status, 201);

    end(&app, Uuid::new_v4(), "ending")
        .await
        .assert_error(403, "forbidden");
    assert!(app.has_room("ending").await, "not touched by someone else");
    end(&app, host, "unknown")
        .await
        .assert_error(404, "stream_not_found");

    let first = end(&app, host, "ending").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["success"], true);
    assert_eq!(first.body["roomClosed"], true);
    assert_eq!(first.body["stream"]["id"], "ending");
    assert_eq!(first.body["stream"]["isLive"], false);
    let ended_at: DateTime<Utc> = first.body["stream"]["endedAt"].as_str().unwrap().parse().unwrap();
    assert!(!app.has_room("ending").await);

    // Closed and recorded: the second end needs no LiveKit.
    app.set_livekit_mode(crate::helpers::LiveKitMode::Failing).await;
    let second = end(&app, host, "ending").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "same endedAt, same answer");
    app.set_livekit_mode(crate::helpers::LiveKitMode::Up).await;

    let row = connect(&direct)
        .await
        .query_one(
            "SELECT is_live, ended_at, room_closed_at FROM live_streams WHERE id = 'ending'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Option<DateTime<Utc>>>(1), Some(ended_at));
    assert!(row.get::<_, Option<DateTime<Utc>>>(2).is_some());
}

#[tokio::test]
async fn listing_and_one_stream_answer_as_directly() {
    let (app, _) = pooled_app().await;
    for i in 0..5 {
        assert_eq!(
            start(&app, Uuid::new_v4(), &format!("room-{i}")).await.status,
            201
        );
    }
    let host = Uuid::new_v4();
    assert_eq!(start(&app, host, "ended-room").await.status, 201);
    assert_eq!(end(&app, host, "ended-room").await.status, 200);

    let reader = app.token_for(Uuid::new_v4());
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "2")];
        if let Some(c) = &cursor {
            query.push(("cursor", c));
        }
        let page = app
            .send(list_streams, get_request(Some(&reader), &query, None))
            .await;
        no_prepared_statement_trouble(&page);
        assert_eq!(page.status, 200, "{}", page.body);
        for stream in page.body["streams"].as_array().unwrap() {
            assert_eq!(stream["isLive"], true);
            seen.push(stream["id"].as_str().unwrap().to_owned());
        }
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 10, "pagination must end");
    }
    let expected: Vec<String> = (0..5).rev().map(|i| format!("room-{i}")).collect();
    assert_eq!(seen, expected, "every live stream once, newest first");

    let one = app
        .send(get_stream, get_request(Some(&reader), &[], Some("ended-room")))
        .await;
    no_prepared_statement_trouble(&one);
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["stream"]["streamerId"], host.to_string());
    assert_eq!(one.body["stream"]["isLive"], false);
    assert!(one.body["stream"]["endedAt"].is_string());
    app.send(get_stream, get_request(Some(&reader), &[], Some("missing")))
        .await
        .assert_error(404, "stream_not_found");
    app.send(
        list_streams,
        get_request(Some(&reader), &[("cursor", "garbage!")], None),
    )
    .await
    .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn chat_and_its_rate_limit_answer_as_directly() {
    let (app, direct) = pooled_app().await;
    // A second container on the same database through the same pooler.
    let other = TestApp::spawn_with(AppOptions {
        database_url: Some(via_pgbouncer(&direct)),
        livekit: crate::helpers::LiveKitChoice::SharedWith(app.livekit().clone()),
        ..AppOptions::default()
    })
    .await;
    let host = Uuid::new_v4();
    assert_eq!(start(&app, host, "chatty").await.status, 201);
    let (_, listener) = app.viewer_in("chatty").await;

    let viewer = Uuid::new_v4();
    let first = say(&app, viewer, "chatty", "  Ẹ káàbọ̀!  ").await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["broadcast"], true);
    assert_eq!(first.body["message"]["text"], "Ẹ káàbọ̀!");
    assert_eq!(first.body["message"]["userId"], viewer.to_string());
    let sent = listener.wait_for_data("chat", 1).await;
    assert_eq!(
        sent[0].payload,
        json!({"event": "chat_messages", "messages": [first.body["message"]]})
    );

    // The limit (5 in 10 s per user and room) is shared by both containers.
    let spammer = Uuid::new_v4();
    let statuses: Vec<u16> = futures::future::join_all((0..12).map(|i| {
        let c = if i % 2 == 0 { &app } else { &other };
        say(c, spammer, "chatty", "spam")
    }))
    .await
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");

    let history = app
        .send(
            chat_history,
            get_request(
                Some(&app.token_for(Uuid::new_v4())),
                &[("roomName", "chatty")],
                None,
            ),
        )
        .await;
    no_prepared_statement_trouble(&history);
    assert_eq!(history.status, 200, "{}", history.body);
    let texts: Vec<&str> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 6);
    assert_eq!(texts.last(), Some(&"Ẹ káàbọ̀!"), "newest first");

    say(&app, viewer, "nowhere", "hi")
        .await
        .assert_error(404, "stream_not_found");
    assert_eq!(end(&app, host, "chatty").await.status, 200);
    say(&other, viewer, "chatty", "too late")
        .await
        .assert_error(409, "stream_ended");
    let stored: i64 = connect(&direct)
        .await
        .query_one("SELECT count(*) FROM live_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 6);
}

#[tokio::test]
async fn webhooks_keep_exact_counts_as_directly() {
    let (app, direct) = pooled_app().await;
    let host = Uuid::new_v4();
    assert_eq!(start(&app, host, "hooked").await.status, 201);
    let (ada, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let outcome = |r: TestResponse| {
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["outcome"].as_str().unwrap().to_owned()
    };
    let host_id = host.to_string();
    assert_eq!(
        outcome(
            webhook(
                &app,
                "EV_1",
                "participant_joined",
                "hooked",
                (&host_id, "PA_host")
            )
            .await
        ),
        "applied"
    );
    outcome(webhook(&app, "EV_2", "participant_joined", "hooked", (&ada, "PA_ada")).await);
    outcome(webhook(&app, "EV_3", "participant_joined", "hooked", (&bob, "PA_bob")).await);
    assert_eq!(
        outcome(webhook(&app, "EV_2", "participant_joined", "hooked", (&ada, "PA_ada")).await),
        "duplicate"
    );
    outcome(webhook(&app, "EV_4", "participant_left", "hooked", (&ada, "PA_ada")).await);
    let count: i32 = connect(&direct)
        .await
        .query_one("SELECT viewer_count FROM live_streams WHERE id = 'hooked'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "bob only: the streamer is no viewer, ada left");
    let body = webhook_event("EV_5", "room_finished", "hooked", None);
    let finished = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(
        (finished.status, finished.body["outcome"].as_str()),
        (200, Some("applied"))
    );
    token(&app, Uuid::new_v4(), "hooked")
        .await
        .assert_error(409, "stream_ended");
}

// ---------------------------------------------------------------------------
// 50 concurrent clients through 10 server connections
// ---------------------------------------------------------------------------

/// Every response of a load test: expected answers are counted, anything else
/// (any 5xx above all) is a failure listed at the end.
#[derive(Default)]
struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    by_status: BTreeMap<u16, usize>,
    failures: Vec<String>,
}

impl Tally {
    /// Records `response` for step `label`; it must have one of `allowed`
    /// statuses and satisfy `check` (on the allowed status it got).
    fn record(
        &self,
        label: &str,
        response: &TestResponse,
        allowed: &[u16],
        check: impl FnOnce(&Value) -> bool,
    ) {
        let body = &response.body;
        let mut inner = self.inner.lock().unwrap();
        *inner.by_status.entry(response.status).or_default() += 1;
        let mentions_prepared = body.to_string().to_lowercase().contains("prepared statement");
        if response.status >= 500 || mentions_prepared || !allowed.contains(&response.status) || !check(body)
        {
            inner
                .failures
                .push(format!("{label}: {} {body}", response.status));
        }
    }

    fn assert_clean(&self, what: &str) {
        let inner = self.inner.lock().unwrap();
        let total: usize = inner.by_status.values().sum();
        eprintln!("{what}: {total} responses by status {:?}", inner.by_status);
        assert_eq!(
            inner.by_status.get(&503),
            None,
            "no 503 (database unavailable) under load"
        );
        assert!(
            inner.by_status.keys().all(|s| *s < 500),
            "no 5xx at all: {:?}",
            inner.by_status
        );
        assert!(
            inner.failures.is_empty(),
            "{} unexpected answers, first ones:\n{}",
            inner.failures.len(),
            inner
                .failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(total >= CLIENTS * ROUNDS * 15, "every step ran: {total}");
    }
}

fn room_of(client: usize, round: usize) -> String {
    format!("c{client}-r{round}")
}

/// One client's realistic session, `ROUNDS` times: go live (and retry the
/// start), viewers get tokens (also for a neighbour's stream, which may not be
/// live yet or any more), LiveKit reports a join twice, viewers chat, everyone
/// lists streams and reads chat, the viewer leaves, the host ends (and retries
/// the end), late viewers get 409.
async fn client_session(app: &TestApp, client: usize, tally: &Tally) {
    let host = Uuid::new_v4();
    for round in 0..ROUNDS {
        let room = room_of(client, round);
        let neighbour = room_of((client + 1) % CLIENTS, round);
        let label = |step: &str| format!("client {client} round {round} {step}");
        let viewer = Uuid::new_v4();
        let viewer_id = viewer.to_string();
        let sid = format!("PA_{client}_{round}");

        let started = start(app, host, &room).await;
        tally.record(&label("start"), &started, &[201], |b| {
            b["stream"]["id"] == room.as_str() && b["stream"]["isLive"] == true
        });
        let retried = start(app, host, &room).await;
        tally.record(&label("start retried"), &retried, &[200], |b| {
            b["stream"] == started.body["stream"]
        });

        let own = token(app, viewer, &room).await;
        tally.record(&label("token"), &own, &[200], |b| b["token"].is_string());
        let other = token(app, viewer, &neighbour).await;
        tally.record(&label("token neighbour"), &other, &[200, 404, 409], |_| true);

        let join_id = format!("EV_{client}_{round}_join");
        let joined = webhook(app, &join_id, "participant_joined", &room, (&viewer_id, &sid)).await;
        tally.record(&label("webhook join"), &joined, &[200], |b| {
            b["outcome"] == "applied"
        });
        let replayed = webhook(app, &join_id, "participant_joined", &room, (&viewer_id, &sid)).await;
        tally.record(&label("webhook join replayed"), &replayed, &[200], |b| {
            b["outcome"] == "duplicate"
        });

        let reader = app.token_for(viewer);
        let one = app
            .send(get_stream, get_request(Some(&reader), &[], Some(&room)))
            .await;
        tally.record(&label("get stream"), &one, &[200], |b| {
            b["stream"]["viewerCount"] == 1
        });

        for (i, sender) in [viewer, Uuid::new_v4(), host].into_iter().enumerate() {
            let said = say(app, sender, &room, &format!("hello {i}")).await;
            tally.record(&label("chat"), &said, &[201], |b| {
                b["message"]["text"] == format!("hello {i}").as_str()
            });
        }
        let elsewhere = say(app, viewer, &neighbour, "hi neighbour").await;
        tally.record(&label("chat neighbour"), &elsewhere, &[201, 404, 409], |_| true);

        let listed = app
            .send(list_streams, get_request(Some(&reader), &[("limit", "20")], None))
            .await;
        tally.record(&label("list"), &listed, &[200], |b| {
            b["streams"].as_array().is_some_and(|s| s.len() <= 20)
        });
        let history = app
            .send(
                chat_history,
                get_request(Some(&reader), &[("roomName", room.as_str())], None),
            )
            .await;
        // Its own three, and maybe the previous client's "hi neighbour".
        tally.record(&label("history"), &history, &[200], |b| {
            b["messages"].as_array().is_some_and(|m| {
                m.iter()
                    .filter(|m| m["text"].as_str().unwrap_or("").starts_with("hello "))
                    .count()
                    == 3
            })
        });

        let left = webhook(
            app,
            &format!("EV_{client}_{round}_left"),
            "participant_left",
            &room,
            (&viewer_id, &sid),
        )
        .await;
        tally.record(&label("webhook left"), &left, &[200], |b| {
            b["outcome"] == "applied"
        });

        let ended = end(app, host, &room).await;
        tally.record(&label("end"), &ended, &[200], |b| {
            b["success"] == true && b["stream"]["isLive"] == false && b["roomClosed"] == true
        });
        let ended_again = end(app, host, &room).await;
        tally.record(&label("end retried"), &ended_again, &[200], |b| {
            b["stream"]["endedAt"] == ended.body["stream"]["endedAt"]
        });
        let late = token(app, viewer, &room).await;
        tally.record(&label("token after end"), &late, &[409], |b| {
            b["error"]["code"] == "stream_ended"
        });
        let reused = start(app, host, &room).await;
        tally.record(&label("start ended room"), &reused, &[409], |b| {
            b["error"]["code"] == "room_taken"
        });
    }
}

/// What the load left in the database, checked on a direct connection, and how
/// many server connections PgBouncer opened for it.
async fn assert_database_after_load(direct: &str) {
    let db = connect(direct).await;
    let row = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE is_live), coalesce(sum(viewer_count), 0)::bigint
             FROM live_streams",
            &[],
        )
        .await
        .unwrap();
    let (streams, live, viewers): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (streams, live, viewers),
        ((CLIENTS * ROUNDS) as i64, 0, 0),
        "every stream started once, ended, and nobody is left watching"
    );
    let own_messages: i64 = db
        .query_one(
            "SELECT count(*) FROM live_messages WHERE text LIKE 'hello %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(own_messages, (CLIENTS * ROUNDS * 3) as i64);

    let name = direct.rsplit_once('/').unwrap().1;
    let servers: i64 = db
        .query_one(
            // Client backends only: an autovacuum worker the load woke up
            // in this database is listed under it too.
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("PgBouncer used {servers} server connections for {CLIENTS} clients");
    assert!(
        (1..=PGBOUNCER_POOL_SIZE).contains(&servers),
        "{servers} server connections: PgBouncer's default_pool_size is {PGBOUNCER_POOL_SIZE}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_through_ten_server_connections_never_fail() {
    let direct = migrated_database().await;
    // Each TestApp is one Lambda container: its own state and pool (the default
    // size), all on one database through the pooler.
    // One deployment: every container talks to the same LiveKit.
    let first = container(&direct, 2).await;
    let livekit = first.livekit().clone();
    let mut apps = futures::future::join_all((1..CLIENTS).map(|_| {
        container_with(
            &direct,
            2,
            crate::helpers::LiveKitChoice::SharedWith(livekit.clone()),
        )
    }))
    .await;
    apps.push(first);
    let tally = Tally::default();
    let sessions = apps
        .iter()
        .enumerate()
        .map(|(client, app)| client_session(app, client, &tally));
    futures::future::join_all(sessions).await;
    tally.assert_clean("50 containers");
    assert_database_after_load(&direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_container_with_a_pool_of_fifty_never_fails() {
    let direct = migrated_database().await;
    let app = container(&direct, CLIENTS).await;
    let tally = Tally::default();
    let sessions = (0..CLIENTS).map(|client| client_session(&app, client, &tally));
    futures::future::join_all(sessions).await;
    tally.assert_clean("one container, pool of 50");
    assert_database_after_load(&direct).await;
}

// ---------------------------------------------------------------------------
// Negative control: this PgBouncer does break named prepared statements
// ---------------------------------------------------------------------------

fn is_prepared_statement_error(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.message().contains("prepared statement"))
}

/// What the app avoids (tokio-postgres's `query(&str, ..)`: a named statement
/// parsed in one round trip, bound in the next) fails through this pooler, and
/// what the app does (`query_typed`: one unnamed Parse/Bind/Execute/Sync) does
/// not, on the same connections with the same concurrency. Without the failing
/// half, the load tests above would prove nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_named_prepared_statements_fail_through_this_pooler() {
    let url = via_pgbouncer(&create_database().await);

    // Deterministic "does not exist": A's statement lives on server X; while B
    // holds X in a transaction, A's next round trip gets another server.
    let (a, b) = (connect(&url).await, connect(&url).await);
    let statement = a.prepare("SELECT $1::int").await.expect("the Parse itself works");
    b.batch_execute("BEGIN").await.unwrap();
    let error = a
        .query(&statement, &[&1i32])
        .await
        .expect_err("bound on a server that never saw the Parse");
    let db = error.as_db_error().expect("a server error");
    eprintln!("negative control, sequential: {db}");
    assert_eq!(db.code().code(), "26000", "invalid_sql_statement_name: {db}");
    assert!(db.message().contains("does not exist"), "{db}");
    b.batch_execute("ROLLBACK").await.unwrap();

    // Deterministic "already exists": two processes both naming a statement
    // alike (every tokio-postgres process starts at s0) land on one server
    // connection -- PgBouncer hands out the most recently released one.
    // SQL PREPARE shares the protocol's statement namespace.
    a.batch_execute("PREPARE s_control AS SELECT 1").await.unwrap();
    let error = b
        .batch_execute("PREPARE s_control AS SELECT 1")
        .await
        .expect_err("the other client's statement is on this server connection");
    let db = error.as_db_error().expect("a server error");
    eprintln!("negative control, sequential: {db}");
    assert_eq!(db.code().code(), "42P05", "duplicate_prepared_statement: {db}");
    assert!(db.message().contains("already exists"), "{db}");

    // The issue's scenario: many connections, many `query(&str)` at once.
    const CONNECTIONS: usize = 20;
    const QUERIES: i32 = 30;
    let clients = futures::future::join_all((0..CONNECTIONS).map(|_| connect(&url))).await;
    let named = futures::future::join_all(clients.iter().map(|client| async move {
        let mut errors = Vec::new();
        for i in 0..QUERIES {
            if let Err(e) = client.query("SELECT $1::int", &[&i]).await {
                errors.push(e);
            }
        }
        errors
    }))
    .await
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    let prepared_errors = named.iter().filter(|e| is_prepared_statement_error(e)).count();
    eprintln!(
        "negative control, {CONNECTIONS} connections x {QUERIES} query(): {} failed, {prepared_errors} with a \
         prepared-statement error, e.g. {:?}",
        named.len(),
        named
            .iter()
            .find_map(|e| e.as_db_error().map(ToString::to_string))
    );
    assert!(
        prepared_errors > 0,
        "named prepared statements survived transaction pooling: the setup does not reproduce the failure"
    );

    // The same load with what the app uses: not a single error.
    let typed = futures::future::join_all(clients.iter().map(|client| async move {
        let mut errors = Vec::new();
        for i in 0..QUERIES {
            match client
                .query_typed("SELECT $1::int", &[(&i, tokio_postgres::types::Type::INT4)])
                .await
            {
                Ok(rows) => assert_eq!(rows[0].get::<_, i32>(0), i),
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    }))
    .await
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    assert!(
        typed.is_empty(),
        "query_typed failed through PgBouncer: {typed:?}"
    );
}
