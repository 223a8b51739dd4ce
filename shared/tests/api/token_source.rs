//! `POST /live/token-source`: LiveKit's standard token endpoint, which the
//! client SDKs' `TokenSource.endpoint` calls by themselves. The same rules as
//! `POST /live/token`, in LiveKit's snake_case request and response; then the
//! real `TokenSource` of npm `livekit-client`, under Node, fetching from it
//! over HTTP, with LiveKit's server SDKs verifying what it got.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use serde_json::{Value, json};
use shared::handlers::{issue_standard_token, issue_token, moderate};
use uuid::Uuid;

use crate::helpers::{LIVEKIT_API_KEY, TestApp, TestResponse, verify_livekit_token, verify_with_node_sdk};

const ROOM: &str = "standard-room";

async fn live_room() -> (TestApp, Uuid) {
    let app = TestApp::spawn().await;
    let host = Uuid::new_v4();
    app.start_stream(host, ROOM).await;
    (app, host)
}

async fn fetch(app: &TestApp, user: Uuid, body: Value) -> TestResponse {
    app.call(
        issue_standard_token,
        Some(&app.token_for(user)),
        &body.to_string(),
    )
    .await
}

fn message(response: &TestResponse) -> &str {
    response.body["error"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn the_standard_request_gets_201_with_server_url_and_participant_token() {
    let (app, host) = live_room().await;
    let viewer = Uuid::new_v4();
    let response = fetch(
        &app,
        viewer,
        json!({"room_name": ROOM, "participant_name": " JohnDoe "}),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let body = response.body.as_object().unwrap();
    assert_eq!(
        body.keys().collect::<Vec<_>>(),
        ["participant_token", "server_url"],
        "LiveKit's standard response: {response:?}"
    );
    assert_eq!(response.body["server_url"], app.livekit_url());
    let claims = verify_livekit_token(response.body["participant_token"].as_str().unwrap());
    assert_eq!(claims.sub, viewer.to_string(), "identity is the user id");
    assert_eq!(claims.name, "JohnDoe");
    assert_eq!(claims.iss, LIVEKIT_API_KEY);
    assert_eq!(claims.video.room, ROOM);
    assert!(claims.video.room_join);
    assert_eq!(
        (
            claims.video.can_publish,
            claims.video.can_subscribe,
            claims.video.can_publish_data
        ),
        (Some(false), Some(true), Some(true)),
        "a viewer watches and chats"
    );
    assert!(!claims.video.room_admin && !claims.video.room_create && !claims.video.hidden);

    // The same grants as POST /live/token gives the same caller.
    let classic = app
        .call(
            issue_token,
            Some(&app.token_for(viewer)),
            &json!({"roomName": ROOM, "participantName": "JohnDoe"}).to_string(),
        )
        .await;
    let classic = verify_livekit_token(classic.body["token"].as_str().unwrap());
    assert_eq!(classic.video, claims.video);
    assert_eq!((classic.sub, classic.name), (claims.sub, claims.name));

    // The streamer gets publish rights; without participant_name the name is the user id.
    let response = fetch(&app, host, json!({"room_name": ROOM})).await;
    assert_eq!(response.status, 201, "{}", response.body);
    let claims = verify_livekit_token(response.body["participant_token"].as_str().unwrap());
    assert_eq!(
        (claims.sub.as_str(), claims.name.as_str()),
        (host.to_string().as_str(), host.to_string().as_str())
    );
    assert_eq!(
        (
            claims.video.can_publish,
            claims.video.can_subscribe,
            claims.video.can_publish_data
        ),
        (Some(true), Some(true), Some(true))
    );
}

#[tokio::test]
async fn room_name_is_required_and_names_are_checked() {
    let (app, _) = live_room().await;
    let viewer = Uuid::new_v4();
    for (body, mentions) in [
        (json!({}), "room_name is required"),
        (json!({"participant_name": "Ann"}), "room_name is required"),
        (json!({"room_name": null}), "room_name is required"),
        (json!({"room_name": "has space"}), "room_name must be 1-128"),
        (json!({"room_name": "r".repeat(129)}), "room_name must be 1-128"),
        (
            json!({"room_name": ROOM, "participant_name": "  "}),
            "participant_name must be 1-64",
        ),
        (
            json!({"room_name": ROOM, "participant_name": "p".repeat(65)}),
            "participant_name must be 1-64",
        ),
        (json!({"room_name": 7}), "invalid type"),
    ] {
        let response = fetch(&app, viewer, body.clone()).await;
        response.assert_error(400, "invalid_request");
        assert!(
            message(&response).contains(mentions),
            "{body} → {}",
            message(&response)
        );
    }
}

#[tokio::test]
async fn participant_identity_may_only_be_the_callers_own_id() {
    let (app, host) = live_room().await;
    let viewer = Uuid::new_v4();
    for someone_else in [
        host.to_string(),
        Uuid::new_v4().to_string(),
        "JohnDoe".to_owned(),
        String::new(),
    ] {
        let response = fetch(
            &app,
            viewer,
            json!({"room_name": ROOM, "participant_identity": someone_else}),
        )
        .await;
        response.assert_error(403, "forbidden");
        assert!(
            message(&response).contains("participant_identity"),
            "{}",
            response.body
        );
    }
    // A request without a room is malformed before it is forbidden: 400, as
    // the contract says for a missing room_name, whatever else it asks for.
    let no_room = fetch(&app, viewer, json!({"participant_identity": host.to_string()})).await;
    no_room.assert_error(400, "invalid_request");
    assert!(message(&no_room).contains("room_name"), "{}", no_room.body);
    let own = fetch(
        &app,
        viewer,
        json!({"room_name": ROOM, "participant_identity": viewer.to_string()}),
    )
    .await;
    assert_eq!(own.status, 201, "{}", own.body);
    let claims = verify_livekit_token(own.body["participant_token"].as_str().unwrap());
    assert_eq!(claims.sub, viewer.to_string());
    // The same id written in capitals is still the caller's; the token's
    // identity is its canonical form.
    let capitals = fetch(
        &app,
        viewer,
        json!({"room_name": ROOM, "participant_identity": viewer.to_string().to_uppercase()}),
    )
    .await;
    assert_eq!(capitals.status, 201, "{}", capitals.body);
    let claims = verify_livekit_token(capitals.body["participant_token"].as_str().unwrap());
    assert_eq!(claims.sub, viewer.to_string());
}

/// SDKs whose encoders write unset fields as `null` send the same request as
/// those that leave them out: a `null` sets nothing, and is not refused.
#[tokio::test]
async fn a_field_sent_as_null_counts_as_left_out() {
    let (app, _) = live_room().await;
    let viewer = Uuid::new_v4();
    let response = fetch(
        &app,
        viewer,
        json!({
            "room_name": ROOM,
            "participant_name": null,
            "participant_identity": null,
            "participant_metadata": null,
            "participant_attributes": null,
            "room_config": null,
        }),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let claims = verify_livekit_token(response.body["participant_token"].as_str().unwrap());
    assert_eq!(claims.sub, viewer.to_string());
    assert_eq!(claims.name, viewer.to_string(), "no name: the user id");
    assert!(claims.metadata.is_empty(), "{:?}", claims.metadata);
}

/// LiveKit's iOS and Android SDKs send `"room_config": {}` on every request
/// (their `RoomConfiguration` with no agent set, its unset fields left out),
/// and may send empty attributes or metadata: what sets nothing is not
/// refused; a field inside that does set something still is.
#[tokio::test]
async fn the_mobile_sdks_empty_room_config_sets_nothing_and_is_not_refused() {
    let (app, _) = live_room().await;
    let viewer = Uuid::new_v4();
    for body in [
        json!({"room_name": ROOM, "room_config": {}}),
        json!({"room_name": ROOM, "room_config": {"agents": null}}),
        json!({"room_name": ROOM, "room_config": {"agents": []}, "participant_attributes": {}, "participant_metadata": ""}),
    ] {
        let response = fetch(&app, viewer, body.clone()).await;
        assert_eq!(response.status, 201, "{body}: {}", response.body);
        let claims = verify_livekit_token(response.body["participant_token"].as_str().unwrap());
        assert_eq!(claims.sub, viewer.to_string());
        assert!(claims.metadata.is_empty(), "{:?}", claims.metadata);
    }
    fetch(
        &app,
        viewer,
        json!({"room_name": ROOM, "room_config": {"agents": [], "name": "elsewhere"}}),
    )
    .await
    .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn what_only_the_server_decides_is_refused_with_a_clear_message() {
    let (app, _) = live_room().await;
    let viewer = Uuid::new_v4();
    for (field, value, why) in [
        // What livekit-client sends for `agentName` (an agent dispatch).
        (
            "room_config",
            json!({"agents": [{"agent_name": "assistant"}]}),
            "POST /live/start",
        ),
        (
            "participant_metadata",
            json!("{\"role\":\"admin\"}"),
            "other participants",
        ),
        (
            "participant_attributes",
            json!({"role": "admin"}),
            "other participants",
        ),
    ] {
        let response = fetch(&app, viewer, json!({"room_name": ROOM, field: value})).await;
        response.assert_error(400, "invalid_request");
        let text = message(&response);
        assert!(
            text.starts_with(&format!("{field} cannot be set")) && text.contains(why),
            "{field} → {text}"
        );
    }
    for unknown in ["roomName", "identity", "ttl"] {
        let response = fetch(&app, viewer, json!({"room_name": ROOM, unknown: "x"})).await;
        response.assert_error(400, "invalid_request");
        assert!(
            message(&response).contains(&format!("unknown field `{unknown}`")),
            "{}",
            response.body
        );
    }
    let rooms: Vec<String> = app.livekit().rooms().await.into_iter().map(|r| r.name).collect();
    assert_eq!(rooms, vec![ROOM.to_owned()], "no refused request made a room");
}

#[tokio::test]
async fn unknown_ended_and_banned_are_404_409_and_403() {
    let (app, host) = live_room().await;
    let viewer = Uuid::new_v4();
    fetch(&app, viewer, json!({"room_name": "nowhere"}))
        .await
        .assert_error(404, "stream_not_found");

    let ban = json!({"roomName": ROOM, "userId": viewer, "action": "ban"}).to_string();
    let banned = app.call(moderate, Some(&app.token_for(host)), &ban).await;
    assert_eq!(banned.status, 200, "{}", banned.body);
    fetch(&app, viewer, json!({"room_name": ROOM}))
        .await
        .assert_error(403, "banned");
    assert_eq!(
        fetch(&app, Uuid::new_v4(), json!({"room_name": ROOM}))
            .await
            .status,
        201,
        "others are unaffected"
    );

    let ended = app.end_stream(host, ROOM).await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    fetch(&app, Uuid::new_v4(), json!({"room_name": ROOM}))
        .await
        .assert_error(409, "stream_ended");
    fetch(&app, host, json!({"room_name": ROOM}))
        .await
        .assert_error(409, "stream_ended");
}

// ---------------------------------------------------------------------------
// livekit-client's TokenSource against the endpoint, over HTTP
// ---------------------------------------------------------------------------

/// One request as it reached the endpoint.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: Value,
}

struct Endpoint {
    app: TestApp,
    received: Mutex<Vec<Received>>,
}

/// Serves `POST /live/token-source` on loopback the way the Lambda function
/// does: each HTTP request becomes a `lambda_http::Request` (method, URI,
/// headers, body) for the same adapter and handler.
async fn serve(endpoint: Arc<Endpoint>) -> String {
    async fn forward(
        State(endpoint): State<Arc<Endpoint>>,
        request: axum::extract::Request,
    ) -> axum::response::Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .expect("the request body arrives");
        let header = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        endpoint.received.lock().unwrap().push(Received {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            content_type: header("content-type"),
            authorization: header("authorization"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let mut request = lambda_http::Request::new(lambda_http::Body::from(body.to_vec()));
        *request.method_mut() = parts.method;
        *request.uri_mut() = parts.uri;
        *request.headers_mut() = parts.headers;
        let response = shared::http::handle(&endpoint.app.state, request, &issue_standard_token).await;
        let (parts, body) = response.into_parts();
        axum::response::Response::from_parts(parts, axum::body::Body::from(body.as_ref().to_vec()))
    }
    let router = axum::Router::new()
        .route("/live/token-source", axum::routing::any(forward))
        .with_state(endpoint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/live/token-source")
}

/// Runs `shared/tests/node/token-source-fetch.mjs`: livekit-client's own
/// `TokenSource.endpoint(url, { headers: { Authorization } }).fetch(options)`
/// for each case, in one Node process.
async fn token_source_fetch(url: &str, cases: &Value) -> Vec<Value> {
    use tokio::io::AsyncWriteExt;
    let script = format!("{}/tests/node/token-source-fetch.mjs", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (scripts/test installs livekit-client)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(cases.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the TokenSource script finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints a JSON array")
}

#[tokio::test]
async fn livekit_clients_token_source_gets_tokens_that_livekit_verifies() {
    let (app, host) = live_room().await;
    let viewer = Uuid::new_v4();
    let (host_bearer, viewer_bearer) = (app.token_for(host), app.token_for(viewer));
    let endpoint = Arc::new(Endpoint {
        app,
        received: Mutex::new(Vec::new()),
    });
    let url = serve(endpoint.clone()).await;
    let app = &endpoint.app;

    let cases = json!([
        // Fetched twice: the SDK caches a token until a minute before it
        // expires, so the second fetch must not reach the endpoint.
        {"bearer": viewer_bearer, "options": {"roomName": ROOM, "participantName": "JohnDoe"}, "fetches": 2},
        {"bearer": host_bearer, "options": {"roomName": ROOM}},
        {"bearer": viewer_bearer, "options": {"roomName": ROOM, "participantIdentity": viewer.to_string()}},
        {"bearer": viewer_bearer, "options": {"roomName": ROOM, "participantIdentity": host.to_string()}},
        {"bearer": viewer_bearer, "options": {"roomName": ROOM, "agentName": "assistant"}},
        {"bearer": viewer_bearer, "options": {"roomName": "nowhere"}},
        {"bearer": null, "options": {"roomName": ROOM}},
    ]);
    let results = token_source_fetch(&url, &cases).await;
    assert_eq!(results.len(), 7, "{results:?}");

    // What the SDK sent: one request per fetch that was not cached.
    let received = endpoint.received.lock().unwrap().clone();
    assert_eq!(received.len(), 7, "{received:#?}");
    for request in &received {
        assert_eq!(
            (
                request.method.as_str(),
                request.path.as_str(),
                request.content_type.as_deref()
            ),
            ("POST", "/live/token-source", Some("application/json"))
        );
    }
    assert_eq!(received[0].authorization, Some(format!("Bearer {viewer_bearer}")));
    assert_eq!(
        received[0].body,
        json!({"room_name": ROOM, "participant_name": "JohnDoe"})
    );
    assert_eq!(received[1].body, json!({"room_name": ROOM}));
    assert_eq!(
        received[4].body,
        json!({"room_name": ROOM, "room_config": {"agents": [{"agent_name": "assistant"}]}})
    );
    assert_eq!(received[6].authorization, None);

    // What the SDK got, and LiveKit's SDKs (Rust and npm livekit-server-sdk) verifying it.
    let expect = [
        (viewer, "JohnDoe".to_owned(), false),
        (host, host.to_string(), true),
        (viewer, viewer.to_string(), false),
    ];
    for (result, (user, name, publisher)) in results.iter().zip(expect) {
        let name = name.as_str();
        assert_eq!(result["ok"], true, "{result}");
        let response = &result["response"];
        assert_eq!(response["serverUrl"], app.livekit_url(), "{result}");
        let token = response["participantToken"].as_str().unwrap();
        let claims = verify_livekit_token(token);
        assert_eq!(
            (claims.sub.as_str(), claims.name.as_str()),
            (user.to_string().as_str(), name)
        );
        assert_eq!(claims.video.room, ROOM);
        assert_eq!(
            (
                claims.video.can_publish,
                claims.video.can_subscribe,
                claims.video.can_publish_data
            ),
            (Some(publisher), Some(true), Some(true))
        );
        let node = verify_with_node_sdk(token).await;
        assert_eq!(node["sub"], user.to_string());
        assert_eq!(node["video"]["room"], ROOM);
        assert_eq!(node["video"]["canPublish"], publisher);
        // The client's own reading of the token.
        let payload = &result["payload"];
        assert_eq!(
            (&payload["sub"], &payload["name"]),
            (&json!(user.to_string()), &json!(name))
        );
        assert_eq!(payload["video"]["canPublish"], publisher);
    }

    // Refusals reach the app as the SDK's error, with our status and code.
    for (result, (status, code)) in results[3..].iter().zip([
        (403, "forbidden"),
        (400, "invalid_request"),
        (404, "stream_not_found"),
        (401, "unauthorized"),
    ]) {
        assert_eq!(result["ok"], false, "{result}");
        let error = result["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("received {status} / "))
                && error.contains(&format!("\"code\":\"{code}\"")),
            "{error}"
        );
    }
}
