//! What answers a method: a built-in, a long-lived child process, a
//! one-shot command, or (in the library form) a Rust closure.
//!
//! External programs all see the same request, a JSON object
//! `{"method": ..., "args": [...], "kwargs": {...}}`, and answer
//! `{"result": ...}` or `{"error": "...", "error_type": "..."}`.

pub mod builtin;
pub mod oneshot;
pub mod process;

use eventforge_rpc::{HandlerError, IncomingCall, Outcome};
use serde_json::{json, Value};

pub use builtin::{Builtin, BUILTINS};
pub use oneshot::OneShotCommand;
pub use process::ProcessPool;

/// Largest answer read from an external program (16 MiB): a runaway
/// program cannot make the worker allocate without bound.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The request object an external program reads.
pub(crate) fn request_json(call: &IncomingCall) -> Value {
    json!({
        "method": call.request.method,
        "args": call.request.args,
        "kwargs": call.request.kwargs,
    })
}

/// Reads an external program's answer object.
pub(crate) fn read_answer(answer: Value) -> Outcome {
    let Value::Object(mut fields) = answer else {
        return Err(protocol_error("the answer is not a JSON object"));
    };
    if let Some(error) = fields.remove("error").filter(|e| !e.is_null()) {
        let error_type = match fields.remove("error_type") {
            Some(Value::String(kind)) => kind,
            _ => "Error".to_owned(),
        };
        let message = match error {
            Value::String(text) => text,
            other => other.to_string(),
        };
        return Err(HandlerError::new(error_type, message));
    }
    fields
        .remove("result")
        .ok_or_else(|| protocol_error("the answer has neither \"result\" nor \"error\""))
}

fn protocol_error(what: &str) -> HandlerError {
    HandlerError::new("HandlerProtocolError", what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_with_result_or_error() {
        assert_eq!(read_answer(json!({"result": 4})).ok(), Some(json!(4)));
        assert_eq!(read_answer(json!({"result": null})).ok(), Some(Value::Null));
        let error = read_answer(json!({"error": "bad", "error_type": "ValueError"}));
        assert_eq!(error.err(), Some(HandlerError::new("ValueError", "bad")));
        assert!(read_answer(json!([1])).is_err());
        assert!(read_answer(json!({"other": 1})).is_err());
    }
}
