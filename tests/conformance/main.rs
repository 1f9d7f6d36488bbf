//! The transport conformance suite, run against every transport.
//!
//! Each `conformance_suite!` line below makes one test per behaviour of
//! `suite.rs` for one transport. To add a transport, add one line with a
//! closure that builds a fresh pair of connected endpoints ([`suite::Peers`]).
//! Broker suites read `REDIS_URL` and `NATS_URL` (loopback defaults).

#[macro_use]
mod suite;
#[path = "../support/mod.rs"]
mod support;

#[allow(unused_imports)]
use std::sync::Arc;

#[allow(unused_imports)]
use suite::Peers;

conformance_suite!(memory, || async {
    Peers::shared(Arc::new(eventforge::MemoryTransport::new()))
});

#[cfg(feature = "redis")]
conformance_suite!(redis, || async {
    Peers::pair(support::redis().await, support::redis().await)
});

#[cfg(feature = "nats")]
conformance_suite!(nats, || async {
    Peers::pair(support::nats().await, support::nats().await)
});

// A TCP link is point to point: what the client publishes reaches the
// server's subscribers and the other way round, so both directions run.
#[cfg(feature = "tcp")]
conformance_suite!(tcp_client_to_server, || async {
    let (server, client) = support::tcp_link().await;
    Peers::pair(client, server)
});

#[cfg(feature = "tcp")]
conformance_suite!(tcp_server_to_client, || async {
    let (server, client) = support::tcp_link().await;
    Peers::pair(server, client)
});
