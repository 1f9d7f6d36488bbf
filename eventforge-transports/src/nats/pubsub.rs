//! Pub-sub and request-reply through NATS (the "remote" column of the 2x2: a
//! [`MessageQueue`](eventforge_core::MessageQueue) on this transport talks to
//! every process connected to the same NATS cluster).
//!
//! Messages travel as the protocol's JSON. Patterns map to subjects: `*`
//! stays `*`, a trailing `**` becomes `>`, and a non-trailing `**` subscribes
//! to the broader `>` from that point, the exact match being done on receipt
//! by a [`Router`]. Requests use NATS request/reply,
//! so a request nobody listens to fails at once with
//! [`Error::NoResponders`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventforge_core::{
    Capabilities, Error, IntoPattern, Message, OverflowPolicy, Pattern, Result, Router, Segment,
    Subscription, SubscriptionId, Transport, DEFAULT_BUFFER,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker_subscriptions::BrokerSubscriptions;

const NAME: &str = "nats";

/// Most messages a reader takes from the client at once.
const READ_BATCH: usize = 256;

/// Maps a pattern to the NATS subject that selects a superset of its topics:
/// `*` stays `*`; the first `**` becomes `>` and ends the subject.
///
/// ```
/// use eventforge_core::Pattern;
/// use eventforge_transports::nats::nats_subject;
///
/// assert_eq!(nats_subject(&Pattern::parse("orders.*.created")?), "orders.*.created");
/// assert_eq!(nats_subject(&Pattern::parse("orders.**")?), "orders.>");
/// assert_eq!(nats_subject(&Pattern::parse("a.**.c")?), "a.>");
/// # Ok::<(), eventforge_core::Error>(())
/// ```
pub fn nats_subject(pattern: &Pattern) -> String {
    let mut subject = String::with_capacity(pattern.as_str().len());
    for (i, segment) in pattern.segments().iter().enumerate() {
        if i > 0 {
            subject.push('.');
        }
        match segment {
            Segment::Literal(text) => subject.push_str(text),
            Segment::Star => subject.push('*'),
            Segment::DoubleStar => {
                subject.push('>');
                break;
            }
        }
    }
    subject
}

/// Replies to this transport's requests, all on one wildcard subscription
/// (`_INBOX.<id>.*`), so a request costs no SUB/UNSUB of its own.
#[derive(Debug)]
struct Replies {
    // `_INBOX.<id>.`: each request appends its token.
    prefix: String,
    next: AtomicU64,
    waiting: std::sync::Mutex<HashMap<u64, oneshot::Sender<async_nats::Message>>>,
}

impl Replies {
    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<async_nats::Message>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands a reply (or the server's "no responders" status) to its request.
    fn arrived(&self, reply: async_nats::Message) {
        let token = reply
            .subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|token| token.parse::<u64>().ok());
        // A second reply, or one after the timeout, has nobody waiting.
        if let Some(waiter) = token.and_then(|token| self.waiting().remove(&token)) {
            let _ = waiter.send(reply);
        }
    }
}

/// Forgets a request's token however the request ends (reply, timeout,
/// or the caller dropping the future).
struct PendingReply<'a> {
    replies: &'a Replies,
    token: u64,
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        self.replies.waiting().remove(&self.token);
    }
}

/// A NATS subscription: a subject, and the queue group sharing it if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SubjectKey {
    subject: String,
    queue_group: Option<String>,
}

/// Counters of a [`NatsTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStats {
    /// Messages handed to the NATS client.
    pub published: u64,
    /// Messages the client refused (the sender got the error).
    pub publish_errors: u64,
    /// Messages received from NATS and routed locally.
    pub received: u64,
    /// Messages received that were not a valid eventforge Message (dropped).
    pub undecodable: u64,
    /// Times the connection was lost.
    pub disconnects: u64,
    /// Times it was re-established (the client re-subscribes by itself).
    pub reconnects: u64,
    /// Times the server or client reported a subscription too slow to keep up
    /// (messages were dropped for it).
    pub slow_consumers: u64,
    /// NATS subscriptions currently held.
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
    slow_consumers: AtomicU64,
    // Whether the first `Connected` event (the initial connection) was seen.
    connected_once: AtomicBool,
}

