//! Redis: pub-sub and request-reply on Redis pub/sub
//! ([`RedisTransport`]), and durable work queues on Redis Streams
//! ([`RedisStreamsBackend`]).
//!
//! Both sit in the remote column of the layers: the transport under a
//! `MessageQueue` (messages layer), the backend under a `WorkQueue` (jobs
//! layer). They talk to every process connected to the same Redis.

mod pubsub;
mod streams;

pub use pubsub::{redis_pattern, RedisStats, RedisTransport, RedisTransportBuilder};
pub use streams::{
    RedisStreamsBackend, RedisStreamsBackendBuilder, RedisStreamsStats, DEFAULT_PREFIX,
    DELAYED_CONSUMER,
};
