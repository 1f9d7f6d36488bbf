//! Work queues: jobs that wait until a consumer takes them, with acks,
//! retries, dead letters and lifecycle events.
//!
//! Pub-sub drops a message nobody listens to; a [`WorkQueue`] keeps it until
//! a consumer has finished with it. Jobs are enqueued on a topic and handed
//! out per *consumer group*: every group receives every job, and inside a
//! group each job goes to one consumer at a time, round-robin.
//!
//! A job handed out is *in flight*. The consumer settles it:
//!
//! - [`ack`](Job::ack): done, never handed out again to that group;
//! - [`nack`](Job::nack) with a [`Nack`]: give it back now
//!   ([`Nack::Requeue`]), after a delay ([`Nack::Delay`]), or send it to the
//!   dead-letter topic ([`Nack::DeadLetter`]).
//!
//! A job neither acked nor nacked within the visibility timeout (its
//! consumer crashed, say) is handed out again. After
//! [`max_retries`](WorkQueueBuilder::max_retries) failed tries it goes to
//! `<topic>.dead_letter`, with the reason in its headers.
//!
//! The storage is a [`WorkBackend`]: [`MemoryWorkBackend`] in-process, or the
//! Redis Streams and NATS JetStream backends of `eventforge-transports`,
//! which survive the crash of a consumer and, where the broker persists, a
//! broker restart. Code written against [`WorkQueue`] runs unchanged on each.
//!
//! ```
//! use std::time::Duration;
//! use eventforge_work::{Nack, WorkQueue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventforge_core::Error> {
//! let queue = WorkQueue::memory();
//! queue.enqueue("emails", serde_json::json!({"to": "ada@example.com"})).await?;
//!
//! // Pull: take a job, settle it explicitly.
//! let job = queue.dequeue("emails", "default", Duration::from_secs(1)).await?.unwrap();
//! assert_eq!(job.payload()["to"], "ada@example.com");
//! job.nack(Nack::Requeue).await?;
//!
//! // Push: a handler; Ok acks, Err retries, up to max_retries.
//! let consumer = queue
//!     .consume("emails", "default", |message| async move {
//!         println!("sending to {}", message.payload["to"]);
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! # let stats = queue.stats("emails", "default").await?;
//! # let _ = stats;
//! consumer.stop().await;
//! queue.close().await?;
//! # Ok(()) }
//! ```
//!
//! Every step is also published as a lifecycle event on
//! `_events.<topic>.<event>` (see [`JobEvent`]), so `subscribe("_events.**")`
//! on the [`events`](WorkQueue::events) queue shows the jobs live.

pub mod backend;
pub mod events;
pub mod memory;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backend::{BackendStats, Delivery, Receipt, WorkBackend, WorkOptions, DEFAULT_GROUP};
pub use events::{GroupSummary, JobCounts, JobEvent, JobEventPayload, Summary, EVENTS_PREFIX};
pub use memory::MemoryWorkBackend;

use eventforge_core::error::{BoxError, Error, Result};
use eventforge_core::message::Message;
use eventforge_core::queue::MessageQueue;
use eventforge_core::sync::panic_text;
use eventforge_core::topic::validate_topic;

/// Header: failed tries before this delivery (0 on the first).
pub const RETRY_COUNT_HEADER: &str = "_wq_retry_count";
/// Header: the topic the job was enqueued on (kept on dead letters).
pub const ORIGINAL_TOPIC_HEADER: &str = "_wq_original_topic";
/// Header: when the job was enqueued, ISO 8601 in UTC (`2026-11-22T13:50:00.123456+00:00`).
pub const ENQUEUED_AT_HEADER: &str = "_wq_enqueued_at";
/// Header: the visibility timeout the job was enqueued with, in seconds.
pub const VISIBILITY_TIMEOUT_HEADER: &str = "_wq_visibility_timeout";
/// Header on a dead letter: why it was dead-lettered, one of
/// [`REASON_MAX_RETRIES`], [`REASON_REJECTED`], [`REASON_VISIBILITY_TIMEOUT`].
pub const DEAD_LETTER_REASON_HEADER: &str = "_wq_dead_letter_reason";
/// Header on a dead letter: when it was dead-lettered (ISO 8601, UTC).
pub const DEAD_LETTERED_AT_HEADER: &str = "_wq_dead_lettered_at";
/// Header on a dead letter: the id of the job it comes from (a dead letter
/// is a new message with an id of its own).
pub const ORIGINAL_ID_HEADER: &str = "_wq_original_id";
/// Header on a dead letter: the error of the last failed try (for a
/// [`Nack::DeadLetter`], its reason).
pub const LAST_ERROR_HEADER: &str = "_wq_last_error";
/// Dead-letter reason: every try failed.
pub const REASON_MAX_RETRIES: &str = "max_retries_exceeded";
/// Dead-letter reason: the consumer rejected the job ([`Nack::DeadLetter`]).
pub const REASON_REJECTED: &str = "nack_no_requeue";
/// Dead-letter reason: the last try was neither acked nor nacked in time.
pub const REASON_VISIBILITY_TIMEOUT: &str = "visibility_timeout_exceeded";
/// Header on a dead letter: the group whose tries failed.
pub const GROUP_HEADER: &str = "_wq_group";
/// The suffix of the dead-letter topic: jobs of `orders` that fail for good
/// go to `orders.dead_letter`.
pub const DEAD_LETTER_SUFFIX: &str = "dead_letter";

