//! `Executor`: the local request-reply corner of the 2x2.
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | request-reply  | **[`Executor`]**     | [`RpcServer`](eventforge_rpc::RpcServer) / [`RpcClient`](eventforge_rpc::RpcClient) |
//!
//! Work is submitted, gets a task id, and its [`TaskResult`] is taken later.
//! Three modes: [`Inline`](ExecutorMode::Inline) runs at submit time,
//! [`Thread`](ExecutorMode::Thread) on a pool of OS threads (blocking work
//! off the async runtime), [`Process`](ExecutorMode::Process) in child
//! processes of the same program, so a crash or a leak in a task never
//! takes the caller down.

mod builder;
mod child;
mod process;
mod registry;
mod result;
mod serve;
mod store;
mod thread;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

pub use builder::ExecutorBuilder;
pub use child::{run_child_if_requested, CHILD_ENV};
pub use registry::{FunctionRegistry, TaskFailure};
pub use result::{TaskResult, TaskStatus};

use eventforge_core::sync::lock;
use process::{ChildPool, ChildSpec, ProcessJob};
use store::{ResultStore, TaskCell};
use thread::ThreadPool;

/// Finished results kept for the taking when nothing else is set; past it
/// the oldest untaken ones are dropped.
pub const DEFAULT_MAX_RETAINED_RESULTS: usize = 10_000;

/// Tasks queued or running at once when nothing else is set; past it
/// `submit` fails with [`ExecutorError::QueueFull`].
pub const DEFAULT_MAX_QUEUED_TASKS: usize = 100_000;

/// Where tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExecutorMode {
    /// In the caller, at submit time (the Python SEQUENTIAL mode).
    Inline,
    /// On a pool of OS threads: for blocking work.
    #[default]
    Thread,
    /// In child processes of the same program, functions called by name.
    Process,
}

/// Why an executor operation failed (a task's own failure is a failed
/// [`TaskResult`], not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The executor was stopped; build a new one.
    #[error("the executor is stopped; build a new one to run more tasks")]
    Stopped,
    /// No result is held for this id: unknown, already taken, or dropped
    /// because too many results were left untaken.
    #[error("no result for task {0}: unknown, already taken, or dropped as untaken")]
    UnknownTask(String),
    /// The task did not finish in time; its result can still be taken later.
    #[error("task {task_id} did not finish within {timeout:?}")]
    Timeout {
        /// The task waited for.
        task_id: String,
        /// The time waited.
        timeout: Duration,
    },
    /// Worker threads or child processes could not be started.
    #[error("could not start executor workers: {0}")]
    Spawn(#[source] std::io::Error),
    /// Too many tasks are queued or running; take results or wait, then submit again.
    #[error("{limit} tasks are already queued or running; wait for some to finish")]
    QueueFull {
        /// The limit set with [`ExecutorBuilder::max_queued_tasks`].
        limit: usize,
    },
    /// Closures cannot cross into a child process.
    #[error("process mode runs registered functions only; use submit(name, input)")]
    ClosureInProcessMode,
}

/// Runs tasks and keeps their results until they are taken.
///
/// Cheap to clone; clones share the workers. Dropping the last clone stops
/// it without waiting.
///
/// ```
/// use std::time::Duration;
/// use eventforge_tasks::{Executor, ExecutorMode, FunctionRegistry, TaskStatus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut registry = FunctionRegistry::new();
/// registry.register_typed("square", |n: i64| Ok::<_, String>(n * n));
/// let executor = Executor::builder(ExecutorMode::Thread)
///     .max_workers(2)
///     .registry(registry)
///     .build();
///
/// let id = executor.submit("square", 7.into())?;
/// let result = executor.result(&id, Duration::from_secs(5)).await?;
/// assert_eq!(result.status, TaskStatus::Completed);
/// assert_eq!(result.value, 49);
///
/// let blocking = executor.submit_fn(|| Ok::<_, String>("done on a worker thread"))?;
/// assert_eq!(executor.result(&blocking, Duration::from_secs(5)).await?.value, "done on a worker thread");
/// executor.stop(true).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Executor {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) mode: ExecutorMode,
    pub(crate) workers: usize,
    pub(crate) thread_name_prefix: String,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) registry: Arc<FunctionRegistry>,
    pub(crate) program: Option<PathBuf>,
    pub(crate) program_args: Vec<String>,
    pub(crate) store: Mutex<ResultStore>,
    pub(crate) max_queued_tasks: usize,
    pub(crate) backend: Mutex<Backend>,
    // Set by `stop(false)`: queued tasks finish as cancelled instead of running.
    pub(crate) cancelled: Arc<AtomicBool>,
}

