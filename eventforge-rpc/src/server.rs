//! `RpcServer`: the remote request-reply corner of the 2x2, serving side.
//!
//! It answers requests published on `<service>.request` over any
//! [`Transport`](eventforge_core::Transport), exactly as a Python eventforge server
//! does, so Python and Rust clients can call it alike.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::handler::{IncomingCall, Outcome, Raw, RawHandler, RpcHandler};
use crate::wire::{
    request_topic, RpcRequest, RpcResponse, DEFAULT_SERVICE, METHOD_NOT_FOUND, PANIC,
    VALIDATION_ERROR,
};
use eventforge_core::error::Result;
use eventforge_core::message::Message;
use eventforge_core::queue::MessageQueue;
use eventforge_core::subscription::SubscriptionId;
use eventforge_core::sync::panic_text;
use eventforge_core::sync::{lock, read, write};
use eventforge_core::topic::Pattern;

/// Requests handled at once when nothing else is set.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

type ErasedHandler =
    Arc<dyn Fn(IncomingCall) -> futures::future::BoxFuture<'static, Outcome> + Send + Sync>;

/// Counters of an [`RpcServer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RpcServerStats {
    /// Requests answered with a result.
    pub succeeded: u64,
    /// Requests answered with an error (any `error_type`).
    pub failed: u64,
    /// Handler calls that panicked (also counted in `failed`).
    pub panicked: u64,
}

/// Serves RPC methods on `<service>.request`.
///
/// Handlers are closures with typed arguments (see
/// [`RpcHandler`](crate::RpcHandler)). Requests run concurrently up to
/// [`max_concurrency`](Self::max_concurrency); a handler error, a wrong
/// argument, an unknown method or a panic is answered with an error
/// response, never by dropping the request. Dropping the server stops it.
///
/// ```
/// use eventforge_rpc::{HandlerError, RpcClient, RpcServer};
/// use eventforge_core::MessageQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = MessageQueue::memory();
/// let server = RpcServer::new(queue.clone()).service("math");
/// server.register("add", |a: i64, b: i64| async move { Ok::<_, HandlerError>(a + b) });
/// server.serve().await?;
///
/// let client = RpcClient::new(queue.clone()).service("math");
/// let sum: i64 = client.call("add", (10, 20)).await?;
/// assert_eq!(sum, 30);
/// server.stop().await;
/// # Ok(()) }
/// ```
pub struct RpcServer {
    inner: Arc<Inner>,
}

struct Inner {
    queue: MessageQueue,
    service: String,
    // Behind a lock so methods can be added while serving.
    handlers: RwLock<HashMap<String, ErasedHandler>>,
    // Bounds the requests in flight; a permit is taken before a request is read.
    limit: Mutex<Arc<Semaphore>>,
    max_concurrency: Mutex<usize>,
    // The serving loop and its subscription, while serving.
    running: tokio::sync::Mutex<Option<Running>>,
    // Lets `stop` wait until every accepted request has been answered.
    calls: TaskTracker,
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
}

struct Running {
    subscription: SubscriptionId,
    task: JoinHandle<()>,
}

impl Drop for RpcServer {
    /// Dropping the server stops serving at once: the request subscription
    /// ends, calls already running still answer. Use [`stop`](RpcServer::stop)
    /// to also answer what is buffered and wait for it.
    fn drop(&mut self) {
        if let Ok(mut running) = self.inner.running.try_lock() {
            if let Some(running) = running.take() {
                running.task.abort();
            }
        }
    }
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("service", &self.inner.service)
            .field("methods", &self.methods())
            .field("stats", &self.stats())
            .finish()
    }
}

impl RpcServer {
    /// A server for the default service `rpc` over `queue`.
    pub fn new(queue: MessageQueue) -> Self {
        Self::build(queue, DEFAULT_SERVICE.to_owned(), DEFAULT_MAX_CONCURRENCY)
    }

    fn build(queue: MessageQueue, service: String, max_concurrency: usize) -> Self {
        RpcServer {
            inner: Arc::new(Inner {
                queue,
                service,
                handlers: RwLock::default(),
                limit: Mutex::new(Arc::new(Semaphore::new(max_concurrency))),
                max_concurrency: Mutex::new(max_concurrency),
                running: tokio::sync::Mutex::new(None),
                calls: TaskTracker::new(),
                succeeded: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                panicked: AtomicU64::new(0),
            }),
        }
    }