/// How long a push consumer waits on the backend before looking at its stop
/// signal again.
const POLL: Duration = Duration::from_secs(1);
/// First pause after a backend error before a push consumer tries again;
/// it doubles with each error in a row, up to `MAX_ERROR_PAUSE`.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(5);

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.{DEAD_LETTER_SUFFIX}")
}

/// How a consumer gives a job back.
///
/// A push handler can return one as its error to choose the outcome:
/// `Err(Nack::DeadLetter("unknown customer".into()))`; any other error
/// counts as a failed try, retried after the queue's
/// [`retry_delay`](WorkQueueBuilder::retry_delay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nack {
    /// Hand it out again as soon as possible (counts as a failed try).
    Requeue,
    /// Hand it out again after this delay (counts as a failed try).
    Delay(Duration),
    /// Give up now: send it to the dead-letter topic with this reason.
    DeadLetter(String),
}

impl fmt::Display for Nack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Nack::Requeue => f.write_str("requeued by the consumer"),
            Nack::Delay(delay) => write!(f, "retry requested in {delay:?}"),
            Nack::DeadLetter(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

impl std::error::Error for Nack {}

/// Queue-wide figures of one group on one topic, with this handle's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkStats {
    /// Jobs waiting to be handed out to the group (delayed retries included).
    pub pending: u64,
    /// Jobs handed out and neither settled nor expired.
    pub in_flight: u64,
    /// Jobs acked through this handle.
    pub acked: u64,
    /// Failed tries through this handle (errors, panics, nacks).
    pub nacked: u64,
    /// Jobs waiting in the dead-letter topic for this group.
    pub dead: u64,
}

/// Builds a [`WorkQueue`] over a backend.
///
/// ```
/// use std::time::Duration;
/// use eventforge_work::{MemoryWorkBackend, WorkQueue};
///
/// let queue = WorkQueue::builder(MemoryWorkBackend::new())
///     .max_retries(5)
///     .visibility_timeout(Duration::from_secs(60))
///     .max_size(100_000)
///     .groups(["billing", "audit"])
///     .retry_delay(Duration::from_millis(500))
///     .summary_interval(Some(Duration::from_secs(30)))
///     .build();
/// # drop(queue);
/// ```
#[derive(Debug)]
pub struct WorkQueueBuilder {
    backend: Arc<dyn WorkBackend>,
    owns_backend: bool,
    options: WorkOptions,
    retry_delay: Duration,
    events: Option<MessageQueue>,
    summary_interval: Option<Duration>,
}

