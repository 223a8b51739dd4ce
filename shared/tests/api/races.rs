//! Interleavings a review found: each is produced deterministically (a held
//! LiveKit call, a row lock held by the test) and its outcome checked.
//! Holding one RoomService call at an exact point, or a listing that misses a
//! participant who is there (a stale view), is what only the RoomService
//! stand-in can do; those tests use it and say so. The rest run against
//! LiveKit's real server, with real participants where the reconciler must
//! find someone whose join webhook was lost.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_http::RequestExt;
use livekit_stub::participant;
use serde_json::json;
use shared::domain::RoomName;
use shared::handlers::{
    accept_stage, end_stream, get_stream, invite_to_stage, moderate, post_message, react, start_stream,
};
use shared::scheduled::reconcile::reconcile;
use shared::store::chat::{self, PostOutcome};
use shared::store::chat_broadcast::BATCH_INTERVAL;
use shared::store::rate_limit::Limit;
use uuid::Uuid;

use crate::helpers::{
    API_ROLE, AppOptions, LIVEKIT_API_SECRET, LiveKitChoice, LiveKitMode, TestApp, connect, first_column,
    get_request, insert_live_stream, post_request, signed_webhook, wait_until_no_api_statement_runs,
    webhook_event,
};

/// An app on the RoomService stand-in (see the module's comment).
async fn app_on_the_stand_in() -> TestApp {
    TestApp::spawn_with(AppOptions {
        livekit: LiveKitChoice::Stub,
        ..AppOptions::default()
    })
    .await
}

const GRACE: Duration = Duration::from_secs(120);

/// A reconciler run that sets `ran` once it has returned, so that a test
/// waiting for it to wait for a lock
/// ([`TestApp::until_a_statement_waits_for_a_lock`]) stops waiting then.
async fn reconcile_noting_its_return(
    app: &TestApp,
    ran: &std::sync::atomic::AtomicBool,
) -> Result<shared::scheduled::reconcile::ReconcileReport, shared::error::ApiError> {
    let report = reconcile(&app.state, GRACE).await;
    ran.store(true, std::sync::atomic::Ordering::SeqCst);
    report
}

async fn join(app: &TestApp, id: &str, room: &str, identity: &str, sid: &str) {
    let body = webhook_event(id, "participant_joined", room, Some((identity, sid, false)));
    let response = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(response.status, 200, "{}", response.body);
}

/// `viewer`'s join into `room` as the webhook applies it (as `live_api`), in a
/// transaction left open on `connection`, so a test can act while it holds
/// whatever the join holds.
async fn open_join<'c>(
    connection: &'c mut tokio_postgres::Client,
    event_id: &str,
    room: &str,
    sid: &str,
    viewer: Uuid,
) -> tokio_postgres::Transaction<'c> {
    let webhook = connection.transaction().await.unwrap();
    let outcome: String = webhook
        .query_one(
            "SELECT outcome FROM live_participant_event($1, $2, '', 'join', $3, $4, $5, false, 'Ade', 60, NULL)",
            &[&event_id, &room, &sid, &viewer.to_string(), &viewer],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "applied");
    webhook
}

/// A join that commits after the reconciler read `ListParticipants` (which
/// did not have that viewer yet) but before it took the row lock is newer than
/// the listing: the run must not close it.
#[tokio::test]
async fn a_join_committed_while_the_reconciler_lists_participants_stays_counted() {
    let app = app_on_the_stand_in().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "racing").await;
    app.stub()
        .set_participants("racing", vec![participant(&host.to_string(), "PA_host", false)]);
    let listing = app.stub().hold("ListParticipants");
    let viewer = Uuid::new_v4().to_string();
    let run = reconcile(&app.state, GRACE);
    let meanwhile = async {
        listing.arrived().await;
        join(&app, "EV_late_join", "racing", &viewer, "PA_late").await;
        listing.release();
    };
    let (report, ()) = tokio::join!(run, meanwhile);
    assert_eq!(report.unwrap().synced, 1);
    assert_eq!(
        app.viewer_count("racing").await,
        1,
        "the late joiner is still counted"
    );
}

/// A full reconnect: LiveKit tells the new session's join and the old
/// session's leave at once. The leave waits for the join's presence row and
/// takes away only its own session, so the viewer stays counted (it used to
/// skip the row the join held and then delete it: counted nowhere, with a
/// session open, and no listing repaired it).
#[tokio::test]
async fn a_reconnects_join_and_its_old_sessions_leave_at_once_keep_the_viewer_counted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::spawn().await;
    let room = "reconnecting";
    app.start_stream(Uuid::new_v4(), room).await;
    let viewer = Uuid::new_v4();
    let identity = viewer.to_string();
    join(&app, "EV_first", room, &identity, "PA_first").await;
    assert_eq!(app.viewer_count(room).await, 1);

    let mut webhook_connection = connect(&app.api_database_url).await;
    let new_session = open_join(&mut webhook_connection, "EV_again", room, "PA_again", viewer).await;
    let left = AtomicBool::new(false);
    let leave = async {
        let body = webhook_event(
            "EV_first_left",
            "participant_left",
            room,
            Some((&identity, "PA_first", false)),
        );
        let response = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
        assert_eq!(response.status, 200, "{}", response.body);
        left.store(true, Ordering::SeqCst);
    };
    let commit = async {
        app.until_a_statement_waits_for_a_lock(&left).await;
        new_session.commit().await.unwrap();
    };
    tokio::join!(leave, commit);

    assert_eq!(
        app.viewer_count(room).await,
        1,
        "the new session is still counted"
    );
    let sessions: i32 = app
        .db_value(
            "SELECT sessions FROM live_presence WHERE room_name = $1 AND identity = $2",
            &[&room, &identity],
        )
        .await;
    assert_eq!(sessions, 1);
    // And the new session's leave takes them out.
    let body = webhook_event(
        "EV_again_left",
        "participant_left",
        room,
        Some((&identity, "PA_again", false)),
    );
    assert_eq!(
        app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
            .await
            .status,
        200
    );
    assert_eq!(app.viewer_count(room).await, 0);
}

/// A run that finds the room as the database has it writes no session: in a
/// room of tens of thousands, locking and rewriting every listed session each
/// minute made the run too slow for its statement timeout and held up every
/// leave meanwhile. Only what differs is written: here, one viewer whose
/// join was lost (and the host's, whose join this test never sent).
#[tokio::test]
async fn a_run_writes_only_the_sessions_that_differ_from_the_listing() {
    let app = TestApp::spawn().await;
    let started = app.start_stream(Uuid::new_v4(), "steady").await;
    let mut present = vec![app.join(started["token"].as_str().unwrap()).await.unwrap()];
    for _ in 0..3 {
        present.push(app.viewer_in("steady").await.1);
    }
    app.wait_for_viewer_count("steady", 3).await;
    app.wait_for_webhooks("participant_joined", 4).await;
    app.lose_webhooks(true);
    let (lost, _lost_client) = app.viewer_in("steady").await;
    app.livekit()
        .wait_for_participants("steady", "the host and four viewers", |ps| ps.len() == 5)
        .await;
    app.wait_for_lost_webhooks("participant_joined", 1).await;
    let versions = "SELECT sid || ':' || xmin::text FROM live_participant_sessions
                    WHERE room_name = 'steady' AND identity <> $1 ORDER BY sid";
    let admin = app.db().await;
    let read_versions = || async {
        admin
            .query(versions, &[&lost.to_string()])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let before = read_versions().await;
    assert_eq!(before.len(), 4, "the host's and three viewers' sessions");

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.synced, 1, "{report:?}");
    assert_eq!(read_versions().await, before, "no present session rewritten");
    assert_eq!(app.viewer_count("steady").await, 4, "the lost join is counted");
}

/// A session the reconciler closed (LiveKit did not list it) comes back when a
/// later listing has it; one closed by its leave event does not.
#[tokio::test]
async fn a_later_listing_reopens_what_the_reconciler_closed_but_not_what_a_leave_closed() {
    let app = app_on_the_stand_in().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "flapping").await;
    let (ada, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    join(&app, "EV_ada", "flapping", &ada, "PA_ada").await;
    join(&app, "EV_bob", "flapping", &bob, "PA_bob").await;
    let leave = webhook_event(
        "EV_bob_left",
        "participant_left",
        "flapping",
        Some((&bob, "PA_bob", false)),
    );
    let left = app.deliver(signed_webhook(&leave, LIVEKIT_API_SECRET)).await;
    assert_eq!(left.status, 200, "{}", left.body);
    // A listing that misses ada (a LiveKit node's stale view): her session closes.
    app.stub().set_participants("flapping", vec![]);
    reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(app.viewer_count("flapping").await, 0);
    // The next listing has both ada and a stale entry for bob, who did leave.
    app.stub().set_participants(
        "flapping",
        vec![
            participant(&ada, "PA_ada", false),
            participant(&bob, "PA_bob", false),
        ],
    );
    reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(
        app.viewer_count("flapping").await,
        1,
        "ada back, bob's leave stands"
    );
}

/// A webhook holds no lock on the stream's row that chat, moderation or
/// another viewer's webhook would wait for: while one join's transaction is
/// still open (its session, presence and count shard locked, and the
/// Realtime copy written), all three go through at once.
#[tokio::test]
async fn chat_moderation_and_other_joins_do_not_wait_for_a_webhook_in_progress() {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "busy").await;
    let mut webhook_connection = connect(&app.api_database_url).await;
    let webhook = open_join(&mut webhook_connection, "EV_held", "busy", "PA_held", viewer).await;

    let chat = app
        .call(
            post_message,
            Some(&app.token_for(viewer)),
            &json!({"roomName": "busy", "text": "hi"}).to_string(),
        )
        .await;
    assert_eq!(chat.status, 201, "{}", chat.body);
    let ban = json!({"roomName": "busy", "userId": Uuid::new_v4(), "action": "ban"}).to_string();
    let banned = app.call(moderate, Some(&app.token_for(host)), &ban).await;
    assert_eq!(banned.status, 200, "{}", banned.body);
    // Another viewer, counted in another of the room's shards.
    let admin = app.db().await;
    let held_shard = shard_of(&admin, &viewer.to_string()).await;
    let mut other = Uuid::new_v4();
    while shard_of(&admin, &other.to_string()).await == held_shard {
        other = Uuid::new_v4();
    }
    // Each of these answered its success status above: one that waited for
    // the webhook's transaction would have given up at lock_timeout (2 s)
    // with a 503, since that transaction commits only below.
    join(&app, "EV_other", "busy", &other.to_string(), "PA_other").await;
    webhook.commit().await.unwrap();
    assert_eq!(app.viewer_count("busy").await, 2);
}

