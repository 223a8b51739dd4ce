//! Moderation by the streamer: kick, ban, unban, mute, unmute.

use serde_json::json;
use shared::handlers::{issue_token, moderate, post_message};
use uuid::Uuid;

use crate::helpers::{LiveKitMode, TestApp, verify_livekit_token};
use livekit_stub::participant;

const ROOM: &str = "moderated";

async fn room_with_viewer() -> (TestApp, Uuid, Uuid) {
    let app = TestApp::spawn().await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, ROOM).await;
    app.livekit.set_participants(
        ROOM,
        vec![
            participant(&host.to_string(), "PA_host", false),
            participant(&viewer.to_string(), "PA_viewer", false),
        ],
    );
    (app, host, viewer)
}

async fn act(app: &TestApp, by: Uuid, target: Uuid, action: &str) -> crate::helpers::TestResponse {
    let body = json!({"roomName": ROOM, "userId": target, "action": action}).to_string();
    app.call(moderate, Some(&app.token_for(by)), &body).await
}

async fn token_for_room(app: &TestApp, user: Uuid) -> crate::helpers::TestResponse {
    let body = json!({"roomName": ROOM, "participantName": "Viewer"}).to_string();
    app.call(issue_token, Some(&app.token_for(user)), &body).await
}

async fn chat(app: &TestApp, user: Uuid) -> crate::helpers::TestResponse {
    let body = json!({"roomName": ROOM, "text": "hello"}).to_string();
    app.call(post_message, Some(&app.token_for(user)), &body).await
}

#[tokio::test]
async fn only_the_streamer_moderates() {
    let (app, _, viewer) = room_with_viewer().await;
    act(&app, Uuid::new_v4(), viewer, "ban")
        .await
        .assert_error(403, "forbidden");
    act(&app, viewer, viewer, "kick")
        .await
        .assert_error(403, "forbidden");
    assert!(app.livekit.calls_to("RemoveParticipant").is_empty());
    let count: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM live_moderation_actions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn kick_removes_the_participant_from_the_room() {
    let (app, host, viewer) = room_with_viewer().await;
    let response = act(&app, host, viewer, "kick").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.body,
        json!({"roomName": ROOM, "userId": viewer, "action": "kick", "banned": false, "muted": false, "roomUpdated": true})
    );
    let removed = app.livekit.calls_to("RemoveParticipant");
    assert_eq!(
        (removed.len(), removed[0].identity.as_str()),
        (1, viewer.to_string().as_str())
    );
    assert!(removed[0].claims.video.room_admin);
    // A kick is not a ban: they may come back.
    assert_eq!(token_for_room(&app, viewer).await.status, 200);
}

#[tokio::test]
async fn a_banned_user_is_removed_and_refused_tokens_and_chat_until_unbanned() {
    let (app, host, viewer) = room_with_viewer().await;
    let banned = act(&app, host, viewer, "ban").await;
    assert_eq!(
        (banned.status, banned.body["banned"].as_bool()),
        (200, Some(true)),
        "{}",
        banned.body
    );
    assert!(
        app.livekit
            .room(ROOM)
            .unwrap()
            .participants
            .iter()
            .all(|p| p.identity != viewer.to_string())
    );
    // The tokens minted before the ban are revoked too (nbf up to the ban's second).
    let removed = app.livekit.calls_to("RemoveParticipant");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - 5..=now + 2).contains(&removed[0].revoke_token_ts),
        "revoke_token_ts {} is the ban's time, in Unix seconds",
        removed[0].revoke_token_ts
    );

    token_for_room(&app, viewer).await.assert_error(403, "banned");
    chat(&app, viewer).await.assert_error(403, "banned");
    assert_eq!(
        token_for_room(&app, Uuid::new_v4()).await.status,
        200,
        "others are unaffected"
    );

    assert_eq!(act(&app, host, viewer, "unban").await.body["banned"], false);
    assert_eq!(token_for_room(&app, viewer).await.status, 200);
    assert_eq!(chat(&app, viewer).await.status, 201);
}

#[tokio::test]
async fn a_muted_viewer_cannot_chat_and_loses_data_publishing() {
    let (app, host, viewer) = room_with_viewer().await;
    let muted = act(&app, host, viewer, "mute").await;
    assert_eq!((muted.status, muted.body["muted"].as_bool()), (200, Some(true)));
    let update = app.livekit.calls_to("UpdateParticipant");
    let permission = update[0].permission.clone().unwrap();
    assert_eq!(update[0].identity, viewer.to_string());
    assert!(!permission.can_publish_data && permission.can_subscribe && !permission.can_publish);

    chat(&app, viewer).await.assert_error(403, "muted");
    let token = token_for_room(&app, viewer).await;
    assert_eq!(token.status, 200, "a muted viewer may still watch");
    let claims = verify_livekit_token(token.body["token"].as_str().unwrap());
    assert_eq!(
        claims.video.can_publish_data,
        Some(false),
        "a rejoin does not restore chat"
    );

    assert_eq!(act(&app, host, viewer, "unmute").await.body["muted"], false);
    let permission = app.livekit.calls_to("UpdateParticipant")[1]
        .permission
        .clone()
        .unwrap();
    assert!(permission.can_publish_data);
    assert_eq!(chat(&app, viewer).await.status, 201);
}

