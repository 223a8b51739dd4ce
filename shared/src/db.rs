//! The Postgres connection pool.
//!
//! Built once per cold start without connecting: connections open on first use
//! with a short connect timeout, so a database outage never breaks the cold start
//! and a warm container recovers by itself when the database is back. Queries use
//! unnamed statements only (`query_typed`), so the pool works through Supabase's
//! transaction-mode pooler and PgBouncer in transaction mode.

use std::time::Duration;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{ClientWrapper, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, DatabaseConfig};
use crate::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request may wait for a free pooled connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect plus authentication, TLS included.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection idle this long is checked with an empty query before reuse.
/// Lambda freezes idle containers, and a connection the server or a NAT closed
/// meanwhile still looks open until something is sent on it.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(5);

/// The pool of this crate: deadpool-postgres's connections with a recycle step
/// that costs nothing while requests come back to back and one round trip
/// after an idle spell.
pub type Pool = deadpool::managed::Pool<Manager>;

pub struct Manager {
    inner: deadpool_postgres::Manager,
}

impl deadpool::managed::Manager for Manager {
    type Type = ClientWrapper;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<ClientWrapper, tokio_postgres::Error> {
        self.inner.create().await
    }

    async fn recycle(
        &self,
        client: &mut ClientWrapper,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        // `Fast`: refuses a connection whose socket is known to be closed.
        self.inner.recycle(client, metrics).await?;
        if metrics.last_used() >= CHECK_AFTER_IDLE {
            client.simple_query("").await.map_err(RecycleError::Backend)?;
        }
        Ok(())
    }

    fn detach(&self, client: &mut ClientWrapper) {
        self.inner.detach(client);
    }
}

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

    let inner = deadpool_postgres::Manager::from_config(
        pg,
        MakeRustlsConnect::new(tls_config),
        // `Fast` only checks that the socket is still open: no extra round trip per request.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(Manager { inner })
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