/// A join writes no lock into its stream's row (migration 0018): a foreign key
/// from the session, presence or first-viewer rows would take `FOR KEY SHARE`
/// on it, which every join of a viral room would then share and rewrite.
/// `FOR UPDATE NOWAIT` conflicts with every row lock, that one included.
#[tokio::test]
async fn an_open_join_holds_no_lock_on_the_stream_row() {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "viral").await;
    let admin = app.db().await;
    // A room past its first joins: its 16 count shards exist (a shard's own
    // first insert still checks its key). And the Realtime copy is not due,
    // so the join's own writes are all that could lock the row (a due copy
    // updates it, as it should).
    admin
        .batch_execute(
            "INSERT INTO live_viewer_counts (room_name, shard) SELECT 'viral', g FROM generate_series(0, 15) g
                 ON CONFLICT DO NOTHING;
             UPDATE live_streams SET viewer_count_written_at = 'infinity' WHERE id = 'viral';",
        )
        .await
        .unwrap();
    let mut webhook_connection = connect(&app.api_database_url).await;
    let webhook = open_join(&mut webhook_connection, "EV_open", "viral", "PA_open", viewer).await;

    let mut probe_connection = app.db().await;
    let probe = probe_connection.transaction().await.unwrap();
    let locked = probe
        .query_opt(
            "SELECT 1 FROM live_streams WHERE id = 'viral' FOR UPDATE NOWAIT",
            &[],
        )
        .await;
    assert!(locked.is_ok(), "the open join locks the stream row: {locked:?}");
    probe.rollback().await.unwrap();
    webhook.commit().await.unwrap();
    assert_eq!(app.viewer_count("viral").await, 1);
}

/// A statement blocked on a row lock gives up after the role's `lock_timeout`
/// (2 s): a clean 503, long before the request deadline, and nothing changes.
#[tokio::test]
async fn a_request_blocked_on_a_lock_is_a_503_after_the_lock_timeout() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "locked").await;
    let held = app.hold_stream_row("locked").await;
    let end = app
        .call(end_stream, Some(&app.token_for(host)), r#"{"roomName":"locked"}"#)
        .await;
    end.assert_error(503, "unavailable");
    assert!(end.headers.contains_key("retry-after"));
    assert_eq!(
        end.body["error"]["message"], "The database is temporarily unavailable; please retry shortly.",
        "the lock timeout answered, not the request's deadline"
    );
    held.batch_execute("ROLLBACK").await.unwrap();
    assert!(app.stream_row("locked").await.unwrap().get::<_, bool>("is_live"));
}

/// A request cut off by its deadline while its statement waits: the statement
/// is cancelled and its connection closed, so it neither runs once the lock it
/// waited for is free (after the client was told 503) nor holds up the next
/// request on the pool. Without the cancel only the role's lock_timeout would
/// end the wait, which this test lifts so that it cannot pass for it.
#[tokio::test]
async fn a_request_cut_by_the_deadline_leaves_no_statement_behind() {
    // Only the cancel may end the wait: the role's lock_timeout (2 s) would
    // otherwise give up on the statement soon after the deadline by itself.
    let (app, admin) = spawn_without_lock_timeout(vec![
        ("REQUEST_DEADLINE_SECONDS", "1".into()),
        ("DATABASE_POOL_SIZE", "1".into()),
    ])
    .await;
    // Only the end below is to meet the deadline.
    let host = Uuid::new_v4();
    insert_live_stream(&admin, "slow", host).await;
    let held = app.hold_stream_row("slow").await;
    let end = app
        .call(end_stream, Some(&app.token_for(host)), r#"{"roomName":"slow"}"#)
        .await;
    end.assert_error(503, "unavailable");

    // Cancelled on the server while the lock is still held: no statement of
    // the functions waits for it any more.
    wait_until_no_api_statement_runs(&admin).await;
    held.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        app.stream_row("slow").await.unwrap().get::<_, bool>("is_live"),
        "the request answered 503 must not end the stream later"
    );
    // The pool's one connection slot serves the next request: still held by
    // the abandoned statement, it would answer 503 after the pool's wait.
    let stream = app
        .send(
            get_stream,
            get_request(Some(&app.token_for(host)), &[], Some("slow")),
        )
        .await;
    assert_eq!(stream.status, 200, "{}", stream.body);
}

/// A flush tick stopped at its invocation's cut-off while its statement
/// waits (here for the count shards, locked elsewhere: a migration's lock;
/// a stream row held elsewhere it skips) cancels that statement: the pooled
/// connection goes to the next invocation clean, not queued behind it.
#[tokio::test]
async fn a_flush_stopped_at_its_cut_off_leaves_no_statement_behind() {
    // Only the cancel may end the wait (the role's lock_timeout is 2 s).
    let (app, admin) = spawn_without_lock_timeout(vec![("DATABASE_POOL_SIZE", "1".into())]).await;
    let host = Uuid::new_v4();
    app.start_stream(host, "flushed").await;
    join(
        &app,
        "EV_flushed",
        "flushed",
        &Uuid::new_v4().to_string(),
        "PA_flushed",
    )
    .await;
    // The copy behind the count and old enough to be written: the flush
    // updates the stream's row, which is held.
    admin
        .execute(
            "UPDATE live_streams SET viewer_count = 0, viewer_count_written_at = now() - interval '10 seconds' WHERE id = 'flushed'",
            &[],
        )
        .await
        .unwrap();
    let held = app.db().await;
    held.batch_execute("BEGIN; LOCK TABLE live_viewer_counts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let report = shared::scheduled::flush::flush_until(
        &app.state,
        started,
        Some(started + Duration::from_millis(700)),
    )
    .await;
    assert_eq!(
        (report.ticks, report.failed_ticks, report.stopped_at_cut_off),
        (1, 1, true),
        "{report:?}"
    );
    wait_until_no_api_statement_runs(&admin).await;
    held.batch_execute("ROLLBACK").await.unwrap();
    // The next invocation's tick, on the same (only) connection, writes it.
    let report = shared::scheduled::flush::flush_until(&app.state, Instant::now(), None).await;
    assert_eq!((report.written, report.failed_ticks), (1, 0), "{report:?}");
    assert_eq!(app.realtime_viewer_count("flushed").await, 1);
}

