//! Transports for the cross-crate suites: a loopback TCP link and the
//! shared brokers at `REDIS_URL` / `NATS_URL` (loopback defaults).

// Each suite uses the part it needs.
#![allow(dead_code)]

use std::sync::Arc;

use eventforge::Transport;

/// A TCP server on a free loopback port and a client connected to it:
/// `(server, client)`.
#[cfg(feature = "tcp")]
pub async fn tcp_link() -> (Arc<dyn Transport>, Arc<dyn Transport>) {
    use eventforge::transports::tcp::{TcpClientTransport, TcpServerTransport};
    let server = TcpServerTransport::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let client = TcpClientTransport::connect(server.local_addr())
        .await
        .expect("connect to the server just bound");
    (Arc::new(server), Arc::new(client))
}

/// The Redis to test against: `REDIS_URL`, or the loopback default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The NATS to test against: `NATS_URL`, or the loopback default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A new connection to the Redis of `REDIS_URL`.
#[cfg(feature = "redis")]
pub async fn redis() -> Arc<dyn Transport> {
    let url = redis_url();
    match eventforge::transports::redis::RedisTransport::connect(&url).await {
        Ok(transport) => Arc::new(transport),
        Err(error) => panic!("Redis at {url}: {error} (start it with scripts/brokers.sh)"),
    }
}

/// A new connection to the NATS of `NATS_URL`.
#[cfg(feature = "nats")]
pub async fn nats() -> Arc<dyn Transport> {
    let url = nats_url();
    match eventforge::transports::nats::NatsTransport::connect(&url).await {
        Ok(transport) => Arc::new(transport),
        Err(error) => panic!("NATS at {url}: {error} (start it with scripts/brokers.sh)"),
    }
}