impl WorkQueueBuilder {
    /// Most tries of a job before it is dead-lettered (default 3; as in the
    /// Python peer, the first delivery counts, and 0 behaves as 1).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.options.max_retries = max_retries;
        self
    }

    /// How long a job may stay in flight unsettled before it is handed out
    /// again (default 30 s).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.options.visibility_timeout = timeout;
        self
    }

    /// Most jobs one group may hold, waiting or in flight (default 10,000);
    /// beyond it [`enqueue`](WorkQueue::enqueue) fails with
    /// [`Error::QueueFull`]. 0 means no limit, as in the Python peer.
    pub fn max_size(mut self, max_size: u64) -> Self {
        self.options.max_size = if max_size == 0 { u64::MAX } else { max_size };
        self
    }

    /// The groups created with a topic on its first enqueue, which receive
    /// every job (default `["default"]`). Groups first named by a consumer
    /// receive the jobs enqueued after that. An empty list keeps the default.
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let groups: Vec<String> = groups.into_iter().map(Into::into).collect();
        if !groups.is_empty() {
            self.options.groups = groups;
        }
        self
    }

    /// Delay before a job whose handler failed is handed out again
    /// (default 0: at once).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Where lifecycle events are published (default: a queue of its own on
    /// the memory transport, reached through [`WorkQueue::events`]). Pass a
    /// queue on a broker to watch jobs from another process.
    pub fn events(mut self, events: MessageQueue) -> Self {
        self.events = Some(events);
        self
    }

    /// How often the `summary` event of each topic is published (default
    /// every 10 s); `None` turns it off.
    pub fn summary_interval(mut self, interval: Option<Duration>) -> Self {
        self.summary_interval = interval;
        self
    }

    /// The queue.
    pub fn build(self) -> WorkQueue {
        let mut dead_letter_options = self.options.clone();
        dead_letter_options.max_size = u64::MAX;
        let id = eventforge_core::message::new_id();
        WorkQueue {
            inner: Arc::new(Inner {
                backend: self.backend,
                owns_backend: self.owns_backend,
                options: self.options,
                dead_letter_options,
                retry_delay: self.retry_delay,
                events: self.events.unwrap_or_else(MessageQueue::memory),
                pull_consumer: format!("{id}-pull"),
                id,
                next_consumer: AtomicU64::new(0),
                counts: Mutex::new(HashMap::new()),
                closing: CancellationToken::new(),
                tasks: TaskTracker::new(),
                closed: AtomicBool::new(false),
                summary_interval: self.summary_interval,
                summary_started: AtomicBool::new(false),
            }),
        }
    }
}

/// Jobs on topics, handed out to consumer groups; see the
/// [module docs](self). Cheap to clone: clones share the backend, counters
/// and consumers.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn WorkBackend>,
    /// Whether `close` closes the backend too (not when it is shared).
    owns_backend: bool,
    options: WorkOptions,
    dead_letter_options: WorkOptions,
    retry_delay: Duration,
    events: MessageQueue,
    /// Names this handle's consumers.
    id: String,
    /// The consumer name of this handle's `dequeue` calls.
    pull_consumer: String,
    next_consumer: AtomicU64,
    /// Per topic: this handle's counts and the groups it has seen.
    counts: Mutex<HashMap<String, TopicRecord>>,
    closing: CancellationToken,
    tasks: TaskTracker,
    closed: AtomicBool,
    summary_interval: Option<Duration>,
    summary_started: AtomicBool,
}

#[derive(Debug)]
struct TopicRecord {
    counts: JobCounts,
    groups: HashSet<String>,
    /// `_events.<topic>.<event>` for each event, made once.
    event_topics: HashMap<JobEvent, String>,
}

impl TopicRecord {
    fn new(topic: &str) -> Self {
        let event_topics = JobEvent::ALL
            .iter()
            .map(|&event| (event, event.topic_for(topic)))
            .collect();
        Self {
            counts: JobCounts::default(),
            groups: HashSet::new(),
            event_topics,
        }
    }

    fn event_topic(&self, event: JobEvent) -> &str {
        &self.event_topics[&event]
    }
}

