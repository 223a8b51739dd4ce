//! The scheduled reconciler against LiveKit's real server: webhooks are lost
//! on purpose (the app's endpoint drops them) and the next run repairs.

use std::time::{Duration, Instant};

use livekit_api::access_token::VideoGrants;
use serde_json::json;
use shared::scheduled::reconcile::{ReconcileReport, reconcile, reconcile_until};
use uuid::Uuid;

use crate::helpers::{LIVEKIT_API_SECRET, LiveKitMode, TestApp, signed_webhook, webhook_event};

const GRACE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn with_nothing_live_a_run_makes_no_livekit_call() {
    let app = TestApp::spawn().await;
    // LiveKit unreachable: a run that needed it would fail.
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report, ReconcileReport::default());
}

#[tokio::test]
async fn viewer_counts_follow_livekit_when_webhooks_were_lost() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let started = app.start_stream(host, "counted").await;
    let ada = Uuid::new_v4().to_string();
    let _host = app.join(started["token"].as_str().unwrap()).await.unwrap();
    app.wait_for_webhooks("participant_joined", 1).await;
    // Webhooks said ada joined; her leave was lost, and so is what happens next.
    let body = webhook_event(
        "EV_1",
        "participant_joined",
        "counted",
        Some((&ada, "PA_ada", false)),
    );
    assert_eq!(
        app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET))
            .await
            .status,
        200
    );
    app.lose_webhooks(true);
    let (_, _bob) = app.viewer_in("counted").await;
    let recorder_token = app.livekit().token(
        "recorder",
        "counted",
        VideoGrants {
            hidden: true,
            can_subscribe: Some(true),
            can_publish: Some(false),
            ..VideoGrants::default()
        },
    );
    let _recorder = app.join(&recorder_token).await.expect("a hidden recorder joins");
    app.livekit()
        .wait_for_participants("counted", "host, bob and the recorder in the room", |ps| {
            ps.len() == 3
        })
        .await;
    app.wait_for_lost_webhooks("participant_joined", 1).await;
    assert_eq!(app.viewer_count("counted").await, 1, "ada, whose leave was lost");
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.live, report.synced, report.failed), (1, 1, 0));
    assert_eq!(app.viewer_count("counted").await, 1, "bob only, once");

    // The state stays right for later webhooks: ada's late leave changes nothing.
    let body = webhook_event(
        "EV_2",
        "participant_left",
        "counted",
        Some((&ada, "PA_ada", false)),
    );
    let late = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(app.viewer_count("counted").await, 1);
}