/// A reconciler run still going at its invocation's cut-off (here its first
/// clean-up statement waits for a table held elsewhere; with the database
/// slow, a room's statements can add up past the run's margin) is stopped
/// there and its statement cancelled: the invocation logs the stop instead
/// of being ended by Lambda's timeout with nothing logged, and the pooled
/// connection goes to the next run clean.
#[tokio::test]
async fn a_reconciler_run_stopped_at_its_cut_off_leaves_no_statement_behind() {
    // Only the cancel may end the wait (the role's lock_timeout is 2 s).
    let (app, admin) = spawn_without_lock_timeout(vec![("DATABASE_POOL_SIZE", "1".into())]).await;
    let held = app.db().await;
    held.batch_execute("BEGIN; LOCK TABLE live_room_claims IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let cut_off = started + Duration::from_millis(700);
    let outcome =
        shared::scheduled::reconcile::reconcile_before(&app.state, GRACE, None, Some(cut_off)).await;
    assert!(outcome.is_none(), "stopped at its cut-off: {outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_until_no_api_statement_runs(&admin).await;
    held.batch_execute("ROLLBACK").await.unwrap();
    // The next run, on the same (only) connection, runs whole.
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.failure(), None, "{report:?}");
}

/// The request deadline never outlives the invocation: with a setting longer
/// than the function's timeout (25 s against the 2.5 s this invocation has
/// left), a request stuck behind a lock still gets our 503 a second before
/// Lambda would end the invocation, not Lambda's timeout. The role's
/// lock_timeout is lifted and its statement_timeout (5 s) is past the
/// invocation's end, so only the invocation's deadline can answer in time.
#[tokio::test]
async fn the_request_deadline_never_outlives_the_invocation() {
    let (app, admin) = spawn_without_lock_timeout(vec![("REQUEST_DEADLINE_SECONDS", "25".into())]).await;
    let host = Uuid::new_v4();
    app.start_stream(host, "short").await;
    let held = app.hold_stream_row("short").await;

    let mut context = lambda_http::Context::default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    context.deadline = u64::try_from((now + Duration::from_millis(2_500)).as_millis()).unwrap();
    let request =
        post_request(Some(&app.token_for(host)), r#"{"roomName":"short"}"#).with_lambda_context(context);
    let started = Instant::now();
    let end = app.send(end_stream, request).await;
    let waited = started.elapsed();
    end.assert_error(503, "unavailable");
    assert_eq!(
        end.body["error"]["message"], "The request took too long; please retry shortly.",
        "the deadline answered, not the database's statement_timeout"
    );
    // Not before a second ahead of the invocation's end, and well before the
    // statement_timeout (5 s) or the 25 s setting could have answered.
    assert!(
        (Duration::from_millis(1_200)..Duration::from_millis(4_500)).contains(&waited),
        "answered after {waited:?}, not a second before the invocation's end"
    );
    // As any request cut by its deadline: its statement is cancelled (the
    // cancel travels on a connection of its own, so wait for it), and the
    // stream is not ended once the lock is free.
    wait_until_no_api_statement_runs(&admin).await;
    held.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        app.stream_row("short").await.unwrap().get::<_, bool>("is_live"),
        "the request answered 503 must not end the stream later"
    );
}

/// `/live/start` retried while `/live/end` commits: the start's write takes the
/// row lock and sees the end, so it neither reports the stream live nor hands
/// out a host token, and the room its `CreateRoom` re-made is closed again.
#[tokio::test]
async fn a_start_retried_while_the_stream_ends_gets_no_token_and_leaves_no_room() {
    let app = app_on_the_stand_in().await;
    let host = Uuid::new_v4();
    let bearer = app.token_for(host);
    app.start_stream(host, "ending").await;
    let create = app.stub().hold("CreateRoom");
    let retried_start = app.call(
        start_stream,
        Some(&bearer),
        r#"{"title":"A stream","roomName":"ending"}"#,
    );
    let end_meanwhile = async {
        create.arrived().await;
        let ended = app
            .call(end_stream, Some(&bearer), r#"{"roomName":"ending"}"#)
            .await;
        assert_eq!(ended.status, 200, "{}", ended.body);
        create.release();
    };
    let (start, ()) = tokio::join!(retried_start, end_meanwhile);
    start.assert_error(409, "room_taken");
    assert!(!app.has_room("ending").await, "the re-created room was closed");
    assert!(!app.stream_row("ending").await.unwrap().get::<_, bool>("is_live"));
}

/// Two streamers start one new name at once. The first's commit is refused
/// after its `CreateRoom` (another start of its own took its only live slot),
/// so it closes the room it made. That room must never be one another
/// streamer's stream committed with: while the first holds its claim on the
/// name, the second is refused before LiveKit is asked for anything, and may
/// start it once the first has let go.
#[tokio::test]
async fn a_start_refused_after_making_its_room_never_closes_another_streamers_room() {
    let app = app_on_the_stand_in().await;
    let first = app.token_for(Uuid::new_v4());
    let second = app.token_for(Uuid::new_v4());
    let create = app.stub().hold("CreateRoom");
    let refused_late = app.call(
        start_stream,
        Some(&first),
        r#"{"title":"First","roomName":"contested"}"#,
    );
    let meanwhile = async {
        create.arrived().await;
        let own_other = app
            .call(
                start_stream,
                Some(&first),
                r#"{"title":"Other","roomName":"elsewhere"}"#,
            )
            .await;
        assert_eq!(own_other.status, 201, "{}", own_other.body);
        app.call(
            start_stream,
            Some(&second),
            r#"{"title":"Second","roomName":"contested"}"#,
        )
        .await
        .assert_error(409, "room_taken");
        create.release();
    };
    let (refused_late, ()) = tokio::join!(refused_late, meanwhile);
    refused_late.assert_error(409, "already_live");
    assert!(
        !app.has_room("contested").await,
        "the room the refused start made is closed"
    );
    let claims: i64 = app.db_value("SELECT count(*) FROM live_room_claims", &[]).await;
    assert_eq!(claims, 0, "and its claim released");

    let second_start = app
        .call(
            start_stream,
            Some(&second),
            r#"{"title":"Second","roomName":"contested"}"#,
        )
        .await;
    assert_eq!(second_start.status, 201, "{}", second_start.body);
    assert!(app.has_room("contested").await);
}

/// A start that died between its check and its commit (its Lambda timed out)
/// leaves its claim; the name is another streamer's to take once the claim
/// has lapsed, not before, and the reconciler deletes lapsed claims. The
/// dead start's room may still be open (LiveKit keeps an unused room for its
/// empty timeout, 300 s by default): the stream taking the name over gives
/// it its own metadata, which clients read to find the host.
#[tokio::test]
async fn a_claim_left_by_a_start_that_died_lapses() {
    let app = TestApp::spawn().await;
    let admin = app.db().await;
    let dead_start = Uuid::new_v4();
    admin
        .execute(
            "INSERT INTO live_room_claims (room_name, streamer_id) VALUES ('orphaned', $1), ('fresh', $1)",
            &[&dead_start],
        )
        .await
        .unwrap();
    let other = app.token_for(Uuid::new_v4());
    app.call(
        start_stream,
        Some(&other),
        r#"{"title":"t","roomName":"orphaned"}"#,
    )
    .await
    .assert_error(409, "room_taken");
    admin
        .batch_execute("UPDATE live_room_claims SET claimed_at = now() - interval '61 seconds' WHERE room_name = 'orphaned'")
        .await
        .unwrap();
    let dead_starts_metadata = json!({"streamerId": dead_start, "title": "t"}).to_string();
    app.livekit().create_room("orphaned", &dead_starts_metadata).await;
    let taken_over = app
        .call(
            start_stream,
            Some(&other),
            r#"{"title":"t","roomName":"orphaned"}"#,
        )
        .await;
    assert_eq!(taken_over.status, 201, "{}", taken_over.body);
    let metadata: serde_json::Value = serde_json::from_str(
        &app.livekit()
            .room("orphaned")
            .await
            .expect("the room is open")
            .metadata,
    )
    .unwrap();
    assert_eq!(
        metadata,
        json!({"streamerId": taken_over.body["stream"]["streamerId"], "title": "t"}),
        "the room names the stream that took it over"
    );
    // The one who claimed it may always go on with its own claim.
    let own = app
        .call(
            start_stream,
            Some(&app.token_for(dead_start)),
            r#"{"title":"t","roomName":"fresh"}"#,
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.body);

    admin
        .execute(
            "INSERT INTO live_room_claims (room_name, streamer_id, claimed_at)
             VALUES ('lapsed', $1, now() - interval '61 seconds'), ('recent', $1, now())",
            &[&dead_start],
        )
        .await
        .unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.claims_pruned, 1, "{report:?}");
    let left = first_column(&admin, "SELECT room_name FROM live_room_claims ORDER BY 1", &[]).await;
    assert_eq!(
        left,
        vec!["recent".to_owned()],
        "committed starts left no claim either"
    );
}

#[tokio::test]
async fn a_streamer_has_one_live_stream_at_a_time_by_default() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let bearer = app.token_for(host);
    app.start_stream(host, "first").await;
    let second = app
        .call(
            start_stream,
            Some(&bearer),
            r#"{"title":"Another","roomName":"second"}"#,
        )
        .await;
    second.assert_error(409, "already_live");
    assert_eq!(
        second.body["error"]["roomName"], "first",
        "names the live stream: {}",
        second.body
    );
    assert!(
        second.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first"),
        "{}",
        second.body
    );
    assert!(
        !app.has_room("second").await,
        "no room is made for a refused start"
    );
    let retried = app
        .call(
            start_stream,
            Some(&bearer),
            r#"{"title":"A stream","roomName":"first"}"#,
        )
        .await;
    assert_eq!(retried.status, 200, "a retried start of the live stream is fine");
    let ended = app
        .call(end_stream, Some(&bearer), r#"{"roomName":"first"}"#)
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    app.start_stream(host, "second").await;
}

#[tokio::test]
async fn concurrent_starts_of_one_streamer_leave_at_most_the_allowed_live_streams() {
    for allowed in [1_usize, 2] {
        let app =
            TestApp::spawn_with_settings(vec![("MAX_LIVE_STREAMS_PER_STREAMER", allowed.to_string())]).await;
        let bearer = app.token_for(Uuid::new_v4());
        let starts = (0..5).map(|i| {
            let body = json!({"title": "Spam", "roomName": format!("spam-{i}")}).to_string();
            let bearer = bearer.clone();
            let app = &app;
            async move { app.call(start_stream, Some(&bearer), &body).await }
        });
        let responses = futures::future::join_all(starts).await;
        let created = responses.iter().filter(|r| r.status == 201).count();
        assert_eq!(created, allowed, "{responses:?}");
        assert!(responses.iter().all(|r| r.status == 201 || r.status == 409));
        let live: i64 = app
            .db_value("SELECT count(*) FROM live_streams WHERE is_live", &[])
            .await;
        assert_eq!(live as usize, allowed);
    }
}

/// LiveKit was down during `/live/end`: the reconciler closes the room later.
#[tokio::test]
async fn the_reconciler_closes_the_room_of_a_stream_that_ended_while_livekit_was_down() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "unclosed").await;
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let ended = app
        .call(
            end_stream,
            Some(&app.token_for(host)),
            r#"{"roomName":"unclosed"}"#,
        )
        .await;
    assert_eq!(ended.body["roomClosed"], false, "{}", ended.body);
    let failed = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((failed.rooms_closed, failed.failed), (0, 1), "{failed:?}");
    assert!(failed.nothing_got_through(), "the run reports itself failed");
    app.set_livekit_mode(LiveKitMode::Up).await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.rooms_closed, 1, "{report:?}");
    assert!(!app.has_room("unclosed").await);
    let row = app.stream_row("unclosed").await.unwrap();
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_closed_at")
            .is_some()
    );
    // Recorded as closed: a run needs LiveKit for it no more.
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.rooms_closed, report.failed), (0, 0), "closed once");
}

/// Records how many rows each statement deletes from `table` (a statement
/// trigger), to hold the reconciler's batches to their bound.
async fn log_deletes(admin: &tokio_postgres::Client, table: &str) {
    admin
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS deletes_by_statement (tbl text, n bigint);
             GRANT INSERT ON deletes_by_statement TO live_api;
             CREATE OR REPLACE FUNCTION log_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO deletes_by_statement SELECT TG_TABLE_NAME, count(*) FROM gone; RETURN NULL; END $$;
             CREATE TRIGGER log_deletes AFTER DELETE ON {table}
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_deletes();"
        ))
        .await
        .unwrap();
}

/// The rows each statement deleted from `table`, those that deleted any.
async fn deletes_by_statement(admin: &tokio_postgres::Client, table: &str) -> Vec<i64> {
    let rows = admin
        .query(
            "SELECT n FROM deletes_by_statement WHERE tbl = $1 AND n > 0",
            &[&table],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// The reconciler prunes closed sessions and the sessions of ended streams
/// past the retention period, in bounded batches (as many as it takes, up to
/// 48 a run), and keeps the rest.
#[tokio::test]
async fn old_sessions_are_pruned_in_bounded_batches() {
    let app = TestApp::spawn().await;
    let (host, other) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "long-running").await;
    app.start_stream(other, "long-ago").await;
    let (_, _present) = app.viewer_in("long-running").await;
    app.wait_for_viewer_count("long-running", 1).await;
    let admin = app.db().await;
    admin
        .batch_execute(
            "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at, updated_at)
             SELECT 'long-running', 'PA_old_' || n, 'someone', true, true, now() - interval '8 days', now() - interval '8 days'
             FROM generate_series(1, 5003) AS n;
             INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at)
             VALUES ('long-running', 'PA_recent', 'someone', true, true, now() - interval '1 day'),
                    ('long-ago', 'PA_of_ended', 'someone', true, true, NULL);
             UPDATE live_streams SET is_live = false, ended_at = now() - interval '8 days' WHERE id = 'long-ago';",
        )
        .await
        .unwrap();
    log_deletes(&admin, "live_participant_sessions").await;
    let first = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(
        first.sessions_pruned, 5_004,
        "the 5,003 closed ones in two batches, and the ended stream's open one"
    );
    let batches = deletes_by_statement(&admin, "live_participant_sessions").await;
    assert!(
        batches.len() >= 2 && batches.iter().all(|n| *n <= 5_000),
        "statements of at most 5,000 rows: {batches:?}"
    );
    assert_eq!(batches.iter().sum::<i64>(), 5_004, "{batches:?}");
    let second = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(second.sessions_pruned, 0);
    let left = first_column(
        &admin,
        "SELECT sid FROM live_participant_sessions ORDER BY sid",
        &[],
    )
    .await;
    assert_eq!(
        left.len(),
        2,
        "the present viewer's session and the recent one: {left:?}"
    );
    assert!(left.contains(&"PA_recent".to_owned()), "{left:?}");
    assert_eq!(app.viewer_count("long-running").await, 1);
}

