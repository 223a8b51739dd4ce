//! Through the HTTP adapter with the API Gateway events in `events/`, as
//! `cargo lambda invoke --data-file` sends them.

use lambda_http::http::Method;
use lambda_http::{Body, Request};
use shared::handlers::{end_stream, issue_token, start_stream};
use shared::http::MAX_BODY_BYTES;
use uuid::Uuid;

use crate::helpers::{AppOptions, TestApp};

fn event(name: &str) -> Request {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    lambda_http::request::from_str(&json).unwrap_or_else(|e| panic!("{path} is an API Gateway event: {e}"))
}

/// The events carry a development token (signed with the `scripts/dev` secret,
/// no issuer) and a webhook signed with `livekit-server --dev`'s key, so they
/// work against the local stack as they are.
async fn dev_app() -> TestApp {
    TestApp::spawn_with(AppOptions {
        supabase_url: false,
        settings: vec![
            ("LIVEKIT_API_KEY", "devkey".into()),
            ("LIVEKIT_API_SECRET", "secret".into()),
        ],
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn the_committed_events_start_join_and_end_a_stream() {
    let app = dev_app().await;

    let started = app.send(start_stream, event("start.json")).await;
    assert_eq!(started.status, 201, "{}", started.body);
    let room = started.body["stream"]["id"].as_str().unwrap().to_owned();

    let token = app.send(issue_token, event("token.json")).await;
    assert_eq!(token.status, 200, "{}", token.body);
    let claims = livekit_api::access_token::TokenVerifier::with_api_key("devkey", "secret")
        .verify(token.body["token"].as_str().unwrap())
        .expect("the token verifies with the dev key");
    assert_eq!(
        claims.video.room, room,
        "token.json joins the room start.json created"
    );

    let standard = app
        .send(shared::handlers::issue_standard_token, event("token-source.json"))
        .await;
    assert_eq!(standard.status, 201, "{}", standard.body);
    assert!(standard.body["participant_token"].is_string() && standard.body["server_url"].is_string());

    let listed = app
        .send(shared::handlers::list_streams, event("streams.json"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["streams"][0]["id"], room.as_str());

    let joined = app.deliver(event("webhook.json")).await;
    assert_eq!(
        (joined.status, joined.body["outcome"].as_str()),
        (200, Some("applied")),
        "{}",
        joined.body
    );
    let one = app.send(shared::handlers::get_stream, event("stream.json")).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(
        one.body["stream"]["viewerCount"], 1,
        "the webhook's viewer is counted"
    );

    // The joined viewer raises a hand, is invited, comes on stage and reacts;
    // the streamer sees them in the list, the stage and the stats.
    use shared::handlers as h;
    let ok = |response: &crate::helpers::TestResponse, what: &str| {
        assert_eq!(response.status, 200, "{what}: {}", response.body);
    };
    ok(
        &app.send(h::raise_hand, event("stage-hand.json")).await,
        "stage-hand",
    );
    let stage = app.send(h::stage_state, event("stage.json")).await;
    ok(&stage, "stage");
    assert_eq!(
        stage.body["hands"][0]["userId"],
        "00000000-0000-4000-8000-000000000002"
    );
    ok(
        &app.send(h::invite_to_stage, event("stage-invite.json")).await,
        "stage-invite",
    );
    let accepted = app.send(h::accept_stage, event("stage-accept.json")).await;
    ok(&accepted, "stage-accept");
    assert_eq!(accepted.body["onStage"], true);
    ok(&app.send(h::react, event("reactions.json")).await, "reactions");
    let viewers = app.send(h::list_viewers, event("stream-viewers.json")).await;
    ok(&viewers, "stream-viewers");
    assert_eq!(
        viewers.body["viewers"][0]["userId"],
        "00000000-0000-4000-8000-000000000002"
    );
    let stats = app.send(h::stream_stats, event("stream-stats.json")).await;
    ok(&stats, "stream-stats");
    assert_eq!(
        (
            &stats.body["stats"]["stageGuests"],
            &stats.body["stats"]["reactions"]["heart"]
        ),
        (&serde_json::json!(1), &serde_json::json!(1))
    );
    let removed = app.send(h::remove_from_stage, event("stage-remove.json")).await;
    ok(&removed, "stage-remove");
    assert_eq!(removed.body["onStage"], false);
    let declined = app.send(h::decline_stage, event("stage-decline.json")).await;
    ok(&declined, "stage-decline (no invitation: nothing changes)");

    let schedule: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/../events/reconcile.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
    .unwrap();
    assert_eq!(schedule["detail-type"], "Scheduled Event");
    let report = shared::scheduled::reconcile::reconcile(&app.state, app.state.reconcile_grace)
        .await
        .unwrap();
    assert_eq!((report.live, report.synced), (1, 1));
    assert_eq!(
        app.viewer_count(&room).await,
        0,
        "LiveKit says nobody is in the room"
    );

    let said = app.send(shared::handlers::post_message, event("chat.json")).await;
    assert_eq!(said.status, 201, "{}", said.body);
    let history = app
        .send(shared::handlers::chat_history, event("chat-history.json"))
        .await;
    assert_eq!(history.body["messages"][0], said.body["message"]);
    let mut delete = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(format!(
            "{}/../events/chat-delete.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let id = said.body["message"]["id"].as_str().unwrap();
    delete["pathParameters"]["id"] = id.into();
    delete["rawPath"] = format!("/live/chat/{id}").into();
    let deleted = app
        .send(
            shared::handlers::delete_message,
            lambda_http::request::from_str(&delete.to_string()).unwrap(),
        )
        .await;
    assert_eq!(
        (deleted.status, deleted.body["deleted"].as_bool()),
        (200, Some(true)),
        "{}",
        deleted.body
    );
    let placeholder = app
        .send(shared::handlers::delete_message, event("chat-delete.json"))
        .await;
    placeholder.assert_error(404, "message_not_found");

    let moderated = app.send(shared::handlers::moderate, event("moderate.json")).await;
    assert_eq!(
        (moderated.status, moderated.body["muted"].as_bool()),
        (200, Some(true)),
        "{}",
        moderated.body
    );

    let ended = app.send(end_stream, event("end.json")).await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.body["stream"]["id"], room.as_str());
    assert_eq!(ended.body["roomClosed"], true);
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded() {
    let app = dev_app().await;
    let path = format!("{}/../events/start.json", env!("CARGO_MANIFEST_DIR"));
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    use base64::Engine;
    let body =
        base64::engine::general_purpose::STANDARD.encode(r#"{"title":"Encoded","roomName":"b64-room"}"#);
    json["body"] = body.into();
    json["isBase64Encoded"] = true.into();
    let request = lambda_http::request::from_str(&json.to_string()).unwrap();
    let response = app.send(start_stream, request).await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.body["stream"]["title"], "Encoded");
}

#[tokio::test]
async fn other_methods_are_405() {
    let app = dev_app().await;
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let mut request = event("token.json");
        *request.method_mut() = method.clone();
        let response = app.send(issue_token, request).await;
        response.assert_error(405, "method_not_allowed");
        assert_eq!(response.headers.get("allow").unwrap(), "POST");
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    for (body, mentions) in [
        ("", "JSON object"),
        ("   ", "JSON object"),
        ("not json", "JSON object"),
        ("[1,2,3]", "JSON object"),
        (r#"["stream-abc123","JohnDoe"]"#, "JSON object"),
        ("null", "JSON object"),
        (r#"{"roomName":5,"participantName":"b"}"#, "invalid type"),
        (r#"{"roomName":"a""#, "EOF"),
        (r#"{"roomName":"a","roomName":"b"}"#, "duplicate field"),
        (
            r#"{"roomName":"a","participantName":"b","admin":true}"#,
            "unknown field `admin`",
        ),
    ] {
        let response = app.call(issue_token, Some(&token), body).await;
        response.assert_error(400, "invalid_request");
        let message = response.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{body:?} → {message}");
    }
    let mut request = Request::new(Body::Binary(vec![0xff, 0xfe, 0x00, 0x7b]));
    *request.method_mut() = Method::POST;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    app.send(issue_token, request)
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn bodies_over_16_kib_are_413() {
    let app = TestApp::spawn().await;
    let token = app.token_for(Uuid::new_v4());
    let body = format!(r#"{{"title":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
    let response = app.call(start_stream, Some(&token), &body).await;
    response.assert_error(413, "payload_too_large");
    let count: i64 = app.db_value("SELECT count(*) FROM live_streams", &[]).await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn error_bodies_never_carry_internal_details() {
    // A database that does not exist: every request fails inside Postgres.
    let url = format!("{}_missing", crate::helpers::migrated_database().await);
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(url.clone()),
        ..AppOptions::default()
    })
    .await;
    let response = app
        .call(
            start_stream,
            Some(&app.token_for(Uuid::new_v4())),
            r#"{"title":"x"}"#,
        )
        .await;
    response.assert_error(503, "unavailable");
    let text = response.body.to_string();
    assert!(
        !text.contains("_missing") && !text.contains("postgres") && !text.contains("FATAL"),
        "{text}"
    );
    assert_eq!(response.headers.get("retry-after").unwrap(), "2");
}

#[tokio::test]
async fn no_answer_may_be_stored_by_a_cache() {
    let app = dev_app().await;
    let started = app.send(start_stream, event("start.json")).await;
    let token = app.send(issue_token, event("token.json")).await;
    let mut unauthenticated = event("token.json");
    unauthenticated.headers_mut().remove("authorization");
    let refused = app.send(issue_token, unauthenticated).await;
    let mut wrong_method = event("token.json");
    *wrong_method.method_mut() = Method::GET;
    let not_allowed = app.send(issue_token, wrong_method).await;
    let webhook = app.deliver(event("webhook.json")).await;
    for (what, response, status) in [
        ("a stream with its host token", &started, 201),
        ("a viewer token", &token, 200),
        ("a refusal without a bearer", &refused, 401),
        ("a wrong method", &not_allowed, 405),
        ("a webhook's answer", &webhook, 200),
    ] {
        assert_eq!(response.status, status, "{what}: {}", response.body);
        assert_eq!(
            response.headers.get("cache-control").map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{what}"
        );
    }
}

/// API Gateway passes a repeated query parameter on (`rawQueryString`); a
/// listing refuses it rather than pick one of its values, and a route that
/// takes no parameters refuses any, `DELETE` included.
#[tokio::test]
async fn repeated_or_unexpected_query_parameters_are_400_through_the_adapter() {
    let app = dev_app().await;
    let with_query = |name: &str, query: &str| {
        let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["rawQueryString"] = query.into();
        lambda_http::request::from_str(&json.to_string()).unwrap()
    };
    let repeated = app
        .send(
            shared::handlers::list_streams,
            with_query("streams.json", "limit=5&limit=50"),
        )
        .await;
    repeated.assert_error(400, "invalid_request");
    assert!(
        repeated.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{}",
        repeated.body
    );
    let listed = app
        .send(
            shared::handlers::list_streams,
            with_query("streams.json", "limit=5"),
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let delete = app
        .send(
            shared::handlers::delete_message,
            with_query("chat-delete.json", "force=true"),
        )
        .await;
    delete.assert_error(400, "invalid_request");
    assert!(
        delete.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this route takes none"),
        "{}",
        delete.body
    );
}

/// React Native's `fetch` sends a string body as `text/plain;charset=UTF-8`
/// unless the app sets the header: the body is read as JSON all the same.
#[tokio::test]
async fn a_json_body_labelled_text_plain_is_read_as_json() {
    let app = dev_app().await;
    let path = format!("{}/../events/start.json", env!("CARGO_MANIFEST_DIR"));
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["headers"]["content-type"] = "text/plain;charset=UTF-8".into();
    let request = lambda_http::request::from_str(&json.to_string()).unwrap();
    assert_eq!(
        request.headers()["content-type"],
        "text/plain;charset=UTF-8",
        "the event carries the label"
    );
    let started = app.send(start_stream, request).await;
    assert_eq!(started.status, 201, "{}", started.body);
}
