//! Tasks: a function wrapped with observers, callbacks, an instance limit,
//! shared state and result publishing.
//!
//! |                | local (same process) | remote (another process or machine) |
//! |----------------|----------------------|-------------------------------------|
//! | pub-sub        | a task bound to its topic on a [`MessageQueue`] | the same queue on a network transport |
//! | request-reply  | **[`Task::call`]**, optionally on an [`Executor`] | a task served on an [`RpcServer`](eventforge_rpc::RpcServer) |
//!
//! A task runs the same lifecycle however it is called (directly, from its
//! topic, or over RPC): wait for an instance, `on_start`, the function,
//! `on_success`/`on_failure`, `on_complete`, then publish the result when
//! asked.

mod binding;
mod builder;
mod dispatch;
mod invocation;
mod measured;
mod pool;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

pub use builder::TaskBuilder;
pub use dispatch::{
    DispatchNode, DispatchOutcome, DispatchStrategy, Dispatcher, Reservation, NO_CAPACITY,
};
pub(crate) use invocation::Invocation;
pub use pool::{TaskPool, TaskPoolStats};

use crate::context::{TaskContext, TaskIdentity};
use crate::executor::{Executor, TaskStatus};
use crate::observers::{notify, Hook, Measures, Observer};
use crate::state::SharedState;
use eventforge_core::message::Message;
use eventforge_core::queue::MessageQueue;
use eventforge_rpc::wire::TYPE_ERROR;
use eventforge_rpc::{HandlerError, IncomingCall, IntoArgs, Outcome, RpcHandler, RpcRequest};
use measured::Measured;

/// The function of a task with its argument binding erased.
pub(crate) type TaskFunction =
    Arc<dyn Fn(IncomingCall) -> futures::future::BoxFuture<'static, Outcome> + Send + Sync>;

/// Error type of a call that waited longer than `instance_timeout`.
pub const INSTANCE_TIMEOUT: &str = "TimeoutError";

/// Counters of a [`Task`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Calls started.
    pub calls: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Observer hooks that panicked (each was reported through `tracing`).
    pub observer_panics: u64,
}

/// A function with everything that runs around it: observers, callbacks,
/// an instance limit, shared state, result publishing. Cheap to clone.
///
/// Build one with [`Task::builder`] (or `#[task]` with the `macros`
/// feature). The function is an async or sync closure with typed arguments,
/// as for [`RpcServer::register`](eventforge_rpc::RpcServer::register).
///
/// ```
/// use eventforge_tasks::observers::TimingMeter;
/// use eventforge_rpc::HandlerError;
/// use eventforge_tasks::Task;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), HandlerError> {
/// let timing = TimingMeter::new("add.time");
/// let add = Task::builder("add", |a: i64, b: i64| async move { Ok::<_, HandlerError>(a + b) })
///     .params(["a", "b"])
///     .observer(timing.clone())
///     .build();
/// assert_eq!(add.call_as::<i64>((1, 2)).await?, 3);
/// assert_eq!(add.call_payload(serde_json::json!({"b": 5, "a": 1})).await?, 6);
/// assert_eq!(timing.stats().count, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Task {
    inner: Arc<TaskInner>,
}

pub(crate) struct TaskInner {
    // Name, topic and shared state, handed to each call's context.
    pub(crate) identity: Arc<TaskIdentity>,
    // Parameter names in order, when known: object payloads bind by name.
    pub(crate) params: Option<Vec<String>>,
    pub(crate) function: TaskFunction,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    // The union of what the observers need measured, computed once.
    pub(crate) measures: Measures,
    pub(crate) executor: Option<Executor>,
    pub(crate) publish_result: bool,
    pub(crate) success_topic: String,
    pub(crate) failure_topic: String,
    pub(crate) pool: Option<TaskPool>,
    pub(crate) instance_timeout: Option<Duration>,
    // The queue results are published on: the first one the task is bound to.
    pub(crate) queue: OnceLock<MessageQueue>,
    pub(crate) calls: AtomicU64,
    pub(crate) successes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) observer_panics: AtomicU64,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.inner.identity.name)
            .field("topic", &self.inner.identity.topic)
            .field("observers", &self.inner.observers.len())
            .field("stats", &self.stats())
            .finish()
    }
}

// Handlers need a message; direct calls share this one instead of making one each.
fn direct_call_message() -> Arc<Message> {
    static MESSAGE: OnceLock<Arc<Message>> = OnceLock::new();
    Arc::clone(MESSAGE.get_or_init(|| Arc::new(Message::from_value("_task.direct", Value::Null))))
}

impl Task {
    /// A task named `name` running `function`: an async or sync closure
    /// whose arguments are deserialised from the call's arguments (see
    /// [`RpcHandler`]) and which returns `Result<T: Serialize, E: Display>`.
    pub fn builder<H, Args>(name: impl Into<String>, function: H) -> TaskBuilder
    where
        H: RpcHandler<Args>,
        Args: 'static,
    {
        let function = Arc::new(function);
        TaskBuilder {
            name: name.into(),
            topic: None,
            params: None,
            function: Arc::new(move |call| function.call(call)),
            observers: Vec::new(),
            callbacks: None,
            executor: None,
            publish_result: false,
            max_instances: None,
            instance_timeout: None,
            state: SharedState::new(),
        }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.inner.identity.name
    }