/// The unique-viewer marks of a stream that ended past the retention go, in
/// bounded batches; those of a live stream and of one that ended yesterday
/// stay. A run takes at most 1,000 such streams, in the order they ended, and
/// the next goes on from where it stopped, however long the history.
#[tokio::test]
async fn unique_viewer_marks_of_long_ended_streams_are_pruned_in_bounded_batches() {
    let app = TestApp::spawn().await;
    for room in ["seen-live", "seen-yesterday", "seen-long-ago"] {
        app.start_stream(Uuid::new_v4(), room).await;
    }
    let admin = app.db().await;
    admin
        .batch_execute(
            "INSERT INTO live_viewers_seen (room_name, identity)
             SELECT 'seen-long-ago', 'viewer-' || n FROM generate_series(1, 5003) AS n;
             INSERT INTO live_viewers_seen (room_name, identity)
             VALUES ('seen-live', 'a'), ('seen-yesterday', 'a'), ('seen-yesterday', 'b');
             UPDATE live_streams SET is_live = false, ended_at = now() - interval '8 days' WHERE id = 'seen-long-ago';
             UPDATE live_streams SET is_live = false, ended_at = now() - interval '1 day' WHERE id = 'seen-yesterday';
             -- A long history: 1,000 streams that ended before it, one viewer each.
             INSERT INTO live_streams (id, streamer_id, title, is_live, ended_at)
             SELECT 'history-' || n, gen_random_uuid(), 't', false, now() - interval '30 days' + n * interval '1 second'
             FROM generate_series(1, 1000) AS n;
             INSERT INTO live_viewers_seen (room_name, identity)
             SELECT 'history-' || n, 'someone' FROM generate_series(1, 1000) AS n;",
        )
        .await
        .unwrap();
    log_deletes(&admin, "live_viewers_seen").await;
    let first = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(first.viewers_seen_pruned, 1_000, "the oldest thousand streams");
    let second = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(second.viewers_seen_pruned, 5_003, "then the next");
    let batches = deletes_by_statement(&admin, "live_viewers_seen").await;
    assert!(
        batches.len() == 3 && batches.iter().all(|n| *n <= 5_000),
        "statements of at most 5,000 rows: {batches:?}"
    );
    let third = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(third.viewers_seen_pruned, 0);
    let left = first_column(
        &admin,
        "SELECT room_name || ':' || identity FROM live_viewers_seen ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(left, ["seen-live:a", "seen-yesterday:a", "seen-yesterday:b"]);
}

/// `SESSION_RETENTION_DAYS` sets the retention: at 2 days, a session closed
/// three days ago goes and one closed yesterday stays.
#[tokio::test]
async fn the_session_retention_is_a_setting() {
    let app = TestApp::spawn_with_settings(vec![("SESSION_RETENTION_DAYS", "2".into())]).await;
    app.start_stream(Uuid::new_v4(), "kept-briefly").await;
    let admin = app.db().await;
    admin
        .batch_execute(
            "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at, updated_at)
             VALUES ('kept-briefly', 'PA_three_days', 'someone', true, true, now() - interval '3 days', now() - interval '3 days'),
                    ('kept-briefly', 'PA_yesterday', 'someone', true, true, now() - interval '1 day', now() - interval '1 day');",
        )
        .await
        .unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.sessions_pruned, 1);
    let left = first_column(&admin, "SELECT sid FROM live_participant_sessions", &[]).await;
    assert_eq!(left, ["PA_yesterday"]);
}

/// Webhook ids past their day of retention go, in statements of at most
/// 5,000 each until none is left; newer ones stay for deduplication.
#[tokio::test]
async fn old_webhook_ids_are_pruned_in_bounded_batches() {
    let app = TestApp::spawn().await;
    let admin = app.db().await;
    admin
        .batch_execute(
            "INSERT INTO live_webhook_events (id, received_at)
             SELECT 'EV_old_' || n, now() - interval '2 days' FROM generate_series(1, 5003) AS n;
             INSERT INTO live_webhook_events (id, received_at)
             VALUES ('EV_recent', now() - interval '23 hours'), ('EV_now', now());",
        )
        .await
        .unwrap();
    log_deletes(&admin, "live_webhook_events").await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.webhook_ids_pruned, 5_003, "two batches in one run");
    let batches = deletes_by_statement(&admin, "live_webhook_events").await;
    assert_eq!(batches.iter().sum::<i64>(), 5_003, "{batches:?}");
    assert!(
        batches.len() == 2 && batches.iter().all(|n| *n <= 5_000),
        "two statements of at most 5,000 rows: {batches:?}"
    );
    let left = first_column(&admin, "SELECT id FROM live_webhook_events ORDER BY id", &[]).await;
    assert_eq!(left, ["EV_now", "EV_recent"]);
}

/// Two posts of one room commit out of their seq order: the first is still in
/// its transaction when the second commits. The batch read waits for the
/// first instead of reading past it (and recording the room as sent beyond
/// it), so both are sent, in order.
#[tokio::test]
async fn a_post_that_commits_after_a_later_one_is_read_by_the_batch_in_its_place() {
    let app = TestApp::spawn().await;
    let (host, early, late) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "interleaved").await;
    let room = RoomName::parse("interleaved".to_owned()).unwrap();

    let mut slow_connection = connect(&app.api_database_url).await;
    let slow_post = slow_connection.transaction().await.unwrap();
    let early_seq: i64 = slow_post
        .query_one(
            "SELECT seq FROM live_chat_say('interleaved', $1, 'first', 'test:early', 10, 5)",
            &[&early],
        )
        .await
        .unwrap()
        .get(0);
    let late_seq = store_post(&app, &room, late, "second").await;
    assert!(late_seq > early_seq);

    let state = app.state.clone();
    let read = tokio::spawn(async move {
        let client = state.db.get().await.unwrap();
        chat::unsent(&client, &room, 0, 10).await
    });
    let admin = app.db().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND l.classid = 1818782568 AND NOT l.granted
                   AND d.datname = current_database())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(
            !read.is_finished(),
            "the batch read did not wait for the post in flight: {:?}",
            read.await.unwrap().map(|m| m.len())
        );
        assert!(Instant::now() < deadline, "the batch read never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slow_post.commit().await.unwrap();

    let unsent = read.await.unwrap().unwrap();
    let texts: Vec<&str> = unsent
        .iter()
        .filter_map(|(message, _)| message.as_ref().map(|m| m.text.as_str()))
        .collect();
    assert_eq!(texts, ["first", "second"]);
    let seqs: Vec<i64> = unsent.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, [early_seq, late_seq]);
}

/// A batch holder that outlived its lease (LiveKit slow) records what it
/// sent, but leaves the lease of the poster that took over alone: otherwise a
/// third poster could take it and send the same messages beside the second.
#[tokio::test]
async fn a_chat_batch_that_outlived_its_lease_leaves_the_next_holders_lease_alone() {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "slow-batch").await;
    let room = RoomName::parse("slow-batch".to_owned()).unwrap();
    let seq = store_post(&app, &room, viewer, "hello").await;
    let client = app.state.db.get().await.unwrap();
    let hold = Duration::from_secs(8);
    let first = chat::take_batch_lease(&client, &room, hold, BATCH_INTERVAL)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(
        chat::take_batch_lease(&client, &room, hold, BATCH_INTERVAL)
            .await
            .unwrap(),
        None,
        "a held lease is not taken twice"
    );

    // The first holder's LiveKit call outlives its lease; a later poster takes it.
    let admin = app.db().await;
    admin
        .execute(
            "UPDATE live_chat_broadcasts SET lease_until = clock_timestamp() - interval '1 second'
             WHERE room_name = 'slow-batch'",
            &[],
        )
        .await
        .unwrap();
    let second = chat::take_batch_lease(&client, &room, hold, BATCH_INTERVAL)
        .await
        .unwrap()
        .expect("a lapsed lease is taken over");
    assert_eq!(
        second.sent_up_to, first.sent_up_to,
        "nothing recorded as sent yet"
    );

    let more = chat::batch_sent(&client, &room, seq, &first).await.unwrap();
    assert!(!more, "nothing waits after the first holder's batch");
    let recorded = sent_and_counted(&admin, "slow-batch").await;
    assert_eq!(recorded, (seq, 1), "the late batch is recorded");
    assert_eq!(
        chat::take_batch_lease(&client, &room, hold, BATCH_INTERVAL)
            .await
            .unwrap(),
        None,
        "the second holder's lease is still held"
    );

    // The second holder finds its messages sent, records nothing twice, and
    // lets its own lease go.
    chat::batch_sent(&client, &room, second.sent_up_to, &second)
        .await
        .unwrap();
    let recorded = sent_and_counted(&admin, "slow-batch").await;
    assert_eq!(
        recorded,
        (seq, 1),
        "sent_up_to never goes back, nothing counted twice"
    );
    assert!(
        chat::take_batch_lease(&client, &room, hold, BATCH_INTERVAL)
            .await
            .unwrap()
            .is_some(),
        "its holder let the lease go"
    );
}

/// Batches of a room are spaced from its last one that sent something: the
/// lease of a room that never sent says send now, the lease taken right after
/// a batch went out says wait out the spacing, and one that sent nothing (a
/// holder letting go after LiveKit failed) leaves the spacing where it was.
#[tokio::test]
async fn a_quiet_room_sends_at_once_and_a_busy_one_waits_out_the_spacing() {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "spaced-batches").await;
    let room = RoomName::parse("spaced-batches".to_owned()).unwrap();
    let client = app.state.db.get().await.unwrap();
    // An hour, so that no pause of this machine between two statements
    // passes for the end of the spacing.
    let (hold, spacing) = (Duration::from_secs(8), Duration::from_secs(3600));
    let take = || async {
        chat::take_batch_lease(&client, &room, hold, spacing)
            .await
            .unwrap()
            .expect("the lease is free")
    };

    let seq = store_post(&app, &room, viewer, "hello").await;
    let quiet = take().await;
    assert_eq!(
        quiet.send_in,
        Duration::ZERO,
        "a room that never sent sends at once"
    );
    chat::batch_sent(&client, &room, quiet.sent_up_to, &quiet)
        .await
        .unwrap();
    assert_eq!(
        take().await.send_in,
        Duration::ZERO,
        "a batch that sent nothing leaves the room quiet"
    );
    app.db()
        .await
        .execute(
            "UPDATE live_chat_broadcasts SET lease_until = '-infinity' WHERE room_name = 'spaced-batches'",
            &[],
        )
        .await
        .unwrap();

    let sending = take().await;
    chat::batch_sent(&client, &room, seq, &sending).await.unwrap();
    let next = take().await;
    assert!(
        next.send_in > spacing - Duration::from_secs(60) && next.send_in <= spacing,
        "right after a batch, the next waits out the spacing: {:?}",
        next.send_in
    );
}

