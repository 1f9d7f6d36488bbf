//! eventforge: publish events, call functions on other machines and run
//! tasks, over memory, TCP, Redis or NATS, without rewriting code when moving
//! from one to another. Wire-compatible with the Python eventforge.
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | pub-sub        | [`MessageQueue`] on [`MemoryTransport`] | [`MessageQueue`] on a network transport |
//! | request-reply  | [`MessageQueue::request`] | the same on a network transport |
//! | work queue     | [`WorkQueue`] on [`MemoryWorkBackend`] | [`WorkQueue`] on Redis Streams or NATS JetStream |
//!
//! Local versus remote lives in one place only, the [`Transport`]: everything
//! above it is identical whether the peer is in-process, across a TCP
//! socket, or behind a Redis or NATS broker.
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

pub use eventforge_core::*;

/// Network transports (TCP, Redis, NATS) and durable work-queue backends
/// (Redis Streams, JetStream), each behind its cargo feature.
pub use eventforge_transports as transports;

/// Procedural macros: `#[task]` turns a function into a
/// [`Task`](eventforge_core::task::Task).
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
