//! Work-queue storage in NATS JetStream (the "remote" column of the 2x2,
//! for work queues): a [`WorkQueue`](eventforge_core::work_queue) on this
//! backend shares its jobs with every process connected to the same NATS
//! server, and with file storage the jobs survive a server restart.
//!
//! # Layout on the server
//!
//! - One stream per topic, on the single subject `<prefix>.<topic>`
//!   (default prefix `eventforge.wq`). Its name is that subject escaped by
//!   [`jetstream_name`], so `orders.created` is stored in the stream
//!   `eventforge_wq_orders_created`.
//! - Retention `Interest`: a job stays in the stream until every group has
//!   acked it (or terminated it), then the server removes it. A job
//!   published while a stream has no consumer at all is not kept, which is
//!   why the declared groups ([`WorkOptions::groups`]) are created together
//!   with the stream, before its first job.
//! - `max_msgs` = [`WorkOptions::max_size`] with `DiscardPolicy::New`: the
//!   server refuses a job once the stream holds `max_size` jobs not yet
//!   acked by every group, and `enqueue` fails with
//!   [`Error::QueueFull`]. With one group that is exactly
//!   "pending + in flight >= max_size"; with several groups it counts the
//!   jobs some group still needs, which is the fullest group's count when
//!   the groups ack in the same order (and never less).
//! - One durable pull consumer per group, named [`jetstream_name`] of the
//!   group. Declared groups start at the first job (`DeliverPolicy::All`);
//!   groups first named by `receive` or `create_group(.., false)` start
//!   with the next job (`DeliverPolicy::New`). Acks are explicit,
//!   `ack_wait` is [`WorkOptions::visibility_timeout`], `max_ack_pending`
//!   is `max_size`, and `max_deliver` is unlimited: the
//!   [`WorkQueue`](eventforge_core::work_queue) dead-letters a job once
//!   its attempt goes past what [`WorkOptions::max_retries`] allows, and a
//!   server-side limit would instead leave such a job stranded in the
//!   stream, unacked and never delivered again.
//!
//! With no declared groups, a job enqueued before any group exists is
//! acknowledged by the server but not kept (nobody has interest in it).
//!
//! These settings are fixed when the stream and each consumer are created
//! (by the first call that needs them); later calls with other
//! [`WorkOptions`] do not change them.
//!
//! # Deliveries
//!
//! `attempt` is the server's delivery count of the message. A retry is a
//! `NAK` with the delay, so only that group's consumer sees the job again;
//! the server confirms it before [`retry`](WorkBackend::retry) returns.
//! An [`ack`](WorkBackend::ack) is sent without waiting for the server
//! (waiting costs a round trip per job, which kept two consumers near a
//! third of the throughput): [`stats`](WorkBackend::stats), an
//! [`enqueue`](WorkBackend::enqueue) the server refuses as full, and
//! [`close`](WorkBackend::close) first confirm this process's acks (one
//! confirmed ack per consumer: the server applies a consumer's acks in
//! order), so figures and `max_size` count every ack that returned. An
//! ack lost with the connection before the server applied it makes the
//! job come back after the visibility timeout, as at-least-once allows;
//! [`JetStreamBackend::settle`] (which confirms on demand) and
//! [`close`](WorkBackend::close) then fail with [`Error::Transport`]
//! when the connection was re-established since acks still unconfirmed
//! were sent.
//!
//! JetStream accepts an ack of an expired delivery (and applies it to the
//! newer one), so the backend tells expiry itself: an ack or retry of a
//! delivery that arrived more than the visibility timeout ago, or that
//! this process has received again since, is not sent and fails with
//! [`Error::DeliveryExpired`]; the later delivery owns the job.
//!
//! Jobs are published with the message id as `Nats-Msg-Id` (unless
//! [`deduplicate(false)`](JetStreamBackendBuilder::deduplicate)), so a
//! producer that retries an enqueue after a lost confirmation stores the
//! job once (within the stream's duplicate window, two minutes by
//! default); a duplicate counts as enqueued. An
//! enqueue that fails with [`Error::Transport`] after the job was sent (no
//! confirmation in time) may still have stored it; enqueueing the same
//! `Message` again is the safe retry. While the client knows it is
//! disconnected, calls fail at once instead.
//!
//! # Stats
//!
//! From the group's consumer: `pending` = `num_pending` (not yet
//! delivered), `in_flight` = `num_ack_pending`. JetStream counts as ack
//! pending some jobs the queue counts as waiting: jobs a NAK put back
//! (delayed or not) until they are delivered again, deliveries that
//! expired, and jobs that arrived for a `receive` that had gone. For what
//! this process did (such jobs, its retries, its expired deliveries) the
//! backend moves them from `in_flight` to `pending`, after a round trip
//! that makes sure every delivery the server sent before its figures has
//! arrived; so the figures are exact when the queue is quiet and one
//! process uses it. Another process's such jobs and retries show as in
//! flight. The corrections for expired deliveries and retries are kept
//! until a feed tracks 4096 of them (then the oldest half is forgotten),
//! however long ago they happened.
//!
//! # Pulls
//!
//! Each (topic, group) pair used by `receive` in a process has one pull
//! feed. JetStream counts every delivery as an attempt, even of a job
//! given back unrun, so the feed pulls only for receives that are
//! waiting: a pull request asks for as many jobs as receives wait that
//! no outstanding request covers (up to [`batch_size`]; concurrent
//! receives share requests), lives as long as the receive that made it
//! waits (at most 1 s, then a new one), and nothing is read ahead. A job
//! that arrives after its receive was dropped or timed out stays in the
//! feed for the next `receive` (so `receive` is cancel-safe), which hands
//! it out with a progress ack that restarts the server's visibility timer;
//! if nobody takes it within the visibility timeout it is dropped locally
//! and redelivered by the server (attempt + 1).
//! [`close`](WorkBackend::close) stops pulling, reads what the server
//! had already sent, and gives every job not handed out back at once.
//!
//! A pull request that ends without a word from the server (the server
//! says nothing of a pull to a consumer that was deleted) or with the
//! connection makes the next pull first check that the group's consumer
//! still exists; if an operator deleted it, that `receive` fails with
//! [`Error::Transport`] and the next one makes the consumer again. A
//! stream deleted by another process is made again by the next `receive`
//! or `create_group`, as by `enqueue`.
//!
//! A feed that no `receive` used for
//! [`feed_idle_timeout`](JetStreamBackendBuilder::feed_idle_timeout)
//! (at least the visibility timeout; default 60 s) and with no delivery
//! out is closed, so a process that used many topics does not keep a
//! subscription and a task for each; the next `receive` opens it again.
//!
//! A consumer that calls `receive` one job at a time pays a round trip to
//! the server per job; run several receives at once (as
//! [`WorkQueue`](eventforge_core::work_queue) consumers do) for
//! throughput.
//!
//! [`batch_size`]: JetStreamBackendBuilder::batch_size

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    response::Response,
    stream::{DiscardPolicy, RetentionPolicy, StorageType},
    AckKind,
};
use async_trait::async_trait;
use bytes::Bytes;
use eventforge_core::{validate_topic, Error, Message, Result};
use eventforge_work::{BackendStats, Delivery, Receipt, WorkBackend, WorkOptions};
use futures::StreamExt;
use tokio::sync::{oneshot, watch, Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What [`WorkBackend::name`] and [`Error::Closed`] say.
const NAME: &str = "jetstream";

/// What [`Error::Transport`] says: the failures are the NATS client's.
const TRANSPORT: &str = "nats";

/// Shortest life of a pull request: a receive with less time left still
/// gives the server a moment to answer.
const MIN_PULL: Duration = Duration::from_millis(50);

/// Longest life of a pull request made by a waiting `receive` (a longer
/// wait makes a new one), so a receive dropped while it waits stops
/// attracting jobs soon after.
const MAX_PULL: Duration = Duration::from_secs(1);

/// A job that waited in the feed longer than this before a `receive`
/// took it is handed out with a progress ack, which restarts the server's
/// visibility timer: the consumer then has the full timeout.
const PROGRESS_AFTER: Duration = Duration::from_millis(20);

/// Longest wait for the deliveries already on their way when a feed stops.
const DRAIN: Duration = Duration::from_secs(2);

/// Longest stream name this backend makes: the server stores a file
/// stream in a directory of that name.
const MAX_NAME: usize = 255;

/// Tracked deliveries and retries of a feed above which `receive` (not
/// only `stats`) forgets the old ones.
const FORGET_ABOVE: usize = 4096;

/// Escapes `text` into a name JetStream accepts for a stream or consumer
/// (no `.`, `*`, `>`, whitespace or path separators), without collisions:
/// ASCII letters and digits stay, `.` becomes `_`, and every other byte
/// (including `_` and `-` themselves) becomes `-` and two upper-case hex
/// digits. Different inputs give different names. A topic whose stream
/// name would exceed 255 bytes is refused with [`Error::InvalidTopic`].
///
/// ```
/// use eventforge_transports::nats::jetstream_name;
///
/// assert_eq!(jetstream_name("eventforge.wq.orders.created"), "eventforge_wq_orders_created");
/// assert_eq!(jetstream_name("a_b"), "a-5Fb");
/// assert_eq!(jetstream_name("a-b c"), "a-2Db-20c");
/// assert_ne!(jetstream_name("a.b"), jetstream_name("a_b"));
/// ```
pub fn jetstream_name(text: &str) -> String {
    let mut name = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => name.push(char::from(byte)),
            b'.' => name.push('_'),
            other => {
                name.push('-');
                name.push_str(&format!("{other:02X}"));
            }
        }
    }
    name
}