/// Options of a [`NatsTransport`]; made by [`NatsTransport::builder`].
#[derive(Debug, Clone)]
pub struct NatsTransportBuilder {
    servers: Vec<String>,
    buffer: usize,
    overflow: OverflowPolicy,
    initial_backoff: Duration,
    max_backoff: Duration,
    command_timeout: Duration,
    name: Option<String>,
}

impl NatsTransportBuilder {
    /// Adds a server URL to try (`nats://host:port`).
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// Messages each subscription buffers before the overflow policy applies
    /// (default 1024).
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages;
        self
    }

    /// What happens when a subscription's buffer is full (default: the
    /// receiving task waits; past the client's own buffer NATS then drops
    /// messages for that subscription and reports a slow consumer).
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

    /// How long connecting and confirming a subscription may take (default 5 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The connection name the server shows in its monitoring.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Connects to the first server that answers.
    ///
    /// Fails with [`Error::Transport`] when no server answers.
    pub async fn connect(self) -> Result<NatsTransport> {
        let counters = Arc::new(Counters::default());
        let (reconnections, _) = watch::channel(0);
        let events = EventSink {
            counters: Arc::clone(&counters),
            reconnections: reconnections.clone(),
        };
        let (initial, max) = (self.initial_backoff, self.max_backoff);
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.command_timeout)
            .reconnect_delay_callback(move |attempts| {
                let factor = 1u32 << attempts.min(16);
                initial.saturating_mul(factor).min(max)
            })
            .event_callback(move |event| {
                events.record(&event);
                async {}
            });
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        let servers: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        let client =
            tokio::time::timeout(self.command_timeout, options.connect(servers.as_slice()))
                .await
                .map_err(|_| Error::Timeout {
                    waiting_for: format!("a NATS server among {:?}", self.servers),
                    timeout: self.command_timeout,
                })?
                .map_err(|e| Error::transport(NAME, e))?;
        let sync_subject = format!("_eventforge.sync.{}", eventforge_core::new_id());
        let probes = client
            .subscribe(sync_subject.clone())
            .await
            .map_err(|e| Error::transport(NAME, e))?;
        let reply_prefix = format!("{}.", client.new_inbox());
        let replies = client
            .subscribe(format!("{reply_prefix}*"))
            .await
            .map_err(|e| Error::transport(NAME, e))?;
        let (released, released_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            subscriptions: BrokerSubscriptions::new(NAME, self.buffer, self.overflow),
            readers: tokio::sync::Mutex::new(HashMap::new()),
            counters,
            reconnections,
            shutdown: CancellationToken::new(),
            sync: SyncPoint {
                subject: sync_subject,
                next: AtomicU64::new(0),
                waiters: std::sync::Mutex::new(HashMap::new()),
            },
            replies: Replies {
                prefix: reply_prefix,
                next: AtomicU64::new(0),
                waiting: std::sync::Mutex::new(HashMap::new()),
            },
            options: self,
        });
        let releaser = tokio::spawn(release_loop(Arc::clone(&shared), released_rx));
        let prober = tokio::spawn(probe_loop(Arc::clone(&shared), probes));
        let reply_reader = tokio::spawn(reply_loop(Arc::clone(&shared), replies));
        tracing::debug!(servers = ?shared.options.servers, "nats transport connected");
        Ok(NatsTransport {
            shared,
            released,
            closed: AtomicBool::new(false),
            tasks: std::sync::Mutex::new(vec![releaser, prober, reply_reader]),
        })
    }
}

/// Turns client events into counters and tracing events.
struct EventSink {
    counters: Arc<Counters>,
    reconnections: watch::Sender<u64>,
}

impl EventSink {
    fn record(&self, event: &async_nats::Event) {
        let c = &self.counters;
        match event {
            async_nats::Event::Connected => {
                if c.connected_once.swap(true, Ordering::AcqRel) {
                    c.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.reconnections.send_modify(|n| *n += 1);
                    tracing::warn!("nats connection re-established; subscriptions re-sent");
                }
            }
            async_nats::Event::Disconnected => {
                c.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "nats connection lost; messages published to this client until it is back are missed"
                );
            }
            async_nats::Event::SlowConsumer(sid) => {
                c.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sid, "nats subscription too slow: messages dropped for it");
            }
            other => tracing::info!(event = %other, "nats connection event"),
        }
    }
}

