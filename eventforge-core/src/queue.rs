//! `MessageQueue`: pub-sub and request-reply over any transport.
//!
//! Local or remote is decided by the [`Transport`] it is given; the queue
//! itself is the same over memory, TCP, Redis or NATS.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::handler::HandlerReturn;
use crate::memory::MemoryTransport;
use crate::message::Message;
use crate::subscription::Subscription;
use crate::sync::panic_text;
use crate::topic::{validate_topic, IntoPattern, Pattern};
use crate::transport::Transport;

/// Identifies a handler registered with [`MessageQueue::on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandlerId(pub u64);

impl fmt::Display for HandlerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler-{}", self.0)
    }
}

/// Counters of a [`MessageQueue`]'s handlers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Handler calls that returned successfully.
    pub handled: u64,
    /// Handler calls that returned an error.
    pub handler_errors: u64,
    /// Handler calls that panicked.
    pub handler_panics: u64,
    /// Handlers currently registered.
    pub handlers: usize,
}

/// Pub-sub and request-reply over a [`Transport`]. Cheap to clone: clones
/// share the same handlers and transport.
///
/// ```
/// use std::time::Duration;
/// use eventforge_core::MessageQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let queue = MessageQueue::memory();
///
/// // A responder: doubles what it is sent.
/// let responder = queue.clone();
/// queue.on("math.double", move |msg| {
///     let queue = responder.clone();
///     async move {
///         let n: i64 = msg.payload_as()?;
///         queue.reply(&msg, n * 2).await
///     }
/// }).await?;
///
/// let reply = queue.request("math.double", 21, Duration::from_secs(1)).await?;
/// assert_eq!(reply.payload_as::<i64>()?, 42);
/// queue.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MessageQueue {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    handlers: Mutex<HashMap<HandlerId, Registered>>,
    next_handler: AtomicU64,
    counters: Arc<Counters>,
    // Parent of every handler's stop token: cancelled on close or drop.
    closing: CancellationToken,
    // Lets `close` wait for every handler task to finish its current call.
    tasks: TaskTracker,
    closed: AtomicBool,
}

