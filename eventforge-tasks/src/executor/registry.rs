//! Functions an executor can run by name: the only kind of work that can
//! cross into a child process, where closures cannot follow.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Why a registered function failed: a short class name and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// Short class name (`"Error"` for plain text errors, else the error's type name).
    pub error_type: String,
    /// The error text.
    pub message: String,
}

pub(crate) type TaskFn = Arc<dyn Fn(Value) -> Result<Value, TaskFailure> + Send + Sync>;

/// Named functions taking and returning JSON.
///
/// In process mode the child process looks functions up in its own
/// registry, so parent and child must build the same one (typically one
/// function of the program used by both, see
/// [`run_child_if_requested`](super::run_child_if_requested)).
///
/// ```
/// use eventforge_tasks::FunctionRegistry;
///
/// let mut registry = FunctionRegistry::new();
/// registry.register("double", |v: serde_json::Value| {
///     v.as_i64().map(|n| (n * 2).into()).ok_or_else(|| "expected an integer".to_owned())
/// });
/// registry.register_typed("add", |(a, b): (i64, i64)| Ok::<_, std::convert::Infallible>(a + b));
/// assert!(registry.contains("add"));
/// ```
#[derive(Clone, Default)]
pub struct FunctionRegistry {
    functions: HashMap<String, TaskFn>,
}

impl fmt::Debug for FunctionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionRegistry")
            .field("functions", &self.names())
            .finish()
    }
}

impl FunctionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `function` under `name`; its error text is sent with
    /// `error_type` `"Error"`.
    pub fn register<F>(&mut self, name: impl Into<String>, function: F) -> &mut Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.functions.insert(
            name.into(),
            Arc::new(move |input| {
                function(input).map_err(|message| TaskFailure {
                    error_type: "Error".to_owned(),
                    message,
                })
            }),
        );
        self
    }

    /// Registers a function with a typed input (deserialised from the JSON
    /// input: an array reads as a tuple) and a typed output.
    pub fn register_typed<A, R, E, F>(&mut self, name: impl Into<String>, function: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: Serialize,
        E: fmt::Display + 'static,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let name = name.into();
        let label = name.clone();
        self.functions.insert(
            name,
            Arc::new(move |input| {
                let input = serde_json::from_value(input).map_err(|e| TaskFailure {
                    error_type: "TypeError".to_owned(),
                    message: format!("{label}(): invalid input: {e}"),
                })?;
                let output = function(input).map_err(|e| TaskFailure {
                    error_type: short_type_name::<E>(),
                    message: e.to_string(),
                })?;
                serde_json::to_value(output).map_err(|e| TaskFailure {
                    error_type: "EncodeError".to_owned(),
                    message: format!("{label}(): result is not JSON: {e}"),
                })
            }),
        );
        self
    }

    /// True when `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.functions.keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn get(&self, name: &str) -> Option<TaskFn> {
        self.functions.get(name).cloned()
    }
}

fn short_type_name<E: 'static>() -> String {
    let full = std::any::type_name::<E>();
    let base = full.split('<').next().unwrap_or(full);
    let short = base
        .rsplit("::")
        .next()
        .unwrap_or(base)
        .trim_start_matches('&');
    match short {
        "" | "str" | "String" | "Cow" => "Error".to_owned(),
        other => other.to_owned(),
    }
}
