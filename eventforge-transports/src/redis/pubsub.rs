//! Pub-sub and request-reply through a Redis server (the "remote" column of
//! the 2x2: a [`MessageQueue`](eventforge_core::MessageQueue) on this
//! transport talks to every process connected to the same Redis).
//!
//! Messages travel as the protocol's JSON on Redis pub/sub: `PUBLISH <topic>`
//! and `PSUBSCRIBE` with `*` and `**` both mapped to Redis `*` (which also
//! crosses dots), then exact segment-aware filtering on receipt by a
//! [`Router`](eventforge_core::Router). Two connections are used: one for
//! publishing (a writer task sends queued messages as pipelined batches) and
//! one for subscriptions, re-established with capped backoff when lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventforge_core::{
    await_reply, prepare_request, Capabilities, Error, Message, OverflowPolicy, Pattern, Result,
    Segment, Subscription, SubscriptionId, Transport, DEFAULT_BUFFER, REPLY_PREFIX,
};
use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker_subscriptions::BrokerSubscriptions;

const NAME: &str = "redis";

/// Most messages sent to Redis in one pipelined write.
const MAX_BATCH: usize = 512;

/// Messages waiting for the writer task before `send` waits (backpressure).
const PUBLISH_QUEUE: usize = 4096;

/// Maps a pattern to the Redis glob that selects a superset of its topics:
/// `*` and `**` become `*`, glob characters in literal segments are escaped.
///
/// ```
/// use eventforge_core::Pattern;
/// use eventforge_transports::redis::redis_pattern;
///
/// assert_eq!(redis_pattern(&Pattern::parse("orders.*.created")?), "orders.*.created");
/// assert_eq!(redis_pattern(&Pattern::parse("a.**.c")?), "a.*.c");
/// assert_eq!(redis_pattern(&Pattern::parse("what?.x")?), "what\\?.x");
/// # Ok::<(), eventforge_core::Error>(())
/// ```
pub fn redis_pattern(pattern: &Pattern) -> String {
    let mut glob = String::with_capacity(pattern.as_str().len());
    for (i, segment) in pattern.segments().iter().enumerate() {
        if i > 0 {
            glob.push('.');
        }
        match segment {
            Segment::Star | Segment::DoubleStar => glob.push('*'),
            Segment::Literal(text) => {
                for c in text.chars() {
                    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                        glob.push('\\');
                    }
                    glob.push(c);
                }
            }
        }
    }
    glob
}

/// Counters of a [`RedisTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Messages Redis accepted (`PUBLISH` answered).
    pub published: u64,
    /// Messages whose `PUBLISH` failed (the sender got the error).
    pub publish_errors: u64,
    /// Messages received from Redis and routed locally.
    pub received: u64,
    /// Messages received that were not a valid eventforge Message (dropped).
    pub undecodable: u64,
    /// Times the subscription connection was lost.
    pub disconnects: u64,
    /// Times it was re-established and every pattern re-subscribed.
    pub reconnects: u64,
    /// Distinct patterns currently subscribed on Redis.
    pub broker_subscriptions: usize,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    undecodable: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
}

/// Options of a [`RedisTransport`]; made by [`RedisTransport::builder`].
#[derive(Debug, Clone)]
pub struct RedisTransportBuilder {
    url: String,
    buffer: usize,
    overflow: OverflowPolicy,
    initial_backoff: Duration,
    max_backoff: Duration,
    command_timeout: Duration,
}

