//! Message handlers for [`MessageQueue::on`](crate::MessageQueue::on):
//! async or sync closures taking the message.

use std::fmt::Display;
use std::future::{ready, Future, Ready};

use futures::future::{FutureExt, Map};

/// What a handler may return: `()` or a `Result` whose error can be displayed.
///
/// An `Err` is reported through `tracing` and counted; it never stops the
/// queue or other handlers.
pub trait HandlerOutput {
    /// `Ok` or the error's text.
    fn into_outcome(self) -> Result<(), String>;
}

impl HandlerOutput for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> HandlerOutput for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Marker for handlers that are async closures (`|msg| async move { .. }`).
#[derive(Debug)]
pub enum AsyncHandler {}

/// Marker for handlers that are plain closures (`|msg| { .. }`). They run on
/// the handler's task and must not block; move blocking work to
/// `tokio::task::spawn_blocking`.
#[derive(Debug)]
pub enum SyncHandler {}

/// What a handler closure returns: a future (async handlers) or a
/// [`HandlerOutput`] directly (sync handlers). The `Kind` parameter only
/// tells the two apart; it is inferred.
///
/// ```
/// use eventforge_core::MessageQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let queue = MessageQueue::memory();
/// queue.on("audit.*", |msg| println!("sync: {}", msg.topic)).await?;
/// queue.on("audit.*", |msg| async move {
///     println!("async: {}", msg.topic);
///     Ok::<(), std::io::Error>(())
/// }).await?;
/// # queue.close().await?;
/// # Ok(()) }
/// ```
pub trait HandlerReturn<Kind>: Send + 'static {
    /// The future of one call.
    type Future: Future<Output = Result<(), String>> + Send + 'static;

    /// Turns the closure's return value into the future the queue awaits.
    fn into_future(self) -> Self::Future;
}

type Outcome<R> = fn(R) -> Result<(), String>;

impl<Fut> HandlerReturn<AsyncHandler> for Fut
where
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    type Future = Map<Fut, Outcome<Fut::Output>>;

    fn into_future(self) -> Self::Future {
        self.map(HandlerOutput::into_outcome as Outcome<Fut::Output>)
    }
}

impl<R> HandlerReturn<SyncHandler> for R
where
    R: HandlerOutput + Send + 'static,
{
    type Future = Ready<Result<(), String>>;

    fn into_future(self) -> Self::Future {
        ready(self.into_outcome())
    }
}