impl fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue")
            .field("backend", &self.inner.backend.name())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl WorkQueue {
    /// A queue over `backend` with the default settings.
    pub fn new(backend: impl WorkBackend) -> Self {
        Self::builder(backend).build()
    }

    /// A queue in this process's memory with the default settings.
    pub fn memory() -> Self {
        Self::new(MemoryWorkBackend::new())
    }

    /// Settings for a queue over `backend`.
    pub fn builder(backend: impl WorkBackend) -> WorkQueueBuilder {
        let mut builder = Self::builder_shared(Arc::new(backend));
        builder.owns_backend = true;
        builder
    }

    /// Settings for a queue over a backend shared with other queues (one
    /// connection for several queues, say). Closing the queue leaves such a
    /// backend open; close it with [`WorkBackend::close`].
    pub fn builder_shared(backend: Arc<dyn WorkBackend>) -> WorkQueueBuilder {
        WorkQueueBuilder {
            backend,
            owns_backend: false,
            options: WorkOptions::default(),
            retry_delay: Duration::ZERO,
            events: None,
            summary_interval: Some(Duration::from_secs(10)),
        }
    }

    /// The backend's name: `"memory"`, `"redis"`, `"jetstream"`.
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The settings in force.
    pub fn options(&self) -> &WorkOptions {
        &self.inner.options
    }

    /// The queue lifecycle events are published on.
    pub fn events(&self) -> &MessageQueue {
        &self.inner.events
    }

    /// Stores a job carrying `payload` on `topic` and returns its id.
    ///
    /// Fails with [`Error::QueueFull`] when a group of the topic already
    /// holds [`max_size`](WorkQueueBuilder::max_size) jobs, and with
    /// [`Error::InvalidTopic`] for a malformed topic.
    pub async fn enqueue(&self, topic: &str, payload: impl Serialize) -> Result<String> {
        self.enqueue_message(Message::new(topic, payload)?).await
    }

    /// Stores a message built by the caller (custom headers, correlation id)
    /// as a job on its topic and returns its id. The work-queue headers are
    /// filled in.
    pub async fn enqueue_message(&self, mut message: Message) -> Result<String> {
        self.check_open()?;
        validate_topic(&message.topic)?;
        self.start_summary();
        let enqueued_at = iso_now();
        let headers = &mut message.headers;
        headers.insert(RETRY_COUNT_HEADER.into(), Value::from(0));
        headers.insert(
            ORIGINAL_TOPIC_HEADER.into(),
            Value::from(message.topic.clone()),
        );
        headers.insert(ENQUEUED_AT_HEADER.into(), Value::from(enqueued_at.clone()));
        headers.insert(
            VISIBILITY_TIMEOUT_HEADER.into(),
            Value::from(self.inner.options.visibility_timeout.as_secs_f64()),
        );
        let id = message.id.clone();
        let topic = message.topic.clone();
        self.inner
            .backend
            .enqueue(&self.inner.options, message)
            .await?;
        let event = self.inner.event(JobEvent::EnqueueJob, &topic, &id);
        let event = event.map(|event| JobEventPayload {
            enqueued_at: Some(enqueued_at),
            ..event
        });
        self.inner.emit(event).await;
        Ok(id)
    }

    /// Creates `group` on `topic` now, so that it receives every job
    /// enqueued from now on even before a consumer of it runs.
    pub async fn create_group(&self, topic: &str, group: &str) -> Result<()> {
        self.check_open()?;
        validate_topic(topic)?;
        self.inner
            .backend
            .create_group(&self.inner.options, topic, group, false)
            .await
    }

    /// Waits up to `timeout` for a job of `group` on `topic`; `Ok(None)`
    /// when none came. The job must be settled with [`Job::ack`] or
    /// [`Job::nack`]; one dropped unsettled is handed out again after the
    /// visibility timeout.
    pub async fn dequeue(
        &self,
        topic: &str,
        group: &str,
        timeout: Duration,
    ) -> Result<Option<Job>> {
        self.check_open()?;
        validate_topic(topic)?;
        self.start_summary();
        // One name per handle for every pull: a broker keeps state per
        // consumer name, and a name per call would pile up there.
        let consumer = &self.inner.pull_consumer;
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let delivery = self
                .inner
                .backend
                .receive(&self.inner.options, topic, group, consumer, left)
                .await?;
            let Some(delivery) = delivery else {
                return Ok(None);
            };
            if let Some(job) = self.inner.start(delivery).await {
                return Ok(Some(job));
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// Runs `handler` on every job of `group` on `topic`, one at a time,
    /// until the returned [`Consumer`] is stopped or the queue closed.
    ///
    /// The handler gets the job's message (its `_wq_retry_count` header
    /// tells which try it is). `Ok` acks the job; an error is a failed try:
    /// retried after [`retry_delay`](WorkQueueBuilder::retry_delay) until
    /// `max_retries`, then dead-lettered. Return a [`Nack`] as the error to
    /// choose the outcome yourself. A panic counts as a failed try.
    pub async fn consume<F, Fut, E>(&self, topic: &str, group: &str, handler: F) -> Result<Consumer>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.consume_with(topic, group, 1, handler).await
    }

    /// Like [`consume`](Self::consume) with up to `concurrency` jobs handled
    /// at once by this consumer.
    pub async fn consume_with<F, Fut, E>(
        &self,
        topic: &str,
        group: &str,
        concurrency: usize,
        handler: F,
    ) -> Result<Consumer>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.check_open()?;
        validate_topic(topic)?;
        self.start_summary();
        // The group exists before `consume` returns, so jobs enqueued after
        // it are not missed by a group first named here.
        self.inner
            .backend
            .create_group(&self.inner.options, topic, group, false)
            .await?;
        let name = self.inner.consumer_name();
        let stop = self.inner.closing.child_token();
        let tasks = TaskTracker::new();
        let handler = Arc::new(handler);
        let mut aborts = Vec::with_capacity(concurrency.max(1));
        for _ in 0..concurrency.max(1) {
            let worker = ConsumerLoop {
                inner: Arc::clone(&self.inner),
                topic: topic.to_owned(),
                group: group.to_owned(),
                consumer: name.clone(),
                stop: stop.clone(),
            };
            let handler = Arc::clone(&handler);
            let task = worker.run(move |message| handler(message));
            let handle = tasks.spawn(self.inner.tasks.track_future(task));
            aborts.push(handle.abort_handle());
        }
        tasks.close();
        Ok(Consumer {
            name,
            topic: topic.to_owned(),
            group: group.to_owned(),
            stop,
            tasks,
            aborts,
        })
    }

    /// Queue-wide figures of `group` on `topic`, with this handle's acked and
    /// nacked counts.
    pub async fn stats(&self, topic: &str, group: &str) -> Result<WorkStats> {
        self.check_open()?;
        let inner = &self.inner;
        let backend = inner.backend.stats(&inner.options, topic, group).await?;
        let dead = inner
            .backend
            .stats(&inner.dead_letter_options, &dead_letter_topic(topic), group)
            .await?;
        let counts = inner.counts(topic);
        Ok(WorkStats {
            pending: backend.pending,
            in_flight: backend.in_flight,
            acked: counts.completed,
            nacked: counts.failed,
            dead: dead.pending + dead.in_flight,
        })
    }

    /// This handle's counts on `topic`.
    pub fn counts(&self, topic: &str) -> JobCounts {
        self.inner.counts(topic)
    }

    /// Stops every consumer (each finishes the job in hand), stops the
    /// summary events and closes the backend unless it is shared (see
    /// [`builder_shared`](Self::builder_shared)). Idempotent.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.closing.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if self.inner.owns_backend {
            self.inner.backend.close().await?;
        }
        Ok(())
    }

    /// True once [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed("work queue"))
        } else {
            Ok(())
        }
    }

    /// Starts the periodic summary once, from inside the runtime.
    fn start_summary(&self) {
        let Some(interval) = self.inner.summary_interval else {
            return;
        };
        if self.inner.summary_started.swap(true, Ordering::AcqRel) {
            return;
        }
        // The task holds a weak reference so an unclosed, dropped queue
        // does not live on for its summaries.
        let weak = Arc::downgrade(&self.inner);
        let closing = self.inner.closing.clone();
        self.inner.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.publish_summaries().await;
            }
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