impl RedisTransportBuilder {
    /// Messages each subscription buffers before the overflow policy applies
    /// (default 1024).
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages;
        self
    }

    /// What happens when a subscription's buffer is full (default: the
    /// receiving task waits, and Redis buffers meanwhile).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// First and largest delay between reconnection attempts (default 50 ms
    /// doubling up to 2 s).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.initial_backoff);
        self
    }

    /// How long connecting, subscribing and unsubscribing may take before
    /// they fail (default 5 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Connects both connections and starts the background tasks.
    ///
    /// Fails with [`Error::Transport`] when the URL is malformed or Redis
    /// does not answer.
    pub async fn connect(self) -> Result<RedisTransport> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| transport_error(&e))?;
        let timeout = self.command_timeout;
        let publisher = within(timeout, client.get_multiplexed_async_connection()).await?;
        let (mut sink, stream) = within(timeout, client.get_async_pubsub()).await?.split();
        let replies = Replies::new();
        within(timeout, sink.psubscribe(&replies.pattern)).await?;
        let (publish, queue) = mpsc::channel(PUBLISH_QUEUE);
        let (released, released_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            subscriptions: BrokerSubscriptions::new(NAME, self.buffer, self.overflow),
            control: tokio::sync::Mutex::new(Control { sink: Some(sink) }),
            counters: Counters::default(),
            reconnections: watch::Sender::new(0),
            shutdown: tokio_util::sync::CancellationToken::new(),
            replies,
            publisher_stale: AtomicBool::new(false),
            options: self,
        });
        let writer = tokio::spawn(write_loop(Arc::clone(&shared), publisher, queue));
        let reader = tokio::spawn(read_loop(Arc::clone(&shared), stream, released_rx));
        tracing::debug!(url = %redacted(&shared.options.url), "redis transport connected");
        Ok(RedisTransport {
            shared,
            publish,
            released,
            closed: AtomicBool::new(false),
            tasks: Mutex::new(vec![writer, reader]),
        })
    }
}

