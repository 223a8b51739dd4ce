//! A rotated database password: the role's password changes in Postgres and
//! the new `DATABASE_URL` is put in the Secrets Manager secret (`moto_server`).
//! Warm state picks it up on the first refused connection, without a cold start.
//!
//! `scripts/lib.sh` makes members of the role `password_login` authenticate
//! with SCRAM passwords; every other role of the test cluster is trusted.

use std::time::Duration;

use serde_json::json;
use shared::handlers::start_stream;
use shared::secrets::SecretSource;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::helpers::{API_ROLE, AppOptions, TestApp, connect, create_secret, migrated_database, moto_client};

static PASSWORD_GROUP: OnceCell<()> = OnceCell::const_new();

/// A login role of `password_login` with `password` and the privileges of
/// the functions' role. Returns the role's name.
async fn password_role(admin_url: &str, password: &str) -> String {
    let admin = connect(admin_url).await;
    PASSWORD_GROUP
        .get_or_init(|| async {
            admin
                .batch_execute(
                    "DO $$ BEGIN
                       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'password_login') THEN
                         CREATE ROLE password_login NOLOGIN;
                       END IF;
                     END $$",
                )
                .await
                .expect("create the password_login group");
        })
        .await;
    let role = format!("rotating_{}", Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE password_login, {API_ROLE}"
        ))
        .await
        .expect("create the role");
    role
}

fn url_for(admin_url: &str, role: &str, password: &str) -> String {
    let config: tokio_postgres::Config = admin_url.parse().expect("admin URL parses");
    let port = config.get_ports()[0];
    let database = config.get_dbname().expect("admin URL names its database");
    format!("postgres://{role}:{password}@127.0.0.1:{port}/{database}")
}

async fn put_database_url(secret_id: &str, url: &str) {
    moto_client()
        .put_secret_value()
        .secret_id(secret_id)
        .secret_string(json!({ "DATABASE_URL": url }).to_string())
        .send()
        .await
        .expect("moto stores the new secret value");
}

/// Rotation as Secrets Manager's single-user strategy does it: the role's
/// password changes, the secret gets `new_url`, and existing sessions are
/// closed (here at once, so the next request needs a new connection).
async fn rotate(admin: &tokio_postgres::Client, secret_id: &str, role: &str, password: &str, new_url: &str) {
    admin
        .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{password}'"))
        .await
        .unwrap();
    put_database_url(secret_id, new_url).await;
    // Terminated, and each session waited for until it is gone (the timeout
    // argument), so the pool's connection is dead before the next request.
    admin
        .query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap();
}

async fn app_reading(secret_id: &str, admin_url: &str) -> TestApp {
    TestApp::spawn_with(AppOptions {
        database_url: Some(admin_url.to_owned()),
        secret: Some(SecretSource::new(moto_client(), secret_id)),
        ..AppOptions::default()
    })
    .await
}

async fn refused(url: &str) -> bool {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(_) => false,
        Err(error) => error.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
    }
}

#[tokio::test]
async fn a_password_rotated_while_warm_is_read_again_from_the_secret() {
    let admin_url = migrated_database().await;
    let role = password_role(&admin_url, "first-password").await;
    let first_url = url_for(&admin_url, &role, "first-password");
    let secret_id = create_secret(&moto_client(), &json!({ "DATABASE_URL": first_url }).to_string()).await;
    let app = app_reading(&secret_id, &admin_url).await;
    let host = Uuid::new_v4();
    app.start_stream(host, "before-rotation").await;
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1";
    let admin = connect(&admin_url).await;
    let count: i64 = admin.query_one(sessions, &[&role]).await.unwrap().get(0);
    assert!(count >= 1, "the app connected as {role}");

    let second_url = url_for(&admin_url, &role, "second-password");
    rotate(&admin, &secret_id, &role, "second-password", &second_url).await;
    let left: i64 = admin.query_one(sessions, &[&role]).await.unwrap().get(0);
    assert_eq!(left, 0, "every session of {role} closed");
    assert!(refused(&first_url).await, "the old password no longer works");

    let viewer = app
        .request_token(&app.token_for(Uuid::new_v4()), "before-rotation")
        .await;
    assert_eq!(viewer.status, 200, "{}", viewer.body);
    app.start_stream(Uuid::new_v4(), "after-rotation").await;
    assert_eq!(app.state.db.manager().secret_rereads(), 1);
    let count: i64 = admin.query_one(sessions, &[&role]).await.unwrap().get(0);
    assert!(count >= 1, "connected again as {role}, with the new password");
}

/// The rotated URL asks for a plain connection; the functions keep the TLS
/// mode they started with (only the credentials rotate), so a deployment
/// that requires TLS never falls back to plaintext because of a pasted URL.
#[tokio::test]
async fn a_rotated_url_does_not_change_the_tls_mode() {
    let admin_url = migrated_database().await;
    let role = password_role(&admin_url, "first-password").await;
    let first_url = url_for(&admin_url, &role, "first-password") + "?sslmode=require";
    let secret_id = create_secret(&moto_client(), &json!({ "DATABASE_URL": first_url }).to_string()).await;
    let app = app_reading(&secret_id, &admin_url).await;
    app.start_stream(Uuid::new_v4(), "tls-before").await;

    let admin = connect(&admin_url).await;
    let plain = url_for(&admin_url, &role, "second-password") + "?sslmode=disable";
    rotate(&admin, &secret_id, &role, "second-password", &plain).await;
    app.start_stream(Uuid::new_v4(), "tls-after").await;
    assert_eq!(app.state.db.manager().secret_rereads(), 1);
    let encrypted: Vec<bool> = admin
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        !encrypted.is_empty() && encrypted.iter().all(|ssl| *ssl),
        "the new credentials' sessions are encrypted: {encrypted:?}"
    );
}

#[tokio::test]
async fn a_refused_password_the_secret_still_holds_is_a_503_and_one_secret_read() {
    let admin_url = migrated_database().await;
    let role = password_role(&admin_url, "the-right-one").await;
    let wrong_url = url_for(&admin_url, &role, "not-the-password");
    let secret_id = create_secret(&moto_client(), &json!({ "DATABASE_URL": wrong_url }).to_string()).await;
    let app = app_reading(&secret_id, &admin_url).await;

    let token = app.token_for(Uuid::new_v4());
    let body = json!({ "title": "A stream", "roomName": "refused" }).to_string();
    let attempts = (0..8).map(|_| app.call(start_stream, Some(&token), &body));
    for response in futures::future::join_all(attempts).await {
        response.assert_error(503, "unavailable");
        assert!(
            !response.body.to_string().contains("password"),
            "no internals in the body: {}",
            response.body
        );
    }
    assert_eq!(
        app.state.db.manager().secret_rereads(),
        1,
        "eight refusals at once read the secret once"
    );
    let again = app.call(start_stream, Some(&token), &body).await;
    again.assert_error(503, "unavailable");
    assert_eq!(
        app.state.db.manager().secret_rereads(),
        1,
        "within the interval the secret is not read again"
    );
    assert!(app.stream_row("refused").await.is_none(), "nothing half-done");

    // The secret is corrected; the same warm state recovers.
    // The next read comes once the interval (5 s) has passed since the last:
    // the app's retries are refused until then, and the first after it
    // reads the secret once and goes through.
    put_database_url(&secret_id, &url_for(&admin_url, &role, "the-right-one")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = app.call(start_stream, Some(&token), &body).await;
        if response.status != 503 || std::time::Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(app.state.db.manager().secret_rereads(), 2);
}