impl Inner {
    fn consumer_name(&self) -> String {
        let n = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id)
    }

    fn counts(&self, topic: &str) -> JobCounts {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(topic)
            .map(|record| record.counts)
            .unwrap_or_default()
    }

    /// Counts `event` and, when somebody may listen to it, returns its
    /// payload with the counts after it. The payload is only built for a
    /// listener: this runs for every step of every job.
    fn event(&self, event: JobEvent, topic: &str, job_id: &str) -> Option<JobEventPayload> {
        let (counts, listened) = {
            let mut all = self
                .counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let record = match all.get_mut(topic) {
                Some(record) => record,
                None => all
                    .entry(topic.to_owned())
                    .or_insert_with(|| TopicRecord::new(topic)),
            };
            record.counts.record(event);
            let listened = self
                .events
                .transport()
                .has_subscribers(record.event_topic(event))
                != Some(false);
            (record.counts, listened)
        };
        listened.then(|| JobEventPayload {
            event,
            job_id: job_id.to_owned(),
            topic: topic.to_owned(),
            group: None,
            attempt: None,
            enqueued_at: None,
            timestamp: iso_now(),
            duration: None,
            error: None,
            reason: None,
            delay: None,
            counts,
        })
    }

    /// An event about one delivery of `message` to `group`.
    fn delivery_event(
        &self,
        event: JobEvent,
        topic: &str,
        group: &str,
        message: &Message,
        attempt: u32,
    ) -> Option<JobEventPayload> {
        let payload = self.event(event, topic, &message.id)?;
        Some(JobEventPayload {
            group: Some(group.to_owned()),
            attempt: Some(attempt),
            enqueued_at: message
                .headers
                .get(ENQUEUED_AT_HEADER)
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..payload
        })
    }

    /// An event about the job in hand.
    fn job_event(&self, event: JobEvent, job: &JobState) -> Option<JobEventPayload> {
        let receipt = &job.receipt;
        self.delivery_event(
            event,
            &receipt.topic,
            &receipt.group,
            &job.message,
            job.attempt,
        )
    }

    /// Publishes a lifecycle event; a failure is logged, never passed on:
    /// events are observability, not part of the job's fate.
    async fn emit(&self, payload: Option<JobEventPayload>) {
        if let Some(payload) = payload {
            let topic = payload.event.topic_for(&payload.topic);
            self.publish(&topic, &payload).await;
        }
    }

    async fn publish(&self, topic: &str, payload: &impl Serialize) {
        if self.events.transport().has_subscribers(topic) == Some(false) {
            return;
        }
        if let Err(error) = self.events.publish(topic, payload).await {
            tracing::debug!(%topic, %error, "work queue event not published");
        }
    }

    async fn publish_summaries(&self) {
        let topics: Vec<(String, Vec<String>, JobCounts)> = {
            let all = self
                .counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            all.iter()
                .map(|(topic, record)| {
                    let mut groups: Vec<String> = record.groups.iter().cloned().collect();
                    for declared in &self.options.groups {
                        if !groups.contains(declared) {
                            groups.push(declared.clone());
                        }
                    }
                    (topic.clone(), groups, record.counts)
                })
                .collect()
        };
        for (topic, groups, counts) in topics {
            let summary_topic = JobEvent::Summary.topic_for(&topic);
            if self.events.transport().has_subscribers(&summary_topic) == Some(false) {
                continue;
            }
            let mut figures = HashMap::new();
            for group in groups {
                let queued = self.backend.stats(&self.options, &topic, &group).await;
                let dead = self
                    .backend
                    .stats(
                        &self.dead_letter_options,
                        &dead_letter_topic(&topic),
                        &group,
                    )
                    .await;
                match (queued, dead) {
                    (Ok(queued), Ok(dead)) => {
                        figures.insert(
                            group,
                            GroupSummary {
                                pending: queued.pending,
                                in_flight: queued.in_flight,
                                dead: dead.pending + dead.in_flight,
                            },
                        );
                    }
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::debug!(%topic, %group, %error, "no summary figures for group");
                    }
                }
            }
            let summary = Summary {
                event: JobEvent::Summary,
                topic: topic.clone(),
                timestamp: iso_now(),
                groups: figures,
                counts,
            };
            self.publish(&summary_topic, &summary).await;
        }
    }

    /// Turns a delivery into a job in hand, or dead-letters it when its
    /// tries are used up (returning `None`).
    async fn start(self: &Arc<Self>, delivery: Delivery) -> Option<Job> {
        let Delivery {
            mut message,
            attempt,
            receipt,
        } = delivery;
        message.headers.insert(
            RETRY_COUNT_HEADER.into(),
            Value::from(attempt.saturating_sub(1)),
        );
        {
            let mut all = self
                .counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let record = match all.get_mut(&receipt.topic) {
                Some(record) => record,
                None => all
                    .entry(receipt.topic.clone())
                    .or_insert_with(|| TopicRecord::new(&receipt.topic)),
            };
            if !record.groups.contains(&receipt.group) {
                record.groups.insert(receipt.group.clone());
            }
        }
        let state = JobState {
            message,
            attempt,
            receipt,
            started: Instant::now(),
        };
        if attempt > self.options.max_tries() {
            // Its last try timed out in flight (a crashed or stuck consumer).
            let error = "visibility timeout expired on the last try".to_owned();
            if let Err(failed) = self
                .dead_letter(state, REASON_VISIBILITY_TIMEOUT, &error)
                .await
            {
                tracing::warn!(error = %failed, "job with no tries left not dead-lettered yet");
            }
            return None;
        }
        self.emit(self.job_event(JobEvent::StartJob, &state)).await;
        Some(Job {
            state: Some(state),
            inner: Arc::clone(self),
        })
    }

    async fn ack(&self, job: JobState) -> Result<()> {
        let duration = job.started.elapsed().as_secs_f64();
        let JobState {
            message,
            attempt,
            receipt,
            ..
        } = job;
        let (topic, group) = (receipt.topic.clone(), receipt.group.clone());
        self.backend.ack(receipt).await?;
        let event = self.delivery_event(JobEvent::CompleteJob, &topic, &group, &message, attempt);
        self.emit(event.map(|event| JobEventPayload {
            duration: Some(duration),
            ..event
        }))
        .await;
        Ok(())
    }

    /// Settles a failed try: retry, or dead letter when asked to or when
    /// the tries are used up.
    async fn fail(&self, job: JobState, error: String, action: Nack) -> Result<()> {
        let event = self.job_event(JobEvent::FailedJob, &job);
        self.emit(event.map(|event| JobEventPayload {
            duration: Some(job.started.elapsed().as_secs_f64()),
            error: Some(error.clone()),
            ..event
        }))
        .await;
        let delay = match action {
            Nack::DeadLetter(_) => {
                return self.dead_letter(job, REASON_REJECTED, &error).await;
            }
            _ if job.attempt >= self.options.max_tries() => {
                return self.dead_letter(job, REASON_MAX_RETRIES, &error).await;
            }
            Nack::Requeue => Duration::ZERO,
            Nack::Delay(delay) => delay,
        };
        let JobState {
            message,
            attempt,
            receipt,
            ..
        } = job;
        let (topic, group) = (receipt.topic.clone(), receipt.group.clone());
        self.backend.retry(&self.options, receipt, delay).await?;
        let event = self.delivery_event(JobEvent::RetryJob, &topic, &group, &message, attempt);
        self.emit(event.map(|event| JobEventPayload {
            delay: Some(delay.as_secs_f64()),
            error: Some(error),
            ..event
        }))
        .await;
        Ok(())
    }

    /// Stores the job on the dead-letter topic, then acks the original: a
    /// crash in between leaves a duplicate dead letter, never a lost job.
    async fn dead_letter(&self, job: JobState, reason: &str, error: &str) -> Result<()> {
        let original = job.receipt.topic.clone();
        // A dead letter is a new message, as the Python peer makes it; it
        // names the job it comes from.
        let mut letter = job.message.clone();
        letter.topic = dead_letter_topic(&original);
        letter.id = eventforge_core::message::new_id();
        letter.timestamp = eventforge_core::message::now();
        let headers = &mut letter.headers;
        headers.insert(
            ORIGINAL_ID_HEADER.into(),
            Value::from(job.message.id.clone()),
        );
        headers.insert(DEAD_LETTERED_AT_HEADER.into(), Value::from(iso_now()));
        headers.insert(DEAD_LETTER_REASON_HEADER.into(), Value::from(reason));
        headers.insert(LAST_ERROR_HEADER.into(), Value::from(error));
        headers.insert(GROUP_HEADER.into(), Value::from(job.receipt.group.clone()));
        headers
            .entry(ORIGINAL_TOPIC_HEADER)
            .or_insert_with(|| Value::from(original.clone()));
        if let Err(stored) = self
            .backend
            .enqueue(&self.dead_letter_options, letter)
            .await
        {
            tracing::warn!(
                job_id = %job.message.id,
                topic = %original,
                error = %stored,
                "dead letter not stored; the job stays in flight and comes back after the visibility timeout"
            );
            return Err(stored);
        }
        tracing::warn!(
            job_id = %job.message.id,
            topic = %original,
            group = %job.receipt.group,
            %reason,
            %error,
            "job sent to the dead-letter topic"
        );
        let JobState {
            message,
            attempt,
            receipt,
            ..
        } = job;
        let group = receipt.group.clone();
        self.backend.ack(receipt).await?;
        let event = self.delivery_event(
            JobEvent::DeadLetterJob,
            &original,
            &group,
            &message,
            attempt,
        );
        self.emit(event.map(|event| JobEventPayload {
            reason: Some(reason.to_owned()),
            error: Some(error.to_owned()),
            ..event
        }))
        .await;
        Ok(())
    }
}

