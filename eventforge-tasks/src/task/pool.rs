//! `TaskPool`: the bound on a task's calls in flight (`max_instances`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counters of a [`TaskPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPoolStats {
    /// Calls running now.
    pub active: usize,
    /// Calls waiting for an instance.
    pub queued: usize,
    /// Instances free now.
    pub available: usize,
    /// The bound (`max_instances`).
    pub max: usize,
    /// Calls that held an instance and finished.
    pub total_processed: u64,
}

/// At most `max` calls of a task run at once; the others wait, up to an
/// optional timeout.
#[derive(Debug, Clone)]
pub struct TaskPool {
    inner: Arc<PoolValues>,
}

#[derive(Debug)]
struct PoolValues {
    // One permit per instance: holding one is running.
    instances: Arc<Semaphore>,
    max: usize,
    active: AtomicUsize,
    queued: AtomicUsize,
    processed: AtomicU64,
}

/// An instance held by a running call; dropping it frees the instance.
#[derive(Debug)]
pub(crate) struct PoolSlot {
    pool: Arc<PoolValues>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.processed.fetch_add(1, Ordering::Relaxed);
    }
}

// Undoes the `queued` count however the wait ends (acquired, timed out,
// or the call dropped).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TaskPool {
    /// A pool of `max` instances (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        TaskPool {
            inner: Arc::new(PoolValues {
                instances: Arc::new(Semaphore::new(max)),
                max,
                active: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                processed: AtomicU64::new(0),
            }),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> TaskPoolStats {
        let pool = &self.inner;
        TaskPoolStats {
            active: pool.active.load(Ordering::Relaxed),
            queued: pool.queued.load(Ordering::Relaxed),
            available: pool.instances.available_permits(),
            max: pool.max,
            total_processed: pool.processed.load(Ordering::Relaxed),
        }
    }

    /// A free instance now, if there is one.
    pub(crate) fn try_acquire(&self) -> Option<PoolSlot> {
        let permit = Arc::clone(&self.inner.instances).try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }

    /// Waits for a free instance, at most `timeout` when one is given;
    /// `None` when the timeout passed first.
    pub(crate) async fn acquire(&self, timeout: Option<Duration>) -> Option<PoolSlot> {
        let pool = &self.inner;
        pool.queued.fetch_add(1, Ordering::Relaxed);
        let _queued = Queued(&pool.queued);
        let waiting = Arc::clone(&pool.instances).acquire_owned();
        let acquired = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, waiting).await.ok()?,
            None => waiting.await,
        };
        // The semaphore is never closed.
        Some(self.slot(acquired.ok()?))
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> PoolSlot {
        self.inner.active.fetch_add(1, Ordering::Relaxed);
        PoolSlot {
            pool: Arc::clone(&self.inner),
            _permit: permit,
        }
    }
}
