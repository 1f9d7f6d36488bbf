//! eventforge: publish events, call functions on other machines, queue
//! durable jobs and run tasks, over memory, TCP, Redis or NATS, without
//! rewriting code when moving from one to another. Wire-compatible with the
//! Python eventforge.
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | pub-sub        | [`MessageQueue`] on [`MemoryTransport`] | [`MessageQueue`] on a network transport |
//! | request-reply  | [`MessageQueue::request`], [`rpc`] on memory | the same on a network transport |
//! | work queues    | [`work::WorkQueue`] on memory | [`work::WorkQueue`] on Redis Streams or NATS JetStream |
//!
//! Local versus remote lives in one place per layer: the [`Transport`] for
//! messages, the [`work::WorkBackend`] for jobs. Everything above is
//! identical whether the peer is in-process, across a TCP socket, or behind
//! a Redis or NATS broker.
//!
//! The crate is a facade over the layered crates, one module each:
//!
//! | module | crate | what |
//! |---|---|---|
//! | (root) | `eventforge-core` | messages, patterns, [`Transport`], [`MemoryTransport`], [`MessageQueue`] |
//! | [`rpc`] | `eventforge-rpc` | `RpcServer`, `RpcClient`, round robin, retry |
//! | [`tasks`] | `eventforge-tasks` | `Task`, `Executor`, observers, dispatchers |
//! | [`work`] | `eventforge-work` | `WorkQueue`, `WorkBackend`, the memory backend, job events |
//! | [`transports`] | `eventforge-transports` | TCP, Redis and NATS, and the durable work backends |
//!
//! ```
//! use std::time::Duration;
//! use eventforge::MessageQueue;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventforge::Error> {
//! let queue = MessageQueue::memory();
//! queue.on("greetings.*", |msg| println!("{}: {}", msg.topic, msg.payload)).await?;
//! queue.publish("greetings.en", "hello").await?;
//!
//! let next = queue.receive("greetings.fr", Duration::from_millis(10)).await;
//! assert!(matches!(next, Err(eventforge::Error::Timeout { .. })));
//! queue.close().await?;
//! # Ok(()) }
//! ```
//!
//! Features: `tcp` (default), `redis`, `nats` select the network transports
//! of [`transports`]; `macros` enables the procedural macros.

#![warn(missing_docs)]

pub use eventforge_core::{
    new_id, BoxError, Capabilities, Error, HandlerId, Headers, IntoPattern, MemoryTransport,
    MemoryTransportBuilder, Message, MessageQueue, OverflowPolicy, Pattern, QueueStats, Result,
    Subscription, SubscriptionId, Transport, DEFAULT_BUFFER,
};

/// Remote procedure calls: typed handlers on an `RpcServer`, `RpcClient`,
/// round robin and retry (`eventforge-rpc`).
pub use eventforge_rpc as rpc;

/// Tasks: `Task` with observers, the `Executor` (inline, threads, child
/// processes), dispatchers and pools (`eventforge-tasks`).
pub use eventforge_tasks as tasks;

/// Work queues: `WorkQueue`, jobs, acks and dead letters, the
/// `WorkBackend` trait and its memory backend (`eventforge-work`).
pub use eventforge_work as work;

/// Network transports (TCP, Redis, NATS) and durable work-queue backends
/// (Redis Streams, JetStream), each behind its cargo feature.
pub use eventforge_transports as transports;

/// Procedural macros: `#[task]` turns a function into a
/// [`Task`](tasks::Task).
///
/// ```
/// use eventforge::macros::task;
/// use eventforge::rpc::HandlerError;
///
/// #[task(topic = "math.add", max_instances = 4)]
/// async fn add(a: i64, b: i64) -> Result<i64, HandlerError> {
///     Ok(a + b)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let task = add_task();
/// assert_eq!(task.topic(), "math.add");
/// // Parameter names are known: an object payload binds by name.
/// let sum = task.call_payload(serde_json::json!({"a": 1, "b": 2})).await;
/// assert_eq!(sum.unwrap(), 3);
/// # }
/// ```
#[cfg(feature = "macros")]
pub use eventforge_macros as macros;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
