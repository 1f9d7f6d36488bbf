//! `TaskContext`: what observers know about one call.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use crate::state::SharedState;
use eventforge_core::message::{new_id, Message};
use eventforge_rpc::{HandlerError, Outcome};

/// What every call's context knows of its task, made once per task.
#[derive(Debug)]
pub(crate) struct TaskIdentity {
    pub(crate) name: Arc<str>,
    pub(crate) topic: Arc<str>,
    pub(crate) state: SharedState,
}

/// One call of a task as its observers see it: ids, arguments, times,
/// outcome, measurements, per-call metadata and the task's [`SharedState`].
pub struct TaskContext {
    // Made on first use: most observers never read it, and a UUID costs.
    task_id: OnceLock<String>,
    // The task: name, topic and state without copying them per call.
    task: Arc<TaskIdentity>,
    // The arguments as given: an array (positional), an object (named) or
    // the single value of a payload.
    args: Value,
    // The wall-clock start is derived from this on demand: one clock read
    // per call instead of two.
    started: Instant,
    // Set when the call is over, before `on_success`/`on_failure`.
    finished: Option<Instant>,
    outcome: Option<Outcome>,
    cpu_time: Option<Duration>,
    allocated_bytes: Option<u64>,
    // Filled by observers and by the trigger (message id and headers);
    // locked because observers only get `&TaskContext`.
    metadata: Mutex<Map<String, Value>>,
    // The message that triggered the call, when it came from a queue or RPC.
    message: Option<Arc<Message>>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.task_id())
            .field("name", &self.name())
            .field("topic", &self.topic())
            .field("args", &self.args)
            .field("execution_time", &self.execution_time())
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    pub(crate) fn new(task: Arc<TaskIdentity>, args: Value, message: Option<Arc<Message>>) -> Self {
        let mut metadata = Map::new();
        if let Some(message) = &message {
            metadata.insert("message_id".to_owned(), message.id.clone().into());
            for (key, value) in &message.headers {
                metadata.insert(key.clone(), value.clone());
            }
        }
        TaskContext {
            task_id: OnceLock::new(),
            task,
            args,
            started: Instant::now(),
            finished: None,
            outcome: None,
            cpu_time: None,
            allocated_bytes: None,
            metadata: Mutex::new(metadata),
            message,
        }
    }

    pub(crate) fn finish(
        &mut self,
        outcome: Outcome,
        cpu_time: Option<Duration>,
        allocated_bytes: Option<u64>,
    ) {
        self.finished = Some(Instant::now());
        self.outcome = Some(outcome);
        self.cpu_time = cpu_time;
        self.allocated_bytes = allocated_bytes;
    }

    pub(crate) fn take_outcome(&mut self) -> Outcome {
        self.outcome
            .take()
            .unwrap_or_else(|| Err(HandlerError::new("Error", "the call did not finish")))
    }

    /// This call's id (UUID v4), the `task_id` of published results.
    pub fn task_id(&self) -> &str {
        self.task_id.get_or_init(new_id)
    }

    /// The task's name (its function's name unless set otherwise).
    pub fn name(&self) -> &str {
        &self.task.name
    }

    /// The task's topic.
    pub fn topic(&self) -> &str {
        &self.task.topic
    }

    /// The arguments as JSON: an array of positional arguments, an object
    /// of named ones, or a payload's single value.
    pub fn args(&self) -> &Value {
        &self.args
    }

    /// When the call started, by the wall clock.
    pub fn started_at(&self) -> SystemTime {
        let now = SystemTime::now();
        now.checked_sub(self.started.elapsed()).unwrap_or(now)
    }

    /// When the call ended, by the wall clock; `None` while it runs.
    pub fn finished_at(&self) -> Option<SystemTime> {
        self.execution_time()
            .map(|elapsed| self.started_at() + elapsed)
    }

    /// How long the call took (waiting for an instance included); `None`
    /// while it runs.
    pub fn execution_time(&self) -> Option<Duration> {
        self.finished.map(|end| end - self.started)
    }

    /// The result, when the call succeeded.
    pub fn result(&self) -> Option<&Value> {
        self.outcome.as_ref()?.as_ref().ok()
    }

    /// The error (with its `error_type`), when the call failed.
    pub fn error(&self) -> Option<&HandlerError> {
        self.outcome.as_ref()?.as_ref().err()
    }

    /// Whether the call is over and succeeded.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Some(Ok(_)))
    }

    /// CPU time spent in the call's polls, when an observer asked for it
    /// and the platform has a thread CPU clock.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu_time
    }

    /// Bytes allocated in the call's polls, when an observer asked for it
    /// and [`CountingAllocator`](crate::observers::CountingAllocator) is
    /// the global allocator.
    pub fn allocated_bytes(&self) -> Option<u64> {
        self.allocated_bytes
    }

    /// One value of the call's metadata.
    pub fn metadata(&self, key: &str) -> Option<Value> {
        self.lock_metadata().get(key).cloned()
    }

    /// All the call's metadata: `message_id` and the message headers when a
    /// message triggered it, plus whatever observers set.
    pub fn metadata_all(&self) -> Map<String, Value> {
        self.lock_metadata().clone()
    }

    /// Sets one value of the call's metadata, for observers that run later.
    pub fn set_metadata(&self, key: impl Into<String>, value: Value) {
        self.lock_metadata().insert(key.into(), value);
    }

    /// The task's shared state.
    pub fn state(&self) -> &SharedState {
        &self.task.state
    }

    /// The message that triggered the call (queue or RPC), if any.
    pub fn message(&self) -> Option<&Arc<Message>> {
        self.message.as_ref()
    }

    fn lock_metadata(&self) -> std::sync::MutexGuard<'_, Map<String, Value>> {
        self.metadata.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
