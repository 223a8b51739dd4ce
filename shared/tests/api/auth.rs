use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::auth::AuthError;
use shared::handlers::issue_token;
use uuid::Uuid;

use crate::helpers::{
    AppOptions, TestApp, asymmetric, forged, hs256, hs256_with_secret, public_jwk, public_pem,
};
use crate::livekit_server::SETTLE;

async fn verdict(app: &TestApp, token: &str) -> Result<Uuid, String> {
    app.state
        .auth
        .authenticate(token)
        .await
        .map(|user| user.id)
        .map_err(|e| e.to_string())
}

/// Refused as the caller's fault (a 401: sign in again), not for keys that
/// could not be loaded (a 503: retry), which a bad token must never be.
async fn refused(app: &TestApp, token: &str) -> bool {
    matches!(
        app.state.auth.authenticate(token).await,
        Err(AuthError::Rejected(_) | AuthError::Invalid(_))
    )
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

#[tokio::test]
async fn a_supabase_session_token_passes_as_hs256_es256_and_rs256() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let claims = app.claims_for(user);
    assert_eq!(verdict(&app, &hs256(&claims)).await, Ok(user));
    assert_eq!(verdict(&app, &asymmetric("es256-a", &claims)).await, Ok(user));
    assert_eq!(verdict(&app, &asymmetric("rs256", &claims)).await, Ok(user));
}

#[tokio::test]
async fn tokens_that_are_not_user_sessions_are_refused() {
    let app = TestApp::spawn().await;
    let claims = app.claims_for(Uuid::new_v4());
    let now = chrono::Utc::now().timestamp();
    let cases = [
        (
            "the anon key",
            with(without(claims.clone(), "sub"), "role", json!("anon")),
        ),
        ("role anon", with(claims.clone(), "role", json!("anon"))),
        (
            "the service role key",
            with(claims.clone(), "role", json!("service_role")),
        ),
        ("no role", without(claims.clone(), "role")),
        ("another audience", with(claims.clone(), "aud", json!("service"))),
        ("no audience", without(claims.clone(), "aud")),
        ("expired", with(claims.clone(), "exp", json!(now - 120))),
        ("no exp", without(claims.clone(), "exp")),
        (
            "exp as a string",
            with(claims.clone(), "exp", json!((now + 3600).to_string())),
        ),
        ("not yet valid", with(claims.clone(), "nbf", json!(now + 600))),
        ("sub not a UUID", with(claims.clone(), "sub", json!("user-123"))),
        (
            "another issuer",
            with(claims.clone(), "iss", json!("https://evil.supabase.co/auth/v1")),
        ),
        ("no issuer", without(claims.clone(), "iss")),
    ];
    for (what, claims) in cases {
        assert!(refused(&app, &hs256(&claims)).await, "{what} must not pass");
        assert!(
            refused(&app, &asymmetric("es256-a", &claims)).await,
            "{what} (ES256) must not pass"
        );
    }
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_still_passes() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let claims = with(
        app.claims_for(user),
        "exp",
        json!(chrono::Utc::now().timestamp() - 5),
    );
    assert_eq!(verdict(&app, &hs256(&claims)).await, Ok(user));
}

#[tokio::test]
async fn bad_signatures_and_algorithm_tricks_are_refused() {
    let app = TestApp::spawn().await;
    let claims = app.claims_for(Uuid::new_v4());
    let signed = hs256(&claims);
    let (head, _) = signed.rsplit_once('.').unwrap();
    let cases = [
        (
            "wrong secret",
            hs256_with_secret(&claims, b"another-secret-of-a-reasonable-length"),
        ),
        ("signature stripped", format!("{head}.")),
        (
            "alg none",
            forged(&json!({"alg": "none", "typ": "JWT"}), &claims, b""),
        ),
        (
            "alg None",
            forged(&json!({"alg": "None", "typ": "JWT"}), &claims, b""),
        ),
        // Algorithm confusion: HS256 keyed with the RSA/EC public key, which is public.
        (
            "HS256 with the RSA public key",
            hs256_with_secret(&claims, public_pem("rs256").as_bytes()),
        ),
        (
            "HS256 with the EC public key",
            hs256_with_secret(&claims, public_pem("es256-a").as_bytes()),
        ),
        ("HS384", {
            shared::jwt_crypto::install();
            let key = jsonwebtoken::EncodingKey::from_secret(crate::helpers::SUPABASE_JWT_SECRET.as_bytes());
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
                &claims,
                &key,
            )
            .unwrap()
        }),
        ("not a JWT", "definitely-not-a-jwt".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        assert!(refused(&app, &token).await, "{what} must not pass");
    }
}

