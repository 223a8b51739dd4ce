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
//!
//! A request cut off by its deadline may leave a statement running on the
//! connection it held. Such a connection never goes back to the pool: its
//! statement is cancelled and the connection closed (see [`Conn`]), so the
//! next request neither waits behind it nor sees its late effects. The
//! request answers only once those cancels are sent ([`invocation_until_cut_off`]):
//! Lambda freezes the container as soon as it has answered.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, Object, RecycleError, RecycleResult};
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

/// tokio-postgres connections with a recycle step that costs nothing while
/// requests come back to back and one round trip after an idle spell.
pub type Pool = deadpool::managed::Pool<Manager>;

/// The database of a function: the pool, and what is needed to cancel a
/// statement that outlived its request.
pub struct Database {
    pool: Pool,
    canceller: Canceller,
}

/// Sends cancel requests as libpq does, on a connection of their own that
/// stays open until the server (or the pooler) closes it. A transaction-mode
/// pooler (PgBouncer, as Supabase's dedicated pooler) passes a cancel on over
/// a server connection it opens for it, and forgets the cancel if its
/// requester hangs up first; tokio-postgres's own `cancel_query` shuts its
/// socket down as soon as it has written, so through such a pooler the
/// statement would run on until its statement timeout.
/// The cancel must reach the server the session is on: with one host (and
/// at most one `hostaddr`) that resolves to one address, it is that one;
/// otherwise (several hosts, a name with several addresses, a Unix socket)
/// tokio-postgres's own cancel goes to the exact address the session used.
#[derive(Clone)]
struct Canceller {
    tls: MakeRustlsConnect,
    /// `DATABASE_URL`'s only host (or its `hostaddr`) and port, and the name
    /// TLS checks; `None` when it has another number of TCP hosts.
    server: Option<CancelServer>,
}

#[derive(Clone)]
struct CancelServer {
    address: String,
    port: u16,
    name: String,
}

/// How long a cancel's connection waits for the server to close it.
const CANCEL_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A whole cancel, connection and TLS included: a server that accepts and
/// then stalls must not keep the abandoned session open.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

impl Canceller {
    fn new(tls: MakeRustlsConnect, pg: &tokio_postgres::Config) -> Canceller {
        use tokio_postgres::config::Host;
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let server = match pg.get_hosts() {
            [Host::Tcp(name)] if pg.get_hostaddrs().len() <= 1 => Some(CancelServer {
                address: pg
                    .get_hostaddrs()
                    .first()
                    .map_or_else(|| name.clone(), ToString::to_string),
                port,
                name: name.clone(),
            }),
            _ => None,
        };
        Canceller { tls, server }
    }

    /// Sends the cancel; `sent` is signalled (or dropped, when it cannot be
    /// sent) as soon as the request is written, before its connection waits
    /// for the server to close it.
    async fn cancel(&self, token: tokio_postgres::CancelToken, sent: CancelSent) -> Result<(), String> {
        tokio::time::timeout(CANCEL_TIMEOUT, self.send(token, sent))
            .await
            .map_err(|_| format!("no answer within {CANCEL_TIMEOUT:?}"))?
    }