    /// Serves `service` instead (requests on `<service>.request`). Methods
    /// registered so far are kept; set it before `serve`.
    pub fn service(self, service: impl Into<String>) -> Self {
        let max = *lock(&self.inner.max_concurrency);
        let server = Self::build(self.inner.queue.clone(), service.into(), max);
        for (name, handler) in read(&self.inner.handlers).iter() {
            write(&server.inner.handlers).insert(name.clone(), Arc::clone(handler));
        }
        server
    }

    /// Requests handled at once (at least 1, default 256); further requests
    /// wait in the subscription's buffer. Takes effect at the next `serve`.
    pub fn max_concurrency(self, requests: usize) -> Self {
        let requests = requests.max(1);
        *lock(&self.inner.max_concurrency) = requests;
        *lock(&self.inner.limit) = Arc::new(Semaphore::new(requests));
        self
    }

    /// The service name.
    pub fn service_name(&self) -> &str {
        &self.inner.service
    }

    /// The topic requests are read from: `<service>.request`.
    pub fn request_topic(&self) -> String {
        request_topic(&self.inner.service)
    }

    /// Registers (or replaces) `method`, served by `handler`: a closure whose
    /// arguments are deserialised from the request's positional `args`, or
    /// that takes one [`Kwargs<T>`](crate::Kwargs).
    pub fn register<H, Args>(&self, method: impl Into<String>, handler: H) -> &Self
    where
        H: RpcHandler<Args>,
        Args: 'static,
    {
        let handler = Arc::new(handler);
        self.insert(method.into(), Arc::new(move |call| handler.call(call)));
        self
    }

    /// Registers `method` with a handler that sees the whole call (request
    /// and message) and returns JSON.
    ///
    /// ```
    /// use eventforge_rpc::{IncomingCall, RpcServer};
    /// use eventforge_core::MessageQueue;
    ///
    /// let server = RpcServer::new(MessageQueue::memory());
    /// server.register_raw("echo", |call: IncomingCall| async move {
    ///     Ok(serde_json::json!({"args": call.request.args, "kwargs": call.request.kwargs}))
    /// });
    /// ```
    pub fn register_raw<F, Fut>(&self, method: impl Into<String>, handler: F) -> &Self
    where
        F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.register::<_, Raw>(method, RawHandler(handler))
    }

    fn insert(&self, method: String, handler: ErasedHandler) {
        write(&self.inner.handlers).insert(method, handler);
    }

    /// Removes `method`; false when it was not registered.
    pub fn unregister(&self, method: &str) -> bool {
        write(&self.inner.handlers).remove(method).is_some()
    }

    /// The registered method names, sorted.
    pub fn methods(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.inner.handlers).keys().cloned().collect();
        names.sort();
        names
    }

    /// Counters since creation.
    pub fn stats(&self) -> RpcServerStats {
        RpcServerStats {
            succeeded: self.inner.succeeded.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            panicked: self.inner.panicked.load(Ordering::Relaxed),
        }
    }

    /// Starts serving: returns once the request topic is subscribed, so a
    /// call made after `serve` returns is seen. Serving goes on in the
    /// background until [`stop`](Self::stop). Calling it while serving does
    /// nothing.
    ///
    /// Fails when the transport is closed.
    pub async fn serve(&self) -> Result<()> {
        let mut running = self.inner.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let topic = self.request_topic();
        let pattern = Pattern::parse(&topic)?;
        let mut subscription = self.inner.queue.transport().subscribe(pattern).await?;
        let id = subscription.id();
        let inner = Arc::clone(&self.inner);
        let limit = Arc::clone(&lock(&self.inner.limit));
        tracing::debug!(service = %inner.service, %topic, "rpc server serving");
        let task = tokio::spawn(async move {
            loop {
                // Take a permit first: at the limit, requests wait in the buffer.
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    break;
                };
                let Some(message) = subscription.recv().await else {
                    break;
                };
                let inner_for_call = Arc::clone(&inner);
                let mut call = Box::pin(async move {
                    inner_for_call.answer(message).await;
                    drop(permit);
                });
                // Most calls finish in their first poll (sync handlers, a
                // reply that goes straight out): run that poll here and only
                // give the calls that wait a task of their own.
                if futures::poll!(call.as_mut()).is_pending() {
                    inner.calls.spawn(call);
                }
            }
        });
        *running = Some(Running {
            subscription: id,
            task,
        });
        Ok(())
    }

    /// Stops serving: no new request is read, requests already received
    /// (handled or still buffered) are answered, then it returns.
    /// Idempotent; `serve` may be called again afterwards.
    pub async fn stop(&self) {
        let Some(running) = self.inner.running.lock().await.take() else {
            return;
        };
        // Ends the subscription's stream once what is buffered is read.
        self.inner
            .queue
            .transport()
            .unsubscribe(running.subscription)
            .await;
        let _ = running.task.await;
        self.inner.calls.close();
        self.inner.calls.wait().await;
        self.inner.calls.reopen();
        tracing::debug!(service = %self.inner.service, "rpc server stopped");
    }

    /// True while serving.
    pub async fn is_serving(&self) -> bool {
        self.inner.running.lock().await.is_some()
    }
}