/// A [`Transport`] over NATS.
///
/// ```
/// use std::time::Duration;
/// use eventforge_core::{Error, MessageQueue};
/// use eventforge_transports::nats::NatsTransport;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let transport = NatsTransport::connect("nats://127.0.0.1:4222").await?;
/// let queue = MessageQueue::new(transport);
/// let asked = queue.request("nobody.home", 1, Duration::from_secs(5)).await;
/// assert!(matches!(asked, Err(Error::NoResponders { .. }))); // at once
/// # Ok(()) }
/// ```
///
/// `subscribe` returns once the server has processed the subscription (a
/// probe sent after it came back). Each distinct subject is subscribed once however many
/// local subscriptions map to it, and each local subscription receives a
/// message once even when patterns overlap. Publishing never flushes: the
/// client batches writes, and messages from one publisher keep their order.
///
/// The client reconnects by itself (capped backoff, see
/// [`reconnect_backoff`](NatsTransportBuilder::reconnect_backoff)) and
/// re-subscribes; the gap is reported as a `tracing` warning and in
/// [`NatsStats::disconnects`] / [`NatsStats::reconnects`]. Competing
/// consumers across processes use
/// [`subscribe_in_group`](NatsTransport::subscribe_in_group).
#[derive(Debug)]
pub struct NatsTransport {
    shared: Arc<Shared>,
    // Ids of dropped subscriptions, for the release task (a drop cannot await).
    released: mpsc::UnboundedSender<SubscriptionId>,
    closed: AtomicBool,
    // Joined by `close`.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    client: async_nats::Client,
    subscriptions: BrokerSubscriptions<SubjectKey>,
    // One reader task per NATS subscription. An async mutex held while a
    // subscription is made or removed, so the two never cross; what it waits
    // on (the client's connection task, a reader task ending) never takes it.
    readers: tokio::sync::Mutex<HashMap<SubjectKey, Reader>>,
    counters: Arc<Counters>,
    reconnections: watch::Sender<u64>,
    // Ends every background task.
    shutdown: CancellationToken,
    // Round trips through the server, to confirm subscriptions.
    sync: SyncPoint,
    // Where replies to this transport's requests arrive.
    replies: Replies,
    options: NatsTransportBuilder,
}

/// Confirms that the server has processed everything this client sent.
///
/// The client's own `flush` only writes the socket, and a SUB written is not
/// yet a SUB the server routes to. The server handles one connection's
/// operations in order, so a probe published after them and received back
/// on a subject private to this connection proves they were processed. The
/// probe is an ordinary Message on a topic under `_eventforge.`, as the
/// protocol asks of control messages.
#[derive(Debug)]
struct SyncPoint {
    subject: String,
    next: AtomicU64,
    waiters: std::sync::Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl SyncPoint {
    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the waiter of the probe `message` carries.
    fn arrived(&self, message: &async_nats::Message) {
        let token = Message::from_json(&message.payload)
            .ok()
            .and_then(|probe| probe.payload.as_u64());
        if let Some(waiter) = token.and_then(|token| self.waiters().remove(&token)) {
            let _ = waiter.send(());
        }
    }
}

#[derive(Debug)]
struct Reader {
    // Ends this reader only (its NATS subscription is no longer needed).
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl NatsTransport {
    /// Connects to `url` (`nats://host:port`, or several separated by commas)
    /// with default options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder().server(url).connect().await
    }

    /// Options for a new transport; add servers with
    /// [`server`](NatsTransportBuilder::server).
    pub fn builder() -> NatsTransportBuilder {
        NatsTransportBuilder {
            servers: Vec::new(),
            buffer: DEFAULT_BUFFER,
            overflow: OverflowPolicy::default(),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            name: None,
        }
    }

    /// Counters since connecting.
    pub fn stats(&self) -> NatsStats {
        let c = &self.shared.counters;
        NatsStats {
            published: c.published.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
            broker_subscriptions: self.shared.subscriptions.len(),
        }
    }

    /// The number of reconnections so far, as a value that can be awaited:
    /// `reconnections().wait_for(|n| *n > 0)`.
    pub fn reconnections(&self) -> watch::Receiver<u64> {
        self.shared.reconnections.subscribe()
    }