/// The count the reconciler repairs reaches the room: a viewer whose join
/// webhook was lost is counted by the next run, and everyone in the room is
/// told the new count, though no webhook and no flush will change it again.
#[tokio::test]
async fn the_count_a_run_repairs_is_told_to_the_room() {
    let app = TestApp::spawn().await;
    let started = app.start_stream(Uuid::new_v4(), "told").await;
    let host = app.join(started["token"].as_str().unwrap()).await.unwrap();
    let (_, _ada) = app.viewer_in("told").await;
    app.wait_for_viewer_count("told", 1).await;
    app.lose_webhooks(true);
    let (_, _bob) = app.viewer_in("told").await;
    app.livekit()
        .wait_for_participants("told", "host, ada and bob in the room", |ps| ps.len() == 3)
        .await;
    app.wait_for_lost_webhooks("participant_joined", 1).await;
    assert_eq!(app.viewer_count("told").await, 1, "bob's join was lost");

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.synced, report.failed), (1, 0), "{report:?}");
    assert_eq!(app.viewer_count("told").await, 2);
    let deadline = Instant::now() + crate::helpers::SETTLE;
    loop {
        let counts: Vec<i64> = host
            .data_on("viewers")
            .iter()
            .map(|p| p.payload["viewerCount"].as_i64().unwrap())
            .collect();
        if counts.last() == Some(&2) {
            break;
        }
        assert!(Instant::now() < deadline, "the room was told {counts:?}, never 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stream deleted while its room is open (its streamer's account deleted
/// mid-broadcast: the key's cascade) leaves no row to close the room by. Its
/// name stays taken until the next run closes that room and every client in
/// it is disconnected; then the name is free again, in a new room.
#[tokio::test]
async fn the_room_of_a_stream_deleted_while_live_is_closed_and_its_name_held_until_then() {
    let app = TestApp::spawn().await;
    let (host, newcomer) = (Uuid::new_v4(), Uuid::new_v4());
    let room = "deleted-while-live";
    app.start_stream(host, room).await;
    let first_instance = app.livekit().room(room).await.expect("the room is open").sid;
    let (_, viewer) = app.viewer_in(room).await;
    app.db()
        .await
        .execute("DELETE FROM live_streams WHERE id = $1", &[&room])
        .await
        .unwrap();

    // Nobody's: not the newcomer's, and not the deleted stream's streamer's
    // either (a start takes over or lets go of its own streamer's claims).
    let start = json!({"title": "Mine now", "roomName": room}).to_string();
    for user in [newcomer, host] {
        app.call(shared::handlers::start_stream, Some(&app.token_for(user)), &start)
            .await
            .assert_error(409, "room_taken");
    }

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.rooms_closed, report.failed), (1, 0), "{report:?}");
    viewer.wait_disconnected().await;
    assert!(!app.has_room(room).await, "the room is closed");
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.rooms_closed, 0, "closed once: {report:?}");

    app.start_stream(newcomer, room).await;
    let second_instance = app.livekit().room(room).await.expect("the room is open").sid;
    assert_ne!(
        first_instance, second_instance,
        "a new room, not the deleted stream's"
    );
}

#[tokio::test]
async fn a_stream_whose_room_is_gone_ends_after_the_grace_period() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "vanished").await;
    // The room closes and its room_finished webhook is lost.
    app.lose_webhooks(true);
    app.livekit().delete_room("vanished").await;

    let first = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((first.missing, first.ended), (1, 0));
    assert!(
        app.stream_row("vanished")
            .await
            .unwrap()
            .get::<_, bool>("is_live"),
        "still within grace"
    );

    app.db()
        .await
        .execute(
            "UPDATE live_streams SET room_missing_since = now() - interval '121 seconds'",
            &[],
        )
        .await
        .unwrap();
    let second = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(second.ended, 1);
    let row = app.stream_row("vanished").await.unwrap();
    assert!(!row.get::<_, bool>("is_live"));
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("ended_at")
            .is_some()
    );
}

/// The stream of a room that vanished (its webhooks lost) ends when the room
/// was first found missing, not a grace period and a run later: its duration
/// and the watch time of the viewers it still counted stop there.
#[tokio::test]
async fn a_stream_whose_room_vanished_ends_when_it_was_found_missing() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "gone-early").await;
    let viewer = Uuid::new_v4().to_string();
    let joined = webhook_event(
        "EV_gone_join",
        "participant_joined",
        "gone-early",
        Some((&viewer, "PA_v", false)),
    );
    assert_eq!(
        app.deliver(signed_webhook(&joined, LIVEKIT_API_SECRET))
            .await
            .status,
        200
    );
    // Started 15 minutes ago, the viewer there for 10, the room missing for
    // the last 5 (its closing and the viewer's leave never arrived).
    app.lose_webhooks(true);
    app.livekit().delete_room("gone-early").await;
    app.db()
        .await
        .batch_execute(
            "UPDATE live_streams SET created_at = now() - interval '15 minutes',
                                     room_missing_since = now() - interval '5 minutes'
             WHERE id = 'gone-early';
             UPDATE live_presence SET joined_at = joined_at - interval '10 minutes' WHERE room_name = 'gone-early';
             UPDATE live_viewer_counts SET present_since_sum = present_since_sum - 600 * viewers
             WHERE room_name = 'gone-early';",
        )
        .await
        .unwrap();
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.ended, 1, "{report:?}");
    let row = app.stream_row("gone-early").await.unwrap();
    let missing_since: chrono::DateTime<chrono::Utc> = row.get("room_missing_since");
    assert_eq!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("ended_at"),
        Some(missing_since),
        "ended when the room was found missing"
    );
    let stats = app
        .send(
            shared::handlers::stream_stats,
            crate::helpers::get_request(Some(&app.token_for(host)), &[], Some("gone-early")),
        )
        .await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let seconds = |field: &str| stats.body["stats"][field].as_f64().unwrap();
    assert!(
        (599.0..605.0).contains(&seconds("durationSeconds")),
        "{}",
        stats.body
    );
    assert!(
        (299.0..305.0).contains(&seconds("totalWatchSeconds")),
        "{}",
        stats.body
    );
    let left_at_end: bool = app
        .db_value(
            "SELECT bool_and(p.left_at = s.ended_at) FROM live_participant_sessions p
             JOIN live_streams s ON s.id = p.room_name WHERE p.room_name = 'gone-early'",
            &[],
        )
        .await;
    assert!(left_at_end, "the sessions it closed left at its end");
}

