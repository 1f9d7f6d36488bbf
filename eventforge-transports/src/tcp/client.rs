//! The connecting end of a TCP link: remote pub-sub and request-reply in the
//! 2x2, with no broker in between.
//!
//! What the client publishes goes to the server (and to the client's own
//! local subscribers); what the server publishes arrives here. The client
//! reconnects by itself when the server goes away, and declares its
//! subscriptions to a Rust server so that it receives only what matches;
//! with a Python server it receives everything and filters locally.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use eventforge_core::{
    new_id, Capabilities, Error, Message, OverflowPolicy, Pattern, Result, Router, RouterStats,
    Subscription, SubscriptionId, Transport, DEFAULT_BUFFER,
};
use futures::StreamExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::control;
use super::error::TcpError;
use super::lock;
use super::writer::write_frames;
use super::READ_BUFFER;
use eventforge_core::frame::{FrameCodec, DEFAULT_MAX_FRAME};

/// Name of this transport in errors and logs.
const NAME: &str = "tcp";

/// Options of a [`TcpClientTransport`].
#[derive(Debug, Clone)]
pub struct TcpClientBuilder {
    max_frame: usize,
    queue: usize,
    send_wait: Duration,
    connect_timeout: Duration,
    hello_timeout: Duration,
    ack_timeout: Duration,
    reconnect: bool,
    backoff_initial: Duration,
    backoff_max: Duration,
    buffer: usize,
    overflow: OverflowPolicy,
    close_timeout: Duration,
}

impl Default for TcpClientBuilder {
    fn default() -> Self {
        TcpClientBuilder {
            max_frame: DEFAULT_MAX_FRAME,
            queue: 8192,
            send_wait: Duration::ZERO,
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_millis(200),
            ack_timeout: Duration::from_secs(5),
            reconnect: true,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            buffer: DEFAULT_BUFFER,
            overflow: OverflowPolicy::default(),
            close_timeout: Duration::from_secs(2),
        }
    }
}

impl TcpClientBuilder {
    /// Largest frame accepted or sent, in bytes of JSON (default 16 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Frames queued for the socket before a send waits (default 8192).
    pub fn queue(mut self, frames: usize) -> Self {
        self.queue = frames.max(1);
        self
    }

    /// How long a send waits for the link while it is down before failing
    /// with [`TcpError::NotConnected`] (default: zero, fail at once).
    pub fn send_wait(mut self, wait: Duration) -> Self {
        self.send_wait = wait;
        self
    }

    /// Deadline of one connection attempt (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a new connection waits for a Rust server's hello before
    /// treating the server as a v1 (Python) peer that sends everything
    /// (default 200 ms; only a v1 server costs this wait).
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// How long `subscribe` waits for the server to confirm a declaration
    /// (default 5 s); after it, the subscription works but messages the
    /// server published meanwhile may have been filtered out.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Whether the client reconnects after the server goes away (default true).
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Delays between reconnection attempts: the first, doubled after each
    /// failure up to the cap (defaults 50 ms and 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Messages each local subscription buffers (default 1024).
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages;
        self
    }

    /// What happens when a local subscription's buffer is full (default:
    /// reading from the server waits, which slows the server's sends to
    /// this client down).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// How long [`close`](Transport::close) lets queued frames be written
    /// before it cuts the connection (default 2 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Connects to the server at `addr`; fails if the first connection
    /// cannot be made (later losses are repaired by reconnecting).
    pub async fn connect(
        self,
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<TcpClientTransport, TcpError> {
        let shown = format!("{addr:?}");
        let server = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| TcpError::Connect {
                addr: shown.clone(),
                source,
            })?
            .next()
            .ok_or(TcpError::NoAddress { addr: shown })?;
        let (connected, _) = watch::channel(false);
        let abort = CancellationToken::new();
        let shared = Arc::new(Shared {
            server,
            router: Router::new(NAME, self.buffer, self.overflow),
            codec: FrameCodec::with_max_frame(self.max_frame),
            state: Mutex::default(),
            connected,
            acks: Mutex::default(),
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
            abort,
            tasks: TaskTracker::new(),
            closed: AtomicBool::new(false),
            options: self,
        });
        let session = establish(&shared)
            .await
            .map_err(|source| TcpError::Connect {
                addr: server.to_string(),
                source,
            })?;
        shared.tasks.spawn(supervise(Arc::clone(&shared), session));
        let stop = shared.shutdown.clone().drop_guard();
        Ok(TcpClientTransport {
            shared,
            _stop_on_drop: Arc::new(stop),
        })
    }
}

