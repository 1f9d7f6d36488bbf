//! The one place where local and remote differ.
//!
//! Everything above a [`Transport`] (queues, RPC, tasks) is identical whether
//! the peer is in-process ([`MemoryTransport`](crate::MemoryTransport)),
//! across a TCP socket, or behind a Redis or NATS broker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::{new_id, Message};
use crate::subscription::{Subscription, SubscriptionId};
use crate::topic::Pattern;

/// Prefix of the reply topics made by [`Transport::request`].
pub const REPLY_PREFIX: &str = "_reply.";

/// What a transport guarantees, so that callers and the conformance suite
/// know what to expect of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages from one publisher reach each subscriber in publish order.
    pub ordered_per_publisher: bool,
    /// A request to a topic nobody listens on fails at once with
    /// [`Error::NoResponders`] instead of waiting for its timeout.
    pub reports_no_responders: bool,
    /// The transport re-establishes a lost connection by itself.
    pub reconnects: bool,
    /// Messages pass through a broker shared with other processes, so a
    /// wildcard subscription also receives their traffic (replies meant for
    /// other processes included). RPC clients then subscribe to each call's
    /// own reply topic instead of one shared reply pattern.
    pub shared_broker: bool,
}

/// Moves messages between publishers and subscriptions.
///
/// Object-safe: queues and RPC hold an `Arc<dyn Transport>`.
///
/// ```
/// use std::sync::Arc;
/// use eventforge_core::{MemoryTransport, Message, Pattern, Transport};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
/// let mut sub = transport.subscribe(Pattern::parse("jobs.**")?).await?;
/// transport.send(Message::new("jobs.images.resize", 42)?).await?;
/// assert_eq!(sub.recv().await.unwrap().topic, "jobs.images.resize");
/// transport.close().await?;
/// assert!(transport.send(Message::new("jobs.x", 1)?).await.is_err());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and errors: "memory", "tcp", "redis", "nats".
    fn name(&self) -> &'static str;

    /// What this transport guarantees.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Publishes a message to its topic.
    ///
    /// Fails with [`Error::Closed`] after [`close`](Self::close).
    async fn send(&self, message: Message) -> Result<()>;

    /// Starts receiving the messages whose topic matches `pattern`.
    ///
    /// Fails with [`Error::Closed`] after [`close`](Self::close).
    async fn subscribe(&self, pattern: Pattern) -> Result<Subscription>;

    /// Stops a subscription; its stream ends. False when the id is unknown
    /// (already unsubscribed or dropped).
    async fn unsubscribe(&self, id: SubscriptionId) -> bool;

    /// Sends `message` and waits up to `timeout` for the reply.
    ///
    /// `reply_to` and `correlation_id` are filled in when missing. The
    /// default subscribes to the reply topic before it sends, so a fast
    /// replier cannot be missed; transports with a native request/reply
    /// override it.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Arc<Message>> {
        let (message, correlation_id) = prepare_request(message);
        let reply_to = message.reply_to.clone().unwrap_or_default();
        let subscription = self.subscribe(Pattern::parse(&reply_to)?).await?;
        self.send(message).await?;
        await_reply(subscription, &correlation_id, timeout).await
    }

    /// Closes the transport: subscriptions end, background work stops.
    /// Idempotent.
    async fn close(&self) -> Result<()>;

    /// True once [`close`](Self::close) has been called.
    fn is_closed(&self) -> bool;

    /// Whether anybody subscribes to `topic`, for transports that can tell
    /// locally at no cost (the memory transport); `None` when unknown.
    /// Lets a sender fail fast with [`Error::NoResponders`] without a
    /// round trip.
    fn has_subscribers(&self, topic: &str) -> Option<bool> {
        let _ = topic;
        None
    }
}

/// Fills in a request's `reply_to` (a fresh `_reply.<uuid>`) and
/// `correlation_id` when missing; returns the message and its correlation id.
pub fn prepare_request(mut message: Message) -> (Message, String) {
    if message.reply_to.is_none() {
        message.reply_to = Some(format!("{REPLY_PREFIX}{}", new_id()));
    }
    let correlation_id = message.correlation_id.get_or_insert_with(new_id).clone();
    (message, correlation_id)
}

/// Waits up to `timeout` on `subscription` for the reply carrying
/// `correlation_id` (or no correlation id at all); other messages are skipped.
pub async fn await_reply(
    mut subscription: Subscription,
    correlation_id: &str,
    timeout: Duration,
) -> Result<Arc<Message>> {
    let wait = async {
        while let Some(reply) = subscription.recv().await {
            match reply.correlation_id.as_deref() {
                Some(id) if id != correlation_id => {
                    tracing::debug!(
                        expected = correlation_id,
                        got = id,
                        topic = %reply.topic,
                        "skipping a reply for another request"
                    );
                }
                _ => return Some(reply),
            }
        }
        None
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(Error::Closed("reply subscription")),
        Err(_) => Err(Error::Timeout {
            waiting_for: format!("a reply on {}", subscription.pattern()),
            timeout,
        }),
    }
}
