//! Job lifecycle events: what a [`WorkQueue`](crate::WorkQueue) publishes on
//! `_events.<topic>.<event>` as jobs move through it.

use crate::headers::{dead_letter_topic, iso_now, ENQUEUED_AT_HEADER};
use crate::queue::TopicRecord;
use eventforge_core::message::Message;
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::queue::Inner;
use crate::settle::JobState;

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
    /// Periodic figures for a topic (see [`QueueSummary`]).
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

/// Queue-wide figures of one group, inside a [`QueueSummary`].
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
pub struct QueueSummary {
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

impl Inner {
    /// Counts `event` and, when somebody may listen to it, returns its
    /// payload with the counts after it. The payload is only built for a
    /// listener: this runs for every step of every job.
    pub(crate) fn event(
        &self,
        event: JobEvent,
        topic: &str,
        job_id: &str,
    ) -> Option<JobEventPayload> {
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
    pub(crate) fn delivery_event(
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
    pub(crate) fn job_event(&self, event: JobEvent, job: &JobState) -> Option<JobEventPayload> {
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
    pub(crate) async fn emit(&self, payload: Option<JobEventPayload>) {
        if let Some(payload) = payload {
            let topic = payload.event.topic_for(&payload.topic);
            self.publish(&topic, &payload).await;
        }
    }

    pub(crate) async fn publish(&self, topic: &str, payload: &impl Serialize) {
        if self.events.transport().has_subscribers(topic) == Some(false) {
            return;
        }
        if let Err(error) = self.events.publish(topic, payload).await {
            tracing::debug!(%topic, %error, "work queue event not published");
        }
    }

    pub(crate) async fn publish_summaries(&self) {
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
            let summary = QueueSummary {
                event: JobEvent::Summary,
                topic: topic.clone(),
                timestamp: iso_now(),
                groups: figures,
                counts,
            };
            self.publish(&summary_topic, &summary).await;
        }
    }
}