impl Inner {
    /// Runs one request and sends its response (when a reply is expected).
    async fn answer(&self, message: Arc<Message>) {
        let response = self.execute(&message).await;
        if response.is_error() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        let Some(reply_to) = message.reply_to.as_deref() else {
            return;
        };
        let mut reply = Message::from_value(reply_to, response.into_payload());
        reply.correlation_id = message.correlation_id.clone();
        if let Err(error) = self.queue.transport().send(reply).await {
            tracing::warn!(
                service = %self.service,
                request_id = message.correlation_id.as_deref().unwrap_or_default(),
                reply_to,
                %error,
                "rpc response could not be sent"
            );
        }
    }

    async fn execute(&self, message: &Arc<Message>) -> RpcResponse {
        let fallback_id = || {
            message
                .correlation_id
                .clone()
                .unwrap_or_else(|| message.id.clone())
        };
        let mut request = match RpcRequest::deserialize_from(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(
                    service = %self.service,
                    message_id = %message.id,
                    %error,
                    "payload is not an rpc request"
                );
                return RpcResponse::failure(
                    fallback_id(),
                    VALIDATION_ERROR,
                    format!("invalid rpc request: {error}"),
                );
            }
        };
        if request.id.is_empty() {
            request.id = fallback_id();
        }
        let request_id = request.id.clone();
        let method = request.method.clone();
        let handler = read(&self.handlers).get(&method).cloned();
        let Some(handler) = handler else {
            tracing::debug!(service = %self.service, %method, %request_id, "method not found");
            return RpcResponse::failure(
                request_id,
                METHOD_NOT_FOUND,
                format!("Method not found: {method}"),
            );
        };
        let call = IncomingCall {
            request,
            message: Arc::clone(message),
        };
        // The handler is invoked inside the guarded future, so a panic while
        // extracting arguments or in a sync handler is caught as well.
        let outcome = AssertUnwindSafe(async move { handler(call).await })
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(result)) => RpcResponse::success(request_id, result),
            Ok(Err(error)) => {
                tracing::debug!(
                    service = %self.service,
                    %method,
                    %request_id,
                    error_type = error.error_type(),
                    error = error.message(),
                    "rpc method failed"
                );
                RpcResponse::failure(request_id, error.error_type(), error.message())
            }
            Err(panic) => {
                self.panicked.fetch_add(1, Ordering::Relaxed);
                let text = panic_text(&*panic).to_owned();
                tracing::error!(service = %self.service, %method, %request_id, panic = %text, "rpc method panicked");
                RpcResponse::failure(request_id, PANIC, format!("{method}() panicked: {text}"))
            }
        }
    }
}

impl RpcRequest {
    /// Reads a request from a message payload, without copying the payload.
    pub fn deserialize_from(payload: &Value) -> std::result::Result<Self, serde_json::Error> {
        serde::Deserialize::deserialize(payload)
    }
}
