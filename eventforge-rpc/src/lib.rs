//! Remote procedure calls: the remote request-reply corner of the 2x2.
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | request-reply  | [`Executor`](crate::executor::Executor) | **[`RpcServer`] / [`RpcClient`]** |
//!
//! A server answers `<service>.request`; a client publishes there with
//! `reply_to = "_rpc_reply.<request id>"`. Both run over any
//! [`Transport`](eventforge_core::Transport) and speak the Python eventforge's RPC
//! payloads ([`RpcRequest`], [`RpcResponse`]) field for field.

pub mod args;
pub mod client;
pub mod error;
pub mod handler;
pub mod replies;
pub mod retry;
pub mod round_robin;
pub mod server;
pub mod service;
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
pub use round_robin::RoundRobinRpcClient;
pub use server::{RpcServer, RpcServerStats, DEFAULT_MAX_CONCURRENCY};
pub use service::CallFuture;
pub use wire::{request_topic, RpcRequest, RpcResponse, DEFAULT_SERVICE, RPC_REPLY_PREFIX};
