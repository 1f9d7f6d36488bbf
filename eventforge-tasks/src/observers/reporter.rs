//! Reporting through `tracing`: every call ([`TracingReporter`]) and a
//! periodic summary ([`Summary`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Measures, Observer};
use crate::context::TaskContext;

/// Emits one `tracing` event per finished call with every measurement the
/// call carries: execution time, CPU time and allocated bytes (when other
/// observers asked for them, or [`with_measures`](Self::with_measures)),
/// outcome and error type. Events are at `INFO` level for successes and
/// `WARN` for failures, with target `eventforge::task`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingReporter {
    measures: Measures,
}

impl TracingReporter {
    /// A reporter of what the call carries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also asks the task to measure `measures` for every call.
    pub fn with_measures(measures: Measures) -> Self {
        TracingReporter { measures }
    }
}

impl Observer for TracingReporter {
    fn on_complete(&self, ctx: &TaskContext) {
        let execution_s = ctx.execution_time().map(|d| d.as_secs_f64());
        let cpu_s = ctx.cpu_time().map(|d| d.as_secs_f64());
        let allocated = ctx.allocated_bytes();
        match ctx.error() {
            None => tracing::info!(
                target: "eventforge::task",
                task = ctx.name(),
                task_id = ctx.task_id(),
                topic = ctx.topic(),
                execution_s,
                cpu_s,
                allocated_bytes = allocated,
                "task call succeeded"
            ),
            Some(error) => tracing::warn!(
                target: "eventforge::task",
                task = ctx.name(),
                task_id = ctx.task_id(),
                topic = ctx.topic(),
                execution_s,
                cpu_s,
                allocated_bytes = allocated,
                error_type = error.error_type(),
                error = error.message(),
                "task call failed"
            ),
        }
    }

    fn measures(&self) -> Measures {
        self.measures
    }
}

/// Latencies kept for percentiles when nothing else is set.
pub const DEFAULT_SUMMARY_WINDOW: usize = 10_000;

/// Counts calls, successes and failures and keeps the latest latencies (a
/// bounded window) for percentiles. [`report_every`](Self::report_every)
/// logs the summary periodically.
///
/// ```
/// use eventforge_tasks::observers::Summary;
///
/// let summary = Summary::new("orders");
/// let stats = summary.stats();
/// assert_eq!((stats.count, stats.p50), (0, None));
/// ```
#[derive(Debug, Clone)]
pub struct Summary {
    inner: Arc<SummaryValues>,
}

#[derive(Debug)]
struct SummaryValues {
    name: String,
    successes: AtomicU64,
    failures: AtomicU64,
    // The latest latencies, oldest first; bounded so memory stays flat.
    latencies: Mutex<VecDeque<Duration>>,
    window: usize,
}

/// A snapshot of a [`Summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryStats {
    /// Calls finished.
    pub count: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Median latency over the window.
    pub p50: Option<Duration>,
    /// 90th percentile latency over the window.
    pub p90: Option<Duration>,
    /// 99th percentile latency over the window.
    pub p99: Option<Duration>,
    /// Largest latency over the window.
    pub max: Option<Duration>,
}

impl Summary {
    /// A summary named `name` keeping [`DEFAULT_SUMMARY_WINDOW`] latencies.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_window(name, DEFAULT_SUMMARY_WINDOW)
    }

    /// A summary keeping the latest `window` latencies (at least 1).
    pub fn with_window(name: impl Into<String>, window: usize) -> Self {
        Summary {
            inner: Arc::new(SummaryValues {
                name: name.into(),
                successes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                latencies: Mutex::new(VecDeque::new()),
                window: window.max(1),
            }),
        }
    }

    /// The counts and percentiles now.
    pub fn stats(&self) -> SummaryStats {
        let mut latencies: Vec<Duration> = self
            .inner
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        latencies.sort_unstable();
        let pick = |q: f64| -> Option<Duration> {
            let last = latencies.len().checked_sub(1)?;
            let rank = (q * last as f64).round() as usize;
            latencies.get(rank.min(last)).copied()
        };
        let successes = self.inner.successes.load(Ordering::Relaxed);
        let failures = self.inner.failures.load(Ordering::Relaxed);
        SummaryStats {
            count: successes + failures,
            successes,
            failures,
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: latencies.last().copied(),
        }
    }

    /// Logs the summary through `tracing` now.
    pub fn report(&self) {
        let stats = self.stats();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        tracing::info!(
            target: "eventforge::task",
            summary = %self.inner.name,
            count = stats.count,
            successes = stats.successes,
            failures = stats.failures,
            p50_ms = ms(stats.p50),
            p90_ms = ms(stats.p90),
            p99_ms = ms(stats.p99),
            max_ms = ms(stats.max),
            "task summary"
        );
    }

    /// Logs the summary every `period` on the current tokio runtime, until
    /// the returned handle is dropped.
    pub fn report_every(&self, period: Duration) -> SummaryReporting {
        let summary = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; a summary of nothing says nothing.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                summary.report();
            }
        });
        SummaryReporting { task }
    }
}

impl Observer for Summary {
    fn on_complete(&self, ctx: &TaskContext) {
        let counter = if ctx.error().is_none() {
            &self.inner.successes
        } else {
            &self.inner.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(elapsed) = ctx.execution_time() {
            let mut latencies = self
                .inner
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if latencies.len() == self.inner.window {
                latencies.pop_front();
            }
            latencies.push_back(elapsed);
        }
    }
}

/// The periodic report of a [`Summary`]; dropping it stops the reports.
#[derive(Debug)]
pub struct SummaryReporting {
    task: JoinHandle<()>,
}

impl Drop for SummaryReporting {
    fn drop(&mut self) {
        self.task.abort();
    }
}
