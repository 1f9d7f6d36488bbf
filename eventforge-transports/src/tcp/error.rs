//! Errors of the TCP transport and of [`RemoteQueue`](super::RemoteQueue).
//!
//! The [`Transport`](eventforge_core::Transport) methods return
//! [`eventforge_core::Error`]; these are the sources they wrap
//! (`Error::Transport { transport: "tcp", source }`), and what the TCP-only
//! APIs (bind, connect, [`RemoteQueue`](super::RemoteQueue)) return directly.

use std::net::SocketAddr;
use std::time::Duration;

use eventforge_core::frame::FrameError;

/// What can go wrong on a TCP link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The listening socket could not be opened.
    #[error("could not listen on {addr}: {source}; is the port already taken?")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },

    /// The server could not be reached.
    #[error("could not connect to {addr}: {source}; is the server running?")]
    Connect {
        /// The server address.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },

    /// The address did not resolve to anything.
    #[error("address {addr:?} resolves to nothing")]
    NoAddress {
        /// The address as given.
        addr: String,
    },

    /// The link to the server is down (it is being re-established); the
    /// message was not sent.
    #[error(
        "not connected to {addr} (waited {waited:?}); the client is reconnecting, retry later"
    )]
    NotConnected {
        /// The server address.
        addr: SocketAddr,
        /// How long the send waited for the link.
        waited: Duration,
    },

    /// A frame could not be encoded (too large, not JSON-able).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// What can go wrong on a [`RemoteQueue`](super::RemoteQueue).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteQueueError {
    /// No peer of that name is connected.
    #[error("unknown peer {node_id:?}: connect it first")]
    UnknownPeer {
        /// The name asked for.
        node_id: String,
    },

    /// A peer of that name is already connected.
    #[error("peer {node_id:?} is already connected; disconnect it first to change its address")]
    AlreadyConnected {
        /// The name asked for.
        node_id: String,
    },

    /// Subscribing needs a local queue to receive on.
    #[error(
        "node {node_id:?} has no local queue to receive on; create it with RemoteQueue::with_local"
    )]
    NoLocalQueue {
        /// This node's name.
        node_id: String,
    },

    /// The remote queue was closed.
    #[error("remote queue {node_id:?} is closed")]
    Closed {
        /// This node's name.
        node_id: String,
    },

    /// Connecting to a peer failed.
    #[error("could not connect to peer {node_id:?}: {source}")]
    Connect {
        /// The peer's name.
        node_id: String,
        /// Why.
        #[source]
        source: TcpError,
    },

    /// Sending or subscribing failed.
    #[error(transparent)]
    Core(#[from] eventforge_core::Error),
}
