//! The application's JSON secret in AWS Secrets Manager: read once per cold
//! start, and again when the database refuses the password it held (rotation).

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Region;
use aws_sdk_secretsmanager::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, ConnectorBuilder};

use crate::config::ConfigError;

/// A Secrets Manager client from the standard AWS environment (region, credentials,
/// `AWS_ENDPOINT_URL`), with [`timeouts`].
pub async fn client_from_env() -> Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(timeouts())
        .load()
        .await;
    Client::new(&sdk)
}

/// Short, so an unreachable or hung endpoint fails the cold start quickly
/// instead of eating the function's whole timeout: the SDK sets none of its
/// own for an answer that never comes.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build()
}

/// Where the application's secret lives: kept after the cold start so the
/// database credentials can be read again once they have been rotated.
#[derive(Clone, Debug)]
pub struct SecretSource {
    client: Client,
    secret_id: String,
}

impl SecretSource {
    /// A secret named by its ARN is asked of its own region's Secrets
    /// Manager, whatever region `client` was made for: the function's own by
    /// default, where a secret created in another region would not be found
    /// (every function then answers 503 once deployed).
    pub fn new(client: Client, secret_id: impl Into<String>) -> SecretSource {
        let secret_id = secret_id.into();
        let client = match region_of_arn(&secret_id) {
            Some(region) if client.config().region().map(|r| r.as_ref()) != Some(region) => {
                Client::from_conf(
                    client
                        .config()
                        .to_builder()
                        .region(Region::new(region.to_owned()))
                        .build(),
                )
            }
            _ => client,
        };
        SecretSource { client, secret_id }
    }

    /// The secret's current settings.
    pub async fn fetch(&self) -> Result<HashMap<String, String>, ConfigError> {
        fetch_json_secret(&self.client, &self.secret_id).await
    }
}

/// The region of a secret named by its ARN,
/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`; none
/// for a secret named by its name.
fn region_of_arn(secret_id: &str) -> Option<&str> {
    let mut fields = secret_id.split(':');
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some("arn"), Some(_), Some("secretsmanager"), Some(region)) if !region.is_empty() => Some(region),
        _ => None,
    }
}

/// The SDK's default HTTPS client (hyper, rustls, native roots, proxy settings
/// from the environment) with rustls on ring rather than aws-lc-rs: ring is the
/// provider everything else here uses, and one crypto library is enough. The
/// SDK is built without its own default client, so every SDK config needs this.
pub fn https_client() -> SharedHttpClient {
    Builder::new().build_with_connector_fn(|settings, runtime_components| {
        let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = runtime_components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Fetches `secret_id` and parses it as a flat JSON object. String values are
/// taken as they are; numbers and booleans are accepted in their JSON spelling.
pub async fn fetch_json_secret(
    client: &Client,
    secret_id: &str,
) -> Result<HashMap<String, String>, ConfigError> {
    let fail = |reason: String| ConfigError::Secret {
        id: secret_id.to_owned(),
        reason,
    };
    let output = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| fail(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string()))?;
    let text = output
        .secret_string()
        .ok_or_else(|| fail("the secret has no SecretString (binary secrets are not supported)".into()))?;
    parse_secret(text).map_err(fail)
}

fn parse_secret(text: &str) -> Result<HashMap<String, String>, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| match e.classify() {
            // A type error quotes the value it found: the whole secret, when it
            // is a string (an object stored as one quoted string, or a bare
            // password). Its line and column are all this says of it.
            serde_json::error::Category::Data => format!(
                "expected a JSON object of settings, found another JSON value (line {}, column {})",
                e.line(),
                e.column()
            ),
            // Syntax errors name the position, never the content.
            _ => format!("expected a JSON object of settings: {e}"),
        })?;
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            _ => Err(format!("the value of {key} must be a string, number or boolean")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_secret;

    #[test]
    fn accepts_strings_and_numbers() {
        let parsed =
            parse_secret(r#"{"DATABASE_URL":"postgres://x","LIVEKIT_TOKEN_TTL_SECONDS":900}"#).unwrap();
        assert_eq!(parsed["DATABASE_URL"], "postgres://x");
        assert_eq!(parsed["LIVEKIT_TOKEN_TTL_SECONDS"], "900");
    }

    #[test]
    fn rejects_non_objects_and_nested_values_without_echoing_them() {
        let err = parse_secret("not json hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_secret(r#"{"LIVEKIT_API_SECRET":{"nested":"hunter2"}}"#).unwrap_err();
        assert!(
            err.contains("LIVEKIT_API_SECRET") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_stored_as_one_json_value_is_not_echoed() {
        // The settings object stored as one quoted string, a bare password, a number.
        for text in [
            r#""{\"DATABASE_URL\":\"postgres://api:hunter2@db/postgres\"}""#,
            r#""hunter2""#,
            "4242424242",
            r#"["hunter2"]"#,
        ] {
            let err = parse_secret(text).unwrap_err();
            assert!(
                err.contains("JSON object") && !err.contains("hunter2") && !err.contains("4242"),
                "{err}"
            );
        }
    }
}
