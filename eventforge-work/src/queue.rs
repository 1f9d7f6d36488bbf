//! `WorkQueue`: the jobs layer's one API, identical on every backend
//! (memory, Redis Streams, JetStream): enqueue, consume, dequeue, stats.

use crate::events::JobEventPayload;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use eventforge_core::error::{BoxError, Error, Result};
use eventforge_core::message::Message;
use eventforge_core::queue::MessageQueue;
use eventforge_core::topic::validate_topic;

use crate::backend::{WorkBackend, WorkOptions};
use crate::consumer::{Consumer, ConsumerLoop};
use crate::events::{JobCounts, JobEvent};
use crate::headers::*;
use crate::job::Job;
use crate::memory::MemoryWorkBackend;

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
/// [crate docs](crate). Cheap to clone: clones share the backend, counters
/// and consumers.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn WorkBackend>,
    /// Whether `close` closes the backend too (not when it is shared).
    pub(crate) owns_backend: bool,
    pub(crate) options: WorkOptions,
    pub(crate) dead_letter_options: WorkOptions,
    pub(crate) retry_delay: Duration,
    pub(crate) events: MessageQueue,
    /// Names this handle's consumers.
    pub(crate) id: String,
    /// The consumer name of this handle's `dequeue` calls.
    pub(crate) pull_consumer: String,
    pub(crate) next_consumer: AtomicU64,
    /// Per topic: this handle's counts and the groups it has seen.
    pub(crate) counts: Mutex<HashMap<String, TopicRecord>>,
    pub(crate) closing: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) closed: AtomicBool,
    pub(crate) summary_interval: Option<Duration>,
    pub(crate) summary_started: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct TopicRecord {
    pub(crate) counts: JobCounts,
    pub(crate) groups: HashSet<String>,
    /// `_events.<topic>.<event>` for each event, made once.
    pub(crate) event_topics: HashMap<JobEvent, String>,
}

impl TopicRecord {
    pub(crate) fn new(topic: &str) -> Self {
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

    pub(crate) fn event_topic(&self, event: JobEvent) -> &str {
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
    /// `max_retries`, then dead-lettered. Return a [`Nack`](crate::Nack) as the error to
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
    pub(crate) fn consumer_name(&self) -> String {
        let n = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id)
    }

    pub(crate) fn counts(&self, topic: &str) -> JobCounts {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(topic)
            .map(|record| record.counts)
            .unwrap_or_default()
    }
}