pub(crate) enum Backend {
    NotStarted,
    Inline,
    Threads(Arc<ThreadPool>),
    Processes(Arc<ChildPool>),
    Stopped,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Release);
        match std::mem::replace(&mut *lock(&self.backend), Backend::Stopped) {
            Backend::Threads(pool) => pool.stop(false),
            Backend::Processes(pool) => pool.stop(false),
            _ => {}
        }
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("mode", &self.inner.mode)
            .field("workers", &self.inner.workers)
            .field("results_held", &lock(&self.inner.store).len())
            .finish()
    }
}

impl Executor {
    /// Options for an executor in `mode`.
    pub fn builder(mode: ExecutorMode) -> ExecutorBuilder {
        ExecutorBuilder {
            mode,
            max_workers: None,
            thread_name_prefix: "eventforge-worker".to_owned(),
            max_tasks_per_child: None,
            max_retained_results: DEFAULT_MAX_RETAINED_RESULTS,
            max_queued_tasks: DEFAULT_MAX_QUEUED_TASKS,
            registry: FunctionRegistry::new(),
            program: None,
            program_args: Vec::new(),
        }
    }

    /// An executor in `mode` with default options and `registry`.
    pub fn new(mode: ExecutorMode, registry: FunctionRegistry) -> Self {
        Self::builder(mode).registry(registry).build()
    }

    /// The mode.
    pub fn mode(&self) -> ExecutorMode {
        self.inner.mode
    }

    /// Worker threads or processes.
    pub fn max_workers(&self) -> usize {
        self.inner.workers
    }

    /// Results currently held (finished and untaken, or still running).
    pub fn held_results(&self) -> usize {
        lock(&self.inner.store).len()
    }

    /// Finished results dropped because they were never taken.
    pub fn dropped_results(&self) -> u64 {
        lock(&self.inner.store).evicted()
    }

    /// Starts the workers (threads, or child processes). Idempotent; also
    /// done by the first submit.
    pub fn start(&self) -> Result<(), ExecutorError> {
        let mut backend = lock(&self.inner.backend);
        if !matches!(*backend, Backend::NotStarted) {
            return match *backend {
                Backend::Stopped => Err(ExecutorError::Stopped),
                _ => Ok(()),
            };
        }
        let inner = &self.inner;
        *backend = match inner.mode {
            ExecutorMode::Inline => Backend::Inline,
            ExecutorMode::Thread => Backend::Threads(Arc::new(
                ThreadPool::start_jobs(inner.workers, &inner.thread_name_prefix)
                    .map_err(ExecutorError::Spawn)?,
            )),
            ExecutorMode::Process => {
                // A child that did not serve (its main lacks the call) must
                // not start children of its own: that would recurse.
                if std::env::var_os(CHILD_ENV).is_some() {
                    return Err(ExecutorError::Spawn(std::io::Error::other(
                        "this process was started as an executor child but did not serve: \
                         call run_child_if_requested first thing in main",
                    )));
                }
                let program = match &inner.program {
                    Some(program) => program.clone(),
                    None => std::env::current_exe().map_err(ExecutorError::Spawn)?,
                };
                let spec = ChildSpec {
                    program,
                    args: inner.program_args.clone(),
                    max_tasks_per_child: inner.max_tasks_per_child,
                };
                Backend::Processes(Arc::new(
                    ChildPool::start_slots(inner.workers, spec, Arc::clone(&inner.cancelled))
                        .map_err(ExecutorError::Spawn)?,
                ))
            }
        };
        Ok(())
    }