/// Stores a chat message the way `POST /live/chat` does (without its
/// broadcast) and returns its seq.
async fn store_post(app: &TestApp, room: &RoomName, user: Uuid, text: &str) -> i64 {
    let limit = Limit {
        max: 5,
        window: Duration::from_secs(10),
    };
    let client = app.state.db.get().await.unwrap();
    match chat::post(&client, room, user, text, None, &format!("test:{user}"), limit).await {
        Ok(PostOutcome::Posted(_, seq)) => seq,
        _ => panic!("{text:?} was not stored"),
    }
}

/// A room's chat batch record: the last seq sent, and how many messages
/// the batches counted.
async fn sent_and_counted(admin: &tokio_postgres::Client, room: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT sent_up_to, messages_sent FROM live_chat_broadcasts WHERE room_name = $1",
            &[&room],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The room's count shard of `identity` (as live_session_change picks it).
async fn shard_of(admin: &tokio_postgres::Client, identity: &str) -> i32 {
    admin
        .query_one("SELECT hashtext($1) & 15", &[&identity])
        .await
        .unwrap()
        .get(0)
}

/// Which waits [`until_waiting`] counts.
#[derive(Clone, Copy)]
enum Waiting {
    /// For any lock.
    AnyLock,
    /// For a room's standing lock (migration 0022).
    Standing,
}

/// Returns once at least `count` transactions of this test's database wait
/// for a lock of the kind `what`, within a few seconds.
async fn until_waiting(admin: &tokio_postgres::Client, what: Waiting, count: i64) {
    let standing_only = matches!(what, Waiting::Standing);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE NOT l.granted AND a.datname = current_database()
                   AND (NOT $1 OR (l.locktype = 'advisory'
                        AND l.classid::bigint = hashtext('live_room_standing')::bigint & 4294967295))",
                &[&standing_only],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} transactions wait for the lock, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits `change` once `count` requests wait for the standing lock it holds.
async fn commit_once_waited_for(
    admin: &tokio_postgres::Client,
    change: tokio_postgres::Transaction<'_>,
    count: i64,
) {
    until_waiting(admin, Waiting::Standing, count).await;
    change.commit().await.unwrap();
}

/// A ban or an end that is committing while a post, a tap or a stage answer
/// is in flight: the request waits for it and is refused by it, never stored
/// after it (a message the streamer was told could not come, a tap in an
/// ended stream's final figures, a banned guest on the stage). The ban and
/// the end are plain writes of the API role, so the lock is the triggers'.
#[tokio::test]
async fn posts_taps_and_stage_answers_in_flight_wait_for_an_end_or_a_ban_and_are_refused_by_it() {
    let app = TestApp::spawn_with_settings(vec![("DATABASE_POOL_SIZE", "3".into())]).await;
    let admin = app.db().await;
    let (host, banned, viewer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "standing").await;
    join(
        &app,
        "EV_standing_banned",
        "standing",
        &banned.to_string(),
        "PA_banned",
    )
    .await;
    let invite = json!({"roomName": "standing", "userId": banned}).to_string();
    let invited = app
        .call(invite_to_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(invited.status, 200, "{}", invited.body);

    let mut ban_connection = connect(&app.api_database_url).await;
    let ban = ban_connection.transaction().await.unwrap();
    ban.execute(
        "INSERT INTO live_room_restrictions (room_name, user_id, banned) VALUES ('standing', $1, true)",
        &[&banned],
    )
    .await
    .unwrap();
    let banned_token = app.token_for(banned);
    let last_word = json!({"roomName": "standing", "text": "one last word"}).to_string();
    let answer = json!({"roomName": "standing"}).to_string();
    let (posted, accepted, ()) = tokio::join!(
        app.call(post_message, Some(&banned_token), &last_word),
        app.call(accept_stage, Some(&banned_token), &answer),
        commit_once_waited_for(&admin, ban, 2),
    );
    posted.assert_error(403, "banned");
    accepted.assert_error(403, "banned");

    let mut end_connection = connect(&app.api_database_url).await;
    let end = end_connection.transaction().await.unwrap();
    end.execute(
        "UPDATE live_streams SET is_live = false, ended_at = now() WHERE id = 'standing'",
        &[],
    )
    .await
    .unwrap();
    let viewer_token = app.token_for(viewer);
    let question = json!({"roomName": "standing", "text": "still here?"}).to_string();
    let heart = json!({"roomName": "standing", "kind": "heart"}).to_string();
    let (posted, tapped, ()) = tokio::join!(
        app.call(post_message, Some(&viewer_token), &question),
        app.call(react, Some(&viewer_token), &heart),
        commit_once_waited_for(&admin, end, 2),
    );
    posted.assert_error(409, "stream_ended");
    tapped.assert_error(409, "stream_ended");

    let stored: i64 = app
        .db_value(
            "SELECT count(*) FROM live_messages WHERE room_name = 'standing'",
            &[],
        )
        .await;
    let taps: i64 = app
        .db_value(
            "SELECT coalesce(sum(n), 0)::int8 FROM live_reaction_counts WHERE room_name = 'standing'",
            &[],
        )
        .await;
    let on_stage: i64 = app
        .db_value(
            "SELECT count(*) FROM live_stage WHERE room_name = 'standing' AND on_stage_since IS NOT NULL",
            &[],
        )
        .await;
    assert_eq!((stored, taps, on_stage), (0, 0, 0));
}

/// A post in flight when the stream ends (its seq taken, not committed) is
/// counted when the end settles the stream's chat (migration 0045): the
/// settling waits for the post as the end's standing lock does. Settled
/// before the post committed, the message would be counted nowhere: not on
/// the batches' row, and not at read time, past the settled mark.
#[tokio::test]
async fn a_post_in_flight_when_the_stream_ends_is_in_its_final_chat_count() {
    let app = TestApp::spawn().await;
    let admin = app.db().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "last-word").await;
    let mut post_connection = connect(&app.api_database_url).await;
    let post = post_connection.transaction().await.unwrap();
    let outcome: String = post
        .query_one(
            "SELECT outcome FROM live_chat_say('last-word', $1, 'the last word', 'chat:last', 60, 10)",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "posted");
    let end_body = json!({"roomName": "last-word"}).to_string();
    let host_token = app.token_for(host);
    let commit_post = async {
        until_waiting(&admin, Waiting::Standing, 1).await;
        post.commit().await.unwrap();
    };
    let (ended, ()) = tokio::join!(app.call(end_stream, Some(&host_token), &end_body), commit_post);
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(
        crate::helpers::chat_settled(&admin, "last-word").await,
        Some((1, true)),
        "the late message is counted on the row"
    );
}

/// A viewer's leave in flight (its session and presence row locked, its
/// count shard next, as live_session_change takes them) and `/live/end` meet
/// without a deadlock: the end takes its locks in the webhooks' order, the
/// shards last (migration 0023), so it waits for the leave's session and the
/// leave then takes its shard at once. Before, the end held every shard and
/// waited for the presence row while the leave waited for its shard, until
/// Postgres failed one of them after deadlock_timeout.
#[tokio::test]
async fn an_end_and_a_leave_in_flight_do_not_deadlock() {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4().to_string());
    app.start_stream(host, "closing").await;
    join(&app, "EV_in", "closing", &viewer, "PA_in").await;
    assert_eq!(app.viewer_count("closing").await, 1);

    let mut leave_connection = app.db().await;
    let leave = leave_connection.transaction().await.unwrap();
    let step = leave
        .query_one(
            "SELECT delta, arrived, watched FROM live_presence_change('closing', 'PA_in', $1, true, 'leave', '')",
            &[&viewer],
        )
        .await
        .unwrap();
    assert_eq!(step.get::<_, i32>(0), -1);
    let (arrived, watched): (f64, f64) = (step.get(1), step.get(2));

    let admin = app.db().await;
    let host_token = app.token_for(host);
    let end = app.call(end_stream, Some(&host_token), r#"{"roomName":"closing"}"#);
    let rest_of_the_leave = async {
        until_waiting(&admin, Waiting::AnyLock, 1).await;
        let counted: bool = leave
            .query_one(
                "SELECT live_count_add('closing', hashtext($1) & 15, -1, 0, $2, $3)",
                &[&viewer, &-arrived, &watched],
            )
            .await
            .expect("the leave takes its shard")
            .get(0);
        leave.commit().await.unwrap();
        counted
    };
    let (end, counted) = tokio::join!(end, rest_of_the_leave);
    assert_eq!(end.status, 200, "{}", end.body);
    assert!(counted, "the leave counted before the end closed the shards");
    assert_eq!(app.viewer_count("closing").await, 0);
    let present: i64 = app
        .db_value(
            "SELECT count(*) FROM live_presence WHERE room_name = 'closing'",
            &[],
        )
        .await;
    assert_eq!(present, 0);
}

/// A reconciler run and an end of the same room at once. The run goes
/// through the listed identities in order: for a guest coming back to the
/// stage it inserts their presence row and clears their stage row's
/// `away_since`, then goes on to the next identity's presence row. An end
/// locks and deletes the presence rows it sees (not the run's new one), then
/// updates the room's stage rows. Held by the test at the guest's stage row,
/// the run and the end met there, and each then waited for the other: a
/// deadlock, which cost the room's run or answered the end 503. The run now
/// holds the room's standing lock from its start (migration 0047), so the
/// end waits for the whole run.
#[tokio::test]
async fn a_reconciler_run_and_an_end_at_once_do_not_deadlock() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    // The run takes identities in order: the guest's first.
    let mut users = [Uuid::new_v4(), Uuid::new_v4()];
    users.sort_by_key(Uuid::to_string);
    let [guest, viewer] = users.map(|user| user.to_string());
    app.start_stream(host, "crossing").await;
    join(&app, "EV_viewer", "crossing", &viewer, "PA_viewer").await;
    let admin = app.db().await;
    // The guest's connection dropped while on stage; they are not back yet.
    admin
        .execute(
            "INSERT INTO live_stage (room_name, user_id, on_stage_since, was_on_stage, away_since)
             VALUES ('crossing', $1, now(), true, now())",
            &[&users[0]],
        )
        .await
        .unwrap();
    let mut gate_connection = app.db().await;
    let gate = gate_connection.transaction().await.unwrap();
    gate.execute(
        "SELECT FROM live_stage WHERE room_name = 'crossing' AND user_id = $1 FOR UPDATE",
        &[&users[0]],
    )
    .await
    .unwrap();

    // LiveKit lists the guest back and the viewer on a second device.
    let reconciler = connect(&app.api_database_url).await;
    let sids = vec!["PA_guest", "PA_viewer", "PA_viewer_2"];
    let identities = vec![guest.as_str(), viewer.as_str(), viewer.as_str()];
    let (counted, names) = (vec![true; 3], vec!["Guest", "Viewer", "Viewer"]);
    let run = async {
        reconciler
            .query_one(
                "SELECT live_sync_sessions('crossing', now(), $1, $2, $3, $4)",
                &[&sids, &identities, &counted, &names],
            )
            .await
    };
    let host_token = app.token_for(host);
    let end_after_the_run_waits = async {
        until_waiting(&admin, Waiting::AnyLock, 1).await;
        let end = app.call(end_stream, Some(&host_token), r#"{"roomName":"crossing"}"#);
        let open_the_gate = async {
            until_waiting(&admin, Waiting::AnyLock, 2).await;
            gate.rollback().await.unwrap();
        };
        tokio::join!(end, open_the_gate).0
    };
    let (run, end) = tokio::join!(run, end_after_the_run_waits);
    let counted: i32 = run.expect("the run ends without a deadlock").get(0);
    assert_eq!(end.status, 200, "{}", end.body);
    assert_eq!(
        counted, 1,
        "the guest came back (the viewer's second device changes no count)"
    );
    assert_eq!(app.viewer_count("crossing").await, 0);
}

/// A guest kicked while on stage who comes straight back with the token of
/// their turn: their join is applied before their old session's leave
/// (LiveKit's webhooks may come in either order, or the leave not at all;
/// here it is lost) and before the kick's record commits (it waits for the
/// room's standing lock behind a stage change in flight, held here). That
/// join read them on stage, so LiveKit let them publish. The record ends
/// their turn (migration 0043), and the kick then tells LiveKit the standing
/// it committed: they are back as a viewer, without camera or microphone,
/// not until the reconciler's next run.
#[tokio::test]
async fn a_kicked_guest_who_comes_straight_back_is_a_viewer_in_livekit_too() {
    let (app, admin) = spawn_without_lock_timeout(Vec::new()).await;
    let room = "kicked-guest";
    let host = Uuid::new_v4();
    app.start_stream(host, room).await;
    let (guest, first) = app.viewer_in(room).await;
    app.wait_for_viewer_count(room, 1).await;
    let (host_t, guest_t) = (app.token_for(host), app.token_for(guest));
    let invite = json!({"roomName": room, "userId": guest}).to_string();
    let invited = app.call(invite_to_stage, Some(&host_t), &invite).await;
    assert_eq!(invited.status, 200, "{}", invited.body);
    let answer = json!({"roomName": room}).to_string();
    let accepted = app.call(accept_stage, Some(&guest_t), &answer).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    first
        .wait_for("permission to publish", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == true
        })
        .await;
    let turn = app.request_token(&guest_t, room).await;
    let turn_token = turn.body["token"].as_str().unwrap().to_owned();

    let mut holder_connection = app.db().await;
    let stage_change_in_flight = holder_connection.transaction().await.unwrap();
    stage_change_in_flight
        .execute("SELECT live_room_standing_lock($1, false)", &[&room])
        .await
        .unwrap();
    app.lose_webhooks(true);
    let kick = json!({"roomName": room, "userId": guest, "action": "kick"}).to_string();
    let kicked = app.call(moderate, Some(&host_t), &kick);
    let back_before_the_kick_commits = async {
        first.wait_disconnected().await;
        app.wait_for_lost_webhooks("participant_left", 1).await;
        app.lose_webhooks(false);
        let second = app
            .join(&turn_token)
            .await
            .expect("the kicked guest comes straight back");
        app.wait_for_webhooks("participant_joined", 2).await;
        assert!(
            guest_in_livekit(&app, room, guest).await.0,
            "back with their turn's token, the guest may publish"
        );
        until_waiting(&admin, Waiting::Standing, 1).await;
        stage_change_in_flight.commit().await.unwrap();
        second
    };
    let (kicked, second) = tokio::join!(kicked, back_before_the_kick_commits);
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    second
        .wait_for("the permission gone", |e| {
            e["event"] == "permissions_changed" && e["can_publish"] == false
        })
        .await;
    assert_eq!(
        guest_in_livekit(&app, room, guest).await,
        (false, Some("false".to_owned())),
        "LiveKit holds them as a viewer: no publishing, not on stage"
    );
}