    async fn send(&self, token: tokio_postgres::CancelToken, sent: CancelSent) -> Result<(), String> {
        let address = match &self.server {
            Some(server) => {
                let mut addresses = tokio::net::lookup_host((server.address.as_str(), server.port))
                    .await
                    .map_err(|e| e.to_string())?;
                match (addresses.next(), addresses.next()) {
                    (Some(only), None) => Some((only, server)),
                    _ => None,
                }
            }
            None => None,
        };
        let Some((address, server)) = address else {
            return token
                .cancel_query(self.tls.clone())
                .await
                .map_err(|e| e.to_string());
        };
        let connected = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        // A second handle keeps the socket open once tokio-postgres drops its own.
        let socket = connected.into_std().map_err(|e| e.to_string())?;
        let kept = socket.try_clone().map_err(|e| e.to_string())?;
        let stream = tokio::net::TcpStream::from_std(socket).map_err(|e| e.to_string())?;
        let mut tls = self.tls.clone();
        let connector =
            tokio_postgres::tls::MakeTlsConnect::<LeftOpen<tokio::net::TcpStream>>::make_tls_connect(
                &mut tls,
                &server.name,
            )
            .map_err(|e| e.to_string())?;
        token
            .cancel_query_raw(LeftOpen(stream), LeftOpen(connector))
            .await
            .map_err(|e| e.to_string())?;
        drop(sent);
        let mut kept = tokio::net::TcpStream::from_std(kept).map_err(|e| e.to_string())?;
        let closed_by_server = async {
            use tokio::io::AsyncReadExt;
            let mut sink = [0u8; 256];
            while matches!(kept.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        // Sent either way; a server that keeps it open has had it.
        let _ = tokio::time::timeout(CANCEL_ANSWER_WAIT, closed_by_server).await;
        Ok(())
    }
}

/// A cancel's stream whose shutdown only flushes: the peer closes it (see
/// [`Canceller`]). Around the TCP stream it sends no FIN; around the TLS
/// stream (as `LeftOpen` of the TLS connector) no TLS close_notify either,
/// which a pooler reads as the requester hanging up as surely as a FIN.
struct LeftOpen<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LeftOpen<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LeftOpen<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
}

impl<S: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for LeftOpen<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.0.channel_binding()
    }
}

impl<S, T> tokio_postgres::tls::TlsConnect<S> for LeftOpen<T>
where
    T: tokio_postgres::tls::TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    type Stream = LeftOpen<T::Stream>;
    type Error = T::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = self.0.connect(stream);
        Box::pin(async move { handshake.await.map(LeftOpen) })
    }
}

tokio::task_local! {
    /// When the request being served must be answered: set by
    /// [`crate::http::within_deadline`] around the request's work.
    static REQUEST_DEADLINE: Instant;
    /// The cancels the abandoned connections of an invocation's work are
    /// sending: set by [`invocation_until_cut_off`].
    static CANCELS: Cancels;
}

/// Dropped once a cancel is written (or cannot be).
type CancelSent = tokio::sync::oneshot::Sender<()>;

/// The cancels a request's cut-off work set off, to be sent before it answers.
#[derive(Clone, Default)]
struct Cancels(Arc<Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>>);

impl Cancels {
    /// A new cancel of this request's: its signal, noted here if the request
    /// keeps a list (outside a request, nobody waits for it).
    fn begin() -> CancelSent {
        let (sent, receiver) = tokio::sync::oneshot::channel();
        let _ = CANCELS.try_with(|cancels| {
            cancels
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(receiver)
        });
        sent
    }

    /// Waits until every cancel is written, at most `bound`.
    async fn sent_within(&self, bound: Duration) {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        if pending.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(pending);
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!("a cancel was not sent before the answer; it goes when the container next runs");
        }
    }
}

/// How long a request's answer waits for the cancels of the statements its
/// cut-off work left running: enough for a connection, a TLS handshake and a
/// write, within the second an invocation keeps for answering.
const CANCEL_SEND_WAIT: Duration = Duration::from_millis(500);

/// [`until_cut_off`] for what an invocation returns after (a request, a
/// flusher's tick): before it returns, the cancels of the statements its work
/// left running (cut off here, or earlier by [`while_the_answer_can_wait`])
/// are sent, half a second at most. Lambda freezes the container once
/// the invocation is done: a cancel still to be sent then would go out only
/// when it thaws, after the statement (and the locks it holds) ran on to its
/// statement timeout.
pub async fn invocation_until_cut_off<F: std::future::Future>(
    cut_off: Instant,
    work: F,
) -> Option<F::Output> {
    let cancels = Cancels::default();
    let outcome = CANCELS.scope(cancels.clone(), until_cut_off(cut_off, work)).await;
    cancels.sent_within(CANCEL_SEND_WAIT).await;
    outcome
}

