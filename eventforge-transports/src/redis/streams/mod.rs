//! Work queues stored in Redis Streams: the Redis implementation of
//! [`WorkBackend`], for a work queue shared by every process connected to
//! the same Redis.
//!
//! # Layout
//!
//! A topic is one stream, `<prefix><topic>` (prefix `eventforge:wq:` by
//! default, so `orders.created` is the key `eventforge:wq:orders.created`).
//! Each job is one entry with one field, `message`, holding the whole
//! [`Message`] as the protocol's JSON. Each group of the work queue is a
//! Redis consumer group of that stream. Delayed retries of a group wait in
//! a sorted set `<prefix><topic>*delayed:<group>`; topics never contain `*`,
//! so this key cannot be the stream of another topic nor the set of another
//! topic's group.
//!
//! # Semantics
//!
//! - Declared groups ([`WorkOptions::groups`]) are created at id `0` on
//!   enqueue (and on receive) and see every job the stream holds; other
//!   groups are created at `$` and see the jobs enqueued after.
//! - A job enqueued on a topic that has no group at all (no declared group
//!   and no consumer yet) is accepted and not stored, as with the memory
//!   backend: no group could ever see it, and nothing would trim it.
//! - `receive` hands out, in this order: due delayed retries, deliveries
//!   whose visibility timeout passed (`XAUTOCLAIM` with the timeout as
//!   minimum idle time), and new entries (`XREADGROUP`). `attempt` is the
//!   entry's Redis delivery counter.
//! - `retry` moves the delivery to a reserved consumer of the same group,
//!   [`DELAYED_CONSUMER`], without counting a delivery, and records when it
//!   is due in the group's delayed set. When it is due, a receive claims it
//!   (which counts the delivery). The job never leaves the group's pending
//!   entries list, so other groups never see it again, and a retry delayed
//!   beyond the visibility timeout is given back to the reserved consumer
//!   whenever the expiry scan meets it before it is due. A consumer blocked
//!   waiting for new jobs notices a due retry at its next poll, at most
//!   [`poll_interval`](RedisStreamsBackendBuilder::poll_interval) late.
//! - Jobs taken from Redis for a consumer and never handed out (its
//!   `receive` timed out, was dropped or closed while the fetch ran, or a
//!   job waited too long in its buffer, or no `receive` of the consumer
//!   waited for a poll interval while it held jobs) are given back to the
//!   group: parked
//!   like a retry that is due at once, with their delivery counter set
//!   back, so the next receive of any consumer takes them with the same
//!   `attempt`. Until then they count as pending.
//! - `retry`, and an `ack` late enough that the delivery may have expired,
//!   check in the same script as the `XCLAIM`/`XACK` that the delivery is
//!   still owned by the receipt's consumer with the receipt's delivery
//!   count; otherwise they fail with [`Error::DeliveryExpired`]. An ack
//!   sent before the visibility timeout (less a tenth of it, at most 1 s,
//!   for clocks) has passed since the job was asked from Redis cannot find
//!   it handed out again, and is a plain pipelined `XACK`; it fails as
//!   expired only when the entry is no longer pending at all. The choice is
//!   made when the ack is sent, not when it is asked for, so an ack that
//!   waited in the queue is checked. Every process of a group must
//!   therefore use the same visibility timeout. A `retry` whose entry was
//!   deleted meanwhile fails as expired too.
//! - Stats: `pending` is the group's lag (entries never delivered) plus its
//!   delayed retries; `in_flight` is its pending entries list minus the
//!   delayed retries. Expired deliveries not yet claimed again count as in
//!   flight. Jobs this process has taken from Redis for its consumers but
//!   not handed out yet count as pending (those of other processes count
//!   as in flight). `max_size` is checked against `pending + in_flight` in
//!   the enqueue script, before the `XADD`; a limit above 2^50 (such as
//!   `u64::MAX`) means no limit.
//! - Trimming: after acks, a script runs `XTRIM MINID` at the oldest entry
//!   some group still needs (its oldest pending entry, or the one after its
//!   last delivered entry), so entries acked by every group are removed.
//!   A process trims a stream at most every 10 ms; acks made in between
//!   are followed by a trim once the 10 ms have passed (and before `close`
//!   returns). Trimming also deletes the group's Redis consumers that hold
//!   no job and were idle for
//!   [`consumer_idle_limit`](RedisStreamsBackendBuilder::consumer_idle_limit),
//!   never [`DELAYED_CONSUMER`].
//! - An entry that is not a Message (written by something else) is acked
//!   with a warning and counted in [`RedisStreamsStats::undecodable`]; an
//!   entry deleted while in flight is dropped from the group when its
//!   visibility timeout passes.
//! - A group that disappeared (Redis restarted without persistence) is
//!   made again by the next receive, as described above.
//!
//! # Speed
//!
//! A consumer takes one job per waiting `receive` call from Redis in one
//! script call. When several calls waited and the fetch got all it asked
//! for (a backlog), it takes whole batches (up to
//! [`batch_size`](RedisStreamsBackendBuilder::batch_size)) and fetches the
//! next batch while handing out the current one. A consumer calling
//! `receive` one call at a time never holds more than the job it asked
//! for. Enqueues and acks waiting at the same time go to Redis together, as one script call per topic (enqueue) and one pipeline
//! of `XACK`s (ack), with up to four such batches in flight. Blocking reads
//! (`XREADGROUP BLOCK`, at most the poll interval) use connections of their
//! own, so they never hold up other commands.

mod scripts;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventforge_core::{validate_topic, Error, Message, Result};
use eventforge_work::{BackendStats, Delivery, Receipt, WorkBackend, WorkOptions};
use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::scripts::Script;

const NAME: &str = "redis";

/// The consumer that holds a group's delayed retries until they are due.
pub const DELAYED_CONSUMER: &str = "eventforge:delayed";

/// The default prefix of every key of the work queue.
pub const DEFAULT_PREFIX: &str = "eventforge:wq:";

/// Most jobs or acks sent to Redis in one round of script calls.
const MAX_BATCH: usize = 1024;

/// Shortest time between two trims of one stream by one process.
const TRIM_INTERVAL: Duration = Duration::from_millis(10);

/// Batches of enqueues, and of acks, sent to Redis and not answered yet.
const BATCHES_IN_FLIGHT: usize = 4;

/// Requests waiting for the enqueue or ack task before callers wait.
const QUEUE: usize = 8192;

/// Idle blocking connections kept for the next blocking read.
const IDLE_BLOCKING: usize = 16;

/// Largest `max_size` the enqueue script works with: a larger limit (such
/// as `u64::MAX`, no limit) is the same as this one, and stays exact in
/// Lua's numbers.
const MAX_SIZE_CAP: u64 = 1 << 50;

/// Most entries counted one by one when Redis cannot report a group's lag
/// (only after entries were deleted with `XDEL`).
const STATS_COUNT_CAP: u64 = 1_000_000;

/// Counters of a [`RedisStreamsBackend`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStreamsStats {
    /// Stream entries that were not an eventforge Message: acked and skipped.
    pub undecodable: u64,
    /// Times the connection to Redis was (re-)established after the first.
    pub reconnects: u64,
}

/// Options of a [`RedisStreamsBackend`]; made by [`RedisStreamsBackend::builder`].
#[derive(Debug, Clone)]
pub struct RedisStreamsBackendBuilder {
    url: String,
    // Put before every key, so several applications can share one Redis.
    prefix: String,
    // Most jobs taken from Redis in one fetch.
    batch_size: usize,
    // Bounds blocking reads, so due retries and expired jobs are noticed.
    poll_interval: Duration,
    command_timeout: Duration,
    // Reconnection pacing while Redis is unreachable.
    initial_backoff: Duration,
    max_backoff: Duration,
    // Redis consumers holding nothing and idle this long are deleted.
    consumer_idle_limit: Duration,
}

