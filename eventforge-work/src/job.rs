//! A job in hand and how its consumer gives it back: `ack`, or `nack` with
//! a [`Nack`] (requeue, delay, dead letter).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use eventforge_core::error::Result;
use eventforge_core::message::Message;

use crate::queue::Inner;
use crate::settle::JobState;

/// How a consumer gives a job back.
///
/// A push handler can return one as its error to choose the outcome:
/// `Err(Nack::DeadLetter("unknown customer".into()))`; any other error
/// counts as a failed try, retried after the queue's
/// [`retry_delay`](crate::WorkQueueBuilder::retry_delay).
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

/// A job taken with [`WorkQueue::dequeue`](crate::WorkQueue::dequeue), to be settled with
/// [`ack`](Self::ack) or [`nack`](Self::nack).
///
/// Dropped unsettled, it is handed out again once the visibility timeout
/// has passed.
pub struct Job {
    /// `None` once settled.
    pub(crate) state: Option<JobState>,
    pub(crate) inner: Arc<Inner>,
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

    /// Marks the job done. Fails with [`Error::DeliveryExpired`](eventforge_core::Error::DeliveryExpired) when the
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
