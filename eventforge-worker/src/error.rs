//! What can stop a worker or a command, and the exit code each maps to.
//!
//! The exit codes are part of the command's interface (scripts branch on
//! them), so they live beside the error they describe.

use eventforge_rpc::RpcError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a failure not covered by another code.
pub const EXIT_OTHER: u8 = 1;
/// Exit code: the command line is malformed (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the configuration is missing, unreadable or serves nothing.
pub const EXIT_CONFIG: u8 = 3;
/// Exit code: the transport failed (broker unreachable, port in use, link lost).
pub const EXIT_TRANSPORT: u8 = 4;
/// Exit code: no answer came before the timeout.
pub const EXIT_TIMEOUT: u8 = 5;
/// Exit code: the remote method ran and failed (or rejected its arguments).
pub const EXIT_REMOTE: u8 = 6;
/// Exit code: the server has no such method.
pub const EXIT_NO_METHOD: u8 = 7;

/// Why a worker or a command stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration file could not be read or parsed.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A flag or a configuration entry is invalid.
    #[error("{0}")]
    Invalid(String),

    /// The worker would serve no method.
    #[error("no handler to serve: add --builtin NAME, --exec METHOD=COMMAND, --process METHOD=COMMAND or a [methods] table in the config")]
    NoHandlers,

    /// The transport URL is not one this command knows.
    #[error("unsupported transport URL {url:?}: use tcp://HOST:PORT, redis://HOST:PORT or nats://HOST:PORT")]
    Url {
        /// The URL as given.
        url: String,
    },

    /// The transport could not be opened (bind, connect).
    #[error("{url}: {reason}")]
    Transport {
        /// The URL of the transport.
        url: String,
        /// The transport's error text.
        reason: String,
    },

    /// A remote call failed.
    #[error(transparent)]
    Call(#[from] RpcError),

    /// Fewer messages than asked came before the deadline.
    #[error("timed out: {0}")]
    Timeout(String),

    /// A handler program could not be started.
    #[error("could not start handler {method:?} ({command}): {source}")]
    Spawn {
        /// The method it serves.
        method: String,
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl WorkerError {
    /// The process exit code for this error (see the `EXIT_*` constants).
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Config { .. } | WorkerError::Invalid(_) | WorkerError::NoHandlers => {
                EXIT_CONFIG
            }
            WorkerError::Url { .. } => EXIT_USAGE,
            WorkerError::Transport { .. } => EXIT_TRANSPORT,
            WorkerError::Timeout(_) => EXIT_TIMEOUT,
            WorkerError::Spawn { .. } => EXIT_CONFIG,
            WorkerError::Call(error) => match error {
                RpcError::Timeout { .. } => EXIT_TIMEOUT,
                RpcError::MethodNotFound { .. } => EXIT_NO_METHOD,
                RpcError::Remote { .. } => EXIT_REMOTE,
                RpcError::NoResponders { .. } | RpcError::Transport { .. } | RpcError::Closed => {
                    EXIT_TRANSPORT
                }
                _ => EXIT_OTHER,
            },
        }
    }
}
