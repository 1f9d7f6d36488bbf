//! The arguments of one task call before they are bound to the function:
//! unpacked from a topic's payload or an RPC request.

use std::sync::Arc;

use eventforge_core::message::Message;
use serde_json::{json, Map, Value};

/// Arguments of one call before they are bound to the function.
pub(crate) struct Invocation {
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
    // What observers see as the arguments.
    pub(crate) shown: Value,
    pub(crate) message: Option<Arc<Message>>,
}

impl Invocation {
    /// A payload unpacked per the protocol: an object gives named
    /// arguments, an array positional ones, anything else one argument.
    pub(crate) fn from_payload(payload: &Value, message: Option<Arc<Message>>) -> Self {
        let (args, kwargs) = match payload {
            Value::Object(named) => (Vec::new(), named.clone()),
            Value::Array(positional) => (positional.clone(), Map::new()),
            single => (vec![single.clone()], Map::new()),
        };
        Invocation {
            args,
            kwargs,
            shown: payload.clone(),
            message,
        }
    }

    /// Positional and named arguments of an RPC request.
    pub(crate) fn from_request(
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        message: Arc<Message>,
    ) -> Self {
        let shown = match (args.is_empty(), kwargs.is_empty()) {
            (_, true) => Value::Array(args.clone()),
            (true, false) => Value::Object(kwargs.clone()),
            (false, false) => json!({"args": args.clone(), "kwargs": kwargs.clone()}),
        };
        Invocation {
            args,
            kwargs,
            shown,
            message: Some(message),
        }
    }
}