/// What a job in hand carries.
struct JobState {
    message: Message,
    attempt: u32,
    receipt: Receipt,
    started: Instant,
}

/// A job taken with [`WorkQueue::dequeue`], to be settled with
/// [`ack`](Self::ack) or [`nack`](Self::nack).
///
/// Dropped unsettled, it is handed out again once the visibility timeout
/// has passed.
pub struct Job {
    /// `None` once settled.
    state: Option<JobState>,
    inner: Arc<Inner>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Job");
        if let Some(state) = &self.state {
            out.field("id", &state.message.id)
                .field("topic", &state.receipt.topic)
                .field("group", &state.receipt.group)
                .field("attempt", &state.attempt);
        }
        out.finish_non_exhaustive()
    }
}

impl Job {
    fn state(&self) -> &JobState {
        self.state
            .as_ref()
            .expect("a job is only settled by methods that consume it")
    }

    /// The job's message, headers included.
    pub fn message(&self) -> &Message {
        &self.state().message
    }

    /// The job's id (its message id, the one `enqueue` returned).
    pub fn id(&self) -> &str {
        &self.state().message.id
    }

    /// The work-queue topic.
    pub fn topic(&self) -> &str {
        &self.state().receipt.topic
    }

    /// The group this delivery belongs to.
    pub fn group(&self) -> &str {
        &self.state().receipt.group
    }

