//! `TimingMeter`: wall time of each call, with a slow-call threshold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Meter, MeterStats, Observer, Reduction};
use crate::context::TaskContext;

/// Records the wall time of every call, in seconds, into a [`Meter`]; calls
/// slower than an optional threshold are counted, reported through
/// `tracing` and marked with the metadata `"slow": true`.
///
/// Cheap to clone: keep a clone to read it while the task runs.
///
/// ```
/// use std::time::Duration;
/// use eventforge_tasks::observers::{Reduction, TimingMeter};
///
/// let timing = TimingMeter::new("add.time").threshold(Duration::from_millis(50));
/// assert_eq!(timing.meter().reduction(), Reduction::Mean);
/// assert_eq!(timing.slow_calls(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct TimingMeter {
    meter: Meter,
    threshold: Option<Duration>,
    // Shared by clones, like the meter.
    slow: Arc<AtomicU64>,
}

impl TimingMeter {
    /// A timing meter named `name` whose value is the mean time.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_reduction(name, Reduction::Mean)
    }

    /// A timing meter with another reduction (e.g. `Max`).
    pub fn with_reduction(name: impl Into<String>, reduction: Reduction) -> Self {
        TimingMeter {
            meter: Meter::new(name, reduction),
            threshold: None,
            slow: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Calls taking longer than `threshold` are slow.
    pub fn threshold(mut self, threshold: Duration) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// The meter of call times, in seconds.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The meter's stats, in seconds.
    pub fn stats(&self) -> MeterStats {
        self.meter.stats()
    }

    /// How many calls took longer than the threshold.
    pub fn slow_calls(&self) -> u64 {
        self.slow.load(Ordering::Relaxed)
    }
}

impl Observer for TimingMeter {
    fn on_complete(&self, ctx: &TaskContext) {
        let Some(elapsed) = ctx.execution_time() else {
            return;
        };
        self.meter.record(elapsed.as_secs_f64());
        if let Some(threshold) = self.threshold {
            if elapsed > threshold {
                self.slow.fetch_add(1, Ordering::Relaxed);
                ctx.set_metadata("slow", true.into());
                tracing::warn!(
                    task = ctx.name(),
                    task_id = ctx.task_id(),
                    meter = self.meter.name(),
                    elapsed_s = elapsed.as_secs_f64(),
                    threshold_s = threshold.as_secs_f64(),
                    "slow task call"
                );
            }
        }
    }
}
