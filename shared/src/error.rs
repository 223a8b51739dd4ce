//! The one error type every endpoint answers with, and its mapping to HTTP.

use lambda_http::http::StatusCode;
use serde::Serialize;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A dependency whose outage turns into `503 unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Database,
    LiveKit,
    Auth,
    Configuration,
    /// No single dependency: the request as a whole ran out of time.
    Timeout,
}

impl Dependency {
    fn describe(self) -> &'static str {
        match self {
            Dependency::Database => "The database is temporarily unavailable",
            Dependency::LiveKit => "The media server is temporarily unavailable",
            Dependency::Auth => "The authentication keys cannot be loaded right now",
            Dependency::Configuration => "The service is starting up or misconfigured",
            Dependency::Timeout => "The request took too long",
        }
    }

    /// The `Retry-After` of its 503: when a retry can first succeed. A
    /// failed startup and a failed fetch of Supabase's keys are tried again
    /// at most every 5 s per container (`LazyState`, the JWKS cache), so an
    /// earlier retry would only meet the same 503.
    pub fn retry_after_seconds(self) -> u64 {
        match self {
            Dependency::Configuration => crate::http::STARTUP_RETRY_INTERVAL.as_secs(),
            Dependency::Auth => crate::auth::JWKS_RETRY_AFTER_FAILURE.as_secs(),
            Dependency::Database | Dependency::LiveKit | Dependency::Timeout => 2,
        }
    }
}

/// Every way a request can fail. Each variant knows its status, its stable
/// machine code and the message the client sees; internal causes are only logged.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("missing or invalid webhook signature")]
    InvalidSignature,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("the caller has no profile")]
    ProfileRequired,
    #[error("anonymous sign-ins may only watch")]
    AnonymousNotAllowed,
    #[error("the streamer is already live in {live_room}")]
    AlreadyLive { live_room: String },
    #[error("stream not found")]
    StreamNotFound,
    #[error("message not found")]
    MessageNotFound,
    #[error("the message id names another message")]
    MessageIdTaken,
    #[error("the message was deleted")]
    MessageDeleted,
    #[error("banned from this stream")]
    Banned,
    #[error("muted in this stream")]
    Muted,
    #[error("rate limited for {retry_after_seconds}s")]
    RateLimited { retry_after_seconds: u64 },
    #[error("method {used} not allowed")]
    MethodNotAllowed {
        used: String,
        allowed: lambda_http::http::Method,
    },
    #[error("room name taken")]
    RoomTaken,
    #[error("stream has ended")]
    StreamEnded,
    #[error("the user is not watching the stream")]
    NotWatching,
    #[error("no invitation to the stage")]
    NotInvited,
    #[error("the stage is full")]
    StageFull { max_guests: u32 },
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{dependency:?} unavailable: {cause}")]
    Unavailable {
        dependency: Dependency,
        #[source]
        cause: Cause,
    },
    #[error("internal error: {0}")]
    Internal(#[source] Cause),
}

/// An error with every cause below it, for the logs. tokio-postgres's own
/// message names only the kind of failure ("db error", "error performing TLS
/// handshake"): the reason (Postgres's message and SQLSTATE, a TLS alert, an
/// I/O error) is in its sources. A cause whose text is already said is not
/// repeated.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        if let Some(db) = cause.downcast_ref::<tokio_postgres::error::DbError>() {
            text.push_str(" (SQLSTATE ");
            text.push_str(db.code().code());
            text.push(')');
        }
        next = cause.source();
    }
    text
}

impl ApiError {
    pub fn unavailable(dependency: Dependency, cause: impl Into<Cause>) -> Self {
        ApiError::Unavailable {
            dependency,
            cause: cause.into(),
        }
    }

    pub fn internal(cause: impl Into<Cause>) -> Self {
        ApiError::Internal(cause.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidSignature => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_)
            | ApiError::ProfileRequired
            | ApiError::AnonymousNotAllowed
            | ApiError::Banned
            | ApiError::Muted => StatusCode::FORBIDDEN,
            ApiError::StreamNotFound | ApiError::MessageNotFound => StatusCode::NOT_FOUND,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RoomTaken
            | ApiError::StreamEnded
            | ApiError::MessageIdTaken
            | ApiError::MessageDeleted
            | ApiError::AlreadyLive { .. }
            | ApiError::NotWatching
            | ApiError::NotInvited
            | ApiError::StageFull { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidSignature => "invalid_signature",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::ProfileRequired => "profile_required",
            ApiError::AnonymousNotAllowed => "anonymous_not_allowed",
            ApiError::AlreadyLive { .. } => "already_live",
            ApiError::StreamNotFound => "stream_not_found",
            ApiError::MessageNotFound => "message_not_found",
            ApiError::MessageIdTaken => "message_id_taken",
            ApiError::MessageDeleted => "message_deleted",
            ApiError::Banned => "banned",
            ApiError::Muted => "muted",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::RoomTaken => "room_taken",
            ApiError::StreamEnded => "stream_ended",
            ApiError::NotWatching => "not_watching",
            ApiError::NotInvited => "not_invited",
            ApiError::StageFull { .. } => "stage_full",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The human message sent to the client. Never contains internal error text.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::InvalidRequest(detail) => detail.clone(),
            ApiError::Unauthorized => {
                "A valid Supabase access token is required in the Authorization header (Bearer <token>)."
                    .into()
            }
            ApiError::InvalidSignature => {
                "The Authorization header must carry LiveKit's signature of this exact body.".into()
            }
            ApiError::Forbidden(why) => (*why).into(),
            ApiError::ProfileRequired => "Create your profile before going live.".into(),
            ApiError::AnonymousNotAllowed => {
                "Guest accounts can watch; sign in with a full account to go live, chat or moderate.".into()
            }
            ApiError::AlreadyLive { live_room } => {
                format!("You are already live in stream {live_room}; end it before starting another.")
            }
            ApiError::StreamNotFound => "No stream with that room name exists.".into(),
            ApiError::MessageNotFound => "No chat message with that id exists.".into(),
            ApiError::MessageIdTaken => {
                "That id belongs to another message; make a new id for a new message.".into()
            }
            ApiError::MessageDeleted => {
                "That message of yours was deleted from the chat; it is not posted again.".into()
            }
            ApiError::Banned => "The streamer has banned you from this stream.".into(),
            ApiError::Muted => "The streamer has muted you in this stream.".into(),
            ApiError::RateLimited { retry_after_seconds } => {
                format!("Too many requests; try again in {retry_after_seconds} s.")
            }
            ApiError::MethodNotAllowed { used, allowed } => {
                format!("Method {used} is not allowed here; use {allowed}.")
            }
            ApiError::RoomTaken => {
                "That room name is already used by another stream; choose another or omit it.".into()
            }
            ApiError::StreamEnded => "That stream has ended.".into(),
            ApiError::NotWatching => {
                "That user is not in the stream's room now; only viewers who are watching can be invited."
                    .into()
            }
            ApiError::NotInvited => "The streamer has not invited you to the stage (or withdrew it).".into(),
            ApiError::StageFull { max_guests } => {
                format!("The stage already has its {max_guests} guests; someone must leave it first.")
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("The request body is larger than {limit} bytes.")
            }
            ApiError::Unavailable { dependency, .. } => {
                format!("{}; please retry shortly.", dependency.describe())
            }
            ApiError::Internal(_) => "Something went wrong on our side.".into(),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.public_message(),
                room_name: match self {
                    ApiError::AlreadyLive { live_room } => Some(live_room.clone()),
                    _ => None,
                },
            },
        }
    }
}

/// `{"error":{"code":"…","message":"…"}}`
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
    /// The stream an `already_live` caller is live in, for the app to offer
    /// it (the message says it to people).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_name: Option<String>,
}

/// SQLSTATE classes that mean the database cannot serve us right now, as opposed
/// to a bug in our SQL: connection exceptions, resource exhaustion, operator
/// intervention (shutdown, statement timeout, cancel), serialization retries,
/// and a lock not granted within `lock_timeout` (55P03).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || code == "40001"
        || code == "40P01"
        || code == "55P03"
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        let transient = match err.as_db_error() {
            Some(db) => is_transient_sqlstate(db.code().code()),
            None => is_lost_connection(&err),
        };
        if transient {
            ApiError::unavailable(Dependency::Database, err)
        } else {
            ApiError::internal(err)
        }
    }
}

/// An error with no SQLSTATE is the connection's (closed, or its socket
/// failed: the database is away, retry) or ours: a query that returned
/// another number of rows than it must, a value of another type than the
/// code reads. Those fail the same way on every retry, so they are a 500 (a
/// bug, and the alarm says so), not a 503 that tells the app to try again.
fn is_lost_connection(err: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    err.is_closed() || err.source().is_some_and(|cause| cause.is::<std::io::Error>())
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        // Every pool error happens while getting a connection (connect, log in,
        // recycle, wait): the database is unreachable or refuses us, not a bug in
        // a query. Even a wrong password or database name is an outage to the client.
        ApiError::unavailable(Dependency::Database, err)
    }
}
