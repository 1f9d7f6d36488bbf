//! The listening end of a TCP link: remote pub-sub and request-reply in the
//! 2x2, with no broker in between.
//!
//! Compatible with Python eventforge clients: what the server publishes goes
//! to its clients, what a client publishes goes to the server (never relayed
//! to other clients). On top of v1, a reply goes only to the connection its
//! request came from, and a client that declares its subscriptions receives
//! only what matches them (see [`control`](super::control)).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use eventforge_core::{
    Capabilities, Error, Message, OverflowPolicy, Pattern, PatternTrie, Result, Router,
    RouterStats, Subscription, SubscriptionId, Transport, DEFAULT_BUFFER,
};
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::control;
use super::error::TcpError;
use super::writer::write_frames;
use super::READ_BUFFER;
use super::{lock, read_lock, write_lock};
use eventforge_core::frame::{FrameCodec, DEFAULT_MAX_FRAME};

/// Name of this transport in errors and logs.
const NAME: &str = "tcp";

/// What the server does with a client whose outbound queue is full.
///
/// The queue fills when the client reads slower than the server publishes
/// (the socket's kernel buffers are full too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowClientPolicy {
    /// Frames that find the queue full are dropped for that client only
    /// (counted in [`ServerStats::dropped_frames`], logged), and a client
    /// whose queue has stayed full for `after` is disconnected (counted in
    /// [`ServerStats::slow_disconnects`], logged). Publishers never wait, so
    /// one slow client never stalls the server or the other clients.
    Disconnect {
        /// How long the queue may stay full before the client is dropped.
        after: Duration,
    },
    /// The publisher waits for room: nothing is lost, and a client that
    /// stops reading stalls every publish it should receive. For
    /// point-to-point links where the client is trusted.
    Wait,
}

impl Default for SlowClientPolicy {
    fn default() -> Self {
        SlowClientPolicy::Disconnect {
            after: Duration::from_secs(1),
        }
    }
}

/// Counters of a [`TcpServerTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Clients connected now.
    pub clients: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Messages received from clients.
    pub received: u64,
    /// Connections dropped because they sent bad input (garbage, an
    /// oversize frame, invalid JSON, a frame cut short).
    pub bad_input_disconnects: u64,
    /// Frames dropped because a client's outbound queue was full.
    pub dropped_frames: u64,
    /// Clients disconnected by the [`SlowClientPolicy`].
    pub slow_disconnects: u64,
    /// Reply routes remembered now (bounded by
    /// [`max_reply_routes`](TcpServerBuilder::max_reply_routes)).
    pub reply_routes: usize,
    /// Local delivery counters.
    pub router: RouterStats,
}

/// Options of a [`TcpServerTransport`].
#[derive(Debug, Clone)]
pub struct TcpServerBuilder {
    max_frame: usize,
    client_queue: usize,
    slow_client: SlowClientPolicy,
    reply_ttl: Duration,
    max_reply_routes: usize,
    max_connections: usize,
    buffer: usize,
    overflow: OverflowPolicy,
    close_timeout: Duration,
}

impl Default for TcpServerBuilder {
    fn default() -> Self {
        TcpServerBuilder {
            max_frame: DEFAULT_MAX_FRAME,
            client_queue: 8192,
            slow_client: SlowClientPolicy::default(),
            reply_ttl: Duration::from_secs(60),
            max_reply_routes: 100_000,
            max_connections: 1024,
            buffer: DEFAULT_BUFFER,
            overflow: OverflowPolicy::default(),
            close_timeout: Duration::from_secs(2),
        }
    }
}

impl TcpServerBuilder {
    /// Largest frame accepted or sent, in bytes of JSON (default 16 MiB).
    /// A client sending a larger one is disconnected.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Frames queued per client before the [`SlowClientPolicy`] applies
    /// (default 8192, at least 1).
    pub fn client_queue(mut self, frames: usize) -> Self {
        self.client_queue = frames.max(1);
        self
    }

