//! One `Config`, read once per cold start from the environment and, when
//! `APP_SECRET_ID` is set, from a JSON secret in AWS Secrets Manager.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::secrets::SecretSource;
use crate::store::rate_limit::Limit;

pub const DATABASE_URL: &str = "DATABASE_URL";
pub const DATABASE_CA_CERT: &str = "DATABASE_CA_CERT";
pub const DATABASE_POOL_SIZE: &str = "DATABASE_POOL_SIZE";
pub const LIVEKIT_URL: &str = "LIVEKIT_URL";
pub const LIVEKIT_API_KEY: &str = "LIVEKIT_API_KEY";
pub const LIVEKIT_API_SECRET: &str = "LIVEKIT_API_SECRET";
pub const LIVEKIT_TOKEN_TTL_SECONDS: &str = "LIVEKIT_TOKEN_TTL_SECONDS";
pub const SUPABASE_JWT_SECRET: &str = "SUPABASE_JWT_SECRET";
pub const SUPABASE_URL: &str = "SUPABASE_URL";
pub const APP_SECRET_ID: &str = "APP_SECRET_ID";
pub const LIVEKIT_ROOM_EMPTY_TIMEOUT_SECONDS: &str = "LIVEKIT_ROOM_EMPTY_TIMEOUT_SECONDS";
pub const LIVEKIT_ROOM_DEPARTURE_TIMEOUT_SECONDS: &str = "LIVEKIT_ROOM_DEPARTURE_TIMEOUT_SECONDS";
pub const LIVEKIT_ROOM_MAX_PARTICIPANTS: &str = "LIVEKIT_ROOM_MAX_PARTICIPANTS";
pub const RECONCILE_GRACE_SECONDS: &str = "RECONCILE_GRACE_SECONDS";
pub const CHAT_RATE_LIMIT_MESSAGES: &str = "CHAT_RATE_LIMIT_MESSAGES";
pub const CHAT_RATE_LIMIT_WINDOW_SECONDS: &str = "CHAT_RATE_LIMIT_WINDOW_SECONDS";
pub const SUPABASE_JWKS_CACHE_SECONDS: &str = "SUPABASE_JWKS_CACHE_SECONDS";
pub const START_RATE_LIMIT_REQUESTS: &str = "START_RATE_LIMIT_REQUESTS";
pub const START_RATE_LIMIT_WINDOW_SECONDS: &str = "START_RATE_LIMIT_WINDOW_SECONDS";
pub const TOKEN_RATE_LIMIT_REQUESTS: &str = "TOKEN_RATE_LIMIT_REQUESTS";
pub const TOKEN_RATE_LIMIT_WINDOW_SECONDS: &str = "TOKEN_RATE_LIMIT_WINDOW_SECONDS";
pub const MAX_LIVE_STREAMS_PER_STREAMER: &str = "MAX_LIVE_STREAMS_PER_STREAMER";
pub const ALLOW_ANONYMOUS_PARTICIPATION: &str = "ALLOW_ANONYMOUS_PARTICIPATION";
pub const LIVEKIT_VIEWER_CAN_PUBLISH_DATA: &str = "LIVEKIT_VIEWER_CAN_PUBLISH_DATA";
pub const REQUEST_DEADLINE_SECONDS: &str = "REQUEST_DEADLINE_SECONDS";
pub const SESSION_RETENTION_DAYS: &str = "SESSION_RETENTION_DAYS";
pub const MAX_STAGE_GUESTS: &str = "MAX_STAGE_GUESTS";
pub const STAGE_RETURN_SECONDS: &str = "STAGE_RETURN_SECONDS";
pub const HOST_RETURN_SECONDS: &str = "HOST_RETURN_SECONDS";
pub const VIEWER_LIST_VISIBLE_TO: &str = "VIEWER_LIST_VISIBLE_TO";
pub const REACTION_RATE_LIMIT_TAPS: &str = "REACTION_RATE_LIMIT_TAPS";
pub const REACTION_RATE_LIMIT_WINDOW_SECONDS: &str = "REACTION_RATE_LIMIT_WINDOW_SECONDS";
pub const STAGE_RATE_LIMIT_REQUESTS: &str = "STAGE_RATE_LIMIT_REQUESTS";
pub const STAGE_RATE_LIMIT_WINDOW_SECONDS: &str = "STAGE_RATE_LIMIT_WINDOW_SECONDS";
pub const READ_RATE_LIMIT_REQUESTS: &str = "READ_RATE_LIMIT_REQUESTS";
pub const READ_RATE_LIMIT_WINDOW_SECONDS: &str = "READ_RATE_LIMIT_WINDOW_SECONDS";

const DEFAULT_TOKEN_TTL_SECONDS: u64 = 600;
const DEFAULT_POOL_SIZE: usize = 2;
/// A room nobody joins closes after this; the host joins seconds after start.
const DEFAULT_ROOM_EMPTY_TIMEOUT_SECONDS: u32 = 300;
/// How long a room outlives its last participant: time for a host whose phone
/// dropped to reconnect before the room (and the stream) is gone.
const DEFAULT_ROOM_DEPARTURE_TIMEOUT_SECONDS: u32 = 120;
const DEFAULT_RECONCILE_GRACE_SECONDS: u64 = 120;
/// A run's listing of LiveKit's rooms is up to its whole run (50 s at most)
/// old when it reaches a room. A grace at least that long means a stream is
/// ended only by a listing taken after its clock started: with less, two runs
/// whose listings predate a retried start (which re-creates the room and
/// stops the clock, migration 0039) could start the clock anew and end the
/// stream the retry had just answered 200 for.
const MIN_RECONCILE_GRACE_SECONDS: u64 = 60;
/// Every request is answered within this, whatever a dependency does: well
/// inside the function's 10 s timeout, so the client gets our 503 instead of
/// API Gateway's bare error, and far from API Gateway's 30 s limit. The
/// functions' Postgres role has a 5 s statement timeout, so the database
/// normally gives up first.
const DEFAULT_REQUEST_DEADLINE_SECONDS: u64 = 8;
const DEFAULT_SESSION_RETENTION_DAYS: u64 = 7;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing setting {0}: set it in the environment or in the APP_SECRET_ID secret")]
    Missing(&'static str),
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("set {SUPABASE_JWT_SECRET} (HS256 tokens) and/or {SUPABASE_URL} (asymmetric tokens via JWKS)")]
    NoAuthMethod,
    #[error("cannot read secret {id} from Secrets Manager: {reason}")]
    Secret { id: String, reason: String },
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