/// Counters of a [`TcpClientTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// True while the link to the server is up.
    pub connected: bool,
    /// True when the server filters by declared subscriptions (a Rust server).
    pub server_filters: bool,
    /// Messages received from the server (control messages excluded).
    pub received: u64,
    /// Times the link was lost.
    pub disconnects: u64,
    /// Times the link was re-established.
    pub reconnects: u64,
    /// Total time spent disconnected before a reconnect, in milliseconds:
    /// what the server published then is lost.
    pub gap_millis: u64,
    /// Local delivery counters.
    pub router: RouterStats,
}

/// The client end of the TCP transport. Cheap to clone: clones share the
/// same connection.
///
/// Sends while the link is down fail at once with
/// [`TcpError::NotConnected`] (wrapped in [`Error::Transport`]), or wait up
/// to [`send_wait`](TcpClientBuilder::send_wait). Messages the server
/// publishes while the link is down are lost: the gap is logged and counted
/// in [`ClientStats`].
///
/// ```
/// use eventforge_core::{Message, Pattern, Transport};
/// use eventforge_transports::tcp::{TcpClientTransport, TcpServerTransport};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let server = TcpServerTransport::bind("127.0.0.1:0").await?;
/// let mut inbox = server.subscribe(Pattern::parse("sensors.*")?).await?;
///
/// let client = TcpClientTransport::connect(server.local_addr()).await?;
/// client.send(Message::new("sensors.t1", 21.5)?).await?;
/// assert_eq!(inbox.recv().await.unwrap().payload, 21.5);
///
/// client.close().await?;
/// server.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TcpClientTransport {
    shared: Arc<Shared>,
    // Stops the background tasks when the last clone is dropped without close.
    _stop_on_drop: Arc<DropGuard>,
}

#[derive(Debug)]
struct Shared {
    server: SocketAddr,
    // Delivers what the server sends (and what this client publishes) to local subscribers.
    router: Arc<Router>,
    codec: FrameCodec,
    state: Mutex<State>,
    // True while a link is up; lets sends and tests await the link.
    connected: watch::Sender<bool>,
    // Subscribes waiting for the server to confirm their declaration.
    acks: Mutex<HashMap<String, oneshot::Sender<()>>>,
    counters: Counters,
    // Stops reading and reconnecting; the writer then drains and ends.
    shutdown: CancellationToken,
    // Cuts the writer short when draining takes longer than the close timeout.
    abort: CancellationToken,
    // Lets close wait for the reader and writer tasks.
    tasks: TaskTracker,
    closed: AtomicBool,
    options: TcpClientBuilder,
}

#[derive(Debug, Default)]
struct State {
    // The current link, None while disconnected.
    link: Option<Link>,
    // Patterns declared to the server, with how many subscriptions use each:
    // restored on every reconnect.
    declared: HashMap<String, usize>,
    // Declared pattern of each subscription, to undeclare it when it ends.
    by_subscription: HashMap<SubscriptionId, String>,
}

#[derive(Debug)]
struct Link {
    outbound: mpsc::Sender<Bytes>,
    // The server said hello: it filters and acknowledges declarations.
    server_filters: bool,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    gap_millis: AtomicU64,
    server_filters: AtomicBool,
}

/// A live connection's inbound half.
struct Session {
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    // Cuts this connection's writer.
    abort: CancellationToken,
}

/// Opens one connection, learns whether the server filters, declares the
/// current subscriptions and installs the link.
async fn establish(shared: &Arc<Shared>) -> std::io::Result<Session> {
    let options = &shared.options;
    let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(shared.server))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::with_capacity(read, shared.codec, READ_BUFFER);
    let mut early = None;
    let server_filters = match tokio::time::timeout(options.hello_timeout, frames.next()).await {
        Ok(Some(Ok(first))) if first.topic == control::HELLO => true,
        Ok(Some(Ok(first))) => {
            early = Some(first);
            false
        }
        Ok(Some(Err(error))) => return Err(error.into()),
        Ok(None) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection at once",
            ))
        }
        // A v1 server says nothing until it publishes.
        Err(_) => false,
    };
    let (outbound, queue) = mpsc::channel(options.queue);
    {
        let mut state = lock(&shared.state);
        if server_filters {
            let declaration = control::subscriptions(state.declared.keys().map(String::as_str));
            let frame = shared
                .codec
                .encode_frame(&declaration)
                .map_err(std::io::Error::from)?;
            // The queue is new and empty: the declaration goes out first.
            let _ = outbound.try_send(frame);
        }
        state.link = Some(Link {
            outbound,
            server_filters,
        });
    }
    shared
        .counters
        .server_filters
        .store(server_filters, Ordering::Relaxed);
    let abort = shared.abort.child_token();
    shared
        .tasks
        .spawn(write_frames(write, queue, abort.clone(), shared.server));
    shared.connected.send_replace(true);
    tracing::debug!(server = %shared.server, server_filters, "connected");
    if let Some(message) = early {
        deliver(shared, message).await;
    }
    Ok(Session { frames, abort })
}