/// Where a [`JetStreamBackend`] keeps its streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JetStreamStorage {
    /// On the server's disk: jobs survive a server restart (the default).
    #[default]
    File,
    /// In the server's memory: faster, lost when the server stops.
    Memory,
}

/// Counters of a [`JetStreamBackend`] (this process only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JetStreamCounters {
    /// Jobs the server stored.
    pub enqueued: u64,
    /// Deliveries handed out by `receive`.
    pub delivered: u64,
    /// Stream entries that were not an eventforge Message: terminated (the
    /// group never sees them again) and skipped.
    pub undecodable: u64,
    /// Deliveries that arrived for a receive that had gone and waited here
    /// longer than the visibility timeout: dropped, and the server hands
    /// them out again.
    pub expired_unclaimed: u64,
    /// Times the connection was re-established.
    pub reconnects: u64,
    /// Pull feeds open now: one per (topic, group) received from lately.
    pub feeds: u64,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    delivered: AtomicU64,
    undecodable: AtomicU64,
    expired_unclaimed: AtomicU64,
    // Also the connection's epoch: a pull request made before a
    // reconnection is presumed gone with the old connection.
    reconnects: AtomicU64,
    // Whether the first `Connected` event (the initial connection) was seen.
    connected_once: AtomicBool,
}

/// Options of a [`JetStreamBackend`]; made by [`JetStreamBackend::builder`].
#[derive(Debug, Clone)]
pub struct JetStreamBackendBuilder {
    servers: Vec<String>,
    subject_prefix: String,
    storage: JetStreamStorage,
    batch_size: usize,
    request_timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    name: Option<String>,
    deduplicate: bool,
    feed_idle: Duration,
}

impl JetStreamBackendBuilder {
    /// Adds a server URL to try (`nats://host:port`).
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// The subject prefix: topic `t` is stored on subject `<prefix>.t`
    /// (default `eventforge.wq`). Processes sharing a queue must agree on it.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Where new streams are kept (default [`JetStreamStorage::File`]).
    pub fn storage(mut self, storage: JetStreamStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Whether jobs carry their message id as `Nats-Msg-Id`, so the server
    /// stores a job enqueued twice within its duplicate window (two
    /// minutes) once (default true). Off saves the server about a tenth of
    /// its work per job; a producer retrying after a lost confirmation may
    /// then store a job twice.
    pub fn deduplicate(mut self, on: bool) -> Self {
        self.deduplicate = on;
        self
    }

    /// Most jobs one pull request asks the server for, for that many
    /// waiting `receive` calls of a (topic, group) (default 64, at least 1).
    pub fn batch_size(mut self, jobs: usize) -> Self {
        self.batch_size = jobs.max(1);
        self
    }

    /// How long connecting and each server request (a publish
    /// confirmation, an ack, stream and consumer management) may take
    /// (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// First and largest delay between reconnection attempts (default 50 ms
    /// doubling up to 2 s).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.initial_backoff);
        self
    }

    /// How long the pull feed of a (topic, group) is kept without a
    /// `receive` and with no delivery out, before it is closed (its
    /// subscription and task freed); at least the visibility timeout
    /// (default 60 s). The next `receive` opens it again.
    pub fn feed_idle_timeout(mut self, idle: Duration) -> Self {
        self.feed_idle = idle;
        self
    }

    /// The connection name the server shows in its monitoring.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Connects to the first server that answers.
    ///
    /// Fails with [`Error::Transport`] when no server answers, and with
    /// [`Error::InvalidTopic`] when the subject prefix is not a valid topic.
    pub async fn connect(self) -> Result<JetStreamBackend> {
        check_topic(&self.subject_prefix)?;
        let counters = Arc::new(Counters::default());
        let (reconnections, _) = watch::channel(0);
        let (disconnections, _) = watch::channel(0);
        let events = (
            Arc::clone(&counters),
            reconnections.clone(),
            disconnections.clone(),
        );
        let (initial, max) = (self.initial_backoff, self.max_backoff);
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.request_timeout)
            .request_timeout(Some(self.request_timeout))
            .reconnect_delay_callback(move |attempts| {
                let factor = 1u32 << attempts.min(16);
                initial.saturating_mul(factor).min(max)
            })
            .event_callback(move |event| {
                record_event(&events.0, (&events.1, &events.2), &event);
                async {}
            });
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        let servers: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        let client =
            tokio::time::timeout(self.request_timeout, options.connect(servers.as_slice()))
                .await
                .map_err(|_| Error::Timeout {
                    waiting_for: format!("a NATS server among {:?}", self.servers),
                    timeout: self.request_timeout,
                })?
                .map_err(|e| Error::transport(TRANSPORT, e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(self.request_timeout)
            .build(client.clone());
        tracing::debug!(servers = ?self.servers, "jetstream work backend connected");
        let shared = Arc::new(Shared {
            client,
            js,
            topics: Mutex::new(HashMap::new()),
            feeds: Mutex::new(HashMap::new()),
            counters,
            reconnections,
            disconnections,
            shutdown: CancellationToken::new(),
            options: self,
        });
        tokio::spawn(close_idle_feeds(Arc::downgrade(&shared)));
        Ok(JetStreamBackend {
            shared,
            closed: AtomicBool::new(false),
        })
    }
}

/// Counts connection events; `watches` are (reconnections, disconnections).
fn record_event(
    counters: &Counters,
    (reconnections, disconnections): (&watch::Sender<u64>, &watch::Sender<u64>),
    event: &async_nats::Event,
) {
    match event {
        async_nats::Event::Connected => {
            if counters.connected_once.swap(true, Ordering::AcqRel) {
                counters.reconnects.fetch_add(1, Ordering::AcqRel);
                reconnections.send_modify(|n| *n += 1);
                tracing::warn!("jetstream connection re-established");
            }
        }
        async_nats::Event::Disconnected => {
            disconnections.send_modify(|n| *n += 1);
            tracing::warn!("jetstream connection lost; work-queue calls fail until it is back");
        }
        other => tracing::info!(event = %other, "jetstream connection event"),
    }
}

/// A [`WorkBackend`] on NATS JetStream; see the [module docs](crate::nats)
/// for how topics and groups map to streams and consumers.
///
/// ```
/// use std::time::Duration;
/// use eventforge_core::Message;
/// use eventforge_work::{WorkBackend, WorkOptions};
/// use eventforge_transports::nats::JetStreamBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// # let topic = format!("doc.orders.{}", eventforge_core::new_id());
/// # let topic = topic.as_str(); // "orders.created" in real life
/// let backend = JetStreamBackend::connect("nats://127.0.0.1:4222").await?;
/// let options = WorkOptions::default();
/// backend.enqueue(&options, Message::new(topic, 42)?).await?;
/// let delivery = backend
///     .receive(&options, topic, "default", "worker-1", Duration::from_secs(5))
///     .await?
///     .expect("the job just enqueued");
/// assert_eq!((delivery.message.payload.as_i64(), delivery.attempt), (Some(42), 1));
/// backend.ack(delivery.receipt).await?;
/// # backend.delete_topic(topic).await?;
/// backend.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JetStreamBackend {
    // What background tasks and receipts may outlive a call with.
    shared: Arc<Shared>,
    // Set by `close`: every later call fails with `Error::Closed`.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Shared {
    // One connection for publishing, pulling and acking; the client
    // reconnects by itself.
    client: async_nats::Client,
    // Stream and consumer management and confirmed publishes.
    js: jetstream::Context,
    // Streams this process has made sure of, with their declared groups.
    // A cell per topic so concurrent first calls create it once.
    topics: Mutex<HashMap<String, Arc<OnceCell<Arc<Topic>>>>>,
    // Pull feeds by (topic, group), made by the first `receive` of the pair.
    feeds: Mutex<HashMap<(String, String), FeedCell>>,
    counters: Arc<Counters>,
    // Count re-established and lost connections, for callers that wait
    // for one.
    reconnections: watch::Sender<u64>,
    disconnections: watch::Sender<u64>,
    // Ends every feed's reader task.
    shutdown: CancellationToken,
    options: JetStreamBackendBuilder,
}

