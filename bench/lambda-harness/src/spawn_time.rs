//! `lambda-harness spawn-time`: wall time of a whole process, spawn to exit.
//!
//! Used for the init comparison with Node: `node -e "require('livekit-server-sdk')"`,
//! run from `bench/node` so the require resolves.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::stats::{median, round, sorted};

#[derive(Debug)]
pub struct Options {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub runs: usize,
    /// Runs not counted: the first ones pay for a cold page cache.
    pub warmup: usize,
}

pub fn run(options: &Options) -> Result<Value, String> {
    let mut samples = Vec::with_capacity(options.runs);
    for run in 0..options.warmup + options.runs {
        let mut command = Command::new(&options.program);
        command
            .args(&options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cwd) = &options.cwd {
            command.current_dir(cwd);
        }
        let started = Instant::now();
        let status = command
            .status()
            .map_err(|e| format!("cannot run {}: {e}", options.program))?;
        let elapsed = started.elapsed();
        // A command that fails (a require that does not resolve, say) would
        // make a meaningless, flattering figure.
        if !status.success() {
            return Err(format!("`{}` exited with {status}", display(options)));
        }
        if run >= options.warmup {
            samples.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    let samples = sorted(samples);
    Ok(json!({
        "command": display(options),
        "runs": options.runs,
        "median_ms": round(median(&samples), 2),
        "min_ms": round(samples[0], 2),
        "max_ms": round(samples[samples.len() - 1], 2),
    }))
}

/// The command as a shell would show it (quoting arguments with spaces).
fn display(options: &Options) -> String {
    std::iter::once(&options.program)
        .chain(&options.args)
        .map(|word| {
            if word.is_empty() || word.contains([' ', '"', '\'']) {
                format!("\"{}\"", word.replace('"', "\\\""))
            } else {
                word.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(program: &str, args: &[&str]) -> Options {
        Options {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            runs: 3,
            warmup: 1,
        }
    }

    #[test]
    fn times_a_process() {
        let result = run(&options("true", &[])).unwrap();
        assert_eq!(result["runs"], 3);
        let [min, median, max] = ["min_ms", "median_ms", "max_ms"].map(|k| result[k].as_f64().unwrap());
        // A process takes some time to start and exit, and the median of
        // three lies between the fastest and the slowest.
        assert!(min > 0.0 && min <= median && median <= max, "{result}");
    }

    #[test]
    fn a_failing_command_is_an_error() {
        let error = run(&options("false", &[])).unwrap_err();
        assert!(error.contains("exited with"), "{error}");
    }

    #[test]
    fn displays_the_command() {
        let shown = display(&options("node", &["-e", "require('x')"]));
        assert_eq!(shown, "node -e \"require('x')\"");
    }
}