#[derive(Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub livekit: LiveKitConfig,
    pub supabase: SupabaseConfig,
    /// How long a live stream's room may be missing from LiveKit before the
    /// reconciler ends the stream.
    pub reconcile_grace: Duration,
    pub limits: Limits,
    pub rules: Rules,
}

/// Who may do what, and how long things are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Supabase anonymous sign-ins (`is_anonymous`) may watch; with this they
    /// may also go live, chat, delete messages, react, use the stage and
    /// moderate.
    pub allow_anonymous_participation: bool,
    /// Live streams one streamer may have at once.
    pub max_live_streams_per_streamer: u32,
    /// How long a request may take before it is answered 503 and its database
    /// work cancelled.
    pub request_deadline: Duration,
    /// Closed participant sessions, and the sessions of ended streams, are
    /// pruned after this.
    pub session_retention: Duration,
    /// Viewers on stage (publishing beside the streamer) at once.
    pub max_stage_guests: u32,
    /// How long a guest whose connection was lost keeps their place on the
    /// stage (and a viewer their raised hand or invitation) for LiveKit's
    /// client to reconnect; the reconciler ends the turn after this.
    pub stage_return: Duration,
    /// How long a live stream's host may be out of its room (a phone that
    /// died, an app closed without `/live/end`) before the reconciler ends the
    /// stream: LiveKit closes a room only once nobody at all is in it.
    pub host_return: Duration,
    /// Who may list a stream's viewers; everyone else sees only the count.
    pub viewer_list: ViewerListVisibility,
}

/// Who may see the list of a stream's viewers (`VIEWER_LIST_VISIBLE_TO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerListVisibility {
    /// `host`: only the streamer (the default); others get the count alone.
    Host,
    /// `viewers`: anyone signed in who is not banned from the stream.
    Viewers,
}

/// Per-user abuse limits, kept in Postgres so they hold across containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Chat messages one user may send to one room.
    pub chat: Limit,
    /// Streams one user may start (retries of a live one included).
    pub start: Limit,
    /// LiveKit tokens one user may ask for.
    pub token: Limit,
    /// Reactions one user may send (each room learns of them in aggregate).
    pub reaction: Limit,
    /// Stage requests (hands, invitations, answers) one user may make: each
    /// changes what every client in the room draws.
    pub stage: Limit,
    /// Reads of a live room's audience and stage (the viewer list, the raised
    /// hands, the stats), together: polling them is bounded.
    pub read: Limit,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    pub pg: tokio_postgres::Config,
    /// The URL's `sslmode`, with libpq's meaning (tokio-postgres itself only
    /// knows disable, prefer and require).
    pub tls_mode: crate::tls::TlsMode,
    /// PEM CA certificate(s) that the server certificate must chain to. Without
    /// it, `sslmode=require` encrypts without authenticating the server, as libpq does.
    pub ca_cert_pem: Option<String>,
    pub pool_size: usize,
    /// The secret `DATABASE_URL` came from, read again when the database
    /// refuses its password: the secret has been rotated since the cold start.
    pub secret: Option<SecretSource>,
}

#[derive(Clone)]
pub struct LiveKitConfig {
    /// The `ws://`/`wss://` URL handed to clients.
    pub client_url: String,
    /// The same host over `http://`/`https://`, for RoomService calls.
    pub api_url: String,
    pub api_key: String,
    pub api_secret: String,
    pub token_ttl: Duration,
    pub room: RoomOptions,
    /// Whether viewers' tokens carry `canPublishData` (chat-like packets of
    /// their own). Off for apps that want no client data in their rooms.
    pub viewer_can_publish_data: bool,
    /// Whether Supabase anonymous sign-ins may publish data too: only when
    /// they may take part (`ALLOW_ANONYMOUS_PARTICIPATION`); otherwise they
    /// watch, in LiveKit as in the API.
    pub anonymous_can_publish_data: bool,
}

/// What `CreateRoom` asks LiveKit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomOptions {
    pub empty_timeout_seconds: u32,
    pub departure_timeout_seconds: u32,
    /// 0 means no limit.
    pub max_participants: u32,
}

#[derive(Clone)]
pub struct SupabaseConfig {
    pub jwt_secret: Option<String>,
    /// `https://<project>.supabase.co`, without a trailing slash.
    pub url: Option<String>,
    pub jwks_ttl: Duration,
}

impl SupabaseConfig {
    pub fn jwks_url(&self) -> Option<String> {
        self.url
            .as_ref()
            .map(|url| format!("{url}/auth/v1/.well-known/jwks.json"))
    }

    pub fn issuer(&self) -> Option<String> {
        self.url.as_ref().map(|url| format!("{url}/auth/v1"))
    }
}

