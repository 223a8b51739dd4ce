//! The Secrets Manager path, against `moto_server` on loopback.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use shared::config::{Config, ConfigError};
use shared::secrets::{SecretSource, fetch_json_secret};

use crate::helpers::{create_secret, moto_client};

#[tokio::test]
async fn settings_come_from_the_json_secret_and_fill_in_from_the_environment() {
    let client = moto_client();
    let secret = serde_json::json!({
        "DATABASE_URL": "postgres://app:s3cret@db.internal:6543/postgres?sslmode=require",
        "LIVEKIT_API_KEY": "APIkey",
        "LIVEKIT_API_SECRET": "from-secrets-manager-at-least-32-characters",
        "SUPABASE_JWT_SECRET": "jwt-secret-of-at-least-32-characters",
        "LIVEKIT_TOKEN_TTL_SECONDS": 900
    });
    let id = create_secret(&client, &secret.to_string()).await;

    let values = fetch_json_secret(&client, &id).await.unwrap();
    let environment = |name: &str| match name {
        "LIVEKIT_URL" => Some("wss://demo.livekit.cloud".to_owned()),
        "LIVEKIT_API_SECRET" => Some("from-the-environment-at-least-32-characters".to_owned()),
        _ => None,
    };
    let config = Config::from_secret_and_env(&values, environment).unwrap();
    assert_eq!(
        config.livekit.api_secret, "from-secrets-manager-at-least-32-characters",
        "the secret wins"
    );
    assert_eq!(
        config.livekit.client_url, "wss://demo.livekit.cloud",
        "the environment fills in"
    );
    assert_eq!(config.livekit.token_ttl.as_secs(), 900);
    assert_eq!(config.database.pg.get_ports(), &[6543]);
    assert_eq!(
        config.supabase.jwt_secret.as_deref(),
        Some("jwt-secret-of-at-least-32-characters")
    );
}

/// The template's `AppSecretArn` names a secret by its ARN, and the ARN's
/// region is where it is read, not the function's: a secret created in
/// another region than the stack's is found (moto keeps each region's
/// secrets apart, as AWS does).
#[tokio::test]
async fn a_secret_is_read_in_the_region_its_arn_names() {
    let elsewhere = Client::from_conf(
        moto_client()
            .config()
            .to_builder()
            .region(Region::new("eu-south-2"))
            .build(),
    );
    let created = elsewhere
        .create_secret()
        .name(format!("live-backend/test/{}", uuid::Uuid::new_v4()))
        .secret_string(r#"{"LIVEKIT_API_KEY":"from-eu-south-2"}"#)
        .send()
        .await
        .expect("moto creates the secret");
    let arn = created.arn().expect("moto answers the ARN").to_owned();
    assert!(arn.starts_with("arn:aws:secretsmanager:eu-south-2:"), "{arn}");

    let function_region = moto_client();
    assert!(
        fetch_json_secret(&function_region, &arn).await.is_err(),
        "not in the function's region"
    );
    let values = SecretSource::new(function_region, arn)
        .fetch()
        .await
        .expect("read in the ARN's region");
    assert_eq!(values["LIVEKIT_API_KEY"], "from-eu-south-2");
}

#[tokio::test]
async fn a_missing_secret_is_one_clear_error_naming_it() {
    let client = moto_client();
    let err = fetch_json_secret(&client, "live-backend/does-not-exist")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Secret { id, .. } if id == "live-backend/does-not-exist"),
        "{err}"
    );
    assert!(err.to_string().contains("ResourceNotFound"), "{err}");
}

#[tokio::test]
async fn a_secret_that_is_not_a_json_object_is_refused_without_echoing_it() {
    let client = moto_client();
    let id = create_secret(&client, "DATABASE_URL=postgres://user:hunter2@db").await;
    let err = fetch_json_secret(&client, &id).await.unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// A Secrets Manager that takes the connection and never answers (a hung
/// endpoint, a black-holed network) fails the cold start with a timeout of
/// the functions' own settings, not never: the SDK has no timeout of its
/// own for an answer that never comes.
#[tokio::test]
async fn a_secrets_manager_that_never_answers_fails_with_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(shared::secrets::https_client())
        .timeout_config(shared::secrets::timeouts())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .build();
    // The bound only turns a hang (no timeout at all) into a failure.
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        fetch_json_secret(&Client::from_conf(config), "any"),
    )
    .await
    .expect("the functions' timeouts end the call")
    .unwrap_err();
    assert!(matches!(err, ConfigError::Secret { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("timeout"), "{err}");
}

/// A key of the secret that no setting reads is named in a warning (not its
/// value): a misspelt optional setting would otherwise leave its default
/// standing in silence.
#[tokio::test]
async fn a_secret_key_no_setting_reads_is_named_in_a_warning() {
    let secret: std::collections::HashMap<String, String> = [
        ("LIVEKIT_API_KEY", "APIkey"),
        (
            "LIVEKIT_API_SECRET",
            "from-secrets-manager-at-least-32-characters",
        ),
        ("SUPABASE_JWT_SECRET", "jwt-secret-of-at-least-32-characters"),
        ("DATABASE_URL", "postgres://app@db.internal:6543/postgres"),
        ("LIVEKIT_URL", "wss://demo.livekit.cloud"),
        ("LIVEKIT_VIEWER_CAN_PUBLISH_DATE", "value-of-the-misspelt-key"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let captured = crate::logs::Captured::default();
    let _logging = tracing::subscriber::set_default(crate::logs::subscriber(&captured));
    let config = Config::from_secret_and_env(&secret, |_| None).expect("the rest is a configuration");
    assert!(config.livekit.viewer_can_publish_data, "the default stands");
    let logged = captured.text();
    assert!(logged.contains("LIVEKIT_VIEWER_CAN_PUBLISH_DATE"), "{logged}");
    assert!(!logged.contains("value-of-the-misspelt-key"), "{logged}");
    for read in ["LIVEKIT_API_KEY", "DATABASE_URL", "LIVEKIT_URL"] {
        assert!(!logged.contains(read), "{read} is read: {logged}");
    }
}
