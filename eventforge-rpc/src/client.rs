//! `RpcClient`: the remote request-reply corner of the 2x2, calling side.
//!
//! It publishes requests on `<service>.request` over any
//! [`Transport`](eventforge_core::Transport) and waits for the reply on
//! `_rpc_reply.<request id>`, exactly as a Python eventforge client does.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::args::IntoArgs;
use crate::error::RpcError;
use crate::replies::{ReplyDemux, ReplyRouting};
use crate::wire::{
    fresh_id, request_topic, RpcResponse, DEFAULT_SERVICE, METHOD_NOT_FOUND, RPC_REPLY_PREFIX,
};
use eventforge_core::error::Error;
use eventforge_core::message::Message;
use eventforge_core::queue::MessageQueue;
use eventforge_core::sync::lock;
use eventforge_core::transport::Transport;

/// The per-call deadline when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One call, before it is sent: method, arguments and deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcCall {
    /// The method to call.
    pub method: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Named arguments.
    pub kwargs: Map<String, Value>,
    /// The deadline; `None` takes the client's default.
    pub timeout: Option<Duration>,
}

impl RpcCall {
    /// A call of `method` without arguments.
    pub fn new(method: impl Into<String>) -> Self {
        RpcCall {
            method: method.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            timeout: None,
        }
    }
}

/// Anything that carries out [`RpcCall`]s: an [`RpcClient`], a
/// [`RoundRobinRpcClient`](crate::RoundRobinRpcClient), a client
/// [`with_retry`](crate::retry::with_retry). Each of them also offers the
/// typed `call` and `method` surface.
#[async_trait]
pub trait RpcCaller: Send + Sync {
    /// Carries out `call`; the result as JSON.
    async fn invoke(&self, call: RpcCall) -> Result<Value, RpcError>;

    /// False when this caller knows it cannot reach anybody (its transport
    /// is closed). Pools skip callers that are not available.
    fn is_available(&self) -> bool {
        true
    }
}

#[async_trait]
impl<C: RpcCaller + ?Sized> RpcCaller for Arc<C> {
    async fn invoke(&self, call: RpcCall) -> Result<Value, RpcError> {
        (**self).invoke(call).await
    }

    fn is_available(&self) -> bool {
        (**self).is_available()
    }
}

/// Builds one call: positional and named arguments, a deadline.
///
/// ```
/// # use eventforge_rpc::{HandlerError, Kwargs, RpcClient, RpcServer};
/// # use eventforge_core::MessageQueue;
/// # use std::time::Duration;
/// # #[derive(serde::Deserialize)] struct Greet { name: String, punct: String }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let queue = MessageQueue::memory();
/// # let server = RpcServer::new(queue.clone());
/// # server.register("greet", |Kwargs(g): Kwargs<Greet>| Ok::<_, HandlerError>(format!("hi {}{}", g.name, g.punct)));
/// # server.serve().await?;
/// let client = RpcClient::new(queue.clone());
/// let text: String = client
///     .method("greet")
///     .arg("bob")
///     .kwarg("punct", "!")
///     .timeout(Duration::from_secs(2))
///     .call()
///     .await?;
/// assert_eq!(text, "hi bob!");
/// # Ok(()) }
/// ```
#[must_use = "a call builder does nothing until `.call()` is awaited"]
pub struct CallBuilder<'a, C: RpcCaller + ?Sized> {
    caller: &'a C,
    call: RpcCall,
    // The first argument that could not be encoded; reported by `call`.
    error: Option<serde_json::Error>,
}

impl<C: RpcCaller + ?Sized> fmt::Debug for CallBuilder<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallBuilder")
            .field("call", &self.call)
            .finish()
    }
}

impl<'a, C: RpcCaller + ?Sized> CallBuilder<'a, C> {
    /// A builder for `method` on `caller`.
    pub fn new(caller: &'a C, method: impl Into<String>) -> Self {
        CallBuilder {
            caller,
            call: RpcCall::new(method),
            error: None,
        }
    }

    /// Appends one positional argument.
    pub fn arg(mut self, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(value) => self.call.args.push(value),
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
        self
    }