    /// What happens to a client that cannot keep up.
    pub fn slow_client(mut self, policy: SlowClientPolicy) -> Self {
        self.slow_client = policy;
        self
    }

    /// How long the connection a request came from is remembered for its
    /// reply (default 60 s). A reply after that goes to every client, as in v1.
    pub fn reply_ttl(mut self, ttl: Duration) -> Self {
        self.reply_ttl = ttl;
        self
    }

    /// Most reply routes remembered at once (default 100,000); the oldest
    /// is forgotten first.
    pub fn max_reply_routes(mut self, routes: usize) -> Self {
        self.max_reply_routes = routes.max(1);
        self
    }

    /// Most clients connected at once (default 1024); further connections
    /// wait to be accepted.
    pub fn max_connections(mut self, clients: usize) -> Self {
        self.max_connections = clients.max(1);
        self
    }

    /// Messages each local subscription buffers (default 1024).
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages;
        self
    }

    /// What happens when a local subscription's buffer is full (default:
    /// the connection that delivers waits, which slows that client down).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// How long [`close`](Transport::close) lets clients' queued frames be
    /// written before it cuts the connections (default 2 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Listens on `addr` (port 0 picks a free port, see
    /// [`local_addr`](TcpServerTransport::local_addr)) and starts accepting.
    pub async fn bind(
        self,
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<TcpServerTransport, TcpError> {
        let shown = format!("{addr:?}");
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TcpError::Bind {
                addr: shown.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| TcpError::Bind {
            addr: shown,
            source,
        })?;
        let shared = Arc::new(Shared {
            local_addr,
            router: Router::new(NAME, self.buffer, self.overflow),
            codec: FrameCodec::with_max_frame(self.max_frame),
            hello: FrameCodec::new().encode_frame(&control::hello())?,
            clients: RwLock::default(),
            replies: Mutex::new(ReplyRoutes::new(self.reply_ttl, self.max_reply_routes)),
            reply_routes: AtomicUsize::new(0),
            connections: Arc::new(Semaphore::new(self.max_connections)),
            next_client: AtomicU64::new(1),
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
            closed: AtomicBool::new(false),
            options: self,
        });
        tracing::info!(%local_addr, "tcp server listening");
        shared
            .tasks
            .spawn(accept_loop(Arc::clone(&shared), listener));
        let stop = shared.shutdown.clone().drop_guard();
        Ok(TcpServerTransport {
            shared,
            _stop_on_drop: Arc::new(stop),
        })
    }
}

/// The server end of the TCP transport. Cheap to clone: clones share the
/// same listener and clients.
///
/// ```
/// use std::time::Duration;
/// use eventforge_core::MessageQueue;
/// use eventforge_transports::tcp::{TcpClientTransport, TcpServerTransport};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let server = TcpServerTransport::bind("127.0.0.1:0").await?;
/// let addr = server.local_addr();
/// let server = MessageQueue::new(server);
/// let responder = server.clone();
/// server.on("math.double", move |msg| {
///     let queue = responder.clone();
///     async move { queue.reply(&msg, msg.payload_as::<i64>()? * 2).await }
/// }).await?;
///
/// let client = MessageQueue::new(TcpClientTransport::connect(addr).await?);
/// let reply = client.request("math.double", 21, Duration::from_secs(5)).await?;
/// assert_eq!(reply.payload, 42);
/// client.close().await?;
/// server.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TcpServerTransport {
    shared: Arc<Shared>,
    // Stops the background tasks when the last clone is dropped without close.
    _stop_on_drop: Arc<DropGuard>,
}

