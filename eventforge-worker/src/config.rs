//! The worker's configuration file (TOML): transport, service and the
//! table of methods it serves. Flags given on the command line add to it
//! (handlers) or override it (URL, service, id).
//!
//! ```toml
//! url = "tcp://127.0.0.1:9090"
//! service = "math"
//! builtins = ["echo", "add"]
//!
//! [methods.double]              # a pool of long-lived processes
//! process = "python3 examples/handlers/process_handler.py"
//! pool_size = 4
//!
//! [methods.shout]               # one process per call
//! exec = "python3 examples/handlers/oneshot_handler.py"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::WorkerError;

/// The contents of a worker configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Transport URL (`tcp://`, `redis://`, `nats://`).
    pub url: Option<String>,
    /// Service name (default `rpc`).
    pub service: Option<String>,
    /// The worker's id, returned by the `whoami` built-in and shown in logs.
    pub id: Option<String>,
    /// Built-in handlers served under their own names.
    #[serde(default)]
    pub builtins: Vec<String>,
    /// Default number of children per `process` method.
    pub pool_size: Option<usize>,
    /// Requests handled at once.
    pub max_concurrency: Option<usize>,
    /// Methods by name.
    #[serde(default)]
    pub methods: BTreeMap<String, MethodConfig>,
}

/// How one method of the `[methods]` table is answered: give exactly one
/// of `process`, `exec` or `builtin`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// A long-lived program speaking length-prefixed JSON frames.
    pub process: Option<String>,
    /// A program run once per call: JSON request on stdin, answer on stdout.
    pub exec: Option<String>,
    /// A built-in handler served under this method's name.
    pub builtin: Option<String>,
    /// Children for a `process` method (overrides the file's `pool_size`).
    pub pool_size: Option<usize>,
}

impl WorkerConfig {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, WorkerError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| WorkerError::Config {
            path: shown.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| WorkerError::Config {
            path: shown,
            reason,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_methods_of_each_kind() {
        let config = WorkerConfig::parse(
            r#"
            url = "tcp://127.0.0.1:0"
            builtins = ["echo"]
            [methods.double]
            process = "python3 double.py"
            pool_size = 3
            [methods.shout]
            exec = "./shout.sh"
            "#,
        )
        .unwrap_or_default();
        assert_eq!(config.url.as_deref(), Some("tcp://127.0.0.1:0"));
        assert_eq!(config.builtins, ["echo"]);
        assert_eq!(config.methods["double"].pool_size, Some(3));
        assert_eq!(config.methods["shout"].exec.as_deref(), Some("./shout.sh"));
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(WorkerConfig::parse("urll = \"x\"").is_err());
    }
}