impl Config {
    /// Builds the configuration from a lookup of setting names. Empty values count
    /// as unset, so a template can pass `""` for an optional setting.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &'static str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let require = |name: &'static str| get(name).ok_or(ConfigError::Missing(name));

        let (pg, tls_mode) = parse_database_url(&require(DATABASE_URL)?)?;
        let pool_size = number(&get, DATABASE_POOL_SIZE, DEFAULT_POOL_SIZE, 1..=64)?;

        let client_url = require(LIVEKIT_URL)?;
        let api_url = livekit_api_url(&client_url)
            .filter(|api_url| api_url.starts_with("https://") || is_loopback_http(api_url))
            .ok_or_else(|| {
                invalid(
                    LIVEKIT_URL,
                    "expected a wss:// URL with a host, e.g. wss://my-project.livekit.cloud \
                     (plain ws:// only on loopback: RoomService calls carry admin tokens)",
                )
            })?;
        let token_ttl = Duration::from_secs(number(
            &get,
            LIVEKIT_TOKEN_TTL_SECONDS,
            DEFAULT_TOKEN_TTL_SECONDS,
            60..=86_400,
        )?);
        let room = RoomOptions {
            empty_timeout_seconds: number(
                &get,
                LIVEKIT_ROOM_EMPTY_TIMEOUT_SECONDS,
                DEFAULT_ROOM_EMPTY_TIMEOUT_SECONDS,
                10..=86_400,
            )?,
            departure_timeout_seconds: number(
                &get,
                LIVEKIT_ROOM_DEPARTURE_TIMEOUT_SECONDS,
                DEFAULT_ROOM_DEPARTURE_TIMEOUT_SECONDS,
                0..=86_400,
            )?,
            max_participants: number(&get, LIVEKIT_ROOM_MAX_PARTICIPANTS, 0, 0..=100_000)?,
        };
        let reconcile_grace = Duration::from_secs(number(
            &get,
            RECONCILE_GRACE_SECONDS,
            DEFAULT_RECONCILE_GRACE_SECONDS,
            MIN_RECONCILE_GRACE_SECONDS..=86_400,
        )?);

        let supabase_url = match get(SUPABASE_URL) {
            None => None,
            Some(url) => {
                // The JWKS and `iss` are built from it: a path (the project's
                // `/auth/v1` URL) would break both on every request.
                let Some(origin) = bare_origin(&url) else {
                    return Err(invalid(
                        SUPABASE_URL,
                        "expected the project URL alone, https://<project>.supabase.co (no path, query or credentials)",
                    ));
                };
                if !(url.starts_with("https://") || is_loopback_http(&url)) {
                    return Err(invalid(
                        SUPABASE_URL,
                        "expected https://<project>.supabase.co (plain http:// only on loopback)",
                    ));
                }
                Some(origin)
            }
        };
        let jwt_secret = get(SUPABASE_JWT_SECRET);
        if jwt_secret.is_none() && supabase_url.is_none() {
            return Err(ConfigError::NoAuthMethod);
        }
        if let Some(secret) = &jwt_secret {
            let local_supabase = supabase_url.as_deref().is_some_and(is_loopback_http);
            check_signing_secret(SUPABASE_JWT_SECRET, secret, local_supabase)?;
        }

        let limit = |max_name, default_max, window_name, default_window| -> Result<Limit, ConfigError> {
            Ok(Limit {
                max: number(&get, max_name, default_max, 1..=1_000_000)?,
                window: Duration::from_secs(number(&get, window_name, default_window, 1..=86_400)?),
            })
        };
        let rules = Rules {
            allow_anonymous_participation: flag(&get, ALLOW_ANONYMOUS_PARTICIPATION, false)?,
            max_live_streams_per_streamer: number(&get, MAX_LIVE_STREAMS_PER_STREAMER, 1, 1..=100)?,
            request_deadline: Duration::from_secs(number(
                &get,
                REQUEST_DEADLINE_SECONDS,
                DEFAULT_REQUEST_DEADLINE_SECONDS,
                1..=25,
            )?),
            session_retention: Duration::from_secs(
                number(
                    &get,
                    SESSION_RETENTION_DAYS,
                    DEFAULT_SESSION_RETENTION_DAYS,
                    1..=3650,
                )? * 86_400,
            ),
            max_stage_guests: number(&get, MAX_STAGE_GUESTS, 3, 1..=16)?,
            stage_return: Duration::from_secs(number(&get, STAGE_RETURN_SECONDS, 60, 0..=3_600)?),
            host_return: Duration::from_secs(number(&get, HOST_RETURN_SECONDS, 120, 30..=86_400)?),
            viewer_list: match get(VIEWER_LIST_VISIBLE_TO).as_deref() {
                None | Some("host") => ViewerListVisibility::Host,
                Some("viewers") => ViewerListVisibility::Viewers,
                Some(_) => return Err(invalid(VIEWER_LIST_VISIBLE_TO, "expected host or viewers")),
            },
        };
        let limits = Limits {
            chat: limit(CHAT_RATE_LIMIT_MESSAGES, 5, CHAT_RATE_LIMIT_WINDOW_SECONDS, 10)?,
            start: limit(START_RATE_LIMIT_REQUESTS, 10, START_RATE_LIMIT_WINDOW_SECONDS, 60)?,
            token: limit(TOKEN_RATE_LIMIT_REQUESTS, 60, TOKEN_RATE_LIMIT_WINDOW_SECONDS, 60)?,
            reaction: limit(
                REACTION_RATE_LIMIT_TAPS,
                10,
                REACTION_RATE_LIMIT_WINDOW_SECONDS,
                10,
            )?,
            stage: limit(STAGE_RATE_LIMIT_REQUESTS, 30, STAGE_RATE_LIMIT_WINDOW_SECONDS, 60)?,
            read: limit(READ_RATE_LIMIT_REQUESTS, 120, READ_RATE_LIMIT_WINDOW_SECONDS, 60)?,
        };

