//! `TaskResult`: what became of one task, as the protocol serialises it.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Submitted, not started.
    Pending,
    /// Running on a worker.
    Running,
    /// Finished with a value.
    Completed,
    /// Finished with an error (the function failed, panicked, or its worker died).
    Failed,
    /// Dropped before it ran (the executor stopped without waiting).
    Cancelled,
}

/// The outcome of one task.
///
/// Serialises as the protocol's TaskResult:
/// `{"task_id", "status", "value", "error", "error_type", "execution_time" (seconds), "worker_id"}`.
///
/// ```
/// use std::time::Duration;
/// use eventforge_tasks::{TaskResult, TaskStatus};
///
/// let done = TaskResult::completed("t1", 42.into(), Duration::from_millis(1), "thread-x");
/// let json = serde_json::to_value(&done)?;
/// assert_eq!(json["status"], "completed");
/// assert_eq!(json["execution_time"], 0.001);
/// assert_eq!(serde_json::from_value::<TaskResult>(json)?, done);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The id `submit` returned.
    pub task_id: String,
    /// Completed, failed or cancelled once finished.
    pub status: TaskStatus,
    /// The function's return value; `null` unless completed.
    #[serde(default)]
    pub value: Value,
    /// Error text when failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Short error class name when failed (`"Panic"`, `"WorkerCrashed"`, ...).
    #[serde(default)]
    pub error_type: Option<String>,
    /// How long the function ran (seconds on the wire).
    #[serde(
        default,
        serialize_with = "write_seconds",
        deserialize_with = "read_seconds"
    )]
    pub execution_time: Duration,
    /// Which worker ran it (`"inline"`, a thread name, `"process-<pid>"`).
    #[serde(default)]
    pub worker_id: Option<String>,
}

impl TaskResult {
    /// A completed task.
    pub fn completed(
        task_id: impl Into<String>,
        value: Value,
        execution_time: Duration,
        worker_id: impl Into<String>,
    ) -> Self {
        TaskResult {
            task_id: task_id.into(),
            status: TaskStatus::Completed,
            value,
            error: None,
            error_type: None,
            execution_time,
            worker_id: Some(worker_id.into()),
        }
    }

    /// A failed task.
    pub fn failed(
        task_id: impl Into<String>,
        error_type: impl Into<String>,
        error: impl Into<String>,
        execution_time: Duration,
        worker_id: Option<String>,
    ) -> Self {
        TaskResult {
            task_id: task_id.into(),
            status: TaskStatus::Failed,
            value: Value::Null,
            error: Some(error.into()),
            error_type: Some(error_type.into()),
            execution_time,
            worker_id,
        }
    }

    /// A task dropped before it ran.
    pub fn cancelled(task_id: impl Into<String>) -> Self {
        TaskResult {
            task_id: task_id.into(),
            status: TaskStatus::Cancelled,
            value: Value::Null,
            error: Some("the executor stopped before the task ran".to_owned()),
            error_type: Some("Cancelled".to_owned()),
            execution_time: Duration::ZERO,
            worker_id: None,
        }
    }

    /// True when the task completed with a value.
    pub fn is_success(&self) -> bool {
        self.status == TaskStatus::Completed
    }
}

fn write_seconds<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
}

fn read_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let seconds = Option::<f64>::deserialize(d)?.unwrap_or(0.0);
    Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
}
