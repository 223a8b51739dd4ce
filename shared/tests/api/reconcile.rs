//! The scheduled reconciler against the LiveKit test server.

use std::time::Duration;

use livekit_stub::participant;
use shared::reconcile::{ReconcileReport, reconcile};
use uuid::Uuid;

use crate::helpers::{AppOptions, LIVEKIT_API_SECRET, LiveKitMode, TestApp, signed_webhook, webhook_event};

const GRACE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn with_nothing_live_a_run_makes_no_livekit_call() {
    let app = TestApp::spawn().await;
    let report = reconcile(&app.state, GRACE).await.unwrap();
    assert_eq!(report, ReconcileReport::default());
    assert!(app.livekit.calls().is_empty());
}

#[tokio::test]
async fn viewer_counts_follow_livekit_when_webhooks_were_lost() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "counted").await;
    let (ada, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    // Webhooks said ada joined; her leave was lost, and bob's join too.
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
    app.livekit.set_participants(
        "counted",
        vec![
            participant(&host.to_string(), "PA_host", false),
            participant(&bob, "PA_bob", false),
            participant(&bob, "PA_bob2", false),
            participant("recorder", "PA_rec", true),
        ],
    );
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
    app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
    assert_eq!(app.viewer_count("counted").await, 1);
    let list_participants = app.livekit.calls_to("ListParticipants");
    assert!(
        list_participants[0].claims.video.room_admin && list_participants[0].claims.video.room == "counted"
    );
}

#[tokio::test]
async fn a_stream_whose_room_is_gone_ends_after_the_grace_period() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "vanished").await;
    app.livekit.remove_room("vanished");

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

#[tokio::test]
async fn a_room_that_comes_back_within_grace_clears_the_clock() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "flaky").await;
    app.livekit.remove_room("flaky");
    reconcile(&app.state, GRACE).await.unwrap();
    app.livekit.add_room("flaky");
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
    let app = TestApp::spawn_with(AppOptions {
        settings: vec![("RECONCILE_GRACE_SECONDS", "0".into())],
        ..AppOptions::default()
    })
    .await;
    for i in 0..4 {
        app.start_stream(Uuid::new_v4(), &format!("busy-{i}")).await;
        app.livekit.set_participants(
            &format!("busy-{i}"),
            (0..i)
                .map(|n| participant(&Uuid::new_v4().to_string(), &format!("PA_{i}_{n}"), false))
                .collect(),
        );
    }
    app.start_stream(Uuid::new_v4(), "gone").await;
    app.livekit.remove_room("gone");
    let (a, b) = tokio::join!(
        reconcile(&app.state, app.state.reconcile_grace),
        reconcile(&app.state, app.state.reconcile_grace)
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
    app.livekit.set_mode(LiveKitMode::Failing);
    let error = reconcile(&app.state, Duration::ZERO).await.unwrap_err();
    assert_eq!(error.code(), "unavailable");
    let row = app.stream_row("steady").await.unwrap();
    assert!(row.get::<_, bool>("is_live"));
    assert!(
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>("room_missing_since")
            .is_none()
    );
}
