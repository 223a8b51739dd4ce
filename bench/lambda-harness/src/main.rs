//! `lambda-harness`: end-to-end measurements of our Lambda binaries, run by
//! `scripts/bench`.
//!
//! Runs a release binary against a local Lambda Runtime API (ours, in
//! `runtime_api.rs`) and prints one JSON line with its init time (spawn until
//! its first `GET .../invocation/next`), warm latency percentiles (event handed
//! out until its result arrives), errors and peak RSS. `spawn-time` times a
//! whole process instead, for comparing init with Node's
//! `node -e "require('livekit-server-sdk')"`.

mod invoke;
mod load;
mod runtime_api;
mod spawn_time;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;

const USAGE: &str = "\
usage:
  lambda-harness --binary PATH --event FILE... --invocations N
                 [--name NAME] [--warmup 20] [--inits 20] [--env KEY=VALUE]...
                 [--log FILE] [--timeout-secs 30]
      Runs the Lambda binary against a local Runtime API and prints
      {\"function\", \"init_ms\", \"p50_us\", \"p99_us\", \"invocations\", \"errors\",
       \"client_errors\", \"peak_rss_kb\", ...}.
      init_ms is the median over --inits processes; the first --warmup
      invocations are left out of the percentiles. Errors are /error posts and
      answers with statusCode >= 500; client_errors are 4xx answers.
      --event may be repeated, and a FILE ending in .jsonl holds one event per
      line: the invocations take the events in turn.

  lambda-harness load --containers N [--database-url URL] --binary PATH --event FILE...
                 --invocations M [--warmup 20] [--env KEY=VALUE]... [--log FILE]
      N containers (processes) of the function at once, M invocations each,
      every container taking its own slice of the events. Prints {\"function\",
      \"containers\", \"invocations\", \"throughput_per_s\", \"p50_us\", \"p99_us\",
      \"errors\", \"peak_db_connections\", ...}; the first --warmup invocations
      of each container are left out of the percentiles, not of the throughput.
      With --database-url, the functions' sessions are counted all along.

  lambda-harness spawn-time [--runs 20] [--warmup 2] [--cwd DIR] -- PROGRAM [ARG]...
      Prints {\"command\", \"runs\", \"median_ms\", \"min_ms\", \"max_ms\"}: the wall
      time of PROGRAM from spawn to exit (it must exit successfully).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || matches!(args[0].as_str(), "-h" | "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("spawn-time") => parse_spawn_time(&args[1..]).and_then(|o| spawn_time::run(&o)),
        Some("load") => parse_load(&args[1..]).and_then(|options| {
            // The harness must not be what limits the containers.
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start tokio: {e}"))?
                .block_on(load::run(&options))
        }),
        _ => parse_invoke(&args).and_then(|options| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start tokio: {e}"))?
                .block_on(invoke::run(&options))
        }),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("lambda-harness: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Yields `(flag, value)` pairs from `--flag value` arguments.
struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    fn next(&mut self) -> Option<Result<(&'a str, &'a str), String>> {
        let flag = self.args.next()?;
        if flag == "--" {
            return Some(Ok(("--", "")));
        }
        if !flag.starts_with("--") {
            return Some(Err(format!("unexpected argument {flag}\n\n{USAGE}")));
        }
        Some(
            self.args
                .next()
                .map(|value| (flag.as_str(), value.as_str()))
                .ok_or_else(|| format!("{flag} needs a value")),
        )
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a number, not {value:?}"))
}

fn parse_invoke(args: &[String]) -> Result<invoke::Options, String> {
    let mut binary = None;
    let mut event_files = Vec::new();
    let mut invocations = None;
    let mut function = None;
    let mut warmup = 20;
    let mut inits = 20;
    let mut env = Vec::new();
    let mut log = None;
    let mut timeout_secs = 30;
    let mut flags = Flags { args: args.iter() };
    while let Some(flag) = flags.next() {
        let (flag, value) = flag?;
        match flag {
            "--binary" => binary = Some(PathBuf::from(value)),
            "--event" => event_files.push(PathBuf::from(value)),
            "--invocations" => invocations = Some(number::<usize>(flag, value)?),
            "--name" => function = Some(value.to_owned()),
            "--warmup" => warmup = number(flag, value)?,
            "--inits" => inits = number(flag, value)?,
            "--env" => {
                let (key, value) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--env takes KEY=VALUE, not {value:?}"))?;
                env.push((key.to_owned(), value.to_owned()));
            }
            "--log" => log = Some(PathBuf::from(value)),
            "--timeout-secs" => timeout_secs = number(flag, value)?,
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    let binary = binary.ok_or_else(|| format!("--binary is required\n\n{USAGE}"))?;
    if event_files.is_empty() {
        return Err(format!("--event is required\n\n{USAGE}"));
    }
    let invocations = invocations.ok_or_else(|| format!("--invocations is required\n\n{USAGE}"))?;
    if invocations <= warmup {
        return Err(format!(
            "--invocations ({invocations}) must exceed --warmup ({warmup})"
        ));
    }
    let events = read_events(&event_files)?;
    // The target/lambda/<fn>/bootstrap layout names the function by its directory.
    let function = function.unwrap_or_else(|| {
        let name = |p: Option<&std::path::Path>| {
            p.and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match name(Some(&binary)) {
            n if n == "bootstrap" => name(binary.parent()),
            n => n,
        }
    });
    Ok(invoke::Options {
        binary,
        function,
        events,
        invocations,
        warmup,
        inits: inits.max(1),
        env,
        log,
        timeout: Duration::from_secs(timeout_secs),
    })
}

/// The events of every file: a `.jsonl` file holds one per non-empty line.
fn read_events(files: &[PathBuf]) -> Result<Vec<Bytes>, String> {
    let mut events = Vec::new();
    for path in files {
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if path.extension().is_some_and(|ext| ext == "jsonl") {
            events.extend(
                text.split(|&b| b == b'\n')
                    .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                    .map(Bytes::copy_from_slice),
            );
        } else {
            events.push(Bytes::from(text));
        }
    }
    if events.is_empty() {
        return Err("the --event files hold no event".to_owned());
    }
    Ok(events)
}

fn parse_load(args: &[String]) -> Result<load::Options, String> {
    let mut containers = None;
    let mut database_url = None;
    let mut rest = Vec::new();
    let mut flags = Flags { args: args.iter() };
    while let Some(flag) = flags.next() {
        match flag? {
            ("--containers", value) => containers = Some(number::<usize>("--containers", value)?),
            ("--database-url", value) => database_url = Some(value.to_owned()),
            (flag, value) => rest.extend([flag.to_owned(), value.to_owned()]),
        }
    }
    let containers = containers
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("load needs --containers N (at least 1)\n\n{USAGE}"))?;
    // Init is not measured under load: one launch per container is enough.
    rest.extend(["--inits".to_owned(), "1".to_owned()]);
    Ok(load::Options {
        invoke: parse_invoke(&rest)?,
        containers,
        database_url,
    })
}

fn parse_spawn_time(args: &[String]) -> Result<spawn_time::Options, String> {
    let mut runs = 20;
    let mut warmup = 2;
    let mut cwd = None;
    let mut flags = Flags { args: args.iter() };
    while let Some(flag) = flags.next() {
        let (flag, value) = flag?;
        match flag {
            "--" => break,
            "--runs" => runs = number(flag, value)?,
            "--warmup" => warmup = number(flag, value)?,
            "--cwd" => cwd = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    let mut command = flags.args.cloned();
    let program = command
        .next()
        .ok_or_else(|| format!("spawn-time needs `-- PROGRAM [ARG]...`\n\n{USAGE}"))?;
    if runs == 0 {
        return Err("--runs must be at least 1".to_owned());
    }
    Ok(spawn_time::Options {
        program,
        args: command.collect(),
        cwd,
        runs,
        warmup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_an_invoke_command_line() {
        let dir = std::env::temp_dir();
        let event = dir.join(format!("lambda-harness-test-{}.json", std::process::id()));
        let lines = dir.join(format!("lambda-harness-test-{}.jsonl", std::process::id()));
        std::fs::write(&event, "{}").unwrap();
        std::fs::write(&lines, "{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        let args = strings(&[
            "--binary",
            "target/lambda/token/bootstrap",
            "--event",
            event.to_str().unwrap(),
            "--event",
            lines.to_str().unwrap(),
            "--invocations",
            "100",
            "--env",
            "A=b=c",
            "--env",
            "D=",
        ]);
        let options = parse_invoke(&args).unwrap();
        assert_eq!(options.function, "token");
        assert_eq!(options.invocations, 100);
        assert_eq!(options.warmup, 20);
        assert_eq!(
            options.events,
            vec![
                Bytes::from("{}"),
                Bytes::from("{\"a\":1}"),
                Bytes::from("{\"a\":2}")
            ]
        );
        std::fs::remove_file(&event).unwrap();
        std::fs::remove_file(&lines).unwrap();
        assert_eq!(
            options.env,
            vec![("A".into(), "b=c".into()), ("D".into(), String::new())]
        );
        let too_few = strings(&["--binary", "x", "--event", "y", "--invocations", "20"]);
        assert!(parse_invoke(&too_few).unwrap_err().contains("must exceed"));
        assert!(
            parse_invoke(&strings(&["--binary"]))
                .unwrap_err()
                .contains("needs a value")
        );
    }

    #[test]
    fn parses_a_load_command_line() {
        let event = std::env::temp_dir().join(format!("lambda-harness-load-{}.json", std::process::id()));
        std::fs::write(&event, "{}").unwrap();
        let args = strings(&[
            "--containers",
            "8",
            "--binary",
            "target/release/token",
            "--event",
            event.to_str().unwrap(),
            "--invocations",
            "200",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ]);
        let options = parse_load(&args).unwrap();
        std::fs::remove_file(&event).unwrap();
        assert_eq!(options.containers, 8);
        assert_eq!(options.invoke.invocations, 200);
        assert_eq!(options.invoke.function, "token");
        assert_eq!(
            options.database_url.as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/postgres")
        );
        assert!(parse_load(&args[2..]).unwrap_err().contains("--containers"));
    }

    #[test]
    fn parses_a_spawn_time_command_line() {
        let args = strings(&[
            "--runs",
            "5",
            "--cwd",
            "bench/node",
            "--",
            "node",
            "-e",
            "require('x')",
        ]);
        let options = parse_spawn_time(&args).unwrap();
        assert_eq!(options.runs, 5);
        assert_eq!(options.program, "node");
        assert_eq!(options.args, strings(&["-e", "require('x')"]));
        assert_eq!(options.cwd, Some(PathBuf::from("bench/node")));
        assert!(parse_spawn_time(&strings(&["--runs", "5"])).is_err());
    }
}