impl RedisStreamsBackendBuilder {
    /// Prefix of every Redis key (default [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Most jobs one consumer takes from Redis at a time and hands out to
    /// its `receive` calls (default 32, at most 64). A job taken stays in
    /// flight from then on, so a large batch with a short visibility
    /// timeout and slow handlers makes jobs expire before they run.
    pub fn batch_size(mut self, jobs: usize) -> Self {
        self.batch_size = jobs.clamp(1, 64);
        self
    }

    /// Longest time a waiting `receive` blocks on Redis before it looks for
    /// due retries and expired deliveries again (default 100 ms). A retry
    /// or an expired job is handed out at most this late.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long connecting and each command may take before failing
    /// (default 5 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// First and largest delay between reconnection attempts while Redis is
    /// unreachable (default 50 ms doubling up to 2 s). Calls made meanwhile
    /// fail at once with [`Error::Transport`].
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.initial_backoff);
        self
    }

    /// How long a Redis consumer of a group that holds no job may stay idle
    /// before trimming deletes it (default 10 minutes), so that consumer
    /// names used once (one per process, per `dequeue` caller...) do not
    /// pile up in the group. A consumer still in use is made again by its
    /// next receive; one holding jobs is never deleted.
    pub fn consumer_idle_limit(mut self, limit: Duration) -> Self {
        self.consumer_idle_limit = limit;
        self
    }

    /// Connects, loads the scripts and starts the background tasks.
    ///
    /// Fails with [`Error::Transport`] when the URL is malformed or Redis
    /// does not answer.
    pub async fn connect(self) -> Result<RedisStreamsBackend> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| transport_error(&e))?;
        let link = Link::new(client, &self);
        link.connection().await?;
        let (enqueue, enqueue_rx) = mpsc::channel(QUEUE);
        let (settle, settle_rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            link,
            fetchers: Mutex::new(HashMap::new()),
            settle,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            undecodable: AtomicU64::new(0),
            options: self,
        });
        let tasks = vec![
            tokio::spawn(enqueue_loop(Arc::clone(&shared), enqueue_rx)),
            tokio::spawn(settle_loop(Arc::clone(&shared), settle_rx)),
            tokio::spawn(sweep_loop(Arc::clone(&shared))),
        ];
        Ok(RedisStreamsBackend {
            shared,
            enqueue,
            closed: AtomicBool::new(false),
            tasks: Mutex::new(tasks),
        })
    }
}

/// A [`WorkBackend`] on Redis Streams with consumer groups.
///
/// ```no_run
/// use eventforge_core::Message;
/// use eventforge_work::{WorkBackend, WorkOptions};
/// use eventforge_transports::redis::RedisStreamsBackend;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let backend = RedisStreamsBackend::builder("redis://127.0.0.1:6379")
///     .prefix("myapp:jobs:")
///     .connect()
///     .await?;
/// let options = WorkOptions::default();
/// backend.enqueue(&options, Message::new("emails.send", "hello")?).await?;
/// let consumer = eventforge_core::new_id();
/// if let Some(job) = backend
///     .receive(&options, "emails.send", "default", &consumer, Duration::from_secs(1))
///     .await?
/// {
///     assert_eq!(job.attempt, 1);
///     backend.ack(job.receipt).await?;
/// }
/// backend.close().await?;
/// # Ok(()) }
/// ```
///
/// The module documentation ([`crate::redis`]) gives the keys used
/// and the exact semantics of retries, stats and trimming. The backend
/// reconnects by itself: while Redis is unreachable calls fail with
/// [`Error::Transport`], and work again once it is back.
///
/// `close` first finishes the enqueues and acks already made (for at most
/// the command timeout), then ends waiting receives with
/// [`Error::Closed`]; jobs waiting in a consumer's buffer are given back
/// to the group in the background, and those of a fetch cut short by
/// `close` come back after their visibility timeout.
#[derive(Debug)]
pub struct RedisStreamsBackend {
    // Also held by the background tasks.
    shared: Arc<Shared>,
    // Queue of the enqueue task.
    enqueue: mpsc::Sender<Enqueue>,
    // Set by `close`: every call fails with `Error::Closed` from then on.
    closed: AtomicBool,
    // Joined by `close`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisStreamsBackend {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) with default
    /// options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Options for a backend connecting to `url`.
    pub fn builder(url: impl Into<String>) -> RedisStreamsBackendBuilder {
        RedisStreamsBackendBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            batch_size: 32,
            poll_interval: Duration::from_millis(100),
            command_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            consumer_idle_limit: Duration::from_secs(600),
        }
    }

    /// Counters since connecting.
    pub fn counters(&self) -> RedisStreamsStats {
        RedisStreamsStats {
            undecodable: self.shared.undecodable.load(Ordering::Relaxed),
            reconnects: self.shared.link.reconnects.load(Ordering::Relaxed),
        }
    }

    /// The Redis key of the stream holding `topic`'s jobs.
    pub fn stream_key(&self, topic: &str) -> String {
        self.shared.stream_key(topic)
    }

    /// The Redis key of the sorted set holding `group`'s delayed retries on
    /// `topic`.
    pub fn delayed_key(&self, topic: &str, group: &str) -> String {
        self.shared.delayed_key(topic, group)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed(NAME))
        } else {
            Ok(())
        }
    }
}

/// What a receipt of this backend carries.
#[derive(Debug, Clone)]
struct Token {
    // The stream entry id.
    entry: String,
    // Redis's delivery counter when it was handed out: a later delivery of
    // the same entry has a higher one.
    delivered: u32,
    // For `Error::DeliveryExpired`.
    job_id: String,
    // Until then the delivery cannot have expired: its visibility timeout,
    // counted from before Redis handed it out, has not passed.
    unexpired_until: Instant,
}

/// State shared with the background tasks.
#[derive(Debug)]
struct Shared {
    // The connection every script call goes through.
    link: Link,
    // One per (topic, group, consumer) being received from.
    fetchers: Mutex<HashMap<FetchKey, Arc<Fetcher>>>,
    // Queue of the ack task (also used by fetches to skip garbage entries).
    settle: mpsc::Sender<Settle>,
    // Ends the background tasks and waiting calls.
    shutdown: CancellationToken,
    // Set by `close` first: the enqueue and ack tasks finish what callers
    // already handed them, then end.
    draining: CancellationToken,
    // Entries skipped because they were not a Message.
    undecodable: AtomicU64,
    options: RedisStreamsBackendBuilder,
}

impl Shared {
    fn stream_key(&self, topic: &str) -> String {
        format!("{}{topic}", self.options.prefix)
    }

    fn delayed_key(&self, topic: &str, group: &str) -> String {
        format!("{}{topic}*delayed:{group}", self.options.prefix)
    }