/// A [`Transport`] over Redis pub/sub.
///
/// ```
/// use eventforge_core::MessageQueue;
/// use eventforge_transports::redis::RedisTransport;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let transport = RedisTransport::connect("redis://127.0.0.1:6379/0").await?;
/// let queue = MessageQueue::new(transport);
/// let mut orders = queue.subscribe("orders.*").await?; // confirmed by Redis
/// queue.publish("orders.created", serde_json::json!({"id": 7})).await?;
/// # Ok(()) }
/// ```
///
/// `subscribe` returns once Redis has confirmed the subscription, so a
/// message published after it returns is delivered. Each distinct Redis
/// pattern is subscribed once however many local subscriptions map to it,
/// and each local subscription receives a message once even when patterns
/// overlap. `request` fails at once with [`Error::NoResponders`] when
/// nobody is subscribed to the request topic (`PUBLISH` answered 0); a
/// Redis pattern that matches the topic only before local filtering (`a.*`
/// for a subscriber of `a.*` seeing `a.b.c`) counts as a listener, and such
/// a request waits for its timeout instead.
///
/// Redis does not buffer for a subscriber: what is published while the
/// subscription connection is down is missed. The transport reconnects with
/// capped backoff, re-subscribes every pattern, and reports the gap as a
/// `tracing` warning and in [`RedisStats::disconnects`] /
/// [`RedisStats::reconnects`].
#[derive(Debug)]
pub struct RedisTransport {
    shared: Arc<Shared>,
    // Queue of the writer task.
    publish: mpsc::Sender<Publish>,
    // Ids of dropped subscriptions, for the reader task to release their
    // Redis pattern when it was the last one (a drop cannot await).
    released: mpsc::UnboundedSender<SubscriptionId>,
    closed: AtomicBool,
    // Joined by `close`, so no task outlives the transport's close.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// State shared with the background tasks.
#[derive(Debug)]
struct Shared {
    client: redis::Client,
    subscriptions: BrokerSubscriptions<String>,
    // Serialises changes to Redis subscriptions: a PSUBSCRIBE and a
    // PUNSUBSCRIBE of the same pattern must not cross. Held across the
    // command's await, which completes through the redis client's own
    // connection task, never through one that takes this lock.
    control: tokio::sync::Mutex<Control>,
    counters: Counters,
    // Completed reconnections, for callers who want to await one.
    reconnections: watch::Sender<u64>,
    // Ends the background tasks.
    shutdown: tokio_util::sync::CancellationToken,
    // Where replies to this transport's requests arrive.
    replies: Replies,
    // Set when the subscription connection is lost: the publishing
    // connection to the same server is then most likely dead too, and is
    // replaced before the next batch instead of failing it.
    publisher_stale: AtomicBool,
    options: RedisTransportBuilder,
}

/// Replies to this transport's requests, on one pattern subscription made
/// at connect, so a request costs no PSUBSCRIBE/PUNSUBSCRIBE of its own.
///
/// Reply topics stay `_reply.<uuid4>` as the protocol has them: the uuid's
/// first group is fixed per transport (the rest is random), and the
/// transport subscribes to `_reply.<first group>-*`.
#[derive(Debug)]
struct Replies {
    // `_reply.<first group>-`: every reply topic of this transport starts so.
    prefix: String,
    // The Redis pattern covering them.
    pattern: String,
    waiting: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
}

impl Replies {
    fn new() -> Self {
        let id = eventforge_core::new_id();
        let first_group = id.split('-').next().unwrap_or_default();
        let prefix = format!("{REPLY_PREFIX}{first_group}-");
        Replies {
            pattern: format!("{prefix}*"),
            prefix,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh reply topic: `_reply.` and a uuid v4 whose first group is ours.
    fn topic(&self) -> String {
        let id = eventforge_core::new_id();
        let rest = id.split_once('-').map(|(_, rest)| rest).unwrap_or_default();
        format!("{}{rest}", self.prefix)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<u8>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a reply to its request; a late or second reply finds nobody.
    fn arrived(&self, channel: &str, payload: &[u8]) {
        if let Some(waiter) = self.waiting().remove(channel) {
            let _ = waiter.send(payload.to_vec());
        }
    }
}

/// Forgets a request's reply topic however the request ends.
struct PendingReply<'a> {
    replies: &'a Replies,
    topic: String,
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        self.replies.waiting().remove(&self.topic);
    }
}

#[derive(Debug)]
struct Control {
    // None while the subscription connection is down.
    sink: Option<PubSubSink>,
}

/// One message for the writer task.
#[derive(Debug)]
struct Publish {
    channel: String,
    payload: Vec<u8>,
    // Receivers counted by Redis, or why the PUBLISH failed.
    done: oneshot::Sender<std::result::Result<i64, String>>,
}

impl RedisTransport {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) with default
    /// options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Options for a transport connecting to `url`.
    pub fn builder(url: impl Into<String>) -> RedisTransportBuilder {
        RedisTransportBuilder {
            url: url.into(),
            buffer: DEFAULT_BUFFER,
            overflow: OverflowPolicy::default(),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
        }
    }

