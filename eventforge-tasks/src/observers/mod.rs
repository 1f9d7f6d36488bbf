//! Observers of task calls: the hooks that watch every call of a
//! [`Task`](crate::task::Task), local or remote, and the meters built on them.
//!
//! They sit beside both corners of the 2x2 that run work: a task called
//! directly, triggered from its topic on a [`MessageQueue`](eventforge_core::MessageQueue),
//! or served over [`RpcServer`](eventforge_rpc::RpcServer) runs the same
//! observers around each call.
//!
//! An observer is told when a call starts, succeeds, fails and completes,
//! through a [`TaskContext`]. An observer that
//! panics is reported (through `tracing` and the task's
//! [`observer_panics`](crate::task::TaskStats::observer_panics) counter) and
//! never changes the call it watches.

mod callback;
mod cpu;
mod memory;
mod meter;
mod metrics;
mod reporter;
mod timing;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

pub use callback::CallbackObserver;
pub use cpu::{thread_cpu_time, CpuMeter};
pub use memory::{allocated_bytes_on_this_thread, CountingAllocator, MemoryMeter};
pub use meter::{Meter, MeterStats, Reduction};
pub use metrics::MetricsMeter;
pub use reporter::{
    Summary, SummaryReporting, SummaryStats, TracingReporter, DEFAULT_SUMMARY_WINDOW,
};
pub use timing::TimingMeter;

use crate::context::TaskContext;
use eventforge_core::sync::panic_text;

/// Watches the calls of a task. Every hook has an empty default, so an
/// observer implements only what it needs.
///
/// Hooks run on the task that makes the call, in the order the observers
/// were added: keep them short (record a number, send on a channel).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use eventforge_tasks::observers::Observer;
/// use eventforge_tasks::TaskContext;
///
/// #[derive(Default)]
/// struct Failures(AtomicU64);
///
/// impl Observer for Failures {
///     fn on_failure(&self, ctx: &TaskContext) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         eprintln!("{} failed: {:?}", ctx.name(), ctx.error());
///     }
/// }
/// ```
pub trait Observer: Send + Sync + 'static {
    /// The call is about to run; its arguments are known.
    fn on_start(&self, _ctx: &TaskContext) {}
    /// The call returned a result ([`TaskContext::result`]).
    fn on_success(&self, _ctx: &TaskContext) {}
    /// The call failed ([`TaskContext::error`]): an error, a panic, a timeout
    /// waiting for an instance, or arguments that do not fit.
    fn on_failure(&self, _ctx: &TaskContext) {}
    /// The call is over, after `on_success` or `on_failure`.
    fn on_complete(&self, _ctx: &TaskContext) {}
    /// What the task must measure around the call for this observer.
    /// Measuring costs a little per poll, so it is only done when asked.
    fn measures(&self) -> Measures {
        Measures::NONE
    }
}

/// Measurements a task takes around each poll of a call, when an observer
/// asks for them (see [`Observer::measures`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measures {
    /// CPU time of the thread while it polls the call.
    pub cpu: bool,
    /// Bytes allocated by the thread while it polls the call (needs the
    /// [`CountingAllocator`] as global allocator).
    pub memory: bool,
}

impl Measures {
    /// Nothing measured.
    pub const NONE: Measures = Measures {
        cpu: false,
        memory: false,
    };

    /// Both sets of measurements together.
    pub fn union(self, other: Measures) -> Measures {
        Measures {
            cpu: self.cpu || other.cpu,
            memory: self.memory || other.memory,
        }
    }
}

/// One of the four hooks, so that the task can call them in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Start,
    Success,
    Failure,
    Complete,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Start => "on_start",
            Hook::Success => "on_success",
            Hook::Failure => "on_failure",
            Hook::Complete => "on_complete",
        }
    }
}

/// Calls `hook` on every observer; returns how many panicked. A panic is
/// caught and reported, and the next observer still runs.
pub(crate) fn notify(observers: &[Arc<dyn Observer>], hook: Hook, ctx: &TaskContext) -> u64 {
    let mut panics = 0;
    for observer in observers {
        let called = catch_unwind(AssertUnwindSafe(|| match hook {
            Hook::Start => observer.on_start(ctx),
            Hook::Success => observer.on_success(ctx),
            Hook::Failure => observer.on_failure(ctx),
            Hook::Complete => observer.on_complete(ctx),
        }));
        if let Err(panic) = called {
            panics += 1;
            tracing::error!(
                task = ctx.name(),
                task_id = ctx.task_id(),
                topic = ctx.topic(),
                hook = hook.name(),
                panic = panic_text(&*panic),
                "task observer panicked; the call goes on"
            );
        }
    }
    panics
}
