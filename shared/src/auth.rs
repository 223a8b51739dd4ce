//! Supabase access-token verification.
//!
//! HS256 tokens are checked with the project's JWT secret; ES256/RS256 tokens with
//! the project's JWKS, cached and refetched on an unknown `kid` at most once a
//! minute. Only end-user sessions pass: `aud` and `role` must be `authenticated`,
//! `sub` a UUID, `exp` in the future, and `iss` the project's auth URL when known.
//! The anon and service-role keys are valid JWTs with other roles and are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

use crate::config::SupabaseConfig;

/// The verified caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub id: Uuid,
    /// A Supabase anonymous sign-in (`is_anonymous: true`): a throwaway
    /// account anyone can make in one call, so by default it may only watch.
    pub is_anonymous: bool,
}

impl AuthUser {
    /// Refuses anonymous sign-ins unless `rules` allow them to take part
    /// (go live, chat, moderate), not only watch.
    pub fn require_participant(&self, rules: &crate::config::Rules) -> Result<(), crate::ApiError> {
        if self.is_anonymous && !rules.allow_anonymous_participation {
            return Err(crate::ApiError::AnonymousNotAllowed);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token rejected: {0}")]
    Rejected(&'static str),
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The keys needed to check the token could not be loaded: not the caller's fault.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// The least time between two fetches triggered by an unknown `kid`.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(60);
/// The least time between two fetches after one failed: short, so a blip of
/// Supabase Auth costs seconds of 503s, not a minute of them; still one
/// fetch per container however many requests wait for it.
pub(crate) const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// What a request keeps of its deadline, after a JWKS fetch it waits for,
/// for its own work (besides the answer's own margin): a fetch bounded only
/// by [`JWKS_FETCH_TIMEOUT`] could outlast a short deadline, be dropped with
/// the request, and so never fall back to the previous keys nor space the
/// next attempt.
const JWKS_WORK_RESERVE: Duration = Duration::from_millis(750);
/// While the JWKS cannot be fetched, the previous copy keeps verifying for
/// this many cache periods after it was fetched (an hour at the default ten
/// minutes, an access token's default lifetime), then requests get 503: a
/// key withdrawn while Supabase Auth is unreachable is not trusted for ever.
const JWKS_STALE_PERIODS: u32 = 6;

#[derive(Deserialize)]
struct SupabaseClaims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    is_anonymous: bool,
}

pub struct Authenticator {
    hs256_key: Option<DecodingKey>,
    jwks: Option<JwksCache>,
    /// One per accepted algorithm, built once: a `Validation` holds several sets.
    hs256: Validation,
    es256: Validation,
    rs256: Validation,
}

/// What every Supabase user session must satisfy, besides its signature.
fn validation(alg: Algorithm, issuer: Option<&str>) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_audience(&["authenticated"]);
    // jsonwebtoken checks `iss` only when present unless it is also required.
    match issuer {
        Some(issuer) => {
            validation.set_issuer(&[issuer]);
            validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        }
        None => validation.set_required_spec_claims(&["exp", "sub", "aud"]),
    }
    validation
}

impl Authenticator {
    pub fn new(config: &SupabaseConfig, http: reqwest::Client) -> Authenticator {
        crate::jwt_crypto::install();
        let issuer = config.issuer();
        Authenticator {
            hs256_key: config
                .jwt_secret
                .as_deref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: config
                .jwks_url()
                .map(|url| JwksCache::new(url, http, config.jwks_ttl)),
            hs256: validation(Algorithm::HS256, issuer.as_deref()),
            es256: validation(Algorithm::ES256, issuer.as_deref()),
            rs256: validation(Algorithm::RS256, issuer.as_deref()),
        }
    }

    /// Verifies a bearer token and returns the user it was issued to.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, AuthError> {
        let header = jsonwebtoken::decode_header(token)?;
        // Keys come from our configuration only, never from the token itself.
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(AuthError::Rejected(
                "embedded or remote key references are not accepted",
            ));
        }
        if header.crit.is_some() {
            return Err(AuthError::Rejected(
                "critical header extensions are not supported",
            ));
        }
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256_key.as_ref().ok_or(AuthError::Rejected(
                    "HS256 tokens are not accepted (no SUPABASE_JWT_SECRET)",
                ))?;
                jsonwebtoken::decode::<SupabaseClaims>(token, key, &self.hs256)?.claims
            }
            Algorithm::ES256 | Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Rejected(
                    "asymmetric tokens are not accepted (no SUPABASE_URL)",
                ))?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or(AuthError::Rejected("token has no kid"))?;
                let key = jwks.key(kid, header.alg).await?;
                let validation = if header.alg == Algorithm::ES256 {
                    &self.es256
                } else {
                    &self.rs256
                };
                jsonwebtoken::decode::<SupabaseClaims>(token, &key, validation)?.claims
            }
            _ => return Err(AuthError::Rejected("unsupported algorithm")),
        };
        if claims.role.as_deref() != Some("authenticated") {
            return Err(AuthError::Rejected("role is not authenticated"));
        }
        let id = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::Rejected("sub is not a UUID"))?;
        Ok(AuthUser {
            id,
            is_anonymous: claims.is_anonymous,
        })
    }
}

struct JwksCache {
    url: String,
    http: reqwest::Client,
    state: RwLock<JwksState>,
    /// Held while fetching, so concurrent misses wait for one fetch.
    fetching: Mutex<()>,
}

struct JwksState {
    keys: HashMap<String, (Algorithm, Arc<DecodingKey>)>,
    fetched_at: Option<Instant>,
    /// The last fetch, which is `fetched_at` when it succeeded.
    last_attempt: Option<Instant>,
    /// How long a fetched copy is trusted: a key removed from the JWKS stops
    /// verifying once this has passed.
    ttl: Duration,
}