#[tokio::test]
async fn a_room_that_comes_back_within_grace_clears_the_clock() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "flaky").await;
    app.lose_webhooks(true);
    app.livekit().delete_room("flaky").await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.missing, report.ended), (1, 0), "{report:?}");
    assert!(
        app.stream_row("flaky")
            .await
            .unwrap()
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_missing_since")
            .is_some(),
        "the clock started"
    );
    app.livekit().create_room("flaky", "").await;
    reconcile(&app.state, GRACE).await.unwrap();
    let row = app.stream_row("flaky").await.unwrap();
    assert!(row.get::<_, bool>("is_live"));
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_missing_since")
            .is_none()
    );
}

#[tokio::test]
async fn two_runs_at_once_agree() {
    let app = TestApp::spawn().await;
    app.lose_webhooks(true);
    let mut viewers = Vec::new();
    for i in 0..4 {
        let room = format!("busy-{i}");
        app.start_stream(Uuid::new_v4(), &room).await;
        for _ in 0..i {
            viewers.push(app.viewer_in(&room).await.1);
        }
    }
    app.start_stream(Uuid::new_v4(), "gone").await;
    app.livekit().delete_room("gone").await;
    let (a, b) = tokio::join!(
        reconcile(&app.state, Duration::ZERO),
        reconcile(&app.state, Duration::ZERO)
    );
    assert_eq!((a.unwrap().failed, b.unwrap().failed), (0, 0));
    for i in 0..4 {
        assert_eq!(app.viewer_count(&format!("busy-{i}")).await, i);
    }
    assert!(!app.stream_row("gone").await.unwrap().get::<_, bool>("is_live"));
}

#[tokio::test]
async fn an_unreachable_livekit_fails_the_run_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "steady").await;
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let error = reconcile(&app.state, Duration::ZERO).await.unwrap_err();
    assert_eq!(error.code(), "unavailable");
    let row = app.stream_row("steady").await.unwrap();
    assert!(row.get::<_, bool>("is_live"));
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_missing_since")
            .is_none()
    );
}