#[derive(Debug)]
struct Shared {
    local_addr: SocketAddr,
    // Delivers what clients send (and what the server publishes) to local subscribers.
    router: Arc<Router>,
    codec: FrameCodec,
    // Encoded once, sent first on every connection.
    hello: Bytes,
    clients: RwLock<HashMap<u64, Arc<Client>>>,
    replies: Mutex<ReplyRoutes>,
    // Routes remembered, readable without the lock: a publish skips the
    // reply table when nobody waits for a reply.
    reply_routes: AtomicUsize,
    // Limits connected clients: a permit is taken before accepting.
    connections: Arc<Semaphore>,
    next_client: AtomicU64,
    counters: Counters,
    // Stops accepting and reading; writers then drain and end.
    shutdown: CancellationToken,
    // Parent of every client's disconnect token: cuts writers short.
    abort: CancellationToken,
    // Lets close wait for every connection task.
    tasks: TaskTracker,
    closed: AtomicBool,
    options: TcpServerBuilder,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    received: AtomicU64,
    bad_input: AtomicU64,
    dropped_frames: AtomicU64,
    slow_disconnects: AtomicU64,
}

/// One connected client, as the server sees it.
#[derive(Debug)]
struct Client {
    id: u64,
    addr: SocketAddr,
    // Frames waiting for this client's writer task; bounded.
    outbound: mpsc::Sender<Bytes>,
    // What the client declared it wants; everything until it declares.
    filter: RwLock<Filter>,
    // Set while the queue is full, to apply the slow-client grace period.
    full_since: Mutex<Option<Instant>>,
    // Keeps the common path (queue not full) off the mutex above.
    saturated: AtomicBool,
    // Cuts this connection (bad input, slow client, server abort).
    disconnect: CancellationToken,
}

#[derive(Debug, Default)]
struct Filter {
    // False for v1 peers: they receive everything.
    declared: bool,
    patterns: HashSet<String>,
    trie: PatternTrie<()>,
}

impl Filter {
    fn wants(&self, topic: &str) -> bool {
        if !self.declared {
            return true;
        }
        let mut any = false;
        self.trie.for_each_match(topic, |()| any = true);
        any
    }

    fn add(&mut self, pattern: Pattern) {
        self.declared = true;
        if self.patterns.insert(pattern.as_str().to_owned()) {
            self.trie.insert(&pattern, ());
        }
    }

    fn remove(&mut self, pattern: &Pattern) {
        self.declared = true;
        if self.patterns.remove(pattern.as_str()) {
            self.trie.remove(pattern, |()| true);
        }
    }

    fn clear(&mut self) {
        *self = Filter {
            declared: true,
            ..Filter::default()
        };
    }
}

/// Remembers which connection each pending request came from, so that its
/// reply goes there only. Bounded in time and in count.
#[derive(Debug)]
struct ReplyRoutes {
    by_topic: HashMap<String, (u64, Instant)>,
    // Insertion order, for expiry and eviction; may hold entries already taken.
    order: VecDeque<(String, Instant)>,
    ttl: Duration,
    max: usize,
}

impl ReplyRoutes {
    fn new(ttl: Duration, max: usize) -> Self {
        ReplyRoutes {
            by_topic: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max,
        }
    }

    fn remember(&mut self, reply_to: &str, client: u64) {
        let now = Instant::now();
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.ttl && self.order.len() < self.max {
                break;
            }
            if let Some((topic, at)) = self.order.pop_front() {
                if self.by_topic.get(&topic).is_some_and(|(_, t)| *t == at) {
                    self.by_topic.remove(&topic);
                }
            }
        }
        self.by_topic.insert(reply_to.to_owned(), (client, now));
        self.order.push_back((reply_to.to_owned(), now));
    }

    /// The connection to send a reply on `topic` to, forgetting the route.
    fn take(&mut self, topic: &str) -> Option<u64> {
        let (client, at) = self.by_topic.remove(topic)?;
        (at.elapsed() < self.ttl).then_some(client)
    }
}

