//! Network transports for eventforge.
//!
//! Each transport implements [`eventforge_core::Transport`], so a
//! `MessageQueue` (and RPC on top of it) runs unchanged over it:
//!
//! - `tcp` (feature `tcp`): length-prefixed JSON over TCP, point to point,
//!   wire-compatible with the Python eventforge;
//! - `redis` (feature `redis`): Redis pub/sub, and in `redis_streams` a
//!   work queue backend on Redis Streams;
//! - `nats` (feature `nats`): NATS, with native request/reply.
//!
//! With feature `nats`, `jetstream::JetStreamBackend` also stores work-queue
//! jobs in NATS JetStream (an `eventforge_work::WorkBackend`).
//!
//! The TCP transport (feature `tcp`) is in `tcp`: `tcp::TcpServerTransport`,
//! `tcp::TcpClientTransport` and the
//! push-only switchboard `tcp::RemoteQueue`.
//!
//! Each broker transport (`redis::RedisTransport`, `nats::NatsTransport`)
//! returns from `subscribe` only once the broker has confirmed the
//! subscription, reconnects by itself, and reports the gap through
//! `tracing` and its stats.

#![warn(missing_docs)]

#[cfg(any(feature = "redis", feature = "nats"))]
mod broker_subscriptions;
#[cfg(feature = "nats")]
pub mod jetstream;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_streams;
#[cfg(feature = "tcp")]
pub mod tcp;
