//! Triggering a task from its topic on a queue, and serving it over RPC.

use std::sync::Arc;

use super::{Invocation, Task};
use eventforge_core::error::Result;
use eventforge_core::message::Message;
use eventforge_core::queue::{HandlerId, MessageQueue};
use eventforge_rpc::{IncomingCall, RpcServer};

impl Task {
    /// Runs the task for every message published on its topic of `queue`;
    /// the payload is unpacked into arguments (object: named, array:
    /// positional, else the single argument). A payload that does not fit
    /// the function fails the call with `error_type` `"TypeError"`.
    ///
    /// Messages are handled one at a time, in arrival order. The first
    /// queue a task is bound to is where `publish_result` publishes, for
    /// every call path. Unbind with [`MessageQueue::unsubscribe`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventforge_rpc::HandlerError;
    /// use eventforge_tasks::Task;
    /// use eventforge_core::MessageQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = MessageQueue::memory();
    /// let double = Task::builder("double", |x: i64| Ok::<_, HandlerError>(x * 2))
    ///     .topic("numbers")
    ///     .publish_result(true)
    ///     .build();
    /// double.bind(&queue).await?;
    /// let mut results = queue.subscribe("numbers.success").await?;
    /// queue.publish("numbers", 21).await?;
    /// let done = results.recv().await.unwrap();
    /// assert_eq!(done.payload["result"], 42);
    /// # queue.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind(&self, queue: &MessageQueue) -> Result<HandlerId> {
        // Only the first queue receives results; later binds keep it.
        let _ = self.inner.queue.set(queue.clone());
        let task = self.clone();
        queue
            .on(self.topic(), move |message: Arc<Message>| {
                let task = task.clone();
                async move {
                    let invocation =
                        Invocation::from_payload(&message.payload, Some(Arc::clone(&message)));
                    // The outcome went to the observers (and the result topics).
                    let _ = task.run(invocation).await;
                }
            })
            .await
    }

    /// Registers the task on `server` as the method named like the task:
    /// each remote call runs the task's full lifecycle (instances,
    /// observers, callbacks, publishing). Positional `args` bind in order;
    /// `kwargs` bind by parameter name when the names are known, else to a
    /// function taking one [`Kwargs<T>`](eventforge_rpc::Kwargs).
    pub fn serve_on(&self, server: &RpcServer) {
        let task = self.clone();
        server.register_raw(self.name().to_owned(), move |call: IncomingCall| {
            let task = task.clone();
            async move {
                let request = call.request;
                task.run(Invocation::from_request(
                    request.args,
                    request.kwargs,
                    call.message,
                ))
                .await
            }
        });
    }
}