/// A feed, made once by whichever call needs it first.
type FeedCell = Arc<OnceCell<Arc<Feed>>>;

/// A stream this process has made sure of.
#[derive(Debug)]
struct Topic {
    // Where its jobs are published.
    subject: String,
    // The stream's name (the subject, escaped).
    stream: String,
    // Consumers known to exist, by group, so each is created once.
    consumers: Mutex<HashMap<String, PullConsumer>>,
}

impl JetStreamBackend {
    /// Options to connect with; add servers with
    /// [`server`](JetStreamBackendBuilder::server).
    pub fn builder() -> JetStreamBackendBuilder {
        JetStreamBackendBuilder {
            servers: Vec::new(),
            subject_prefix: "eventforge.wq".to_owned(),
            storage: JetStreamStorage::File,
            batch_size: 64,
            request_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            name: None,
            deduplicate: true,
            feed_idle: Duration::from_secs(60),
        }
    }

    /// Connects to `url` with the default options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder().server(url).connect().await
    }

    /// This process's counters.
    pub fn counters(&self) -> JetStreamCounters {
        let c = &self.shared.counters;
        JetStreamCounters {
            enqueued: c.enqueued.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            expired_unclaimed: c.expired_unclaimed.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            feeds: lock(&self.shared.feeds).len() as u64,
        }
    }

    /// Waits until the server has applied every ack this backend sent.
    ///
    /// [`ack`](WorkBackend::ack) returns once the ack is sent, without a
    /// round trip per job; [`stats`](WorkBackend::stats), a refused
    /// [`enqueue`](WorkBackend::enqueue) and [`close`](WorkBackend::close)
    /// confirm this process's acks before they answer, so their figures
    /// and refusals already count them. Call this before reading the
    /// server's state by other means.
    ///
    /// Fails with [`Error::Transport`] when the connection was lost and
    /// re-established since some of those acks were sent: the server may
    /// not have had them, and their jobs then come back after the
    /// visibility timeout.
    pub async fn settle(&self) -> Result<()> {
        self.check_connected()?;
        self.shared.confirm_acks(None).await?.check()
    }

    /// Counts the times the connection was re-established; wait on it
    /// with [`watch::Receiver::wait_for`].
    pub fn reconnections(&self) -> watch::Receiver<u64> {
        self.shared.reconnections.subscribe()
    }

    /// Counts the times the connection was lost; from then until it is
    /// back, calls fail at once with [`Error::Transport`].
    pub fn disconnections(&self) -> watch::Receiver<u64> {
        self.shared.disconnections.subscribe()
    }

    /// The subject jobs of `topic` are published on.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.shared.options.subject_prefix)
    }

    /// The name of the stream holding `topic`'s jobs.
    pub fn stream_name(&self, topic: &str) -> String {
        jetstream_name(&self.subject(topic))
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed(NAME));
        }
        Ok(())
    }

    /// Fails at once rather than queueing while the client reconnects.
    fn check_connected(&self) -> Result<()> {
        self.check_open()?;
        match self.shared.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::transport(
                TRANSPORT,
                format!("not connected to the NATS server ({state})"),
            )),
        }
    }
}

