//! What a function builds once per cold start and lends to every invocation.

use crate::store::db::Database;

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::livekit::LiveKit;

pub struct AppState {
    pub db: Database,
    pub auth: Authenticator,
    pub livekit: LiveKit,
    pub reconcile_grace: std::time::Duration,
    pub limits: crate::config::Limits,
    pub rules: crate::config::Rules,
}

impl AppState {
    /// Builds everything from a configuration without opening any connection.
    pub fn new(config: &Config) -> Result<AppState, ConfigError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::web_client_config())
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()
            .map_err(|e| ConfigError::Invalid {
                name: "HTTP client",
                reason: e.to_string(),
            })?;
        Ok(AppState {
            db: crate::store::db::build_pool(&config.database)?,
            auth: Authenticator::new(&config.supabase, http),
            livekit: LiveKit::new(&config.livekit),
            reconcile_grace: config.reconcile_grace,
            limits: config.limits,
            rules: config.rules,
        })
    }

    /// Reads the configuration (environment and, if set, the Secrets Manager
    /// secret) and builds the state.
    pub async fn load() -> Result<AppState, ConfigError> {
        let config = Config::load().await?;
        tracing::info!(?config, "configuration loaded");
        AppState::new(&config)
    }
}
