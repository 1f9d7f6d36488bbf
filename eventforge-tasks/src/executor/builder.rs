//! `ExecutorBuilder`: how many workers, which mode, which functions, and the
//! bounds on queued tasks and retained results, set before the executor starts.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::store::ResultStore;
use super::{Backend, Executor, ExecutorMode, FunctionRegistry, Inner};

/// Options of an [`Executor`].
#[derive(Debug, Clone)]
pub struct ExecutorBuilder {
    pub(crate) mode: ExecutorMode,
    pub(crate) max_workers: Option<usize>,
    pub(crate) thread_name_prefix: String,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) max_retained_results: usize,
    pub(crate) max_queued_tasks: usize,
    pub(crate) registry: FunctionRegistry,
    pub(crate) program: Option<PathBuf>,
    pub(crate) program_args: Vec<String>,
}

impl ExecutorBuilder {
    /// Tasks queued or running at once (default 100,000); `submit` fails
    /// with [`ExecutorError::QueueFull`](super::ExecutorError::QueueFull) past it, so a producer faster than
    /// the workers cannot grow the queue without bound.
    pub fn max_queued_tasks(mut self, tasks: usize) -> Self {
        self.max_queued_tasks = tasks.max(1);
        self
    }

    /// Worker threads or child processes (default: the number of CPUs).
    pub fn max_workers(mut self, workers: usize) -> Self {
        self.max_workers = Some(workers.max(1));
        self
    }

    /// Names of worker threads: `<prefix>-1`, `<prefix>-2`, ... (default `eventforge-worker`).
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name_prefix = prefix.into();
        self
    }

    /// Process mode: replace a child after it ran this many tasks.
    pub fn max_tasks_per_child(mut self, tasks: usize) -> Self {
        self.max_tasks_per_child = Some(tasks.max(1));
        self
    }

    /// Finished results kept untaken before the oldest are dropped (default 10,000).
    pub fn max_retained_results(mut self, results: usize) -> Self {
        self.max_retained_results = results.max(1);
        self
    }

    /// The functions `submit` can run by name.
    pub fn registry(mut self, registry: FunctionRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Process mode: the program started as a child (default: this
    /// program, `std::env::current_exe()`) and its arguments. It must call
    /// [`run_child_if_requested`](super::run_child_if_requested) with the same registry.
    pub fn child_program(mut self, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        self.program = Some(program.into());
        self.program_args = args;
        self
    }

    /// Builds the executor; workers start on [`Executor::start`] or the first submit.
    pub fn build(self) -> Executor {
        let workers = self.max_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1)
        });
        Executor {
            inner: Arc::new(Inner {
                mode: self.mode,
                workers,
                thread_name_prefix: self.thread_name_prefix,
                max_tasks_per_child: self.max_tasks_per_child,
                registry: Arc::new(self.registry),
                program: self.program,
                program_args: self.program_args,
                store: Mutex::new(ResultStore::new(
                    self.max_retained_results,
                    self.max_queued_tasks,
                )),
                max_queued_tasks: self.max_queued_tasks,
                backend: Mutex::new(Backend::NotStarted),
                cancelled: Arc::new(AtomicBool::new(false)),
            }),
        }
    }
}