impl Shared {
    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.options.subject_prefix)
    }

    /// The stream of `topic` with its declared groups, created if needed.
    async fn topic(&self, options: &WorkOptions, topic: &str) -> Result<Arc<Topic>> {
        let cell = Arc::clone(
            lock(&self.topics)
                .entry(topic.to_owned())
                .or_insert_with(|| Arc::new(OnceCell::new())),
        );
        cell.get_or_try_init(|| self.create_topic(options, topic))
            .await
            .cloned()
    }

    async fn create_topic(&self, options: &WorkOptions, topic: &str) -> Result<Arc<Topic>> {
        let subject = self.subject(topic);
        let stream = jetstream_name(&subject);
        if stream.len() > MAX_NAME {
            return Err(Error::InvalidTopic {
                topic: topic.to_owned(),
                reason: "too long for a JetStream stream name once escaped (255 bytes)",
            });
        }
        let config = jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::Interest,
            max_messages: i64::try_from(options.max_size).unwrap_or(i64::MAX),
            discard: DiscardPolicy::New,
            storage: match self.options.storage {
                JetStreamStorage::File => StorageType::File,
                JetStreamStorage::Memory => StorageType::Memory,
            },
            ..Default::default()
        };
        let mut created = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| Error::transport(TRANSPORT, e))?;
        let held = created
            .info()
            .await
            .map_err(|e| Error::transport(TRANSPORT, e))?
            .config
            .max_messages;
        if held != i64::try_from(options.max_size).unwrap_or(i64::MAX) {
            tracing::warn!(topic, stream = %stream, held, asked = options.max_size,
                "work queue stream exists with another max_size; keeping the stream's");
        }
        let topic_state = Arc::new(Topic {
            subject,
            stream,
            consumers: Mutex::new(HashMap::new()),
        });
        // Before any job: a stream without consumers keeps nothing.
        for group in &options.groups {
            self.consumer(options, &topic_state, group, true)
                .await
                .map_err(ConsumerFailure::into_error)?;
        }
        tracing::debug!(topic, stream = %topic_state.stream, "work queue stream ready");
        Ok(topic_state)
    }

    /// The stream of `topic` and the durable consumer of `group`, created
    /// if needed; a stream deleted by another process is made again, once.
    async fn topic_consumer(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        from_start: bool,
    ) -> Result<(Arc<Topic>, PullConsumer)> {
        let topic_state = self.topic(options, topic).await?;
        match self
            .consumer(options, &topic_state, group, from_start)
            .await
        {
            Ok(consumer) => Ok((topic_state, consumer)),
            Err(ConsumerFailure::NoStream(_)) => {
                tracing::warn!(topic, "work queue stream is gone; creating it again");
                // Only the stream's entry: feeds of its other groups find
                // out by themselves, and this call may be making a feed.
                lock(&self.topics).remove(topic);
                let topic_state = self.topic(options, topic).await?;
                let consumer = self
                    .consumer(options, &topic_state, group, from_start)
                    .await
                    .map_err(ConsumerFailure::into_error)?;
                Ok((topic_state, consumer))
            }
            Err(ConsumerFailure::Other(error)) => Err(error),
        }
    }

    /// The durable consumer of `group`, created if needed.
    async fn consumer(
        &self,
        options: &WorkOptions,
        topic: &Topic,
        group: &str,
        from_start: bool,
    ) -> std::result::Result<PullConsumer, ConsumerFailure> {
        if let Some(known) = lock(&topic.consumers).get(group) {
            return Ok(known.clone());
        }
        let name = jetstream_name(group);
        let consumer = match self
            .js
            .get_consumer_from_stream::<pull::Config, _, _>(&name, &topic.stream)
            .await
        {
            Ok(existing) => existing,
            Err(error) if is_not_found(&error) => {
                let config = pull::Config {
                    durable_name: Some(name.clone()),
                    deliver_policy: if from_start {
                        DeliverPolicy::All
                    } else {
                        DeliverPolicy::New
                    },
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: options.visibility_timeout,
                    max_deliver: -1,
                    max_ack_pending: i64::try_from(options.max_size).unwrap_or(i64::MAX),
                    ..Default::default()
                };
                match self
                    .js
                    .create_consumer_on_stream(config, &topic.stream)
                    .await
                {
                    Ok(created) => created,
                    // Another process created it first.
                    Err(_) => self
                        .js
                        .get_consumer_from_stream::<pull::Config, _, _>(&name, &topic.stream)
                        .await
                        .map_err(ConsumerFailure::from)?,
                }
            }
            Err(error) => return Err(ConsumerFailure::from(error)),
        };
        lock(&topic.consumers).insert(group.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// The pull feed of (`topic`, `group`), started if needed.
    async fn feed(&self, options: &WorkOptions, topic: &str, group: &str) -> Result<Arc<Feed>> {
        let key = (topic.to_owned(), group.to_owned());
        let cell = Arc::clone(
            lock(&self.feeds)
                .entry(key)
                .or_insert_with(|| Arc::new(OnceCell::new())),
        );
        cell.get_or_try_init(|| async {
            let from_start = options.groups.iter().any(|g| g == group);
            let (_, consumer) = self
                .topic_consumer(options, topic, group, from_start)
                .await?;
            Feed::start(self, topic, group, consumer).await
        })
        .await
        .cloned()
    }

    /// Confirms the acks of every feed (of `topic` only, if given).
    async fn confirm_acks(&self, topic: Option<&str>) -> Result<Confirmed> {
        let feeds: Vec<Arc<Feed>> = lock(&self.feeds)
            .iter()
            .filter(|((t, _), _)| topic.is_none_or(|topic| topic == t))
            .filter_map(|(_, cell)| cell.get().cloned())
            .filter(|feed| feed.state().unconfirmed.is_some())
            .collect();
        let mut confirmed = Confirmed {
            some: !feeds.is_empty(),
            maybe_lost: false,
        };
        for feed in &feeds {
            confirmed.maybe_lost |= feed.confirm().await?;
        }
        Ok(confirmed)
    }

    fn existing_feed(&self, topic: &str, group: &str) -> Option<Arc<Feed>> {
        lock(&self.feeds)
            .get(&(topic.to_owned(), group.to_owned()))
            .and_then(|cell| cell.get().cloned())
    }

    /// Forgets what this process knew of `topic` (its stream was deleted).
    fn forget_topic(&self, topic: &str) {
        lock(&self.topics).remove(topic);
        let gone: Vec<FeedCell> = {
            let mut feeds = lock(&self.feeds);
            let keys: Vec<_> = feeds.keys().filter(|(t, _)| t == topic).cloned().collect();
            keys.iter().filter_map(|k| feeds.remove(k)).collect()
        };
        for cell in gone {
            if let Some(feed) = cell.get().cloned() {
                // Gives back what it holds; its receives start a new feed.
                tokio::spawn(async move { feed.stop().await });
            }
        }
    }
}

/// What confirming acks found.
struct Confirmed {
    // Some acks were waiting for confirmation.
    some: bool,
    // Some were sent before a reconnection: the server may never have had
    // them.
    maybe_lost: bool,
}

impl Confirmed {
    fn check(&self) -> Result<()> {
        if self.maybe_lost {
            return Err(Error::transport(
                TRANSPORT,
                "the connection to the NATS server was lost after some acks were sent; \
                 those the server did not get make their jobs come back after the \
                 visibility timeout",
            ));
        }
        Ok(())
    }
}

/// Why a consumer could not be had.
enum ConsumerFailure {
    // Its stream does not exist (deleted by another process).
    NoStream(Error),
    Other(Error),
}

impl ConsumerFailure {
    fn into_error(self) -> Error {
        match self {
            ConsumerFailure::NoStream(error) | ConsumerFailure::Other(error) => error,
        }
    }
}

impl From<jetstream::stream::ConsumerError> for ConsumerFailure {
    fn from(error: jetstream::stream::ConsumerError) -> Self {
        let no_stream = matches!(error.kind(), jetstream::stream::ConsumerErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
        let error = Error::transport(TRANSPORT, error);
        if no_stream {
            ConsumerFailure::NoStream(error)
        } else {
            ConsumerFailure::Other(error)
        }
    }
}

/// True for a JetStream "not found" answer (stream or consumer).
fn is_not_found(error: &jetstream::stream::ConsumerError) -> bool {
    matches!(error.kind(), jetstream::stream::ConsumerErrorKind::JetStream(inner) if inner.code() == 404)
}

/// Checks that `topic` is a topic and, once prefixed, a NATS subject
/// (no whitespace, no `>` segment).
fn check_topic(topic: &str) -> Result<()> {
    validate_topic(topic)?;
    if topic.chars().any(char::is_whitespace) {
        return Err(Error::InvalidTopic {
            topic: topic.to_owned(),
            reason: "a NATS subject cannot contain whitespace",
        });
    }
    if topic.split('.').any(|segment| segment == ">") {
        return Err(Error::InvalidTopic {
            topic: topic.to_owned(),
            reason: "a topic is concrete: `>` is a NATS wildcard",
        });
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The jobs of one (topic, group) that this process pulls from the server.
///
/// Pull requests, for the waiting receives, are each on their own reply
/// subject (`<inbox>.<n>`) so that the server's "request expired" status
/// is attributed to the right request. A reader task puts arriving jobs
/// in `state.ready`; `receive` takes them from there, so a receive dropped
/// while waiting loses nothing.
#[derive(Debug)]
struct Feed {
    // For logs, and to forget the feed with its topic.
    topic: String,
    group: String,
    // The group's durable consumer, which pull requests go to.
    consumer: PullConsumer,
    // Publishes pull requests, acks and sync probes.
    client: async_nats::Client,
    // Handed to every job it receives (a new context per job would start
    // a task each time).
    js: jetstream::Context,
    // Where this feed's pull requests are answered: `<inbox>.<n>`, and
    // `<inbox>.sync` for round trips.
    inbox: String,
    // The consumer's ack wait as the server holds it: when a delivery
    // has certainly expired.
    ack_wait: Duration,
    // Most jobs one pull request asks for.
    batch: usize,
    counters: Arc<Counters>,
    // Everything receive, the reader and stats share; never held across
    // an await.
    state: Mutex<FeedState>,
    // Woken when a job or a pull status arrives.
    arrived: Notify,
    // Ends the reader task.
    stop: CancellationToken,
    // The reader task, awaited by `close`.
    reader: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct FeedState {
    // Jobs arrived and not handed out, oldest first.
    ready: VecDeque<Arrival>,
    // Outstanding pull requests, oldest first (the server serves them in
    // that order).
    requests: VecDeque<PullRequest>,
    // Receives waiting for a job: the pull requests ask for this many.
    waiting: usize,
    // The feed is stopping: no more pull requests.
    closing: bool,
    // Id of the next pull request (its reply subject's last token).
    next_request: u64,
    // Deliveries handed out and not settled, by stream sequence: for stats
    // (an expired one is pending again) and to tell expired receipts.
    handed: HashMap<u64, Handed>,
    // Jobs this process NAKed that it has not seen come back, by stream
    // sequence, with when they are due: the server counts them as ack
    // pending, the queue as pending.
    retried: HashMap<u64, Instant>,
    // The ack subject of the last ack or term sent without waiting for the
    // server, until a confirmed ack on it proves the server applied it
    // (and, in order, every earlier one of this consumer).
    unconfirmed: Option<async_nats::Subject>,
    // The connection (reconnection count) the oldest unconfirmed ack was
    // sent on: after a reconnection, the server may not have had it.
    unconfirmed_since: u64,
    // Round trips through the server waiting to complete.
    syncs: HashMap<u64, oneshot::Sender<()>>,
    next_sync: u64,
    // The consumer or its stream is gone: the feed must be re-made.
    broken: Option<String>,
    // A pull request ended without a word from the server (or with the
    // connection): the server says nothing of a pull to a consumer that
    // was deleted, so ask whether it still exists.
    suspect: bool,
    // The last `receive` call: an idle feed is closed.
    last_receive: Option<Instant>,
}

#[derive(Debug)]
struct Arrival {
    message: jetstream::Message,
    // The job's place in the stream: the same for every delivery of it.
    stream_sequence: u64,
    // This delivery's place among the consumer's deliveries.
    consumer_sequence: u64,
    // The server's delivery count: the attempt.
    delivered: u64,
    // When it arrived here: the server's ack wait began earlier.
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct PullRequest {
    id: u64,
    // Jobs still to come for it.
    remaining: usize,
    // When the server forgets it.
    expires_at: Instant,
    // The connection it was made on (the reconnection count then).
    epoch: u64,
}

#[derive(Debug, Clone, Copy)]
struct Handed {
    // Which delivery of the job was handed out.
    delivered: u64,
    // When it arrived here.
    at: Instant,
}

/// What a [`Receipt`] of this backend carries.
struct Token {
    // Whose bookkeeping the ack or retry updates.
    feed: Arc<Feed>,
    // Carries the ack subject.
    message: jetstream::Message,
    // For `Error::DeliveryExpired`.
    job_id: String,
    stream_sequence: u64,
    delivered: u64,
    at: Instant,
}

enum Next {
    Take(Box<Arrival>),
    Pull(PullRequest),
    // Until a job or a status arrives, or a pull request expires.
    Wait(Instant),
    // Whether the consumer still exists, before pulling again.
    Check,
    // The feed stopped (its topic was forgotten, or the backend closed).
    Stopped,
}

/// A `receive` counted among a feed's waiting receives; uncounted when
/// it takes a job or goes away (returns or is dropped).
struct WaitingReceive {
    feed: Arc<Feed>,
    counted: bool,
}

impl Drop for WaitingReceive {
    fn drop(&mut self) {
        if self.counted {
            let mut state = self.feed.state();
            state.waiting = state.waiting.saturating_sub(1);
        }
    }
}

impl Feed {
    async fn start(
        shared: &Shared,
        topic: &str,
        group: &str,
        consumer: PullConsumer,
    ) -> Result<Arc<Feed>> {
        let ack_wait = consumer.cached_info().config.ack_wait;
        let inbox = shared.client.new_inbox();
        let subscriber = shared
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| Error::transport(TRANSPORT, e))?;
        let feed = Arc::new(Feed {
            topic: topic.to_owned(),
            group: group.to_owned(),
            consumer,
            client: shared.client.clone(),
            js: shared.js.clone(),
            inbox,
            ack_wait,
            batch: shared.options.batch_size,
            counters: Arc::clone(&shared.counters),
            state: Mutex::new(FeedState {
                last_receive: Some(Instant::now()),
                ..FeedState::default()
            }),
            arrived: Notify::new(),
            stop: shared.shutdown.child_token(),
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read_loop(Arc::clone(&feed), subscriber));
        *lock(&feed.reader) = Some(task);
        Ok(feed)
    }

    fn state(&self) -> MutexGuard<'_, FeedState> {
        lock(&self.state)
    }

    fn epoch(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Acquire)
    }

    /// Takes a ready job, or decides to ask the server for more: one pull
    /// request for the waiting receives no outstanding request covers
    /// (`counted` says whether this receive is among them already).
    fn next(&self, time_left: Duration, counted: &mut bool) -> Result<Next> {
        let now = Instant::now();
        let epoch = self.epoch();
        let mut state = self.state();
        if state.closing {
            return Ok(Next::Stopped);
        }
        state.last_receive = Some(now);
        if let Some(reason) = &state.broken {
            return Err(Error::transport(TRANSPORT, reason.clone()));
        }
        if state.handed.len() + state.retried.len() > FORGET_ABOVE {
            forget_oldest(&mut state, now, self.ack_wait);
        }
        while let Some(arrival) = state.ready.pop_front() {
            state.handed.insert(
                arrival.stream_sequence,
                Handed {
                    delivered: arrival.delivered,
                    at: arrival.at,
                },
            );
            if now.duration_since(arrival.at) >= self.ack_wait {
                // The server has expired it and hands it out again; until
                // then it counts as an expired delivery.
                self.counters
                    .expired_unclaimed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if std::mem::take(counted) {
                state.waiting = state.waiting.saturating_sub(1);
            }
            return Ok(Next::Take(Box::new(arrival)));
        }
        // A request made before a reconnection is presumed gone with the
        // old connection; an expired one is over even if its status never
        // came.
        let before = state.requests.len();
        state
            .requests
            .retain(|r| r.epoch == epoch && now < r.expires_at);
        state.suspect |= state.requests.len() < before;
        if !*counted {
            *counted = true;
            state.waiting += 1;
        }
        let asked: usize = state.requests.iter().map(|r| r.remaining).sum();
        let uncovered = state.waiting.saturating_sub(asked);
        if uncovered > 0 && std::mem::take(&mut state.suspect) {
            return Ok(Next::Check);
        }
        if uncovered > 0 {
            let request = PullRequest {
                id: state.next_request,
                remaining: uncovered.min(self.batch),
                expires_at: now + time_left.clamp(MIN_PULL, MAX_PULL),
                epoch,
            };
            state.next_request += 1;
            state.requests.push_back(request);
            return Ok(Next::Pull(request));
        }
        let first_expiry = state
            .requests
            .iter()
            .map(|r| r.expires_at)
            .min()
            .unwrap_or(now + MIN_PULL);
        Ok(Next::Wait(first_expiry))
    }

    /// Marks the feed broken when its consumer no longer exists.
    async fn check_consumer(&self) {
        let info = self.consumer.cached_info();
        let subject = format!("CONSUMER.INFO.{}.{}", info.stream_name, info.name);
        let response: std::result::Result<Response<jetstream::consumer::Info>, _> =
            self.js.request(subject, &serde_json::json!({})).await;
        match response {
            Ok(Response::Err { error }) if error.code() == 404 => {
                self.state().broken = Some(format!(
                    "the jetstream consumer {} of {} is gone: {error}",
                    self.group, self.topic
                ));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(topic = %self.topic, group = %self.group, %error, "jetstream consumer check failed");
            }
        }
    }

    async fn pull(&self, request: PullRequest) -> Result<()> {
        let expires = request.expires_at.saturating_duration_since(Instant::now());
        let sent = self
            .consumer
            .request_batch(
                pull::BatchConfig {
                    batch: request.remaining,
                    expires: Some(expires.max(MIN_PULL)),
                    ..Default::default()
                },
                format!("{}.{}", self.inbox, request.id).into(),
            )
            .await;
        if let Err(error) = sent {
            self.state().requests.retain(|r| r.id != request.id);
            return Err(Error::transport(TRANSPORT, error));
        }
        Ok(())
    }

    /// Handles one message on the feed's inbox: a job (its subject is the
    /// stream's, its reply the ack subject), a pull request's status (on
    /// the request's own reply subject) or a sync probe.
    fn arrived(&self, message: async_nats::Message) {
        let suffix = message
            .subject
            .strip_prefix(self.inbox.as_str())
            .and_then(|rest| rest.strip_prefix('.'));
        if let Some(status) = message.status {
            if let Some(request_id) = suffix.and_then(|s| s.parse::<u64>().ok()) {
                self.status(request_id, status, &message);
            }
            return;
        }
        if suffix == Some("sync") {
            let token = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(waiter) = token.and_then(|t| self.state().syncs.remove(&t)) {
                let _ = waiter.send(());
            }
            return;
        }
        if !message
            .reply
            .as_ref()
            .is_some_and(|reply| reply.starts_with("$JS.ACK."))
        {
            return;
        }
        let message = jetstream::Message {
            message,
            context: self.js.clone(),
        };
        let (stream_sequence, consumer_sequence, delivered) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                info.consumer_sequence,
                u64::try_from(info.delivered).unwrap_or(1),
            ),
            Err(error) => {
                tracing::warn!(topic = %self.topic, group = %self.group, %error, "jetstream delivery without a valid ack subject; ignored");
                return;
            }
        };
        let mut state = self.state();
        // Jobs carry no request id: they count against the oldest request,
        // the one the server serves first.
        if let Some(request) = state.requests.front_mut() {
            request.remaining = request.remaining.saturating_sub(1);
            if request.remaining == 0 {
                state.requests.pop_front();
            }
        }
        // Back from a retry or an expiry: pending again, not in flight.
        state.retried.remove(&stream_sequence);
        state.handed.remove(&stream_sequence);
        state.ready.push_back(Arrival {
            message,
            stream_sequence,
            consumer_sequence,
            delivered,
            at: Instant::now(),
        });
        drop(state);
        self.arrived.notify_one();
    }

    fn status(
        &self,
        request_id: u64,
        status: async_nats::StatusCode,
        message: &async_nats::Message,
    ) {
        use async_nats::StatusCode;
        if status == StatusCode::IDLE_HEARTBEAT {
            return;
        }
        let mut state = self.state();
        state.requests.retain(|r| r.id != request_id);
        if status != StatusCode::TIMEOUT && status != StatusCode::NOT_FOUND {
            let description = message
                .description
                .clone()
                .unwrap_or_else(|| status.to_string());
            tracing::debug!(topic = %self.topic, group = %self.group, %status, %description, "jetstream pull ended");
            if status == StatusCode::NO_RESPONDERS
                || description.to_ascii_lowercase().contains("deleted")
            {
                state.broken = Some(format!(
                    "the jetstream consumer {} of {} is gone: {description}",
                    self.group, self.topic
                ));
            }
        }
        drop(state);
        // Every waiting receive decides again (one of them pulls anew).
        self.arrived.notify_waiters();
    }

    /// Sends an ack or term without waiting for the server; see
    /// [`confirm`](Self::confirm).
    async fn send_ack(&self, message: &jetstream::Message, kind: AckKind) -> Result<()> {
        let Some(reply) = message.reply.clone() else {
            return Err(Error::transport(TRANSPORT, "not a JetStream delivery"));
        };
        self.client
            .publish(reply.clone(), Bytes::from(kind))
            .await
            .map_err(|e| Error::transport(TRANSPORT, e))?;
        let epoch = self.epoch();
        let mut state = self.state();
        if state.unconfirmed.is_none() {
            state.unconfirmed_since = epoch;
        }
        state.unconfirmed = Some(reply);
        Ok(())
    }

    /// Waits until the server has applied every ack and term this feed
    /// sent: the server handles one consumer's acks in order, so a
    /// confirmed ack sent after them (on the last one's subject; acking a
    /// settled delivery again changes nothing) proves it. True when some
    /// were sent before a reconnection (the server may not have had them).
    async fn confirm(&self) -> Result<bool> {
        let Some(reply) = self.state().unconfirmed.clone() else {
            return Ok(false);
        };
        match self
            .client
            .request(reply.clone(), Bytes::from(AckKind::Ack))
            .await
        {
            Ok(_) => {}
            // The consumer is gone, and its acks with it.
            Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(error) => return Err(Error::transport(TRANSPORT, error)),
        }
        let epoch = self.epoch();
        let mut state = self.state();
        let maybe_lost = state.unconfirmed_since != epoch;
        if state.unconfirmed.as_ref() == Some(&reply) {
            state.unconfirmed = None;
        }
        state.unconfirmed_since = epoch;
        if maybe_lost {
            tracing::warn!(topic = %self.topic, group = %self.group,
                "jetstream acks sent before a reconnection may be lost; their jobs come back after the visibility timeout");
        }
        Ok(maybe_lost)
    }

    /// A round trip through the server on this feed's inbox: once it is
    /// back, every delivery the server sent before it has been read.
    async fn sync(&self, timeout: Duration) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let token = {
            let mut state = self.state();
            let token = state.next_sync;
            state.next_sync += 1;
            state.syncs.insert(token, done);
            token
        };
        let sent = self
            .client
            .publish(
                format!("{}.sync", self.inbox),
                Bytes::from(token.to_string()),
            )
            .await;
        let outcome = match sent {
            Err(error) => Err(Error::transport(TRANSPORT, error)),
            Ok(()) => match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Error::Closed(NAME)),
                Err(_) => Err(Error::Timeout {
                    waiting_for: "a round trip through the NATS server".to_owned(),
                    timeout,
                }),
            },
        };
        self.state().syncs.remove(&token);
        outcome
    }

    /// Jobs the server counted as ack pending, when it had delivered up to
    /// consumer sequence `delivered_up_to`, that the queue counts as
    /// pending: arrived and not handed out (delivered by then, or a
    /// redelivery, which was ack pending before), retried and not yet
    /// back, handed out and expired.
    fn not_in_flight(&self, delivered_up_to: u64) -> u64 {
        let now = Instant::now();
        let state = self.state();
        let expired = state
            .handed
            .values()
            .filter(|h| now.duration_since(h.at) >= self.ack_wait)
            .count();
        let not_handed = state
            .ready
            .iter()
            .filter(|a| a.consumer_sequence <= delivered_up_to || a.delivered > 1)
            .count();
        (not_handed + state.retried.len() + expired) as u64
    }

    /// True when no receive used the feed for `after` (at least the
    /// visibility timeout) and no delivery of it is out.
    fn idle(&self, now: Instant, after: Duration) -> bool {
        let after = after.max(self.ack_wait);
        let state = self.state();
        state.waiting == 0
            && state
                .last_receive
                .is_none_or(|at| now.duration_since(at) >= after)
            && state
                .handed
                .values()
                .all(|h| now.duration_since(h.at) >= self.ack_wait)
    }

    /// Stops pulling, reads what the server already sent, and gives back
    /// at once every job not handed out.
    async fn stop(&self) {
        self.state().closing = true;
        // Waiting receives see the feed stopped.
        self.arrived.notify_waiters();
        self.stop.cancel();
        let reader = lock(&self.reader).take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
        let ready: Vec<Arrival> = self.state().ready.drain(..).collect();
        for arrival in ready {
            if let Err(error) = arrival.message.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(%error, "jetstream nak of a job not handed out failed");
            }
        }
    }
}