    /// Appends positional arguments from a tuple (or a `Vec<Value>`).
    pub fn args(mut self, args: impl IntoArgs) -> Self {
        match args.into_args() {
            Ok(args) => self.call.args.extend(args),
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
        self
    }

    /// Adds (or replaces) a named argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(value) => {
                self.call.kwargs.insert(name.into(), value);
            }
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
        self
    }

    /// The deadline of this call (default: the caller's, 30 s for a client).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.call.timeout = Some(timeout);
        self
    }

    /// Sends the call and decodes its result as `R`.
    pub async fn call<R: DeserializeOwned>(self) -> Result<R, RpcError> {
        let method = self.call.method.clone();
        let value = self.call_value().await?;
        decode_result(&method, value)
    }

    /// Sends the call; its result as JSON.
    pub async fn call_value(self) -> Result<Value, RpcError> {
        if let Some(source) = self.error {
            return Err(RpcError::Encode {
                method: self.call.method,
                source,
            });
        }
        self.caller.invoke(self.call).await
    }
}

/// Calls `method` with positional `args` on `caller`, decoding the result.
pub(crate) async fn call_typed<C, R>(
    caller: &C,
    method: &str,
    args: impl IntoArgs,
) -> Result<R, RpcError>
where
    C: RpcCaller + ?Sized,
    R: DeserializeOwned,
{
    let args = args.into_args().map_err(|source| RpcError::Encode {
        method: method.to_owned(),
        source,
    })?;
    let mut call = RpcCall::new(method);
    call.args = args;
    let value = caller.invoke(call).await?;
    decode_result(method, value)
}

fn decode_result<R: DeserializeOwned>(method: &str, value: Value) -> Result<R, RpcError> {
    serde_json::from_value(value).map_err(|source| RpcError::Decode {
        method: method.to_owned(),
        source,
    })
}

/// Calls methods of one service. Cheap to clone; clones share the transport.
///
/// Every call is an independent request on the transport, matched to its
/// reply by the request id, so any number of calls may be in flight at
/// once (see [`ReplyRouting`] for how replies are received). A reply
/// arriving after its call timed out finds no call waiting and is dropped;
/// nothing is kept for it.
///
/// ```
/// use eventforge_rpc::{HandlerError, RpcClient, RpcError, RpcServer};
/// use eventforge_core::MessageQueue;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = MessageQueue::memory();
/// let client = RpcClient::new(queue.clone()).service("math").timeout(Duration::from_secs(1));
///
/// // Nobody serves "math" yet: the memory transport says so at once.
/// let err = client.call::<i64>("add", (1, 2)).await.unwrap_err();
/// assert!(matches!(err, RpcError::NoResponders { .. }));
///
/// let server = RpcServer::new(queue.clone()).service("math");
/// server.register("add", |a: i64, b: i64| Ok::<_, HandlerError>(a + b));
/// server.serve().await?;
/// assert_eq!(client.call::<i64>("add", (1, 2)).await?, 3);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    transport: Arc<dyn Transport>,
    // Shared by clones; `<service>.request` is made once, not per call.
    service: Arc<str>,
    request_topic: Arc<str>,
    timeout: Duration,
    routing: ReplyRouting,
    // The transport's shared reply subscription, looked up once per client
    // (and again if it died with the runtime that ran it).
    demux: Arc<Mutex<Option<Arc<ReplyDemux>>>>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("transport", &self.transport.name())
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .field("routing", &self.routing)
            .finish()
    }
}

impl RpcClient {
    /// A client of the default service `rpc` over `queue`'s transport.
    pub fn new(queue: MessageQueue) -> Self {
        Self::from_transport(Arc::clone(queue.transport()))
    }

    /// A client of the default service `rpc` over `transport`.
    pub fn from_transport(transport: Arc<dyn Transport>) -> Self {
        RpcClient {
            routing: ReplyRouting::for_transport(&*transport),
            transport,
            service: DEFAULT_SERVICE.into(),
            request_topic: request_topic(DEFAULT_SERVICE).into(),
            timeout: DEFAULT_TIMEOUT,
            demux: Arc::default(),
        }
    }

    /// Calls `service` instead (requests go to `<service>.request`).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        let service = service.into();
        self.request_topic = request_topic(&service).into();
        self.service = service.into();
        self
    }

    /// The deadline of calls that do not set their own (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How replies reach their calls (default: one shared subscription per
    /// transport, see [`ReplyRouting`]).
    pub fn reply_routing(mut self, routing: ReplyRouting) -> Self {
        self.routing = routing;
        self
    }

    /// The service called.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Calls `method` with positional `args` (a tuple, `()` or a
    /// `Vec<Value>`) and decodes the result as `R`.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl IntoArgs,
    ) -> Result<R, RpcError> {
        call_typed(self, method, args).await
    }

    /// A builder for a call with named arguments or its own deadline.
    pub fn method(&self, method: impl Into<String>) -> CallBuilder<'_, Self> {
        CallBuilder::new(self, method)
    }

    fn request_message(&self, call: RpcCall, timeout: Duration) -> (Message, String) {
        let id = fresh_id();
        let mut payload = Map::new();
        payload.insert("id".into(), Value::String(id.clone()));
        payload.insert("method".into(), Value::String(call.method));
        payload.insert("args".into(), Value::Array(call.args));
        payload.insert("kwargs".into(), Value::Object(call.kwargs));
        let seconds = serde_json::Number::from_f64(timeout.as_secs_f64()).map(Value::Number);
        payload.insert("timeout".into(), seconds.unwrap_or(Value::Null));
        let message = Message::from_value(&*self.request_topic, Value::Object(payload))
            .with_reply_to([RPC_REPLY_PREFIX, &id].concat())
            .with_correlation_id(id.clone());
        (message, id)
    }
}