    /// Submits the registered function `function` with `input`; returns the task id.
    ///
    /// An unknown function is not an error here: its task fails with
    /// `error_type` `"FunctionNotFound"`, in every mode alike.
    pub fn submit(&self, function: &str, input: Value) -> Result<String, ExecutorError> {
        self.start()?;
        let task_id = eventforge_core::message::new_id();
        let cell = self.new_cell(&task_id)?;
        if self.inner.mode == ExecutorMode::Process {
            let job = ProcessJob {
                task_id: task_id.clone(),
                function: function.to_owned(),
                input,
                cell,
            };
            return match self.backend()? {
                Work::Processes(pool) => pool
                    .submit(job)
                    .map(|()| task_id)
                    .map_err(|job| self.forget(&job.task_id)),
                _ => Err(self.forget(&task_id)),
            };
        }
        let registry = Arc::clone(&self.inner.registry);
        let name = function.to_owned();
        self.dispatch(task_id, cell, move || match registry.get(&name) {
            Some(function) => function(input),
            None => Err(TaskFailure {
                error_type: "FunctionNotFound".to_owned(),
                message: format!("function not registered: {name}"),
            }),
        })
    }

    /// Submits a closure (Inline and Thread modes); returns the task id.
    ///
    /// Fails with [`ExecutorError::ClosureInProcessMode`] in process mode.
    pub fn submit_fn<T, E, F>(&self, function: F) -> Result<String, ExecutorError>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Serialize,
        E: fmt::Display,
    {
        if self.inner.mode == ExecutorMode::Process {
            return Err(ExecutorError::ClosureInProcessMode);
        }
        self.start()?;
        let task_id = eventforge_core::message::new_id();
        let cell = self.new_cell(&task_id)?;
        self.dispatch(task_id, cell, move || {
            let value = function().map_err(|e| TaskFailure {
                error_type: "Error".to_owned(),
                message: e.to_string(),
            })?;
            serde_json::to_value(value).map_err(|e| TaskFailure {
                error_type: "EncodeError".to_owned(),
                message: format!("result is not JSON: {e}"),
            })
        })
    }

    fn dispatch(
        &self,
        task_id: String,
        cell: Arc<TaskCell>,
        work: impl FnOnce() -> Result<Value, TaskFailure> + Send + 'static,
    ) -> Result<String, ExecutorError> {
        match self.backend()? {
            Work::Inline => {
                cell.complete(execute(&task_id, "inline", work));
                Ok(task_id)
            }
            Work::Threads(pool) => {
                let cancelled = Arc::clone(&self.inner.cancelled);
                let id = task_id.clone();
                let job: thread::Job = Box::new(move |worker_id: &str| {
                    let result = if cancelled.load(Ordering::Acquire) {
                        TaskResult::cancelled(id.clone())
                    } else {
                        execute(&id, worker_id, work)
                    };
                    cell.complete(result);
                });
                pool.submit(job)
                    .map(|()| task_id.clone())
                    .map_err(|_| self.forget(&task_id))
            }
            Work::Processes(_) => Err(ExecutorError::ClosureInProcessMode),
        }
    }

    fn backend(&self) -> Result<Work, ExecutorError> {
        match &*lock(&self.inner.backend) {
            Backend::Inline => Ok(Work::Inline),
            Backend::Threads(pool) => Ok(Work::Threads(Arc::clone(pool))),
            Backend::Processes(pool) => Ok(Work::Processes(Arc::clone(pool))),
            Backend::NotStarted | Backend::Stopped => Err(ExecutorError::Stopped),
        }
    }

    fn new_cell(&self, task_id: &str) -> Result<Arc<TaskCell>, ExecutorError> {
        lock(&self.inner.store)
            .insert(task_id.to_owned())
            .ok_or(ExecutorError::QueueFull {
                limit: self.inner.max_queued_tasks,
            })
    }

    /// Removes a task that could not be queued; the executor is stopping.
    fn forget(&self, task_id: &str) -> ExecutorError {
        lock(&self.inner.store).abandon(task_id);
        ExecutorError::Stopped
    }