    /// The topic that triggers the task.
    pub fn topic(&self) -> &str {
        &self.inner.identity.topic
    }

    /// The parameter names, when known.
    pub fn params(&self) -> Option<&[String]> {
        self.inner.params.as_deref()
    }

    /// The task's shared state.
    pub fn state(&self) -> &SharedState {
        &self.inner.identity.state
    }

    /// The counters since the task was built.
    pub fn stats(&self) -> TaskStats {
        let inner = &self.inner;
        TaskStats {
            calls: inner.calls.load(Ordering::Relaxed),
            successes: inner.successes.load(Ordering::Relaxed),
            failures: inner.failures.load(Ordering::Relaxed),
            observer_panics: inner.observer_panics.load(Ordering::Relaxed),
        }
    }

    /// The instance pool's counters, when `max_instances` is set.
    pub fn pool_stats(&self) -> Option<TaskPoolStats> {
        self.inner.pool.as_ref().map(TaskPool::stats)
    }

    /// Calls the task with positional arguments (a tuple, `()` or a
    /// `Vec<Value>`); returns the result as JSON.
    pub async fn call(&self, args: impl IntoArgs) -> Outcome {
        let args = args
            .into_args()
            .map_err(|e| HandlerError::new(TYPE_ERROR, format!("arguments are not JSON: {e}")))?;
        // Only observers read the arguments back: skip the copy without them.
        let shown = if self.inner.observers.is_empty() {
            Value::Null
        } else {
            Value::Array(args.clone())
        };
        self.run(Invocation {
            args,
            kwargs: Map::new(),
            shown,
            message: None,
        })
        .await
    }

    /// [`call`](Self::call), with the result deserialised into `R`.
    pub async fn call_as<R: DeserializeOwned>(
        &self,
        args: impl IntoArgs,
    ) -> Result<R, HandlerError> {
        let value = self.call(args).await?;
        serde_json::from_value(value)
            .map_err(|e| HandlerError::new("DecodeError", format!("unexpected result: {e}")))
    }

    /// Calls the task with named arguments.
    pub async fn call_named(&self, kwargs: Map<String, Value>) -> Outcome {
        let shown = Value::Object(kwargs.clone());
        self.run(Invocation {
            args: Vec::new(),
            kwargs,
            shown,
            message: None,
        })
        .await
    }

    /// Calls the task with a payload unpacked as when it arrives on the
    /// task's topic: an object gives named arguments, an array positional
    /// ones, anything else the single argument.
    pub async fn call_payload(&self, payload: Value) -> Outcome {
        self.run(Invocation::from_payload(&payload, None)).await
    }

    /// The lifecycle every call path runs.
    pub(crate) async fn run(&self, invocation: Invocation) -> Outcome {
        let inner = &*self.inner;
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let Invocation {
            args,
            kwargs,
            shown,
            message,
        } = invocation;
        let mut ctx = TaskContext::new(Arc::clone(&self.inner.identity), shown, message.clone());
        self.notify(Hook::Start, &ctx);

        let slot = match &inner.pool {
            // Waiting is boxed: its timer would bloat every call's future.
            Some(pool) => match match pool.try_acquire() {
                Some(slot) => Some(slot),
                None => Box::pin(pool.acquire(inner.instance_timeout)).await,
            } {
                Some(slot) => Some(slot),
                None => {
                    let waited = inner.instance_timeout.unwrap_or_default();
                    let error = HandlerError::new(
                        INSTANCE_TIMEOUT,
                        format!(
                            "{}() found no free instance within {waited:?} (max_instances {})",
                            inner.identity.name,
                            pool.stats().max
                        ),
                    );
                    return self.finish(&mut ctx, Err(error), None, None).await;
                }
            },
            None => None,
        };

        let (outcome, cpu, allocated) = match self.bind_arguments(args, kwargs) {
            Err(error) => (Err(error), None, None),
            Ok((args, kwargs)) => {
                let call = IncomingCall {
                    request: RpcRequest {
                        // Handlers do not read the id; the task id is in the context.
                        id: String::new(),
                        method: inner.identity.name.to_string(),
                        args,
                        kwargs,
                        timeout: None,
                    },
                    message: message.unwrap_or_else(direct_call_message),
                };
                let measured = Measured::new(Arc::clone(&inner.function), call, inner.measures);
                match &inner.executor {
                    None => measured.await,
                    // Boxed: the executor path is rare and would bloat every call's future.
                    Some(executor) => Box::pin(run_on_executor(executor, measured)).await,
                }
            }
        };
        drop(slot);
        self.finish(&mut ctx, outcome, cpu, allocated).await
    }

