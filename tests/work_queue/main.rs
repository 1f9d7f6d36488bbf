//! The work-queue suite, run against every work-queue backend.
//!
//! Each `work_queue_suite!` line below makes one test per behaviour of
//! `suite.rs` for one backend. To add a backend, add a line with a closure
//! that builds its [`suite::Backends`]. Broker suites read `REDIS_URL` and
//! `NATS_URL` (loopback defaults).

#[macro_use]
mod suite;

#[allow(unused_imports)]
use std::sync::Arc;

#[allow(unused_imports)]
use suite::Backends;

// One store shared by every "connection": memory lives in the process.
work_queue_suite!(memory, || async {
    Backends::shared(Arc::new(eventforge::MemoryWorkBackend::new()))
});
