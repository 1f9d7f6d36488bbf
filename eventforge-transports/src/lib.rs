//! Network transports for eventforge.
//!
//! Each transport implements [`eventforge_core::Transport`], so a
//! `MessageQueue` (and RPC on top of it) runs unchanged over it:
//!
//! - `tcp` (feature `tcp`): length-prefixed JSON over TCP, point to point,
//!   wire-compatible with the Python eventforge;
//! - `redis` (feature `redis`): Redis pub/sub;
//! - `nats` (feature `nats`): NATS, with native request/reply.
//!
//! The transports themselves are not part of this release yet; the features
//! exist so that code can already name them.

#![warn(missing_docs)]