/// Keeps the maps of expired deliveries and retries bounded: when they
/// hold more than [`FORGET_ABOVE`] entries, forgets the oldest half
/// (likely received by another process, never seen here again). Bounded
/// by size rather than age, so the figures of a quiet queue stay exact.
fn forget_oldest(state: &mut FeedState, now: Instant, ack_wait: Duration) {
    let keep = FORGET_ABOVE / 2;
    if state.retried.len() > keep {
        let mut due: Vec<Instant> = state.retried.values().copied().collect();
        due.sort_unstable();
        let cut = due[due.len() - keep];
        state.retried.retain(|_, d| *d >= cut);
    }
    let expired: Vec<Instant> = state
        .handed
        .values()
        .filter(|h| now.duration_since(h.at) >= ack_wait)
        .map(|h| h.at)
        .collect();
    if expired.len() > keep {
        let mut at = expired;
        at.sort_unstable();
        let cut = at[at.len() - keep];
        state
            .handed
            .retain(|_, h| now.duration_since(h.at) < ack_wait || h.at >= cut);
    }
}

/// Closes the feeds no receive used for a while (see
/// [`JetStreamBackendBuilder::feed_idle_timeout`]), with the topics left
/// without a feed, until the backend is closed or dropped.
async fn close_idle_feeds(shared: std::sync::Weak<Shared>) {
    let (shutdown, every) = match shared.upgrade() {
        Some(shared) => (
            shared.shutdown.clone(),
            (shared.options.feed_idle / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(15)),
        ),
        None => return,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let idle: Vec<Arc<Feed>> = {
            let mut feeds = lock(&shared.feeds);
            let keys: Vec<(String, String)> = feeds
                .iter()
                .filter(|(_, cell)| {
                    cell.get()
                        .is_some_and(|feed| feed.idle(now, shared.options.feed_idle))
                })
                .map(|(key, _)| key.clone())
                .collect();
            let idle = keys
                .iter()
                .filter_map(|key| feeds.remove(key))
                .filter_map(|cell| cell.get().cloned())
                .collect();
            let mut topics = lock(&shared.topics);
            for (topic, _) in &keys {
                if !feeds.keys().any(|(t, _)| t == topic) {
                    topics.remove(topic);
                }
            }
            idle
        };
        for feed in &idle {
            tracing::debug!(topic = %feed.topic, group = %feed.group, "idle jetstream feed closed");
        }
        futures::future::join_all(idle.iter().map(|feed| feed.stop())).await;
    }
}

