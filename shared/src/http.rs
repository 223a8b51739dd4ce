//! The HTTP adapter every function shares: method check, bearer verification,
//! body size and JSON parsing, the handler call, and the one mapping from
//! [`ApiError`] to a JSON response.

use std::future::Future;
use std::marker::PhantomData;
use std::time::{Duration, Instant, SystemTime};

use lambda_http::http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use lambda_http::http::{HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response, service_fn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, AuthUser};
use crate::error::{ApiError, Dependency};
use crate::state::AppState;

/// Largest request body accepted. Every request of this API is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A successful answer: a status and a body serialized as camelCase JSON.
#[derive(Debug)]
pub struct Reply<T> {
    pub status: StatusCode,
    pub body: T,
}

impl<T> Reply<T> {
    pub fn new(status: StatusCode, body: T) -> Reply<T> {
        Reply { status, body }
    }

    pub fn ok(body: T) -> Reply<T> {
        Reply::new(StatusCode::OK, body)
    }
}

/// How a handler's input is read from the HTTP request: the method it answers
/// and the parsing (JSON body, query string, path). Runs after authentication.
pub trait FromRequest: Sized {
    const METHOD: Method;
    fn from_request(request: &Request) -> Result<Self, ApiError>;
}

/// Implements [`FromRequest`] for `POST` endpoints whose input is a JSON body.
#[macro_export]
macro_rules! json_body {
    ($($request:ty),+ $(,)?) => {$(
        impl $crate::http::FromRequest for $request {
            const METHOD: ::lambda_http::http::Method = ::lambda_http::http::Method::POST;
            fn from_request(request: &::lambda_http::Request) -> Result<Self, $crate::ApiError> {
                $crate::http::parse_json_body(request)
            }
        }
    )+};
}

/// An endpoint handler: `async fn(&AppState, AuthUser, Input) -> Result<Reply<_>, ApiError>`.
/// Spelled as a trait so the returned future can borrow the state and be `Send`.
pub trait Handler<'a, Req, Resp>: Send + Sync {
    type Future: Future<Output = Result<Reply<Resp>, ApiError>> + Send + 'a;
    fn call(&self, state: &'a AppState, user: AuthUser, request: Req) -> Self::Future;
}

impl<'a, F, Fut, Req, Resp> Handler<'a, Req, Resp> for F
where
    F: Fn(&'a AppState, AuthUser, Req) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Reply<Resp>, ApiError>> + Send + 'a,
{
    type Future = Fut;
    fn call(&self, state: &'a AppState, user: AuthUser, request: Req) -> Fut {
        self(state, user, request)
    }
}

/// Anything that answers HTTP requests with the shared state: an authenticated
/// handler (see [`serve`]) or an endpoint with its own authentication (webhooks).
pub trait Endpoint: Send + Sync {
    fn respond<'a>(&'a self, state: &'a AppState, request: Request) -> BoxFuture<'a, Response<Body>>;

    /// The answer while the function's state cannot be built (see
    /// [`serve_endpoint`]).
    fn unavailable(&self, error: &ApiError) -> Response<Body> {
        error_response(error)
    }
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler behind Supabase authentication.
pub struct Authenticated<H, Req, Resp> {
    handler: H,
    _io: PhantomData<fn(Req) -> Resp>,
}

impl<H, Req, Resp> Authenticated<H, Req, Resp> {
    pub fn new(handler: H) -> Self {
        Authenticated {
            handler,
            _io: PhantomData,
        }
    }
}

impl<H, Req, Resp> Endpoint for Authenticated<H, Req, Resp>
where
    Req: FromRequest + Send,
    Resp: Serialize + Send,
    H: for<'a> Handler<'a, Req, Resp>,
{
    fn respond<'a>(&'a self, state: &'a AppState, request: Request) -> BoxFuture<'a, Response<Body>> {
        Box::pin(handle(state, request, &self.handler))
    }
}

/// Runs one function whose handler needs a verified Supabase user.
pub async fn serve<Req, Resp, H>(handler: H) -> Result<(), lambda_http::Error>
where
    Req: FromRequest + Send,
    Resp: Serialize + Send,
    H: for<'a> Handler<'a, Req, Resp>,
{
    serve_endpoint(Authenticated::new(handler)).await
}

/// Runs one function: builds the state once per cold start and answers every
/// invocation with `endpoint`. Every `functions/*/src/main.rs` (this, or a
/// scheduled function's own `serve`) runs on tokio's current-thread runtime:
/// a Lambda container handles one invocation
/// at a time, so a second worker thread only adds cross-thread wake-ups (with
/// it, `/live/token`'s p99 under bench/lambda-harness was 3.3–3.8 ms against
/// 2.3–2.8 ms without, p50 unchanged, four interleaved runs on 2 vCPUs).
///
/// If the state cannot be built (a missing setting,
/// Secrets Manager unreachable), the function stays up, answers 503 and tries
/// again at most every few seconds, instead of failing every cold start.
pub async fn serve_endpoint(endpoint: impl Endpoint) -> Result<(), lambda_http::Error> {
    crate::logging::init();
    let state = LazyState::default();
    state.get().await.ok();
    let state = &state;
    let endpoint = &endpoint;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, std::convert::Infallible>(answer(state, endpoint, request).await)
    }))
    .await
}

