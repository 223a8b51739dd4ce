//! `cargo run -p shared --bin dev-token [-- --user <uuid>] [--expires-in <seconds>]`
//!
//! Prints a Supabase-style access token (HS256, role `authenticated`) signed with
//! `SUPABASE_JWT_SECRET`, for calling a local backend. Development only.

use std::process::ExitCode;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use uuid::Uuid;

/// The user `scripts/dev` acts as unless told otherwise.
const DEV_USER: &str = "00000000-0000-4000-8000-000000000001";

fn main() -> ExitCode {
    match run() {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("dev-token: {message}");
            eprintln!(
                "usage: dev-token [--user <uuid>] [--expires-in <seconds>]  (needs SUPABASE_JWT_SECRET)"
            );
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let mut user = DEV_USER.to_owned();
    let mut expires_in: i64 = 24 * 3600;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--user" => user = value,
            "--expires-in" => expires_in = value.parse().map_err(|_| "--expires-in takes seconds")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let user = Uuid::parse_str(&user).map_err(|_| format!("--user {user} is not a UUID"))?;
    let secret = std::env::var("SUPABASE_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or("SUPABASE_JWT_SECRET is not set")?;
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "sub": user,
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + expires_in,
    });
    if let Some(url) = std::env::var("SUPABASE_URL").ok().filter(|url| !url.is_empty()) {
        claims["iss"] = json!(format!("{}/auth/v1", url.trim_end_matches('/')));
    }
    shared::jwt_crypto::install();
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}
