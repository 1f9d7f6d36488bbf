//! The transport conformance suite, run against every transport.
//!
//! Each `conformance_suite!` line below makes one test per behaviour of
//! `suite.rs` for one transport. To add a transport, add one line with a
//! closure that builds a fresh pair of connected endpoints ([`suite::Peers`]).
//! Broker suites read `REDIS_URL` and `NATS_URL` (loopback defaults).

#[macro_use]
mod suite;

#[allow(unused_imports)]
use std::sync::Arc;

#[allow(unused_imports)]
use suite::Peers;

conformance_suite!(memory, || async {
    Peers::shared(Arc::new(eventforge::MemoryTransport::new()))
});

#[cfg(feature = "redis")]
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[cfg(feature = "redis")]
async fn redis_transport() -> Arc<dyn eventforge::Transport> {
    let url = redis_url();
    match eventforge::transports::redis::RedisTransport::connect(&url).await {
        Ok(transport) => Arc::new(transport),
        Err(error) => panic!("Redis at {url}: {error} (start it with scripts/brokers.sh)"),
    }
}

#[cfg(feature = "redis")]
conformance_suite!(redis, || async {
    Peers::pair(redis_transport().await, redis_transport().await)
});

#[cfg(feature = "nats")]
fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[cfg(feature = "nats")]
async fn nats_transport() -> Arc<dyn eventforge::Transport> {
    let url = nats_url();
    match eventforge::transports::nats::NatsTransport::connect(&url).await {
        Ok(transport) => Arc::new(transport),
        Err(error) => panic!("NATS at {url}: {error} (start it with scripts/brokers.sh)"),
    }
}

#[cfg(feature = "nats")]
conformance_suite!(nats, || async {
    Peers::pair(nats_transport().await, nats_transport().await)
});

#[cfg(feature = "tcp")]
async fn tcp_link() -> (
    Arc<dyn eventforge::Transport>,
    Arc<dyn eventforge::Transport>,
) {
    use eventforge::transports::tcp::{TcpClientTransport, TcpServerTransport};
    let server = TcpServerTransport::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let client = TcpClientTransport::connect(server.local_addr())
        .await
        .expect("connect to the server just bound");
    (Arc::new(client), Arc::new(server))
}

// A TCP link is point to point: what the client publishes reaches the
// server's subscribers and the other way round, so both directions run.
#[cfg(feature = "tcp")]
conformance_suite!(tcp_client_to_server, || async {
    let (client, server) = tcp_link().await;
    Peers::pair(client, server)
});

#[cfg(feature = "tcp")]
conformance_suite!(tcp_server_to_client, || async {
    let (client, server) = tcp_link().await;
    Peers::pair(server, client)
});
