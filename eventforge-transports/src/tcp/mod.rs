//! TCP: the remote column of the 2x2 without a broker, a point-to-point link
//! that Python eventforge peers speak too.
//!
//! - Frames are `[u32 big-endian length][JSON Message]`, read and written
//!   by the kernel's [`FrameCodec`](eventforge_core::frame::FrameCodec),
//!   with a size limit checked before allocating.
//! - [`TcpServerTransport`] and [`TcpClientTransport`]: both implement
//!   [`Transport`](eventforge_core::Transport), so a
//!   [`MessageQueue`](eventforge_core::MessageQueue) (and RPC on it) runs on
//!   either end unchanged. The server publishes to its clients, a client
//!   to the server; each side also delivers what it publishes to its own
//!   local subscribers. Replies go only to the client that asked; a Rust
//!   client receives only what it subscribed to (see [`control`]).
//! - [`RemoteQueue`]: a push-only switchboard sending to named peers.
//!
//! Every socket has `TCP_NODELAY`; writes are batched per connection; every
//! queue is bounded; bad input from one connection drops that connection
//! only.

pub mod control;
pub mod error;
pub mod remote_queue;

mod client;
mod server;
mod writer;

pub use client::{ClientStats, TcpClientBuilder, TcpClientTransport};
pub use error::{RemoteQueueError, TcpError};
pub use remote_queue::RemoteQueue;
pub use server::{ServerStats, SlowClientPolicy, TcpServerBuilder, TcpServerTransport};

use eventforge_core::sync::{lock, read as read_lock, write as write_lock};

/// Initial read buffer of a connection: one read takes in hundreds of small
/// frames under load.
const READ_BUFFER: usize = 64 * 1024;

impl From<TcpError> for eventforge_core::Error {
    fn from(error: TcpError) -> Self {
        eventforge_core::Error::transport("tcp", error)
    }
}