        let livekit_secret = require(LIVEKIT_API_SECRET)?;
        check_signing_secret(LIVEKIT_API_SECRET, &livekit_secret, is_loopback_http(&api_url))?;

        Ok(Config {
            database: DatabaseConfig {
                pg,
                tls_mode,
                ca_cert_pem: get(DATABASE_CA_CERT),
                pool_size,
                secret: None,
            },
            livekit: LiveKitConfig {
                client_url,
                api_url,
                api_key: require(LIVEKIT_API_KEY)?,
                api_secret: livekit_secret,
                token_ttl,
                room,
                viewer_can_publish_data: flag(&get, LIVEKIT_VIEWER_CAN_PUBLISH_DATA, true)?,
                anonymous_can_publish_data: rules.allow_anonymous_participation,
            },
            supabase: SupabaseConfig {
                jwt_secret,
                url: supabase_url,
                jwks_ttl: Duration::from_secs(number(&get, SUPABASE_JWKS_CACHE_SECONDS, 600, 1..=86_400)?),
            },
            reconcile_grace,
            limits,
            rules,
        })
    }

    /// Reads the process environment; when `APP_SECRET_ID` names a secret, its
    /// JSON keys take precedence over the environment.
    pub async fn load() -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(secret_id) = env(APP_SECRET_ID) else {
            return Config::from_lookup(env);
        };
        let source = SecretSource::new(crate::secrets::client_from_env().await, secret_id);
        Config::from_secret_source(source, env).await
    }

    /// Reads the secret and fills in from `env`. When the secret holds
    /// `DATABASE_URL`, the source is kept for reading rotated credentials.
    pub async fn from_secret_source(
        source: SecretSource,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut secret = source.fetch().await?;
        // A blank value is unset, as in the environment: the environment's
        // value stands, rather than the default.
        secret.retain(|_, value| !value.trim().is_empty());
        if let Some(warning) = pool_size_override_warning(&secret, &env) {
            tracing::warn!("{warning}");
        }
        let mut config = Config::from_secret_and_env(&secret, env)?;
        if secret.contains_key(DATABASE_URL) {
            config.database.secret = Some(source);
        }
        Ok(config)
    }

    /// The secret's keys win over the environment's. A key no setting reads
    /// (a misspelt name, or a log setting, which only the environment sets) is
    /// named in a warning: its value would otherwise be dropped in silence,
    /// and the default it meant to change would stand.
    pub fn from_secret_and_env(
        secret: &HashMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let read = std::cell::RefCell::new(std::collections::HashSet::new());
        // A blank value is unset (as in the environment): the environment's
        // value stands, rather than the default.
        let config = Config::from_lookup(|name| {
            read.borrow_mut().insert(name.to_owned());
            secret
                .get(name)
                .filter(|value| !value.trim().is_empty())
                .cloned()
                .or_else(|| env(name))
        })?;
        let read = read.into_inner();
        let mut ignored: Vec<&str> = secret
            .keys()
            .map(String::as_str)
            .filter(|key| !read.contains(*key))
            .collect();
        if !ignored.is_empty() {
            ignored.sort_unstable();
            tracing::warn!(
                keys = ?ignored,
                "the {APP_SECRET_ID} secret holds keys that no setting reads; they are ignored (a misspelt name, or a log setting, which only the environment sets)"
            );
        }
        Ok(config)
    }
}

/// The secret's `DATABASE_POOL_SIZE` wins over the template's, whose reserved
/// concurrencies are sized so that containers × pool size stay within the
/// database's connection budget: a different value in the secret breaks
/// that arithmetic unless the concurrencies were lowered with it.
fn pool_size_override_warning(
    secret: &HashMap<String, String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let in_secret = secret.get(DATABASE_POOL_SIZE)?.trim();
    let in_env = env(DATABASE_POOL_SIZE)?;
    // The same number written otherwise ("01") is the same pool.
    let same = match (in_secret.parse::<u64>(), in_env.trim().parse::<u64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => in_secret == in_env.trim(),
    };
    (!same).then(|| {
        format!(
            "the secret's DATABASE_POOL_SIZE ({in_secret}) overrides the template's DatabasePoolSize ({}): \
             every container now holds that many Postgres connections, so the template's reserved \
             concurrencies no longer keep the functions within the database's connection budget; \
             set DatabasePoolSize instead (README, \"Limits and how to size them\")",
            in_env.trim()
        )
    })
}

/// Why a `DATABASE_URL` does not parse, without any of its text: tokio-postgres
/// says only "invalid connection string" and keeps the reason in its source,
/// which is passed on when it names an option (`unknown option `pgbouncer``,
/// the flag ORM-style pooler URLs carry) and never otherwise (other reasons
/// quote a character of the string, which may be the password's).
fn parse_failure(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match error.source().map(ToString::to_string) {
        Some(reason)
            if reason.starts_with("unknown option `") || reason.starts_with("invalid value for option `") =>
        {
            format!("{error}: {reason}")
        }
        _ => error.to_string(),
    }
}