#[tokio::test]
async fn an_es256_token_relabelled_with_another_kid_or_alg_is_refused() {
    let app = TestApp::spawn().await;
    let claims = app.claims_for(Uuid::new_v4());
    let token = asymmetric("es256-a", &claims);
    let (_, rest) = token.split_once('.').unwrap();
    let relabel = |header: Value| {
        use base64::Engine;
        format!(
            "{}.{rest}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string())
        )
    };
    for header in [
        json!({"alg": "ES256", "kid": "rs256", "typ": "JWT"}),
        json!({"alg": "RS256", "kid": "es256-a", "typ": "JWT"}),
        json!({"alg": "ES256", "typ": "JWT"}),
        json!({"alg": "ES256", "kid": "es256-a", "jku": "https://evil.example/jwks.json"}),
        json!({"alg": "ES256", "kid": "es256-a", "jwk": public_jwk("es256-a")}),
        json!({"alg": "ES256", "kid": "es256-a", "x5u": "https://evil.example/cert.pem"}),
    ] {
        assert!(
            refused(&app, &relabel(header.clone())).await,
            "{header} must not pass"
        );
    }
}

/// Properly signed by a key of the project's JWKS, yet naming a key of its
/// own (or a place to fetch one from), or an extension we would have to
/// understand: refused for what the header says, not for its signature.
#[tokio::test]
async fn a_signed_token_naming_keys_of_its_own_is_refused_for_it() {
    use crate::helpers::asymmetric_with_header;
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let claims = app.claims_for(user);
    let control = asymmetric_with_header("es256-a", &claims, |_| {});
    assert_eq!(
        verdict(&app, &control).await,
        Ok(user),
        "the same token, its header plain"
    );
    let embedded: jsonwebtoken::jwk::Jwk = serde_json::from_value(public_jwk("es256-a")).unwrap();
    type HeaderEdit = Box<dyn FnOnce(&mut jsonwebtoken::Header)>;
    let key_references: [(&str, HeaderEdit); 4] = [
        (
            "jku",
            Box::new(|h| h.jku = Some("https://evil.example/jwks.json".into())),
        ),
        ("jwk", Box::new(move |h| h.jwk = Some(embedded))),
        (
            "x5u",
            Box::new(|h| h.x5u = Some("https://evil.example/cert.pem".into())),
        ),
        ("x5c", Box::new(|h| h.x5c = Some(vec!["MIIB".into()]))),
    ];
    for (field, edit) in key_references {
        let token = asymmetric_with_header("es256-a", &claims, edit);
        let refused = verdict(&app, &token).await.expect_err(field);
        assert!(
            refused.contains("embedded or remote key references"),
            "{field}: {refused}"
        );
    }
    let critical = asymmetric_with_header("es256-a", &claims, |h| h.crit = Some(vec!["exp".into()]));
    let refused = verdict(&app, &critical).await.expect_err("crit");
    assert!(refused.contains("critical header extensions"), "{refused}");
}

#[tokio::test]
async fn the_jwks_is_fetched_once_and_cached() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        let token = asymmetric("es256-a", &app.claims_for(Uuid::new_v4()));
        assert!(verdict(&app, &token).await.is_ok());
        let token = asymmetric("rs256", &app.claims_for(Uuid::new_v4()));
        assert!(verdict(&app, &token).await.is_ok());
    }
    assert_eq!(app.jwks.fetches(), 1);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_become_a_flood_of_jwks_fetches() {
    let app = TestApp::spawn().await;
    assert!(
        verdict(&app, &asymmetric("es256-a", &app.claims_for(Uuid::new_v4())))
            .await
            .is_ok()
    );
    let stranger = asymmetric("es256-b", &app.claims_for(Uuid::new_v4()));
    for _ in 0..50 {
        assert!(matches!(
            app.state.auth.authenticate(&stranger).await,
            Err(AuthError::Rejected("unknown kid"))
        ));
    }
    // The first lookup fetched the keys moments ago; an unknown kid may refetch
    // only once a minute has passed since, so the flood fetches nothing.
    assert_eq!(app.jwks.fetches(), 1);
}

