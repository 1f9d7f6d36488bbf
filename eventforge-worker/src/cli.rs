//! The flags of the `eventforge` command, shared with the library form
//! ([`Worker::from_args`](crate::Worker::from_args)) so a Rust binary built
//! on [`Worker`](crate::Worker) accepts the same ones.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes, as shown in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other failure
  2  invalid command line or transport URL
  3  configuration error (missing or invalid config, no handler to serve)
  4  transport error (broker unreachable, port in use, no server for the service)
  5  timeout (no answer in time)
  6  remote error (the method ran and failed, or rejected its arguments)
  7  the server has no such method";

/// Flags that choose how a worker serves: transport, service, handlers.
#[derive(Debug, Clone, Default, Args)]
pub struct WorkerArgs {
    /// Transport URL: tcp://HOST:PORT listens there; redis://HOST:PORT and
    /// nats://HOST:PORT connect to that broker. Overrides the config's `url`.
    #[arg(value_name = "URL")]
    pub url: Option<String>,

    /// TOML file with the transport, service and `[methods]` table.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Service name: requests are read from `<SERVICE>.request` [default: rpc].
    #[arg(short, long, value_name = "NAME")]
    pub service: Option<String>,

    /// This worker's id, answered by the `whoami` built-in [default: HOST-PID].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// Serve a built-in handler: echo, add, sleep or whoami (repeatable).
    #[arg(short, long, value_name = "NAME")]
    pub builtin: Vec<String>,

    /// Serve METHOD with a long-lived program (run by `sh -c`) that reads
    /// length-prefixed JSON requests on stdin and writes answers on stdout
    /// (repeatable).
    #[arg(short, long, value_name = "METHOD=COMMAND")]
    pub process: Vec<String>,

    /// Serve METHOD by running COMMAND (by `sh -c`) once per call: the
    /// request as JSON on its stdin, the answer as JSON on its stdout
    /// (repeatable).
    #[arg(short, long, value_name = "METHOD=COMMAND")]
    pub exec: Vec<String>,

    /// Children started for each --process method [default: 2].
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,

    /// Requests handled at once; more wait in the buffer [default: 256].
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,
}

/// Log output flags.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or a
    /// tracing filter (`eventforge_core=debug`) [default: RUST_LOG, else info].
    #[arg(long, value_name = "FILTER", global = true)]
    pub log_level: Option<String>,

    /// Log JSON lines instead of text (logs go to stderr).
    #[arg(long, global = true)]
    pub log_json: bool,
}

impl LogArgs {
    /// Installs the log subscriber (stderr). Does nothing when the program
    /// already installed one.
    pub fn init(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = match &self.log_level {
            Some(level) => EnvFilter::try_new(level),
            None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
        }
        .unwrap_or_else(|_| EnvFilter::new("info"));
        use std::io::IsTerminal;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colour codes only for a terminal, not for log files or pipes.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let _ = if self.log_json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    }
}

/// `eventforge worker`'s flags as a whole command line, for the library form.
#[derive(Debug, Clone, Parser)]
#[command(version, about = "Serves RPC methods on a transport given as a URL.", after_help = EXIT_CODES_HELP)]
pub struct WorkerCommand {
    /// What to serve and where.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Log output.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The `eventforge` command line.
#[derive(Debug, Parser)]
#[command(
    name = "eventforge",
    version,
    about = "Serve and call eventforge RPC methods, publish and subscribe, over TCP, Redis or NATS.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Log output.
    #[command(flatten)]
    pub log: LogArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `eventforge`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve RPC methods (built-ins, external programs) until SIGTERM or
    /// Ctrl-C; in-flight calls are answered before it exits.
    #[command(after_help = EXIT_CODES_HELP)]
    Worker(WorkerArgs),
    /// Call a method and print its result as JSON.
    #[command(after_help = EXIT_CODES_HELP)]
    Call(CallArgs),
    /// Publish one message.
    #[command(after_help = EXIT_CODES_HELP)]
    Pub(PubArgs),
    /// Print each message on topics matching PATTERN as a JSON line.
    #[command(after_help = EXIT_CODES_HELP)]
    Sub(SubArgs),
}

/// `eventforge call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Transport URL (tcp://HOST:PORT of a worker, redis://..., nats://...).
    pub url: String,
    /// Service name (`rpc` unless the worker was given --service).
    pub service: String,
    /// Method name.
    pub method: String,
    /// Positional arguments, each read as JSON (`3`, `"a b"`, `[1,2]`);
    /// a word that is not JSON is sent as a string.
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// A named argument NAME=VALUE, VALUE read like ARGS (repeatable).
    #[arg(short, long, value_name = "NAME=VALUE")]
    pub kwarg: Vec<String>,
    /// How long to wait for the answer (`500ms`, `5s`, `2m`; bare number = seconds).
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `eventforge pub`.
#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    /// Transport URL.
    pub url: String,
    /// Topic to publish on.
    pub topic: String,
    /// Payload, read as JSON; a word that is not JSON is sent as a string.
    #[arg(allow_negative_numbers = true)]
    pub payload: String,
}

/// `eventforge sub`.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    /// Transport URL.
    pub url: String,
    /// Topic pattern (`orders.*`, `logs.#`).
    pub pattern: String,
    /// Exit after this many messages.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (`500ms`, `5s`); with --count, fewer messages
    /// than asked by then is a timeout (exit code 5).
    #[arg(short, long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// Reads `500ms`, `5s`, `2m` or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Reads a command-line value as JSON, or as a string when it is not JSON.
pub fn json_or_string(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// Splits `NAME=VALUE`.
pub fn split_assignment(text: &str) -> Option<(&str, &str)> {
    text.split_once('=')
        .filter(|(name, _)| !name.trim().is_empty())
        .map(|(name, value)| (name.trim(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn arguments_are_json_else_strings() {
        assert_eq!(json_or_string("3"), json!(3));
        assert_eq!(json_or_string("[1,2]"), json!([1, 2]));
        assert_eq!(json_or_string("hello"), json!("hello"));
        assert_eq!(json_or_string("\"quoted\""), json!("quoted"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        WorkerCommand::command().debug_assert();
    }
}
