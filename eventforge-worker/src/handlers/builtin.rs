//! Handlers built into the worker, for smoke tests, demos and benchmarks.

use std::time::Duration;

use eventforge_rpc::{HandlerError, IncomingCall, Outcome};
use serde_json::{json, Value};

/// The built-in handler names, as `--builtin` accepts them.
pub const BUILTINS: &[&str] = &["echo", "add", "sleep", "whoami"];

/// Longest `sleep` accepted, so a typo cannot pin a worker for days.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// A built-in handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// Returns its one argument, or the list of its arguments (with the
    /// named ones: `{"args": [...], "kwargs": {...}}`).
    Echo,
    /// Sums its numeric arguments (integers stay integers).
    Add,
    /// Waits the number of seconds given (a float), then returns it.
    Sleep,
    /// Returns the worker's id: tells which worker answered a call.
    WhoAmI(String),
}

impl Builtin {
    /// The built-in called `name`, for the worker `worker_id`.
    pub fn named(name: &str, worker_id: &str) -> Option<Self> {
        match name {
            "echo" => Some(Builtin::Echo),
            "add" => Some(Builtin::Add),
            "sleep" => Some(Builtin::Sleep),
            "whoami" => Some(Builtin::WhoAmI(worker_id.to_owned())),
            _ => None,
        }
    }

    /// Answers one call.
    pub async fn call(&self, call: IncomingCall) -> Outcome {
        let request = call.request;
        match self {
            Builtin::Echo => Ok(match (request.args.len(), request.kwargs.is_empty()) {
                (1, true) => request.args.into_iter().next().unwrap_or(Value::Null),
                (_, true) => Value::Array(request.args),
                _ => json!({"args": request.args, "kwargs": request.kwargs}),
            }),
            Builtin::Add => add(&request.args),
            Builtin::Sleep => {
                let seconds = match request.args.first() {
                    None => 0.0,
                    Some(value) => value.as_f64().ok_or_else(|| {
                        HandlerError::new("TypeError", "sleep() takes a number of seconds")
                    })?,
                };
                let wait = Duration::try_from_secs_f64(seconds)
                    .map_err(|e| HandlerError::new("ValueError", format!("sleep({seconds}): {e}")))?
                    .min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
                Ok(json!(seconds))
            }
            Builtin::WhoAmI(id) => Ok(json!(id)),
        }
    }
}

fn add(args: &[Value]) -> Outcome {
    let not_a_number =
        |v: &Value| HandlerError::new("TypeError", format!("add() takes numbers, got {v}"));
    if args.iter().all(|v| v.is_i64()) {
        let mut sum: i64 = 0;
        for value in args {
            let n = value.as_i64().ok_or_else(|| not_a_number(value))?;
            sum = sum
                .checked_add(n)
                .ok_or_else(|| HandlerError::new("OverflowError", "add(): integer overflow"))?;
        }
        return Ok(json!(sum));
    }
    let mut sum = 0.0;
    for value in args {
        sum += value.as_f64().ok_or_else(|| not_a_number(value))?;
    }
    Ok(json!(sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_keeps_integers_and_rejects_strings() {
        assert_eq!(add(&[json!(2), json!(3)]).ok(), Some(json!(5)));
        assert_eq!(add(&[json!(2), json!(0.5)]).ok(), Some(json!(2.5)));
        let error = add(&[json!("x")]).err().map(|e| e.error_type().to_owned());
        assert_eq!(error.as_deref(), Some("TypeError"));
    }
}