    fn fetcher(&self, key: &FetchKey) -> Arc<Fetcher> {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            fetchers
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Fetcher::new(key.clone()))),
        )
    }

    /// Jobs of `group` on `topic` taken from Redis and not handed out yet.
    fn buffered(&self, topic: &str, group: &str) -> u64 {
        let fetchers = self.fetchers.lock().unwrap_or_else(PoisonError::into_inner);
        fetchers
            .iter()
            .filter(|((t, g, _), _)| t == topic && g == group)
            .map(|(_, fetcher)| fetcher.state().buffer.len() as u64)
            .sum()
    }

    /// Waits (a little) for fetches of `group` on `topic` that are about to
    /// hand jobs over, so figures read next agree with the buffers.
    async fn fetches_settled(&self, topic: &str, group: &str) {
        let deadline = tokio::time::Instant::now() + self.options.command_timeout;
        loop {
            let busy = {
                let fetchers = self.fetchers.lock().unwrap_or_else(PoisonError::into_inner);
                fetchers
                    .iter()
                    .filter(|((t, g, _), _)| t == topic && g == group)
                    .map(|(_, fetcher)| fetcher)
                    .find(|fetcher| fetcher.state().settling())
                    .cloned()
            };
            let Some(fetcher) = busy else { return };
            let fetched = fetcher.fetched.notified();
            tokio::pin!(fetched);
            fetched.as_mut().enable();
            let still_busy = fetcher.state().settling();
            if still_busy && tokio::time::timeout_at(deadline, fetched).await.is_err() {
                return;
            }
        }
    }

    /// Forgets a fetcher nobody uses and that holds nothing.
    fn release(&self, fetcher: &Arc<Fetcher>) {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and the caller's: nobody else waits on it.
        if Arc::strong_count(fetcher) == 2 && fetcher.state().is_idle() {
            fetchers.remove(&fetcher.key);
        }
    }

    /// Gives `jobs`, taken from Redis for `fetcher`'s consumer and never
    /// handed out, back to the group in the background, so that any
    /// consumer can take them at once with the same attempt.
    /// `state` is the fetcher's, locked by the caller.
    fn give_back(
        self: &Arc<Self>,
        fetcher: &Arc<Fetcher>,
        state: &mut FetchState,
        jobs: Vec<Fetched>,
    ) {
        if jobs.is_empty() {
            return;
        }
        // Dropped outside a runtime: the jobs come back after their
        // visibility timeout instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.giving_back += 1;
        runtime.spawn(give_back(Arc::clone(self), Arc::clone(fetcher), jobs));
    }
}

/// The connection to Redis, re-established on the next call after it is
/// lost.
#[derive(Debug)]
struct Link {
    client: redis::Client,
    // Timeouts of the shared connection: a command answered later fails,
    // and the connection is replaced.
    config: AsyncConnectionConfig,
    // Serialises connection attempts.
    connecting: tokio::sync::Mutex<()>,
    state: Mutex<LinkState>,
    // Idle connections for blocking reads, which would hold up every other
    // command on the shared connection.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    // Connections made after the first, for `RedisStreamsStats`.
    reconnects: AtomicU64,
    // SHA1 digests of the scripts, by `Script::index`, known after the first load.
    digests: Mutex<Vec<String>>,
    options: RedisStreamsBackendBuilder,
}

#[derive(Debug)]
struct LinkState {
    // None while Redis is unreachable; tagged with its generation so a late
    // failure of an old connection does not drop its replacement.
    connection: Option<(u64, MultiplexedConnection)>,
    generation: u64,
    // No connection attempt before this instant after a failed one.
    next_attempt: Instant,
    // Wait after the next failed attempt.
    backoff: Duration,
}

impl Link {
    fn new(client: redis::Client, options: &RedisStreamsBackendBuilder) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.command_timeout))
            .set_response_timeout(Some(options.command_timeout));
        Link {
            client,
            config,
            connecting: tokio::sync::Mutex::new(()),
            state: Mutex::new(LinkState {
                connection: None,
                generation: 0,
                next_attempt: Instant::now(),
                backoff: options.initial_backoff,
            }),
            blocking: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            digests: Mutex::new(Vec::new()),
            options: options.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared connection and its generation, connecting first if needed.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection)> {
        if let Some(connection) = self.state().connection.clone() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        {
            let state = self.state();
            if let Some(connection) = state.connection.clone() {
                return Ok(connection);
            }
            if Instant::now() < state.next_attempt {
                return Err(Error::transport(
                    NAME,
                    "not connected to Redis (reconnecting); try again",
                ));
            }
        }
        let outcome = async {
            let mut connection = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            self.load_scripts(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        }
        .await;
        let mut state = self.state();
        match outcome {
            Ok(connection) => {
                state.generation += 1;
                if state.generation > 1 {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("redis work queue connection re-established");
                }
                state.backoff = self.options.initial_backoff;
                state.connection = Some((state.generation, connection.clone()));
                Ok((state.generation, connection))
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?state.backoff, "redis work queue connection failed");
                state.next_attempt = Instant::now() + state.backoff;
                state.backoff = (state.backoff * 2).min(self.options.max_backoff);
                Err(transport_error(&error))
            }
        }
    }

    async fn load_scripts(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for script in Script::ALL {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script.source());
        }
        let digests: Vec<String> = pipe.query_async(connection).await?;
        *self.digests.lock().unwrap_or_else(PoisonError::into_inner) = digests;
        Ok(())
    }

    /// Forgets the connection of `generation` after it failed, so the next
    /// call connects again.
    fn lost(&self, generation: u64, error: &redis::RedisError) {
        if !connection_lost(error) {
            return;
        }
        let mut state = self.state();
        if matches!(state.connection, Some((current, _)) if current == generation) {
            tracing::warn!(%error, "redis work queue connection lost; reconnecting");
            state.connection = None;
            state.next_attempt = Instant::now();
            drop(state);
            // The blocking connections went down with it.
            self.blocking
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    fn digest(&self, script: Script) -> Option<String> {
        self.digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(script.index())
            .cloned()
    }

    /// Runs `script`, loading it again if Redis lost it (`SCRIPT FLUSH`).
    async fn eval(&self, script: Script, keys: &[&str], args: &[&[u8]]) -> Result<Value> {
        let (generation, mut connection) = self.connection().await?;
        let command = |digest: &str| {
            let mut command = redis::cmd("EVALSHA");
            command.arg(digest).arg(keys.len()).arg(keys);
            for arg in args {
                command.arg(*arg);
            }
            command
        };
        let digest = self.digest(script).unwrap_or_default();
        let first = command(&digest).query_async(&mut connection).await;
        let outcome = match first {
            Err(error) if error.code() == Some("NOSCRIPT") => {
                match self.load_scripts(&mut connection).await {
                    Ok(()) => {
                        let digest = self.digest(script).unwrap_or_default();
                        command(&digest).query_async(&mut connection).await
                    }
                    Err(error) => Err(error),
                }
            }
            other => other,
        };
        outcome.map_err(|error| {
            self.lost(generation, &error);
            tracing::debug!(?script, %error, "redis work queue script failed");
            transport_error(&error)
        })
    }

    /// Sends `pipe` and returns one integer answer per command.
    async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<i64>> {
        let (generation, mut connection) = self.connection().await?;
        pipe.query_async(&mut connection).await.map_err(|error| {
            self.lost(generation, &error);
            tracing::debug!(%error, "redis work queue pipeline failed");
            transport_error(&error)
        })
    }

    /// A connection for one blocking read.
    async fn blocking_connection(&self) -> Result<MultiplexedConnection> {
        let idle = self
            .blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(connection) = idle {
            return Ok(connection);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.command_timeout))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| transport_error(&e))
    }

    fn return_blocking(&self, connection: MultiplexedConnection) {
        let mut idle = self.blocking.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_BLOCKING {
            idle.push(connection);
        }
    }
}

