//! The hot pieces of every request, in isolation: minting a LiveKit token,
//! verifying a Supabase JWT (HS256 and ES256), parsing each request body and
//! serializing each response. `scripts/bench` runs this and compares the
//! token and JWT figures with Node's livekit-server-sdk and jose on the same
//! inputs (it writes them to `target/bench/jwts.json` for the Node peer).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shared::AppState;
use shared::config::Config;
use shared::domain::{
    ChatRequest, EndRequest, ModerationRequest, ParticipantName, RoomName, StartRequest, TokenRequest,
};
use shared::livekit::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const SUPABASE_SECRET: &str = "local-dev-supabase-jwt-secret-at-least-32-chars";
const LIVEKIT_KEY: &str = "APIbenchkey";
const LIVEKIT_SECRET: &str = "bench-livekit-secret-of-a-realistic-length-32b";
const ROOM: &str = "stream-abc123";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

/// Serves the fixture JWKS over plain HTTP on loopback, so the ES256 path is
/// the real one (fetched once, then cached).
async fn serve_jwks() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&fixture("es256-a.jwk.json")).unwrap();
    let body = json!({ "keys": [jwk] }).to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

fn supabase_claims(issuer: &str, user: Uuid) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": user, "aud": "authenticated", "role": "authenticated", "iss": issuer,
        "iat": now, "exp": now + 24 * 3600, "email": "viewer@example.com",
        "phone": "", "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {}, "aal": "aal1", "session_id": Uuid::new_v4(), "is_anonymous": false,
    })
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let supabase_url = runtime.block_on(serve_jwks());
    let issuer = format!("{supabase_url}/auth/v1");
    let settings = HashMap::from([
        ("DATABASE_URL", "postgres://bench@127.0.0.1:1/bench".to_owned()),
        ("LIVEKIT_URL", "wss://bench.livekit.cloud".to_owned()),
        ("LIVEKIT_API_KEY", LIVEKIT_KEY.to_owned()),
        ("LIVEKIT_API_SECRET", LIVEKIT_SECRET.to_owned()),
        ("SUPABASE_JWT_SECRET", SUPABASE_SECRET.to_owned()),
        ("SUPABASE_URL", supabase_url.clone()),
    ]);
    let config = Config::from_lookup(|name| settings.get(name).cloned()).unwrap();
    let state = runtime.block_on(async { AppState::new(&config) }).unwrap();

    let user = Uuid::new_v4();
    let claims = supabase_claims(&issuer, user);
    shared::jwt_crypto::install();
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SUPABASE_SECRET.as_bytes()),
    )
    .unwrap();
    let mut es_header = Header::new(Algorithm::ES256);
    es_header.kid = Some("es256-a".into());
    let es256 = jsonwebtoken::encode(
        &es_header,
        &claims,
        &EncodingKey::from_ec_pem(fixture("es256-a.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    // The first ES256 verification fetches the JWKS; every later one uses the cache.
    assert_eq!(
        runtime.block_on(state.auth.authenticate(&es256)).unwrap().id,
        user
    );

    let room = RoomName::parse(ROOM.into()).unwrap();
    let name = ParticipantName::parse("JohnDoe").unwrap();
    let jwts = json!({
        "hs256_secret": SUPABASE_SECRET, "hs256_token": hs256, "es256_token": es256,
        "es256_public_jwk": serde_json::from_str::<serde_json::Value>(&fixture("es256-a.jwk.json")).unwrap(),
        "issuer": issuer, "audience": "authenticated",
        "livekit_api_key": LIVEKIT_KEY, "livekit_api_secret": LIVEKIT_SECRET,
        "room": ROOM, "identity": user, "name": "JohnDoe", "ttl_seconds": 600,
        // A viewer with nothing on the stage: no attributes (mint_token).
        "attributes": {},
    });
    let out = format!("{}/../target/bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(format!("{out}/jwts.json"), jwts.to_string()).unwrap();

    let mut tokens = c.benchmark_group("tokens");
    tokens.measurement_time(Duration::from_secs(5));
    tokens.bench_function("mint_livekit_token", |b| {
        b.iter(|| {
            state
                .livekit
                .mint_token(
                    black_box(user),
                    Some(&name),
                    &room,
                    Role::Viewer {
                        muted: false,
                        stage: Default::default(),
                        anonymous: false,
                    },
                )
                .unwrap()
        })
    });
    tokens.bench_function("verify_supabase_hs256", |b| {
        b.to_async(&runtime)
            .iter(|| async { state.auth.authenticate(black_box(&hs256)).await.unwrap() })
    });
    tokens.bench_function("verify_supabase_es256", |b| {
        b.to_async(&runtime)
            .iter(|| async { state.auth.authenticate(black_box(&es256)).await.unwrap() })
    });
    tokens.finish();

    let mut parse = c.benchmark_group("parse");
    let start = br#"{"title":"Learning Yoruba Today!","roomName":"stream-abc123","participantName":"Ada"}"#;
    let token = br#"{"roomName":"stream-abc123","participantName":"JohnDoe"}"#;
    let end = br#"{"roomName":"stream-abc123"}"#;
    let chat = br#"{"roomName":"stream-abc123","text":"Welcome everyone, so glad you are here!"}"#;
    let moderation =
        br#"{"roomName":"stream-abc123","userId":"00000000-0000-4000-8000-000000000002","action":"mute"}"#;
    parse.bench_function("start", |b| {
        b.iter(|| serde_json::from_slice::<StartRequest>(black_box(start)).unwrap())
    });
    parse.bench_function("token", |b| {
        b.iter(|| serde_json::from_slice::<TokenRequest>(black_box(token)).unwrap())
    });
    parse.bench_function("end", |b| {
        b.iter(|| serde_json::from_slice::<EndRequest>(black_box(end)).unwrap())
    });
    parse.bench_function("chat", |b| {
        b.iter(|| serde_json::from_slice::<ChatRequest>(black_box(chat)).unwrap())
    });
    parse.bench_function("moderation", |b| {
        b.iter(|| serde_json::from_slice::<ModerationRequest>(black_box(moderation)).unwrap())
    });
    parse.finish();

    let mut serialize = c.benchmark_group("serialize");
    let stream = shared::domain::Stream {
        id: room.clone(),
        title: "Learning Yoruba Today!".into(),
        streamer_id: user,
        is_live: true,
        viewer_count: 42,
        created_at: chrono::Utc::now(),
        ended_at: None,
    };
    let jwt = state
        .livekit
        .mint_token(user, Some(&name), &room, Role::Host)
        .unwrap();
    let start_response = shared::domain::StartResponse {
        stream: stream.clone(),
        token: jwt.clone(),
        server_url: "wss://bench.livekit.cloud".into(),
    };
    let token_response = shared::domain::TokenResponse {
        token: jwt,
        server_url: "wss://bench.livekit.cloud".into(),
    };
    let end_response = shared::domain::EndResponse {
        success: true,
        stream: shared::domain::EndedStream {
            id: room.clone(),
            is_live: false,
            ended_at: chrono::Utc::now(),
        },
        room_closed: true,
    };
    let page = shared::handlers::streams::StreamPage {
        streams: vec![stream; 20],
        next_cursor: Some("MTc5NTY4".into()),
    };
    let error = shared::ApiError::StreamNotFound.body();
    serialize.bench_function("start", |b| {
        b.iter(|| serde_json::to_vec(black_box(&start_response)).unwrap())
    });
    serialize.bench_function("token", |b| {
        b.iter(|| serde_json::to_vec(black_box(&token_response)).unwrap())
    });
    serialize.bench_function("end", |b| {
        b.iter(|| serde_json::to_vec(black_box(&end_response)).unwrap())
    });
    serialize.bench_function("streams_page_of_20", |b| {
        b.iter(|| serde_json::to_vec(black_box(&page)).unwrap())
    });
    serialize.bench_function("error", |b| {
        b.iter(|| serde_json::to_vec(black_box(&error)).unwrap())
    });
    serialize.finish();
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
