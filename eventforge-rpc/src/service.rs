//! RPC callers as [`tower::Service`]s, so tower's layers (timeouts,
//! concurrency limits, load shedding, metrics) stack on them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;

use crate::client::{RpcCall, RpcCaller, RpcClient};
use crate::error::RpcError;
use crate::retry::Retrying;
use crate::round_robin::RoundRobinRpcClient;

/// The future of one call made through [`tower::Service`].
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;

macro_rules! rpc_service {
    ($(#[$doc:meta])* impl[$($generics:tt)*] for $ty:ty) => {
        $(#[$doc])*
        impl<$($generics)*> tower::Service<RpcCall> for $ty {
            type Response = Value;
            type Error = RpcError;
            type Future = CallFuture;

            /// Always ready: calls are bounded by the server and the transport.
            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), RpcError>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, call: RpcCall) -> CallFuture {
                let caller = self.clone();
                Box::pin(async move { caller.invoke(call).await })
            }
        }
    };
}

rpc_service!(
    /// An [`RpcClient`] is a tower service from [`RpcCall`] to the JSON result.
    ///
    /// ```
    /// use tower::Service;
    /// use eventforge_rpc::{HandlerError, RpcCall, RpcClient, RpcServer};
    /// use eventforge_core::MessageQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = MessageQueue::memory();
    /// let server = RpcServer::new(queue.clone());
    /// server.register("add", |a: i64, b: i64| Ok::<_, HandlerError>(a + b));
    /// server.serve().await?;
    /// let mut service = RpcClient::new(queue.clone());
    /// let mut call = RpcCall::new("add");
    /// call.args = vec![1.into(), 2.into()];
    /// assert_eq!(Service::call(&mut service, call).await?, 3);
    /// # Ok(()) }
    /// ```
    impl[] for RpcClient
);
rpc_service!(
    /// A pool is a tower service too.
    impl[C: RpcCaller + 'static] for RoundRobinRpcClient<C>
);
rpc_service!(
    /// A retrying caller is a tower service too.
    impl[C: RpcCaller + Clone + 'static] for Retrying<C>
);
