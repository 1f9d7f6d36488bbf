//! The in-process transport: local pub-sub and request-reply.
//!
//! Messages are never serialised on this path: subscribers share the
//! published `Message` through an `Arc`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::router::{OverflowPolicy, Router, RouterStats, DEFAULT_BUFFER};
use crate::subscription::{Subscription, SubscriptionId};
use crate::topic::Pattern;
use crate::transport::{Capabilities, Transport};

/// An in-process [`Transport`]. Cheap to clone: clones share the same bus.
///
/// Each subscription buffers up to [`buffer`](MemoryTransportBuilder::buffer)
/// messages (default 1024); what happens when one is full is the
/// [`OverflowPolicy`] (default: the publisher waits).
///
/// ```
/// use eventforge_core::{MemoryTransport, OverflowPolicy};
///
/// let lossy = MemoryTransport::builder()
///     .buffer(64)
///     .overflow(OverflowPolicy::DropNewest)
///     .build();
/// assert_eq!(lossy.stats().dropped, 0);
/// ```
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    router: Arc<Router>,
}

/// Options of a [`MemoryTransport`].
#[derive(Debug, Clone)]
pub struct MemoryTransportBuilder {
    buffer: usize,
    overflow: OverflowPolicy,
}

impl MemoryTransportBuilder {
    /// Messages each subscription buffers before the overflow policy applies (at least 1).
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages;
        self
    }

    /// What happens when a subscription's buffer is full.
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// Builds the transport.
    pub fn build(self) -> MemoryTransport {
        MemoryTransport {
            router: Router::new("memory", self.buffer, self.overflow),
        }
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTransport {
    /// A transport with the default buffer (1024) and policy (publisher waits).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Options for a new transport.
    pub fn builder() -> MemoryTransportBuilder {
        MemoryTransportBuilder {
            buffer: DEFAULT_BUFFER,
            overflow: OverflowPolicy::default(),
        }
    }

    /// Delivery counters.
    pub fn stats(&self) -> RouterStats {
        self.router.stats()
    }

    fn check_open(&self) -> Result<()> {
        if self.router.is_closed() {
            Err(Error::Closed("memory transport"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_publisher: true,
            reports_no_responders: true,
            reconnects: false,
            shared_broker: false,
        }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.check_open()?;
        self.router.route(Arc::new(message)).await.map(drop)
    }

    async fn subscribe(&self, pattern: Pattern) -> Result<Subscription> {
        self.check_open()?;
        self.router.subscribe(pattern)
    }

    async fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.router.unsubscribe(id)
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Arc<Message>> {
        self.check_open()?;
        let router = &self.router;
        router
            .request(message, timeout, |message| async move {
                let topic = message.topic.clone();
                match router.route(Arc::new(message)).await? {
                    0 => Err(Error::NoResponders { topic }),
                    _ => Ok(()),
                }
            })
            .await
    }

    async fn close(&self) -> Result<()> {
        self.router.close();
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.router.is_closed()
    }

    fn has_subscribers(&self, topic: &str) -> Option<bool> {
        Some(self.router.has_subscribers(topic))
    }
}
