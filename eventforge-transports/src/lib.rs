//! Network transports for eventforge, and the durable work-queue backends
//! of the brokers: the remote column of every layer.
//!
//! Each transport implements [`eventforge_core::Transport`], so a
//! `MessageQueue` (and RPC on top of it) runs unchanged over it; each
//! backend implements `eventforge_work::WorkBackend`, so a `WorkQueue` does:
//!
//! | module | feature | messages | jobs |
//! |---|---|---|---|
//! | `tcp` | `tcp` | `TcpServerTransport`, `TcpClientTransport`: length-prefixed JSON, point to point, wire-compatible with the Python eventforge; `RemoteQueue` pushes to named peers | |
//! | `redis` | `redis` | `RedisTransport`: Redis pub/sub | `RedisStreamsBackend`: Redis Streams with consumer groups |
//! | `nats` | `nats` | `NatsTransport`: NATS, with native request/reply | `JetStreamBackend`: NATS JetStream |
//!
//! One folder per broker, each with one connection module (connect,
//! backoff, reconnect) shared by its transport and its backend. Each broker
//! transport returns from `subscribe` only once the broker has confirmed
//! the subscription, reconnects by itself ([`Backoff`]), and reports the
//! gap through `tracing` and its stats.

#![warn(missing_docs)]

mod backoff;
#[cfg(any(feature = "redis", feature = "nats"))]
mod broker_subscriptions;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "tcp")]
pub mod tcp;

pub use backoff::Backoff;