    /// Waits until the server has processed everything this transport sent
    /// so far (a round trip through the server).
    pub async fn flush(&self) -> Result<()> {
        self.check_open()?;
        server_round_trip(&self.shared).await
    }

    /// Subscribes to `pattern` as a member of queue group `group`: among all
    /// the NATS subscriptions of that group on the subject (across
    /// processes), each message goes to one only (competing consumers).
    ///
    /// Local subscriptions of this transport to the same pattern and group
    /// share one membership, and each of them receives what it gets.
    pub async fn subscribe_in_group(
        &self,
        pattern: impl IntoPattern,
        group: impl Into<String>,
    ) -> Result<Subscription> {
        self.subscribe_keyed(pattern.into_pattern()?, Some(group.into()))
            .await
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed(NAME))
        } else {
            Ok(())
        }
    }

    async fn subscribe_keyed(
        &self,
        pattern: Pattern,
        queue_group: Option<String>,
    ) -> Result<Subscription> {
        self.check_open()?;
        let shared = &self.shared;
        let key = SubjectKey {
            subject: nats_subject(&pattern),
            queue_group,
        };
        let mut readers = shared.readers.lock().await;
        let added = shared
            .subscriptions
            .add(key.clone(), pattern)
            .ok_or(Error::Closed(NAME))?;
        if added.is_new {
            match start_reader(shared, &key, added.router).await {
                Ok(reader) => {
                    readers.insert(key, reader);
                }
                Err(error) => {
                    shared.subscriptions.remove(added.subscription.id());
                    return Err(error);
                }
            }
        }
        let released = self.released.clone();
        Ok(added.subscription.also_on_drop(move |id| {
            // Fails only once the transport is closed: nothing to release then.
            let _ = released.send(id);
        }))
    }

    /// The request over NATS request/reply: the Message's `reply_to` is the
    /// NATS reply subject, so an eventforge responder in any language (which
    /// publishes its reply Message to `reply_to`) and the server's "no
    /// responders" status both arrive on this transport's reply inbox.
    async fn native_request(
        &self,
        mut message: Message,
        timeout: Duration,
    ) -> Result<Arc<Message>> {
        let shared = &self.shared;
        let replies = &shared.replies;
        let token = replies.next.fetch_add(1, Ordering::Relaxed);
        let reply_subject = format!("{}{token}", replies.prefix);
        let (arrived, reply) = oneshot::channel();
        replies.waiting().insert(token, arrived);
        let _pending = PendingReply { replies, token };
        message.reply_to = Some(reply_subject.clone());
        message
            .correlation_id
            .get_or_insert_with(eventforge_core::new_id);
        let topic = message.topic.clone();
        let payload = message.to_json()?;
        shared
            .client
            .publish_with_reply(topic.clone(), reply_subject, payload.into())
            .await
            .map_err(|e| Error::transport(NAME, e))?;
        let reply = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(Error::Closed(NAME)),
            Err(_) => {
                return Err(Error::Timeout {
                    waiting_for: format!("a reply to {topic} (message {})", message.id),
                    timeout,
                })
            }
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            tracing::debug!(topic = %topic, message_id = %message.id, "nats request has no responders");
            return Err(Error::NoResponders { topic });
        }
        Message::from_json(&reply.payload).map(Arc::new)
    }
}