#[async_trait]
impl RpcCaller for RpcClient {
    async fn invoke(&self, call: RpcCall) -> Result<Value, RpcError> {
        let timeout = call.timeout.unwrap_or(self.timeout);
        let method = call.method.clone();
        let (message, request_id) = self.request_message(call, timeout);
        tracing::trace!(service = %self.service, %method, %request_id, "rpc call");
        let reply = match self.routing {
            ReplyRouting::PerCall => self.transport.request(message, timeout).await,
            ReplyRouting::Shared => self.send_and_wait(message, &request_id, timeout).await,
        }
        .map_err(|error| match error {
            Error::Timeout { .. } => RpcError::Timeout {
                service: self.service.to_string(),
                method: method.clone(),
                timeout,
            },
            Error::NoResponders { .. } => RpcError::NoResponders {
                service: self.service.to_string(),
            },
            Error::Closed(_) => RpcError::Closed,
            source => RpcError::Transport {
                method: method.clone(),
                source,
            },
        })?;
        // The reply usually reached this call alone: then its payload is
        // moved out rather than copied.
        let decoded = match Arc::try_unwrap(reply) {
            Ok(reply) => serde_json::from_value::<RpcResponse>(reply.payload),
            Err(shared) => RpcResponse::deserialize_from(&shared.payload),
        };
        let response = decoded.map_err(|source| RpcError::Decode {
            method: method.clone(),
            source,
        })?;
        into_result(method, response)
    }

    fn is_available(&self) -> bool {
        !self.transport.is_closed()
    }
}

impl RpcClient {
    /// Sends `message` and waits for its reply through the shared reply
    /// subscription of the transport.
    async fn send_and_wait(
        &self,
        message: Message,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Arc<Message>, Error> {
        if self.transport.is_closed() {
            return Err(Error::Closed("transport"));
        }
        if self.transport.has_subscribers(&message.topic) == Some(false) {
            return Err(Error::NoResponders {
                topic: message.topic,
            });
        }
        let demux = self.demux().await?;
        // Registered before sending, so that even an immediate reply finds its call.
        let reply = demux.wait_for(request_id)?;
        self.transport.send(message).await?;
        reply
            .wait(timeout, || {
                format!("a reply on {RPC_REPLY_PREFIX}{request_id}")
            })
            .await
    }

    async fn demux(&self) -> Result<Arc<ReplyDemux>, Error> {
        let known = lock(&self.demux).clone();
        match known {
            Some(demux) if demux.is_alive() => Ok(demux),
            _ => {
                let demux = ReplyDemux::of(&self.transport).await?;
                *lock(&self.demux) = Some(Arc::clone(&demux));
                Ok(demux)
            }
        }
    }

    /// Calls waiting for a reply on this client's transport (shared reply
    /// routing only; 0 otherwise). Zero once every call has returned: a
    /// timed-out call leaves nothing behind.
    pub fn calls_waiting(&self) -> usize {
        lock(&self.demux)
            .as_ref()
            .map_or(0, |demux| demux.waiting())
    }
}

/// The result of a response, or the error it carries.
fn into_result(method: String, response: RpcResponse) -> Result<Value, RpcError> {
    if !response.is_error() {
        return Ok(response.result);
    }
    let message = response.error.unwrap_or_default();
    match response.error_type {
        Some(kind) if kind == METHOD_NOT_FOUND => Err(RpcError::MethodNotFound { method, message }),
        error_type => Err(RpcError::Remote {
            error_type: error_type.unwrap_or_else(|| "Error".to_owned()),
            message,
        }),
    }
}

impl RpcResponse {
    /// Reads a response from a message payload, without copying the payload.
    pub fn deserialize_from(payload: &Value) -> Result<Self, serde_json::Error> {
        serde::Deserialize::deserialize(payload)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_canonical_uuid_v4() {
        let id = super::fresh_id();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.hyphenated().to_string(), id);
    }
}