/// One invocation of [`serve_endpoint`]: the state (built now if it is not
/// yet), then the endpoint's answer, or the endpoint's 503 without a state.
pub async fn answer(state: &LazyState, endpoint: &impl Endpoint, request: Request) -> Response<Body> {
    // A retried cold-start load (Secrets Manager, then the settings) must
    // not outlive the invocation either.
    let loaded = match invocation_time_left(&request) {
        Some(left) => tokio::time::timeout(left, state.get()).await.unwrap_or_else(|_| {
            Err(ApiError::unavailable(
                Dependency::Configuration,
                "startup did not finish before the invocation's deadline",
            ))
        }),
        None => state.get().await,
    };
    match loaded {
        Ok(app) => endpoint.respond(app, request).await,
        Err(error) => endpoint.unavailable(&error),
    }
}

/// How a function builds its state: [`AppState::load`] in production.
pub type StateLoader = fn() -> BoxFuture<'static, Result<AppState, crate::config::ConfigError>>;

/// The application state, built on first success; after a failure, tried
/// again at most every `retry_interval`.
pub struct LazyState {
    cell: tokio::sync::OnceCell<AppState>,
    last_failure: tokio::sync::Mutex<Option<Instant>>,
    loader: StateLoader,
    retry_interval: Duration,
}

/// How soon a container tries its startup again after it failed.
pub const STARTUP_RETRY_INTERVAL: Duration = Duration::from_secs(5);

impl Default for LazyState {
    fn default() -> Self {
        LazyState::new(|| Box::pin(AppState::load()), STARTUP_RETRY_INTERVAL)
    }
}

impl LazyState {
    pub fn new(loader: StateLoader, retry_interval: Duration) -> LazyState {
        LazyState {
            cell: tokio::sync::OnceCell::new(),
            last_failure: Default::default(),
            loader,
            retry_interval,
        }
    }

    pub async fn get(&self) -> Result<&AppState, ApiError> {
        if let Some(state) = self.cell.get() {
            return Ok(state);
        }
        let mut last_failure = self.last_failure.lock().await;
        if let Some(state) = self.cell.get() {
            return Ok(state);
        }
        if last_failure.is_some_and(|at| at.elapsed() < self.retry_interval) {
            return Err(ApiError::unavailable(
                Dependency::Configuration,
                "startup failed recently",
            ));
        }
        match (self.loader)().await {
            Ok(state) => Ok(self.cell.get_or_init(|| async { state }).await),
            Err(error) => {
                tracing::error!(%error, "cannot build the function's state; answering 503 until it can");
                *last_failure = Some(Instant::now());
                Err(ApiError::unavailable(Dependency::Configuration, error))
            }
        }
    }
}

/// One request, start to finish. Never fails: every error becomes a JSON response.
pub async fn handle<Req, Resp, H>(state: &AppState, request: Request, handler: &H) -> Response<Body>
where
    Req: FromRequest,
    Resp: Serialize,
    H: for<'a> Handler<'a, Req, Resp>,
{
    within_deadline(state, invocation_time_left(&request), async {
        match try_handle(state, request, handler).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        }
    })
    .await
}

/// What an invocation keeps for answering: the cancels of the statements the
/// work cut off at the deadline left running are sent (half a second at
/// most), and the response goes back through the Runtime API.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// How long this invocation may still work before Lambda ends it (its
/// deadline, less a second kept for answering); `None` without a usable
/// deadline.
pub fn invocation_time_left(request: &Request) -> Option<Duration> {
    let left = time_to_deadline(request.lambda_context_ref()?)?;
    Some(left.saturating_sub(ANSWER_MARGIN))
}

