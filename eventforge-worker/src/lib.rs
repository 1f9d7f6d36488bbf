//! The generic eventforge worker.
//!
//! This crate will hold `Worker`, which serves RPC methods (native Rust
//! handlers, or external programs speaking JSON on stdin/stdout) on any
//! transport given as a URL, and the `eventforge` command-line tool built on
//! it (`worker`, `call`, `pub`, `sub`). This release ships the command's
//! skeleton only.

#![warn(missing_docs)]

/// The version of the worker and of the `eventforge` command.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
