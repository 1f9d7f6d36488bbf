//! `CpuMeter`: CPU time spent by a call's own polls.

use std::time::Duration;

use super::{Measures, Meter, MeterStats, Observer, Reduction};
use crate::context::TaskContext;

/// CPU time consumed so far by the calling thread, or `None` where the
/// platform has no per-thread CPU clock.
///
/// Read with `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`. On Linux this clock
/// is a system call (the vDSO serves only the wall clocks), a few hundred
/// nanoseconds; reading `/proc/thread-self/stat` would cost several
/// microseconds.
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec for the call's duration.
        let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        if status != 0 {
            return None;
        }
        Some(Duration::new(
            u64::try_from(now.tv_sec).ok()?,
            u32::try_from(now.tv_nsec).ok()?,
        ))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Records, in seconds, the CPU time each call spent in its own polls: the
/// thread's CPU clock is read before and after every poll of the call's
/// future and the differences are added. Time the call spends waiting (on
/// I/O, a timer, a lock) costs no CPU and is not counted; neither is work
/// the call hands to other tasks or threads.
///
/// Cost: two reads of the thread's CPU clock per poll, each a system call
/// on Linux (see `BENCHMARKS.md` for the figure): fine for calls that do
/// real work, noticeable on calls of a few hundred nanoseconds.
///
/// ```
/// use eventforge_tasks::observers::CpuMeter;
///
/// let cpu = CpuMeter::new("hash.cpu");
/// assert_eq!(cpu.stats().count, 0);
/// ```
#[derive(Debug, Clone)]
pub struct CpuMeter {
    meter: Meter,
}

impl CpuMeter {
    /// A CPU meter named `name` whose value is the mean CPU time per call.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_reduction(name, Reduction::Mean)
    }

    /// A CPU meter with another reduction (e.g. `Sum` for the total).
    pub fn with_reduction(name: impl Into<String>, reduction: Reduction) -> Self {
        CpuMeter {
            meter: Meter::new(name, reduction),
        }
    }

    /// The meter of CPU times, in seconds.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The meter's stats, in seconds.
    pub fn stats(&self) -> MeterStats {
        self.meter.stats()
    }
}

impl Observer for CpuMeter {
    fn on_complete(&self, ctx: &TaskContext) {
        if let Some(cpu) = ctx.cpu_time() {
            self.meter.record(cpu.as_secs_f64());
        }
    }

    fn measures(&self) -> Measures {
        Measures {
            cpu: true,
            memory: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_time().unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time().unwrap() > before);
    }
}