impl NatsTransport {
    /// A request whose caller chose the reply topic (an RPC client uses
    /// `_rpc_reply.<request id>`, as the protocol writes it): the reply
    /// subject is subscribed on the connection before the request is
    /// published with it as NATS reply subject, so the server's "no
    /// responders" status arrives there too, and a Python responder that
    /// publishes to `reply_to` is heard.
    async fn request_on_own_subject(
        &self,
        message: Message,
        timeout: Duration,
    ) -> Result<Arc<Message>> {
        let (message, correlation_id) = eventforge_core::prepare_request(message);
        let reply_to = message.reply_to.clone().unwrap_or_default();
        Pattern::exact(&reply_to)?;
        let client = &self.shared.client;
        let mut replies = client
            .subscribe(reply_to.clone())
            .await
            .map_err(|e| Error::transport(NAME, e))?;
        let topic = message.topic.clone();
        let payload = message.to_json()?;
        client
            .publish_with_reply(topic.clone(), reply_to.clone(), payload.into())
            .await
            .map_err(|e| Error::transport(NAME, e))?;
        let wait = async {
            while let Some(reply) = replies.next().await {
                if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    return Err(Error::NoResponders {
                        topic: topic.clone(),
                    });
                }
                let reply = Message::from_json(&reply.payload)?;
                match reply.correlation_id.as_deref() {
                    Some(id) if id != correlation_id => {
                        tracing::debug!(topic = %reply_to, expected = %correlation_id, got = id, "skipping a reply for another request");
                    }
                    _ => return Ok(Arc::new(reply)),
                }
            }
            Err(Error::Closed(NAME))
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                waiting_for: format!("a reply on {reply_to}"),
                timeout,
            }),
        }
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        // One client connection, one reader task per subscription.
        capabilities.ordered_per_publisher = true;
        capabilities.reports_no_responders = true;
        capabilities.reconnects = true;
        capabilities.shared_broker = true;
        capabilities
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.check_open()?;
        let payload = message.to_json()?;
        // No flush: the client's connection task batches writes.
        match self
            .shared
            .client
            .publish(message.topic, payload.into())
            .await
        {
            Ok(()) => {
                self.shared
                    .counters
                    .published
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.shared
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::transport(NAME, error))
            }
        }
    }

    async fn subscribe(&self, pattern: Pattern) -> Result<Subscription> {
        self.subscribe_keyed(pattern, None).await
    }

    async fn unsubscribe(&self, id: SubscriptionId) -> bool {
        release(&self.shared, id).await
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Arc<Message>> {
        self.check_open()?;
        if message.reply_to.is_some() {
            return self.request_on_own_subject(message, timeout).await;
        }
        self.native_request(message, timeout).await
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // What was published before close still reaches the server.
        if let Err(error) = flush(&self.shared).await {
            tracing::debug!(%error, "nats flush on close failed");
        }
        self.shared.shutdown.cancel();
        self.shared.subscriptions.close();
        let readers: Vec<Reader> = self
            .shared
            .readers
            .lock()
            .await
            .drain()
            .map(|(_, r)| r)
            .collect();
        for reader in readers {
            let _ = reader.task.await;
        }
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            let _ = task.await;
        }
        tracing::debug!("nats transport closed");
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        // Background tasks hold only `Shared`: stop them with the transport.
        self.shared.shutdown.cancel();
        self.shared.subscriptions.close();
    }
}

async fn flush(shared: &Shared) -> Result<()> {
    let timeout = shared.options.command_timeout;
    match tokio::time::timeout(timeout, shared.client.flush()).await {
        Ok(outcome) => outcome.map_err(|e| Error::transport(NAME, e)),
        Err(_) => Err(Error::Timeout {
            waiting_for: "a NATS flush".to_owned(),
            timeout,
        }),
    }
}

/// Publishes a probe to this connection's private sync subject and waits
/// for it to come back: everything sent before it has then been processed
/// by the server.
async fn server_round_trip(shared: &Shared) -> Result<()> {
    let sync = &shared.sync;
    let token = sync.next.fetch_add(1, Ordering::Relaxed);
    let (arrived, wait) = oneshot::channel();
    sync.waiters().insert(token, arrived);
    let probe = Message::new(sync.subject.clone(), token)?.to_json()?;
    if let Err(error) = shared
        .client
        .publish(sync.subject.clone(), probe.into())
        .await
    {
        sync.waiters().remove(&token);
        return Err(Error::transport(NAME, error));
    }
    let timeout = shared.options.command_timeout;
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Error::Closed(NAME)),
        Err(_) => {
            sync.waiters().remove(&token);
            Err(Error::Timeout {
                waiting_for: "a round trip through the NATS server".to_owned(),
                timeout,
            })
        }
    }
}

async fn probe_loop(shared: Arc<Shared>, mut probes: async_nats::Subscriber) {
    let stopped = shared.shutdown.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            probe = probes.next() => match probe {
                Some(probe) => shared.sync.arrived(&probe),
                None => return,
            },
        }
    }
}

async fn reply_loop(shared: Arc<Shared>, mut replies: async_nats::Subscriber) {
    let stopped = shared.shutdown.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            reply = replies.next() => match reply {
                Some(reply) => shared.replies.arrived(reply),
                None => return,
            },
        }
    }
}