impl JwksState {
    fn fresh(&self) -> bool {
        self.fetched_at.is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Whether the copy may still verify while it cannot be refreshed.
    fn usable(&self) -> bool {
        self.fetched_at
            .is_some_and(|at| at.elapsed() < self.ttl * JWKS_STALE_PERIODS)
    }

    /// The last fetch failed: a `kid` the copy lacks may be a new key that
    /// fetch would have brought, so it is not refused as unknown.
    fn last_attempt_failed(&self) -> bool {
        self.last_attempt.is_some() && self.last_attempt != self.fetched_at
    }

    fn may_refetch(&self) -> bool {
        let wait = if self.last_attempt_failed() {
            JWKS_RETRY_AFTER_FAILURE
        } else {
            JWKS_MIN_REFETCH
        };
        self.last_attempt
            .is_none_or(|at| at.elapsed() >= wait.min(self.ttl))
    }

    /// A `kid` the usable copy lacks: unknown if the copy is current, but
    /// while the JWKS cannot be fetched it may be a key published since, so
    /// the caller gets 503 (the token may be fine), not 401.
    fn missing_kid(&self) -> AuthError {
        if self.last_attempt_failed() {
            AuthError::KeysUnavailable("the JWKS could not be refreshed for a key it may have".into())
        } else {
            AuthError::Rejected("unknown kid")
        }
    }

    /// `Ok(Some)`: use this key; `Ok(None)`: fetch the JWKS first; `Err`: refuse.
    /// A fresh copy answers alone; a stale or missing key fetches, but never more
    /// often than `JWKS_MIN_REFETCH` (`JWKS_RETRY_AFTER_FAILURE` after a failed
    /// fetch), so a flood of unknown `kid`s costs one fetch.
    fn cached(&self, kid: &str, alg: Algorithm) -> Result<Option<Arc<DecodingKey>>, AuthError> {
        let found = if self.usable() {
            self.lookup(kid, alg)?
        } else {
            None
        };
        if self.may_refetch() && (found.is_none() || !self.fresh()) {
            return Ok(None);
        }
        match found {
            Some(key) => Ok(Some(key)),
            None if self.fetched_at.is_none() => Err(AuthError::KeysUnavailable(
                "the JWKS could not be fetched yet".into(),
            )),
            None if !self.usable() => Err(AuthError::KeysUnavailable(
                "the JWKS could not be refreshed for too long".into(),
            )),
            None => Err(self.missing_kid()),
        }
    }

    fn lookup(&self, kid: &str, alg: Algorithm) -> Result<Option<Arc<DecodingKey>>, AuthError> {
        match self.keys.get(kid) {
            Some((key_alg, key)) if *key_alg == alg => Ok(Some(key.clone())),
            Some(_) => Err(AuthError::Rejected("the token's alg does not match its key")),
            None => Ok(None),
        }
    }
}

impl JwksCache {
    fn new(url: String, http: reqwest::Client, ttl: Duration) -> JwksCache {
        let state = JwksState {
            keys: HashMap::new(),
            fetched_at: None,
            last_attempt: None,
            ttl,
        };
        JwksCache {
            url,
            http,
            state: RwLock::new(state),
            fetching: Mutex::new(()),
        }
    }

    async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, AuthError> {
        if let Some(key) = self.state.read().await.cached(kid, alg)? {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have refreshed the keys while this one waited.
        if let Some(key) = self.state.read().await.cached(kid, alg)? {
            return Ok(key);
        }

        let fetched = crate::store::db::while_the_answer_can_wait_leaving(JWKS_WORK_RESERVE, self.fetch())
            .await
            .unwrap_or_else(|| {
                Err(AuthError::KeysUnavailable(
                    "the JWKS did not answer within the request's time".into(),
                ))
            });
        let mut state = self.state.write().await;
        let attempted = Instant::now();
        state.last_attempt = Some(attempted);
        match fetched {
            Ok(keys) => {
                state.keys = keys;
                state.fetched_at = Some(attempted);
            }
            // A stale copy beats no copy while the auth server is down, for
            // JWKS_STALE_PERIODS; with no usable copy the caller gets 503,
            // not 401: the token may be fine.
            Err(e) if state.keys.is_empty() || !state.usable() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; using the previous keys"),
        }
        state.lookup(kid, alg)?.ok_or_else(|| state.missing_kid())
    }

    async fn fetch(&self) -> Result<HashMap<String, (Algorithm, Arc<DecodingKey>)>, AuthError> {
        let unavailable = |e: String| AuthError::KeysUnavailable(e);
        let response = self
            .http
            .get(&self.url)
            .timeout(JWKS_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!(
                "JWKS endpoint answered {}",
                response.status()
            )));
        }
        let body = response.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let set: RawSet =
            serde_json::from_slice(&body).map_err(|e| unavailable(format!("malformed JWKS: {e}")))?;
        let keys: HashMap<_, _> = set
            .keys
            .into_iter()
            .filter_map(|raw| serde_json::from_value::<Jwk>(raw).ok())
            .filter_map(|jwk| usable_key(&jwk))
            .collect();
        tracing::info!(keys = keys.len(), "fetched Supabase JWKS");
        Ok(keys)
    }
}

/// Turns a JWK into a verification key, keeping only signing keys of the two
/// algorithms Supabase issues. Symmetric (`oct`) keys are never taken from a JWKS.
fn usable_key(jwk: &Jwk) -> Option<(String, (Algorithm, Arc<DecodingKey>))> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return None,
    };
    let declared_matches = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(_) => false,
    };
    if !declared_matches {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, (alg, Arc::new(key))))
}
