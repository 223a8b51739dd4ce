//! The Postgres connection pool.
//!
//! Built once per cold start without connecting: connections open on first use
//! with a short connect timeout, so a database outage never breaks the cold start
//! and a warm container recovers by itself when the database is back. Queries use
//! unnamed statements only (`query_typed`), so the pool works through Supabase's
//! transaction-mode pooler and PgBouncer in transaction mode.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, DatabaseConfig};
use crate::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request may wait for a free pooled connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect plus authentication, TLS included.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn build_pool(config: &DatabaseConfig) -> Result<Pool, ConfigError> {
    let tls_config = tls::postgres_client_config(config.ca_cert_pem.as_deref()).map_err(|reason| {
        ConfigError::Invalid {
            name: crate::config::DATABASE_CA_CERT,
            reason,
        }
    })?;

    let mut pg = config.pg.clone();
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("live-backend");
    }
    pg.keepalives(true).keepalives_idle(Duration::from_secs(30));

    let manager = Manager::from_config(
        pg,
        MakeRustlsConnect::new(tls_config),
        // `Fast` only checks that the socket is still open: no extra round trip per request.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .create_timeout(Some(CREATE_TIMEOUT))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .build()
        .map_err(|e| ConfigError::Invalid {
            name: crate::config::DATABASE_URL,
            reason: e.to_string(),
        })
}
