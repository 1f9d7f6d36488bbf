//! Tasks for eventforge: work run around a function, in this process or
//! in child processes, watched by observers.
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | pub-sub        | a [`Task`] bound to its topic on a [`MessageQueue`](eventforge_core::MessageQueue) | the same queue on a network transport |
//! | request-reply  | [`Task::call`], optionally on an [`Executor`] | a task served on an [`RpcServer`](eventforge_rpc::RpcServer) |
//!
//! This crate sits on the messaging kernel (`eventforge-core`) and on RPC
//! (`eventforge-rpc`): a task binds its arguments as an RPC handler does,
//! and can be served over RPC. The [`Executor`] runs functions inline, on a
//! thread pool or in child processes; [`observers`] (meters, reporters,
//! callbacks) watch every call of a task; a [`Dispatcher`] spreads calls
//! over several tasks.
//!
//! ```
//! use eventforge_rpc::HandlerError;
//! use eventforge_tasks::observers::TimingMeter;
//! use eventforge_tasks::Task;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), HandlerError> {
//! let timing = TimingMeter::new("add.time");
//! let add = Task::builder("add", |a: i64, b: i64| async move { Ok::<_, HandlerError>(a + b) })
//!     .observer(timing.clone())
//!     .build();
//! assert_eq!(add.call_as::<i64>((1, 2)).await?, 3);
//! assert_eq!(timing.stats().count, 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod context;
mod executor;
pub mod observers;
mod state;
mod task;

pub use context::TaskContext;
pub use executor::{
    run_child_if_requested, Executor, ExecutorBuilder, ExecutorError, ExecutorMode,
    FunctionRegistry, TaskFailure, TaskResult, TaskStatus, CHILD_ENV, DEFAULT_MAX_QUEUED_TASKS,
    DEFAULT_MAX_RETAINED_RESULTS,
};
pub use observers::Observer;
pub use state::SharedState;
pub use task::{
    DispatchNode, DispatchOutcome, DispatchStrategy, Dispatcher, Reservation, Task, TaskBuilder,
    TaskPool, TaskPoolStats, TaskStats, INSTANCE_TIMEOUT, NO_CAPACITY,
};
