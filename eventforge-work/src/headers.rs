//! The work-queue headers of the protocol: what every job and dead letter
//! carries besides its payload, exactly as the Python eventforge writes it,
//! so that jobs move between Rust and Python consumers.

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
/// [`Nack::DeadLetter`](crate::Nack::DeadLetter), its reason).
pub const LAST_ERROR_HEADER: &str = "_wq_last_error";
/// Dead-letter reason: every try failed.
pub const REASON_MAX_RETRIES: &str = "max_retries_exceeded";
/// Dead-letter reason: the consumer rejected the job ([`Nack::DeadLetter`](crate::Nack::DeadLetter)).
pub const REASON_REJECTED: &str = "nack_no_requeue";
/// Dead-letter reason: the last try was neither acked nor nacked in time.
pub const REASON_VISIBILITY_TIMEOUT: &str = "visibility_timeout_exceeded";
/// Header on a dead letter: the group whose tries failed.
pub const GROUP_HEADER: &str = "_wq_group";
/// The suffix of the dead-letter topic: jobs of `orders` that fail for good
/// go to `orders.dead_letter`.
pub const DEAD_LETTER_SUFFIX: &str = "dead_letter";

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.{DEAD_LETTER_SUFFIX}")
}

/// Now as the Python peer writes it: ISO 8601, UTC, microseconds, `+00:00`.
pub(crate) fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}