impl Client {
    /// Queues `frame` for this client, applying the slow-client policy
    /// without waiting; returns the frame when the policy says to wait.
    fn offer(&self, frame: Bytes, shared: &Shared) -> Option<Bytes> {
        match self.outbound.try_send(frame) {
            Ok(()) => {
                if self.saturated.load(Ordering::Relaxed) {
                    self.saturated.store(false, Ordering::Relaxed);
                    *lock(&self.full_since) = None;
                }
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(frame)) => match shared.options.slow_client {
                SlowClientPolicy::Wait => Some(frame),
                SlowClientPolicy::Disconnect { after } => {
                    self.saturated.store(true, Ordering::Relaxed);
                    let dropped = shared
                        .counters
                        .dropped_frames
                        .fetch_add(1, Ordering::Relaxed);
                    let full_for = lock(&self.full_since)
                        .get_or_insert_with(Instant::now)
                        .elapsed();
                    if full_for >= after {
                        if !self.disconnect.is_cancelled() {
                            shared
                                .counters
                                .slow_disconnects
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                peer = %self.addr,
                                client = self.id,
                                ?full_for,
                                queue = shared.options.client_queue,
                                "client cannot keep up: its queue stayed full, disconnecting it"
                            );
                            self.disconnect.cancel();
                        }
                    } else if dropped % 1000 == 0 {
                        tracing::warn!(
                            peer = %self.addr,
                            client = self.id,
                            dropped_so_far = dropped + 1,
                            "client queue full: frame dropped for this client"
                        );
                    }
                    None
                }
            },
        }
    }
}

impl TcpServerTransport {
    /// Listens on `addr` with default options.
    pub async fn bind(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Self, TcpError> {
        Self::builder().bind(addr).await
    }

    /// Options for a new server.
    pub fn builder() -> TcpServerBuilder {
        TcpServerBuilder::default()
    }

    /// The address the server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Addresses of the clients connected now.
    pub fn clients(&self) -> Vec<SocketAddr> {
        let clients = read_lock(&self.shared.clients);
        clients.values().map(|client| client.addr).collect()
    }

    /// Counters since start.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            clients: read_lock(&self.shared.clients).len(),
            accepted: c.accepted.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            bad_input_disconnects: c.bad_input.load(Ordering::Relaxed),
            dropped_frames: c.dropped_frames.load(Ordering::Relaxed),
            slow_disconnects: c.slow_disconnects.load(Ordering::Relaxed),
            reply_routes: lock(&self.shared.replies).by_topic.len(),
            router: self.shared.router.stats(),
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            permit = Arc::clone(&shared.connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                let shared_for_task = Arc::clone(&shared);
                shared.tasks.spawn(async move {
                    serve_client(shared_for_task, stream, addr).await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait a little
                // instead of spinning on the same error.
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn serve_client(shared: Arc<Shared>, stream: TcpStream, addr: SocketAddr) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::warn!(peer = %addr, %error, "could not set TCP_NODELAY");
    }
    let (read, write) = stream.into_split();
    let (outbound, queue) = mpsc::channel(shared.options.client_queue);
    let client = Arc::new(Client {
        id: shared.next_client.fetch_add(1, Ordering::Relaxed),
        addr,
        outbound,
        filter: RwLock::default(),
        full_since: Mutex::new(None),
        saturated: AtomicBool::new(false),
        disconnect: shared.abort.child_token(),
    });
    // The queue is new and empty: the hello is the first frame out.
    let _ = client.outbound.try_send(shared.hello.clone());
    shared
        .tasks
        .spawn(write_frames(write, queue, client.disconnect.clone(), addr));
    write_lock(&shared.clients).insert(client.id, Arc::clone(&client));
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(peer = %addr, client = client.id, "client connected");

    let mut frames = FramedRead::with_capacity(read, shared.codec, READ_BUFFER);
    // Made once: a fresh `cancelled()` per frame would register a waiter each time.
    let shutdown = shared.shutdown.cancelled();
    let disconnect = client.disconnect.cancelled();
    tokio::pin!(shutdown, disconnect);
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => break "server closing".to_owned(),
            _ = &mut disconnect => break "disconnected by the server".to_owned(),
            next = frames.next() => next,
        };
        match next {
            None => break "closed by the client".to_owned(),
            Some(Err(error)) => {
                shared.counters.bad_input.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %addr, client = client.id, %error, "bad input: dropping the connection");
                client.disconnect.cancel();
                break format!("bad input: {error}");
            }
            Some(Ok(message)) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                if control::is_control(&message.topic) {
                    handle_control(&shared, &client, message);
                    continue;
                }
                if let Some(reply_to) = &message.reply_to {
                    let mut replies = lock(&shared.replies);
                    replies.remember(reply_to, client.id);
                    shared
                        .reply_routes
                        .store(replies.by_topic.len(), Ordering::Release);
                }
                // A full local subscription makes this wait (slowing this
                // client down), but never past close.
                let routed = tokio::select! {
                    _ = &mut shutdown => break "server closing".to_owned(),
                    routed = shared.router.route(Arc::new(message)) => routed,
                };
                if let Err(error) = routed {
                    tracing::warn!(peer = %addr, %error, "local delivery failed");
                }
            }
        }
    };
    write_lock(&shared.clients).remove(&client.id);
    tracing::debug!(peer = %addr, client = client.id, %reason, "client disconnected");
    // Dropping the last sender lets the writer drain what is queued and end.
}

