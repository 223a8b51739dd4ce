//! Runs one Lambda function binary against the local Runtime API and measures
//! init, warm latency and peak RSS.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::runtime_api::{Invocation, Report, RuntimeApi};
use crate::stats::{median, percentile, round, sorted};

#[derive(Debug)]
pub struct Options {
    pub binary: PathBuf,
    pub function: String,
    /// Invocation `i` gets `events[i % events.len()]`.
    pub events: Vec<Bytes>,
    pub invocations: usize,
    /// The first invocations, left out of the percentiles (connection set-up,
    /// first-use allocations, cold caches).
    pub warmup: usize,
    /// Processes started for the init figure (one of them also serves the
    /// invocations); init is their median.
    pub inits: usize,
    pub env: Vec<(String, String)>,
    /// Where the function's stdout and stderr go (appended); discarded without it.
    pub log: Option<PathBuf>,
    /// How long to wait for the function to ask for an event or to answer one.
    pub timeout: Duration,
}

/// One started function process and its private Runtime API.
pub(crate) struct Launch {
    api: RuntimeApi,
    child: Child,
    pid: u32,
}

pub async fn run(options: &Options) -> Result<Value, String> {
    let mut init_ms = Vec::with_capacity(options.inits);
    // The init-only launches (start, wait for the first `/next`, kill) are
    // split between before and after the warm run, so a burst of load from
    // something else on the machine cannot skew all of them at once.
    let init_only = options.inits.saturating_sub(1);
    let before = init_only / 2;
    for _ in 0..before {
        init_ms.push(init_only_launch(options).await?);
    }
    let (mut launch, init) = launch(options).await?;
    init_ms.push(init.as_secs_f64() * 1e3);
    let result = invoke_all(options, &mut launch, 0, options.invocations).await;
    let peak_rss_kb = match &result {
        Ok(_) => {
            // Read once the function is idle again, waiting for its next event.
            let _ = wait_for_next(options, &mut launch).await;
            peak_rss_kb(launch.pid)
        }
        Err(_) => None,
    };
    stop(&mut launch).await;
    let warm = result?;
    for _ in before..init_only {
        init_ms.push(init_only_launch(options).await?);
    }

    let init_ms = sorted(init_ms);
    let latencies = sorted(warm.latencies_us[options.warmup..].to_vec());
    Ok(json!({
        "function": options.function,
        "init_ms": round(median(&init_ms), 2),
        "init_runs": init_ms.len(),
        "init_ms_min": round(init_ms[0], 2),
        "init_ms_max": round(init_ms[init_ms.len() - 1], 2),
        "p50_us": round(percentile(&latencies, 50.0), 1),
        "p99_us": round(percentile(&latencies, 99.0), 1),
        "max_us": round(latencies[latencies.len() - 1], 1),
        "invocations": options.invocations,
        "measured": latencies.len(),
        "errors": warm.errors,
        "client_errors": warm.client_errors,
        "statuses": warm.statuses,
        "first_error": warm.first_error,
        "peak_rss_kb": peak_rss_kb,
    }))
}

/// Starts the function, waits for its first `/next` and kills it: its init in ms.
async fn init_only_launch(options: &Options) -> Result<f64, String> {
    let (mut launch, init) = launch(options).await?;
    stop(&mut launch).await;
    Ok(init.as_secs_f64() * 1e3)
}

/// Starts the function and waits until it asks for its first event.
pub(crate) async fn launch(options: &Options) -> Result<(Launch, Duration), String> {
    let api = RuntimeApi::start(&options.function)
        .await
        .map_err(|e| format!("cannot start the Runtime API: {e}"))?;
    let mut command = Command::new(&options.binary);
    // A clean environment, like Lambda's: nothing from the caller's shell
    // (RUST_LOG, AWS_*, …) may change what the function does.
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "en_US.UTF-8")
        .env("TZ", ":UTC")
        .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &options.function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", options.function),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "lambda-harness")
        .env("_HANDLER", "bootstrap")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match &options.log {
        Some(path) => {
            let file = open_log(path)?;
            let copy = file
                .try_clone()
                .map_err(|e| format!("log {}: {e}", path.display()))?;
            command.stdout(file).stderr(copy);
        }
        None => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }

    let spawned = Instant::now();
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", options.binary.display()))?;
    let pid = child.id().unwrap_or_default();
    let mut launch = Launch { api, child, pid };
    let asked = wait_for_next(options, &mut launch).await?;
    Ok((launch, asked.saturating_duration_since(spawned)))
}

/// Waits for the function to ask for an event; returns when it did.
async fn wait_for_next(options: &Options, launch: &mut Launch) -> Result<Instant, String> {
    match wait_report(options, launch, "to ask for an event").await? {
        Report::NextRequested(at) => Ok(at),
        Report::InitError { body } => Err(format!(
            "{} failed to initialise: {}",
            options.function,
            String::from_utf8_lossy(&body)
        )),
        other => Err(format!("unexpected call before /next: {other:?}")),
    }
}