/// True when `error` means the connection itself is unusable.
fn connection_lost(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

// ---------------------------------------------------------------------------
// Enqueue

/// One job for the enqueue task.
#[derive(Debug)]
struct Enqueue {
    topic: String,
    // Jobs with the same topic, limit and declared groups share a call.
    max_size: u64,
    groups: Vec<String>,
    // The Message as the protocol's JSON.
    payload: Vec<u8>,
    // Stored, refused (QueueFull) or failed.
    done: oneshot::Sender<Result<()>>,
}

/// Script calls sent and not answered yet, driven by the task that sent
/// them (no task per batch).
type Running<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>;

/// Sends waiting jobs to Redis: one script call per topic and options, up
/// to [`BATCHES_IN_FLIGHT`] rounds of them at once. While every round is in
/// flight, jobs gather for a larger next one.
async fn enqueue_loop(shared: Arc<Shared>, mut queue: mpsc::Receiver<Enqueue>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut running: Running<'_> = FuturesUnordered::new();
    let mut draining = false;
    loop {
        if draining && running.is_empty() {
            if take_queued(&mut queue, &mut batch) == 0 {
                return;
            }
        } else {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return,
                Some(()) = running.next(), if !running.is_empty() => continue,
                _ = shared.draining.cancelled(), if !draining => {
                    draining = true;
                    continue;
                }
                received = queue.recv_many(&mut batch, MAX_BATCH), if running.len() < BATCHES_IN_FLIGHT && !draining => {
                    if received == 0 {
                        return;
                    }
                }
            }
        }
        let mut by_topic: Vec<Vec<Enqueue>> = Vec::new();
        let mut index: HashMap<(String, u64, Vec<String>), usize> = HashMap::new();
        for job in batch.drain(..) {
            let key = (job.topic.clone(), job.max_size, job.groups.clone());
            let slot = *index.entry(key).or_insert_with(|| {
                by_topic.push(Vec::new());
                by_topic.len() - 1
            });
            by_topic[slot].push(job);
        }
        for jobs in by_topic {
            running.push(Box::pin(store(&shared, jobs)));
        }
    }
}

/// Moves what waits in `queue` into `batch` without waiting; how many.
fn take_queued<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) -> usize {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch.len()
}

