//! The storage side of a [`WorkQueue`](crate::WorkQueue): what every
//! backend (memory, Redis Streams, NATS JetStream) provides.
//!
//! A backend stores jobs per topic and hands them out per *consumer group*:
//! every group receives every job, and inside one group each job goes to one
//! consumer at a time. A job handed out is *in flight* until it is acked,
//! retried, or its visibility timeout passes, after which the backend hands
//! it out again (the attempt count goes up by one).
//!
//! Everything above that (message headers, retry decisions, dead letters,
//! lifecycle events, counters) lives in [`WorkQueue`](crate::WorkQueue), so
//! the backends agree on behaviour by construction.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use eventforge_core::error::Result;
use eventforge_core::message::Message;

/// The group that a [`WorkQueue`](crate::WorkQueue) declares when none is
/// configured.
pub const DEFAULT_GROUP: &str = "default";

/// Settings of a work queue that a backend needs to honour.
///
/// The same value is passed to every backend call, so a backend never has
/// to remember it. Backends that fix some of these when a topic or group is
/// first created (JetStream's `ack_wait`, say) take them from the first call
/// and document it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkOptions {
    /// Most deliveries of a job before it goes to the dead-letter topic, as
    /// the Python peer counts them: with 3, a job is tried at most 3 times
    /// (0 behaves as 1).
    pub max_retries: u32,
    /// How long a job stays in flight without an ack before it is handed
    /// out again.
    pub visibility_timeout: Duration,
    /// Most jobs a group may have waiting or in flight; `enqueue` fails with
    /// [`Error::QueueFull`](eventforge_core::Error::QueueFull) beyond it. `u64::MAX`
    /// means no limit (what [`WorkQueue`](crate::WorkQueue) passes for the
    /// dead-letter topic and for `max_size(0)`).
    pub max_size: u64,
    /// Groups created with the topic, on its first enqueue. They receive
    /// every job, including those enqueued before any consumer ran. Groups
    /// first named by a consumer receive the jobs enqueued after they were
    /// created.
    pub groups: Vec<String>,
}

impl WorkOptions {
    /// Most deliveries of one job: `max_retries`, at least 1.
    pub fn max_tries(&self) -> u32 {
        self.max_retries.max(1)
    }
}

impl Default for WorkOptions {
    fn default() -> Self {
        Self {
            max_retries: 3,
            visibility_timeout: Duration::from_secs(30),
            max_size: 10_000,
            groups: vec![DEFAULT_GROUP.to_string()],
        }
    }
}

/// Proof of one delivery, needed to ack or retry it.
///
/// The backend puts what it needs in `token` (a memory sequence number, a
/// Redis stream entry id, a JetStream message) and gets it back with
/// [`token`](Self::token).
pub struct Receipt {
    /// The topic the job was taken from.
    pub topic: String,
    /// The group it was delivered to.
    pub group: String,
    /// The consumer it was delivered to.
    pub consumer: String,
    token: Box<dyn Any + Send + Sync>,
}

impl Receipt {
    /// A receipt carrying a backend's own token.
    pub fn new(
        topic: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        token: impl Any + Send + Sync,
    ) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            consumer: consumer.into(),
            token: Box::new(token),
        }
    }

    /// The backend's token, if it has type `T`.
    pub fn token<T: Any>(&self) -> Option<&T> {
        self.token.downcast_ref()
    }

    /// Takes the backend's token out, if it has type `T`.
    pub fn into_token<T: Any>(self) -> Option<T> {
        self.token.downcast().ok().map(|boxed| *boxed)
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// One job handed to one consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The job as enqueued (headers as the producer wrote them).
    pub message: Message,
    /// 1 for the first delivery, then one more for every retry or
    /// visibility-timeout redelivery.
    pub attempt: u32,
    /// What [`WorkBackend::ack`] and [`WorkBackend::retry`] need.
    pub receipt: Receipt,
}

/// Queue-wide figures of one group on one topic, as the backend sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Jobs waiting to be handed out to the group (delayed retries included).
    pub pending: u64,
    /// Jobs handed out and neither acked nor expired yet.
    pub in_flight: u64,
}

/// Storage for a [`WorkQueue`](crate::WorkQueue).
///
/// Implementations must be safe to share between tasks and processes: many
/// consumers of one group may call [`receive`](Self::receive) at once, and
/// each job must go to one of them. Unknown topics and groups are not
/// errors: [`stats`](Self::stats) reports zeros and
/// [`receive`](Self::receive) creates the group.
#[async_trait]
pub trait WorkBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for messages and events: `"memory"`, `"redis"`, `"jetstream"`.
    fn name(&self) -> &'static str;

    /// Creates `group` on `topic` if it does not exist. With `from_start` the
    /// group receives every job the topic still holds; without, only jobs
    /// enqueued from now on.
    async fn create_group(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        from_start: bool,
    ) -> Result<()>;

    /// Stores `job` on `job.topic` for every group of the topic, creating
    /// the topic and its declared groups ([`WorkOptions::groups`]) first if
    /// needed. Fails with [`Error::QueueFull`](eventforge_core::Error::QueueFull)
    /// when a group already holds [`WorkOptions::max_size`] jobs; nothing is
    /// stored then.
    async fn enqueue(&self, options: &WorkOptions, job: Message) -> Result<()>;

    /// Waits up to `timeout` for a job of `group` on `topic` and hands it to
    /// `consumer`, creating the group (not from the start) if needed.
    /// `Ok(None)` when the time passed with nothing to hand out.
    async fn receive(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>>;

    /// Marks the delivery done: the group never receives the job again.
    /// Fails with [`Error::DeliveryExpired`](eventforge_core::Error::DeliveryExpired)
    /// when the backend can tell the delivery had already expired and was
    /// handed out again.
    async fn ack(&self, receipt: Receipt) -> Result<()>;

    /// Gives the job back to the group, to be handed out again after `delay`
    /// (at once when zero) with the attempt count one higher.
    async fn retry(&self, options: &WorkOptions, receipt: Receipt, delay: Duration) -> Result<()>;

    /// Figures for `group` on `topic`.
    async fn stats(&self, options: &WorkOptions, topic: &str, group: &str) -> Result<BackendStats>;

    /// Deletes `topic` with its groups and every job it holds, waiting or in
    /// flight (for administration and tests; the dead-letter topic is a
    /// topic of its own). False when there was no such topic.
    async fn delete_topic(&self, topic: &str) -> Result<bool>;

    /// Releases connections and background tasks. Idempotent.
    async fn close(&self) -> Result<()>;
}