/// Subscribes on the server, waits until it has processed the subscription,
/// and starts the task feeding `router`.
async fn start_reader(shared: &Shared, key: &SubjectKey, router: Arc<Router>) -> Result<Reader> {
    let client = &shared.client;
    let subscriber = match &key.queue_group {
        Some(group) => {
            client
                .queue_subscribe(key.subject.clone(), group.clone())
                .await
        }
        None => client.subscribe(key.subject.clone()).await,
    }
    .map_err(|e| Error::transport(NAME, e))?;
    // Once the probe sent after the SUB is back, the server routes to it.
    server_round_trip(shared).await?;
    let stop = shared.shutdown.child_token();
    let task = tokio::spawn(read_loop(
        subscriber,
        router,
        stop.clone(),
        Arc::clone(&shared.counters),
    ));
    tracing::debug!(subject = %key.subject, queue_group = ?key.queue_group, "nats subscription confirmed");
    Ok(Reader { stop, task })
}

async fn read_loop(
    mut subscriber: async_nats::Subscriber,
    router: Arc<Router>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    // Made once: each `cancelled()` registers a waiter under a lock.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut waiting = Vec::with_capacity(READ_BATCH);
    'reading: loop {
        let first = tokio::select! {
            biased;
            _ = &mut stopped => break,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        waiting.push(first);
        // What has already arrived is taken without waiting again.
        while waiting.len() < READ_BATCH {
            match subscriber.next().now_or_never() {
                Some(Some(message)) => waiting.push(message),
                Some(None) | None => break,
            }
        }
        for message in waiting.drain(..) {
            let Some(decoded) = decode(&message, &counters) else {
                continue;
            };
            tokio::select! {
                biased;
                _ = &mut stopped => break 'reading,
                routed = router.route(Arc::new(decoded)) => if let Err(error) = routed {
                    tracing::debug!(subject = %message.subject, %error, "nats delivery incomplete");
                },
            }
        }
    }
    // Tell the server at once rather than when the subscriber is dropped.
    if let Err(error) = subscriber.unsubscribe().await {
        tracing::debug!(%error, "nats unsubscribe failed");
    }
}

/// The eventforge Message a NATS message carries; None (counted, logged)
/// when it carries something else.
fn decode(message: &async_nats::Message, counters: &Counters) -> Option<Message> {
    match Message::from_json(&message.payload) {
        Ok(mut decoded) => {
            // A plain NATS request (no eventforge reply_to) can be answered too.
            if decoded.reply_to.is_none() {
                decoded.reply_to = message.reply.as_ref().map(|r| r.to_string());
            }
            counters.received.fetch_add(1, Ordering::Relaxed);
            Some(decoded)
        }
        Err(error) => {
            let n = counters.undecodable.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    subject = %message.subject,
                    %error,
                    dropped_so_far = n + 1,
                    "nats message is not an eventforge Message; dropped"
                );
            }
            None
        }
    }
}

/// Removes local subscription `id`; ends its NATS subscription when it was
/// the last one on it. False when the id is unknown.
async fn release(shared: &Shared, id: SubscriptionId) -> bool {
    let mut readers = shared.readers.lock().await;
    let Some(emptied) = shared.subscriptions.remove(id) else {
        return false;
    };
    if let Some(reader) = emptied.and_then(|key| readers.remove(&key)) {
        reader.stop.cancel();
        // The reader never takes `readers`, so waiting for it here is safe.
        let _ = reader.task.await;
    }
    true
}

async fn release_loop(shared: Arc<Shared>, mut released: mpsc::UnboundedReceiver<SubscriptionId>) {
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            id = released.recv() => match id {
                Some(id) => {
                    release(&shared, id).await;
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_map_to_subjects_that_select_a_superset() {
        let cases = [
            ("a.b", "a.b"),
            ("a.*", "a.*"),
            ("a.**", "a.>"),
            ("**", ">"),
            ("**.c", ">"),
            ("a.*.**.d", "a.*.>"),
            ("*.**", "*.>"),
        ];
        for (pattern, expected) in cases {
            assert_eq!(nats_subject(&Pattern::parse(pattern).unwrap()), expected);
        }
    }
}