#[derive(Default)]
pub(crate) struct Warm {
    pub latencies_us: Vec<f64>,
    pub errors: usize,
    pub client_errors: usize,
    /// How many answers had each `statusCode` ("error" for /error posts,
    /// "none" for a result without one).
    pub statuses: BTreeMap<String, usize>,
    /// The body of the first error, to tell what went wrong.
    pub first_error: Option<String>,
}

impl Warm {
    /// Adds another container's results to these.
    pub fn absorb(&mut self, other: Warm) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.client_errors += other.client_errors;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Hands the function `count` invocations, one at a time, taking the events
/// from index `first` on.
pub(crate) async fn invoke_all(
    options: &Options,
    launch: &mut Launch,
    first: usize,
    count: usize,
) -> Result<Warm, String> {
    let mut warm = Warm {
        latencies_us: Vec::with_capacity(count),
        ..Warm::default()
    };
    for i in 0..count {
        let expected = format!("00000000-0000-4000-8000-{i:012}");
        launch
            .api
            .invocations
            .send(Invocation {
                request_id: expected.clone(),
                event: options.events[(first + i) % options.events.len()].clone(),
            })
            .await
            .map_err(|_| "the Runtime API stopped".to_owned())?;
        let mut handed_out = None;
        loop {
            let report = wait_report(options, launch, "to answer").await?;
            let (request_id, at, status, body) = match report {
                // The `/next` poll that picks up this very invocation.
                Report::NextRequested(_) => continue,
                Report::HandedOut { request_id, at } if request_id == expected => {
                    handed_out = Some(at);
                    continue;
                }
                Report::Response { request_id, at, body } => (request_id, at, status_code(&body), body),
                Report::Error { request_id, at, body } => (request_id, at, Status::InvocationError, body),
                other => return Err(format!("unexpected call during invocation {i}: {other:?}")),
            };
            let Some(handed_out) = handed_out.filter(|_| request_id == expected) else {
                return Err(format!(
                    "result for request {request_id} while {expected} was outstanding"
                ));
            };
            warm.latencies_us
                .push(at.saturating_duration_since(handed_out).as_secs_f64() * 1e6);
            let (key, failed) = match status {
                Status::Code(code) => {
                    if (400..500).contains(&code) {
                        warm.client_errors += 1;
                    }
                    (code.to_string(), code >= 500)
                }
                Status::NoCode => ("none".to_owned(), false),
                Status::InvocationError => ("error".to_owned(), true),
            };
            if failed {
                warm.errors += 1;
                warm.first_error
                    .get_or_insert_with(|| String::from_utf8_lossy(&body).chars().take(500).collect());
            }
            *warm.statuses.entry(key).or_default() += 1;
            break;
        }
    }
    Ok(warm)
}

enum Status {
    Code(u64),
    /// A result that is not an HTTP response (a scheduled function, say).
    NoCode,
    /// An `/error` post.
    InvocationError,
}

/// The `statusCode` of an API Gateway proxy response.
fn status_code(body: &[u8]) -> Status {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("statusCode").and_then(Value::as_u64))
        .map_or(Status::NoCode, Status::Code)
}

/// The next Runtime API call, failing if the function exits or goes quiet.
async fn wait_report(options: &Options, launch: &mut Launch, what: &str) -> Result<Report, String> {
    let function = &options.function;
    tokio::select! {
        report = launch.api.reports.recv() => {
            report.ok_or_else(|| "the Runtime API stopped".to_owned())
        }
        status = launch.child.wait() => Err(match status {
            Ok(status) => format!("{function} exited ({status}) while waiting for it {what}{}", log_hint(options)),
            Err(e) => format!("cannot wait for {function}: {e}"),
        }),
        () = tokio::time::sleep(options.timeout) => Err(format!(
            "{function} took longer than {:?} {what}{}", options.timeout, log_hint(options)
        )),
    }
}

fn log_hint(options: &Options) -> String {
    options
        .log
        .as_ref()
        .map(|p| format!(" (its output: {})", p.display()))
        .unwrap_or_default()
}

/// `VmHWM` (peak resident set) of a live process, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(crate) async fn stop(launch: &mut Launch) {
    let _ = launch.child.start_kill();
    let _ = launch.child.wait().await;
}

fn open_log(path: &PathBuf) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("log {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_codes() {
        assert!(matches!(
            status_code(br#"{"statusCode":201,"body":"{}"}"#),
            Status::Code(201)
        ));
        assert!(matches!(status_code(b"null"), Status::NoCode));
        assert!(matches!(status_code(b"not json"), Status::NoCode));
    }

    #[test]
    fn reads_peak_rss_of_this_process() {
        let kb = peak_rss_kb(std::process::id()).unwrap();
        assert!(kb > 0);
    }
}