/// Whether LiveKit lets `user` publish in `room`, and their `on_stage` attribute.
async fn guest_in_livekit(app: &TestApp, room: &str, user: Uuid) -> (bool, Option<String>) {
    let participants = app.livekit().participants(room).await;
    let participant = participants
        .iter()
        .find(|p| p.identity == user.to_string())
        .expect("the guest is in the room");
    (
        participant.permission.as_ref().is_some_and(|p| p.can_publish),
        participant.attributes.get("on_stage").cloned(),
    )
}

/// With LiveKit down, closing the rooms of ended streams stops after a few
/// failures in a row (each call may hang for 6 s): the rest are the next
/// run's, and a run in which not one room got through reports itself failed,
/// so the reconciler's alarm counts it.
#[tokio::test]
async fn closing_rooms_stops_after_failures_in_a_row_and_the_run_reports_itself_failed() {
    let app = TestApp::spawn().await;
    let rooms = ["gone-1", "gone-2", "gone-3", "gone-4"];
    let hosts: Vec<Uuid> = rooms.iter().map(|_| Uuid::new_v4()).collect();
    for (room, host) in rooms.iter().zip(&hosts) {
        app.start_stream(*host, room).await;
    }
    app.set_livekit_mode(LiveKitMode::Failing).await;
    for (room, host) in rooms.iter().zip(&hosts) {
        let ended = app
            .call(
                end_stream,
                Some(&app.token_for(*host)),
                &json!({"roomName": room}).to_string(),
            )
            .await;
        assert_eq!(ended.body["roomClosed"], false, "{}", ended.body);
    }
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(
        (report.failed, report.left_for_next_run, report.rooms_closed),
        (3, 1, 0),
        "{report:?}"
    );
    assert!(report.nothing_got_through());
    app.set_livekit_mode(LiveKitMode::Up).await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.rooms_closed, report.failed), (4, 0), "{report:?}");
    assert!(!report.nothing_got_through());
}

/// A clean-up statement that fails (here the lapsed claim it would delete is
/// held past the functions' 2 s lock timeout) leaves its step to the next
/// run; the steps after it and the rooms still get their turn (the old
/// webhook id is pruned, the live room synced), and the run reports itself
/// failed, naming the step.
#[tokio::test]
async fn a_clean_up_that_fails_leaves_the_rooms_their_turn() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "still-synced").await;
    let admin = app.db().await;
    admin
        .execute(
            "INSERT INTO live_room_claims (room_name, streamer_id, claimed_at)
             VALUES ('held-claim', $1, now() - interval '61 seconds')",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap();
    let mut holder_connection = app.db().await;
    let holder = holder_connection.transaction().await.unwrap();
    holder
        .execute(
            "SELECT FROM live_room_claims WHERE room_name = 'held-claim' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    // A webhook id past its retention: the step after the claims' prunes it
    // all the same.
    admin
        .execute(
            "INSERT INTO live_webhook_events (id, received_at) VALUES ('old-event', now() - interval '2 days')",
            &[],
        )
        .await
        .unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(
        (
            report.synced,
            report.failed,
            report.claims_pruned,
            report.webhook_ids_pruned
        ),
        (1, 0, 0, 1),
        "{report:?}"
    );
    assert_eq!(report.clean_up_failed, ["claims"]);
    // The run is reported failed, so a step failing run after run fires
    // the reconciler's alarm.
    let failure = report.failure().expect("a failed clean-up step fails the run");
    assert!(failure.contains("claims"), "{failure}");
    holder.rollback().await.unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.claims_pruned, 1, "the next run goes on: {report:?}");
    assert_eq!(report.failure(), None, "{report:?}");
}

