use serde_json::json;
use shared::handlers::{end_stream, issue_token};
use uuid::Uuid;

use crate::helpers::{LIVEKIT_API_KEY, TestApp, verify_livekit_token};

#[tokio::test]
async fn a_viewer_token_can_subscribe_and_chat_but_not_publish() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "stream-abc123").await;
    let viewer = Uuid::new_v4();
    let body = json!({"roomName": "stream-abc123", "participantName": " JohnDoe "}).to_string();
    let response = app.call(issue_token, Some(&app.token_for(viewer)), &body).await;

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body.as_object().unwrap().len(), 2, "{}", response.body);
    assert_eq!(response.body["serverUrl"], app.livekit_url());
    let claims = verify_livekit_token(response.body["token"].as_str().unwrap());
    assert_eq!(
        claims.sub,
        viewer.to_string(),
        "identity is the user id, not the display name"
    );
    assert_eq!(claims.name, "JohnDoe");
    assert_eq!(claims.iss, LIVEKIT_API_KEY);
    assert_eq!(claims.video.room, "stream-abc123");
    assert!(claims.video.room_join);
    assert_eq!(claims.video.can_publish, Some(false));
    assert_eq!(claims.video.can_subscribe, Some(true));
    assert_eq!(claims.video.can_publish_data, Some(true));
    assert!(!claims.video.room_admin && !claims.video.room_create && !claims.video.hidden);
    assert_eq!(claims.exp - claims.nbf, 600, "default TTL is 10 minutes");
}

#[tokio::test]
async fn the_streamer_asking_for_a_token_gets_publish_rights() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "hosted").await;
    let body = json!({"roomName": "hosted", "participantName": "Host"}).to_string();
    let response = app.call(issue_token, Some(&app.token_for(host)), &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let claims = verify_livekit_token(response.body["token"].as_str().unwrap());
    assert_eq!(claims.video.can_publish, Some(true));
    assert_eq!(claims.video.can_publish_data, Some(true));
}

#[tokio::test]
async fn a_token_for_an_unknown_room_is_404() {
    let app = TestApp::spawn().await;
    let body = json!({"roomName": "nowhere", "participantName": "Ann"}).to_string();
    let response = app
        .call(issue_token, Some(&app.token_for(Uuid::new_v4())), &body)
        .await;
    response.assert_error(404, "stream_not_found");
}

#[tokio::test]
async fn a_token_for_an_ended_stream_is_409() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, "over").await;
    let ended = app
        .call(end_stream, Some(&app.token_for(host)), r#"{"roomName":"over"}"#)
        .await;
    assert_eq!(ended.status, 200);
    let body = json!({"roomName": "over", "participantName": "Late"}).to_string();
    let response = app
        .call(issue_token, Some(&app.token_for(Uuid::new_v4())), &body)
        .await;
    response.assert_error(409, "stream_ended");
}

#[tokio::test]
async fn participant_names_must_be_1_to_64_characters() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "names").await;
    let token = app.token_for(Uuid::new_v4());
    for name in [
        json!(""),
        json!("   "),
        json!("n".repeat(65)),
        json!(null),
        json!(7),
    ] {
        let body = json!({"roomName": "names", "participantName": name}).to_string();
        app.call(issue_token, Some(&token), &body)
            .await
            .assert_error(400, "invalid_request");
    }
    let missing = app
        .call(issue_token, Some(&token), r#"{"roomName":"names"}"#)
        .await;
    missing.assert_error(400, "invalid_request");
    assert!(
        missing.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("participantName")
    );
    let ok = json!({"roomName": "names", "participantName": "n".repeat(64)}).to_string();
    assert_eq!(app.call(issue_token, Some(&token), &ok).await.status, 200);
}

/// LiveKit's own server SDK (npm `livekit-server-sdk`) accepts our tokens and
/// reads the same grants: an independent check of the token format.
#[tokio::test]
async fn livekit_server_sdk_verifies_host_and_viewer_tokens() {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    let start = app.start_stream(host, "sdk-check").await;
    let viewer = Uuid::new_v4();
    let body = json!({"roomName": "sdk-check", "participantName": "Viewer"}).to_string();
    let viewer_token = app
        .call(issue_token, Some(&app.token_for(viewer)), &body)
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let host_claims = crate::helpers::verify_with_node_sdk(start["token"].as_str().unwrap()).await;
    assert_eq!(host_claims["sub"], host.to_string());
    assert_eq!(host_claims["video"]["room"], "sdk-check");
    assert_eq!(host_claims["video"]["roomJoin"], true);
    assert_eq!(host_claims["video"]["canPublish"], true);

    let viewer_claims = crate::helpers::verify_with_node_sdk(&viewer_token).await;
    assert_eq!(viewer_claims["sub"], viewer.to_string());
    assert_eq!(viewer_claims["name"], "Viewer");
    assert_eq!(viewer_claims["video"]["canPublish"], false);
    assert_eq!(viewer_claims["video"]["canSubscribe"], true);
    assert_eq!(viewer_claims["video"]["canPublishData"], true);

    // A viewer who rewrites their grant to publish keeps the old signature.
    let mut escalated = viewer_claims.clone();
    escalated["video"]["canPublish"] = serde_json::json!(true);
    let parts: Vec<&str> = viewer_token.split('.').collect();
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(escalated.to_string());
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert!(
        crate::helpers::node_sdk_rejects(&tampered).await,
        "a tampered token is refused"
    );
}

/// `LIVEKIT_VIEWER_CAN_PUBLISH_DATA=false`: viewers publish no data packets
/// at all (chat goes through the API only); the host still does, and an
/// unmute gives back no more than the setting allows.
#[tokio::test]
async fn viewers_can_be_denied_data_packets_altogether() {
    let app = TestApp::spawn_with(crate::helpers::AppOptions {
        settings: vec![("LIVEKIT_VIEWER_CAN_PUBLISH_DATA", "false".into())],
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let host = Uuid::new_v4();
    let started = app.start_stream(host, "quiet").await;
    let host_claims = verify_livekit_token(started["token"].as_str().unwrap());
    assert_eq!(host_claims.video.can_publish_data, Some(true));
    let (viewer, _watching) = app.viewer_in("quiet").await;
    // What the server enforces is what it holds: its own view of the viewer.
    let joined = app.livekit().participants("quiet").await;
    let permission = joined
        .iter()
        .find(|p| p.identity == viewer.to_string())
        .and_then(|p| p.permission.clone())
        .expect("the viewer is in the room");
    assert!(!permission.can_publish_data && !permission.can_publish);

    for action in ["mute", "unmute"] {
        let body = json!({"roomName": "quiet", "userId": viewer, "action": action}).to_string();
        let response = app
            .call(shared::handlers::moderate, Some(&app.token_for(host)), &body)
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.body["roomUpdated"], true);
    }
    let participants = app.livekit().participants("quiet").await;
    let permission = participants
        .iter()
        .find(|p| p.identity == viewer.to_string())
        .and_then(|p| p.permission.clone())
        .expect("the viewer is in the room");
    assert!(
        !permission.can_publish_data,
        "unmute restores chat through the API, not data packets"
    );
}

#[tokio::test]
async fn display_names_that_impersonate_are_refused() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "names").await;
    for name in ["Ada\u{202E}nimda", "A\u{200B}da", "\u{3164}"] {
        let body = json!({"roomName": "names", "participantName": name}).to_string();
        app.call(issue_token, Some(&app.token_for(Uuid::new_v4())), &body)
            .await
            .assert_error(400, "invalid_request");
    }
}
