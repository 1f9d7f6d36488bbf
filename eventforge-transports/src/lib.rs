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
//! The TCP transport (feature `tcp`) is in `tcp`: `tcp::TcpServerTransport`,
//! `tcp::TcpClientTransport`, the frame codec `tcp::FrameCodec` and the
//! push-only switchboard `tcp::RemoteQueue`.
//!
//! The redis and nats transports are not part of this release yet; their
//! features exist so that code can already name them.

#![warn(missing_docs)]

#[cfg(feature = "tcp")]
pub mod tcp;