async fn read_loop(feed: Arc<Feed>, mut subscriber: async_nats::Subscriber) {
    let stopped = feed.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            message = subscriber.next() => match message {
                Some(message) => feed.arrived(message),
                None => return,
            },
        }
    }
    // No pull request is made any more: unsubscribe, and read what the
    // server sent before it saw that (the stream ends once it confirms),
    // so `stop` gives those jobs back too.
    if subscriber.drain().await.is_err() {
        return;
    }
    let drained = async {
        while let Some(message) = subscriber.next().await {
            feed.arrived(message);
        }
    };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        tracing::debug!(topic = %feed.topic, group = %feed.group, "jetstream feed drain timed out");
    }
}

/// Sends an ack-kind reply and waits for the server to confirm it.
async fn confirmed(message: &jetstream::Message, kind: AckKind) -> Result<()> {
    let Some(reply) = message.reply.clone() else {
        return Err(Error::transport(TRANSPORT, "not a JetStream delivery"));
    };
    message
        .context
        .client()
        .request(reply, Bytes::from(kind))
        .await
        .map(|_| ())
        .map_err(|e| Error::transport(TRANSPORT, e))
}

/// True when the server refused a publish because the stream is full.
fn is_full(error: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|inner| {
            inner.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED
                && inner.to_string().contains("maximum messages")
        })
}