    /// Counters since connecting.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        RedisStats {
            published: c.published.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            broker_subscriptions: self.shared.subscriptions.len(),
        }
    }

    /// The number of completed reconnections (every pattern re-subscribed),
    /// as a value that can be awaited: `reconnections().wait_for(|n| *n > 0)`.
    pub fn reconnections(&self) -> watch::Receiver<u64> {
        self.shared.reconnections.subscribe()
    }

    /// Publishes `message` and returns how many Redis subscribers (pattern
    /// subscriptions of every client) received it.
    pub async fn publish(&self, message: Message) -> Result<i64> {
        self.check_open()?;
        let payload = message.to_json()?;
        let (done, outcome) = oneshot::channel();
        let publish = Publish {
            channel: message.topic,
            payload,
            done,
        };
        self.publish
            .send(publish)
            .await
            .map_err(|_| Error::Closed(NAME))?;
        match outcome.await {
            Ok(Ok(receivers)) => Ok(receivers),
            Ok(Err(reason)) => Err(Error::transport(NAME, reason)),
            Err(_) => Err(Error::Closed(NAME)),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed(NAME))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        // One writer task and one subscription connection keep publish order.
        capabilities.ordered_per_publisher = true;
        capabilities.reports_no_responders = true;
        capabilities.reconnects = true;
        capabilities.shared_broker = true;
        capabilities
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.publish(message).await.map(drop)
    }

    async fn subscribe(&self, pattern: Pattern) -> Result<Subscription> {
        self.check_open()?;
        let shared = &self.shared;
        let key = redis_pattern(&pattern);
        let mut control = shared.control.lock().await;
        let added = shared
            .subscriptions
            .add(key.clone(), pattern)
            .ok_or(Error::Closed(NAME))?;
        if added.is_new {
            let outcome = match control.sink.as_mut() {
                Some(sink) => within(shared.options.command_timeout, sink.psubscribe(&key)).await,
                None => Err(Error::transport(
                    NAME,
                    "the subscription connection to Redis is down; reconnecting, try again",
                )),
            };
            if let Err(error) = outcome {
                shared.subscriptions.remove(added.subscription.id());
                return Err(error);
            }
            tracing::debug!(pattern = %key, "redis pattern subscribed");
        }
        let released = self.released.clone();
        Ok(added.subscription.also_on_drop(move |id| {
            // The reader task is gone only when the transport is closed, and
            // then there is nothing left to release.
            let _ = released.send(id);
        }))
    }

    async fn unsubscribe(&self, id: SubscriptionId) -> bool {
        release(&self.shared, id).await
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Arc<Message>> {
        self.check_open()?;
        if message.reply_to.is_none() {
            let replies = &self.shared.replies;
            let reply_to = replies.topic();
            let (arrived, reply) = oneshot::channel();
            replies.waiting().insert(reply_to.clone(), arrived);
            let _pending = PendingReply {
                replies,
                topic: reply_to.clone(),
            };
            message.reply_to = Some(reply_to);
            message
                .correlation_id
                .get_or_insert_with(eventforge_core::new_id);
            let (topic, id) = (message.topic.clone(), message.id.clone());
            if self.publish(message).await? == 0 {
                tracing::debug!(topic = %topic, message_id = %id, "redis request has no responders");
                return Err(Error::NoResponders { topic });
            }
            return match tokio::time::timeout(timeout, reply).await {
                Ok(Ok(payload)) => Message::from_json(&payload).map(Arc::new),
                Ok(Err(_)) => Err(Error::Closed(NAME)),
                Err(_) => Err(Error::Timeout {
                    waiting_for: format!("a reply to {topic} (message {id})"),
                    timeout,
                }),
            };
        }
        // The caller chose where the reply goes: subscribe there first.
        let (message, correlation_id) = prepare_request(message);
        let reply_to = message.reply_to.clone().unwrap_or_default();
        // Subscribed (and confirmed) before sending, so a fast reply is not missed.
        let subscription = self.subscribe(Pattern::parse(&reply_to)?).await?;
        let topic = message.topic.clone();
        let id = message.id.clone();
        if self.publish(message).await? == 0 {
            tracing::debug!(topic = %topic, message_id = %id, "redis request has no responders");
            return Err(Error::NoResponders { topic });
        }
        await_reply(subscription, &correlation_id, timeout).await
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.shutdown.cancel();
        self.shared.subscriptions.close();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            // A task that panicked has nothing left to clean up.
            let _ = task.await;
        }
        tracing::debug!("redis transport closed");
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for RedisTransport {
    fn drop(&mut self) {
        // Background tasks hold only `Shared`: stop them with the transport.
        self.shared.shutdown.cancel();
        self.shared.subscriptions.close();
    }
}

/// Removes local subscription `id`; unsubscribes its Redis pattern when it
/// was the last one. False when the id is unknown.
async fn release(shared: &Shared, id: SubscriptionId) -> bool {
    let mut control = shared.control.lock().await;
    let Some(emptied) = shared.subscriptions.remove(id) else {
        return false;
    };
    if let (Some(key), Some(sink)) = (emptied, control.sink.as_mut()) {
        // On failure the connection is being lost, and the reconnection
        // re-subscribes only the patterns still needed.
        match within(shared.options.command_timeout, sink.punsubscribe(&key)).await {
            Ok(()) => tracing::debug!(pattern = %key, "redis pattern unsubscribed"),
            Err(error) => tracing::debug!(pattern = %key, %error, "redis punsubscribe failed"),
        }
    }
    true
}

/// Sends queued messages to Redis, as many as are waiting in one pipeline.
async fn write_loop(
    shared: Arc<Shared>,
    connection: MultiplexedConnection,
    mut queue: mpsc::Receiver<Publish>,
) {
    let mut connection = Some(connection);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Earliest time of the next connection attempt after a failed one, so a
    // down server is not hammered by every batch.
    let mut next_attempt = Instant::now();
    let mut backoff = shared.options.initial_backoff;
    // Made once: each `cancelled()` registers a waiter under a lock.
    let stopped = shared.shutdown.cancelled();
    tokio::pin!(stopped);
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut stopped => return,
            received = queue.recv_many(&mut batch, MAX_BATCH) => received,
        };
        if received == 0 {
            return;
        }
        if shared.publisher_stale.swap(false, Ordering::AcqRel) && connection.take().is_some() {
            next_attempt = Instant::now();
        }
        if connection.is_none() && Instant::now() >= next_attempt {
            match within(
                shared.options.command_timeout,
                shared.client.get_multiplexed_async_connection(),
            )
            .await
            {
                Ok(fresh) => {
                    tracing::info!("redis publishing connection re-established");
                    connection = Some(fresh);
                    backoff = shared.options.initial_backoff;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "redis publishing connection failed");
                    next_attempt = Instant::now() + backoff;
                    backoff = (backoff * 2).min(shared.options.max_backoff);
                }
            }
        }
        let outcome = match connection.as_mut() {
            Some(conn) => {
                let mut pipe = redis::pipe();
                for publish in &batch {
                    pipe.cmd("PUBLISH")
                        .arg(&publish.channel)
                        .arg(&publish.payload);
                }
                tokio::select! {
                    biased;
                    _ = &mut stopped => return,
                    outcome = pipe.query_async::<Vec<i64>>(conn) => outcome.map_err(|e| e.to_string()),
                }
            }
            None => Err("not connected to Redis (reconnecting)".to_owned()),
        };
        let count = batch.len() as u64;
        match outcome {
            Ok(receivers) => {
                shared
                    .counters
                    .published
                    .fetch_add(count, Ordering::Relaxed);
                for (publish, receivers) in batch.drain(..).zip(receivers) {
                    let _ = publish.done.send(Ok(receivers));
                }
            }
            Err(reason) => {
                shared
                    .counters
                    .publish_errors
                    .fetch_add(count, Ordering::Relaxed);
                if connection.take().is_some() {
                    tracing::warn!(error = %reason, messages = count, "redis publish failed; reconnecting");
                    next_attempt = Instant::now();
                }
                for publish in batch.drain(..) {
                    tracing::debug!(topic = %publish.channel, error = %reason, "redis publish failed");
                    let _ = publish.done.send(Err(reason.clone()));
                }
            }
        }
        // Whatever the senders did not take is dropped here.
        batch.clear();
    }
}