/// [`invocation_until_cut_off`] for a scheduled invocation, which has a
/// deadline to cut off at on Lambda; without one (`cargo lambda watch`, a
/// direct call), `work` runs whole.
pub async fn invocation_until<F: std::future::Future>(
    cut_off: Option<Instant>,
    work: F,
) -> Option<F::Output> {
    match cut_off {
        Some(cut_off) => invocation_until_cut_off(cut_off, work).await,
        None => Some(work.await),
    }
}

/// The current request's deadline, if it runs under one.
pub fn request_deadline() -> Option<Instant> {
    REQUEST_DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Runs `work` with `deadline` as the current request's deadline, so the
/// connections it takes know when they were abandoned.
pub async fn with_request_deadline<F: std::future::Future>(deadline: Instant, work: F) -> F::Output {
    REQUEST_DEADLINE.scope(deadline, work).await
}

/// Runs `work` until `cut_off` at the latest, as a request with that
/// deadline: stopped there (`None`), the connections it held cancel their
/// statements instead of going back to the pool with them still running.
pub async fn until_cut_off<F: std::future::Future>(cut_off: Instant, work: F) -> Option<F::Output> {
    tokio::time::timeout_at(cut_off.into(), with_request_deadline(cut_off, work))
        .await
        .ok()
}

/// What a request keeps of its deadline to answer in, once its decision is
/// committed and only telling the room is left.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// Runs `work` that follows a committed decision (telling LiveKit) for as
/// long as the current request can still answer in time: stopped (`None`),
/// the request answers what was committed instead of a 503 at its deadline,
/// which would have the app retry what already happened. Unbounded outside
/// a request's deadline.
pub async fn while_the_answer_can_wait<F: std::future::Future>(work: F) -> Option<F::Output> {
    while_the_answer_can_wait_leaving(Duration::ZERO, work).await
}

/// As [`while_the_answer_can_wait`], stopping `reserve` sooner: for work
/// that a short step of its own (giving back what it did not finish) must
/// still follow within the answer's time.
pub async fn while_the_answer_can_wait_leaving<F: std::future::Future>(
    reserve: Duration,
    work: F,
) -> Option<F::Output> {
    // On the heap: the work (LiveKit calls, their follow-ups) is a large
    // future, and the request's own future would otherwise hold it, and
    // move it through each wrapper, on the stack.
    let work = Box::pin(work);
    match request_deadline().and_then(|deadline| deadline.checked_sub(ANSWER_MARGIN + reserve)) {
        Some(answer_by) => until_cut_off(answer_by, work).await,
        None => Some(work.await),
    }
}

impl Database {
    /// A pooled connection for the current request.
    pub async fn get(&self) -> Result<Conn, deadpool_postgres::PoolError> {
        let object = self.pool.get().await?;
        Ok(Conn {
            object: Some(object),
            canceller: self.canceller.clone(),
            deadline: request_deadline(),
        })
    }

    pub fn manager(&self) -> &Manager {
        self.pool.manager()
    }

    pub fn status(&self) -> deadpool::Status {
        self.pool.status()
    }
}

/// How long a connection cut off by its deadline stays open for its cancelled
/// statement to end (see [`Conn`]'s drop); the role's statement timeout
/// ends it anyway.
const CANCELLED_STATEMENT_WAIT: Duration = Duration::from_secs(5);

/// A pooled connection. Dropped in time, it goes back to the pool. Dropped at
/// or after its request's deadline (the request's work was cut off, maybe in
/// the middle of a statement), it is taken out of the pool, its running
/// statement is cancelled and the connection closed. A connection dropped
/// just after the deadline by a request that did finish is replaced for
/// nothing: a reconnect, never a wrong answer.
pub struct Conn {
    object: Option<Object<Manager>>,
    canceller: Canceller,
    deadline: Option<Instant>,
}

impl Deref for Conn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.object
            .as_ref()
            .unwrap_or_else(|| unreachable!("the object is only taken in drop"))
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        self.object
            .as_mut()
            .unwrap_or_else(|| unreachable!("the object is only taken in drop"))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else { return };
        if self.deadline.is_none_or(|deadline| Instant::now() < deadline) {
            return; // back to the pool
        }
        let cancel = object.cancel_token();
        let canceller = self.canceller.clone();
        let sent = Cancels::begin();
        tracing::warn!(
            "request deadline passed while holding a database connection; cancelling its statement"
        );
        // Drop cannot wait: the cancel request (a connection of its own) runs
        // on the runtime. The client stays open until the cancelled statement
        // has answered: a transaction-mode pooler (Supabase's, PgBouncer)
        // passes a cancel on only while its client is linked to the server
        // connection, and a client that closed first leaves the statement
        // running on the server until the statement timeout (Postgres does
        // not see a closed socket while it waits for a lock). A statement
        // queued behind it answers once it has ended, however it ended. The
        // pooled object is held meanwhile, so its slot stays taken and the
        // container never has more sessions than its pool size; it leaves
        // the pool (never to be reused) only once closed.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = canceller.cancel(cancel, sent).await {
                    tracing::warn!(%error, "could not cancel the abandoned statement");
                }
                let ended = tokio::time::timeout(CANCELLED_STATEMENT_WAIT, object.simple_query("")).await;
                if ended.is_err() {
                    tracing::warn!("the cancelled statement did not end in time; closing its connection");
                }
                drop(Object::take(object));
            });
        }
    }
}

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
        // The TLS mode stays the cold start's: only the credentials rotate. A
        // new URL without `sslmode` (or with a weaker one) would otherwise
        // let a verify-full deployment fall back to a plain connection.
        let rotated = match parse_database_url(&url) {
            Ok((pg, _)) => {
                let mut pg = with_defaults(pg);
                pg.ssl_mode(refused.get_ssl_mode());
                Arc::new(pg)
            }
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

/// A warning for a connection to another machine whose server nobody
/// authenticates: anyone on the path could pose as the database. With
/// `hostaddr`, the connection goes to those addresses (the host names then
/// only name the server for TLS), so they decide what is remote.
pub fn unverified_server_warning(config: &DatabaseConfig) -> Option<String> {
    use tokio_postgres::config::Host;
    let addresses = config.pg.get_hostaddrs();
    let remote = if addresses.is_empty() {
        config.pg.get_hosts().iter().any(|host| match host {
            Host::Tcp(name) => {
                name != "localhost" && !name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            Host::Unix(_) => false,
        })
    } else {
        addresses.iter().any(|address| !address.is_loopback())
    };
    if !remote || config.tls_mode.authenticates_server(config.ca_cert_pem.is_some()) {
        return None;
    }
    Some(format!(
        "DATABASE_URL connects to another machine with sslmode={:?}: the connection is {} but the server is not authenticated; use sslmode=verify-full (with DATABASE_CA_CERT for Supabase's or RDS's CA)",
        config.tls_mode,
        if config.tls_mode == tls::TlsMode::Disable {
            "not encrypted"
        } else {
            "encrypted"
        }
    ))
}

pub fn build_pool(config: &DatabaseConfig) -> Result<Database, ConfigError> {
    let tls_config =
        tls::postgres_client_config(config.tls_mode, config.ca_cert_pem.as_deref()).map_err(|reason| {
            ConfigError::Invalid {
                name: crate::config::DATABASE_CA_CERT,
                reason,
            }
        })?;
    if let Some(warning) = unverified_server_warning(config) {
        tracing::warn!("{warning}");
    }
    let tls = MakeRustlsConnect::new(tls_config);
    let canceller = Canceller::new(tls.clone(), &config.pg);
    let manager = Manager {
        connector: ConfigConnectImpl { tls: tls.clone() },
        pg: RwLock::new(Arc::new(with_defaults(config.pg.clone()))),
        rotation: config.secret.clone().map(|secret| Rotation {
            secret,
            last_read: tokio::sync::Mutex::new(None),
            reads: AtomicUsize::new(0),
        }),
    };
    let pool = Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .create_timeout(Some(CREATE_TIMEOUT))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .build()
        .map_err(|e| ConfigError::Invalid {
            name: DATABASE_URL,
            reason: e.to_string(),
        })?;
    Ok(Database { pool, canceller })
}
