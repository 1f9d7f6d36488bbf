//! A live subscription: a stream of the messages matching one pattern.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::message::Message;
use crate::topic::Pattern;

/// Identifies a subscription within its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

type DropHook = Box<dyn FnOnce(SubscriptionId) + Send + Sync>;

/// The messages matching a pattern, as a [`Stream`].
///
/// Messages are shared (`Arc<Message>`): a message delivered to ten
/// subscriptions exists once. The stream ends when the subscription is
/// removed with [`Transport::unsubscribe`](crate::Transport::unsubscribe) or
/// the transport closes. Dropping a `Subscription` unsubscribes it.
///
/// ```
/// use eventforge_core::{MemoryTransport, Message, Pattern, Transport};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let transport = MemoryTransport::new();
/// let mut sub = transport.subscribe(Pattern::parse("greetings.*")?).await?;
/// transport.send(Message::new("greetings.en", "hello")?).await?;
/// let msg = sub.next().await.expect("a message");
/// assert_eq!(msg.payload, "hello");
/// # Ok(()) }
/// ```
pub struct Subscription {
    id: SubscriptionId,
    pattern: Pattern,
    receiver: mpsc::Receiver<Arc<Message>>,
    // Tells the transport to stop routing here; run once, on drop.
    on_drop: Option<DropHook>,
}

impl Subscription {
    /// A subscription reading from `receiver`; `on_drop` runs when it is
    /// dropped, so the transport can stop routing to it. For transport
    /// implementers.
    pub fn new(
        id: SubscriptionId,
        pattern: Pattern,
        receiver: mpsc::Receiver<Arc<Message>>,
        on_drop: impl FnOnce(SubscriptionId) + Send + Sync + 'static,
    ) -> Self {
        Subscription {
            id,
            pattern,
            receiver,
            on_drop: Some(Box::new(on_drop)),
        }
    }

    /// Adds `hook` to what runs when the subscription is dropped, after the
    /// hooks already there. For transports that keep state of their own per
    /// subscription (a declaration made to a server, for example).
    pub fn also_on_drop(
        mut self,
        hook: impl FnOnce(SubscriptionId) + Send + Sync + 'static,
    ) -> Self {
        let first = self.on_drop.take();
        self.on_drop = Some(Box::new(move |id| {
            if let Some(first) = first {
                first(id);
            }
            hook(id);
        }));
        self
    }

    /// The id to pass to [`Transport::unsubscribe`](crate::Transport::unsubscribe).
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The pattern this subscription matches.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The next message, or `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        self.receiver.recv().await
    }

    /// Up to `limit` messages that are already waiting, appended to `into`,
    /// waiting for at least one; returns how many were added (0 once ended).
    pub async fn recv_many(&mut self, into: &mut Vec<Arc<Message>>, limit: usize) -> usize {
        self.receiver.recv_many(into, limit).await
    }

    /// A message if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Message>> {
        self.receiver.try_recv().ok()
    }

    /// Number of messages waiting in this subscription's buffer.
    pub fn pending(&self) -> usize {
        self.receiver.len()
    }
}

impl Stream for Subscription {
    type Item = Arc<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.take() {
            hook(self.id);
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("pending", &self.receiver.len())
            .finish()
    }
}
