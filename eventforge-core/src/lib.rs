//! The core of eventforge: messages, topic patterns, the [`Transport`] trait,
//! the in-process [`MemoryTransport`] and the [`MessageQueue`].
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | pub-sub        | [`MessageQueue`] on [`MemoryTransport`] | [`MessageQueue`] on a network transport |
//! | request-reply  | [`MessageQueue::request`] | the same, over TCP, Redis or NATS |
//! | work queue     | [`WorkQueue`] on [`MemoryWorkBackend`] | [`WorkQueue`] on a durable [`WorkBackend`] |
//!
//! Local versus remote lives in the [`Transport`] only: code written against
//! a [`MessageQueue`] runs unchanged on every transport.
//!
//! ```
//! use eventforge_core::MessageQueue;
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventforge_core::Error> {
//! let queue = MessageQueue::memory();
//! let mut orders = queue.subscribe("orders.*").await?;
//! queue.publish("orders.created", serde_json::json!({"id": 7})).await?;
//! let msg = orders.next().await.unwrap();
//! assert_eq!(msg.payload["id"], 7);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod handler;
pub mod memory;
pub mod message;
pub mod queue;
pub mod router;
pub mod subscription;
pub mod topic;
pub mod transport;

pub use error::{BoxError, Error, Result};
pub use handler::{AsyncHandler, HandlerOutput, HandlerReturn, SyncHandler};
pub use memory::{MemoryTransport, MemoryTransportBuilder};
pub use message::{new_id, Headers, Message};
pub use queue::{HandlerId, MessageQueue, QueueStats};
pub use router::{AwaitedReplyGuard, OverflowPolicy, Router, RouterStats, DEFAULT_BUFFER};
pub use subscription::{Subscription, SubscriptionId};
pub use topic::{validate_topic, IntoPattern, Pattern, PatternTrie, Segment, MATCH_TABLE};
pub use transport::{await_reply, prepare_request, Capabilities, Transport, REPLY_PREFIX};
pub mod executor;
pub mod retry;
pub mod rpc;
pub use executor::{
    run_child_if_requested, Executor, ExecutorBuilder, ExecutorError, ExecutorMode,
    FunctionRegistry, TaskResult, TaskStatus,
};
pub use retry::{with_retry, RetryPolicy, Retrying};
pub use rpc::{
    HandlerError, IntoArgs, Kwargs, ReplyRouting, RoundRobinRpcClient, RpcCall, RpcCaller,
    RpcClient, RpcError, RpcErrorKind, RpcHandler, RpcRequest, RpcResponse, RpcServer,
};
pub mod observers;
pub mod task;
pub use observers::{
    CallbackObserver, CountingAllocator, CpuMeter, MemoryMeter, Meter, MeterStats, MetricsMeter,
    Observer, Reduction, Summary, SummaryStats, TimingMeter, TracingReporter,
};
pub use task::{DispatchStrategy, Dispatcher, Node, NodeOutcome};
pub use task::{SharedState, Task, TaskBuilder, TaskContext, TaskPool, TaskPoolStats, TaskStats};
pub mod work_queue;
pub use work_queue::{
    BackendStats, Consumer, Delivery, Job, JobEvent, MemoryWorkBackend, Nack, Receipt, WorkBackend,
    WorkOptions, WorkQueue, WorkQueueBuilder, WorkStats, DEFAULT_GROUP,
};