/// Stores jobs of one topic in one script call and answers their callers.
async fn store(shared: &Shared, jobs: Vec<Enqueue>) {
    let first = &jobs[0];
    let topic = first.topic.clone();
    let max_size = first.max_size;
    let stream = shared.stream_key(&topic);
    let max = max_size.min(MAX_SIZE_CAP).to_string();
    let declared = first.groups.len().to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(2 + first.groups.len() + jobs.len());
    args.push(max.as_bytes());
    args.push(declared.as_bytes());
    args.extend(first.groups.iter().map(|g| g.as_bytes()));
    args.extend(jobs.iter().map(|job| job.payload.as_slice()));
    let outcome = shared
        .link
        .eval(Script::Enqueue, &[&stream], &args)
        .await
        .and_then(|value| {
            let items = array(&value)?;
            let stored = items
                .first()
                .and_then(integer)
                .ok_or_else(|| unexpected(&value))?;
            let fullest = items.get(1).and_then(text).unwrap_or_default();
            Ok((usize::try_from(stored).unwrap_or(0), fullest))
        });
    match outcome {
        Ok((stored, fullest)) => {
            for (i, job) in jobs.into_iter().enumerate() {
                let answer = if i < stored {
                    Ok(())
                } else {
                    tracing::debug!(topic = %topic, group = %fullest, limit = max_size, "work queue full");
                    Err(Error::QueueFull {
                        topic: topic.clone(),
                        group: fullest.clone(),
                        limit: max_size,
                    })
                };
                let _ = job.done.send(answer);
            }
        }
        Err(error) => {
            let reason = error.to_string();
            for job in jobs {
                let _ = job.done.send(Err(Error::transport(NAME, reason.clone())));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Ack

/// One ack for the ack task.
#[derive(Debug)]
struct Settle {
    topic: String,
    group: String,
    consumer: String,
    entry: String,
    // 0 acks whoever holds the entry (garbage entries).
    delivered: u32,
    // For `Error::DeliveryExpired`.
    job_id: String,
    // From then on the delivery may have expired: an ack sent later checks,
    // in a script, that it is still the receipt's; one sent before is a
    // plain `XACK`. Decided when the ack is sent, not when it was asked
    // for, as acks may wait in the queue. None: always plain.
    checked_from: Option<Instant>,
    // None when nobody waits for the answer (garbage entries).
    done: Option<oneshot::Sender<Result<()>>>,
}

/// Sends waiting acks to Redis: one script call per topic and group, up
/// to [`BATCHES_IN_FLIGHT`] rounds of them at once, and the trims owed.
async fn settle_loop(shared: Arc<Shared>, mut queue: mpsc::Receiver<Settle>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut running: Running<'_> = FuturesUnordered::new();
    let mut trims = Trims::default();
    let mut draining = false;
    loop {
        if draining && running.is_empty() && take_queued(&mut queue, &mut batch) == 0 {
            // Everything handed over is acked: make the trims still owed.
            let owed = trims.take_owed();
            if owed.is_empty() {
                return;
            }
            for topic in owed {
                let shared = &shared;
                running.push(Box::pin(async move { trim_stream(shared, &topic).await }));
            }
            continue;
        }
        if batch.is_empty() {
            let trim_due = trims.next_due().filter(|_| !draining);
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return,
                Some(()) = running.next(), if !running.is_empty() => continue,
                _ = shared.draining.cancelled(), if !draining => {
                    draining = true;
                    continue;
                }
                _ = tokio::time::sleep_until(trim_due.unwrap_or_else(Instant::now).into()), if trim_due.is_some() => {
                    for topic in trims.take_due() {
                        let shared = &shared;
                        running.push(Box::pin(async move { trim_stream(shared, &topic).await }));
                    }
                    continue;
                }
                received = queue.recv_many(&mut batch, MAX_BATCH), if running.len() < BATCHES_IN_FLIGHT && !draining => {
                    if received == 0 {
                        return;
                    }
                }
            }
        }
        let mut by_group: HashMap<(String, String), Vec<Settle>> = HashMap::new();
        let mut plain = Vec::new();
        let now = Instant::now();
        for settle in batch.drain(..) {
            if settle.checked_from.is_some_and(|from| now >= from) {
                by_group
                    .entry((settle.topic.clone(), settle.group.clone()))
                    .or_default()
                    .push(settle);
            } else {
                plain.push(settle);
            }
        }
        let mut to_trim: Vec<String> = Vec::new();
        for settle in &plain {
            if !to_trim.contains(&settle.topic) && trims.now(&settle.topic) {
                to_trim.push(settle.topic.clone());
            }
        }
        if !plain.is_empty() {
            let shared = &shared;
            running.push(Box::pin(async move {
                ack_plain(shared, plain).await;
                for topic in to_trim {
                    trim_stream(shared, &topic).await;
                }
            }));
        }
        for ((topic, _), acks) in by_group {
            let trim = trims.now(&topic);
            running.push(Box::pin(ack_group(&shared, acks, trim)));
        }
    }
}

/// When this process last trimmed each topic's stream, and whether acks
/// made since then still owe a trim.
///
/// Trimming costs a few commands per group, so under load it runs at most
/// every [`TRIM_INTERVAL`] per topic; the acks in between leave a trim owed,
/// made when the interval has passed.
#[derive(Debug, Default)]
struct Trims {
    topics: HashMap<String, (Instant, bool)>,
}

impl Trims {
    /// Whether acks on `topic` sent now should trim; if not, a trim is owed.
    fn now(&mut self, topic: &str) -> bool {
        let now = Instant::now();
        match self.topics.get_mut(topic) {
            Some((last, owed)) if now.duration_since(*last) < TRIM_INTERVAL => {
                *owed = true;
                false
            }
            Some((last, owed)) => {
                *last = now;
                *owed = false;
                true
            }
            None => {
                self.topics.insert(topic.to_owned(), (now, false));
                true
            }
        }
    }

    /// When the first owed trim is due.
    fn next_due(&self) -> Option<Instant> {
        self.topics
            .values()
            .filter(|(_, owed)| *owed)
            .map(|(last, _)| *last + TRIM_INTERVAL)
            .min()
    }

    /// Every topic that is owed a trim, due or not.
    fn take_owed(&mut self) -> Vec<String> {
        let mut owed = Vec::new();
        for (topic, (_, is_owed)) in &mut self.topics {
            if std::mem::take(is_owed) {
                owed.push(topic.clone());
            }
        }
        owed
    }

    /// Topics whose owed trim is due now; forgets topics long quiet.
    fn take_due(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut due = Vec::new();
        self.topics.retain(|topic, (last, owed)| {
            if *owed && now.duration_since(*last) >= TRIM_INTERVAL {
                *last = now;
                *owed = false;
                due.push(topic.clone());
            }
            *owed || now.duration_since(*last) < TRIM_INTERVAL * 100
        });
        due
    }
}

/// Acks deliveries that cannot have expired, with one pipelined `XACK`
/// each, and answers their callers. An entry no longer pending (deleted,
/// or Redis lost it) fails as expired.
async fn ack_plain(shared: &Shared, acks: Vec<Settle>) {
    let mut pipe = redis::pipe();
    for ack in &acks {
        pipe.cmd("XACK")
            .arg(shared.stream_key(&ack.topic))
            .arg(&ack.group)
            .arg(&ack.entry);
    }
    let outcome = shared.link.pipeline(&pipe).await.and_then(|acked| {
        if acked.len() == acks.len() {
            Ok(acked)
        } else {
            Err(Error::transport(
                NAME,
                "Redis answered a different number of XACKs",
            ))
        }
    });
    answer_acks(acks, outcome);
}

/// Gives each caller the outcome of its ack: `Ok(n)` per ack, n = 1 when
/// acked, 0 when the delivery had expired.
fn answer_acks(acks: Vec<Settle>, outcome: Result<Vec<i64>>) {
    match outcome {
        Ok(done) => {
            for (ack, acked) in acks.into_iter().zip(done) {
                let answer = if acked == 1 {
                    Ok(())
                } else {
                    tracing::debug!(topic = %ack.topic, group = %ack.group, job_id = %ack.job_id, "ack of an expired delivery");
                    Err(Error::DeliveryExpired { job_id: ack.job_id })
                };
                if let Some(done) = ack.done {
                    let _ = done.send(answer);
                }
            }
        }
        Err(error) => {
            let reason = error.to_string();
            for ack in acks {
                if let Some(done) = ack.done {
                    let _ = done.send(Err(Error::transport(NAME, reason.clone())));
                }
            }
        }
    }
}

/// Removes the entries of `topic` that every group acked.
async fn trim_stream(shared: &Shared, topic: &str) {
    let stream = shared.stream_key(topic);
    let idle = millis(shared.options.consumer_idle_limit).to_string();
    if let Err(error) = shared
        .link
        .eval(
            Script::Ack,
            &[&stream],
            &[b"", b"1", idle.as_bytes(), DELAYED_CONSUMER.as_bytes()],
        )
        .await
    {
        // The next ack trims instead.
        tracing::debug!(topic, %error, "redis work queue trim failed");
    }
}

/// Acks deliveries of one group in one script call and answers their callers.
async fn ack_group(shared: &Shared, acks: Vec<Settle>, trim: bool) {
    let stream = shared.stream_key(&acks[0].topic);
    let counts: Vec<String> = acks.iter().map(|a| a.delivered.to_string()).collect();
    let idle = millis(shared.options.consumer_idle_limit).to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(4 + 3 * acks.len());
    args.push(acks[0].group.as_bytes());
    args.push(if trim { b"1" } else { b"0" });
    args.push(idle.as_bytes());
    args.push(DELAYED_CONSUMER.as_bytes());
    for (ack, count) in acks.iter().zip(&counts) {
        args.push(ack.entry.as_bytes());
        args.push(ack.consumer.as_bytes());
        args.push(count.as_bytes());
    }
    let outcome = shared
        .link
        .eval(Script::Ack, &[&stream], &args)
        .await
        .and_then(|value| {
            let done: Vec<i64> = array(&value)?
                .iter()
                .map(|v| integer(v).unwrap_or(0))
                .collect();
            if done.len() == acks.len() {
                Ok(done)
            } else {
                Err(unexpected(&value))
            }
        });
    answer_acks(acks, outcome);
}

// ---------------------------------------------------------------------------
// Receive

type FetchKey = (String, String, String);

/// The jobs taken from Redis for one consumer of one group and not handed
/// out yet, shared by the consumer's concurrent `receive` calls.
#[derive(Debug)]
struct Fetcher {
    // Its place in `Shared::fetchers`; also what it fetches.
    key: FetchKey,
    state: Mutex<FetchState>,
    // Woken when a fetch ends.
    fetched: Notify,
}

#[derive(Debug)]
struct FetchState {
    // Taken from Redis, not handed out yet; in flight for Redis.
    buffer: VecDeque<Fetched>,
    // A fetch task is running: nobody starts another.
    fetching: bool,
    // The running fetch is blocked on Redis waiting for new jobs (rather
    // than about to hand jobs over).
    blocking: bool,
    // Why the last fetch failed, and when, for the receives waiting on it.
    failed: Option<(Instant, String)>,
    // Where the next scan for expired deliveries starts.
    cursor: String,
    // When expired deliveries were last looked for.
    last_scan: Option<Instant>,
    // `receive` calls waiting on this fetcher: without a backlog, a fetch
    // takes one job per waiter, so an idle consumer does not hold jobs that
    // another consumer could run.
    waiters: usize,
    // The last fetch asked for several jobs (several calls waited) and got
    // them all: the queue has a backlog, and the next fetches take whole
    // batches, ahead of need.
    backlog: bool,
    // The last `receive` call to leave ended without a job (timed out,
    // dropped, closed): the consumer may never call again, so what the
    // buffer holds, or a fetch still running brings, is given back to the
    // group rather than left in this consumer's pending entries until the
    // visibility timeout. A consumer whose calls all left with a job is
    // busy running them and keeps its buffer.
    abandoned: bool,
    // Give-backs of this fetcher's jobs not answered by Redis yet.
    giving_back: usize,
}

impl FetchState {
    fn is_idle(&self) -> bool {
        self.buffer.is_empty() && !self.fetching && self.waiters == 0 && self.giving_back == 0
    }

    /// Jobs are about to move between this buffer and Redis's figures.
    fn settling(&self) -> bool {
        (self.fetching && !self.blocking) || self.giving_back > 0
    }

    /// The buffered jobs, when nobody is left to hand them out.
    fn take_abandoned(&mut self) -> Vec<Fetched> {
        if self.abandoned && self.waiters == 0 && !self.fetching {
            self.buffer.drain(..).collect()
        } else {
            Vec::new()
        }
    }
}

/// A delivery taken from Redis.
#[derive(Debug)]
struct Fetched {
    message: Message,
    // Stream entry id, for the receipt.
    entry: String,
    // Redis's delivery counter: the attempt.
    delivered: u32,
    // When Redis was asked for it (before it was handed out): too old a job
    // is not handed out, as it could expire while its handler runs.
    asked: Instant,
}

impl Fetcher {
    fn new(key: FetchKey) -> Self {
        Fetcher {
            key,
            state: Mutex::new(FetchState {
                buffer: VecDeque::new(),
                fetching: false,
                blocking: false,
                failed: None,
                cursor: "0-0".to_owned(),
                last_scan: None,
                waiters: 0,
                backlog: false,
                abandoned: false,
                giving_back: 0,
            }),
            fetched: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one fetch task needs to know.
#[derive(Debug, Clone, Copy)]
struct FetchPlan {
    visibility_timeout: Duration,
    from_start: bool,
    // Longest time to block on Redis when nothing is there at once.
    block: Duration,
    // Most jobs to take.
    count: usize,
}

/// Releases the fetcher when a `receive` ends, however it ends.
struct Receiving<'a> {
    shared: &'a Arc<Shared>,
    fetcher: Arc<Fetcher>,
    // The call returns a job: its consumer is busy, not gone.
    served: bool,
}

impl<'a> Receiving<'a> {
    fn new(shared: &'a Arc<Shared>, key: &FetchKey) -> Self {
        let fetcher = shared.fetcher(key);
        {
            let mut state = fetcher.state();
            state.waiters += 1;
            state.abandoned = false;
        }
        Receiving {
            shared,
            fetcher,
            served: false,
        }
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.fetcher.state();
            state.waiters -= 1;
            if state.waiters == 0 {
                state.abandoned = !self.served;
            }
            let unused = state.take_abandoned();
            self.shared.give_back(&self.fetcher, &mut state, unused);
        }
        self.shared.release(&self.fetcher);
    }
}

/// Every poll interval, gives back the jobs buffered for consumers that
/// have had no `receive` waiting since: their calls all left with a job
/// and none came back (handlers slower than the poll interval, or a
/// consumer stopped while busy). Other consumers can run those jobs now;
/// left alone they would wait for the visibility timeout.
async fn sweep_loop(shared: Arc<Shared>) {
    let every = shared.options.poll_interval;
    loop {
        tokio::select! {
            biased;
            _ = shared.draining.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let fetchers: Vec<Arc<Fetcher>> = shared
            .fetchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for fetcher in fetchers {
            {
                let mut state = fetcher.state();
                let unwanted = state.waiters == 0
                    && !state.fetching
                    && state
                        .buffer
                        .front()
                        .is_some_and(|job| job.asked.elapsed() >= every);
                if !unwanted {
                    continue;
                }
                let jobs = state.buffer.drain(..).collect();
                shared.give_back(&fetcher, &mut state, jobs);
            }
            shared.release(&fetcher);
        }
    }
}

/// Gives jobs never handed out back to the group (see the `GiveBack`
/// script); on failure they come back after their visibility timeout.
async fn give_back(shared: Arc<Shared>, fetcher: Arc<Fetcher>, jobs: Vec<Fetched>) {
    let (topic, group, consumer) = &fetcher.key;
    let stream = shared.stream_key(topic);
    let delayed = shared.delayed_key(topic, group);
    let counts: Vec<String> = jobs.iter().map(|job| job.delivered.to_string()).collect();
    let mut args: Vec<&[u8]> = Vec::with_capacity(3 + 2 * jobs.len());
    args.push(group.as_bytes());
    args.push(consumer.as_bytes());
    args.push(DELAYED_CONSUMER.as_bytes());
    for (job, count) in jobs.iter().zip(&counts) {
        args.push(job.entry.as_bytes());
        args.push(count.as_bytes());
    }
    match shared
        .link
        .eval(Script::GiveBack, &[&stream, &delayed], &args)
        .await
    {
        Ok(given) => {
            tracing::debug!(topic = %topic, group = %group, consumer = %consumer, given = ?integer(&given), "jobs never handed out given back");
        }
        Err(error) => {
            tracing::debug!(topic = %topic, group = %group, consumer = %consumer, %error, "give-back failed; the jobs come back after the visibility timeout");
        }
    }
    fetcher.state().giving_back -= 1;
    fetcher.fetched.notify_waiters();
    shared.release(&fetcher);
}

/// Takes one batch from Redis and leaves it in the fetcher's buffer. Runs
/// as its own task, so a `receive` dropped meanwhile loses nothing.
async fn fetch(shared: Arc<Shared>, fetcher: Arc<Fetcher>, plan: FetchPlan) {
    let outcome = tokio::select! {
        biased;
        _ = shared.shutdown.cancelled() => Ok(Vec::new()),
        outcome = fetch_batch(&shared, &fetcher, plan) => outcome,
    };
    {
        let mut state = fetcher.state();
        state.fetching = false;
        state.blocking = false;
        match outcome {
            Ok(fetched) => state.buffer.extend(fetched),
            Err(error) => state.failed = Some((Instant::now(), error.to_string())),
        }
        let unused = state.take_abandoned();
        shared.give_back(&fetcher, &mut state, unused);
    }
    fetcher.fetched.notify_waiters();
    shared.release(&fetcher);
}

async fn fetch_batch(shared: &Shared, fetcher: &Fetcher, plan: FetchPlan) -> Result<Vec<Fetched>> {
    let (topic, group, consumer) = &fetcher.key;
    let options = &shared.options;
    let stream = shared.stream_key(topic);
    let delayed = shared.delayed_key(topic, group);
    // One millisecond more, as Redis counts idle time in whole milliseconds:
    // a delivery is never taken back before its timeout.
    let visibility_ms = millis(plan.visibility_timeout) + 1;
    // Scanning for expired deliveries is done at most every poll interval
    // (and often enough for short visibility timeouts).
    let scan_every = options.poll_interval.min(plan.visibility_timeout / 2);
    let (cursor, scan) = {
        let state = fetcher.state();
        let scan = state.last_scan.is_none_or(|at| at.elapsed() >= scan_every);
        (state.cursor.clone(), scan)
    };
    let min_idle = if scan {
        visibility_ms.to_string()
    } else {
        "-1".to_owned()
    };
    let count = plan.count.to_string();
    let from_start = if plan.from_start { "1" } else { "0" };
    let asked = Instant::now();
    let value = shared
        .link
        .eval(
            Script::Receive,
            &[&stream, &delayed],
            &[
                group.as_bytes(),
                consumer.as_bytes(),
                count.as_bytes(),
                from_start.as_bytes(),
                min_idle.as_bytes(),
                cursor.as_bytes(),
                DELAYED_CONSUMER.as_bytes(),
            ],
        )
        .await?;
    let parts = array(&value)?;
    let (Some(entries), Some(next_cursor), Some(next_due)) = (
        parts.first(),
        parts.get(1).and_then(text),
        parts.get(2).and_then(integer),
    ) else {
        return Err(unexpected(&value));
    };
    if scan {
        let mut state = fetcher.state();
        state.cursor = next_cursor;
        state.last_scan = Some(Instant::now());
    }
    let entries = array(entries)?;
    // One job asked and one found says nothing of what is left; a single
    // caller receiving in turn never holds more than the job it asked for.
    fetcher.state().backlog = plan.count > 1 && entries.len() >= plan.count;
    let mut fetched = Vec::new();
    for entry in entries {
        let items = array(entry)?;
        let (Some(id), Some(fields), Some(delivered)) = (
            items.first().and_then(text),
            items.get(1),
            items.get(2).and_then(integer),
        ) else {
            return Err(unexpected(entry));
        };
        let delivered = u32::try_from(delivered).unwrap_or(u32::MAX);
        accept(
            shared,
            fetcher,
            (id, fields, delivered),
            asked,
            &mut fetched,
        );
    }
    if !fetched.is_empty() || plan.block.is_zero() {
        return Ok(fetched);
    }
    let mut block = plan.block;
    if let Ok(due) = u64::try_from(next_due) {
        block = block.min(Duration::from_millis(due.max(1)));
    }
    fetcher.state().blocking = true;
    read_blocking(shared, fetcher, &stream, block, plan.count, &mut fetched).await?;
    Ok(fetched)
}

/// Waits up to `block` for new entries with `XREADGROUP BLOCK`, on a
/// connection of its own.
async fn read_blocking(
    shared: &Shared,
    fetcher: &Fetcher,
    stream: &str,
    block: Duration,
    count: usize,
    fetched: &mut Vec<Fetched>,
) -> Result<()> {
    let (_, group, consumer) = &fetcher.key;
    let mut connection = shared.link.blocking_connection().await?;
    let command = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(millis(block).max(1))
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .to_owned();
    let limit = block + shared.options.command_timeout;
    let asked = Instant::now();
    let value =
        match tokio::time::timeout(limit, command.query_async::<Value>(&mut connection)).await {
            Ok(Ok(value)) => value,
            Ok(Err(error)) if error.code() == Some("NOGROUP") => {
                // The stream went away meanwhile; the next fetch makes the group again.
                shared.link.return_blocking(connection);
                return Ok(());
            }
            Ok(Err(error)) => {
                // The shared connection answered just before: the server is up
                // and this idle connection was stale. The next fetch uses a
                // fresh one.
                tracing::debug!(%error, "redis blocking read failed");
                if !connection_lost(&error) {
                    return Err(transport_error(&error));
                }
                shared
                    .link
                    .blocking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                return Ok(());
            }
            Err(_) => {
                return Err(Error::transport(
                    NAME,
                    format!("no answer from Redis within {limit:?}"),
                ))
            }
        };
    shared.link.return_blocking(connection);
    for (_, entries) in stream_entries(&value)? {
        for entry in array(entries)? {
            let items = array(entry)?;
            let (Some(id), Some(fields)) = (items.first().and_then(text), items.get(1)) else {
                return Err(unexpected(entry));
            };
            accept(shared, fetcher, (id, fields, 1), asked, fetched);
        }
    }
    Ok(())
}

/// Decodes an entry into `fetched`, or skips it (acked, counted, logged)
/// when it is not a Message.
fn accept(
    shared: &Shared,
    fetcher: &Fetcher,
    (entry, fields, delivered): (String, &Value, u32),
    asked: Instant,
    fetched: &mut Vec<Fetched>,
) {
    let (topic, group, consumer) = &fetcher.key;
    let body = array(fields).ok().and_then(|fields| {
        fields
            .chunks(2)
            .find(|pair| text(&pair[0]).as_deref() == Some("message"))
            .and_then(|pair| pair.get(1))
            .and_then(bytes)
    });
    let decoded = match body {
        Some(body) => Message::from_json(body),
        None => Err(Error::transport(NAME, "the entry has no `message` field")),
    };
    match decoded {
        Ok(message) => fetched.push(Fetched {
            message,
            entry,
            delivered,
            asked,
        }),
        Err(error) => {
            let skipped = shared.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                topic = %topic,
                group = %group,
                entry = %entry,
                %error,
                skipped_so_far = skipped,
                "work queue entry is not an eventforge Message; skipped"
            );
            let settle = Settle {
                topic: topic.clone(),
                group: group.clone(),
                consumer: consumer.clone(),
                entry,
                delivered: 0,
                job_id: String::new(),
                checked_from: None,
                done: None,
            };
            // When the ack queue is full or closed the entry comes back
            // after the visibility timeout and is skipped again.
            let _ = shared.settle.try_send(settle);
        }
    }
}

#[async_trait]
impl WorkBackend for RedisStreamsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create_group(
        &self,
        _options: &WorkOptions,
        topic: &str,
        group: &str,
        from_start: bool,
    ) -> Result<()> {
        self.check_open()?;
        validate_topic(topic)?;
        let stream = self.shared.stream_key(topic);
        let from_start: &[u8] = if from_start { b"1" } else { b"0" };
        self.shared
            .link
            .eval(
                Script::CreateGroup,
                &[&stream],
                &[group.as_bytes(), from_start],
            )
            .await?;
        Ok(())
    }

    async fn enqueue(&self, options: &WorkOptions, job: Message) -> Result<()> {
        self.check_open()?;
        validate_topic(&job.topic)?;
        let payload = job.to_json()?;
        let (done, outcome) = oneshot::channel();
        let request = Enqueue {
            topic: job.topic,
            max_size: options.max_size,
            groups: options.groups.clone(),
            payload,
            done,
        };
        self.enqueue
            .send(request)
            .await
            .map_err(|_| Error::Closed(NAME))?;
        outcome.await.map_err(|_| Error::Closed(NAME))?
    }

    async fn receive(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>> {
        self.check_open()?;
        validate_topic(topic)?;
        let shared = &*self.shared;
        let started = Instant::now();
        let deadline = started + timeout;
        let key = (topic.to_owned(), group.to_owned(), consumer.to_owned());
        let mut receiving = Receiving::new(&self.shared, &key);
        let fetcher = Arc::clone(&receiving.fetcher);
        let fetcher = &fetcher;
        // A job buffered longer than this may expire before its handler
        // ends; it is given back to the group for a fresh delivery.
        let fresh_for = options.visibility_timeout / 2;
        // Whether a fetch ended while this call waited: until one has, even
        // a zero timeout waits for Redis's answer.
        let mut waited = false;
        loop {
            let fetched = fetcher.fetched.notified();
            tokio::pin!(fetched);
            fetched.as_mut().enable();
            {
                let mut state = fetcher.state();
                let mut stale = Vec::new();
                while let Some(job) = state.buffer.pop_front() {
                    if job.asked.elapsed() <= fresh_for {
                        self.shared.give_back(fetcher, &mut state, stale);
                        receiving.served = true;
                        let batch = shared.options.batch_size;
                        if state.backlog && !state.fetching && state.buffer.len() < batch / 2 {
                            // More is waiting in Redis for a consumer that
                            // receives concurrently: fetch it while the
                            // buffer is handed out.
                            state.fetching = true;
                            let plan = FetchPlan {
                                count: batch,
                                visibility_timeout: options.visibility_timeout,
                                from_start: options.groups.iter().any(|g| g == group),
                                block: Duration::ZERO,
                            };
                            tokio::spawn(fetch(
                                Arc::clone(&self.shared),
                                Arc::clone(fetcher),
                                plan,
                            ));
                        }
                        return Ok(Some(delivery(
                            topic,
                            group,
                            consumer,
                            job,
                            options.visibility_timeout,
                        )));
                    }
                    tracing::debug!(topic, group, job_id = %job.message.id, "buffered job too old; given back");
                    stale.push(job);
                }
                self.shared.give_back(fetcher, &mut state, stale);
                if let Some((at, reason)) = state.failed.take() {
                    if at >= started {
                        return Err(Error::transport(NAME, reason));
                    }
                }
                let now = Instant::now();
                if waited && now >= deadline {
                    return Ok(None);
                }
                if !state.fetching {
                    state.fetching = true;
                    let batch = shared.options.batch_size;
                    let plan = FetchPlan {
                        count: if state.backlog {
                            batch
                        } else {
                            state.waiters.clamp(1, batch)
                        },
                        visibility_timeout: options.visibility_timeout,
                        from_start: options.groups.iter().any(|g| g == group),
                        block: deadline
                            .saturating_duration_since(now)
                            .min(shared.options.poll_interval),
                    };
                    tokio::spawn(fetch(Arc::clone(&self.shared), Arc::clone(fetcher), plan));
                }
            }
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return Err(Error::Closed(NAME)),
                _ = &mut fetched => waited = true,
                // A fetch still running leaves what it finds for the next call.
                _ = tokio::time::sleep_until(deadline.into()), if waited => return Ok(None),
            }
        }
    }

    async fn ack(&self, receipt: Receipt) -> Result<()> {
        self.check_open()?;
        let (topic, group, consumer) = (
            receipt.topic.clone(),
            receipt.group.clone(),
            receipt.consumer.clone(),
        );
        let token = own_token(receipt)?;
        let (done, outcome) = oneshot::channel();
        let settle = Settle {
            topic,
            group,
            consumer,
            entry: token.entry,
            delivered: token.delivered,
            job_id: token.job_id,
            checked_from: Some(token.unexpired_until),
            done: Some(done),
        };
        self.shared
            .settle
            .send(settle)
            .await
            .map_err(|_| Error::Closed(NAME))?;
        outcome.await.map_err(|_| Error::Closed(NAME))?
    }

    async fn retry(&self, _options: &WorkOptions, receipt: Receipt, delay: Duration) -> Result<()> {
        self.check_open()?;
        let stream = self.shared.stream_key(&receipt.topic);
        let delayed = self.shared.delayed_key(&receipt.topic, &receipt.group);
        let (group, consumer) = (receipt.group.clone(), receipt.consumer.clone());
        let token = own_token(receipt)?;
        let delivered = token.delivered.to_string();
        // Rounded up, so the job is never handed out before its delay.
        let delay = (millis(delay) + u64::from(delay.subsec_nanos() % 1_000_000 != 0)).to_string();
        let value = self
            .shared
            .link
            .eval(
                Script::Retry,
                &[&stream, &delayed],
                &[
                    group.as_bytes(),
                    consumer.as_bytes(),
                    token.entry.as_bytes(),
                    delivered.as_bytes(),
                    delay.as_bytes(),
                    DELAYED_CONSUMER.as_bytes(),
                ],
            )
            .await?;
        match integer(&value) {
            Some(1) => Ok(()),
            Some(_) => Err(Error::DeliveryExpired {
                job_id: token.job_id,
            }),
            None => Err(unexpected(&value)),
        }
    }

    async fn stats(
        &self,
        _options: &WorkOptions,
        topic: &str,
        group: &str,
    ) -> Result<BackendStats> {
        self.check_open()?;
        validate_topic(topic)?;
        let stream = self.shared.stream_key(topic);
        let delayed = self.shared.delayed_key(topic, group);
        let cap = STATS_COUNT_CAP.to_string();
        self.shared.fetches_settled(topic, group).await;
        let value = self
            .shared
            .link
            .eval(
                Script::Stats,
                &[&stream, &delayed],
                &[group.as_bytes(), cap.as_bytes()],
            )
            .await?;
        let figures = array(&value)?;
        let (Some(pending), Some(in_flight)) = (
            figures.first().and_then(integer),
            figures.get(1).and_then(integer),
        ) else {
            return Err(unexpected(&value));
        };
        // Jobs this process took from Redis but has not handed out yet are
        // in flight for Redis and still waiting for the queue's users.
        let buffered = self.shared.buffered(topic, group);
        let in_flight = u64::try_from(in_flight).unwrap_or(0);
        Ok(BackendStats {
            pending: u64::try_from(pending).unwrap_or(0) + buffered.min(in_flight),
            in_flight: in_flight.saturating_sub(buffered),
        })
    }

    /// Deletes the topic's stream and its groups' delayed retries. Stop the
    /// topic's consumers first: jobs they already fetched are not taken back.
    async fn delete_topic(&self, topic: &str) -> Result<bool> {
        self.check_open()?;
        validate_topic(topic)?;
        let stream = self.shared.stream_key(topic);
        let (generation, mut connection) = self.shared.link.connection().await?;
        let failed = |error: redis::RedisError| {
            self.shared.link.lost(generation, &error);
            transport_error(&error)
        };
        let groups: redis::streams::StreamInfoGroupsReply = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut connection)
            .await
        {
            Ok(groups) => groups,
            // "ERR no such key": there is no stream to delete.
            Err(error) if error.code() == Some("ERR") => return Ok(false),
            Err(error) => return Err(failed(error)),
        };
        let mut delete = redis::cmd("DEL");
        delete.arg(&stream);
        for group in &groups.groups {
            delete.arg(self.shared.delayed_key(topic, &group.name));
        }
        let _: i64 = delete.query_async(&mut connection).await.map_err(failed)?;
        Ok(true)
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Enqueues and acks already handed over are sent first, for a while.
        self.shared.draining.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = tokio::time::Instant::now() + self.shared.options.command_timeout;
        let mut unfinished = Vec::new();
        for mut task in tasks {
            // A task that panicked has nothing left to clean up.
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                unfinished.push(task);
            }
        }
        self.shared.shutdown.cancel();
        for task in unfinished {
            let _ = task.await;
        }
        tracing::debug!("redis work queue backend closed");
        Ok(())
    }
}

impl Drop for RedisStreamsBackend {
    fn drop(&mut self) {
        // Background tasks hold only `Shared`: stop them with the backend.
        self.shared.shutdown.cancel();
    }
}

/// Hands a buffered job out.
fn delivery(
    topic: &str,
    group: &str,
    consumer: &str,
    job: Fetched,
    visibility_timeout: Duration,
) -> Delivery {
    // A margin for clocks: Redis counts idle time with its wall clock.
    let margin = (visibility_timeout / 10).min(Duration::from_secs(1));
    let token = Token {
        entry: job.entry,
        delivered: job.delivered,
        job_id: job.message.id.clone(),
        unexpired_until: job.asked + visibility_timeout.saturating_sub(margin),
    };
    Delivery {
        receipt: Receipt::new(topic, group, consumer, token),
        message: job.message,
        attempt: job.delivered,
    }
}

/// The token of a receipt this backend made.
fn own_token(receipt: Receipt) -> Result<Token> {
    receipt.into_token::<Token>().ok_or_else(|| {
        Error::transport(
            NAME,
            "the receipt was not made by the Redis Streams backend",
        )
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Reading replies

fn array(value: &Value) -> Result<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(unexpected(other)),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The (stream, entries) pairs of an `XREADGROUP` reply, in RESP2 or RESP3.
fn stream_entries(value: &Value) -> Result<Vec<(&Value, &Value)>> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => Ok(pairs.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(streams) => streams
            .iter()
            .map(|stream| match array(stream)? {
                [name, entries] => Ok((name, entries)),
                _ => Err(unexpected(stream)),
            })
            .collect(),
        other => Err(unexpected(other)),
    }
}

fn unexpected(value: &Value) -> Error {
    Error::transport(NAME, format!("unexpected reply from Redis: {value:?}"))
}

fn transport_error(error: &redis::RedisError) -> Error {
    Error::transport(NAME, error.to_string())
}
