//! The RPC payloads exactly as the protocol puts them on the wire.
//!
//! A request travels as the payload of a [`Message`] on
//! `<service>.request`; its response as the payload of a message on the
//! request's `reply_to` (`_rpc_reply.<request id>`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use eventforge_core::message::{new_id, Message};

/// Prefix of the reply topic of an RPC request: `_rpc_reply.<request id>`.
pub const RPC_REPLY_PREFIX: &str = "_rpc_reply.";

/// The service name used when none is given.
pub const DEFAULT_SERVICE: &str = "rpc";

/// The topic a service's requests are published on: `<service>.request`.
pub fn request_topic(service: &str) -> String {
    format!("{service}.request")
}

/// Error type sent when a payload is not an RPC request.
pub const VALIDATION_ERROR: &str = "ValidationError";
/// Error type sent for a method nobody registered.
pub const METHOD_NOT_FOUND: &str = "MethodNotFound";
/// Error type sent when arguments do not fit the handler (count, name or type).
pub const TYPE_ERROR: &str = "TypeError";
/// Error type sent when a handler panicked.
pub const PANIC: &str = "Panic";

/// The payload of an RPC request:
/// `{"id", "method", "args": [...], "kwargs": {...}, "timeout": seconds|null}`.
///
/// ```
/// use eventforge_rpc::RpcRequest;
///
/// let request = RpcRequest::new("add").with_args(vec![10.into(), 20.into()]);
/// let json = serde_json::to_value(&request)?;
/// assert_eq!(json["method"], "add");
/// assert_eq!(json["args"], serde_json::json!([10, 20]));
/// assert_eq!(json["kwargs"], serde_json::json!({}));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Request id (UUID v4); the response's `request_id` repeats it.
    /// Missing on input, it is taken from the message's correlation id.
    #[serde(default)]
    pub id: String,
    /// Name of the method to call.
    pub method: String,
    /// Positional arguments.
    #[serde(default, deserialize_with = "null_as_default")]
    pub args: Vec<Value>,
    /// Named arguments.
    #[serde(default, deserialize_with = "null_as_default")]
    pub kwargs: Map<String, Value>,
    /// How long the caller waits, in seconds; `null` when unbounded.
    #[serde(default)]
    pub timeout: Option<f64>,
}

impl RpcRequest {
    /// A request for `method` with a fresh id, no arguments and no timeout.
    pub fn new(method: impl Into<String>) -> Self {
        RpcRequest {
            id: fresh_id(),
            method: method.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            timeout: None,
        }
    }

    /// Sets the positional arguments.
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Sets the named arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// Sets the timeout the caller waits for.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout.as_secs_f64());
        self
    }

    /// The request message for `service`: topic `<service>.request`,
    /// `reply_to = "_rpc_reply.<id>"`, `correlation_id = id`.
    pub fn into_message(self, service: &str) -> Message {
        let reply_to = format!("{RPC_REPLY_PREFIX}{}", self.id);
        let correlation_id = self.id.clone();
        // The payload is a plain struct: turning it into JSON cannot fail.
        let payload = serde_json::to_value(&self).unwrap_or(Value::Null);
        Message::from_value(request_topic(service), payload)
            .with_reply_to(reply_to)
            .with_correlation_id(correlation_id)
    }
}

/// The payload of an RPC response:
/// `{"id", "request_id", "result", "error", "error_type"}`.
///
/// ```
/// use eventforge_rpc::RpcResponse;
///
/// let ok = RpcResponse::success("req-1", 30.into());
/// assert_eq!(ok.result, 30);
/// let failed = RpcResponse::failure("req-1", "ZeroDivisionError", "division by zero");
/// assert_eq!(failed.error.as_deref(), Some("division by zero"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcResponse {
    /// Response id (UUID v4).
    #[serde(default = "new_id")]
    pub id: String,
    /// Id of the request this answers.
    #[serde(default)]
    pub request_id: String,
    /// The method's return value; `null` on error.
    #[serde(default)]
    pub result: Value,
    /// Error text, or `null` on success.
    #[serde(default)]
    pub error: Option<String>,
    /// Short error class name (`"MethodNotFound"`, `"ValueError"`, ...), or `null`.
    #[serde(default)]
    pub error_type: Option<String>,
}

impl RpcResponse {
    /// A successful response carrying `result`.
    pub fn success(request_id: impl Into<String>, result: Value) -> Self {
        RpcResponse {
            id: fresh_id(),
            request_id: request_id.into(),
            result,
            error: None,
            error_type: None,
        }
    }

    /// An error response.
    pub fn failure(
        request_id: impl Into<String>,
        error_type: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        RpcResponse {
            id: fresh_id(),
            request_id: request_id.into(),
            result: Value::Null,
            error: Some(error.into()),
            error_type: Some(error_type.into()),
        }
    }

    /// The response as a message payload; moves its fields instead of
    /// copying them, which matters on the server's hot path.
    pub fn into_payload(self) -> Value {
        let text = |field: Option<String>| field.map_or(Value::Null, Value::String);
        let mut payload = Map::new();
        payload.insert("id".into(), Value::String(self.id));
        payload.insert("request_id".into(), Value::String(self.request_id));
        payload.insert("result".into(), self.result);
        payload.insert("error".into(), text(self.error));
        payload.insert("error_type".into(), text(self.error_type));
        Value::Object(payload)
    }

    /// True when the response carries an error.
    pub fn is_error(&self) -> bool {
        self.error.is_some() || self.error_type.is_some()
    }
}

/// A fresh UUID v4 in canonical form, like [`new_id`] but written without
/// the formatting machinery: RPC makes two per call.
pub(crate) fn fresh_id() -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