    async fn finish(
        &self,
        ctx: &mut TaskContext,
        outcome: Outcome,
        cpu: Option<Duration>,
        allocated: Option<u64>,
    ) -> Outcome {
        let inner = &*self.inner;
        ctx.finish(outcome, cpu, allocated);
        if ctx.succeeded() {
            inner.successes.fetch_add(1, Ordering::Relaxed);
            self.notify(Hook::Success, ctx);
        } else {
            inner.failures.fetch_add(1, Ordering::Relaxed);
            self.notify(Hook::Failure, ctx);
        }
        self.notify(Hook::Complete, ctx);
        if inner.publish_result {
            // Boxed for the same reason as the executor path.
            Box::pin(self.publish(ctx)).await;
        }
        ctx.take_outcome()
    }

    fn notify(&self, hook: Hook, ctx: &TaskContext) {
        if self.inner.observers.is_empty() {
            return;
        }
        let panics = notify(&self.inner.observers, hook, ctx);
        if panics > 0 {
            self.inner
                .observer_panics
                .fetch_add(panics, Ordering::Relaxed);
        }
    }

    /// Publishes the outcome on `<topic>.success` / `<topic>.failure`.
    async fn publish(&self, ctx: &TaskContext) {
        let Some(queue) = self.inner.queue.get() else {
            tracing::debug!(
                task = ctx.name(),
                task_id = ctx.task_id(),
                "publish_result: task is bound to no queue"
            );
            return;
        };
        let execution_time = ctx.execution_time().unwrap_or_default().as_secs_f64();
        let (topic, payload) = match (ctx.result(), ctx.error()) {
            (Some(result), _) => (
                &self.inner.success_topic,
                json!({"task_id": ctx.task_id(), "result": result, "execution_time": execution_time}),
            ),
            (None, error) => (
                &self.inner.failure_topic,
                json!({
                    "task_id": ctx.task_id(),
                    "error": error.map(HandlerError::message),
                    "error_type": error.map(HandlerError::error_type),
                    "execution_time": execution_time,
                }),
            ),
        };
        if let Err(error) = queue.publish(topic, payload).await {
            tracing::warn!(task = ctx.name(), task_id = ctx.task_id(), %topic, %error, "task result not published");
        }
    }

    /// Named arguments become positional ones when the parameter names are known.
    fn bind_arguments(
        &self,
        mut args: Vec<Value>,
        mut kwargs: Map<String, Value>,
    ) -> Result<(Vec<Value>, Map<String, Value>), HandlerError> {
        let Some(params) = &self.inner.params else {
            return Ok((args, kwargs));
        };
        let name = &self.inner.identity.name;
        if kwargs.is_empty() {
            return Ok((args, kwargs));
        }
        if args.len() > params.len() {
            return Err(HandlerError::new(
                TYPE_ERROR,
                format!(
                    "{name}() takes {} arguments but {} positional were given",
                    params.len(),
                    args.len()
                ),
            ));
        }
        for param in &params[args.len()..] {
            match kwargs.remove(param) {
                Some(value) => args.push(value),
                None => {
                    return Err(HandlerError::new(
                        TYPE_ERROR,
                        format!("{name}() missing required argument '{param}'"),
                    ))
                }
            }
        }
        if let Some(extra) = kwargs.keys().next() {
            let message = if params.iter().any(|p| p == extra) {
                format!("{name}() got multiple values for argument '{extra}'")
            } else {
                format!("{name}() got an unexpected keyword argument '{extra}'")
            };
            return Err(HandlerError::new(TYPE_ERROR, message));
        }
        Ok((args, Map::new()))
    }
}

type Measurement = (Outcome, Option<Duration>, Option<u64>);

/// Drives the call to completion on one of `executor`'s threads.
async fn run_on_executor(executor: &Executor, measured: Measured) -> Measurement {
    let out: Arc<Mutex<Option<Measurement>>> = Arc::default();
    let slot = Arc::clone(&out);
    let submitted = executor.submit_fn(move || {
        let done = futures::executor::block_on(measured);
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(done);
        Ok::<_, std::convert::Infallible>(())
    });
    let executor_error = |e: &dyn fmt::Display| {
        (
            Err(HandlerError::new("ExecutorError", e.to_string())),
            None,
            None,
        )
    };
    let task_id = match submitted {
        Ok(task_id) => task_id,
        Err(error) => return executor_error(&error),
    };
    // No deadline of its own: the call takes as long as the function.
    let result = match executor.result(&task_id, Duration::MAX).await {
        Ok(result) => result,
        Err(error) => return executor_error(&error),
    };
    let done = out.lock().unwrap_or_else(PoisonError::into_inner).take();
    match (done, result.status) {
        (Some(done), _) => done,
        (None, TaskStatus::Completed) => executor_error(&"the executor lost the result"),
        (None, _) => (
            Err(HandlerError::new(
                result.error_type.unwrap_or_else(|| "Error".to_owned()),
                result.error.unwrap_or_default(),
            )),
            None,
            None,
        ),
    }
}