/// Reads the subscription connection, routes messages locally, releases
/// patterns of dropped subscriptions, and reconnects when the connection is
/// lost.
async fn read_loop(
    shared: Arc<Shared>,
    mut stream: PubSubStream,
    mut released: mpsc::UnboundedReceiver<SubscriptionId>,
) {
    let stopped = shared.shutdown.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            Some(id) = released.recv() => {
                release(&shared, id).await;
            }
            message = stream.next() => match message {
                Some(message) => {
                    tokio::select! {
                        biased;
                        _ = &mut stopped => return,
                        _ = deliver(&shared, message) => {}
                    }
                }
                None => match reconnect(&shared).await {
                    Some(fresh) => stream = fresh,
                    None => return,
                },
            },
        }
    }
}

async fn deliver(shared: &Shared, message: redis::Msg) {
    let Ok(pattern) = message.get_pattern::<String>() else {
        return;
    };
    if pattern == shared.replies.pattern {
        shared
            .replies
            .arrived(message.get_channel_name(), message.get_payload_bytes());
        return;
    }
    let Some(router) = shared.subscriptions.router(&pattern) else {
        // A pattern being unsubscribed: nobody local wants it any more.
        return;
    };
    match Message::from_json(message.get_payload_bytes()) {
        Ok(decoded) => {
            shared.counters.received.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = router.route(Arc::new(decoded)).await {
                tracing::debug!(channel = message.get_channel_name(), %error, "redis delivery incomplete");
            }
        }
        Err(error) => {
            let n = shared.counters.undecodable.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    channel = message.get_channel_name(),
                    %error,
                    dropped_so_far = n + 1,
                    "redis message is not an eventforge Message; dropped"
                );
            }
        }
    }
}