    /// Waits up to `timeout` for task `task_id` and takes its result: a
    /// result is handed out once, then forgotten.
    ///
    /// Fails with [`ExecutorError::Timeout`] when the task is still running
    /// (its result can be taken later), [`ExecutorError::UnknownTask`] when
    /// no result is held for the id.
    pub async fn result(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<TaskResult, ExecutorError> {
        let cell = self.cell(task_id)?;
        match cell.wait(timeout).await {
            Some(result) => Ok(self.take(task_id, result)),
            None => Err(ExecutorError::Timeout {
                task_id: task_id.to_owned(),
                timeout,
            }),
        }
    }

    /// [`result`](Self::result) for code outside an async runtime: blocks the thread.
    pub fn result_blocking(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<TaskResult, ExecutorError> {
        let cell = self.cell(task_id)?;
        match cell.wait_blocking(timeout) {
            Some(result) => Ok(self.take(task_id, result)),
            None => Err(ExecutorError::Timeout {
                task_id: task_id.to_owned(),
                timeout,
            }),
        }
    }

    fn cell(&self, task_id: &str) -> Result<Arc<TaskCell>, ExecutorError> {
        lock(&self.inner.store)
            .get(task_id)
            .ok_or_else(|| ExecutorError::UnknownTask(task_id.to_owned()))
    }

    fn take(&self, task_id: &str, result: TaskResult) -> TaskResult {
        lock(&self.inner.store).remove(task_id);
        result
    }

    /// Submits `function` and waits for its result, however long it runs.
    pub async fn run(&self, function: &str, input: Value) -> Result<TaskResult, ExecutorError> {
        let task_id = self.submit(function, input)?;
        self.result(&task_id, Duration::MAX).await
    }

    /// Runs `function` once per input, all submitted before any is awaited;
    /// results in input order.
    pub async fn map(
        &self,
        function: &str,
        inputs: impl IntoIterator<Item = Value>,
    ) -> Result<Vec<TaskResult>, ExecutorError> {
        let ids = inputs
            .into_iter()
            .map(|input| self.submit(function, input))
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            results.push(self.result(&id, Duration::MAX).await?);
        }
        Ok(results)
    }

    /// [`map`](Self::map) for code outside an async runtime.
    pub fn map_blocking(
        &self,
        function: &str,
        inputs: impl IntoIterator<Item = Value>,
    ) -> Result<Vec<TaskResult>, ExecutorError> {
        let ids = inputs
            .into_iter()
            .map(|input| self.submit(function, input))
            .collect::<Result<Vec<_>, _>>()?;
        ids.iter()
            .map(|id| self.result_blocking(id, Duration::MAX))
            .collect()
    }

    /// Stops the executor. With `wait`, queued tasks run and this returns
    /// once they are done (the waiting happens off the async runtime's
    /// threads); without, queued tasks finish as cancelled and running ones
    /// are left to end. Idempotent.
    pub async fn stop(&self, wait: bool) {
        let executor = self.clone();
        let stopping = tokio::task::spawn_blocking(move || executor.stop_blocking(wait));
        let _ = stopping.await;
    }

    /// [`stop`](Self::stop) for code outside an async runtime: blocks the thread.
    pub fn stop_blocking(&self, wait: bool) {
        if !wait {
            self.inner.cancelled.store(true, Ordering::Release);
        }
        let backend = std::mem::replace(&mut *lock(&self.inner.backend), Backend::Stopped);
        match backend {
            Backend::Threads(pool) => pool.stop(wait),
            Backend::Processes(pool) => pool.stop(wait),
            _ => {}
        }
    }

    /// True once stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(*lock(&self.inner.backend), Backend::Stopped)
    }
}

enum Work {
    Inline,
    Threads(Arc<ThreadPool>),
    Processes(Arc<ChildPool>),
}

/// Runs `work` as task `task_id` on `worker_id`, catching a panic.
fn execute(
    task_id: &str,
    worker_id: &str,
    work: impl FnOnce() -> Result<Value, TaskFailure>,
) -> TaskResult {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(work));
    let elapsed = started.elapsed();
    match outcome {
        Ok(Ok(value)) => TaskResult::completed(task_id, value, elapsed, worker_id),
        Ok(Err(failure)) => TaskResult::failed(
            task_id,
            failure.error_type,
            failure.message,
            elapsed,
            Some(worker_id.to_owned()),
        ),
        Err(panic) => TaskResult::failed(
            task_id,
            "Panic",
            format!(
                "task panicked: {}",
                eventforge_core::sync::panic_text(&*panic)
            ),
            elapsed,
            Some(worker_id.to_owned()),
        ),
    }
}
