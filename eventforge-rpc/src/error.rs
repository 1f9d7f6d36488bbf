//! What can go wrong with a remote call, as kinds a caller can match on.

use std::time::Duration;

/// Why an RPC call failed.
///
/// [`is_transient`](Self::is_transient) tells apart failures where trying
/// again may help (the reply did not come, the link is down) from answers
/// the server gave (which another attempt would repeat).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply came before the call's deadline. The method may still have run.
    #[error(
        "call {method}() on service {service:?} timed out after {timeout:?}; is a server running?"
    )]
    Timeout {
        /// The service called.
        service: String,
        /// The method called.
        method: String,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// The transport knows that no server listens on the service's request topic.
    #[error("no server listens for service {service:?}: start one with RpcServer::serve")]
    NoResponders {
        /// The service called.
        service: String,
    },

    /// The server has no such method.
    #[error("{message}")]
    MethodNotFound {
        /// The method called.
        method: String,
        /// The server's text (`"Method not found: <name>"`).
        message: String,
    },

    /// The method ran and failed, or rejected its arguments (`TypeError`),
    /// or the server could not read the request (`ValidationError`).
    #[error("remote {error_type}: {message}")]
    Remote {
        /// Short class name: `"TypeError"`, `"ValueError"`, `"Panic"`, ...
        error_type: String,
        /// The server's error text.
        message: String,
    },

    /// The arguments could not be turned into JSON.
    #[error("could not encode the arguments of {method}(): {source}")]
    Encode {
        /// The method called.
        method: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// The reply, or its result, does not have the expected shape.
    #[error("could not decode the reply of {method}(): {source}")]
    Decode {
        /// The method called.
        method: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// The transport failed while sending the request or receiving the reply.
    #[error("transport failure calling {method}(): {source}")]
    Transport {
        /// The method called.
        method: String,
        /// The transport's error.
        #[source]
        source: eventforge_core::Error,
    },

    /// The client's transport is closed; create a new client.
    #[error("the rpc client's transport is closed")]
    Closed,
}

/// The kind of an [`RpcError`], for policies such as which errors to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RpcErrorKind {
    /// [`RpcError::Timeout`].
    Timeout,
    /// [`RpcError::NoResponders`].
    NoResponders,
    /// [`RpcError::MethodNotFound`].
    MethodNotFound,
    /// [`RpcError::Remote`].
    Remote,
    /// [`RpcError::Encode`].
    Encode,
    /// [`RpcError::Decode`].
    Decode,
    /// [`RpcError::Transport`].
    Transport,
    /// [`RpcError::Closed`].
    Closed,
}

impl RpcError {
    /// The kind of this error.
    pub fn kind(&self) -> RpcErrorKind {
        match self {
            RpcError::Timeout { .. } => RpcErrorKind::Timeout,
            RpcError::NoResponders { .. } => RpcErrorKind::NoResponders,
            RpcError::MethodNotFound { .. } => RpcErrorKind::MethodNotFound,
            RpcError::Remote { .. } => RpcErrorKind::Remote,
            RpcError::Encode { .. } => RpcErrorKind::Encode,
            RpcError::Decode { .. } => RpcErrorKind::Decode,
            RpcError::Transport { .. } => RpcErrorKind::Transport,
            RpcError::Closed => RpcErrorKind::Closed,
        }
    }

    /// True when trying again (perhaps elsewhere) may succeed: timeouts,
    /// no responders, transport failures, a closed transport.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            RpcErrorKind::Timeout
                | RpcErrorKind::NoResponders
                | RpcErrorKind::Transport
                | RpcErrorKind::Closed
        )
    }

    /// True when the failure says the member called is unreachable (not
    /// merely slow): no responders, a transport failure, a closed transport.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.kind(),
            RpcErrorKind::NoResponders | RpcErrorKind::Transport | RpcErrorKind::Closed
        )
    }

    /// The remote `error_type` when the server answered with an error.
    pub fn error_type(&self) -> Option<&str> {
        match self {
            RpcError::MethodNotFound { .. } => Some(crate::wire::METHOD_NOT_FOUND),
            RpcError::Remote { error_type, .. } => Some(error_type),
            _ => None,
        }
    }
}