#[tokio::test]
async fn a_new_signing_key_is_picked_up_on_first_sight() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    app.jwks.set_keys(json!({"keys": [public_jwk("es256-b")]}));
    // First sight of es256-b: the keys are fetched then, so it passes at once.
    assert_eq!(
        verdict(&app, &asymmetric("es256-b", &app.claims_for(user))).await,
        Ok(user)
    );
    assert!(refused(&app, &asymmetric("es256-a", &app.claims_for(user))).await);
}

#[tokio::test]
async fn symmetric_keys_in_the_jwks_are_ignored() {
    let app = TestApp::spawn().await;
    use base64::Engine;
    let secret = b"a-secret-published-in-the-jwks-by-mistake";
    let oct = json!({"kty": "oct", "kid": "oct-1", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)});
    app.jwks.set_keys(json!({"keys": [oct, public_jwk("es256-a")]}));
    shared::jwt_crypto::install();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("oct-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &app.claims_for(Uuid::new_v4()),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    assert!(refused(&app, &token).await);
}

#[tokio::test]
async fn without_supabase_url_asymmetric_tokens_are_refused() {
    let app = TestApp::spawn_with(AppOptions {
        supabase_url: false,
        ..AppOptions::default()
    })
    .await;
    let claims = app.claims_for(Uuid::new_v4());
    assert!(verdict(&app, &hs256(&claims)).await.is_ok());
    assert!(refused(&app, &asymmetric("es256-a", &claims)).await);
    assert_eq!(app.jwks.fetches(), 0);
}

