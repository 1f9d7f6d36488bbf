//! Work queues: jobs that wait until a consumer takes them, with acks,
//! retries, dead letters and lifecycle events.
//!
//! Pub-sub drops a message nobody listens to; a [`WorkQueue`] keeps it until
//! a consumer has finished with it. Jobs are enqueued on a topic and handed
//! out per *consumer group*: every group receives every job, and inside a
//! group each job goes to one consumer at a time, round-robin.
//!
//! A job handed out is *in flight*. The consumer settles it:
//!
//! - [`ack`](Job::ack): done, never handed out again to that group;
//! - [`nack`](Job::nack) with a [`Nack`]: give it back now
//!   ([`Nack::Requeue`]), after a delay ([`Nack::Delay`]), or send it to the
//!   dead-letter topic ([`Nack::DeadLetter`]).
//!
//! A job neither acked nor nacked within the visibility timeout (its
//! consumer crashed, say) is handed out again. After
//! [`max_retries`](WorkQueueBuilder::max_retries) failed tries it goes to
//! `<topic>.dead_letter`, with the reason in its headers.
//!
//! The storage is a [`WorkBackend`]: [`MemoryWorkBackend`] in-process, or the
//! Redis Streams and NATS JetStream backends of `eventforge-transports`,
//! which survive the crash of a consumer and, where the broker persists, a
//! broker restart. Code written against [`WorkQueue`] runs unchanged on each.
//!
//! ```
//! use std::time::Duration;
//! use eventforge_work::{Nack, WorkQueue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventforge_core::Error> {
//! let queue = WorkQueue::memory();
//! queue.enqueue("emails", serde_json::json!({"to": "ada@example.com"})).await?;
//!
//! // Pull: take a job, settle it explicitly.
//! let job = queue.dequeue("emails", "default", Duration::from_secs(1)).await?.unwrap();
//! assert_eq!(job.payload()["to"], "ada@example.com");
//! job.nack(Nack::Requeue).await?;
//!
//! // Push: a handler; Ok acks, Err retries, up to max_retries.
//! let consumer = queue
//!     .consume("emails", "default", |message| async move {
//!         println!("sending to {}", message.payload["to"]);
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! # let stats = queue.stats("emails", "default").await?;
//! # let _ = stats;
//! consumer.stop().await;
//! queue.close().await?;
//! # Ok(()) }
//! ```
//!
//! Every step is also published as a lifecycle event on
//! `_events.<topic>.<event>` (see [`JobEvent`]), so `subscribe("_events.**")`
//! on the [`events`](WorkQueue::events) queue shows the jobs live.

#![warn(missing_docs)]

mod backend;
mod consumer;
mod events;
pub mod headers;
mod job;
mod memory;
mod queue;
mod settle;

pub use backend::{BackendStats, Delivery, Receipt, WorkBackend, WorkOptions, DEFAULT_GROUP};
pub use consumer::Consumer;
pub use events::{GroupSummary, JobCounts, JobEvent, JobEventPayload, QueueSummary, EVENTS_PREFIX};
pub use headers::dead_letter_topic;
pub use job::{Job, Nack};
pub use memory::MemoryWorkBackend;
pub use queue::{WorkQueue, WorkQueueBuilder, WorkStats};