/// A start taking over a lapsed claim while the reconciler's prune waits
/// for that row: the prune checks the lapse again on the row it would
/// delete, and the claim, renewed, stays the new streamer's (deleting it
/// would let a third streamer take the name under them).
#[tokio::test]
async fn a_claim_taken_over_while_the_prune_waited_stays() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::spawn().await;
    app.db()
        .await
        .execute(
            "INSERT INTO live_room_claims (room_name, streamer_id, claimed_at)
             VALUES ('taken-over', $1, now() - interval '61 seconds')",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap();
    let taker = Uuid::new_v4();
    let mut start_connection = app.db().await;
    let start = start_connection.transaction().await.unwrap();
    let outcome: String = start
        .query_one(
            "SELECT outcome FROM live_start_stream('taken-over', $1, 't', 1, false, NULL)",
            &[&taker],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "available", "the lapsed claim is taken over");

    let pruned = AtomicBool::new(false);
    let prune = async {
        let client = app.state.db.get().await.unwrap();
        let deleted = shared::store::streams::prune_lapsed_claims(&client, 100)
            .await
            .unwrap();
        pruned.store(true, Ordering::SeqCst);
        deleted
    };
    let commit = async {
        app.until_a_statement_waits_for_a_lock(&pruned).await;
        start.commit().await.unwrap();
    };
    let (deleted, ()) = tokio::join!(prune, commit);
    assert_eq!(deleted, 0);
    let claimed_by: Vec<Uuid> = app
        .db()
        .await
        .query(
            "SELECT streamer_id FROM live_room_claims WHERE room_name = 'taken-over'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(claimed_by, vec![taker]);
}

/// A stream row held while a run starts (every webhook's count write holds
/// it a moment, an end of a big room a while) does not fail the statement
/// that stops the listed rooms' grace clocks, and with it the whole run: the
/// other rooms' clocks stop and they are synced. The held room's clock is
/// stopped on its own before its sync, waiting for the row: held past the
/// lock timeout, that room fails this run and keeps its clock; held a
/// moment, its clock stops in the same run.
#[tokio::test]
async fn a_held_stream_row_leaves_the_other_rooms_their_run() {
    use std::sync::atomic::AtomicBool;
    let app = TestApp::spawn().await;
    for room in ["row-held", "row-free"] {
        app.start_stream(Uuid::new_v4(), room).await;
    }
    let admin = app.db().await;
    let clocks_run = || async {
        admin
            .batch_execute("UPDATE live_streams SET room_missing_since = now() - interval '30 seconds'")
            .await
            .unwrap();
    };
    let clocks = || async {
        first_column(
            &admin,
            "SELECT id FROM live_streams WHERE room_missing_since IS NOT NULL ORDER BY id",
            &[],
        )
        .await
    };
    let hold = "SELECT FROM live_streams WHERE id = 'row-held' FOR NO KEY UPDATE";

    clocks_run().await;
    let mut holder_connection = app.db().await;
    let holder = holder_connection.transaction().await.unwrap();
    holder.execute(hold, &[]).await.unwrap();
    let report = reconcile(&app.state, GRACE)
        .await
        .expect("one held row fails no run");
    assert_eq!((report.synced, report.failed), (1, 1), "{report:?}");
    assert_eq!(clocks().await, vec!["row-held".to_owned()]);
    holder.rollback().await.unwrap();

    clocks_run().await;
    let holder = holder_connection.transaction().await.unwrap();
    holder.execute(hold, &[]).await.unwrap();
    let ran = AtomicBool::new(false);
    let run = reconcile_noting_its_return(&app, &ran);
    let release = async {
        app.until_a_statement_waits_for_a_lock(&ran).await;
        holder.rollback().await.unwrap();
    };
    let (report, ()) = tokio::join!(run, release);
    let report = report.unwrap();
    assert_eq!((report.synced, report.failed), (2, 0), "{report:?}");
    assert!(
        clocks().await.is_empty(),
        "held a moment: stopped in the same run"
    );
}

/// Two reconciler runs syncing one room at once (a run over its minute, a
/// retried invocation) could lock its sessions in opposite orders and
/// deadlock. The second now leaves the room to the first, at once, without
/// waiting for any of its rows.
#[tokio::test]
async fn a_second_sync_of_a_room_leaves_it_to_the_first() {
    let app = TestApp::spawn().await;
    let room = "synced-twice";
    app.start_stream(Uuid::new_v4(), room).await;
    let (first_viewer, second_viewer) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let mut first_connection = app.db().await;
    let first = first_connection.transaction().await.unwrap();
    let changed: i32 = first
        .query_one(
            "SELECT live_sync_sessions($1, now(), ARRAY['PA_first'], ARRAY[$2], ARRAY[true], ARRAY['First'])",
            &[&room, &first_viewer],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 1);

    // As the functions' role, with their lock timeout: a wait for the first
    // run's new session would fail this statement.
    let second = app.state.db.get().await.unwrap();
    let changed: i32 = second
        .query_one(
            "SELECT live_sync_sessions($1, now(), ARRAY['PA_first', 'PA_second'], ARRAY[$2, $3],
                                       ARRAY[true, true], ARRAY['First', 'Second'])",
            &[&room, &first_viewer, &second_viewer],
        )
        .await
        .expect("the second run waits for nothing")
        .get(0);
    assert_eq!(changed, 0, "left to the run syncing the room");
    first.commit().await.unwrap();
    assert_eq!(app.viewer_count(room).await, 1, "the first run's listing stands");
}

/// A room whose listing came back after the run's cut-off (`until`; a
/// scheduled run's is 15 s before its invocation's deadline) gets its
/// sessions synced and nothing more: no push and no correction starts after
/// the cut-off (each may hang for 6 s), so Lambda's timeout never cuts the
/// run off unlogged. The next run makes the correction (here, removing a
/// banned user the room still had).
#[tokio::test]
async fn no_room_service_call_starts_after_the_runs_cut_off() {
    let app = app_on_the_stand_in().await;
    let (host, banned) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "late-listing").await;
    app.db()
        .await
        .execute(
            "INSERT INTO live_room_restrictions (room_name, user_id, banned) VALUES ('late-listing', $1, true)",
            &[&banned],
        )
        .await
        .unwrap();
    app.stub().set_participants(
        "late-listing",
        vec![participant(&banned.to_string(), "PA_banned", false)],
    );
    let listing = app.stub().hold("ListParticipants");
    let cut_off = Instant::now() + Duration::from_millis(300);
    let run = shared::scheduled::reconcile::reconcile_until(&app.state, GRACE, Some(cut_off));
    let answer_after_the_cut_off = async {
        listing.arrived().await;
        tokio::time::sleep_until(cut_off.into()).await;
        listing.release();
    };
    let (report, ()) = tokio::join!(run, answer_after_the_cut_off);
    let report = report.unwrap();
    assert_eq!((report.synced, report.corrected), (1, 0), "{report:?}");
    assert!(app.stub().removals().is_empty(), "no call after the cut-off");

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.corrected, 1, "{report:?}");
    let removed: Vec<String> = app.stub().removals().into_iter().map(|r| r.identity).collect();
    assert_eq!(removed, [banned.to_string()]);
}

/// A room LiveKit lists again stops its missing clock at once, even when its
/// sync then fails (`ListParticipants` held past its timeout, which only the
/// stand-in can do): otherwise the old clock stayed, and the next gap in the
/// listing ended the stream at once, as of its first absence.
#[tokio::test]
async fn a_room_listed_again_stops_its_missing_clock_even_when_its_sync_fails() {
    let app = app_on_the_stand_in().await;
    app.start_stream(Uuid::new_v4(), "blinking").await;
    let room = RoomName::parse("blinking".into()).unwrap();
    app.state.livekit.delete_room(&room).await.unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.missing, report.ended), (1, 0), "{report:?}");
    let missing_since = || async {
        app.stream_row("blinking")
            .await
            .unwrap()
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_missing_since")
    };
    assert!(missing_since().await.is_some(), "the clock started");

    app.stub().set_participants("blinking", Vec::new());
    let listing = app.stub().hold("ListParticipants");
    let report = reconcile(&app.state, GRACE).await.unwrap();
    listing.release();
    assert_eq!((report.synced, report.failed), (0, 1), "{report:?}");
    assert!(report.nothing_got_through());
    assert_eq!(missing_since().await, None, "listed again: the clock stopped");
}

/// The same when the room's row was held as the run began (a webhook's
/// count write, the flusher), so the run's first statement left its clock
/// running: the room's own stop comes before its participants are listed,
/// not after a listing that then fails.
#[tokio::test]
async fn a_room_listed_again_while_its_row_is_held_stops_its_clock_even_when_its_sync_fails() {
    use std::sync::atomic::AtomicBool;
    let app = app_on_the_stand_in().await;
    app.start_stream(Uuid::new_v4(), "held-blinking").await;
    let admin = app.db().await;
    admin
        .batch_execute(
            "UPDATE live_streams SET room_missing_since = now() - interval '30 seconds' WHERE id = 'held-blinking'",
        )
        .await
        .unwrap();
    app.stub().set_participants("held-blinking", Vec::new());

    let mut holder_connection = app.db().await;
    let holder = holder_connection.transaction().await.unwrap();
    holder
        .execute(
            "SELECT FROM live_streams WHERE id = 'held-blinking' FOR NO KEY UPDATE",
            &[],
        )
        .await
        .unwrap();
    let listing = app.stub().hold("ListParticipants");
    let ran = AtomicBool::new(false);
    let run = reconcile_noting_its_return(&app, &ran);
    // Let go of the row once the run waits for it, or once it lists the
    // participants without having waited.
    let release = async {
        tokio::select! {
            () = listing.arrived() => {}
            _ = app.until_a_statement_waits_for_a_lock(&ran) => {}
        }
        holder.rollback().await.unwrap();
    };
    let (report, ()) = tokio::join!(run, release);
    listing.release();
    let report = report.unwrap();
    assert_eq!((report.synced, report.failed), (0, 1), "{report:?}");
    let missing_since: Option<chrono::DateTime<chrono::Utc>> = app
        .stream_row("held-blinking")
        .await
        .unwrap()
        .get("room_missing_since");
    assert_eq!(missing_since, None, "listed again: the clock stopped");
}

/// A stream the reconciler ends because LiveKit stopped listing its room is
/// not recorded with its room closed: the listing was the only witness, and
/// a room it missed may still be open, its host broadcasting to a stream
/// that has ended. The next run closes it. (The stand-in leaves the room out
/// of its listings by dropping it for a while: a gap only it can make.)
#[tokio::test]
async fn a_room_the_listing_missed_is_closed_once_its_stream_has_ended() {
    let app = app_on_the_stand_in().await;
    app.start_stream(Uuid::new_v4(), "missed").await;
    let room = RoomName::parse("missed".into()).unwrap();
    app.state.livekit.delete_room(&room).await.unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.missing, report.ended), (1, 0), "{report:?}");
    let admin = app.db().await;
    admin
        .batch_execute("UPDATE live_streams SET room_missing_since = now() - interval '121 seconds'")
        .await
        .unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.ended, 1, "{report:?}");
    let closed_at = || async {
        app.stream_row("missed")
            .await
            .unwrap()
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_closed_at")
    };
    assert_eq!(closed_at().await, None, "nothing closed the room yet");

    app.stub().set_participants("missed", Vec::new());
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.rooms_closed, 1, "{report:?}");
    assert!(!app.stub().has_room("missed"), "the room is closed");
    assert!(closed_at().await.is_some());
}

