//! The Postgres connection pool.
//!
//! Built once per cold start without connecting: connections open on first use
//! with a short connect timeout, so a database outage never breaks the cold start
//! and a warm container recovers by itself when the database is back. Queries use
//! unnamed statements only (`query_typed`), so the pool works through Supabase's
//! transaction-mode pooler and PgBouncer in transaction mode.
//!
//! When `DATABASE_URL` came from Secrets Manager and the database refuses its
//! password, the secret is read again (at most every few seconds) and, if it
//! holds new credentials, the connection is retried with them: a rotated
//! password is picked up by warm containers without a cold start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{ClientWrapper, ConfigConnectImpl, Connect, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, DATABASE_URL, DatabaseConfig, parse_database_url};
use crate::secrets::SecretSource;
use crate::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request may wait for a free pooled connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect plus authentication, TLS included (and, after a refused password,
/// reading the secret and connecting again).
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection idle this long is checked with an empty query before reuse.
/// Lambda freezes idle containers, and a connection the server or a NAT closed
/// meanwhile still looks open until something is sent on it.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(5);
/// After a refused password the secret is read at most this often. A password
/// that is simply wrong must not turn every connection attempt into a Secrets
/// Manager call; a short interval still catches a rotation whose new value was
/// not yet current when the password was first refused.
const SECRET_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// The pool of this crate: tokio-postgres connections with a recycle step that
/// costs nothing while requests come back to back and one round trip after an
/// idle spell.
pub type Pool = deadpool::managed::Pool<Manager>;

pub struct Manager {
    connector: ConfigConnectImpl<MakeRustlsConnect>,
    /// Replaced when a rotated password is read from the secret.
    pg: RwLock<Arc<tokio_postgres::Config>>,
    rotation: Option<Rotation>,
}

struct Rotation {
    secret: SecretSource,
    /// Held while the secret is read, so concurrent refusals read it once.
    last_read: tokio::sync::Mutex<Option<Instant>>,
    reads: AtomicUsize,
}

impl deadpool::managed::Manager for Manager {
    type Type = ClientWrapper;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<ClientWrapper, tokio_postgres::Error> {
        let pg = self.current();
        let refused = match self.connect(&pg).await {
            Err(error) if is_refused_password(&error) => error,
            result => return result,
        };
        match self.rotated_credentials(&pg).await {
            Some(rotated) => self.connect(&rotated).await,
            None => Err(refused),
        }
    }

    async fn recycle(
        &self,
        client: &mut ClientWrapper,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if metrics.last_used() >= CHECK_AFTER_IDLE {
            client.simple_query("").await.map_err(RecycleError::Backend)?;
        }
        Ok(())
    }
}

impl Manager {
    fn current(&self) -> Arc<tokio_postgres::Config> {
        self.pg.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn connect(&self, pg: &tokio_postgres::Config) -> Result<ClientWrapper, tokio_postgres::Error> {
        let (client, connection_task) = self.connector.connect(pg).await?;
        Ok(ClientWrapper::new(client, connection_task))
    }

    /// Credentials newer than `refused`: already read by a concurrent attempt,
    /// or read now from the secret. `None` when there is nothing new to try.
    async fn rotated_credentials(
        &self,
        refused: &Arc<tokio_postgres::Config>,
    ) -> Option<Arc<tokio_postgres::Config>> {
        let rotation = self.rotation.as_ref()?;
        let mut last_read = rotation.last_read.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, refused) {
            return Some(current);
        }
        if last_read.is_some_and(|at| at.elapsed() < SECRET_REFETCH_INTERVAL) {
            return None;
        }
        *last_read = Some(Instant::now());
        rotation.reads.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("the database refused its password; reading the secret again");
        // Boxed: the SDK's future is deep enough to overflow the compiler's
        // layout recursion limit inside every function's main future.
        let url = match Box::pin(rotation.secret.fetch()).await {
            Ok(mut settings) => settings.remove(DATABASE_URL),
            Err(error) => {
                tracing::error!(%error, "cannot read the secret again after the database refused its password");
                return None;
            }
        };
        let Some(url) = url else {
            tracing::error!("the secret no longer holds {DATABASE_URL}");
            return None;
        };
        let rotated = match parse_database_url(&url) {
            Ok(pg) => Arc::new(with_defaults(pg)),
            Err(error) => {
                tracing::error!(%error, "the secret's new {DATABASE_URL} is unusable");
                return None;
            }
        };
        if rotated == *refused {
            tracing::error!("the secret still holds the credentials the database refused");
            return None;
        }
        tracing::info!("new database credentials read from the secret; connecting with them");
        *self.pg.write().unwrap_or_else(PoisonError::into_inner) = rotated.clone();
        Some(rotated)
    }

    /// How many times the secret was read again because of a refused password.
    pub fn secret_rereads(&self) -> usize {
        self.rotation
            .as_ref()
            .map_or(0, |rotation| rotation.reads.load(Ordering::Relaxed))
    }
}

/// Postgres answers a wrong password with 28P01; PgBouncer sends the same
/// message under the generic 08P01.
fn is_refused_password(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::INVALID_PASSWORD || db.message().starts_with("password authentication failed")
    })
}

fn with_defaults(mut pg: tokio_postgres::Config) -> tokio_postgres::Config {
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("live-backend");
    }
    pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
    pg
}

pub fn build_pool(config: &DatabaseConfig) -> Result<Pool, ConfigError> {
    let tls_config = tls::postgres_client_config(config.ca_cert_pem.as_deref()).map_err(|reason| {
        ConfigError::Invalid {
            name: crate::config::DATABASE_CA_CERT,
            reason,
        }
    })?;
    let manager = Manager {
        connector: ConfigConnectImpl {
            tls: MakeRustlsConnect::new(tls_config),
        },
        pg: RwLock::new(Arc::new(with_defaults(config.pg.clone()))),
        rotation: config.secret.clone().map(|secret| Rotation {
            secret,
            last_read: tokio::sync::Mutex::new(None),
            reads: AtomicUsize::new(0),
        }),
    };
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .create_timeout(Some(CREATE_TIMEOUT))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .build()
        .map_err(|e| ConfigError::Invalid {
            name: DATABASE_URL,
            reason: e.to_string(),
        })
}
