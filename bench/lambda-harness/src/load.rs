//! Load: many containers of one function at once, as Lambda scales out.
//!
//! Each container is its own process with its own Runtime API and handles one
//! invocation at a time, as on Lambda; `containers` of them run side by side.
//! While they run, the database's sessions of the functions
//! (`application_name = 'live-backend'`) are counted every few milliseconds:
//! their peak must stay within pool size × containers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::invoke::{self, Warm};
use crate::stats::{percentile, round, sorted};

#[derive(Debug)]
pub struct Options {
    pub invoke: invoke::Options,
    pub containers: usize,
    /// Where to count the functions' sessions; not counted without it.
    pub database_url: Option<String>,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(5);

pub async fn run(options: &Options) -> Result<Value, String> {
    let per_container = options.invoke.invocations;
    let mut launches = Vec::with_capacity(options.containers);
    for _ in 0..options.containers {
        let (launch, _) = invoke::launch(&options.invoke).await?;
        launches.push(launch);
    }
    let sampler = match &options.database_url {
        Some(url) => Some(ConnectionSampler::start(url).await?),
        None => None,
    };

    let started = Instant::now();
    let runs = launches.iter_mut().enumerate().map(|(k, launch)| async move {
        let result = invoke::invoke_all(&options.invoke, launch, k * per_container, per_container).await;
        invoke::stop(launch).await;
        result
    });
    let results = futures_util::future::join_all(runs).await;
    let elapsed = started.elapsed();
    let (peak_connections, samples) = match sampler {
        Some(sampler) => sampler.stop().await,
        None => (None, 0),
    };

    let mut all = Warm::default();
    let mut measured = Vec::new();
    for result in results {
        let mut warm = result?;
        // Each container's first invocations open its connections.
        measured.extend(
            warm.latencies_us
                .drain(options.invoke.warmup.min(warm.latencies_us.len())..),
        );
        all.absorb(warm);
    }
    let measured = sorted(measured);
    let total = options.containers * per_container;
    Ok(json!({
        "function": options.invoke.function,
        "containers": options.containers,
        "invocations": total,
        "elapsed_s": round(elapsed.as_secs_f64(), 3),
        "throughput_per_s": round(total as f64 / elapsed.as_secs_f64(), 1),
        "p50_us": round(percentile(&measured, 50.0), 1),
        "p99_us": round(percentile(&measured, 99.0), 1),
        "max_us": measured.last().map(|us| round(*us, 1)),
        "measured": measured.len(),
        "errors": all.errors,
        "client_errors": all.client_errors,
        "statuses": all.statuses,
        "first_error": all.first_error,
        "warmup": options.invoke.warmup,
        // As the containers were told; without it they use their default.
        "pool_size": options
            .invoke
            .env
            .iter()
            .find(|(key, _)| key == "DATABASE_POOL_SIZE")
            .and_then(|(_, value)| value.parse::<u64>().ok()),
        "peak_db_connections": peak_connections,
        "db_samples": samples,
    }))
}

/// Counts the functions' database sessions until stopped; keeps the peak.
struct ConnectionSampler {
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Option<i64>, usize)>,
}

impl ConnectionSampler {
    async fn start(url: &str) -> Result<ConnectionSampler, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("--database-url: {e}"))?;
        // Its own name, so the sampler does not count itself.
        config.application_name("lambda-harness");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to count sessions: {e}"))?;
        tokio::spawn(connection);
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let mut peak = None;
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(row) = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'live-backend'",
                        &[],
                    )
                    .await
                {
                    let count: i64 = row.get(0);
                    peak = Some(peak.map_or(count, |p: i64| p.max(count)));
                    samples += 1;
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            (peak, samples)
        });
        Ok(ConnectionSampler { done, task })
    }

    async fn stop(self) -> (Option<i64>, usize) {
        self.done.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or((None, 0))
    }
}
