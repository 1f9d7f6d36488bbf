//! Transport URLs: which transport a worker serves on or a command talks to.
//!
//! A worker *binds* a `tcp://` URL (it is the server) and *connects* to a
//! broker URL; the `call`, `pub` and `sub` commands connect to any of them.

use std::fmt;
use std::sync::Arc;

use eventforge_core::{MessageQueue, Transport};
use eventforge_transports::nats::NatsTransport;
use eventforge_transports::redis::RedisTransport;
use eventforge_transports::tcp::{TcpClientTransport, TcpServerTransport};

use crate::error::WorkerError;

/// A transport named by a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp://HOST:PORT`: a worker listens there, commands connect there.
    Tcp(String),
    /// `redis://...`: the full URL, given to the Redis client as is.
    Redis(String),
    /// `nats://...`: the full URL, given to the NATS client as is.
    Nats(String),
}

impl Endpoint {
    /// Reads a URL; fails on a scheme this tool does not speak.
    pub fn parse(url: &str) -> Result<Self, WorkerError> {
        let unsupported = || WorkerError::Url {
            url: url.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(unsupported)?;
        if rest.is_empty() {
            return Err(unsupported());
        }
        match scheme {
            "tcp" => Ok(Endpoint::Tcp(rest.trim_end_matches('/').to_owned())),
            "redis" | "rediss" => Ok(Endpoint::Redis(url.to_owned())),
            "nats" => Ok(Endpoint::Nats(url.to_owned())),
            _ => Err(unsupported()),
        }
    }

    /// Opens the transport a worker serves on: binds TCP, connects to a
    /// broker. Returns the queue and the URL where callers reach it (with
    /// the real port when bound to port 0).
    pub async fn serve(&self) -> Result<(MessageQueue, String), WorkerError> {
        match self {
            Endpoint::Tcp(addr) => {
                let server = TcpServerTransport::bind(addr.as_str())
                    .await
                    .map_err(|e| self.failure(e))?;
                let bound = format!("tcp://{}", server.local_addr());
                Ok((MessageQueue::new(server), bound))
            }
            _ => Ok((self.connect().await?, self.to_string())),
        }
    }

    /// Connects as a client (the `call`, `pub` and `sub` commands, the
    /// distributed-workers demander).
    pub async fn connect(&self) -> Result<MessageQueue, WorkerError> {
        let transport: Arc<dyn Transport> = match self {
            Endpoint::Tcp(addr) => Arc::new(
                TcpClientTransport::connect(addr.as_str())
                    .await
                    .map_err(|e| self.failure(e))?,
            ),
            Endpoint::Redis(url) => Arc::new(
                RedisTransport::connect(url.as_str())
                    .await
                    .map_err(|e| self.broker_failure(e))?,
            ),
            Endpoint::Nats(url) => Arc::new(
                NatsTransport::connect(url.as_str())
                    .await
                    .map_err(|e| self.broker_failure(e))?,
            ),
        };
        Ok(MessageQueue::from_shared(transport))
    }

    fn broker_failure(&self, error: impl fmt::Display) -> WorkerError {
        self.failure(format!("{error}; is the broker running at this address?"))
    }

    fn failure(&self, error: impl fmt::Display) -> WorkerError {
        WorkerError::Transport {
            url: self.to_string(),
            reason: error.to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::Redis(url) | Endpoint::Nats(url) => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_supported_scheme() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:9090").ok(),
            Some(Endpoint::Tcp("127.0.0.1:9090".into()))
        );
        assert_eq!(
            Endpoint::parse("redis://127.0.0.1:6379").ok(),
            Some(Endpoint::Redis("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            Endpoint::parse("nats://127.0.0.1:4222").ok(),
            Some(Endpoint::Nats("nats://127.0.0.1:4222".into()))
        );
    }

    #[test]
    fn rejects_unknown_scheme_and_bare_address() {
        assert!(Endpoint::parse("http://x:1").is_err());
        assert!(Endpoint::parse("127.0.0.1:9090").is_err());
        assert!(Endpoint::parse("tcp://").is_err());
    }
}