/// A `postgres://` URL or a key=value connection string, and its `sslmode`.
/// tokio-postgres does not know `verify-ca` and `verify-full`: they are read
/// here and handed to it as `require`, the TLS configuration doing the rest.
pub fn parse_database_url(raw: &str) -> Result<(tokio_postgres::Config, crate::tls::TlsMode), ConfigError> {
    use crate::tls::TlsMode;
    let (raw, verify) = take_verify_mode(raw.trim());
    let pg = tokio_postgres::Config::from_str(&raw).map_err(|e| invalid(DATABASE_URL, parse_failure(&e)))?;
    // The driver takes the last `sslmode`, this reading the verifying one: a
    // later `sslmode=disable` would otherwise have a URL that asks for
    // verify-full connect in plain text, and warn of nothing.
    if verify.is_some() && pg.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        return Err(invalid(
            DATABASE_URL,
            "sslmode is given more than once; give it once",
        ));
    }
    let mode = verify.unwrap_or(match pg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => TlsMode::Disable,
        tokio_postgres::config::SslMode::Require => TlsMode::Require,
        _ => TlsMode::Prefer,
    });
    Ok((pg, mode))
}

/// Replaces `sslmode=verify-ca`/`verify-full` (a whole parameter of the URL's
/// query or of a key=value string) with `sslmode=require`, returning the mode.
fn take_verify_mode(raw: &str) -> (String, Option<crate::tls::TlsMode>) {
    use crate::tls::TlsMode;
    for (value, mode) in [
        ("verify-full", TlsMode::VerifyFull),
        ("verify-ca", TlsMode::VerifyCa),
    ] {
        let needle = format!("sslmode={value}");
        for (at, _) in raw.match_indices(&needle) {
            let before = raw[..at].chars().next_back();
            let after = raw[at + needle.len()..].chars().next();
            let starts = before.is_none_or(|c| c == '?' || c == '&' || c.is_whitespace());
            let ends = after.is_none_or(|c| c == '&' || c.is_whitespace());
            if starts && ends {
                let replaced = format!("{}sslmode=require{}", &raw[..at], &raw[at + needle.len()..]);
                return (replaced, Some(mode));
            }
        }
    }
    (raw.to_owned(), None)
}

