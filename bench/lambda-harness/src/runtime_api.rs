//! A local AWS Lambda Runtime API: the subset `lambda_runtime` 1.5 calls.
//!
//! - `GET  /2018-06-01/runtime/invocation/next`: blocks until the harness queues
//!   an invocation, then answers with the event and the `Lambda-Runtime-*` headers.
//! - `POST /2018-06-01/runtime/invocation/{id}/response` and `.../{id}/error`.
//! - `POST /2018-06-01/runtime/init/error`.
//!
//! Every call is passed on to the harness as a [`Report`] stamped with the
//! [`Instant`] it happened, so timing is taken where the bytes are, not after a
//! trip through a channel.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

const PREFIX: &str = "/2018-06-01/runtime";
/// The deadline handed to the function with each event (Lambda's own maximum
/// is 15 minutes; the functions only use it for logging).
const DEADLINE_MS: u128 = 30_000;

/// One event for the function to handle.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    pub event: Bytes,
}

/// What the function did, as seen by the Runtime API.
#[derive(Debug)]
pub enum Report {
    /// It asked for its next event (`GET .../invocation/next`).
    NextRequested(Instant),
    /// The answer to a `/next` carrying this invocation is about to be written.
    HandedOut { request_id: String, at: Instant },
    /// It posted its result, fully received at `at`.
    Response {
        request_id: String,
        at: Instant,
        body: Bytes,
    },
    /// It posted an invocation error.
    Error {
        request_id: String,
        at: Instant,
        body: Bytes,
    },
    /// It failed to initialise.
    InitError { body: Bytes },
}

struct Shared {
    function_arn: String,
    /// Only one runtime polls at a time; the lock just makes the receiver shareable.
    invocations: Mutex<mpsc::Receiver<Invocation>>,
    reports: mpsc::UnboundedSender<Report>,
    /// Numbers the trace ids.
    handed_out: std::sync::atomic::AtomicU64,
}

/// A Runtime API listening on an ephemeral loopback port. Dropping it stops the
/// server and closes every connection.
pub struct RuntimeApi {
    pub addr: SocketAddr,
    pub invocations: mpsc::Sender<Invocation>,
    pub reports: mpsc::UnboundedReceiver<Report>,
    _server: JoinSet<()>,
}

impl RuntimeApi {
    pub async fn start(function_name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (invocations, invocations_rx) = mpsc::channel(1);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function_name}"),
            invocations: Mutex::new(invocations_rx),
            reports: reports_tx,
            handed_out: Default::default(),
        });
        let mut server = JoinSet::new();
        server.spawn(accept_loop(listener, shared));
        Ok(Self {
            addr,
            invocations,
            reports,
            _server: server,
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned by this task, so aborting it (dropping the RuntimeApi) also aborts
    // every connection, including a `/next` still waiting for an event.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Small request/response pairs: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| handle(shared.clone(), request));
            // An error here is the function going away mid-connection (it was
            // killed at the end of a run): nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let Some(route) = request.uri().path().strip_prefix(PREFIX).map(str::to_owned) else {
        return Ok(plain(StatusCode::NOT_FOUND, "unknown path"));
    };
    let response = match (method, route.as_str()) {
        (Method::GET, "/invocation/next") => next(&shared).await,
        (Method::POST, "/init/error") => {
            let body = read_body(request).await;
            let _ = shared.reports.send(Report::InitError { body });
            accepted()
        }
        (Method::POST, route) => match route
            .strip_prefix("/invocation/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((request_id, kind @ ("response" | "error"))) => {
                let request_id = request_id.to_owned();
                let body = read_body(request).await;
                let at = Instant::now();
                let report = if kind == "response" {
                    Report::Response { request_id, at, body }
                } else {
                    Report::Error { request_id, at, body }
                };
                let _ = shared.reports.send(report);
                accepted()
            }
            _ => plain(StatusCode::NOT_FOUND, "unknown path"),
        },
        _ => plain(StatusCode::NOT_FOUND, "unknown path"),
    };
    Ok(response)
}

/// `GET /invocation/next`: waits for the harness to queue an invocation.
async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    let _ = shared.reports.send(Report::NextRequested(Instant::now()));
    let Some(invocation) = shared.invocations.lock().await.recv().await else {
        // The harness is shutting down.
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let sequence = shared
        .handed_out
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // X-Ray's format: Root=1-<8 hex digits of epoch seconds>-<24 hex digits>.
    let trace_id = format!(
        "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
        now.as_secs(),
        sequence,
        sequence
    );
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("lambda-runtime-aws-request-id", &invocation.request_id)
        .header(
            "lambda-runtime-deadline-ms",
            (now.as_millis() + DEADLINE_MS).to_string(),
        )
        .header("lambda-runtime-invoked-function-arn", &shared.function_arn)
        .header("lambda-runtime-trace-id", trace_id)
        .body(Full::new(invocation.event))
        .expect("static header names and values that came from strings are valid");
    let _ = shared.reports.send(Report::HandedOut {
        request_id: invocation.request_id,
        at: Instant::now(),
    });
    response
}

async fn read_body(request: Request<Incoming>) -> Bytes {
    // A body cut short means the function died; what arrived is still reported.
    request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default()
}

/// The real API answers result posts with 202 and `{"status":"OK"}`.
fn accepted() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"status":"OK"}"#)));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

fn plain(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends one HTTP/1.1 request with `Connection: close` and returns the raw answer.
    async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn hands_out_events_and_collects_results() {
        let mut api = RuntimeApi::start("token").await.unwrap();
        let addr = api.addr;
        let poll =
            tokio::spawn(async move { call(addr, "GET", "/2018-06-01/runtime/invocation/next", "").await });
        assert!(matches!(api.reports.recv().await, Some(Report::NextRequested(_))));
        api.invocations
            .send(Invocation {
                request_id: "req-1".into(),
                event: Bytes::from_static(b"{\"hello\":1}"),
            })
            .await
            .unwrap();
        let answer = poll.await.unwrap().to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("lambda-runtime-aws-request-id: req-1"));
        assert!(answer.contains("lambda-runtime-deadline-ms: "));
        assert!(answer.contains(
            "lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:token"
        ));
        assert!(answer.contains("lambda-runtime-trace-id: root=1-"));
        assert!(answer.ends_with("{\"hello\":1}"));
        assert!(matches!(
            api.reports.recv().await,
            Some(Report::HandedOut { request_id, .. }) if request_id == "req-1"
        ));

        let answer = call(
            addr,
            "POST",
            "/2018-06-01/runtime/invocation/req-1/response",
            "{\"statusCode\":200}",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert!(matches!(
            api.reports.recv().await,
            Some(Report::Response { request_id, body, .. })
                if request_id == "req-1" && body.as_ref() == b"{\"statusCode\":200}"
        ));

        call(addr, "POST", "/2018-06-01/runtime/invocation/req-2/error", "{}").await;
        assert!(matches!(
            api.reports.recv().await,
            Some(Report::Error { request_id, .. }) if request_id == "req-2"
        ));
        call(addr, "POST", "/2018-06-01/runtime/init/error", "boom").await;
        assert!(matches!(
            api.reports.recv().await,
            Some(Report::InitError { body }) if body.as_ref() == b"boom"
        ));
        let answer = call(addr, "GET", "/2018-06-01/runtime/other", "").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
}