    /// Which try this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.state().attempt
    }

    /// The payload as JSON.
    pub fn payload(&self) -> &Value {
        &self.state().message.payload
    }

    /// The payload deserialised as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.state().message.payload_as()
    }

    /// Marks the job done. Fails with [`Error::DeliveryExpired`] when the
    /// visibility timeout had passed and the job was handed out again.
    pub async fn ack(mut self) -> Result<()> {
        let state = self.state.take().expect("an unsettled job has its state");
        self.inner.ack(state).await
    }

    /// Gives the job back as `action` says; a failed try, so after
    /// `max_retries` of them the job is dead-lettered whatever the action.
    pub async fn nack(mut self, action: Nack) -> Result<()> {
        let state = self.state.take().expect("an unsettled job has its state");
        let error = action.to_string();
        self.inner.fail(state, error, action).await
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            tracing::debug!(
                job_id = %state.message.id,
                topic = %state.receipt.topic,
                "job dropped unsettled; it is handed out again after the visibility timeout"
            );
        }
    }
}

/// A running push consumer made by [`WorkQueue::consume`].
///
/// Dropping the handle leaves the consumer running until the queue closes;
/// [`stop`](Self::stop) ends it.
#[derive(Debug)]
pub struct Consumer {
    name: String,
    topic: String,
    group: String,
    stop: CancellationToken,
    tasks: TaskTracker,
    aborts: Vec<tokio::task::AbortHandle>,
}

