//! `Meter`: a number reduced over many calls, without a lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a [`Meter`] reduces the values it records to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// The arithmetic mean.
    Mean,
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
    /// The sum.
    Sum,
    /// The value recorded last.
    Last,
    /// How many values were recorded.
    Count,
}

/// What a [`Meter`] holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterStats {
    /// The meter's name.
    pub name: String,
    /// The reduction its `value` is.
    pub reduction: Reduction,
    /// The reduced value; `None` before the first record (except for
    /// [`Reduction::Count`] and [`Reduction::Sum`], which start at 0).
    pub value: Option<f64>,
    /// How many values were recorded.
    pub count: u64,
    /// The smallest value, once one was recorded.
    pub min: Option<f64>,
    /// The largest value, once one was recorded.
    pub max: Option<f64>,
    /// The mean, once one value was recorded.
    pub mean: Option<f64>,
}

/// A named number reduced over every value recorded (mean, max, min, sum,
/// last or count).
///
/// Cheap to clone (clones share the values), safe to record from many
/// threads and concurrent calls at once: each field is one atomic, updated
/// without a lock.
///
/// ```
/// use eventforge_tasks::observers::{Meter, Reduction};
///
/// let meter = Meter::new("latency", Reduction::Mean);
/// meter.record(1.0);
/// meter.record(3.0);
/// assert_eq!(meter.value(), Some(2.0));
/// let stats = meter.stats();
/// assert_eq!((stats.count, stats.min, stats.max), (2, Some(1.0), Some(3.0)));
/// ```
#[derive(Clone)]
pub struct Meter {
    inner: Arc<MeterValues>,
}

struct MeterValues {
    name: String,
    reduction: Reduction,
    count: AtomicU64,
    // f64 bits; the sum gives the mean.
    sum: AtomicU64,
    // f64 bits, +inf until the first record.
    min: AtomicU64,
    // f64 bits, -inf until the first record.
    max: AtomicU64,
    // f64 bits of the last value.
    last: AtomicU64,
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.stats(), f)
    }
}

impl Meter {
    /// A meter named `name` reducing with `reduction`.
    pub fn new(name: impl Into<String>, reduction: Reduction) -> Self {
        Meter {
            inner: Arc::new(MeterValues {
                name: name.into(),
                reduction,
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0f64.to_bits()),
                min: AtomicU64::new(f64::INFINITY.to_bits()),
                max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
                last: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// The meter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The meter's reduction.
    pub fn reduction(&self) -> Reduction {
        self.inner.reduction
    }

    /// Records one value. NaN is ignored: it would poison every reduction.
    pub fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let values = &self.inner;
        update(&values.sum, |sum| Some(sum + value));
        update(&values.min, |min| (value < min).then_some(value));
        update(&values.max, |max| (value > max).then_some(value));
        values.last.store(value.to_bits(), Ordering::Relaxed);
        // Counted last: a reader that sees the count sees a sum including it.
        values.count.fetch_add(1, Ordering::Release);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Acquire)
    }

    /// The reduced value (see [`MeterStats::value`]).
    pub fn value(&self) -> Option<f64> {
        self.stats().value
    }

    /// Everything the meter holds.
    pub fn stats(&self) -> MeterStats {
        let values = &self.inner;
        let count = values.count.load(Ordering::Acquire);
        let load = |cell: &AtomicU64| f64::from_bits(cell.load(Ordering::Relaxed));
        let sum = load(&values.sum);
        let recorded = count > 0;
        let min = recorded.then(|| load(&values.min));
        let max = recorded.then(|| load(&values.max));
        let mean = recorded.then(|| sum / count as f64);
        let value = match values.reduction {
            Reduction::Mean => mean,
            Reduction::Max => max,
            Reduction::Min => min,
            Reduction::Sum => Some(sum),
            Reduction::Last => recorded.then(|| load(&values.last)),
            Reduction::Count => Some(count as f64),
        };
        MeterStats {
            name: values.name.clone(),
            reduction: values.reduction,
            value,
            count,
            min,
            max,
            mean,
        }
    }
}

/// Replaces the f64 in `cell` by `change(old)` when it returns a value.
fn update(cell: &AtomicU64, change: impl Fn(f64) -> Option<f64>) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        change(f64::from_bits(bits)).map(f64::to_bits)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reduction_reads_the_same_records() {
        let values = [4.0, -1.0, 7.0, 2.0];
        let expect = [
            (Reduction::Mean, 3.0),
            (Reduction::Max, 7.0),
            (Reduction::Min, -1.0),
            (Reduction::Sum, 12.0),
            (Reduction::Last, 2.0),
            (Reduction::Count, 4.0),
        ];
        for (reduction, expected) in expect {
            let meter = Meter::new("m", reduction);
            values.iter().for_each(|v| meter.record(*v));
            assert_eq!(meter.value(), Some(expected), "{reduction:?}");
        }
    }

    #[test]
    fn an_empty_meter_has_no_min_max_or_mean() {
        let meter = Meter::new("m", Reduction::Max);
        let stats = meter.stats();
        assert_eq!((stats.value, stats.min, stats.mean), (None, None, None));
        assert_eq!(Meter::new("c", Reduction::Count).value(), Some(0.0));
    }

    #[test]
    fn nan_is_not_recorded() {
        let meter = Meter::new("m", Reduction::Sum);
        meter.record(f64::NAN);
        meter.record(1.5);
        assert_eq!((meter.count(), meter.value()), (1, Some(1.5)));
    }

    #[test]
    fn concurrent_records_from_many_threads_are_all_counted() {
        let meter = Meter::new("m", Reduction::Sum);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let meter = meter.clone();
                scope.spawn(move || {
                    for i in 0..10_000 {
                        meter.record(f64::from(t * 10_000 + i));
                    }
                });
            }
        });
        let stats = meter.stats();
        assert_eq!(stats.count, 40_000);
        // Integers below 2^53 add exactly in any order.
        assert_eq!(stats.value, Some((0..40_000u32).map(f64::from).sum()));
        assert_eq!((stats.min, stats.max), (Some(0.0), Some(39_999.0)));
    }
}
