//! Where finished results wait to be taken: bounded, and a result leaves
//! once taken (the Python peer kept every result forever).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::result::TaskResult;
use eventforge_core::sync::lock;

/// One task's slot: empty until its result is written.
pub(crate) struct TaskCell {
    result: Mutex<Option<TaskResult>>,
    // Wakes blocking waiters.
    ready: Condvar,
    // Wakes async waiters.
    notify: Notify,
    // The store's count of unfinished tasks, decreased when this one ends.
    unfinished: Option<Arc<AtomicUsize>>,
}

impl TaskCell {
    pub(crate) fn complete(&self, result: TaskResult) {
        {
            let mut slot = lock(&self.result);
            if slot.is_none() {
                if let Some(unfinished) = &self.unfinished {
                    unfinished.fetch_sub(1, Ordering::AcqRel);
                }
            }
            *slot = Some(result);
        }
        self.ready.notify_all();
        self.notify.notify_waiters();
    }

    fn is_done(&self) -> bool {
        lock(&self.result).is_some()
    }

    fn peek(&self) -> Option<TaskResult> {
        lock(&self.result).clone()
    }

    /// Waits up to `timeout` for the result (a copy; the store removes the cell).
    pub(crate) async fn wait(&self, timeout: Duration) -> Option<TaskResult> {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                // Registered before checking, so a completion in between is not missed.
                notified.as_mut().enable();
                if let Some(result) = self.peek() {
                    return result;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    pub(crate) fn wait_blocking(&self, timeout: Duration) -> Option<TaskResult> {
        // No deadline when the timeout is too far off to represent.
        let deadline = Instant::now().checked_add(timeout);
        let mut result = lock(&self.result);
        loop {
            if let Some(done) = result.as_ref() {
                return Some(done.clone());
            }
            result = match deadline {
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.ready
                        .wait_timeout(result, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .ready
                    .wait(result)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

/// The cells of tasks not yet taken, at most `capacity` finished ones and
/// at most `max_unfinished` queued or running ones.
pub(crate) struct ResultStore {
    cells: HashMap<String, Arc<TaskCell>>,
    unfinished: Arc<AtomicUsize>,
    max_unfinished: usize,
    // Submission order, to evict the oldest finished results first.
    order: VecDeque<String>,
    capacity: usize,
    evicted: u64,
}

impl ResultStore {
    pub(crate) fn new(capacity: usize, max_unfinished: usize) -> Self {
        ResultStore {
            cells: HashMap::new(),
            unfinished: Arc::default(),
            max_unfinished: max_unfinished.max(1),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// A cell for a new task; `None` when `max_unfinished` tasks are
    /// already queued or running.
    pub(crate) fn insert(&mut self, task_id: String) -> Option<Arc<TaskCell>> {
        if self.unfinished.load(Ordering::Acquire) >= self.max_unfinished {
            return None;
        }
        self.unfinished.fetch_add(1, Ordering::AcqRel);
        let cell = Arc::new(TaskCell {
            result: Mutex::default(),
            ready: Condvar::new(),
            notify: Notify::new(),
            unfinished: Some(Arc::clone(&self.unfinished)),
        });
        self.cells.insert(task_id.clone(), Arc::clone(&cell));
        self.order.push_back(task_id);
        if self.cells.len() > self.capacity {
            self.evict();
        }
        Some(cell)
    }

    /// Removes a task that will never run (it could not be queued).
    pub(crate) fn abandon(&mut self, task_id: &str) {
        if let Some(cell) = self.cells.remove(task_id) {
            if !cell.is_done() {
                self.unfinished.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub(crate) fn get(&self, task_id: &str) -> Option<Arc<TaskCell>> {
        self.cells.get(task_id).cloned()
    }

    pub(crate) fn remove(&mut self, task_id: &str) {
        self.cells.remove(task_id);
        // Ids of taken results leave `order` lazily; keep it from growing.
        if self.order.len() > 2 * self.capacity.max(self.cells.len()) {
            let cells = &self.cells;
            self.order.retain(|id| cells.contains_key(id));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops the oldest finished results nobody took; tasks still running
    /// are kept (they are bounded by the work submitted).
    fn evict(&mut self) {
        let mut looked = 0;
        while self.cells.len() > self.capacity && looked < self.order.len() {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            match self.cells.get(&id) {
                None => {}
                Some(cell) if cell.is_done() => {
                    self.cells.remove(&id);
                    self.evicted += 1;
                    tracing::debug!(task_id = %id, "untaken task result dropped to bound memory");
                }
                Some(_) => {
                    self.order.push_back(id);
                    looked += 1;
                }
            }
        }
    }
}