fn handle_control(shared: &Shared, client: &Client, message: Message) {
    let parse = |text: &str| match Pattern::parse(text) {
        Ok(pattern) => Some(pattern),
        Err(error) => {
            tracing::warn!(peer = %client.addr, %error, "ignoring a declaration with a bad pattern");
            None
        }
    };
    {
        let mut filter = write_lock(&client.filter);
        match message.topic.as_str() {
            control::SUBSCRIBE => {
                if let Some(pattern) = control::pattern_of(&message).and_then(parse) {
                    filter.add(pattern);
                }
            }
            control::UNSUBSCRIBE => {
                if let Some(pattern) = control::pattern_of(&message).and_then(parse) {
                    filter.remove(&pattern);
                }
            }
            control::SUBSCRIPTIONS => {
                filter.clear();
                for pattern in control::patterns_of(&message).filter_map(parse) {
                    filter.add(pattern);
                }
            }
            other => {
                tracing::debug!(peer = %client.addr, topic = other, "ignoring an unknown control message");
                return;
            }
        }
    }
    tracing::debug!(peer = %client.addr, topic = %message.topic, message_id = %message.id, "subscriptions declared");
    if let Some(correlation_id) = message.correlation_id {
        match shared.codec.encode_frame(&control::ack(correlation_id)) {
            Ok(frame) => {
                // An ack is tiny and rare: waiting for room is not worth a
                // task; if the queue is full the client is being dropped anyway.
                let _ = client.offer(frame, shared);
            }
            Err(error) => tracing::warn!(%error, "could not encode an ack"),
        }
    }
}

