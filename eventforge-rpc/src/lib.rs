//! Remote procedure calls for eventforge: the request-reply row of the
//! messages layer, built on the kernel (`eventforge-core`).
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | request-reply  | an [`RpcServer`] on a memory [`MessageQueue`](eventforge_core::MessageQueue) | **[`RpcServer`] / [`RpcClient`]** on a network transport |
//!
//! A server answers `<service>.request`; a client publishes there with
//! `reply_to = "_rpc_reply.<request id>"`. Both run over any
//! [`Transport`](eventforge_core::Transport) and speak the Python
//! eventforge's RPC payloads ([`RpcRequest`], [`RpcResponse`], the
//! [`wire`]) field for field. Handlers are closures with typed arguments
//! ([`RpcHandler`]); [`RoundRobinRpcClient`] spreads calls over servers;
//! [`with_retry`] retries transient failures with backoff and jitter; every
//! caller is also a `tower::Service`.
//!
//! ```
//! use eventforge_core::MessageQueue;
//! use eventforge_rpc::{HandlerError, RpcClient, RpcServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = MessageQueue::memory();
//! let server = RpcServer::new(queue.clone()).service("math");
//! server.register("add", |a: i64, b: i64| async move { Ok::<_, HandlerError>(a + b) });
//! server.serve().await?;
//!
//! let client = RpcClient::new(queue).service("math");
//! assert_eq!(client.call::<i64>("add", (40, 2)).await?, 42);
//! # server.stop().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod args;
mod client;
mod error;
mod handler;
mod replies;
mod retry;
mod round_robin;
mod server;
mod service;
pub mod wire;

pub use args::IntoArgs;
pub use client::{CallBuilder, RpcCall, RpcCaller, RpcClient, DEFAULT_TIMEOUT};
pub use error::{RpcError, RpcErrorKind};
pub use handler::{
    AsyncReturn, HandlerError, IncomingCall, IntoOutcome, Kwargs, Outcome, Raw, RpcHandler,
    RpcReturn, SyncReturn,
};
pub use replies::ReplyRouting;
pub use retry::{with_retry, RetryPolicy, Retrying};
pub use round_robin::{RoundRobinRpcClient, DEFAULT_COOL_DOWN};
pub use server::{RpcServer, RpcServerStats, DEFAULT_MAX_CONCURRENCY};
pub use service::CallFuture;
pub use wire::{request_topic, RpcRequest, RpcResponse, DEFAULT_SERVICE, RPC_REPLY_PREFIX};
