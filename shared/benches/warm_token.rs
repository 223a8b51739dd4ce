//! Warm `/live/token` in-process: JWT verification, one query on loopback
//! Postgres, LiveKit token minting and the JSON response, through the same
//! adapter the Lambda uses; next to the bare `SELECT 1` round trip measured in
//! the same run. Needs `DATABASE_URL` (a migrated database; `scripts/bench`
//! sets it up) and writes `target/bench/warm_token.json`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lambda_http::{Body, Request};
use serde_json::json;
use shared::AppState;
use shared::config::Config;
use uuid::Uuid;

const WARM_UP: usize = 500;
const SAMPLES: usize = 5000;
/// Each viewer stays under the default 60 tokens a minute.
const VIEWERS: usize = 200;
const SUPABASE_SECRET: &str = "local-dev-supabase-jwt-secret-at-least-32-chars";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("warm_token: DATABASE_URL is not set; skipped (scripts/bench sets it)");
        return;
    };
    let settings = HashMap::from([
        ("DATABASE_URL", url.clone()),
        ("LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned()),
        ("LIVEKIT_API_KEY", "devkey".to_owned()),
        ("LIVEKIT_API_SECRET", "secret".to_owned()),
        ("SUPABASE_JWT_SECRET", SUPABASE_SECRET.to_owned()),
    ]);
    let config = Config::from_lookup(|name| settings.get(name).cloned()).expect("config");
    let state = AppState::new(&config).expect("state");

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let streamer = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO live_streams (id, streamer_id, title) VALUES ('warm-bench', $1, 'Warm bench')
             ON CONFLICT (id) DO NOTHING",
            &[&streamer],
        )
        .await
        .expect("seed the stream");

    let mut select_one = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let started = Instant::now();
        client.query_typed("SELECT 1", &[]).await.expect("SELECT 1");
        if i >= WARM_UP {
            select_one.push(started.elapsed());
        }
    }

    // Many viewers, as in production: one user alone would hit the per-user token limit.
    let now = chrono::Utc::now().timestamp();
    shared::jwt_crypto::install();
    let bearers: Vec<String> = (0..VIEWERS)
        .map(|_| {
            let claims =
                json!({"sub": Uuid::new_v4(), "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 3600});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SUPABASE_SECRET.as_bytes()),
            )
            .expect("sign")
        })
        .collect();
    let request = |i: usize| {
        let mut request = Request::new(Body::Text(
            r#"{"roomName":"warm-bench","participantName":"JohnDoe"}"#.into(),
        ));
        *request.method_mut() = lambda_http::http::Method::POST;
        let bearer = &bearers[i % VIEWERS];
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {bearer}").parse().expect("header"),
        );
        request
    };
    let mut token = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let request = request(i);
        let started = Instant::now();
        let response = shared::http::handle(&state, request, &shared::handlers::issue_token).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "the warm token request succeeds");
        if i >= WARM_UP {
            token.push(elapsed);
        }
    }
    select_one.sort();
    token.sort();
    let result = json!({
        "samples": SAMPLES,
        "select1_p50_us": percentile(&select_one, 0.5),
        "token_p50_us": percentile(&token, 0.5),
        "token_p99_us": percentile(&token, 0.99),
        "ratio_p50": percentile(&token, 0.5) / percentile(&select_one, 0.5),
    });
    println!("{result}");
    let out = format!("{}/../target/bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&out).expect("target/bench");
    std::fs::write(format!("{out}/warm_token.json"), result.to_string()).expect("write warm_token.json");
}
