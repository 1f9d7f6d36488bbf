//! Closures as observers.

use std::fmt;

use super::Observer;
use crate::context::TaskContext;

type Callback = Box<dyn Fn(&TaskContext) + Send + Sync>;

/// An observer made of closures, one per hook, each optional.
///
/// [`TaskBuilder::on_success`](crate::task::TaskBuilder::on_success) and its
/// siblings build one for you.
///
/// ```
/// use eventforge_tasks::observers::CallbackObserver;
///
/// let log = CallbackObserver::new()
///     .on_start(|ctx| println!("{} starts", ctx.name()))
///     .on_failure(|ctx| eprintln!("{} failed: {:?}", ctx.name(), ctx.error()));
/// # let _ = log;
/// ```
#[derive(Default)]
pub struct CallbackObserver {
    start: Option<Callback>,
    success: Option<Callback>,
    failure: Option<Callback>,
    complete: Option<Callback>,
}

impl fmt::Debug for CallbackObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackObserver")
            .field("on_start", &self.start.is_some())
            .field("on_success", &self.success.is_some())
            .field("on_failure", &self.failure.is_some())
            .field("on_complete", &self.complete.is_some())
            .finish()
    }
}

impl CallbackObserver {
    /// An observer with no callback yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `callback` when a call starts.
    pub fn on_start(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.start = Some(Box::new(callback));
        self
    }

    /// Runs `callback` when a call succeeds.
    pub fn on_success(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.success = Some(Box::new(callback));
        self
    }

    /// Runs `callback` when a call fails.
    pub fn on_failure(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.failure = Some(Box::new(callback));
        self
    }

    /// Runs `callback` when a call is over, whatever its outcome.
    pub fn on_complete(mut self, callback: impl Fn(&TaskContext) + Send + Sync + 'static) -> Self {
        self.complete = Some(Box::new(callback));
        self
    }
}

impl Observer for CallbackObserver {
    fn on_start(&self, ctx: &TaskContext) {
        if let Some(callback) = &self.start {
            callback(ctx);
        }
    }

    fn on_success(&self, ctx: &TaskContext) {
        if let Some(callback) = &self.success {
            callback(ctx);
        }
    }

    fn on_failure(&self, ctx: &TaskContext) {
        if let Some(callback) = &self.failure {
            callback(ctx);
        }
    }

    fn on_complete(&self, ctx: &TaskContext) {
        if let Some(callback) = &self.complete {
            callback(ctx);
        }
    }
}
