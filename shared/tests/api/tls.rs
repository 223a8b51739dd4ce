//! Postgres over TLS (rustls), as Supabase and RDS expect: the test cluster has
//! TLS on with a self-signed certificate for localhost.

use crate::helpers::{AppOptions, TestApp, as_api_role, migrated_database};

fn server_ca_pem() -> String {
    let path = std::env::var("TEST_DATABASE_CA_CERT")
        .expect("TEST_DATABASE_CA_CERT is not set: run the tests with scripts/test");
    std::fs::read_to_string(path).expect("read the test server's certificate")
}

fn unrelated_ca_pem() -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/unrelated-ca.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn app_with(url_suffix: &str, host: &str, ca: Option<String>) -> TestApp {
    let url = as_api_role(&migrated_database().await).replace("127.0.0.1", host) + url_suffix;
    TestApp::spawn_with(AppOptions {
        database_url: Some(url),
        database_ca_cert: ca,
        ..AppOptions::default()
    })
    .await
}

async fn connection_is_encrypted(app: &TestApp) -> Result<bool, String> {
    let client = app.state.db.get().await.map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_typed_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmode_require_encrypts_the_connection() {
    let app = app_with("?sslmode=require", "127.0.0.1", None).await;
    assert_eq!(connection_is_encrypted(&app).await, Ok(true));
}

/// libpq's two modes below `require`: `disable` never encrypts; `prefer`
/// (libpq's default) encrypts when the server offers TLS, as this one does.
#[tokio::test]
async fn sslmode_disable_stays_plain_and_prefer_encrypts_when_offered() {
    let plain = app_with("?sslmode=disable", "127.0.0.1", None).await;
    assert_eq!(connection_is_encrypted(&plain).await, Ok(false));
    let preferred = app_with("?sslmode=prefer", "127.0.0.1", None).await;
    assert_eq!(connection_is_encrypted(&preferred).await, Ok(true));
}

#[tokio::test]
async fn a_configured_ca_authenticates_the_server() {
    let app = app_with("?sslmode=require", "localhost", Some(server_ca_pem())).await;
    assert_eq!(connection_is_encrypted(&app).await, Ok(true));
}

#[tokio::test]
async fn a_server_whose_certificate_does_not_chain_to_the_configured_ca_is_refused() {
    let app = app_with("?sslmode=require", "localhost", Some(unrelated_ca_pem())).await;
    let error = connection_is_encrypted(&app).await.unwrap_err();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn a_malformed_ca_setting_is_a_configuration_error_naming_it() {
    let url = migrated_database().await;
    let settings = std::collections::HashMap::from([
        ("DATABASE_URL", url),
        (
            "DATABASE_CA_CERT",
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----".to_owned(),
        ),
        ("LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned()),
        ("LIVEKIT_API_KEY", "k".to_owned()),
        ("LIVEKIT_API_SECRET", "s".to_owned()),
        (
            "SUPABASE_JWT_SECRET",
            "a-test-secret-of-at-least-32-characters".to_owned(),
        ),
    ]);
    let config = shared::config::Config::from_lookup(|n| settings.get(n).cloned()).unwrap();
    let error = shared::AppState::new(&config)
        .err()
        .expect("state refuses a bad CA");
    assert!(error.to_string().contains("DATABASE_CA_CERT"), "{error}");
}

/// `verify-full`, what the README and the template recommend: the chain must
/// lead to a trusted CA (the web PKI, or `DATABASE_CA_CERT` as Supabase's and
/// RDS's CAs are) and the certificate must name the host.
#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name() {
    for host in ["localhost", "127.0.0.1"] {
        let app = app_with("?sslmode=verify-full", host, Some(server_ca_pem())).await;
        assert_eq!(connection_is_encrypted(&app).await, Ok(true), "{host}");
    }
    // Not signed by any public CA, and no CA pinned.
    let app = app_with("?sslmode=verify-full", "localhost", None).await;
    let error = connection_is_encrypted(&app).await.unwrap_err();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    // The right CA, the wrong host name: the server's address, another name.
    let app = app_with(
        "?sslmode=verify-full&hostaddr=127.0.0.1",
        "not-the-database.test",
        Some(server_ca_pem()),
    )
    .await;
    let error = connection_is_encrypted(&app).await.unwrap_err();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let app = app_with("?sslmode=verify-full", "localhost", Some(unrelated_ca_pem())).await;
    assert!(connection_is_encrypted(&app).await.is_err());
}

/// `verify-ca`: the chain must lead to the pinned CA; the name is not checked.
#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let app = app_with(
        "?sslmode=verify-ca&hostaddr=127.0.0.1",
        "not-the-database.test",
        Some(server_ca_pem()),
    )
    .await;
    assert_eq!(connection_is_encrypted(&app).await, Ok(true));
    let app = app_with("?sslmode=verify-ca", "localhost", Some(unrelated_ca_pem())).await;
    let error = connection_is_encrypted(&app).await.unwrap_err();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    let settings = std::collections::HashMap::from([
        ("DATABASE_URL", migrated_database().await + "?sslmode=verify-ca"),
        ("LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned()),
        ("LIVEKIT_API_KEY", "k".to_owned()),
        ("LIVEKIT_API_SECRET", "s".to_owned()),
        (
            "SUPABASE_JWT_SECRET",
            "a-test-secret-of-at-least-32-characters".to_owned(),
        ),
    ]);
    let config = shared::config::Config::from_lookup(|n| settings.get(n).cloned()).unwrap();
    let error = shared::AppState::new(&config)
        .err()
        .expect("verify-ca without a CA to verify against is refused");
    assert!(error.to_string().contains("DATABASE_CA_CERT"), "{error}");
}

/// A remote database whose server nobody authenticates is logged at cold start.
#[test]
fn an_unverified_remote_connection_is_warned_about() {
    let warning = |url: &str, ca: Option<&str>| {
        let mut settings = std::collections::HashMap::from([
            ("DATABASE_URL", url.to_owned()),
            ("LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned()),
            ("LIVEKIT_API_KEY", "k".to_owned()),
            ("LIVEKIT_API_SECRET", "s".to_owned()),
            (
                "SUPABASE_JWT_SECRET",
                "a-test-secret-of-at-least-32-characters".to_owned(),
            ),
        ]);
        if let Some(ca) = ca {
            settings.insert("DATABASE_CA_CERT", ca.to_owned());
        }
        let config = shared::config::Config::from_lookup(|n| settings.get(n).cloned()).unwrap();
        shared::store::db::unverified_server_warning(&config.database)
    };
    let remote = "postgres://u:p@db.abc.supabase.co:5432/postgres";
    for mode in ["require", "prefer", "disable"] {
        let text = warning(&format!("{remote}?sslmode={mode}"), None).expect(mode);
        assert!(text.contains("verify-full") && !text.contains(":p@"), "{text}");
    }
    assert!(warning(&format!("{remote}?sslmode=verify-full"), None).is_none());
    assert!(warning(&format!("{remote}?sslmode=require"), Some("pinned")).is_none());
    assert!(warning("postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable", None).is_none());
    // A hostaddr is where the connection goes (the host name only names the
    // server for TLS): a loopback name in front of a remote address is remote.
    assert!(
        warning(
            "postgres://u:p@localhost:5432/postgres?hostaddr=10.0.0.5&sslmode=require",
            None
        )
        .is_some()
    );
    assert!(
        warning(
            "postgres://u:p@db.abc.supabase.co:5432/postgres?hostaddr=127.0.0.1&sslmode=disable",
            None
        )
        .is_none()
    );
}
