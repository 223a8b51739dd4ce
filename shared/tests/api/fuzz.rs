//! Request parsing and bearer verification, fuzzed: arbitrary bytes, deep JSON,
//! duplicate keys, invalid UTF-8, huge strings and tokens, odd query strings.
//! Whatever comes in, the answer is the documented error JSON with a 4xx status
//! (or a legitimate success), never a panic and never a 5xx.
//!
//! The property tests use proptest's runner directly (the handlers are async),
//! with a fixed seed, a bounded number of cases and no failure files, so every
//! run checks the same inputs.

use std::fmt::Debug;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lambda_http::http::{HeaderValue, Method};
use lambda_http::{Body, Request};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseResult, TestRunner};
use serde_json::{Value, json};
use shared::auth::AuthError;
use shared::handlers::{
    chat_history, end_stream, issue_token, list_streams, list_viewers, moderate, post_message, stage_state,
    start_stream,
};
use shared::http::MAX_BODY_BYTES;
use uuid::Uuid;

use crate::helpers::{
    LIVEKIT_API_SECRET, TestApp, TestResponse, asymmetric, forged, get_request, hs256, signed_webhook,
};

/// A live stream of the caller's that the fuzzed bodies may name.
const ROOM: &str = "fuzz-room";
/// A live stream of the caller's that only `/live/end` bodies name, so ending
/// it does not turn every later chat or token case into a 409.
const END_ROOM: &str = "fuzz-end-room";
/// A moderation target that is not the caller.
const TARGET: &str = "6f1c7e0a-3b1d-4c5e-9f00-0123456789ab";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` on `cases` inputs from `strategy`: a fixed seed, no persistence
/// files, bounded shrinking. Panics with the minimal failing input.
fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x11fe_5eed),
        max_shrink_iters: 512,
        max_shrink_time: 20_000,
        max_global_rejects: cases * 10,
        ..Config::default()
    });
    if let Err(failure) = runner.run(&strategy, test) {
        panic!("{failure}");
    }
}

/// The five endpoints that take a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonEndpoint {
    Start,
    Token,
    End,
    Chat,
    Moderate,
}

impl JsonEndpoint {
    const ALL: [JsonEndpoint; 5] = [
        JsonEndpoint::Start,
        JsonEndpoint::Token,
        JsonEndpoint::End,
        JsonEndpoint::Chat,
        JsonEndpoint::Moderate,
    ];

    fn fields(self) -> &'static [&'static str] {
        match self {
            JsonEndpoint::Start => &["title", "roomName", "participantName"],
            JsonEndpoint::Token => &["roomName", "participantName"],
            JsonEndpoint::End => &["roomName"],
            JsonEndpoint::Chat => &["roomName", "text"],
            JsonEndpoint::Moderate => &["roomName", "userId", "action"],
        }
    }
}

fn post_request(bearer: &str, body: Body) -> Request {
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    request
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap(),
    );
    request
}

async fn post(app: &TestApp, endpoint: JsonEndpoint, request: Request) -> TestResponse {
    match endpoint {
        JsonEndpoint::Start => app.send(start_stream, request).await,
        JsonEndpoint::Token => app.send(issue_token, request).await,
        JsonEndpoint::End => app.send(end_stream, request).await,
        JsonEndpoint::Chat => app.send(post_message, request).await,
        JsonEndpoint::Moderate => app.send(moderate, request).await,
    }
}

/// A response that is a success or the documented error JSON with a 4xx
/// status. (`TestResponse::from` has already checked it is JSON.)
fn client_side(response: &TestResponse, input: &dyn Debug) -> TestCaseResult {
    prop_assert!(
        response.status < 500,
        "{input:?} → {} {}",
        response.status,
        response.body
    );
    if response.status >= 400 {
        let code = response.error_code();
        prop_assert!(!code.is_empty());
    } else {
        prop_assert!(response.body.is_object(), "{input:?} → {}", response.body);
    }
    Ok(())
}

/// An app with the caller's two live streams, and the caller's bearer token.
/// Limits high enough that a valid body gets past them: at the defaults
/// (one user, 10 starts a minute, 5 messages in 10 s) the cases after the
/// first few would stop at a 429 and never reach a new room or a stored
/// message.
async fn app_with_rooms() -> (TestApp, String) {
    let app = TestApp::spawn_with(crate::helpers::AppOptions {
        settings: vec![
            ("MAX_LIVE_STREAMS_PER_STREAMER", "100".into()),
            ("START_RATE_LIMIT_REQUESTS", "100000".into()),
            ("CHAT_RATE_LIMIT_MESSAGES", "100000".into()),
            ("TOKEN_RATE_LIMIT_REQUESTS", "100000".into()),
        ],
        ..crate::helpers::AppOptions::default()
    })
    .await;
    let host = Uuid::new_v4();
    app.start_stream(host, ROOM).await;
    app.start_stream(host, END_ROOM).await;
    let token = app.token_for(host);
    (app, token)
}

// ---------------------------------------------------------------------------
// JSON bodies
// ---------------------------------------------------------------------------

/// Fragments of the request grammar, so random soups reach deeper parser states.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    " ",
    "\n",
    "\\",
    "\\u",
    "\\ud800",
    "\\u0000",
    "\\\"",
    "\"roomName\"",
    "\"title\"",
    "\"text\"",
    "\"participantName\"",
    "\"userId\"",
    "\"action\"",
    "\"fuzz-room\"",
    "\"kick\"",
    "null",
    "true",
    "false",
    "0",
    "-",
    "1e999",
    "1.5",
    "NaN",
    "\u{feff}",
    "\u{0}",
    "é",
    "\u{10ffff}",
];

fn byte_soup() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..600),
        any::<String>().prop_map(String::into_bytes),
        vec(
            prop_oneof![
                4 => proptest::sample::select(FRAGMENTS).prop_map(|f| f.as_bytes().to_vec()),
                1 => vec(any::<u8>(), 1..4),
            ],
            0..40
        )
        .prop_map(|parts| parts.concat()),
    ]
}

#[test]
fn arbitrary_bytes_to_every_json_endpoint_are_400_never_5xx() {
    let rt = runtime();
    let (app, token) = rt.block_on(app_with_rooms());
    check(200, byte_soup(), |bytes| {
        let is_json = serde_json::from_slice::<Value>(&bytes).is_ok();
        for endpoint in JsonEndpoint::ALL {
            let request = post_request(&token, Body::Binary(bytes.clone()));
            let response = rt.block_on(post(&app, endpoint, request));
            let input = (endpoint, String::from_utf8_lossy(&bytes));
            client_side(&response, &input)?;
            if !is_json {
                prop_assert_eq!(
                    (response.status, response.error_code()),
                    (400, "invalid_request"),
                    "{:?}",
                    input
                );
            }
        }
        Ok(())
    });
}

const ACTIONS: &[&str] = &["kick", "ban", "unban", "mute", "unmute", "KICK", "delete", ""];

/// Strings that probe the field rules: the rooms that exist, valid-looking
/// names, lengths around the limits, control characters, any Unicode.
fn string_value(room: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(room.to_owned()),
        1 => Just(TARGET.to_owned()),
        1 => proptest::sample::select(ACTIONS).prop_map(str::to_owned),
        2 => "[A-Za-z0-9_-]{1,140}",
        2 => "\\PC{0,80}",
        1 => "[ \\t\\n]{0,3}\\PC{190,210}[ \\t\\n]{0,3}",
        1 => "\\PC{60,70}",
        1 => "\\PC{495,505}",
        2 => any::<String>(),
        1 => "[\\x00-\\x1f\\x7f\\x{80}-\\x{9f}\\x{2028}\\x{feff}a ]{1,12}",
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        string_value(ROOM).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map("\\PC{0,12}", inner, 0..5).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A body with the endpoint's field names (each usually present), mostly
/// string values, sometimes another type, sometimes an extra field.
fn body_for(endpoint: JsonEndpoint) -> impl Strategy<Value = (JsonEndpoint, Value)> {
    let room = if endpoint == JsonEndpoint::End {
        END_ROOM
    } else {
        ROOM
    };
    let field = prop_oneof![
        6 => string_value(room).prop_map(Value::from),
        1 => json_value(),
    ];
    let fields = endpoint.fields();
    (
        vec(proptest::option::weighted(0.85, field), fields.len()),
        proptest::option::weighted(0.1, ("\\PC{0,12}", json_value())),
    )
        .prop_map(move |(values, extra)| {
            let mut body = serde_json::Map::new();
            for (name, value) in fields.iter().zip(values) {
                if let Some(value) = value {
                    body.insert((*name).to_owned(), value);
                }
            }
            if let Some((name, value)) = extra {
                body.insert(name, value);
            }
            (endpoint, Value::Object(body))
        })
}

#[test]
fn json_bodies_with_arbitrary_field_values_are_never_5xx() {
    let rt = runtime();
    let (app, token) = rt.block_on(app_with_rooms());
    let any_endpoint = prop_oneof![
        body_for(JsonEndpoint::Start),
        body_for(JsonEndpoint::Token),
        body_for(JsonEndpoint::End),
        body_for(JsonEndpoint::Chat),
        body_for(JsonEndpoint::Moderate),
    ];
    let accepted = std::cell::Cell::new(0);
    check(150, any_endpoint, |(endpoint, body)| {
        let request = post_request(&token, Body::Text(body.to_string()));
        let response = rt.block_on(post(&app, endpoint, request));
        if (200..300).contains(&response.status) {
            accepted.set(accepted.get() + 1);
        }
        client_side(&response, &(endpoint, &body))
    });
    // Refusals alone would leave every handler's own work untried.
    assert!(accepted.get() > 0, "no case got past validation");
}

fn body_of(response: &TestResponse) -> String {
    response.body.to_string()
}

/// Bodies no endpoint can accept: each must be a 400 `invalid_request` (or a
/// 413 past the size limit) whose message does not echo the input.
fn nasty_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep =
        |open: &str, close: &str, depth: usize| format!("{}1{}", open.repeat(depth), close.repeat(depth));
    let mut bodies: Vec<(&'static str, Vec<u8>)> = vec![
        // 10 000 levels are over the size limit before any parsing…
        ("arrays 10 000 deep", deep("[", "]", 10_000).into()),
        ("objects 10 000 deep", deep("{\"a\":", "}", 10_000).into()),
        // …so also as deep as fits in 16 KiB, and unterminated.
        ("arrays 8 000 deep", deep("[", "]", 8_000).into()),
        ("objects 2 700 deep", deep("{\"a\":", "}", 2_700).into()),
        ("10 000 open brackets", "[".repeat(10_000).into()),
        (
            "a field 8 000 deep",
            format!("{{\"roomName\":{}}}", deep("[", "]", 8_000)).into(),
        ),
        (
            "a field 1 200 objects deep",
            format!("{{\"roomName\":{}}}", deep("{\"roomName\":", "}", 1_200)).into(),
        ),
        ("duplicate roomName", br#"{"roomName":"fuzz-room","roomName":"fuzz-room"}"#.to_vec()),
        (
            "duplicate title",
            br#"{"title":"a","title":"b","roomName":"fuzz-room","roomName":"other"}"#.to_vec(),
        ),
        (
            "duplicate action",
            format!(r#"{{"roomName":"fuzz-room","userId":"{TARGET}","action":"kick","action":"ban","text":"x","title":"x"}}"#)
                .into(),
        ),
        ("15 KiB title", format!(r#"{{"title":"{}"}}"#, "x".repeat(15 * 1024)).into()),
        ("15 KiB roomName", format!(r#"{{"roomName":"{}"}}"#, "a".repeat(15 * 1024)).into()),
        (
            "15 KiB text",
            format!(r#"{{"roomName":"fuzz-room","text":"{}"}}"#, "é".repeat(7 * 1024)).into(),
        ),
        (
            "15 KiB participantName",
            format!(r#"{{"roomName":"fuzz-room","participantName":"{}"}}"#, "p".repeat(15 * 1024)).into(),
        ),
        (
            "a 15 KiB unknown key",
            format!(r#"{{"{}":1}}"#, "k".repeat(15 * 1024)).into(),
        ),
        (
            "a 15 KiB unknown key of backticks",
            format!(r#"{{"{}":1}}"#, "k`".repeat(7 * 1024)).into(),
        ),
        (
            "a 15 KiB value for a unit action",
            format!(
                r#"{{"roomName":"fuzz-room","userId":"{TARGET}","action":{{"kick":"{}"}},"title":1,"text":1}}"#,
                "v".repeat(15 * 1024)
            )
            .into(),
        ),
        (
            "a 15 KiB unknown action",
            format!(
                r#"{{"roomName":"fuzz-room","userId":"{TARGET}","action":"{}","title":1,"text":1}}"#,
                "v".repeat(15 * 1024)
            )
            .into(),
        ),
        (
            "a 15 KiB userId",
            format!(r#"{{"roomName":"fuzz-room","userId":"{}","title":1,"text":1}}"#, "9".repeat(15 * 1024)).into(),
        ),
        (
            "exactly 16 KiB",
            {
                let mut body = format!(r#"{{"title":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
                body.truncate(MAX_BODY_BYTES - 2);
                body.push_str("\"}");
                body.into()
            },
        ),
        ("numbers as strings", br#"{"roomName":5,"title":6,"text":7,"participantName":8,"userId":9,"action":10}"#.to_vec()),
        ("a number past f64", br#"{"roomName":1e400}"#.to_vec()),
        ("a number past u64", br#"{"title":184467440737095516160000}"#.to_vec()),
        ("negative zero", br#"{"roomName":-0}"#.to_vec()),
        ("NaN", br#"{"roomName":NaN}"#.to_vec()),
        ("Infinity", br#"{"title":Infinity}"#.to_vec()),
        ("an object as a string", br#"{"roomName":{"$ne":""},"title":{"a":1}}"#.to_vec()),
        ("booleans", br#"{"roomName":true,"title":false,"text":null}"#.to_vec()),
        ("a NUL in a title", br#"{"title":"a\u0000b","roomName":"nul-room"}"#.to_vec()),
        ("a NUL in a roomName", br#"{"roomName":"fuzz\u0000room"}"#.to_vec()),
        (
            "a NUL in chat text",
            br#"{"roomName":"fuzz-room","text":"hi\u0000","participantName":"x"}"#.to_vec(),
        ),
        (
            "a NUL in a participantName",
            br#"{"roomName":"fuzz-room","participantName":"\u0000"}"#.to_vec(),
        ),
        ("a NUL in a key", br#"{"roomName\u0000":"fuzz-room"}"#.to_vec()),
        ("a raw NUL byte", b"{\"roomName\":\"fuzz\x00room\"}".to_vec()),
        ("a lone high surrogate", br#"{"title":"\ud800","roomName":"fuzz-room","text":"\ud800"}"#.to_vec()),
        ("a lone low surrogate", br#"{"title":"\udc00","roomName":"\udc00"}"#.to_vec()),
        ("a reversed pair", br#"{"title":"\udc00\ud800","text":"\ude00\ud83d"}"#.to_vec()),
        ("a high surrogate then a letter", br#"{"roomName":"\ud800\u0041"}"#.to_vec()),
        ("a truncated escape", br#"{"roomName":"\u12"}"#.to_vec()),
        ("an invalid escape", br#"{"roomName":"\x41"}"#.to_vec()),
        ("a UTF-8 BOM", b"\xef\xbb\xbf{\"roomName\":\"fuzz-room\"}".to_vec()),
        ("a UTF-16 BOM", b"\xff\xfe{\x00}\x00".to_vec()),
        ("invalid UTF-8 in a string", b"{\"title\":\"\xff\xfe\",\"roomName\":\"fuzz-room\"}".to_vec()),
        ("an overlong slash", b"{\"roomName\":\"\xc0\xaf\"}".to_vec()),
        ("a CESU-8 surrogate", b"{\"title\":\"\xed\xa0\x80\"}".to_vec()),
        ("a truncated sequence", b"{\"text\":\"\xe2\x82\"}".to_vec()),
        ("invalid UTF-8 in a key", b"{\"room\xffName\":\"fuzz-room\"}".to_vec()),
        ("two objects", br#"{"roomName":"fuzz-room"}{"roomName":"fuzz-room"}"#.to_vec()),
        ("trailing garbage", br#"{"roomName":"fuzz-room"} x"#.to_vec()),
        ("a trailing comma", br#"{"roomName":"fuzz-room",}"#.to_vec()),
        ("single quotes", br#"{'roomName':'fuzz-room'}"#.to_vec()),
        ("a comment", b"{/* */\"roomName\":\"fuzz-room\"}".to_vec()),
        ("an empty object", b"{}".to_vec()),
        ("only NULs", vec![0; 64]),
        ("form encoded", b"roomName=fuzz-room&title=x".to_vec()),
    ];
    bodies.push((
        "over 16 KiB",
        format!(r#"{{"title":"{}"}}"#, "x".repeat(MAX_BODY_BYTES)).into(),
    ));
    bodies.push(("16 KiB + 1 of spaces", vec![b' '; MAX_BODY_BYTES + 1]));
    bodies
}

#[tokio::test]
async fn structured_nasties_are_400_or_413_and_never_echoed() {
    let (app, token) = app_with_rooms().await;
    let mut failures = Vec::new();
    for (what, bytes) in nasty_bodies() {
        for endpoint in JsonEndpoint::ALL {
            let response = post(&app, endpoint, post_request(&token, Body::Binary(bytes.clone()))).await;
            let expected = if bytes.len() > MAX_BODY_BYTES {
                (413, "payload_too_large")
            } else {
                (400, "invalid_request")
            };
            let body = body_of(&response);
            let shown: String = body.chars().take(300).collect();
            if (response.status, response.error_code()) != expected {
                failures.push(format!(
                    "{what} to {endpoint:?}: expected {expected:?}, got {shown}"
                ));
            } else if body.len() >= 512 {
                failures.push(format!(
                    "{what} to {endpoint:?}: the error echoes the input ({} bytes): {shown}…",
                    body.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The parser is not simply refusing everything: the same shapes done right pass.
    let ok = post(
        &app,
        JsonEndpoint::Chat,
        post_request(
            &token,
            Body::Text(r#"{"roomName":"fuzz-room","text":"\ud83d\ude00 \u00e9"}"#.into()),
        ),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert_eq!(ok.body["message"]["text"], "😀 é");
}

#[tokio::test]
async fn signed_webhooks_with_nasty_bodies_are_acknowledged_or_refused_never_5xx() {
    let (app, _) = app_with_rooms().await;
    let deep =
        |open: &str, close: &str, depth: usize| format!("{}1{}", open.repeat(depth), close.repeat(depth));
    let bodies = [
        deep("[", "]", 10_000),
        deep("{\"a\":", "}", 10_000),
        format!(
            r#"{{"id":"EV_deep","event":"participant_joined","room":{{"name":"fuzz-room","metadata":{}}}}}"#,
            deep("{\"a\":", "}", 10_000)
        ),
        r#"{"id":"EV_dup","event":"participant_joined","event":"room_finished","room":{"name":"fuzz-room"}}"#.into(),
        r#"{"id":"EV_sur","event":"participant_joined","room":{"name":"\ud800"}}"#.into(),
        r#"{"id":"EV_nul","event":"participant_joined","room":{"name":"fuzz\u0000room"},"participant":{"sid":"\u0000","identity":"\u0000"}}"#.into(),
        r#"{"id":5,"event":[],"room":"fuzz-room","createdAt":{"a":1}}"#.into(),
        r#"{"event":"participant_joined","room":{"name":"fuzz-room"},"participant":{"sid":"PA_x","identity":"x","permission":{"hidden":"yes"}}}"#.into(),
        format!(r#"{{"id":"{}","event":"room_started"}}"#, "i".repeat(60 * 1024)),
        format!(r#"{{"id":"{}","event":"room_started"}}"#, "i".repeat(70 * 1024)),
        "\u{feff}{}".into(),
        String::new(),
    ];
    for body in bodies {
        let response = app.deliver(signed_webhook(&body, LIVEKIT_API_SECRET)).await;
        let head: String = body.chars().take(80).collect();
        assert!(
            response.status < 500,
            "{head}… ({} bytes) → {} {}",
            body.len(),
            response.status,
            response.body
        );
        if response.status >= 400 {
            response.error_code();
        }
    }
    assert_eq!(app.viewer_count(ROOM).await, 0);
}

// ---------------------------------------------------------------------------
// Authorization headers and bearer tokens
// ---------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

const ALGS: &[&str] = &[
    "none", "None", "NONE", "HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS512", "PS256", "EdDSA",
    "hs256", "", "HS256 ",
];
const KIDS: &[&str] = &["es256-a", "es256-b", "rs256", "", "../../etc/passwd"];
const SCHEMES: &[&str] = &[
    "Bearer ", "bearer ", "BEARER ", "Bearer  ", "Basic ", "Bearer", "Token ", "",
];
const QUERY_NAMES: &[&str] = &["limit", "cursor", "roomName", "before"];
const ODD_QUERY_NAMES: &[&str] = &["Limit", "limit ", "room_name", "", "__proto__", "limit[]"];
const ODD_NUMBERS: &[&str] = &[
    "",
    " 5",
    "5 ",
    "+5",
    "05",
    "1e2",
    "0x10",
    "5.0",
    "١٠",
    "99999999999999999999",
];

/// Odd JOSE headers: algorithms that must be refused or that need keys the
/// token does not name, remote and embedded keys, `crit`, strange types.
fn jose_header() -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        proptest::sample::select(ALGS).prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        json_value(),
    ];
    let kid = prop_oneof![
        proptest::sample::select(KIDS).prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::from("k".repeat(4096))),
        json_value(),
    ];
    let extra = prop_oneof![
        Just(("jku", json!("https://evil.example/jwks.json"))),
        Just(("jwk", json!({"kty": "oct", "k": "c2VjcmV0"}))),
        Just(("x5u", json!("https://evil.example/cert.pem"))),
        Just(("x5c", json!(["MIIB"]))),
        Just(("crit", json!(["exp"]))),
        Just(("typ", json!(5))),
        Just(("cty", json!("JWT"))),
        Just(("b64", json!(false))),
        Just(("zip", json!("DEF"))),
    ];
    (
        proptest::option::weighted(0.95, alg),
        proptest::option::weighted(0.6, kid),
        vec(extra, 0..3),
    )
        .prop_map(|(alg, kid, extras)| {
            let mut header = serde_json::Map::new();
            if let Some(alg) = alg {
                header.insert("alg".into(), alg);
            }
            if let Some(kid) = kid {
                header.insert("kid".into(), kid);
            }
            for (name, value) in extras {
                header.insert(name.into(), value);
            }
            Value::Object(header)
        })
}

/// Claims around what a Supabase session carries, each part possibly wrong,
/// missing or of the wrong type.
fn claims(issuer: String) -> impl Strategy<Value = Value> {
    let now = chrono::Utc::now().timestamp();
    let sub = prop_oneof![
        3 => any::<u128>().prop_map(|n| json!(Uuid::from_u128(n).to_string())),
        1 => any::<u128>().prop_map(|n| json!(Uuid::from_u128(n).simple().to_string())),
        1 => any::<u128>().prop_map(|n| json!(Uuid::from_u128(n).urn().to_string())),
        1 => json_value(),
    ];
    let aud = prop_oneof![
        3 => Just(json!("authenticated")),
        1 => Just(json!(["authenticated"])),
        1 => Just(json!(["anon", "authenticated"])),
        1 => Just(json!("anon")),
        1 => json_value(),
    ];
    let role = prop_oneof![
        3 => Just(json!("authenticated")),
        1 => Just(json!("anon")),
        1 => Just(json!("service_role")),
        1 => Just(json!("Authenticated")),
        1 => json_value(),
    ];
    let time = prop_oneof![
        3 => (-7_200i64..7_200).prop_map(move |d| json!(now + d)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => Just(json!(1e300)),
        1 => Just(json!((now + 3600).to_string())),
        1 => json_value(),
    ]
    .boxed();
    let iss = prop_oneof![
        3 => Just(json!(issuer.clone())),
        1 => Just(json!(format!("{issuer}/"))),
        1 => json_value(),
    ];
    (
        proptest::option::weighted(0.9, sub),
        proptest::option::weighted(0.9, aud),
        proptest::option::weighted(0.9, role),
        proptest::option::weighted(0.9, time.clone()),
        proptest::option::weighted(0.2, time),
        proptest::option::weighted(0.9, iss),
        proptest::option::weighted(0.2, btree_map("\\PC{0,8}", json_value(), 0..3)),
    )
        .prop_map(|(sub, aud, role, exp, nbf, iss, extra)| {
            let mut claims = serde_json::Map::new();
            for (name, value) in extra.into_iter().flatten() {
                claims.insert(name, value);
            }
            for (name, value) in [
                ("sub", sub),
                ("aud", aud),
                ("role", role),
                ("exp", exp),
                ("nbf", nbf),
                ("iss", iss),
            ] {
                if let Some(value) = value {
                    claims.insert(name.into(), value);
                }
            }
            Value::Object(claims)
        })
}

/// What the `Authorization` header carries.
fn authorization(issuer: String) -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        "[A-Za-z0-9_=+/-]{0,80}",
        vec(any::<u8>(), 0..120).prop_map(|b| b64(&b)),
        json_value().prop_map(|v| b64(v.to_string().as_bytes())),
    ]
    .boxed();
    let triple = (segment.clone(), segment.clone(), segment)
        .prop_map(|(a, b, c)| format!("Bearer {a}.{b}.{c}").into_bytes());
    let forged_token =
        (jose_header(), claims(issuer), vec(any::<u8>(), 0..300)).prop_map(|(header, claims, signature)| {
            format!("Bearer {}", forged(&header, &claims, &signature)).into_bytes()
        });
    let scheme = proptest::sample::select(SCHEMES);
    prop_oneof![
        2 => vec(any::<u8>(), 0..300),
        2 => (scheme.clone(), any::<String>()).prop_map(|(s, t)| format!("{s}{t}").into_bytes()),
        1 => (scheme, vec(any::<u8>(), 0..200)).prop_map(|(s, t)| [s.as_bytes(), &t].concat()),
        3 => triple,
        6 => forged_token,
        1 => (1usize..12_000, "[A-Za-z0-9_.-]{1,4}")
            .prop_map(|(n, unit)| format!("Bearer {}", unit.repeat(n / unit.len() + 1)).into_bytes()),
    ]
}

/// The token `authenticate` would be given for a header, if any.
fn bearer_of(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[test]
fn arbitrary_authorization_headers_are_401_never_a_panic() {
    let rt = runtime();
    let app = rt.block_on(TestApp::spawn());
    let issuer = format!("{}/auth/v1", app.supabase_url.as_deref().unwrap());
    let body = format!(r#"{{"roomName":"{ROOM}","participantName":"fuzzer"}}"#);
    check(300, authorization(issuer), |header| {
        let Ok(value) = HeaderValue::from_bytes(&header) else {
            // Not representable as a header: API Gateway could not deliver it.
            return Err(TestCaseError::reject("not a header value"));
        };
        let mut request = Request::new(Body::Text(body.clone()));
        *request.method_mut() = Method::POST;
        request.headers_mut().insert("authorization", value);
        let response = rt.block_on(app.send(issue_token, request));
        let shown = String::from_utf8_lossy(&header);
        prop_assert_eq!(
            (response.status, response.error_code()),
            (401, "unauthorized"),
            "{} → {}",
            shown,
            response.body
        );
        prop_assert_eq!(
            response.headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        // And directly: the verifier refuses, as a rejection, not an outage.
        let token = bearer_of(&header).unwrap_or(&shown);
        match rt.block_on(app.state.auth.authenticate(token)) {
            Ok(user) => prop_assert!(false, "{} authenticated as {}", shown, user.id),
            Err(AuthError::KeysUnavailable(e)) => prop_assert!(false, "{} → keys unavailable: {}", shown, e),
            Err(_) => {}
        }
        Ok(())
    });
}

#[tokio::test]
async fn huge_and_deeply_nested_tokens_are_401() {
    let app = TestApp::spawn().await;
    let claims = app.claims_for(Uuid::new_v4());
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let tokens = [
        "a".repeat(10 * 1024),
        format!("{}.{}.{}", "a".repeat(4000), "b".repeat(4000), "c".repeat(2000)),
        ".".repeat(10 * 1024),
        "a.".repeat(5 * 1024),
        format!("{}.", hs256(&claims)).repeat(40),
        forged(&json!({"alg": "HS256", "kid": nested(5_000)}), &claims, b"sig"),
        forged(&json!({"alg": "HS256"}), &json!({"sub": nested(5_000)}), b"sig"),
        forged(
            &json!({"alg": "ES256", "kid": "k".repeat(8 * 1024)}),
            &claims,
            &[0; 64],
        ),
        forged(
            &json!({"alg": "RS256", "kid": "rs256"}),
            &claims,
            &vec![0xff; 4096],
        ),
        forged(&json!({"alg": "ES256", "kid": "es256-a"}), &claims, &[0xff; 64]),
        forged(&json!({"alg": "ES256", "kid": "es256-a"}), &claims, &[]),
        format!("{}.{}.", b64(br#"{"alg":"HS256"}"#), b64(&vec![b'{'; 7_000])),
        format!("{}.{}.{}", b64(&[0xff, 0xfe]), b64(b"\xed\xa0\x80"), b64(b"")),
        format!("{}.e30.", b64(b"\xef\xbb\xbf{\"alg\":\"HS256\"}")),
        {
            // A real token with a 9 KiB claim: correctly signed, still not a user session.
            let mut big = claims.clone();
            big["role"] = json!("x".repeat(9 * 1024));
            hs256(&big)
        },
    ];
    for token in tokens {
        let response = app
            .call(
                issue_token,
                Some(&token),
                r#"{"roomName":"r","participantName":"p"}"#,
            )
            .await;
        let head: String = token.chars().take(60).collect();
        response.assert_error(401, "unauthorized");
        let verdict = app.state.auth.authenticate(&token).await;
        assert!(
            matches!(verdict, Err(AuthError::Rejected(_) | AuthError::Invalid(_))),
            "{head}… ({} bytes): {verdict:?}",
            token.len()
        );
    }
    // The sizes alone do not make a token fail: a valid one with a big extra claim passes.
    let mut big = claims.clone();
    big["user_metadata"] = json!({"bio": "x".repeat(9 * 1024)});
    assert!(app.state.auth.authenticate(&hs256(&big)).await.is_ok());
}

/// A Supabase user session as the project issues it, in each of the forms
/// it may take: every one of these must pass.
fn valid_claims(issuer: String) -> impl Strategy<Value = Value> {
    let now = chrono::Utc::now().timestamp();
    (
        any::<u128>(),
        prop_oneof![
            Just(json!("authenticated")),
            Just(json!(["authenticated"])),
            Just(json!(["anon", "authenticated"])),
        ],
        120i64..7_200,
        proptest::option::of(120i64..3_600),
        any::<bool>(),
    )
        .prop_map(move |(sub, aud, expires_in, valid_since, anonymous)| {
            let mut claims = json!({
                "sub": Uuid::from_u128(sub).to_string(),
                "aud": aud,
                "role": "authenticated",
                "exp": now + expires_in,
                "iss": issuer.clone(),
                "is_anonymous": anonymous,
            });
            if let Some(ago) = valid_since {
                claims["nbf"] = json!(now - ago);
            }
            claims
        })
}

#[test]
fn correctly_signed_tokens_pass_only_when_every_claim_rule_holds() {
    let rt = runtime();
    let app = rt.block_on(TestApp::spawn());
    let issuer = format!("{}/auth/v1", app.supabase_url.as_deref().unwrap());
    // Half are sessions that must pass, half anything: a rule that refused
    // everything, or a valid form, fails the first half; one that let an
    // invalid claim through fails the second.
    let with_signer = (
        prop_oneof![
            valid_claims(issuer.clone()).prop_map(|claims| (true, claims)),
            claims(issuer.clone()).prop_map(|claims| (false, claims)),
        ],
        prop_oneof![Just("HS256"), Just("es256-a"), Just("rs256")],
    );
    check(200, with_signer, |((must_pass, claims), signer)| {
        let token = match signer {
            "HS256" => hs256(&claims),
            key => asymmetric(key, &claims),
        };
        let verdict = rt.block_on(app.state.auth.authenticate(&token));
        let user = match verdict {
            Ok(user) => user,
            Err(AuthError::KeysUnavailable(e)) => {
                prop_assert!(false, "keys unavailable: {}", e);
                return Ok(());
            }
            Err(refusal) => {
                prop_assert!(
                    !must_pass,
                    "a valid session was refused: {} ({})",
                    claims,
                    refusal
                );
                return Ok(());
            }
        };
        // Accepted: then it is a Supabase user session for this project.
        let now = chrono::Utc::now().timestamp() as f64;
        prop_assert_eq!(&claims["role"], &json!("authenticated"), "{}", claims);
        prop_assert_eq!(&claims["iss"], &json!(issuer), "{}", claims);
        let aud = &claims["aud"];
        prop_assert!(
            aud == "authenticated"
                || aud
                    .as_array()
                    .is_some_and(|a| a.contains(&json!("authenticated"))),
            "{}",
            claims
        );
        let sub = claims["sub"].as_str().map(Uuid::parse_str);
        prop_assert!(matches!(sub, Some(Ok(id)) if id == user.id), "{}", claims);
        let exp = claims["exp"].as_f64();
        prop_assert!(exp.is_some_and(|exp| exp >= now - 35.0), "{}", claims);
        if let Some(nbf) = claims.get("nbf") {
            prop_assert!(nbf.as_f64().is_some_and(|nbf| nbf <= now + 35.0), "{}", claims);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Query strings
// ---------------------------------------------------------------------------

fn query_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(QUERY_NAMES).prop_map(str::to_owned),
        1 => proptest::sample::select(ODD_QUERY_NAMES).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// A cursor as this API encodes it (`<created_at µs>.<id>`, base64url), with
/// any timestamp and a valid, odd or invalid id.
fn cursor() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            any::<i64>(),
            -300_000_000_000_000_000i64..300_000_000_000_000_000,
            Just(i64::MIN),
            Just(i64::MAX),
        ],
        prop_oneof![
            2 => Just(ROOM.to_owned()),
            2 => "[A-Za-z0-9_-]{1,128}",
            1 => "[A-Za-z0-9_.-]{0,130}",
            1 => any::<String>(),
            // Postgres refuses a NUL in text: it must be refused before it.
            1 => any::<String>().prop_map(|id| format!("{id}\0")),
        ],
    )
        .prop_map(|(micros, id)| b64(format!("{micros}.{id}").as_bytes()))
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (-2i64..105).prop_map(|n| n.to_string()),
        1 => proptest::sample::select(ODD_NUMBERS).prop_map(str::to_owned),
        3 => cursor(),
        1 => "[A-Za-z0-9_=+/-]{0,60}",
        1 => vec(any::<u8>(), 0..60).prop_map(|b| b64(&b)),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        2 => Just(ROOM.to_owned()),
        2 => any::<String>(),
    ]
}

#[test]
fn arbitrary_query_strings_for_the_listings_are_never_5xx() {
    let rt = runtime();
    let (app, token) = rt.block_on(app_with_rooms());
    rt.block_on(async {
        let said = app
            .call(
                post_message,
                Some(&token),
                &json!({"roomName": ROOM, "text": "hello"}).to_string(),
            )
            .await;
        assert_eq!(said.status, 201, "{}", said.body);
    });
    let query = (vec((query_name(), query_value()), 0..4), any::<bool>());
    check(200, query, |(params, chat)| {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let request = get_request(Some(&token), &pairs, None);
        let response = if chat {
            rt.block_on(app.send(chat_history, request))
        } else {
            rt.block_on(app.send(list_streams, request))
        };
        client_side(&response, &(if chat { "chat" } else { "streams" }, &params))
    });
}

#[test]
fn well_formed_cursors_with_any_timestamp_are_never_5xx() {
    let rt = runtime();
    let (app, token) = rt.block_on(app_with_rooms());
    let query = (cursor(), proptest::option::of(1i64..=100));
    check(100, query, |(cursor, limit)| {
        let limit = limit.map(|n| n.to_string());
        let mut pairs = vec![("cursor", cursor.as_str())];
        if let Some(limit) = &limit {
            pairs.push(("limit", limit));
        }
        let response = rt.block_on(app.send(list_streams, get_request(Some(&token), &pairs, None)));
        client_side(&response, &pairs)?;
        // The same cursor grammar pages the stream's viewers and raised hands
        // (the caller is the streamer: both lists are theirs to read).
        let viewers = rt.block_on(app.send(list_viewers, get_request(Some(&token), &pairs, Some(ROOM))));
        client_side(&viewers, &("viewers", &pairs))?;
        pairs.push(("roomName", ROOM));
        let hands = rt.block_on(app.send(stage_state, get_request(Some(&token), &pairs, None)));
        client_side(&hands, &("stage", &pairs))
    });
}

/// Postgres refuses a NUL in text (SQLSTATE 22021), so a cursor whose key
/// carries one is refused before it, on every list that pages.
#[tokio::test]
async fn a_cursor_key_with_a_nul_is_400_on_every_paged_list() {
    let (app, token) = app_with_rooms().await;
    let cursor = b64("1700000000000000.a\0b".as_bytes());
    let with_cursor = [("cursor", cursor.as_str())];
    let with_room = [("cursor", cursor.as_str()), ("roomName", ROOM)];
    for (list, response) in [
        (
            "streams",
            app.send(list_streams, get_request(Some(&token), &with_cursor, None))
                .await,
        ),
        (
            "viewers",
            app.send(list_viewers, get_request(Some(&token), &with_cursor, Some(ROOM)))
                .await,
        ),
        (
            "stage",
            app.send(stage_state, get_request(Some(&token), &with_room, None))
                .await,
        ),
    ] {
        assert_eq!(
            (response.status, response.error_code()),
            (400, "invalid_request"),
            "{list}: {}",
            response.body
        );
    }
}

/// A cursor whose timestamp chrono accepts but Postgres cannot store (before
/// 4713 BC) is a client error like any other cursor this API did not return.
#[tokio::test]
async fn a_cursor_before_postgres_earliest_timestamp_is_400() {
    let (app, token) = app_with_rooms().await;
    // -300 000 000 000 000 000 µs is about 7537 BC; Postgres starts at 4713 BC.
    for micros in ["-300000000000000000", "-6000000000000000000"] {
        let cursor = b64(format!("{micros}.{ROOM}").as_bytes());
        let response = app
            .send(
                list_streams,
                get_request(Some(&token), &[("cursor", &cursor)], None),
            )
            .await;
        assert_eq!(
            (response.status, response.error_code()),
            (400, "invalid_request"),
            "cursor {cursor} ({micros}.{ROOM}): {}",
            response.body
        );
    }
}