/// A run that has no time left starts no room and no pruning, and says how
/// many rooms it left; the next run with time does them all. (A scheduled run
/// stops starting rooms 15 s before its invocation's deadline, and pruning
/// after 20 s, so neither a slow LiveKit nor a backlog can make Lambda cut
/// it off unlogged.)
#[tokio::test]
async fn a_run_out_of_time_leaves_the_rest_to_the_next_run() {
    let app = TestApp::spawn().await;
    for (host, room) in [
        (Uuid::new_v4(), "budget-a"),
        (Uuid::new_v4(), "budget-b"),
        (Uuid::new_v4(), "budget-c"),
    ] {
        app.start_stream(host, room).await;
    }
    app.db()
        .await
        .batch_execute(
            "INSERT INTO live_webhook_events (id, received_at)
             SELECT 'EV_backlog_' || n, now() - interval '2 days' FROM generate_series(1, 10) AS n",
        )
        .await
        .unwrap();
    let report = reconcile_until(&app.state, GRACE, Some(Instant::now()))
        .await
        .unwrap();
    assert_eq!(report.live, 3);
    assert_eq!(report.left_for_next_run, 3, "{report:?}");
    assert_eq!(report.synced + report.missing, 0, "{report:?}");
    assert_eq!(report.webhook_ids_pruned, 0, "{report:?}");

    let report = reconcile_until(&app.state, GRACE, Some(Instant::now() + Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        (report.live, report.synced, report.left_for_next_run),
        (3, 3, 0),
        "{report:?}"
    );
    assert_eq!(report.webhook_ids_pruned, 10, "{report:?}");
}

/// The database as it is once LiveKit lost the room instance it recorded
/// for `room`'s stream (`RM_lost`).
async fn lose_the_recorded_instance(app: &TestApp, room: &str) {
    app.db()
        .await
        .execute(
            "UPDATE live_streams SET room_sid = 'RM_lost' WHERE id = $1",
            &[&room],
        )
        .await
        .unwrap();
}

async fn recorded_instance(app: &TestApp, room: &str) -> String {
    app.db_value("SELECT room_sid FROM live_streams WHERE id = $1", &[&room])
        .await
}

/// LiveKit lost the stream's room instance without a `room_finished` (a
/// restarted server) and the streamer's reconnect opened the room again
/// under a new sid: every webhook of it is ignored as another instance's.
/// The next run records the new instance as the stream's (the streamer is in
/// it), repairs the count, and later joins count by their webhooks again.
#[tokio::test]
async fn a_room_the_streamer_opened_again_is_adopted_by_the_next_run() {
    let app = TestApp::spawn().await;
    let (host, room) = (Uuid::new_v4(), "opened-again");
    let started = app.start_stream(host, room).await;
    let _host = app.join(started["token"].as_str().unwrap()).await.unwrap();
    app.wait_for_webhooks("participant_joined", 1).await;
    let open_sid = app.livekit().room(room).await.expect("the room is open").sid;
    lose_the_recorded_instance(&app, room).await;

    let (_, _ada) = app.viewer_in(room).await;
    app.wait_for_webhooks("participant_joined", 2).await;
    assert_eq!(
        app.viewer_count(room).await,
        0,
        "ada's join was another instance's"
    );

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report.instances_adopted, 1, "{report:?}");
    assert_eq!(app.viewer_count(room).await, 1, "the run counted ada");
    assert_eq!(recorded_instance(&app, room).await, open_sid);

    let (_, _bob) = app.viewer_in(room).await;
    app.wait_for_viewer_count(room, 2).await;
}

/// A new instance only viewers are in (the streamer gone, the recorded
/// instance's `room_finished` perhaps still on its way) is not adopted: that
/// `room_finished` must still end the stream.
#[tokio::test]
async fn a_room_only_viewers_opened_again_is_not_adopted() {
    let app = TestApp::spawn().await;
    let (host, room) = (Uuid::new_v4(), "viewers-only");
    app.start_stream(host, room).await;
    lose_the_recorded_instance(&app, room).await;
    let (_, _ada) = app.viewer_in(room).await;
    app.wait_for_webhooks("participant_joined", 1).await;

    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!((report.synced, report.instances_adopted), (1, 0), "{report:?}");
    assert_eq!(recorded_instance(&app, room).await, "RM_lost");
}

