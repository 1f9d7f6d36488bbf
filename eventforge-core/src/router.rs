//! Local delivery: from one message to every matching subscription.
//!
//! Every transport ends in a [`Router`]: the memory transport routes what is
//! published in-process, network transports route what arrives from the
//! wire. It owns the per-subscription buffers and applies the
//! [`OverflowPolicy`] when one is full.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::pattern_trie::PatternTrie;
use crate::reply_waiter::ReplyWaiters;
use crate::subscription::{Subscription, SubscriptionId};
use crate::sync::{read, write};
use crate::topic::Pattern;
use crate::transport::prepare_request;

/// Default number of messages a subscription buffers before its policy applies.
pub const DEFAULT_BUFFER: usize = 1024;

// Subscription ids are unique in the process, not just per router: a network
// transport may spread its subscriptions over several routers (one per broker
// subscription) and still answer `unsubscribe(id)` without ambiguity.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What happens when a subscription's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// The publisher waits until the subscriber makes room (backpressure).
    /// Nothing is lost, and a subscriber that never reads stalls publishers
    /// of the topics it matches.
    #[default]
    Wait,
    /// The message is dropped for that subscriber only; the drop is counted
    /// in [`RouterStats::dropped`] and logged. Publishers never wait.
    DropNewest,
    /// Like `DropNewest`, and the publisher also gets [`Error::BufferFull`]
    /// (the other subscribers still receive the message).
    Fail,
}

/// Counters of a [`Router`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Messages routed (whether or not anybody matched).
    pub routed: u64,
    /// Deliveries dropped because a subscription's buffer was full.
    pub dropped: u64,
    /// Times a publisher had to wait for a full buffer.
    pub waited: u64,
    /// Subscriptions currently registered.
    pub subscriptions: usize,
}

/// Routes messages to subscriptions by pattern.
///
/// ```
/// use std::sync::Arc;
/// use eventforge_core::{Message, OverflowPolicy, Pattern, Router};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let router = Router::new("example", 16, OverflowPolicy::Wait);
/// let mut sub = router.subscribe(Pattern::parse("a.*")?)?;
/// let matched = router.route(Arc::new(Message::new("a.b", 1)?)).await?;
/// assert_eq!(matched, 1);
/// assert_eq!(sub.recv().await.unwrap().payload, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Router {
    // Named in errors and logs ("memory", "tcp", ...).
    transport: &'static str,
    table: RwLock<Table>,
    // Buffer size of each new subscription.
    capacity: usize,
    policy: OverflowPolicy,
    closed: AtomicBool,
    // One-shot routes for replies awaited by `request`, keyed by reply topic
    // and tagged with the expected correlation id: cheaper than a
    // subscription for a route that lives one round trip.
    replies: ReplyWaiters<Box<str>, Arc<Message>, Box<str>>,
    routed: AtomicU64,
    dropped: AtomicU64,
    waited: AtomicU64,
    // Lets subscriptions unsubscribe themselves on drop without keeping the
    // router alive.
    this: Weak<Router>,
}

#[derive(Debug, Default)]
struct Table {
    trie: PatternTrie<Route>,
    patterns: HashMap<SubscriptionId, Pattern>,
}

#[derive(Debug)]
struct Route {
    id: SubscriptionId,
    sender: mpsc::Sender<Arc<Message>>,
    // Drops on this route, to log the first and then one in a thousand.
    dropped: AtomicU64,
}

impl Router {
    /// A router whose subscriptions buffer `capacity` messages each (at least 1).
    pub fn new(transport: &'static str, capacity: usize, policy: OverflowPolicy) -> Arc<Self> {
        Arc::new_cyclic(|this| Router {
            transport,
            table: RwLock::default(),
            capacity: capacity.max(1),
            policy,
            closed: AtomicBool::new(false),
            replies: ReplyWaiters::new("transport"),
            routed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            this: this.clone(),
        })
    }

    /// Registers a subscription to `pattern`.
    ///
    /// Fails with [`Error::Closed`] once the router is closed.
    pub fn subscribe(&self, pattern: Pattern) -> Result<Subscription> {
        let id = SubscriptionId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let (sender, receiver) = mpsc::channel(self.capacity);
        {
            let mut table = self.write();
            // Checked under the lock so that `close` cannot miss this route.
            if self.is_closed() {
                return Err(Error::Closed("transport"));
            }
            table.trie.insert(
                &pattern,
                Route {
                    id,
                    sender,
                    dropped: AtomicU64::new(0),
                },
            );
            table.patterns.insert(id, pattern.clone());
        }
        let router = self.this.clone();
        Ok(Subscription::new(id, pattern, receiver, move |id| {
            if let Some(router) = router.upgrade() {
                router.unsubscribe(id);
            }
        }))
    }