/// Supabase publishes a new signing key while its JWKS cannot be fetched: a
/// token signed with it is 503 (it may be fine), never 401, which the app
/// would take for "signed out"; it passes once the JWKS answers again. Keys
/// of the copy already fetched go on verifying meanwhile.
#[tokio::test]
async fn a_new_key_seen_while_the_jwks_is_down_is_a_503_until_it_answers() {
    let app = TestApp::spawn_with_settings(vec![("SUPABASE_JWKS_CACHE_SECONDS", "1".into())]).await;
    let user = Uuid::new_v4();
    let known = asymmetric("es256-a", &app.claims_for(user));
    assert_eq!(verdict(&app, &known).await, Ok(user));
    app.jwks
        .set_keys(json!({"keys": [public_jwk("es256-a"), public_jwk("es256-b")]}));
    app.jwks.set_failing(true);
    // Past the cache's second, so the new kid makes it fetch (and fail).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = asymmetric("es256-b", &app.claims_for(user));
    for attempt in ["fetching", "within the wait before the next fetch"] {
        assert!(
            matches!(
                app.state.auth.authenticate(&new).await,
                Err(AuthError::KeysUnavailable(_))
            ),
            "{attempt}"
        );
    }
    assert_eq!(
        verdict(&app, &known).await,
        Ok(user),
        "the stale copy still verifies"
    );

    app.jwks.set_failing(false);
    let deadline = Instant::now() + SETTLE;
    while verdict(&app, &new).await != Ok(user) {
        assert!(Instant::now() < deadline, "the new key never verified");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JWKS that could not be fetched on a cold start (a blip of Supabase
/// Auth) makes its tokens a 503, never a 401 (the app would sign out), and
/// is tried again within seconds, not after the minute an unknown kid waits
/// between fetches; HS256 tokens do not wait for it.
#[tokio::test]
async fn a_failed_first_jwks_fetch_is_retried_within_seconds() {
    let app = TestApp::spawn().await;
    let user = Uuid::new_v4();
    let token = asymmetric("es256-a", &app.claims_for(user));
    app.jwks.set_failing(true);
    let refused = app
        .call(
            issue_token,
            Some(&token),
            r#"{"roomName":"any","participantName":"x"}"#,
        )
        .await;
    refused.assert_error(503, "unavailable");
    assert_eq!(
        refused.headers["retry-after"], "5",
        "the keys are fetched again no sooner than that"
    );
    // HS256 tokens do not depend on the JWKS.
    let hs = app
        .call(
            issue_token,
            Some(&app.token_for(Uuid::new_v4())),
            r#"{"roomName":"any","participantName":"x"}"#,
        )
        .await;
    hs.assert_error(404, "stream_not_found");
    assert!(matches!(
        app.state.auth.authenticate(&token).await,
        Err(AuthError::KeysUnavailable(_))
    ));
    app.jwks.set_failing(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while verdict(&app, &token).await != Ok(user) {
        assert!(Instant::now() < deadline, "still refused after 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.jwks.fetches(), 2, "one failed fetch, one that answered");
}

#[tokio::test]
async fn requests_without_a_valid_bearer_are_401_before_the_body_is_read() {
    let app = TestApp::spawn().await;
    let expired = hs256(&with(app.claims_for(Uuid::new_v4()), "exp", json!(1)));
    for bearer in [None, Some(""), Some("garbage"), Some(expired.as_str())] {
        let response = app.call(issue_token, bearer, "this body is not even JSON").await;
        response.assert_error(401, "unauthorized");
        assert_eq!(response.headers.get("www-authenticate").unwrap(), "Bearer");
    }
    let mut request = lambda_http::Request::new(lambda_http::Body::Text("{}".into()));
    *request.method_mut() = lambda_http::http::Method::POST;
    let basic = format!("Basic {}", app.token_for(Uuid::new_v4()));
    request
        .headers_mut()
        .insert("authorization", basic.parse().unwrap());
    app.send(issue_token, request)
        .await
        .assert_error(401, "unauthorized");
}

/// Supabase anonymous sign-ins are one API call away for anyone: they may
/// watch, and take part (go live, chat, moderate) only where the app allows it.
#[tokio::test]
async fn anonymous_sign_ins_watch_but_take_part_only_when_allowed() {
    use shared::handlers::{moderate, post_message, start_stream};
    for allowed in [false, true] {
        let app =
            TestApp::spawn_with_settings(vec![("ALLOW_ANONYMOUS_PARTICIPATION", allowed.to_string())]).await;
        let host = Uuid::new_v4();
        app.start_stream(host, "open-stream").await;
        let guest = app.anonymous_token_for(Uuid::new_v4());
        let watch = app.request_token(&guest, "open-stream").await;
        assert_eq!(watch.status, 200, "a guest may always watch: {}", watch.body);
        // LiveKit enforces it too: unless they may take part, the guest's
        // token carries no data permission, and marks them so that an unmute
        // or a stage change keeps it that way (a mark only worth its cost
        // then: an attribute makes LiveKit tell every client of their joins).
        let claims = crate::helpers::verify_livekit_token(watch.body["token"].as_str().unwrap());
        assert_eq!(claims.video.can_publish_data, Some(allowed));
        assert_eq!(
            claims.attributes.get("anonymous").map(String::as_str),
            (!allowed).then_some("true")
        );
        let member = app
            .request_token(&app.token_for(Uuid::new_v4()), "open-stream")
            .await;
        let member = crate::helpers::verify_livekit_token(member.body["token"].as_str().unwrap());
        assert_eq!(member.video.can_publish_data, Some(true));
        assert_eq!(member.attributes.get("anonymous"), None);

        let chat = app
            .call(
                post_message,
                Some(&guest),
                r#"{"roomName":"open-stream","text":"hi"}"#,
            )
            .await;
        let start = app
            .call(
                start_stream,
                Some(&guest),
                r#"{"title":"Guest show","roomName":"guest-room"}"#,
            )
            .await;
        let guest_host = app.anonymous_token_for(Uuid::new_v4());
        if allowed {
            assert_eq!(
                (chat.status, start.status),
                (201, 201),
                "{} {}",
                chat.body,
                start.body
            );
            // The anonymous streamer moderates their own stream.
            let moderation =
                json!({"roomName": "guest-room", "userId": Uuid::new_v4(), "action": "mute"}).to_string();
            let muted = app.call(moderate, Some(&guest), &moderation).await;
            assert_eq!(muted.status, 200, "{}", muted.body);
        } else {
            chat.assert_error(403, "anonymous_not_allowed");
            start.assert_error(403, "anonymous_not_allowed");
            assert!(!app.has_room("guest-room").await);
            let moderation = json!({"roomName": "open-stream", "userId": host, "action": "kick"}).to_string();
            app.call(moderate, Some(&guest_host), &moderation)
                .await
                .assert_error(403, "anonymous_not_allowed");
        }
    }
}