struct Registered {
    pattern: Pattern,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

impl fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageQueue")
            .field("transport", &self.inner.transport.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl MessageQueue {
    /// A queue over `transport`.
    pub fn new(transport: impl Transport) -> Self {
        Self::from_shared(Arc::new(transport))
    }

    /// A queue over a transport that is shared with other users.
    pub fn from_shared(transport: Arc<dyn Transport>) -> Self {
        MessageQueue {
            inner: Arc::new(Inner {
                transport,
                handlers: Mutex::default(),
                next_handler: AtomicU64::new(1),
                counters: Arc::default(),
                closing: CancellationToken::new(),
                tasks: TaskTracker::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// A queue over a new [`MemoryTransport`] with default options.
    pub fn memory() -> Self {
        Self::new(MemoryTransport::new())
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// Publishes `payload` (anything `Serialize`) on `topic`; returns the message id.
    ///
    /// Fails with [`Error::InvalidTopic`] for an empty topic, an empty segment
    /// or a wildcard, [`Error::Encode`] when the payload is not JSON-able,
    /// and [`Error::Closed`] after close.
    pub async fn publish(&self, topic: &str, payload: impl Serialize) -> Result<String> {
        validate_topic(topic)?;
        let message = Message::new(topic, payload)?;
        let id = message.id.clone();
        self.inner.transport.send(message).await?;
        Ok(id)
    }

    /// Publishes a message built by the caller (headers, reply routing).
    pub async fn send(&self, message: Message) -> Result<()> {
        validate_topic(&message.topic)?;
        self.inner.transport.send(message).await
    }

    /// A stream of the messages matching `pattern` from now on.
    ///
    /// Fails with [`Error::InvalidPattern`] for a malformed pattern.
    pub async fn subscribe(&self, pattern: impl IntoPattern) -> Result<Subscription> {
        let pattern = pattern.into_pattern()?;
        self.inner.transport.subscribe(pattern).await
    }

    /// Calls `handler` for every message matching `pattern`, one message at a
    /// time in arrival order, until [`unsubscribe`](Self::unsubscribe) or
    /// [`close`](Self::close). The handler is an async or a sync closure
    /// taking the message; it may return `()` or a `Result`.
    ///
    /// A handler that returns an error or panics is reported through
    /// `tracing`, counted in [`stats`](Self::stats), and goes on with the
    /// next message; other handlers are not affected. Sync handlers run on
    /// the handler's task and must not block.
    pub async fn on<F, R, K>(&self, pattern: impl IntoPattern, handler: F) -> Result<HandlerId>
    where
        F: Fn(Arc<Message>) -> R + Send + Sync + 'static,
        R: HandlerReturn<K>,
        K: 'static,
    {
        let pattern = pattern.into_pattern()?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("message queue"));
        }
        let subscription = self.inner.transport.subscribe(pattern.clone()).await?;
        let id = HandlerId(self.inner.next_handler.fetch_add(1, Ordering::Relaxed));
        let stop = self.inner.closing.child_token();
        let task = self.inner.tasks.spawn(run_handler(
            id,
            subscription,
            handler,
            stop.clone(),
            Arc::clone(&self.inner.counters),
        ));
        self.handlers().insert(
            id,
            Registered {
                pattern,
                stop,
                task,
            },
        );
        Ok(id)
    }

    /// Removes a handler; a call in progress finishes first. False when the
    /// id is unknown.
    pub async fn unsubscribe(&self, id: HandlerId) -> bool {
        let Some(registered) = self.handlers().remove(&id) else {
            return false;
        };
        registered.stop.cancel();
        // The task only ends by returning: a panic in a handler is caught inside.
        let _ = registered.task.await;
        true
    }

    /// The next message matching `pattern`, waiting up to `timeout`.
    ///
    /// Only messages published after the call are seen. Fails with
    /// [`Error::Timeout`] when none arrives in time.
    pub async fn receive(
        &self,
        pattern: impl IntoPattern,
        timeout: Duration,
    ) -> Result<Arc<Message>> {
        let mut subscription = self.subscribe(pattern).await?;
        match tokio::time::timeout(timeout, subscription.recv()).await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(Error::Closed("transport")),
            Err(_) => Err(Error::Timeout {
                waiting_for: format!("a message on {}", subscription.pattern()),
                timeout,
            }),
        }
    }

    /// Sends `payload` to `topic` and waits up to `timeout` for the reply.
    ///
    /// The reply topic is subscribed before the request is sent. Fails with
    /// [`Error::Timeout`] when no reply comes in time, and with
    /// [`Error::NoResponders`] at once when the transport knows nobody listens.
    pub async fn request(
        &self,
        topic: &str,
        payload: impl Serialize,
        timeout: Duration,
    ) -> Result<Arc<Message>> {
        validate_topic(topic)?;
        let message = Message::new(topic, payload)?;
        self.inner.transport.request(message, timeout).await
    }

    /// Answers `original` with `payload`, on its `reply_to` topic and with
    /// its correlation id.
    ///
    /// Fails with [`Error::NoReplyTo`] when `original` expects no reply.
    pub async fn reply(&self, original: &Message, payload: impl Serialize) -> Result<()> {
        let reply_to = original
            .reply_to
            .as_deref()
            .ok_or_else(|| Error::NoReplyTo {
                id: original.id.clone(),
                topic: original.topic.clone(),
            })?;
        let mut reply = Message::new(reply_to, payload)?;
        reply.correlation_id = original.correlation_id.clone();
        self.send(reply).await
    }

    /// The distinct patterns that have handlers, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .handlers()
            .values()
            .map(|registered| registered.pattern.to_string())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Handler counters.
    pub fn stats(&self) -> QueueStats {
        let counters = &self.inner.counters;
        QueueStats {
            handled: counters.handled.load(Ordering::Relaxed),
            handler_errors: counters.errors.load(Ordering::Relaxed),
            handler_panics: counters.panics.load(Ordering::Relaxed),
            handlers: self.handlers().len(),
        }
    }

    /// Stops every handler (calls in progress finish; messages still
    /// buffered are not handled), then closes the transport. Idempotent.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.closing.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.handlers().clear();
        self.inner.transport.close().await
    }

    /// True once [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn handlers(&self) -> std::sync::MutexGuard<'_, HashMap<HandlerId, Registered>> {
        self.inner
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

async fn run_handler<F, R, K>(
    id: HandlerId,
    mut subscription: Subscription,
    handler: F,
    stop: CancellationToken,
    counters: Arc<Counters>,
) where
    F: Fn(Arc<Message>) -> R + Send + Sync + 'static,
    R: HandlerReturn<K>,
    K: 'static,
{
    // One cancellation future for the handler's life: a new one per message
    // would register with the token (a lock) on every message.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut stopped => break,
            message = subscription.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let call = AssertUnwindSafe(async { handler(Arc::clone(&message)).into_future().await });
        match call.catch_unwind().await {
            Ok(Ok(())) => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    handler = %id,
                    pattern = %subscription.pattern(),
                    topic = %message.topic,
                    message_id = %message.id,
                    %error,
                    "message handler returned an error"
                );
            }
            Err(panic) => {
                counters.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    handler = %id,
                    pattern = %subscription.pattern(),
                    topic = %message.topic,
                    message_id = %message.id,
                    panic = panic_text(&*panic),
                    "message handler panicked"
                );
            }
        }
    }
}