/// Reads the current connection, then reconnects with backoff, until close.
async fn supervise(shared: Arc<Shared>, mut session: Session) {
    loop {
        let reason = read_frames(&shared, &mut session).await;
        // Dropping the link's sender lets the writer drain and end.
        lock(&shared.state).link = None;
        // Subscribes waiting for an ack go on at once: the reconnect
        // declares their patterns again.
        lock(&shared.acks).clear();
        shared.connected.send_replace(false);
        drop(session);
        if shared.shutdown.is_cancelled() {
            return;
        }
        shared.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        if !shared.options.reconnect {
            tracing::warn!(server = %shared.server, %reason, "link to the server lost; not reconnecting");
            return;
        }
        tracing::warn!(server = %shared.server, %reason, "link to the server lost; reconnecting");
        let lost_at = Instant::now();
        let mut delay = shared.options.backoff_initial;
        session = loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let attempt = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                attempt = establish(&shared) => attempt,
            };
            match attempt {
                Ok(session) => break session,
                Err(error) => {
                    tracing::debug!(server = %shared.server, %error, retry_in = ?delay, "reconnect failed");
                    delay = (delay * 2).min(shared.options.backoff_max);
                }
            }
        };
        let gap = lost_at.elapsed();
        shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.counters.gap_millis.fetch_add(
            gap.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        tracing::warn!(
            server = %shared.server,
            ?gap,
            "reconnected; messages the server published while the link was down are lost"
        );
    }
}

/// Routes what the server sends until the connection ends; returns why.
async fn read_frames(shared: &Shared, session: &mut Session) -> String {
    // Made once: a fresh `cancelled()` per frame would register a waiter each time.
    let shutdown = shared.shutdown.cancelled();
    let abort = session.abort.clone();
    let abort = abort.cancelled();
    tokio::pin!(shutdown, abort);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => return "client closing".to_owned(),
            _ = &mut abort => return "connection cut".to_owned(),
            next = session.frames.next() => next,
        };
        match next {
            None => return "closed by the server".to_owned(),
            Some(Err(error)) => {
                tracing::warn!(server = %shared.server, %error, "bad input from the server: dropping the connection");
                return format!("bad input: {error}");
            }
            // A full local subscription makes this wait, but never past close.
            Some(Ok(message)) => tokio::select! {
                _ = &mut shutdown => return "client closing".to_owned(),
                () = deliver(shared, message) => {}
            },
        }
    }
}

async fn deliver(shared: &Shared, message: Message) {
    if control::is_control(&message.topic) {
        if message.topic == control::ACK {
            if let Some(id) = &message.correlation_id {
                if let Some(waiter) = lock(&shared.acks).remove(id) {
                    let _ = waiter.send(());
                }
            }
        }
        return;
    }
    shared.counters.received.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = shared.router.route(Arc::new(message)).await {
        tracing::warn!(server = %shared.server, %error, "local delivery failed");
    }
}

impl Shared {
    /// The current link's queue, waiting up to `send_wait` for one.
    async fn outbound(&self) -> Result<mpsc::Sender<Bytes>> {
        if let Some(link) = &lock(&self.state).link {
            return Ok(link.outbound.clone());
        }
        let wait = self.options.send_wait;
        if !wait.is_zero() {
            let mut connected = self.connected.subscribe();
            let up = tokio::time::timeout(wait, connected.wait_for(|up| *up)).await;
            if matches!(up, Ok(Ok(_))) {
                if let Some(link) = &lock(&self.state).link {
                    return Ok(link.outbound.clone());
                }
            }
        }
        Err(self.not_connected())
    }

    fn not_connected(&self) -> Error {
        if self.closed.load(Ordering::Acquire) {
            return Error::Closed(NAME);
        }
        Error::transport(
            NAME,
            TcpError::NotConnected {
                addr: self.server,
                waited: self.options.send_wait,
            },
        )
    }

    /// Stops declaring the pattern of a subscription that ended.
    fn forget(&self, id: SubscriptionId) {
        let mut state = lock(&self.state);
        let Some(pattern) = state.by_subscription.remove(&id) else {
            return;
        };
        let Some(count) = state.declared.get_mut(&pattern) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.declared.remove(&pattern);
        if let Some(link) = state.link.as_ref().filter(|link| link.server_filters) {
            if let Ok(frame) = self
                .codec
                .encode_frame(&control::declare(control::UNSUBSCRIBE, &pattern))
            {
                // Best effort: if the queue is full the server merely keeps
                // sending what the local router then filters out.
                let _ = link.outbound.try_send(frame);
            }
        }
    }
}

