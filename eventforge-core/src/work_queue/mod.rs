//! Work queues: jobs that wait until a consumer takes them, with acks,
//! retries, dead letters and lifecycle events.

pub mod backend;

pub use backend::{BackendStats, Delivery, Receipt, WorkBackend, WorkOptions, DEFAULT_GROUP};