/// Re-establishes the subscription connection with capped exponential
/// backoff and re-subscribes every pattern; None when shutting down.
async fn reconnect(shared: &Shared) -> Option<PubSubStream> {
    let lost_at = Instant::now();
    shared.counters.disconnects.fetch_add(1, Ordering::Relaxed);
    shared.publisher_stale.store(true, Ordering::Release);
    tracing::warn!(
        patterns = shared.subscriptions.len(),
        "redis subscription connection lost; messages published until it is back are missed"
    );
    shared.control.lock().await.sink = None;
    let mut backoff = shared.options.initial_backoff;
    let mut attempts: u64 = 0;
    loop {
        if shared.shutdown.is_cancelled() {
            return None;
        }
        attempts += 1;
        match resubscribe(shared).await {
            Ok(stream) => {
                shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                shared.reconnections.send_modify(|n| *n += 1);
                tracing::warn!(
                    gap_ms = lost_at.elapsed().as_millis() as u64,
                    attempts,
                    patterns = shared.subscriptions.len(),
                    "redis subscription connection re-established; patterns re-subscribed"
                );
                return Some(stream);
            }
            Err(error) => {
                tracing::debug!(%error, attempts, retry_in = ?backoff, "redis reconnection failed");
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.options.max_backoff);
    }
}

async fn resubscribe(shared: &Shared) -> Result<PubSubStream> {
    let timeout = shared.options.command_timeout;
    let (mut sink, stream) = within(timeout, shared.client.get_async_pubsub())
        .await?
        .split();
    let mut control = shared.control.lock().await;
    let mut patterns = shared.subscriptions.keys();
    patterns.push(shared.replies.pattern.clone());
    within(timeout, sink.psubscribe(&patterns)).await?;
    control.sink = Some(sink);
    Ok(stream)
}

/// Runs a Redis command with a deadline, turning both failures into [`Error`].
async fn within<T>(
    timeout: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(transport_error(&error)),
        Err(_) => Err(Error::Timeout {
            waiting_for: "an answer from Redis".to_owned(),
            timeout,
        }),
    }
}

fn transport_error(error: &redis::RedisError) -> Error {
    Error::transport(NAME, error.to_string())
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_star_and_star_both_become_the_redis_star() {
        let cases = [
            ("a.b", "a.b"),
            ("a.*", "a.*"),
            ("a.**", "a.*"),
            ("**.c", "*.c"),
            ("**", "*"),
            ("a.[x].\\", "a.\\[x\\].\\\\"),
        ];
        for (pattern, expected) in cases {
            assert_eq!(redis_pattern(&Pattern::parse(pattern).unwrap()), expected);
        }
    }

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redacted("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