impl Shared {
    /// Sends `message` to the clients it is for: the requester of a reply,
    /// or every client that wants its topic.
    async fn fan_out(&self, message: &Message) -> Result<()> {
        let mut frame: Option<Bytes> = None;
        let mut encode = || -> Result<Bytes> {
            if let Some(frame) = &frame {
                return Ok(frame.clone());
            }
            let encoded = self
                .codec
                .encode_frame(message)
                .map_err(|e| Error::transport(NAME, e))?;
            frame = Some(encoded.clone());
            Ok(encoded)
        };
        let reply_to = if self.reply_routes.load(Ordering::Acquire) == 0 {
            None
        } else {
            let mut replies = lock(&self.replies);
            let client = replies.take(&message.topic);
            self.reply_routes
                .store(replies.by_topic.len(), Ordering::Release);
            client
        };
        let mut waiting: Vec<(Arc<Client>, Bytes)> = Vec::new();
        {
            let clients = read_lock(&self.clients);
            match reply_to {
                Some(id) => match clients.get(&id) {
                    Some(client) => {
                        if let Some(frame) = client.offer(encode()?, self) {
                            waiting.push((Arc::clone(client), frame));
                        }
                    }
                    None => tracing::debug!(
                        topic = %message.topic,
                        message_id = %message.id,
                        "reply dropped: the requester has disconnected"
                    ),
                },
                None => {
                    for client in clients.values() {
                        if read_lock(&client.filter).wants(&message.topic) {
                            if let Some(frame) = client.offer(encode()?, self) {
                                waiting.push((Arc::clone(client), frame));
                            }
                        }
                    }
                }
            }
        }
        // Only under SlowClientPolicy::Wait.
        for (client, frame) in waiting {
            tokio::select! {
                _ = client.disconnect.cancelled() => {}
                _ = client.outbound.send(frame) => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for TcpServerTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.ordered_per_publisher = true;
        capabilities
    }

    /// Known only when every connected client has declared what it wants
    /// (a v1 peer that never declares may listen to anything): then true
    /// when a local subscriber or a client wants `topic`. Lets an RPC call
    /// to a service whose worker went away fail at once.
    fn has_subscribers(&self, topic: &str) -> Option<bool> {
        if self.shared.router.has_subscribers(topic) {
            return Some(true);
        }
        let mut undeclared = false;
        for client in read_lock(&self.shared.clients).values() {
            let filter = read_lock(&client.filter);
            if !filter.declared {
                undeclared = true;
            } else if filter.wants(topic) {
                return Some(true);
            }
        }
        (!undeclared).then_some(false)
    }

    /// Sends `message` to the clients (the requester only, for a reply;
    /// otherwise every client that wants its topic), and delivers it to
    /// local subscribers.
    async fn send(&self, message: Message) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed(NAME));
        }
        self.shared.fan_out(&message).await?;
        self.shared.router.route(Arc::new(message)).await.map(drop)
    }

    /// Sends a request to the clients (and local subscribers) and waits for
    /// its reply on a one-shot local route.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Arc<Message>> {
        self.shared
            .router
            .request(message, timeout, |message| self.send(message))
            .await
    }

    async fn subscribe(&self, pattern: Pattern) -> Result<Subscription> {
        self.shared.router.subscribe(pattern)
    }

    async fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.shared.router.unsubscribe(id)
    }

    /// Stops accepting, lets clients' queued frames be written for up to
    /// the close timeout, then cuts every connection. Idempotent.
    async fn close(&self) -> Result<()> {
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        shared.shutdown.cancel();
        shared.connections.close();
        shared.router.close();
        shared.tasks.close();
        if tokio::time::timeout(shared.options.close_timeout, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(addr = %shared.local_addr, "clients did not drain in time: cutting connections");
            shared.abort.cancel();
            shared.tasks.wait().await;
        }
        tracing::info!(addr = %shared.local_addr, "tcp server closed");
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_routes_forget_the_oldest_beyond_their_bound() {
        let mut routes = ReplyRoutes::new(Duration::from_secs(60), 3);
        for n in 0..10 {
            routes.remember(&format!("_reply.{n}"), n);
        }
        assert!(routes.by_topic.len() <= 3 && routes.order.len() <= 3);
        assert_eq!(routes.take("_reply.9"), Some(9));
        assert_eq!(routes.take("_reply.0"), None, "the oldest was forgotten");
    }

    #[test]
    fn a_reply_route_is_used_once() {
        let mut routes = ReplyRoutes::new(Duration::from_secs(60), 10);
        routes.remember("_reply.a", 1);
        assert_eq!(routes.take("_reply.a"), Some(1));
        assert_eq!(routes.take("_reply.a"), None);
    }

    #[test]
    fn expired_reply_routes_are_not_used_and_are_purged() {
        let mut routes = ReplyRoutes::new(Duration::ZERO, 10);
        routes.remember("_reply.a", 1);
        assert_eq!(routes.take("_reply.a"), None);
        routes.remember("_reply.b", 2);
        routes.remember("_reply.c", 3);
        assert_eq!(
            routes.by_topic.len(),
            1,
            "expired entries are purged on insert"
        );
    }
}
