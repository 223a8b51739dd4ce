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
            // The JWKS is at a URL of our settings; a redirect elsewhere is
            // not the project's key set.
            .redirect(reqwest::redirect::Policy::none())
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
        if config.supabase.jwt_secret.is_some() && config.supabase.url.is_some() {
            // Supabase cannot tell us it revoked the legacy secret; only its
            // removal here stops tokens signed with it.
            tracing::warn!(
                "SUPABASE_JWT_SECRET is set beside SUPABASE_URL: tokens signed with the legacy HS256 secret are still accepted; remove it once the project has moved to its signing keys and revoked the legacy secret"
            );
        }
        AppState::new(&config)
    }
}
