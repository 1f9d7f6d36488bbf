//! `TaskBuilder`: the options of a task (observers, callbacks, executor,
//! instance limit, shared state, result publishing), set once before it runs.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Task, TaskFunction, TaskInner, TaskPool};
use crate::context::{TaskContext, TaskIdentity};
use crate::executor::Executor;
use crate::observers::{CallbackObserver, Measures, Observer};
use crate::state::SharedState;

/// Options of a [`Task`]; see [`Task::builder`].
pub struct TaskBuilder {
    pub(crate) name: String,
    pub(crate) topic: Option<String>,
    pub(crate) params: Option<Vec<String>>,
    pub(crate) function: TaskFunction,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) callbacks: Option<CallbackObserver>,
    pub(crate) executor: Option<Executor>,
    pub(crate) publish_result: bool,
    pub(crate) max_instances: Option<usize>,
    pub(crate) instance_timeout: Option<Duration>,
    pub(crate) state: SharedState,
}

impl fmt::Debug for TaskBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TaskBuilder {
    /// The topic the task is triggered from (default: its name).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The names of the function's parameters, in order: an object payload
    /// (or named arguments) then binds by name. Without them, named
    /// arguments go to a function taking one [`Kwargs<T>`](eventforge_rpc::Kwargs).
    pub fn params<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.params = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an observer; observers run in the order they are added.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Adds an observer already shared elsewhere.
    pub fn shared_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    fn callbacks(&mut self) -> CallbackObserver {
        self.callbacks.take().unwrap_or_default()
    }

    /// Runs `callback` after each successful call.
    pub fn on_success(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.callbacks = Some(self.callbacks().on_success(callback));
        self
    }

    /// Runs `callback` after each failed call.
    pub fn on_failure(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.callbacks = Some(self.callbacks().on_failure(callback));
        self
    }

    /// Runs `callback` after each call, whatever its outcome.
    pub fn on_complete(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.callbacks = Some(self.callbacks().on_complete(callback));
        self
    }

    /// Runs the function on `executor` (Inline or Thread mode) instead of
    /// the calling task. The function is then driven to completion on the
    /// executor's thread: it should be synchronous work (an async function
    /// that waits on tokio timers or I/O does not belong there).
    pub fn executor(mut self, executor: Executor) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Publishes each call's outcome on `<topic>.success` or
    /// `<topic>.failure` of the queue the task is bound to.
    pub fn publish_result(mut self, publish: bool) -> Self {
        self.publish_result = publish;
        self
    }

    /// At most `instances` calls run at once (a [`TaskPool`]); the others wait.
    pub fn max_instances(mut self, instances: usize) -> Self {
        self.max_instances = Some(instances);
        self
    }

    /// How long a call waits for a free instance before failing with
    /// `error_type` [`INSTANCE_TIMEOUT`](super::INSTANCE_TIMEOUT). Needs `max_instances`.
    pub fn instance_timeout(mut self, timeout: Duration) -> Self {
        self.instance_timeout = Some(timeout);
        self
    }

    /// Uses `state` as the task's shared state (to share it with other code).
    pub fn state(mut self, state: SharedState) -> Self {
        self.state = state;
        self
    }

    /// The task.
    pub fn build(mut self) -> Task {
        if let Some(callbacks) = self.callbacks.take() {
            self.observers.push(Arc::new(callbacks));
        }
        let measures = self
            .observers
            .iter()
            .fold(Measures::NONE, |all, o| all.union(o.measures()));
        let topic = self.topic.unwrap_or_else(|| self.name.clone());
        Task {
            inner: Arc::new(TaskInner {
                success_topic: format!("{topic}.success"),
                failure_topic: format!("{topic}.failure"),
                identity: Arc::new(TaskIdentity {
                    name: self.name.into(),
                    topic: topic.into(),
                    state: self.state,
                }),
                params: self.params,
                function: self.function,
                observers: self.observers,
                measures,
                executor: self.executor,
                publish_result: self.publish_result,
                pool: self.max_instances.map(TaskPool::new),
                instance_timeout: self.instance_timeout,
                queue: OnceLock::new(),
                calls: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                observer_panics: AtomicU64::new(0),
            }),
        }
    }
}
