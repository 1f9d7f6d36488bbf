//! The generic eventforge worker.
//!
//! It sits in the remote request-reply corner of the 2x2 (beside
//! `RpcServer`/`RpcClient`, which it is built on), and its `pub`/`sub`
//! commands in the remote pub-sub corner.
//!
//! [`Worker`] serves RPC methods on any transport named by a URL
//! (`tcp://`, `redis://`, `nats://`): built-in handlers, external programs
//! speaking JSON on stdin/stdout (a long-lived pool or one process per
//! call), or Rust closures. The `eventforge` command-line tool (`worker`,
//! `call`, `pub`, `sub`) is built on this crate; see its README for the
//! handler protocol and the exit codes.
//!
//! ```no_run
//! use eventforge_worker::Worker;
//!
//! # async fn serve() -> Result<(), eventforge_worker::WorkerError> {
//! Worker::on("tcp://127.0.0.1:9090")
//!     .builtin("echo")
//!     .handler("double", |n: i64| async move { Ok::<_, String>(n * 2) })
//!     .run()
//!     .await
//! # }
//! ```

#![warn(missing_docs)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod handlers;
pub mod worker;

pub use config::WorkerConfig;
pub use endpoint::Endpoint;
pub use error::WorkerError;
pub use worker::{RunningWorker, Worker};

/// The version of the worker and of the `eventforge` command.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