/// An optional whole number within `range`, or `default` when unset.
fn number<T>(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    let Some(raw) = get(name) else { return Ok(default) };
    raw.parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            invalid(
                name,
                format!(
                    "expected a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// `http://` to this machine only (a local Supabase or LiveKit, the tests):
/// anywhere else the JWKS that decides who is who, and RoomService calls that
/// carry admin tokens, must go over TLS.
/// HS256 secrets shorter than this can be found offline from one token or one
/// webhook the attacker holds; LiveKit asks for at least 32 characters, and
/// Supabase's JWT secrets have at least as many.
const MIN_SIGNING_SECRET_CHARS: usize = 32;

/// Secrets printed in public examples: Supabase's self-hosted `.env` and its
/// CLI's local stack. Whoever holds one can sign any user's token.
const PUBLIC_EXAMPLE_SECRETS: &[&str] = &[
    "your-super-secret-jwt-token-with-at-least-32-characters-long",
    "super-secret-jwt-token-with-at-least-32-characters-long",
];

/// Refuses a signing secret anyone could guess, except for a server on this
/// machine (`local`: `livekit-server --dev`'s `secret`, a local Supabase).
fn check_signing_secret(name: &'static str, secret: &str, local: bool) -> Result<(), ConfigError> {
    if local {
        return Ok(());
    }
    if secret.chars().count() < MIN_SIGNING_SECRET_CHARS {
        return Err(invalid(
            name,
            format!(
                "shorter than {MIN_SIGNING_SECRET_CHARS} characters: a short HMAC secret can be found from one signed token; use the one your server generated (allowed only for a server on loopback)"
            ),
        ));
    }
    if PUBLIC_EXAMPLE_SECRETS.contains(&secret) {
        return Err(invalid(
            name,
            "the example secret of Supabase's self-hosting guide or CLI, which anyone can read: generate your own (allowed only for a Supabase on loopback)",
        ));
    }
    Ok(())
}

/// The origin of a URL that is a scheme, a host and maybe a port, with at
/// most a trailing `/`; `None` for any other. Written as Supabase writes it in
/// a token's `iss` (the host in lower case, a default port left out, no
/// trailing slash): `iss` is compared exactly, so `https://ABC.supabase.co`
/// as given would refuse every token.
fn bare_origin(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .filter(|parsed| {
            parsed.has_host()
                && parsed.path() == "/"
                && parsed.query().is_none()
                && parsed.fragment().is_none()
                && parsed.username().is_empty()
                && parsed.password().is_none()
        })
        .map(|parsed| parsed.origin().ascii_serialization())
}

fn is_loopback_http(url: &str) -> bool {
    // Parsed as an HTTP client reads it: `http://localhost:80@evil.example`
    // is a request to evil.example.
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    url.scheme() == "http"
        && (host == "localhost" || ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// An optional `true`/`false` (also `1`/`0`, `yes`/`no`), or `default` when unset.
fn flag(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(raw) = get(name) else { return Ok(default) };
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(name, "expected true or false")),
    }
}

/// `wss://host` → `https://host`, `ws://host` → `http://host`.
fn livekit_api_url(client_url: &str) -> Option<String> {
    let (scheme, rest) = client_url.split_once("://")?;
    let api_scheme = match scheme {
        "wss" => "https",
        "ws" => "http",
        _ => return None,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return None;
    }
    Some(format!("{api_scheme}://{rest}"))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets stay out of logs: only say which ones are present.
        f.debug_struct("Config")
            .field("database_hosts", &self.database.pg.get_hosts())
            .field("database_pool_size", &self.database.pool_size)
            .field("database_tls_mode", &self.database.tls_mode)
            .field("database_ca_cert", &self.database.ca_cert_pem.is_some())
            .field("database_url_from_secret", &self.database.secret.is_some())
            .field("livekit_url", &self.livekit.client_url)
            .field("livekit_token_ttl", &self.livekit.token_ttl)
            .field("livekit_room", &self.livekit.room)
            .field("reconcile_grace", &self.reconcile_grace)
            .field("limits", &self.limits)
            .field("rules", &self.rules)
            .field(
                "livekit_viewer_can_publish_data",
                &self.livekit.viewer_can_publish_data,
            )
            .field("supabase_url", &self.supabase.url)
            .field("supabase_jwt_secret", &self.supabase.jwt_secret.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const COMPLETE: &[(&str, &str)] = &[
        (
            DATABASE_URL,
            "postgres://app:pw@db.example.com:5432/postgres?sslmode=require",
        ),
        (LIVEKIT_URL, "wss://demo.livekit.cloud/"),
        (LIVEKIT_API_KEY, "key"),
        (LIVEKIT_API_SECRET, "livekit-secret-of-at-least-32-characters"),
        (SUPABASE_JWT_SECRET, "jwt-secret-of-at-least-32-characters-long"),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        COMPLETE.iter().copied().filter(|(k, _)| *k != name).collect()
    }

    #[test]
    fn complete_settings_parse_with_defaults() {
        let config = Config::from_lookup(lookup(COMPLETE)).unwrap();
        assert_eq!(config.livekit.api_url, "https://demo.livekit.cloud");
        assert_eq!(config.livekit.client_url, "wss://demo.livekit.cloud/");
        assert_eq!(config.livekit.token_ttl, Duration::from_secs(600));
        assert_eq!(config.database.pool_size, 2);
        assert_eq!(
            config.livekit.room,
            RoomOptions {
                empty_timeout_seconds: 300,
                departure_timeout_seconds: 120,
                max_participants: 0
            }
        );
        assert_eq!(config.reconcile_grace, Duration::from_secs(120));
        assert_eq!(
            config.database.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(config.database.tls_mode, crate::tls::TlsMode::Require);
        assert!(config.supabase.url.is_none());
    }

    #[test]
    fn each_required_setting_is_named_when_missing() {
        for name in [DATABASE_URL, LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET] {
            let err = Config::from_lookup(lookup(&without(name))).err();
            assert_eq!(err, Some(ConfigError::Missing(name)), "{name}");
            assert!(err.unwrap().to_string().contains(name));
        }
    }

    #[test]
    fn an_empty_value_counts_as_missing() {
        let mut pairs = without(LIVEKIT_API_KEY);
        pairs.push((LIVEKIT_API_KEY, "  "));
        assert_eq!(
            Config::from_lookup(lookup(&pairs)).err(),
            Some(ConfigError::Missing(LIVEKIT_API_KEY))
        );
    }

    #[test]
    fn some_supabase_verification_method_is_required() {
        let err = Config::from_lookup(lookup(&without(SUPABASE_JWT_SECRET))).err();
        assert_eq!(err, Some(ConfigError::NoAuthMethod));
        let mut pairs = without(SUPABASE_JWT_SECRET);
        pairs.push((SUPABASE_URL, "https://abc.supabase.co/"));
        let config = Config::from_lookup(lookup(&pairs)).unwrap();
        assert_eq!(
            config.supabase.issuer().as_deref(),
            Some("https://abc.supabase.co/auth/v1")
        );
        assert_eq!(
            config.supabase.jwks_url().as_deref(),
            Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json")
        );
    }

    #[test]
    fn a_pool_size_in_the_secret_that_overrides_the_templates_is_warned_about() {
        let secret = |value: &str| HashMap::from([(DATABASE_POOL_SIZE.to_owned(), value.to_owned())]);
        let template = |name: &str| (name == DATABASE_POOL_SIZE).then(|| "1".to_owned());
        let warning = pool_size_override_warning(&secret("8"), &template).expect("8 overrides 1");
        assert!(warning.contains("(8)") && warning.contains("(1)"), "{warning}");
        assert_eq!(pool_size_override_warning(&secret("1"), &template), None);
        assert_eq!(pool_size_override_warning(&secret("01"), &template), None);
        assert_eq!(pool_size_override_warning(&HashMap::new(), &template), None);
        assert_eq!(pool_size_override_warning(&secret("8"), &|_: &str| None), None);
    }

    #[test]
    fn malformed_settings_are_named() {
        for (name, value) in [
            (DATABASE_URL, "postgres://host:notaport/db"),
            (LIVEKIT_URL, "https://demo.livekit.cloud"),
            (LIVEKIT_URL, "wss://"),
            (LIVEKIT_TOKEN_TTL_SECONDS, "ten"),
            (LIVEKIT_TOKEN_TTL_SECONDS, "5"),
            (DATABASE_POOL_SIZE, "0"),
            (LIVEKIT_ROOM_EMPTY_TIMEOUT_SECONDS, "-1"),
            (LIVEKIT_ROOM_MAX_PARTICIPANTS, "lots"),
            (RECONCILE_GRACE_SECONDS, "1.5"),
            (RECONCILE_GRACE_SECONDS, "0"),
            (RECONCILE_GRACE_SECONDS, "59"),
            (SUPABASE_URL, "abc.supabase.co"),
            (SUPABASE_URL, "http://abc.supabase.co"),
            (SUPABASE_URL, "http://10.0.0.5:54321"),
            (SUPABASE_URL, "http://localhost.evil.example"),
            (SUPABASE_URL, "http://localhost:80@evil.example"),
            (SUPABASE_URL, "http://127.0.0.1@evil.example"),
            (SUPABASE_URL, "https://abc.supabase.co/auth/v1"),
            (SUPABASE_URL, "https://abc.supabase.co?x=1"),
            (SUPABASE_URL, "https://user:pw@abc.supabase.co"),
            (MAX_LIVE_STREAMS_PER_STREAMER, "0"),
            (ALLOW_ANONYMOUS_PARTICIPATION, "maybe"),
            (LIVEKIT_VIEWER_CAN_PUBLISH_DATA, "2"),
            (REQUEST_DEADLINE_SECONDS, "30"),
            (SESSION_RETENTION_DAYS, "0"),
        ] {
            let mut pairs = without(name);
            pairs.push((name, value));
            match Config::from_lookup(lookup(&pairs)) {
                Err(ConfigError::Invalid { name: named, .. }) => assert_eq!(named, name, "{value}"),
                other => panic!("{name}={value}: expected Invalid, got {:?}", other.err()),
            }
        }
    }

    #[test]
    fn sslmode_has_libpq_meaning_including_verify_ca_and_verify_full() {
        use crate::tls::TlsMode;
        for (url, mode) in [
            (
                "postgres://u:p@db.example.com/postgres?sslmode=verify-full",
                TlsMode::VerifyFull,
            ),
            (
                "postgres://u:p@db.example.com/postgres?application_name=x&sslmode=verify-ca",
                TlsMode::VerifyCa,
            ),
            (
                "host=db.example.com user=u sslmode=verify-full dbname=postgres",
                TlsMode::VerifyFull,
            ),
            (
                "postgres://u:p@db.example.com/postgres?sslmode=require",
                TlsMode::Require,
            ),
            (
                "postgres://u:p@db.example.com/postgres?sslmode=disable",
                TlsMode::Disable,
            ),
            ("postgres://u:p@db.example.com/postgres", TlsMode::Prefer),
            // Only a whole parameter counts, not a password that happens to contain it.
            (
                "postgres://u:xsslmode=verify-full@db.example.com/postgres",
                TlsMode::Prefer,
            ),
        ] {
            let (pg, parsed) = parse_database_url(url).unwrap();
            assert_eq!(parsed, mode, "{url}");
            assert_eq!(pg.get_hosts().len(), 1, "{url}");
        }
        assert!(parse_database_url("postgres://db/x?sslmode=verify-everything").is_err());
    }

    #[test]
    fn a_verifying_sslmode_is_not_undone_by_a_later_one() {
        for url in [
            "postgres://u:p@db.example.com/postgres?sslmode=verify-full&sslmode=disable",
            "postgres://u:p@db.example.com/postgres?sslmode=verify-ca&sslmode=prefer",
            "host=db.example.com user=u sslmode=verify-full sslmode=disable",
        ] {
            let error = parse_database_url(url).unwrap_err().to_string();
            assert!(
                error.contains("sslmode is given more than once"),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn a_database_url_that_does_not_parse_says_which_option_and_never_its_text() {
        let reason = |url: &str| parse_database_url(url).unwrap_err().to_string();
        let pooler = reason("postgres://u:s3cret-pw@db.example.com:6543/postgres?pgbouncer=true");
        assert!(pooler.contains("unknown option `pgbouncer`"), "{pooler}");
        assert!(!pooler.contains("s3cret-pw"), "{pooler}");
        let port = reason("postgres://u:s3cret-pw@db.example.com:port/postgres");
        assert!(port.contains("invalid value for option `port`"), "{port}");
        let quoted = reason("host='db.example.com password=s3cret-pw");
        assert!(!quoted.contains("s3cret"), "{quoted}");
    }

    #[test]
    fn livekit_url_is_wss_except_on_loopback() {
        for (url, accepted) in [
            ("wss://my-project.livekit.cloud", true),
            ("ws://127.0.0.1:7880", true),
            ("ws://localhost:7880/", true),
            ("ws://livekit.internal:7880", false),
            ("ws://10.0.0.5:7880", false),
            ("ws://localhost:7880@evil.example", false),
            ("https://my-project.livekit.cloud", false),
        ] {
            let mut pairs = without(LIVEKIT_URL);
            pairs.push((LIVEKIT_URL, url));
            assert_eq!(Config::from_lookup(lookup(&pairs)).is_ok(), accepted, "{url}");
        }
    }

    #[test]
    fn supabase_url_is_https_except_on_loopback() {
        for url in [
            "https://abc.supabase.co",
            "http://127.0.0.1:54321",
            "http://localhost:54321/",
            "http://[::1]:54321",
        ] {
            let mut pairs = without(SUPABASE_URL);
            pairs.push((SUPABASE_URL, url));
            assert!(Config::from_lookup(lookup(&pairs)).is_ok(), "{url}");
        }
    }

    /// Tokens' `iss` is compared exactly, with the origin as Supabase writes it.
    #[test]
    fn the_supabase_issuer_is_the_urls_origin_as_supabase_writes_it() {
        for (url, issuer) in [
            ("https://abc.supabase.co", "https://abc.supabase.co/auth/v1"),
            ("https://ABC.Supabase.co/", "https://abc.supabase.co/auth/v1"),
            ("https://abc.supabase.co:443", "https://abc.supabase.co/auth/v1"),
            (
                "https://auth.example.com:8443",
                "https://auth.example.com:8443/auth/v1",
            ),
            ("http://127.0.0.1:54321", "http://127.0.0.1:54321/auth/v1"),
        ] {
            let mut pairs = without(SUPABASE_URL);
            pairs.push((SUPABASE_URL, url));
            let config = Config::from_lookup(lookup(&pairs)).unwrap();
            assert_eq!(config.supabase.issuer().as_deref(), Some(issuer), "{url}");
        }
    }

    #[test]
    fn limits_default_to_the_documented_ones() {
        let per = |max, seconds| Limit {
            max,
            window: Duration::from_secs(seconds),
        };
        let config = Config::from_lookup(lookup(COMPLETE)).unwrap();
        assert_eq!(config.limits.chat, per(5, 10));
        assert_eq!(config.limits.start, per(10, 60));
        assert_eq!(config.limits.token, per(60, 60));
        assert_eq!(config.limits.reaction, per(10, 10));
        assert_eq!(config.limits.stage, per(30, 60));
        assert_eq!(config.limits.read, per(120, 60));
    }

    #[test]
    fn rules_default_to_the_safe_choice() {
        let config = Config::from_lookup(lookup(COMPLETE)).unwrap();
        assert_eq!(
            config.rules,
            Rules {
                allow_anonymous_participation: false,
                max_live_streams_per_streamer: 1,
                request_deadline: Duration::from_secs(8),
                session_retention: Duration::from_secs(7 * 86_400),
                max_stage_guests: 3,
                stage_return: Duration::from_secs(60),
                host_return: Duration::from_secs(120),
                viewer_list: ViewerListVisibility::Host,
            }
        );
        assert!(
            config.livekit.viewer_can_publish_data,
            "the seed's viewers chat over data packets"
        );
        let mut pairs = COMPLETE.to_vec();
        pairs.extend([
            (ALLOW_ANONYMOUS_PARTICIPATION, "true"),
            (LIVEKIT_VIEWER_CAN_PUBLISH_DATA, "false"),
            (MAX_STAGE_GUESTS, "5"),
            (VIEWER_LIST_VISIBLE_TO, "viewers"),
        ]);
        let config = Config::from_lookup(lookup(&pairs)).unwrap();
        assert_eq!(config.rules.max_stage_guests, 5);
        assert_eq!(config.rules.viewer_list, ViewerListVisibility::Viewers);
        let mut wrong = COMPLETE.to_vec();
        wrong.push((VIEWER_LIST_VISIBLE_TO, "everyone"));
        assert!(Config::from_lookup(lookup(&wrong)).is_err());
        assert!(config.rules.allow_anonymous_participation);
        assert!(!config.livekit.viewer_can_publish_data);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = Config::from_lookup(lookup(COMPLETE)).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("pw"), "{printed}");
        assert!(!printed.contains("jwt-secret"), "{printed}");
        assert!(!printed.contains("livekit-secret"), "{printed}");
    }

    #[test]
    fn a_guessable_signing_secret_is_refused_unless_its_server_is_on_loopback() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut settings = COMPLETE.to_vec();
            settings.retain(|(k, _)| !pairs.iter().any(|(name, _)| name == k));
            settings.extend_from_slice(pairs);
            Config::from_lookup(lookup(&settings))
        };
        let refused = |result: Result<Config, ConfigError>, name: &str| match result {
            Err(ConfigError::Invalid {
                name: refused,
                reason,
            }) => {
                assert_eq!(refused, name, "{reason}");
            }
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => panic!("{name} accepted"),
        };
        // livekit-server --dev's secret, against LiveKit Cloud.
        refused(with(&[(LIVEKIT_API_SECRET, "secret")]), LIVEKIT_API_SECRET);
        refused(
            with(&[(SUPABASE_JWT_SECRET, "a-secret-of-31-characters-long!")]),
            SUPABASE_JWT_SECRET,
        );
        for example in PUBLIC_EXAMPLE_SECRETS {
            refused(with(&[(SUPABASE_JWT_SECRET, example)]), SUPABASE_JWT_SECRET);
        }
        // The same on this machine: a development server's.
        let local = with(&[
            (LIVEKIT_URL, "ws://localhost:7880"),
            (LIVEKIT_API_SECRET, "secret"),
            (SUPABASE_URL, "http://127.0.0.1:54321"),
            (SUPABASE_JWT_SECRET, PUBLIC_EXAMPLE_SECRETS[1]),
        ])
        .unwrap();
        assert_eq!(local.livekit.api_secret, "secret");
        assert!(with(&[(SUPABASE_JWT_SECRET, "a-secret-of-32-characters-long!!")]).is_ok());
    }

    #[test]
    fn secret_values_take_precedence_over_the_environment() {
        let secret: HashMap<String, String> = [(LIVEKIT_API_KEY.to_string(), "from-secret".to_string())]
            .into_iter()
            .collect();
        let config = Config::from_secret_and_env(&secret, lookup(COMPLETE)).unwrap();
        assert_eq!(config.livekit.api_key, "from-secret");
        assert_eq!(
            config.livekit.api_secret,
            "livekit-secret-of-at-least-32-characters"
        );
    }

    /// An empty value in the secret is unset, as in the environment: the
    /// environment's value stands (not the default, nor a refusal).
    #[test]
    fn an_empty_secret_value_leaves_the_environments() {
        let secret: HashMap<String, String> = [(LIVEKIT_API_KEY.to_string(), String::new())]
            .into_iter()
            .collect();
        let config = Config::from_secret_and_env(&secret, lookup(COMPLETE)).unwrap();
        let from_env = Config::from_lookup(lookup(COMPLETE)).unwrap();
        assert_eq!(config.livekit.api_key, from_env.livekit.api_key);
    }
}
