//! Postgres over TLS (rustls), as Supabase and RDS expect: the test cluster has
//! TLS on with a self-signed certificate for localhost.

use crate::helpers::{AppOptions, TestApp, migrated_database};

fn server_ca_pem() -> String {
    let path = std::env::var("TEST_DATABASE_CA_CERT")
        .expect("TEST_DATABASE_CA_CERT is not set: run the tests with scripts/test");
    std::fs::read_to_string(path).expect("read the test server's certificate")
}

async fn app_with(url_suffix: &str, host: &str, ca: Option<String>) -> TestApp {
    let url = migrated_database().await.replace("127.0.0.1", host) + url_suffix;
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

#[tokio::test]
async fn a_configured_ca_authenticates_the_server() {
    let app = app_with("?sslmode=require", "localhost", Some(server_ca_pem())).await;
    assert_eq!(connection_is_encrypted(&app).await, Ok(true));
}

#[tokio::test]
async fn a_server_whose_certificate_does_not_chain_to_the_configured_ca_is_refused() {
    let unrelated = std::fs::read_to_string(format!(
        "{}/tests/fixtures/unrelated-ca.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let app = app_with("?sslmode=require", "localhost", Some(unrelated)).await;
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
        ("SUPABASE_JWT_SECRET", "j".to_owned()),
    ]);
    let config = shared::config::Config::from_lookup(|n| settings.get(n).cloned()).unwrap();
    let error = shared::AppState::new(&config)
        .err()
        .expect("state refuses a bad CA");
    assert!(error.to_string().contains("DATABASE_CA_CERT"), "{error}");
}
