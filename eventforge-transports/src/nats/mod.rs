//! NATS: pub-sub and request-reply on core NATS ([`NatsTransport`]), and
//! durable work queues on NATS JetStream ([`JetStreamBackend`]).
//!
//! Both sit in the remote column of the layers: the transport under a
//! `MessageQueue` (messages layer), the backend under a `WorkQueue` (jobs
//! layer).

mod jetstream;
mod pubsub;

pub use jetstream::{
    jetstream_name, JetStreamBackend, JetStreamBackendBuilder, JetStreamCounters, JetStreamStorage,
};
pub use pubsub::{nats_subject, NatsStats, NatsTransport, NatsTransportBuilder};
