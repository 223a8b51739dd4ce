//! The functions' log subscriber, set up once per cold start.
//!
//! Lambda's advanced logging controls decide the level and the format:
//! `AWS_LAMBDA_LOG_LEVEL` (else `RUST_LOG`, else `info`) and
//! `AWS_LAMBDA_LOG_FORMAT=JSON`, which the template sets. lambda_runtime's
//! `init_default_subscriber` reads the same variables, but through
//! `EnvFilter`, whose per-target directives bring a regex engine into every
//! function (about 180 KiB of machine code, measured with `cargo bloat`) to
//! parse the one level the template ever passes. A per-target filter without
//! regexes does that without it; a `RUST_LOG` that is not a plain level falls
//! back to `info` and says so on stderr.
//!
//! The level applies to our own crate. Dependencies log at most at DEBUG:
//! at TRACE they write what they carry, and that is what our logs must never
//! hold. lambda_runtime logs every raw event (the `Authorization` header with
//! the caller's Supabase token, LiveKit's signed webhook JWT, every body), and
//! the AWS SDK the Secrets Manager response with its secret.

use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the subscriber. Idempotent: a second call (or another subscriber
/// already installed, as in tests) leaves the first in place.
pub fn init() {
    let setting = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let (level, unparsed) = level_from(setting.as_deref());
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let installed = tracing_subscriber::registry()
        .with(filter(level))
        .with(format_layer(json, std::io::stdout))
        .try_init()
        .is_ok();
    if installed && let Some(setting) = unparsed {
        tracing::warn!(
            setting,
            "log level is not one of error, warn, info, debug, trace, off: logging at info"
        );
    }
}

/// What is logged at `level`: our crate at that level, every dependency at
/// most at DEBUG (see the module's comment).
pub fn filter(level: LevelFilter) -> Targets {
    Targets::new()
        .with_default(level.min(LevelFilter::DEBUG))
        .with_target(env!("CARGO_CRATE_NAME"), level)
}

/// How a line looks: no target and no time (CloudWatch stamps each line), as
/// JSON when `json` is set, written to `writer`. [`init`] writes to stdout;
/// tests capture the same format in memory.
pub fn format_layer<S, W>(json: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_writer(writer);
    if json { layer.json().boxed() } else { layer.boxed() }
}

/// The level a setting names, and the setting itself when it names none.
fn level_from(setting: Option<&str>) -> (LevelFilter, Option<&str>) {
    match setting.map(str::trim) {
        None | Some("") => (LevelFilter::INFO, None),
        Some(text) => match text.parse::<LevelFilter>() {
            Ok(level) => (level, None),
            Err(_) => (LevelFilter::INFO, Some(text)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_levels_the_template_passes_in_either_case() {
        assert_eq!(level_from(Some("debug")), (LevelFilter::DEBUG, None));
        assert_eq!(level_from(Some("WARN")), (LevelFilter::WARN, None));
        assert_eq!(level_from(Some("error")), (LevelFilter::ERROR, None));
        assert_eq!(level_from(Some("off")), (LevelFilter::OFF, None));
    }

    #[test]
    fn dependencies_never_log_at_trace() {
        use tracing::Level;
        let trace = filter(LevelFilter::TRACE);
        assert!(trace.would_enable("shared::handlers::token", &Level::TRACE));
        assert!(!trace.would_enable("lambda_runtime::layers::api_response", &Level::TRACE));
        assert!(!trace.would_enable("aws_smithy_runtime::client::http", &Level::TRACE));
        assert!(trace.would_enable("lambda_runtime::runtime", &Level::DEBUG));
        let info = filter(LevelFilter::INFO);
        assert!(info.would_enable("shared::http", &Level::INFO));
        assert!(!info.would_enable("shared::http", &Level::DEBUG));
        assert!(!info.would_enable("tokio_postgres::query", &Level::DEBUG));
        assert!(info.would_enable("tokio_postgres::connection", &Level::WARN));
        assert!(!filter(LevelFilter::OFF).would_enable("shared::http", &Level::ERROR));
    }

    #[test]
    fn defaults_to_info_and_reports_what_it_could_not_read() {
        assert_eq!(level_from(None), (LevelFilter::INFO, None));
        assert_eq!(level_from(Some(" ")), (LevelFilter::INFO, None));
        assert_eq!(
            level_from(Some("shared=debug,hyper=warn")),
            (LevelFilter::INFO, Some("shared=debug,hyper=warn"))
        );
    }
}
