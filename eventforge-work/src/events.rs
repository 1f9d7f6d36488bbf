//! Job lifecycle events: what a [`WorkQueue`](crate::WorkQueue) publishes on
//! `_events.<topic>.<event>` as jobs move through it.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The prefix of every lifecycle event topic.
pub const EVENTS_PREFIX: &str = "_events";

/// A step in a job's life, named as job systems name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEvent {
    /// The job was stored.
    EnqueueJob,
    /// A consumer took the job (`attempt` tells which try this is).
    StartJob,
    /// The job was acked.
    CompleteJob,
    /// A try failed (handler error, panic or explicit nack).
    FailedJob,
    /// The job was given back to its group to be tried again.
    RetryJob,
    /// The job went to `<topic>.dead_letter`.
    DeadLetterJob,
    /// Periodic figures for a topic (see [`Summary`]).
    Summary,
}

impl JobEvent {
    /// Every event, in the order of a job's life.
    pub const ALL: [JobEvent; 7] = [
        JobEvent::EnqueueJob,
        JobEvent::StartJob,
        JobEvent::CompleteJob,
        JobEvent::FailedJob,
        JobEvent::RetryJob,
        JobEvent::DeadLetterJob,
        JobEvent::Summary,
    ];

    /// The event's name, the last segment of its topic.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEvent::EnqueueJob => "enqueue_job",
            JobEvent::StartJob => "start_job",
            JobEvent::CompleteJob => "complete_job",
            JobEvent::FailedJob => "failed_job",
            JobEvent::RetryJob => "retry_job",
            JobEvent::DeadLetterJob => "dead_letter_job",
            JobEvent::Summary => "summary",
        }
    }

    /// The topic this event is published on for work-queue topic `topic`.
    pub fn topic_for(self, topic: &str) -> String {
        format!("{EVENTS_PREFIX}.{topic}.{}", self.as_str())
    }
}

impl fmt::Display for JobEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What this [`WorkQueue`](crate::WorkQueue) handle has done on one topic
/// since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Jobs stored.
    pub enqueued: u64,
    /// Deliveries taken by consumers.
    pub started: u64,
    /// Jobs acked.
    pub completed: u64,
    /// Tries that failed.
    pub failed: u64,
    /// Failed tries given back to be tried again.
    pub retried: u64,
    /// Jobs sent to the dead-letter topic.
    pub dead: u64,
}

impl JobCounts {
    pub(crate) fn record(&mut self, event: JobEvent) {
        let counter = match event {
            JobEvent::EnqueueJob => &mut self.enqueued,
            JobEvent::StartJob => &mut self.started,
            JobEvent::CompleteJob => &mut self.completed,
            JobEvent::FailedJob => &mut self.failed,
            JobEvent::RetryJob => &mut self.retried,
            JobEvent::DeadLetterJob => &mut self.dead,
            JobEvent::Summary => return,
        };
        *counter += 1;
    }
}

/// The payload of every per-job lifecycle event.
///
/// ```json
/// {"event": "complete_job", "job_id": "…", "topic": "emails", "group": "default",
///  "attempt": 1, "enqueued_at": "2026-11-22T13:50:00.120000+00:00",
///  "timestamp": "2026-11-22T13:50:00.150000+00:00", "duration": 0.002,
///  "counts": {"enqueued": 10, "started": 4, …}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEventPayload {
    /// Which event this is.
    pub event: JobEvent,
    /// The job's message id.
    pub job_id: String,
    /// The work-queue topic.
    pub topic: String,
    /// The group of the delivery; absent for `enqueue_job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Which try this is (1 for the first); absent for `enqueue_job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the job was enqueued (ISO 8601, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<String>,
    /// When this event happened (ISO 8601, UTC).
    pub timestamp: String,
    /// Seconds the try took, for `complete_job` and `failed_job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// The failure, for `failed_job` and `dead_letter_job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the job was dead-lettered, for `dead_letter_job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds before the retry is handed out, for `retry_job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<f64>,
    /// This handle's counts on the topic, this event included.
    pub counts: JobCounts,
}

/// Queue-wide figures of one group, inside a [`Summary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Jobs waiting to be handed out.
    pub pending: u64,
    /// Jobs handed out and not settled.
    pub in_flight: u64,
    /// Jobs waiting in the dead-letter topic for this group.
    pub dead: u64,
}

/// The payload of the periodic `summary` event of a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Always [`JobEvent::Summary`].
    pub event: JobEvent,
    /// The work-queue topic.
    pub topic: String,
    /// When the figures were read (ISO 8601, UTC).
    pub timestamp: String,
    /// Queue-wide figures per group this handle knows of.
    pub groups: HashMap<String, GroupSummary>,
    /// This handle's counts on the topic.
    pub counts: JobCounts,
}
