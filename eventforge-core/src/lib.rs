//! The messaging kernel of eventforge: messages, topic patterns, the
//! [`Transport`] trait, the in-process [`MemoryTransport`] and the
//! [`MessageQueue`].
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | pub-sub        | [`MessageQueue`] on [`MemoryTransport`] | [`MessageQueue`] on a network transport |
//! | request-reply  | [`MessageQueue::request`] | the same, over TCP, Redis or NATS |
//!
//! Every other eventforge crate builds on this one: RPC, tasks and work
//! queues above it, the network transports beside the memory one. Local
//! versus remote lives in the [`Transport`] only: code written against a
//! [`MessageQueue`] runs unchanged on every transport.
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
pub mod frame;
pub mod handler;
pub mod memory;
pub mod message;
pub mod pattern_trie;
pub mod queue;
pub mod reply_waiter;
pub mod router;
pub mod subscription;
pub mod sync;
pub mod topic;
pub mod transport;

pub use error::{BoxError, Error, Result};
pub use handler::{AsyncHandler, HandlerOutput, HandlerReturn, SyncHandler};
pub use memory::{MemoryTransport, MemoryTransportBuilder};
pub use message::{new_id, Headers, Message};
pub use pattern_trie::PatternTrie;
pub use queue::{HandlerId, MessageQueue, QueueStats};
pub use reply_waiter::{PendingReply, ReplyWaiters, Waiter};
pub use router::{OverflowPolicy, Router, RouterStats, DEFAULT_BUFFER};
pub use subscription::{Subscription, SubscriptionId};
pub use topic::{validate_topic, IntoPattern, Pattern, Segment, MATCH_TABLE};
pub use transport::{await_reply, prepare_request, Capabilities, Transport, REPLY_PREFIX};