impl Consumer {
    /// The consumer's name as the backend knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic it consumes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Stops taking jobs and waits until the jobs in hand are settled.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }

    /// Stops at once, as a crash would: jobs in hand are left unsettled and
    /// handed out again after the visibility timeout. For fault tests and
    /// emergencies; prefer [`stop`](Self::stop).
    pub async fn abort(self) {
        self.stop.cancel();
        for handle in &self.aborts {
            handle.abort();
        }
        self.tasks.wait().await;
    }
}

/// One receive-handle-settle loop of a push consumer.
struct ConsumerLoop {
    inner: Arc<Inner>,
    topic: String,
    group: String,
    consumer: String,
    stop: CancellationToken,
}

impl ConsumerLoop {
    async fn run<F, Fut, E>(self, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let mut pause = ERROR_PAUSE;
        loop {
            let received = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                received = inner.backend.receive(
                    &inner.options, &self.topic, &self.group, &self.consumer, POLL,
                ) => received,
            };
            let delivery = match received {
                Ok(Some(delivery)) => delivery,
                Ok(None) => {
                    pause = ERROR_PAUSE;
                    continue;
                }
                Err(Error::Closed(_)) => return,
                Err(error) => {
                    tracing::warn!(
                        topic = %self.topic,
                        group = %self.group,
                        %error,
                        "work queue consumer could not receive; trying again in {pause:?}"
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_ERROR_PAUSE);
                    continue;
                }
            };
            pause = ERROR_PAUSE;
            let Some(mut job) = inner.start(delivery).await else {
                continue;
            };
            let state = job.state.take().expect("a started job has its state");
            // Turned into owned, sendable values before anything else is awaited.
            let outcome: std::result::Result<(), (String, Nack)> =
                // The call itself sits inside the guarded future: a sync
                // part of the handler may panic too.
                match AssertUnwindSafe(async { handler(state.message.clone()).await })
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(failure(error.into(), inner.retry_delay)),
                    Err(panic) => Err((
                        format!("handler panicked: {}", panic_text(panic.as_ref())),
                        retry_action(inner.retry_delay),
                    )),
                };
            let settled = match outcome {
                Ok(()) => inner.ack(state).await,
                Err((error, action)) => inner.fail(state, error, action).await,
            };
            if let Err(error) = settled {
                tracing::warn!(
                    topic = %self.topic,
                    group = %self.group,
                    %error,
                    "job not settled; it comes back after the visibility timeout"
                );
            }
        }
    }
}

/// The text and the outcome of a handler's error: its own [`Nack`] when it
/// returned one, else a retry.
fn failure(error: BoxError, retry_delay: Duration) -> (String, Nack) {
    match error.downcast::<Nack>() {
        Ok(nack) => (nack.to_string(), *nack),
        Err(error) => (error.to_string(), retry_action(retry_delay)),
    }
}

fn retry_action(delay: Duration) -> Nack {
    if delay.is_zero() {
        Nack::Requeue
    } else {
        Nack::Delay(delay)
    }
}

/// Now as the Python peer writes it: ISO 8601, UTC, microseconds, `+00:00`.
fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}