/// The time until an invocation's deadline. `None` when there is none to
/// trust: no deadline (requests built by hand in tests), or one already past
/// when asked, which Lambda never hands out but `cargo lambda watch` does (a
/// fixed 600,000 ms after the epoch). Lambda itself ends an invocation that
/// outlives its deadline, so nothing is lost by not enforcing a past one.
pub fn time_to_deadline(context: &lambda_http::Context) -> Option<Duration> {
    if context.deadline == 0 {
        return None;
    }
    context.deadline().duration_since(SystemTime::now()).ok()
}

/// Runs a request's work under the request deadline (`REQUEST_DEADLINE_SECONDS`,
/// and never past `lambda_time_left`, so a setting longer than the function's
/// timeout, or time a cold start spent, still ends in our 503 rather than
/// Lambda's timeout): past it the work is dropped and the client gets a 503.
/// The database connections the work held then cancel their statements (see
/// [`crate::store::db::Conn`]).
pub async fn within_deadline(
    state: &AppState,
    lambda_time_left: Option<Duration>,
    work: impl Future<Output = Response<Body>>,
) -> Response<Body> {
    let limit = lambda_time_left.map_or(state.rules.request_deadline, |left| {
        left.min(state.rules.request_deadline)
    });
    // On the heap: a handler's future is large, and moving it through the
    // deadline and timeout wrappers would copy it on the stack each time.
    match crate::store::db::invocation_until_cut_off(Instant::now() + limit, Box::pin(work)).await {
        Some(response) => response,
        None => error_response(&ApiError::unavailable(
            Dependency::Timeout,
            "request deadline passed",
        )),
    }
}

async fn try_handle<Req, Resp, H>(
    state: &AppState,
    request: Request,
    handler: &H,
) -> Result<Response<Body>, ApiError>
where
    Req: FromRequest,
    Resp: Serialize,
    H: for<'a> Handler<'a, Req, Resp>,
{
    if request.method() != Req::METHOD {
        return Err(ApiError::MethodNotAllowed {
            used: request.method().to_string(),
            allowed: Req::METHOD,
        });
    }
    let user = authenticate(state, &request).await?;
    let input = Req::from_request(&request)?;
    let reply = handler.call(state, user, input).await?;
    Ok(json_response(reply.status, &reply.body))
}

async fn authenticate(state: &AppState, request: &Request) -> Result<AuthUser, ApiError> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    state.auth.authenticate(token).await.map_err(|error| match error {
        AuthError::KeysUnavailable(_) => ApiError::unavailable(Dependency::Auth, error),
        rejected => {
            tracing::info!(reason = %rejected, "bearer token rejected");
            ApiError::Unauthorized
        }
    })
}

/// The `{id}` of a route like `/live/streams/{id}` or `/live/streams/{id}/stats`:
/// API Gateway passes it as a path parameter; the segment after `streams` is
/// the fallback (a local server without path parameters).
pub fn path_id(request: &Request) -> String {
    use lambda_http::RequestExt;
    request
        .path_parameters()
        .first("id")
        .map(str::to_owned)
        .or_else(|| {
            let path = request.raw_http_path();
            let mut segments = path.split('/');
            segments.find(|segment| *segment == "streams")?;
            segments.next().map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The values of the query parameters named in `expected`, in that order
/// (`None` for one not given). An unknown parameter, or one given twice
/// (`?limit=5&limit=50`), is a 400 rather than ignored or one of its values
/// silently chosen.
pub fn query_parameters<const N: usize>(
    request: &Request,
    expected: [&str; N],
) -> Result<[Option<String>; N], ApiError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for (name, value) in request.query_string_parameters().iter() {
        let Some(index) = expected.iter().position(|known| *known == name) else {
            let expected = match expected.as_slice() {
                [] => "this route takes none".to_owned(),
                [only] => format!("expected `{only}`"),
                [init @ .., last] => {
                    let init: Vec<String> = init.iter().map(|name| format!("`{name}`")).collect();
                    format!("expected {} or `{last}`", init.join(", "))
                }
            };
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter `{name}`; {expected}"
            )));
        };
        if values[index].replace(value.to_owned()).is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "the query parameter `{name}` is given more than once"
            )));
        }
    }
    Ok(values)
}

/// A `limit` query parameter: a whole number from 1 to `max`, or `default`
/// when it is not given.
pub fn page_limit(value: Option<String>, max: i64, default: i64) -> Result<i64, ApiError> {
    let Some(value) = value else { return Ok(default) };
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::InvalidRequest(format!("limit must be a whole number from 1 to {max}")))
}

