//! `hot-room`: one stream that everybody joins at once (issue 13), run by
//! `scripts/bench` (step "hot-room"). Every phase runs the real handlers
//! in-process, in as many "containers" (each its own state and pool of 1) as
//! the template reserves for the function, against Postgres with production
//! durability behind a proxy that adds 1 ms to every round trip:
//!
//! 1. flash crowd: N viewers' signed webhooks join within a minute and leave
//!    within the next, with LiveKit's habits (duplicates, a leave before its
//!    join, aborted connections instead of leaves); the previous design
//!    (row lock, recount) replayed on the same database for the ratio;
//! 2. join rush: a token for each of those viewers within a minute;
//! 3. busy chat: 200 messages a second from 10,000 users, a real participant
//!    checking what the room receives, LiveKit's SendData calls counted;
//! 4. the rate limiter at limits 60 and 100,000, next to the previous one;
//! 5. reactions: 10,000 viewers tapping, a real participant counting the
//!    aggregated packets the room receives, LiveKit's SendData calls counted;
//! 6. real participants: LiveKit's own webhooks for viewers of its Python SDK
//!    joining, leaving and killed, over HTTP through the same adapter;
//! 7. the scheduled jobs at that scale: the reconciler's run over the room
//!    with every viewer listed, the flusher's tick behind a long history of
//!    ended streams, each next to the previous design's function.
//!
//! Environment: BENCH_ADMIN_URL (superuser), BENCH_LIVEKIT_URL and its key and
//! secret, BENCH_LIVEKIT_LOG, BENCH_PYTHON, SUPABASE_JWT_SECRET; scale knobs
//! HOT_ROOM_VIEWERS (50000), HOT_ROOM_SECONDS (60), HOT_ROOM_CHAT_RATE (200),
//! HOT_ROOM_REACTION_RATE (1000, the template's ReactionsRouteRateLimit),
//! HOT_ROOM_REAL_VIEWERS (20), HOT_ROOM_ENDED_STREAMS (200000); BENCH_WEBHOOK_PORT, where LiveKit's server
//! sends its webhooks (phase 6 is skipped without it).
//! Prints one JSON object.

mod chat;
mod crowd;
mod fleet;
mod limiter;
mod listener;
mod proxy;
mod reactions;
mod real;
mod scheduled;
mod tokens;

use std::time::Duration;

/// What the proxy adds to every round trip to Postgres.
pub const PROXY_DELAY: Duration = Duration::from_millis(1);

pub struct Setup {
    pub admin_url: String,
    /// As `live_api`, through the latency proxy.
    pub api_url: String,
    pub livekit_url: String,
    pub livekit_key: String,
    pub livekit_secret: String,
    pub supabase_secret: String,
    pub livekit_log: String,
    pub python: String,
    pub viewers: usize,
    pub window: Duration,
    pub chat_rate: usize,
    pub reaction_rate: usize,
    pub real_viewers: usize,
    pub webhook_port: Option<u16>,
    pub proxy: proxy::LatencyProxy,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("hot-room: {name} is not set (scripts/bench sets it)"))
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub async fn admin(setup: &Setup) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&setup.admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect as the admin");
    tokio::spawn(connection);
    client
}

/// A Supabase access token for `user`, as the app sends it.
pub fn supabase_token(secret: &str, user: uuid::Uuid) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": user, "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 7200}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a Supabase token")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(async {
        shared::jwt_crypto::install();
        let admin_url = env("BENCH_ADMIN_URL");
        let config: tokio_postgres::Config = admin_url.parse().expect("BENCH_ADMIN_URL parses");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let database = config.get_dbname().unwrap_or("postgres").to_owned();
        let proxy = proxy::LatencyProxy::start(
            format!("127.0.0.1:{port}").parse().expect("an address"),
            PROXY_DELAY,
        )
        .await;
        let setup = Setup {
            api_url: format!(
                "postgres://live_api@127.0.0.1:{}/{database}?sslmode=disable&application_name=live-backend",
                proxy.port
            ),
            admin_url,
            livekit_url: env("BENCH_LIVEKIT_URL"),
            livekit_key: env("BENCH_LIVEKIT_KEY"),
            livekit_secret: env("BENCH_LIVEKIT_SECRET"),
            supabase_secret: env("SUPABASE_JWT_SECRET"),
            livekit_log: env("BENCH_LIVEKIT_LOG"),
            python: env("BENCH_PYTHON"),
            viewers: knob("HOT_ROOM_VIEWERS", 50_000),
            window: Duration::from_secs(knob("HOT_ROOM_SECONDS", 60) as u64),
            chat_rate: knob("HOT_ROOM_CHAT_RATE", 200),
            reaction_rate: knob("HOT_ROOM_REACTION_RATE", 1000),
            real_viewers: knob("HOT_ROOM_REAL_VIEWERS", 20),
            webhook_port: std::env::var("BENCH_WEBHOOK_PORT")
                .ok()
                .and_then(|v| v.parse().ok()),
            proxy,
        };
        let limiter = limiter::run(&setup).await;
        eprintln!("hot-room: rate limiter {limiter}");
        let crowd = crowd::run(&setup).await;
        eprintln!("hot-room: flash crowd {crowd}");
        let tokens = tokens::run(&setup).await;
        eprintln!("hot-room: join rush {tokens}");
        let chat = chat::run(&setup).await;
        eprintln!("hot-room: busy chat {chat}");
        let reactions = reactions::run(&setup).await;
        eprintln!("hot-room: reactions {reactions}");
        let real = real::run(&setup).await;
        eprintln!("hot-room: real participants {real}");
        // Last: it leaves a long history of ended streams behind.
        let scheduled = scheduled::run(&setup).await;
        eprintln!("hot-room: scheduled jobs {scheduled}");
        println!(
            "{}",
            serde_json::json!({
                "viewers": setup.viewers,
                "window_s": setup.window.as_secs(),
                "proxy_delay_ms": PROXY_DELAY.as_millis(),
                "flash_crowd": crowd,
                "join_rush": tokens,
                "busy_chat": chat,
                "rate_limiter": limiter,
                "reactions": reactions,
                "real_participants": real,
                "scheduled_jobs": scheduled,
            })
        );
    });
}
