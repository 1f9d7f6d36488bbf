//! `MetricsMeter`: a number taken from each call's result.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::{Meter, MeterStats, Observer, Reduction};
use crate::context::TaskContext;

type Extractor = Arc<dyn Fn(&Value) -> Option<f64> + Send + Sync>;

/// Records a number extracted from each successful call's result (a row
/// count, a score, a size). A result the extractor gives no number for is
/// skipped.
///
/// ```
/// use eventforge_tasks::observers::{MetricsMeter, Reduction};
///
/// let rows = MetricsMeter::new("import.rows", Reduction::Sum, |result| result["rows"].as_f64());
/// # let _ = rows;
/// ```
#[derive(Clone)]
pub struct MetricsMeter {
    meter: Meter,
    extract: Extractor,
}

impl fmt::Debug for MetricsMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsMeter")
            .field("meter", &self.meter)
            .finish()
    }
}

impl MetricsMeter {
    /// A meter named `name` fed by `extract` applied to each result.
    pub fn new(
        name: impl Into<String>,
        reduction: Reduction,
        extract: impl Fn(&Value) -> Option<f64> + Send + Sync + 'static,
    ) -> Self {
        MetricsMeter {
            meter: Meter::new(name, reduction),
            extract: Arc::new(extract),
        }
    }

    /// The meter of extracted numbers.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The meter's stats.
    pub fn stats(&self) -> MeterStats {
        self.meter.stats()
    }
}

impl Observer for MetricsMeter {
    fn on_success(&self, ctx: &TaskContext) {
        if let Some(value) = ctx.result().and_then(|result| (self.extract)(result)) {
            self.meter.record(value);
        }
    }
}