/// Who is the host for `HOST_RETURN_SECONDS`: the streamer's identity, or a
/// side connection of theirs (`<streamer>#<name>`, publishing for them),
/// whose open session keeps the stream; a host who never joined has been out
/// of the room since the start.
#[tokio::test]
async fn a_side_connection_keeps_its_hosts_stream_and_a_host_who_never_came_is_gone_since_the_start() {
    let app = TestApp::spawn().await;
    let (absent, publishing) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(absent, "never-came").await;
    app.start_stream(publishing, "side-only").await;
    let admin = app.db().await;
    admin
        .batch_execute(
            "UPDATE live_streams SET created_at = now() - interval '121 seconds'
             WHERE id IN ('never-came', 'side-only')",
        )
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined)
             VALUES ('side-only', 'PA_side', $1, false, true)",
            &[&format!("{publishing}#obs")],
        )
        .await
        .unwrap();
    let end = |room: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT live_end_stream_its_host_left($1, interval '120 seconds')",
                    &[&room],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    assert!(
        !end("side-only").await,
        "the host publishes through its side connection"
    );
    assert!(end("never-came").await, "gone since the start");
    assert!(
        !app.stream_row("never-came")
            .await
            .unwrap()
            .get::<_, bool>("is_live")
    );

    let side_connection_left = |seconds_ago: f64| {
        let admin = &admin;
        async move {
            admin
                .execute(
                    "UPDATE live_participant_sessions SET left_at = now() - make_interval(secs => $1)
                     WHERE room_name = 'side-only'",
                    &[&seconds_ago],
                )
                .await
                .unwrap();
        }
    };
    side_connection_left(30.0).await;
    assert!(!end("side-only").await, "left 30 s ago: may come back");
    side_connection_left(121.0).await;
    assert!(end("side-only").await);
}

/// The reconciler's sync of a room compares its sessions with LiveKit's
/// listing (`sid = ANY (p_sids)`). PL/pgSQL plans a statement generically
/// after its first five calls on one connection when that looks no dearer,
/// and then the listing is a parameter Postgres does not hash: each session
/// was compared with every listed sid, and a room of 50,000 took about 18 s
/// a call from the sixth call on a connection (175 ms before), past the
/// statement timeout, so the biggest rooms were never synced. Those
/// statements are now planned for each call's listing (migration 0066).
/// Shown by the plans themselves (auto_explain, sent to this client as
/// notices) over more calls on one connection than PL/pgSQL waits.
#[tokio::test]
async fn the_sync_of_a_room_is_planned_for_its_own_listing() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "planned").await;
    let (client, mut connection) = tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (sender, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notice(notice)) = message {
                let _ = sender.send(notice.message().to_owned());
            }
        }
    });
    client
        .batch_execute(
            "LOAD 'auto_explain';
             SET auto_explain.log_min_duration = 0;
             SET auto_explain.log_nested_statements = on;
             SET auto_explain.log_level = notice",
        )
        .await
        .unwrap();
    for _ in 0..10 {
        client
            .query_one(
                "SELECT live_sync_sessions('planned', now(), ARRAY['PA_a', 'PA_b'], ARRAY['a', 'b'],
                                           ARRAY[true, true], ARRAY['A', 'B'], ARRAY[now(), now()], 60)",
                &[],
            )
            .await
            .unwrap();
    }
    drop(client);
    let mut plans = Vec::new();
    while let Some(plan) = notices.recv().await {
        plans.push(plan);
    }
    // The plans' own conditions on the sessions' sids, not the statements'
    // text (which names its parameters either way).
    let comparing: Vec<&str> = plans
        .iter()
        .flat_map(|plan| plan.lines())
        .filter(|line| {
            (line.contains("Filter:") || line.contains("Cond:"))
                && line.contains("sid")
                && (line.contains("ANY (") || line.contains("ALL ("))
        })
        .collect();
    assert!(
        comparing.len() >= 10,
        "a plan comparing sessions with the listing on every call: {plans:#?}"
    );
    for condition in comparing {
        assert!(
            !condition.contains("ANY ($") && !condition.contains("ALL ($"),
            "planned without the listing's values: {condition}"
        );
    }
}