/// An opaque page cursor: base64url of `<µs since the epoch>.<key>`, the
/// keyset of an ordered listing.
pub fn encode_cursor(at: chrono::DateTime<chrono::Utc>, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{key}", at.timestamp_micros()))
}

/// The time and key of a cursor [`encode_cursor`] made; anything else is a 400.
pub fn decode_cursor(cursor: &str) -> Result<(chrono::DateTime<chrono::Utc>, String), ApiError> {
    use base64::Engine;
    let invalid = || ApiError::InvalidRequest("cursor is not one this API returned".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (micros, key) = text.split_once('.').ok_or_else(invalid)?;
    let at = micros
        .parse::<i64>()
        .ok()
        // Only times this API can have written: Postgres refuses dates before 4713 BC.
        .filter(|micros| (0..=253_402_300_799_999_999).contains(micros))
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    // Every key this API writes is an id or a LiveKit identity; Postgres
    // refuses a NUL in text outright, and no control character is ours.
    if key.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok((at, key.to_owned()))
}

/// Reads a JSON request body of at most [`MAX_BODY_BYTES`], as a JSON object,
/// whatever the `Content-Type` says: React Native's `fetch` labels a string
/// body `text/plain` unless the app sets the header, and refusing those with
/// 415 would fail working clients.
pub fn parse_json_body<Req: DeserializeOwned>(request: &Request) -> Result<Req, ApiError> {
    let body = request.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    // serde would also take a struct as a positional array; the API speaks objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("Invalid request body: {}", cap(&e.to_string()))))
}

/// serde_json's messages name the offending field or value, which is the
/// client's own input: a long one is cut short rather than echoed back whole.
fn cap(message: &str) -> String {
    const KEEP: usize = 200;
    if message.chars().count() <= KEEP {
        return message.to_owned();
    }
    let mut short: String = message.chars().take(KEEP).collect();
    short.push('…');
    short
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    match serde_json::to_string(body) {
        Ok(json) => json_text_response(status, json),
        Err(e) => error_response(&ApiError::internal(e)),
    }
}

/// Every answer of the API: JSON, and never stored by a cache. Answers carry
/// LiveKit tokens and per-user state (RFC 6749 asks token responses for
/// `no-store`), and a phone's HTTP cache has no business replaying a live
/// count or a refusal.
fn json_text_response(status: StatusCode, json: String) -> Response<Body> {
    let mut response = Response::new(Body::Text(json));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The single place an [`ApiError`] becomes a response, and is logged.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let status = error.status();
    if status.is_server_error() {
        let detail = crate::error::with_causes(error);
        tracing::error!(code = error.code(), error = %detail, "request failed");
    } else {
        tracing::info!(code = error.code(), %status, "request refused");
    }
    let json = serde_json::to_string(&error.body()).unwrap_or_else(|_| {
        r#"{"error":{"code":"internal","message":"Something went wrong on our side."}}"#.into()
    });
    let mut response = json_text_response(status, json);
    let headers = response.headers_mut();
    match error {
        ApiError::Unauthorized => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Every 401 names a scheme (RFC 9110); the webhook's is LiveKit's
        // signed token, taken with or without "Bearer ".
        ApiError::InvalidSignature => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="livekit-webhook""#),
            );
        }
        ApiError::MethodNotAllowed { allowed, .. } => {
            if let Ok(allow) = HeaderValue::from_str(allowed.as_str()) {
                headers.insert(ALLOW, allow);
            }
        }
        ApiError::Unavailable { dependency, .. } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(dependency.retry_after_seconds()));
        }
        ApiError::RateLimited { retry_after_seconds } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::time_to_deadline;

    fn context_with_deadline(deadline_ms: u64) -> lambda_http::Context {
        let mut context = lambda_http::Context::default();
        context.deadline = deadline_ms;
        context
    }

    #[test]
    fn only_a_deadline_still_ahead_is_trusted() {
        let now_ms =
            u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        assert_eq!(time_to_deadline(&context_with_deadline(0)), None, "no deadline");
        // What cargo lambda watch sends with every event.
        assert_eq!(time_to_deadline(&context_with_deadline(600_000)), None);
        let left = time_to_deadline(&context_with_deadline(now_ms + 5_000)).unwrap();
        assert!(
            (Duration::from_millis(4_000)..=Duration::from_millis(5_000)).contains(&left),
            "{left:?}"
        );
    }
}