#[tokio::test]
async fn every_action_is_recorded() {
    let (app, host, viewer) = room_with_viewer().await;
    for action in ["mute", "unmute", "kick", "ban", "unban"] {
        assert_eq!(act(&app, host, viewer, action).await.status, 200, "{action}");
    }
    let rows = app
        .db()
        .await
        .query(
            "SELECT moderator_id, target_id, action FROM live_moderation_actions ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(Uuid, Uuid, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let expected: Vec<(Uuid, Uuid, String)> = ["mute", "unmute", "kick", "ban", "unban"]
        .iter()
        .map(|a| (host, viewer, a.to_string()))
        .collect();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn bad_moderation_requests_are_refused() {
    let (app, host, viewer) = room_with_viewer().await;
    act(&app, host, viewer, "explode")
        .await
        .assert_error(400, "invalid_request");
    act(&app, host, host, "ban")
        .await
        .assert_error(400, "invalid_request");
    let unknown = json!({"roomName": "nowhere", "userId": viewer, "action": "kick"}).to_string();
    app.call(moderate, Some(&app.token_for(host)), &unknown)
        .await
        .assert_error(404, "stream_not_found");
    let not_uuid = json!({"roomName": ROOM, "userId": "bob", "action": "kick"}).to_string();
    app.call(moderate, Some(&app.token_for(host)), &not_uuid)
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn when_livekit_is_down_a_kick_is_503_and_nothing_is_recorded() {
    let (app, host, viewer) = room_with_viewer().await;
    app.livekit.set_mode(LiveKitMode::Failing);
    act(&app, host, viewer, "kick")
        .await
        .assert_error(503, "unavailable");
    assert_eq!(recorded_actions(&app).await, 0);
}

#[tokio::test]
async fn when_livekit_is_down_a_ban_or_mute_still_holds_and_the_reconciler_applies_it() {
    let (app, host, viewer) = room_with_viewer().await;
    let muted_viewer = Uuid::new_v4();
    app.livekit.set_participants(
        ROOM,
        vec![
            participant(&host.to_string(), "PA_host", false),
            participant(&viewer.to_string(), "PA_viewer", false),
            participant(&muted_viewer.to_string(), "PA_muted", false),
        ],
    );
    app.livekit.set_mode(LiveKitMode::Failing);
    for (target, action) in [(viewer, "ban"), (muted_viewer, "mute")] {
        let response = act(&app, host, target, action).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.body["roomUpdated"], false, "{action}");
    }
    token_for_room(&app, viewer).await.assert_error(403, "banned");
    chat(&app, muted_viewer).await.assert_error(403, "muted");
    assert_eq!(recorded_actions(&app).await, 2);

    app.livekit.set_mode(LiveKitMode::Up);
    let report = shared::reconcile::reconcile(&app.state, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(report.corrected, 2, "{report:?}");
    let participants = app.livekit.room(ROOM).unwrap().participants;
    assert!(
        participants.iter().all(|p| p.identity != viewer.to_string()),
        "the banned viewer is removed"
    );
    let muted = participants
        .iter()
        .find(|p| p.identity == muted_viewer.to_string())
        .expect("a muted viewer stays and watches");
    assert!(!muted.permission.as_ref().unwrap().can_publish_data);

    // Once the room matches, a run corrects nothing.
    let report = shared::reconcile::reconcile(&app.state, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(report.corrected, 0, "{report:?}");
}

/// The ban is committed before LiveKit is asked, and no transaction waits on
/// LiveKit: while the RoomService call hangs, the ban already refuses tokens
/// and no session of the functions sits idle in a transaction.
#[tokio::test]
async fn a_ban_commits_before_livekit_answers_and_holds_no_transaction_meanwhile() {
    let (app, host, viewer) = room_with_viewer().await;
    app.livekit.set_mode(LiveKitMode::Hanging);
    let ban = act(&app, host, viewer, "ban");
    let observe = async {
        let admin = app.db().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let banned: Option<bool> = admin
                .query_opt(
                    "SELECT banned FROM live_room_restrictions WHERE room_name = $1 AND user_id = $2",
                    &[&ROOM, &viewer],
                )
                .await
                .unwrap()
                .map(|row| row.get(0));
            if banned == Some(true) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the ban was not committed while LiveKit hung"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let in_transaction: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state LIKE 'idle in transaction%' AND datname = current_database()",
                &[&crate::helpers::API_ROLE],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            in_transaction, 0,
            "a transaction is held open across the LiveKit call"
        );
    };
    let (response, ()) = tokio::join!(ban, observe);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body["roomUpdated"], false);
    token_for_room(&app, viewer).await.assert_error(403, "banned");
}

async fn recorded_actions(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one("SELECT count(*) FROM live_moderation_actions", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn moderating_someone_not_in_the_room_still_applies() {
    let (app, host, _) = room_with_viewer().await;
    let absent = Uuid::new_v4();
    assert_eq!(act(&app, host, absent, "ban").await.status, 200);
    token_for_room(&app, absent).await.assert_error(403, "banned");
    assert_eq!(act(&app, host, absent, "mute").await.status, 200);
}
