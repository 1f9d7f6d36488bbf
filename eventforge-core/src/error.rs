//! The one error type of `eventforge-core`.
//!
//! Every fallible operation of the core (and of every [`Transport`](crate::Transport))
//! returns [`Error`]. Variants are kinds a caller can match on; each message
//! says what happened and, where there is one, what to do about it.

use std::time::Duration;

/// A boxed error from a lower layer (a socket, a broker client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across `eventforge-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A subscription pattern is malformed (see [`Pattern`](crate::Pattern)).
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A topic to publish on is malformed: empty, an empty segment, or a wildcard.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// What the call needed (a transport, a queue, a backend) was closed;
    /// nothing more can be sent, subscribed or awaited through it. The text
    /// names what was closed ("memory transport", "work queue", ...).
    #[error("the {0} is closed; create a new one to go on")]
    Closed(&'static str),

    /// Nothing arrived before the deadline.
    #[error("timed out after {timeout:?} waiting for {waiting_for}")]
    Timeout {
        /// What was awaited (a topic, a reply topic).
        waiting_for: String,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// The transport knows that nobody listens on the request topic.
    #[error("no responders on topic {topic:?}: start a subscriber or server for it first")]
    NoResponders {
        /// The request topic.
        topic: String,
    },

    /// `reply` was called on a message that did not ask for a reply.
    #[error("message {id} on topic {topic:?} has no reply_to; it does not expect a reply")]
    NoReplyTo {
        /// Id of the original message.
        id: String,
        /// Topic of the original message.
        topic: String,
    },

    /// A value could not be turned into JSON.
    #[error("could not encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded ("payload", "header value", ...).
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// JSON could not be turned into the requested type, or is not a Message.
    #[error("could not decode {what}: {source}")]
    Decode {
        /// What was being decoded ("payload of message `<id>`", "message", ...).
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A subscriber's buffer is full and the transport is set to fail rather than wait.
    #[error("the buffer of subscription {pattern:?} is full ({capacity} messages)")]
    BufferFull {
        /// The subscription's pattern.
        pattern: String,
        /// Its buffer capacity.
        capacity: usize,
    },

    /// A work queue group already holds as many jobs as it may; nothing was stored.
    #[error("work queue {topic:?} is full: group {group:?} holds {limit} jobs; consume some or raise max_size")]
    QueueFull {
        /// The work queue topic.
        topic: String,
        /// The group that is full.
        group: String,
        /// The configured limit (the work queue's `max_size`).
        limit: u64,
    },

    /// A job was acked or retried after its visibility timeout had passed
    /// and it had been handed out again; the later delivery now owns it.
    #[error("delivery of job {job_id} expired before it was settled; it was handed out again")]
    DeliveryExpired {
        /// The job's message id.
        job_id: String,
    },

    /// A network transport failed (connection refused, reset, broker error).
    #[error("{transport} transport error: {source}")]
    Transport {
        /// Which transport ("tcp", "redis", "nats").
        transport: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a lower-level error as a [`Error::Transport`].
    pub fn transport(transport: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Transport {
            transport,
            source: source.into(),
        }
    }

    /// True for errors worth retrying: timeouts, no responders and transport failures.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::NoResponders { .. } | Error::Transport { .. }
        )
    }
}