impl JetStreamBackend {
    async fn publish(&self, topic: &Topic, job: &Message) -> Result<PublishOutcome> {
        let payload = job.to_json()?;
        let mut headers = async_nats::HeaderMap::new();
        // A producer that retries after a lost confirmation stores the job once.
        if self.shared.options.deduplicate {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, job.id.as_str());
        }
        let sent = self
            .shared
            .js
            .publish_with_headers(topic.subject.clone(), headers, payload.into())
            .await
            .map_err(|e| Error::transport(TRANSPORT, e))?;
        match sent.await {
            Ok(ack) => {
                if ack.duplicate {
                    tracing::debug!(topic = %job.topic, message_id = %job.id, "job already stored (same message id)");
                } else {
                    self.shared
                        .counters
                        .enqueued
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(PublishOutcome::Stored)
            }
            Err(error) if is_full(&error) => Ok(PublishOutcome::Full),
            Err(error) if error.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                Ok(PublishOutcome::NoStream)
            }
            Err(error) => Err(Error::transport(TRANSPORT, error)),
        }
    }

    /// The group to name in [`Error::QueueFull`]: the fullest one this
    /// process knows of.
    async fn fullest_group(&self, options: &WorkOptions, topic: &Topic) -> String {
        let mut groups: Vec<String> = lock(&topic.consumers).keys().cloned().collect();
        groups.sort();
        let mut fullest: Option<(u64, String)> = None;
        for group in groups {
            if let Ok(Some(info)) = self.consumer_info(&topic.stream, &group).await {
                let held = info.num_pending + info.num_ack_pending as u64;
                if fullest.as_ref().is_none_or(|(most, _)| held > *most) {
                    fullest = Some((held, group));
                }
            }
        }
        fullest.map(|(_, group)| group).unwrap_or_else(|| {
            options
                .groups
                .first()
                .cloned()
                .unwrap_or_else(|| eventforge_work::DEFAULT_GROUP.to_owned())
        })
    }

    /// The server's figures of `group`'s consumer; None when the stream or
    /// the consumer does not exist.
    async fn consumer_info(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<Option<jetstream::consumer::Info>> {
        let subject = format!("CONSUMER.INFO.{stream}.{}", jetstream_name(group));
        let response: Response<jetstream::consumer::Info> = self
            .shared
            .js
            .request(subject, &serde_json::json!({}))
            .await
            .map_err(|e| Error::transport(TRANSPORT, e))?;
        match response {
            Response::Ok(info) => Ok(Some(info)),
            Response::Err { error } if error.code() == 404 => Ok(None),
            Response::Err { error } => Err(Error::transport(TRANSPORT, error)),
        }
    }
}

enum PublishOutcome {
    Stored,
    Full,
    NoStream,
}

/// The token of a receipt this backend made, unless its delivery has
/// expired (then the later delivery owns the job).
fn live_token(receipt: Receipt) -> Result<Token> {
    let token = receipt
        .into_token::<Token>()
        .ok_or_else(|| Error::transport(TRANSPORT, "a receipt of another backend"))?;
    if token.expired() {
        token.feed.settled(&token);
        return Err(Error::DeliveryExpired {
            job_id: token.job_id,
        });
    }
    Ok(token)
}