impl TcpClientTransport {
    /// Connects to `addr` with default options.
    pub async fn connect(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Self, TcpError> {
        Self::builder().connect(addr).await
    }

    /// Options for a new client.
    pub fn builder() -> TcpClientBuilder {
        TcpClientBuilder::default()
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.shared.server
    }

    /// True while the link to the server is up.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Watches the link: the value is true while it is up. Await a change
    /// with `changed()` or `wait_for(|up| *up)`.
    pub fn link_events(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }

    /// Counters since creation.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        ClientStats {
            connected: self.is_connected(),
            server_filters: c.server_filters.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            gap_millis: c.gap_millis.load(Ordering::Relaxed),
            router: self.shared.router.stats(),
        }
    }

    /// Declares a new pattern to a server that filters, and waits (up to
    /// the ack timeout) for it to confirm.
    async fn declare(&self, pattern: &str, outbound: mpsc::Sender<Bytes>) {
        let shared = &self.shared;
        let id = new_id();
        let declaration =
            control::declare(control::SUBSCRIBE, pattern).with_correlation_id(id.clone());
        let frame = match shared.codec.encode_frame(&declaration) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, pattern, "could not encode a declaration");
                return;
            }
        };
        let (confirm, confirmed) = oneshot::channel();
        lock(&shared.acks).insert(id.clone(), confirm);
        // A failure means the link just went down: the reconnect declares it.
        let _ = outbound.send(frame).await;
        drop(outbound);
        if tokio::time::timeout(shared.options.ack_timeout, confirmed)
            .await
            .is_err()
        {
            tracing::warn!(server = %shared.server, pattern, "the server did not confirm a subscription in time");
        }
        lock(&shared.acks).remove(&id);
    }
}

#[async_trait]
impl Transport for TcpClientTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.ordered_per_publisher = true;
        capabilities.reconnects = self.shared.options.reconnect;
        capabilities
    }

    /// Sends `message` to the server, and delivers it to local subscribers.
    async fn send(&self, message: Message) -> Result<()> {
        let shared = &self.shared;
        if self.is_closed() {
            return Err(Error::Closed(NAME));
        }
        let frame = shared
            .codec
            .encode_frame(&message)
            .map_err(|e| Error::transport(NAME, TcpError::from(e)))?;
        let outbound = shared.outbound().await?;
        outbound
            .send(frame)
            .await
            .map_err(|_| shared.not_connected())?;
        shared.router.route(Arc::new(message)).await.map(drop)
    }

    /// Sends a request and waits for its reply on a one-shot local route:
    /// the server sends the reply back to this connection without any
    /// subscription being declared.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Arc<Message>> {
        self.shared
            .router
            .request(message, timeout, |message| self.send(message))
            .await
    }

    /// Subscribes locally and declares the pattern to the server; returns
    /// once the server confirmed it (a Rust server), so that whatever the
    /// server publishes next and matches reaches the subscription.
    async fn subscribe(&self, pattern: Pattern) -> Result<Subscription> {
        let shared = &self.shared;
        let subscription = shared.router.subscribe(pattern.clone())?;
        let text = pattern.as_str();
        let mut declare = None;
        if !control::is_reply_topic(text) {
            let mut state = lock(&shared.state);
            state
                .by_subscription
                .insert(subscription.id(), text.to_owned());
            let count = state.declared.entry(text.to_owned()).or_insert(0);
            *count += 1;
            if *count == 1 {
                // A v1 server sends everything anyway: nothing to declare.
                declare = state
                    .link
                    .as_ref()
                    .filter(|link| link.server_filters)
                    .map(|link| link.outbound.clone());
            }
        }
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let subscription = subscription.also_on_drop(move |id| {
            if let Some(shared) = weak.upgrade() {
                shared.forget(id);
            }
        });
        if let Some(outbound) = declare {
            self.declare(text, outbound).await;
        }
        Ok(subscription)
    }

    async fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let removed = self.shared.router.unsubscribe(id);
        self.shared.forget(id);
        removed
    }

    /// Stops reconnecting, lets queued frames be written for up to the
    /// close timeout, then cuts the connection. Idempotent.
    async fn close(&self) -> Result<()> {
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        shared.shutdown.cancel();
        shared.tasks.close();
        if tokio::time::timeout(shared.options.close_timeout, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(server = %shared.server, "queued frames not written in time: cutting the connection");
            shared.abort.cancel();
            shared.tasks.wait().await;
        }
        shared.router.close();
        lock(&shared.acks).clear();
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}
