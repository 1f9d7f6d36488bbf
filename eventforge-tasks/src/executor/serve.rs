//! Serving an executor's functions over RPC: the request-reply row, where a
//! remote call runs on a thread or in a child process of this executor.

use std::sync::Arc;

use eventforge_rpc::{HandlerError, IncomingCall, RpcServer};
use serde_json::Value;

use super::{Executor, TaskStatus};

impl Executor {
    /// Registers `method` on `server` as the function `function` of this
    /// executor's registry: each call runs on the executor (a thread or a
    /// child process), away from the server's tasks. The function receives
    /// the positional `args` as a JSON array, or the `kwargs` object when
    /// only named arguments are given (both at once is a `TypeError`).
    ///
    /// ```
    /// use eventforge_core::MessageQueue;
    /// use eventforge_rpc::{RpcClient, RpcServer};
    /// use eventforge_tasks::{Executor, ExecutorMode, FunctionRegistry};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut registry = FunctionRegistry::new();
    /// // Positional arguments arrive as an array.
    /// registry.register_typed("square", |(n,): (i64,)| Ok::<_, String>(n * n));
    /// let executor = Executor::builder(ExecutorMode::Thread).registry(registry).build();
    ///
    /// let queue = MessageQueue::memory();
    /// let server = RpcServer::new(queue.clone());
    /// executor.serve_on(&server, "square", "square");
    /// server.serve().await?;
    /// let squared: i64 = RpcClient::new(queue).call("square", (7,)).await?;
    /// assert_eq!(squared, 49);
    /// # server.stop().await;
    /// # executor.stop(true).await;
    /// # Ok(()) }
    /// ```
    pub fn serve_on(
        &self,
        server: &RpcServer,
        method: impl Into<String>,
        function: impl Into<String>,
    ) -> &Self {
        let executor = self.clone();
        let function: Arc<str> = function.into().into();
        server.register_raw(method, move |call: IncomingCall| {
            let executor = executor.clone();
            let function = Arc::clone(&function);
            async move {
                let request = call.request;
                let input = match (request.args.is_empty(), request.kwargs.is_empty()) {
                    (_, true) => Value::Array(request.args),
                    (true, false) => Value::Object(request.kwargs),
                    (false, false) => {
                        return Err(HandlerError::type_error(format!(
                            "{}() takes positional or named arguments, not both",
                            request.method
                        )))
                    }
                };
                let result = executor
                    .run(&function, input)
                    .await
                    .map_err(|e| HandlerError::new("ExecutorError", e.to_string()))?;
                match result.status {
                    TaskStatus::Completed => Ok(result.value),
                    _ => Err(HandlerError::new(
                        result.error_type.unwrap_or_else(|| "Error".to_owned()),
                        result.error.unwrap_or_default(),
                    )),
                }
            }
        });
        self
    }
}