#[async_trait]
impl WorkBackend for JetStreamBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create_group(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        from_start: bool,
    ) -> Result<()> {
        check_topic(topic)?;
        self.check_connected()?;
        self.shared
            .topic_consumer(options, topic, group, from_start)
            .await?;
        Ok(())
    }

    async fn enqueue(&self, options: &WorkOptions, job: Message) -> Result<()> {
        check_topic(&job.topic)?;
        self.check_connected()?;
        let mut topic = self.shared.topic(options, &job.topic).await?;
        let mut outcome = self.publish(&topic, &job).await?;
        if let PublishOutcome::NoStream = outcome {
            // Deleted behind this process's back: make it again, once.
            tracing::warn!(topic = %job.topic, "work queue stream is gone; creating it again");
            self.shared.forget_topic(&job.topic);
            topic = self.shared.topic(options, &job.topic).await?;
            outcome = self.publish(&topic, &job).await?;
        }
        if let PublishOutcome::Full = outcome {
            // Acks of this process the server has not applied yet may be
            // what fills the stream: once they are, the refusal is exact.
            if self.shared.confirm_acks(Some(&job.topic)).await?.some {
                outcome = self.publish(&topic, &job).await?;
            }
        }
        match outcome {
            PublishOutcome::Stored => Ok(()),
            PublishOutcome::Full => Err(Error::QueueFull {
                topic: job.topic.clone(),
                group: self.fullest_group(options, &topic).await,
                limit: options.max_size,
            }),
            PublishOutcome::NoStream => Err(Error::transport(
                TRANSPORT,
                format!("no stream stores subject {}", topic.subject),
            )),
        }
    }

    async fn receive(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>> {
        check_topic(topic)?;
        self.check_connected()?;
        let deadline = Instant::now() + timeout;
        let mut waiting = WaitingReceive {
            feed: self.shared.feed(options, topic, group).await?,
            counted: false,
        };
        loop {
            let feed = Arc::clone(&waiting.feed);
            let notified = feed.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let time_left = deadline.saturating_duration_since(Instant::now());
            let next = match feed.next(time_left, &mut waiting.counted) {
                Ok(next) => next,
                Err(error) => {
                    // The consumer (maybe the stream) is gone: the next call
                    // makes them again.
                    self.shared.forget_topic(topic);
                    return Err(error);
                }
            };
            match next {
                Next::Take(arrival) => {
                    let message = match Message::from_json(&arrival.message.payload) {
                        Ok(message) => message,
                        Err(error) => {
                            feed.state().handed.remove(&arrival.stream_sequence);
                            let n = self
                                .shared
                                .counters
                                .undecodable
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(topic, group, stream_sequence = arrival.stream_sequence, %error,
                                skipped_so_far = n + 1, "work queue entry is not an eventforge Message; terminated");
                            if let Err(error) = feed.send_ack(&arrival.message, AckKind::Term).await
                            {
                                tracing::debug!(%error, "terminating an undecodable job failed");
                            }
                            continue;
                        }
                    };
                    let at = feed.hand_out(&arrival).await;
                    self.shared
                        .counters
                        .delivered
                        .fetch_add(1, Ordering::Relaxed);
                    let attempt = u32::try_from(arrival.delivered).unwrap_or(u32::MAX);
                    let token = Token {
                        feed: Arc::clone(&feed),
                        job_id: message.id.clone(),
                        stream_sequence: arrival.stream_sequence,
                        delivered: arrival.delivered,
                        at,
                        message: arrival.message,
                    };
                    return Ok(Some(Delivery {
                        message,
                        attempt,
                        receipt: Receipt::new(topic, group, consumer, token),
                    }));
                }
                Next::Pull(request) => {
                    feed.pull(request).await?;
                }
                Next::Check => feed.check_consumer().await,
                Next::Wait(request_expires) => {
                    // Past its expiry a request is over even if the
                    // server's status about it never came: look again.
                    let until = deadline.min(request_expires);
                    if tokio::time::timeout_at(until, notified).await.is_err()
                        && Instant::now() >= deadline
                    {
                        return Ok(None);
                    }
                }
                Next::Stopped => {
                    // Its topic was forgotten while this receive waited:
                    // go on with the topic's new feed.
                    self.check_open()?;
                    let fresh = match self.shared.feed(options, topic, group).await {
                        Ok(fresh) => fresh,
                        // Made while the stream was being deleted: once more.
                        Err(error) => {
                            tracing::debug!(topic, group, %error, "work queue feed made again");
                            self.shared.forget_topic(topic);
                            self.shared.feed(options, topic, group).await?
                        }
                    };
                    // Uncounts this receive on the old feed.
                    waiting = WaitingReceive {
                        feed: fresh,
                        counted: false,
                    };
                }
            }
        }
    }

    async fn ack(&self, receipt: Receipt) -> Result<()> {
        self.check_connected()?;
        let token = live_token(receipt)?;
        let feed = &token.feed;
        feed.send_ack(&token.message, AckKind::Ack).await?;
        feed.settled(&token);
        Ok(())
    }

    async fn retry(&self, _options: &WorkOptions, receipt: Receipt, delay: Duration) -> Result<()> {
        self.check_connected()?;
        let token = live_token(receipt)?;
        let feed = &token.feed;
        feed.state()
            .retried
            .insert(token.stream_sequence, Instant::now() + delay);
        let kind = if delay.is_zero() {
            AckKind::Nak(None)
        } else {
            AckKind::Nak(Some(delay))
        };
        if let Err(error) = confirmed(&token.message, kind).await {
            feed.state().retried.remove(&token.stream_sequence);
            return Err(error);
        }
        feed.settled(&token);
        Ok(())
    }

    async fn stats(
        &self,
        _options: &WorkOptions,
        topic: &str,
        group: &str,
    ) -> Result<BackendStats> {
        check_topic(topic)?;
        self.check_connected()?;
        let stream = self.stream_name(topic);
        let feed = self.shared.existing_feed(topic, group);
        if let Some(feed) = &feed {
            // The figures then count this process's acks.
            feed.confirm().await?;
        }
        let Some(info) = self.consumer_info(&stream, group).await? else {
            return Ok(BackendStats::default());
        };
        let mut stats = BackendStats {
            pending: info.num_pending,
            in_flight: info.num_ack_pending as u64,
        };
        if let Some(feed) = feed {
            // Deliveries sent before the figures are then in the feed.
            feed.sync(self.shared.options.request_timeout).await?;
            let moved = feed
                .not_in_flight(info.delivered.consumer_sequence)
                .min(stats.in_flight);
            stats.pending += moved;
            stats.in_flight -= moved;
        }
        Ok(stats)
    }

    /// Deletes `topic`'s stream with its groups and jobs. False when there
    /// was none.
    async fn delete_topic(&self, topic: &str) -> Result<bool> {
        self.check_open()?;
        self.shared.forget_topic(topic);
        let stream = self.stream_name(topic);
        let deleted = self.shared.js.delete_stream(&stream).await;
        // Again: a receive waiting meanwhile may have made a feed of the
        // stream just deleted.
        self.shared.forget_topic(topic);
        match deleted {
            Ok(status) => Ok(status.success),
            Err(error) => {
                if let jetstream::context::DeleteStreamErrorKind::JetStream(inner) = error.kind() {
                    if inner.code() == 404 {
                        return Ok(false);
                    }
                }
                Err(Error::transport(TRANSPORT, error))
            }
        }
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let confirmed = match self.shared.confirm_acks(None).await {
            Ok(confirmed) => confirmed.check(),
            Err(error) => {
                tracing::warn!(%error, "jetstream acks not confirmed on close; their jobs may come back");
                Ok(())
            }
        };
        let feeds: Vec<Arc<Feed>> = lock(&self.shared.feeds)
            .drain()
            .filter_map(|(_, cell)| cell.get().cloned())
            .collect();
        // Together: each may wait up to the drain time for the server.
        futures::future::join_all(feeds.iter().map(|feed| feed.stop())).await;
        self.shared.shutdown.cancel();
        lock(&self.shared.topics).clear();
        // What close sent (NAKs of jobs not handed out) reaches the server.
        match tokio::time::timeout(
            self.shared.options.request_timeout,
            self.shared.client.flush(),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "jetstream flush on close failed"),
            Err(_) => tracing::debug!("jetstream flush on close timed out"),
        }
        tracing::debug!("jetstream work backend closed");
        confirmed
    }
}

impl Token {
    /// Whether the server has certainly expired this delivery: it arrived
    /// here more than the visibility timeout ago (the server's clock started
    /// earlier), or this process has since received the job again.
    fn expired(&self) -> bool {
        if self.at.elapsed() >= self.feed.ack_wait {
            return true;
        }
        // The entry goes when the job arrives again (or is replaced when
        // the new delivery is handed out).
        self.feed
            .state()
            .handed
            .get(&self.stream_sequence)
            .is_none_or(|h| h.delivered != self.delivered)
    }
}

impl Feed {
    /// When the handed-out delivery's visibility timeout began, as far as
    /// this process knows: a job that waited here restarts the server's
    /// timer with a progress ack first, so the consumer gets the full
    /// visibility timeout.
    async fn hand_out(&self, arrival: &Arrival) -> Instant {
        if arrival.at.elapsed() < PROGRESS_AFTER {
            return arrival.at;
        }
        let Some(reply) = arrival.message.reply.clone() else {
            return arrival.at;
        };
        let now = Instant::now();
        match self
            .client
            .publish(reply, Bytes::from(AckKind::Progress))
            .await
        {
            Ok(()) => {
                if let Some(handed) = self.state().handed.get_mut(&arrival.stream_sequence) {
                    if handed.delivered == arrival.delivered {
                        handed.at = now;
                    }
                }
                now
            }
            Err(error) => {
                tracing::debug!(%error, "jetstream progress ack failed");
                arrival.at
            }
        }
    }

    /// Forgets a delivery once acked, retried or expired.
    fn settled(&self, token: &Token) {
        let mut state = self.state();
        if state
            .handed
            .get(&token.stream_sequence)
            .is_some_and(|h| h.delivered == token.delivered)
        {
            state.handed.remove(&token.stream_sequence);
        }
    }
}

impl Drop for JetStreamBackend {
    fn drop(&mut self) {
        // Reader tasks hold only their feed: stop them with the backend.
        self.shared.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_without_collisions() {
        let inputs = [
            "a.b", "a_b", "a-b", "a-5Fb", "a__b", "a._b", "a_.b", "é", "-C3-A9", "a b", "a*b",
            "a>b", "a/b",
        ];
        let names: std::collections::HashSet<String> =
            inputs.iter().map(|i| jetstream_name(i)).collect();
        assert_eq!(names.len(), inputs.len());
        for name in &names {
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
    }
}
