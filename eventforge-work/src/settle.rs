//! Settling a job: what happens when a delivery starts, is acked, fails or
//! is dead-lettered, on any backend. The backend stores; this decides.

use crate::queue::TopicRecord;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge_core::error::Result;
use eventforge_core::message::Message;
use serde_json::Value;

use crate::backend::{Delivery, Receipt};
use crate::events::{JobEvent, JobEventPayload};
use crate::headers::*;
use crate::job::{Job, Nack};
use crate::queue::Inner;

impl Inner {
    /// Turns a delivery into a job in hand, or dead-letters it when its
    /// tries are used up (returning `None`).
    pub(crate) async fn start(self: &Arc<Self>, delivery: Delivery) -> Option<Job> {
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

    pub(crate) async fn ack(&self, job: JobState) -> Result<()> {
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
    pub(crate) async fn fail(&self, job: JobState, error: String, action: Nack) -> Result<()> {
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
    pub(crate) async fn dead_letter(&self, job: JobState, reason: &str, error: &str) -> Result<()> {
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
pub(crate) struct JobState {
    pub(crate) message: Message,
    pub(crate) attempt: u32,
    pub(crate) receipt: Receipt,
    pub(crate) started: Instant,
}