    /// Removes a subscription; its stream ends once drained. False when unknown.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut table = self.write();
        let Some(pattern) = table.patterns.remove(&id) else {
            return false;
        };
        table
            .trie
            .remove(&pattern, |route| route.id == id)
            .is_some()
    }

    /// Delivers `message` to every subscription whose pattern matches its
    /// topic, applying the overflow policy; returns how many matched.
    pub async fn route(&self, message: Arc<Message>) -> Result<usize> {
        self.routed.fetch_add(1, Ordering::Relaxed);
        let mut matched = usize::from(self.complete_reply(&message));
        let mut full: Vec<(mpsc::Sender<Arc<Message>>, Arc<Message>)> = Vec::new();
        let mut overflowed = false;
        {
            let table = self.read();
            table.trie.for_each_match(&message.topic, |route| {
                match route.sender.try_send(Arc::clone(&message)) {
                    Ok(()) => matched += 1,
                    Err(TrySendError::Full(message)) => {
                        matched += 1;
                        if self.policy == OverflowPolicy::Wait {
                            full.push((route.sender.clone(), message));
                        } else {
                            overflowed = true;
                            self.record_drop(route, &message);
                        }
                    }
                    // The subscription is being dropped; its hook removes the route.
                    Err(TrySendError::Closed(_)) => {}
                }
            });
        }
        for (sender, message) in full {
            self.waited.fetch_add(1, Ordering::Relaxed);
            // An error means the subscriber went away meanwhile: nobody to deliver to.
            let _ = sender.send(message).await;
        }
        if overflowed && self.policy == OverflowPolicy::Fail {
            return Err(Error::BufferFull {
                pattern: message.topic.clone(),
                capacity: self.capacity,
            });
        }
        Ok(matched)
    }

    /// Sends a request through `send` and waits up to `timeout` for its
    /// reply on a one-shot route of this router: the first message on the
    /// request's reply topic whose correlation id is the request's (or that
    /// has none). `reply_to` and `correlation_id` are filled in when
    /// missing. The route exists before `send` runs, so a fast reply is not
    /// missed; it is removed however the request ends, so a late reply
    /// leaks nothing.
    ///
    /// Fails with [`Error::Closed`] once the router is closed, with
    /// [`Error::Timeout`] when no reply comes in time, and with whatever
    /// `send` fails with.
    pub async fn request<F, Fut>(
        &self,
        message: Message,
        timeout: Duration,
        send: F,
    ) -> Result<Arc<Message>>
    where
        F: FnOnce(Message) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let (message, correlation_id) = prepare_request(message);
        let reply_to: Box<str> = message.reply_to.as_deref().unwrap_or_default().into();
        let reply = self
            .replies
            .wait_for_tagged(reply_to.clone(), correlation_id.into())?;
        send(message).await?;
        reply
            .wait(timeout, || format!("a reply on {reply_to}"))
            .await
    }

    // Hands `message` to the request awaiting it, if any.
    fn complete_reply(&self, message: &Arc<Message>) -> bool {
        if self.replies.is_empty() {
            return false;
        }
        let got = message.correlation_id.as_deref();
        let accept = |expected: &str| match got {
            Some(got) if got != expected => {
                tracing::debug!(
                    topic = %message.topic,
                    expected,
                    got,
                    "skipping a reply for another request"
                );
                false
            }
            _ => true,
        };
        self.replies.complete_if(
            message.topic.as_str(),
            |expected| accept(expected),
            Arc::clone(message),
        )
    }

    fn record_drop(&self, route: &Route, message: &Message) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let n = route.dropped.fetch_add(1, Ordering::Relaxed);
        if n % 1000 == 0 {
            tracing::warn!(
                transport = self.transport,
                subscription = %route.id,
                topic = %message.topic,
                message_id = %message.id,
                dropped_so_far = n + 1,
                capacity = self.capacity,
                "subscription buffer full: message dropped for this subscriber"
            );
        }
    }

    /// True when at least one subscription matches `topic`.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        let mut any = false;
        self.read().trie.for_each_match(topic, |_| any = true);
        any
    }

    /// The distinct patterns currently subscribed, sorted.
    pub fn patterns(&self) -> Vec<Pattern> {
        let mut patterns: Vec<Pattern> = self.read().patterns.values().cloned().collect();
        patterns.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        patterns.dedup();
        patterns
    }

    /// Counters since creation.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            routed: self.routed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            subscriptions: self.read().patterns.len(),
        }
    }

    /// The transport name given at creation.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// Closes the router: every subscription's stream ends once drained, and
    /// new subscriptions fail. Idempotent.
    pub fn close(&self) {
        let mut table = self.write();
        self.closed.store(true, Ordering::Release);
        *table = Table::default();
        drop(table);
        self.replies.close();
    }

    /// True once [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        read(&self.table)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        write(&self.table)
    }
}
