//! Lambda containers of one function, as the template deploys them: each its
//! own `AppState` with the template's pool size, one request at a time, as
//! many as the function's reserved concurrency; requests wait in one queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::AppState;
use shared::config::Config;
use tokio::sync::{Mutex, mpsc};

use crate::Setup;

/// One container's state, built as a cold start builds it.
pub fn container(setup: &Setup, extra: &[(&str, String)]) -> AppState {
    let mut settings: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", setup.api_url.clone()),
        (
            "DATABASE_POOL_SIZE",
            template_default("DatabasePoolSize").to_string(),
        ),
        ("LIVEKIT_URL", setup.livekit_url.clone()),
        ("LIVEKIT_API_KEY", setup.livekit_key.clone()),
        ("LIVEKIT_API_SECRET", setup.livekit_secret.clone()),
        ("SUPABASE_JWT_SECRET", setup.supabase_secret.clone()),
    ]);
    for (name, value) in extra {
        settings.insert(name, value.clone());
    }
    let config = Config::from_lookup(|name| settings.get(name).cloned()).expect("bench config");
    AppState::new(&config).expect("bench state")
}

/// A request due at `due`, and how it went.
pub struct Outcome {
    pub latency: Duration,
    pub status: u16,
}

/// Runs every job at its time on `containers` containers: each job is
/// `(due offset, work)`; latency counts from its due time, queueing included.
pub async fn run<J, F, Fut>(containers: Vec<Arc<AppState>>, jobs: Vec<(Duration, J)>, work: F) -> Vec<Outcome>
where
    J: Send + 'static,
    F: Fn(Arc<AppState>, J) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = u16> + Send,
{
    let (sender, receiver) = mpsc::unbounded_channel::<(Instant, J)>();
    let receiver = Arc::new(Mutex::new(receiver));
    let results = Arc::new(Mutex::new(Vec::with_capacity(jobs.len())));
    let workers: Vec<_> = containers
        .into_iter()
        .map(|state| {
            let (receiver, results, work) = (receiver.clone(), results.clone(), work.clone());
            tokio::spawn(async move {
                loop {
                    let next = receiver.lock().await.recv().await;
                    let Some((due, job)) = next else { break };
                    let status = work(state.clone(), job).await;
                    results.lock().await.push(Outcome {
                        latency: due.elapsed(),
                        status,
                    });
                }
            })
        })
        .collect();
    let start = Instant::now();
    for (offset, job) in jobs {
        let due = start + offset;
        tokio::time::sleep_until(due.into()).await;
        if sender.send((due, job)).is_err() {
            break;
        }
    }
    drop(sender);
    for worker in workers {
        let _ = worker.await;
    }
    Arc::try_unwrap(results)
        .map(Mutex::into_inner)
        .unwrap_or_else(|_| unreachable!("every worker is done"))
}

/// Microseconds at percentile `p` of `latencies`.
pub fn percentile_us(latencies: &mut [Duration], p: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
    latencies[index].as_secs_f64() * 1e6
}

pub fn summary(outcomes: &[Outcome]) -> serde_json::Value {
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    let mut by_status: std::collections::BTreeMap<u16, usize> = Default::default();
    for outcome in outcomes {
        *by_status.entry(outcome.status).or_default() += 1;
    }
    serde_json::json!({
        "requests": outcomes.len(),
        "p50_us": percentile_us(&mut latencies, 0.50),
        "p99_us": percentile_us(&mut latencies, 0.99),
        "max_us": percentile_us(&mut latencies, 1.0),
        "by_status": by_status,
    })
}

/// A parameter's default in `template.yaml` (the reserved concurrencies the
/// bench deploys as many containers as), so the bench follows the template.
pub fn template_default(parameter: &str) -> usize {
    static TEMPLATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
        std::fs::read_to_string(path).expect("template.yaml")
    });
    let heading = format!("  {parameter}:");
    let mut lines = TEMPLATE.lines().skip_while(|line| *line != heading);
    lines
        .nth(1)
        .into_iter()
        .chain(lines.take_while(|line| line.starts_with("    ")))
        .find_map(|line| line.trim().strip_prefix("Default:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("template.yaml has no numeric Default for {parameter}"))
}

/// `POST /live/start` for `room` by a new host, through the adapter; the
/// answer's JSON (the host's LiveKit token and server URL).
pub async fn start_stream(setup: &Setup, room: &str, title: &str) -> serde_json::Value {
    let starter = container(setup, &[]);
    let bearer = format!(
        "Bearer {}",
        crate::supabase_token(&setup.supabase_secret, uuid::Uuid::new_v4())
    );
    let start = post(
        &bearer,
        serde_json::json!({"title": title, "roomName": room}).to_string(),
    );
    let started = shared::http::handle(&starter, start, &shared::handlers::start_stream).await;
    assert_eq!(started.status(), 201, "the room {room} starts");
    serde_json::from_slice(started.body().as_ref()).expect("JSON")
}

/// The SendData calls for `room` LiveKit has logged so far.
pub fn send_data_calls(setup: &Setup, room: &str) -> usize {
    std::fs::read_to_string(&setup.livekit_log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("RoomService.SendData") && line.contains(room))
        .count()
}

/// As many containers as the template reserves for `concurrency_parameter`.
pub fn containers(setup: &Setup, concurrency_parameter: &str) -> Vec<Arc<AppState>> {
    (0..template_default(concurrency_parameter))
        .map(|_| Arc::new(container(setup, &[])))
        .collect()
}

/// A `POST` with `body` from the app, as API Gateway hands it over.
pub fn post(bearer: &str, body: String) -> lambda_http::Request {
    let mut request = lambda_http::Request::new(lambda_http::Body::Text(body));
    *request.method_mut() = lambda_http::http::Method::POST;
    request
        .headers_mut()
        .insert("authorization", bearer.parse().expect("a header value"));
    request
}

/// A `GET` with `query` from the app, as API Gateway hands it over.
pub fn get(bearer: &str, query: &[(&str, &str)]) -> lambda_http::Request {
    use lambda_http::RequestExt;
    let mut request = lambda_http::Request::new(lambda_http::Body::Empty);
    *request.method_mut() = lambda_http::http::Method::GET;
    request
        .headers_mut()
        .insert("authorization", bearer.parse().expect("a header value"));
    let parameters: HashMap<String, Vec<String>> = query
        .iter()
        .map(|(name, value)| (name.to_string(), vec![value.to_string()]))
        .collect();
    request.with_query_string_parameters(parameters)
}