/// A host whose stream the database would end (out of the room for
/// `HOST_RETURN_SECONDS` by its sessions) but who came back after the room's
/// listing, their join's webhook still on its way, keeps the stream: the
/// reconciler asks LiveKit for the host once more before it ends anything,
/// as the end closes the room and would cut the host off. (The stand-in
/// lets the host back between the listing and that question.)
#[tokio::test]
async fn a_host_back_after_the_listing_is_not_cut_off_by_the_end_of_their_stream() {
    let app = app_on_the_stand_in().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "host-back").await;
    app.db()
        .await
        .execute(
            "WITH started AS (
                 UPDATE live_streams SET created_at = now() - interval '1 hour' WHERE id = 'host-back')
             INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at)
             VALUES ('host-back', 'PA_gone', $1, false, true, now() - interval '121 seconds')",
            &[&host.to_string()],
        )
        .await
        .unwrap();
    app.stub().set_participants("host-back", Vec::new());
    let asked = app.stub().hold("GetParticipant");
    let back = async {
        asked.arrived().await;
        app.stub().set_participants(
            "host-back",
            vec![participant(&host.to_string(), "PA_back", false)],
        );
        asked.release();
    };
    let (report, ()) = tokio::join!(reconcile(&app.state, GRACE), back);
    let report = report.unwrap();
    assert_eq!((report.synced, report.hosts_gone), (1, 0), "{report:?}");
    assert!(
        app.stream_row("host-back")
            .await
            .unwrap()
            .get::<_, bool>("is_live")
    );
    assert!(app.stub().has_room("host-back"), "the room stays open");

    // Still away when asked: the stream ends and its room closes.
    app.stub().set_participants("host-back", Vec::new());
    app.db()
        .await
        .execute(
            "UPDATE live_participant_sessions SET left_at = now() - interval '121 seconds'
             WHERE room_name = 'host-back'",
            &[],
        )
        .await
        .unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.hosts_gone, 1, "{report:?}");
    assert!(!app.stub().has_room("host-back"));
}

/// A viewer's first join in flight (its session and presence row inserted,
/// not yet committed) when `/live/end` runs: the end cannot see those rows,
/// so the join commits a presence row into a stream that has ended. Nothing
/// counts it (the shards are closed), and the reconciler deletes it.
#[tokio::test]
async fn a_presence_row_a_join_commits_during_the_end_is_pruned() {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4().to_string());
    app.start_stream(host, "late-arrival").await;

    let mut join_connection = app.db().await;
    let join = join_connection.transaction().await.unwrap();
    let step = join
        .query_one(
            "SELECT delta, arrived FROM live_presence_change('late-arrival', 'PA_late', $1, true, 'join', '')",
            &[&viewer],
        )
        .await
        .unwrap();
    assert_eq!(step.get::<_, i32>(0), 1);
    let arrived: f64 = step.get(1);
    let end = app
        .call(
            end_stream,
            Some(&app.token_for(host)),
            r#"{"roomName":"late-arrival"}"#,
        )
        .await;
    assert_eq!(end.status, 200, "{}", end.body);
    let counted: bool = join
        .query_one(
            "SELECT live_count_add('late-arrival', hashtext($1) & 15, 1, 1, $2, 0)",
            &[&viewer, &arrived],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!counted, "the end closed the shards first");
    join.commit().await.unwrap();
    let present = "SELECT count(*) FROM live_presence WHERE room_name = 'late-arrival'";
    assert_eq!(
        app.db_value::<i64>(present, &[]).await,
        1,
        "the end could not see the join's row"
    );
    assert_eq!(app.viewer_count("late-arrival").await, 0);

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.presence_pruned, 1, "{report:?}");
    assert_eq!(app.db_value::<i64>(present, &[]).await, 0);
}

/// A late `room_finished` of the room's old instance, delivered while a
/// retried `/live/start` records the new instance, ends nothing: the webhook
/// reads the instance under the stream's row lock, so it waits for the start
/// and reads what it committed. Before, it read the old sid without a lock,
/// waited for the row in its update, and then ended the stream the start had
/// just moved to a new room.
#[tokio::test]
async fn a_late_room_finished_does_not_end_a_stream_a_retried_start_moved_to_a_new_room() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "moved").await;
    let old_sid: String = app
        .db_value("SELECT room_sid FROM live_streams WHERE id = 'moved'", &[])
        .await;
    let mut start_connection = app.db().await;
    let start = start_connection.transaction().await.unwrap();
    start
        .execute(
            "UPDATE live_streams SET room_sid = 'RM_new_instance' WHERE id = 'moved'",
            &[],
        )
        .await
        .unwrap();

    let admin = app.db().await;
    let finished = json!({
        "id": "EV_old_instance_finished",
        "event": "room_finished",
        "room": {"name": "moved", "sid": old_sid},
        "createdAt": chrono::Utc::now().timestamp().to_string(),
    })
    .to_string();
    let delivered = app.deliver(signed_webhook(&finished, LIVEKIT_API_SECRET));
    let the_start_commits = async {
        until_waiting(&admin, Waiting::AnyLock, 1).await;
        start.commit().await.unwrap();
    };
    let (delivered, ()) = tokio::join!(delivered, the_start_commits);
    assert_eq!(delivered.status, 200, "{}", delivered.body);
    let row = app.stream_row("moved").await.unwrap();
    assert!(row.get::<_, bool>("is_live"), "the moved stream is still live");
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_closed_at")
            .is_none()
    );
}

/// The reconciler finds a viewer gone whose leave it never saw and another
/// present whose join it never saw: the count stays 1, and so does the peak.
/// It applies its shards' losses before their gains; before, a gaining shard
/// that came first in shard order read the gone viewer's shard for the peak
/// and recorded 2.
#[tokio::test]
async fn a_reconcile_that_swaps_one_viewer_for_another_records_no_higher_peak() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let started = app.start_stream(host, "swapped").await;
    let _host = app.join(started["token"].as_str().unwrap()).await.unwrap();
    let admin = app.db().await;
    let mut gone = Uuid::new_v4().to_string();
    while shard_of(&admin, &gone).await == 0 {
        gone = Uuid::new_v4().to_string();
    }
    let mut arrived = Uuid::new_v4();
    while shard_of(&admin, &arrived.to_string()).await >= shard_of(&admin, &gone).await {
        arrived = Uuid::new_v4();
    }
    // Webhooks said `gone` joined (their leave will be lost); `arrived`
    // joins for real, their join lost too.
    join(&app, "EV_gone", "swapped", &gone, "PA_gone").await;
    app.wait_for_webhooks("participant_joined", 1).await;
    app.lose_webhooks(true);
    let _arrived = app.join_as(arrived, "swapped").await;
    app.livekit()
        .wait_for_participants("swapped", "the host and the new viewer", |ps| ps.len() == 2)
        .await;
    app.wait_for_lost_webhooks("participant_joined", 1).await;
    assert_eq!(
        app.viewer_count("swapped").await,
        1,
        "the gone viewer, as webhooks said"
    );
    reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(app.viewer_count("swapped").await, 1);
    let peak: i32 = app
        .db_value(
            "SELECT max(peak_seen) FROM live_viewer_counts WHERE room_name = 'swapped'",
            &[],
        )
        .await;
    assert_eq!(peak, 1, "never more than one viewer at a time");
}

/// An invited viewer's last leave in flight (their session and presence row
/// locked, their stage row cleared, their count shard next) and their
/// accept: the accept waits for the leave and reads what it left, so it is
/// refused and nobody is on stage (migration 0024). Before, the accept read
/// the row without a lock, waited only to write it, and put on stage a
/// viewer who had gone, holding a guest slot.
#[tokio::test]
async fn an_accept_racing_the_viewers_leave_puts_nobody_on_stage() {
    let app = TestApp::spawn().await;
    let (host, guest) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "stage-race").await;
    join(&app, "EV_guest_in", "stage-race", &guest.to_string(), "PA_guest").await;
    let invite = json!({"roomName": "stage-race", "userId": guest}).to_string();
    let invited = app
        .call(invite_to_stage, Some(&app.token_for(host)), &invite)
        .await;
    assert_eq!(invited.status, 200, "{}", invited.body);

    let mut leave_connection = app.db().await;
    let leave = leave_connection.transaction().await.unwrap();
    let step = leave
        .query_one(
            "SELECT delta FROM live_presence_change('stage-race', 'PA_guest', $1, true, 'leave', '')",
            &[&guest.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(step.get::<_, i32>(0), -1);
    let admin = app.db().await;
    let guest_token = app.token_for(guest);
    let answer = json!({"roomName": "stage-race"}).to_string();
    let accepting = app.call(accept_stage, Some(&guest_token), &answer);
    let the_leave_commits = async {
        until_waiting(&admin, Waiting::AnyLock, 1).await;
        leave.commit().await.unwrap();
    };
    let (accepted, ()) = tokio::join!(accepting, the_leave_commits);
    accepted.assert_error(409, "not_invited");
    let standing: i64 = app
        .db_value(
            "SELECT count(*) FROM live_stage WHERE room_name = 'stage-race'
               AND (on_stage_since IS NOT NULL OR invited_at IS NOT NULL)",
            &[],
        )
        .await;
    assert_eq!(standing, 0);
}

/// A test app whose functions' role has its lock_timeout (2 s) lifted in
/// the test database, so that only a cancel can end a statement's wait for a
/// lock; and the test's admin connection. Lifted before the functions' first
/// connection, which reads it.
async fn spawn_without_lock_timeout(
    settings: Vec<(&'static str, String)>,
) -> (TestApp, tokio_postgres::Client) {
    let app = TestApp::spawn_with_settings(settings).await;
    let admin = app.db().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER ROLE {API_ROLE} IN DATABASE %I SET lock_timeout = ''60s''', current_database()); END $$"
        ))
        .await
        .unwrap();
    (app, admin)
}

/// A stream row held by another transaction (an end closing a big room
/// holds its row while it closes the sessions) does not hold up the
/// once-a-second flush of every other room: the flusher skips that row,
/// and a later tick writes it.
#[tokio::test]
async fn a_stream_row_held_elsewhere_does_not_hold_up_the_flush_of_the_others() {
    let app = TestApp::spawn().await;
    for room in ["held-room", "free-room"] {
        app.start_stream(Uuid::new_v4(), room).await;
    }
    let admin = app.db().await;
    let stale_copies =
        "UPDATE live_streams SET viewer_count = 7, viewer_count_written_at = now() - interval '1 minute'";
    admin.batch_execute(stale_copies).await.unwrap();
    let copies = || async {
        admin
            .query("SELECT id, viewer_count FROM live_streams ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i32>(1)))
            .collect::<Vec<_>>()
    };

    let held = app.hold_stream_row("held-room").await;
    let flushed = shared::scheduled::flush::flush_once(&app.state).await;
    assert_eq!(
        flushed.ok(),
        Some(1),
        "the free room written, the held one skipped"
    );
    assert_eq!(
        copies().await,
        [("free-room".to_owned(), 0), ("held-room".to_owned(), 7)]
    );

    held.batch_execute("ROLLBACK").await.unwrap();
    let flushed = shared::scheduled::flush::flush_once(&app.state).await;
    assert_eq!(flushed.ok(), Some(1), "the held room's turn");
    assert_eq!(
        copies().await,
        [("free-room".to_owned(), 0), ("held-room".to_owned(), 0)]
    );
}
