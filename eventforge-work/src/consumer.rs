//! Push consumers: a loop per consumer that receives, runs the handler and
//! settles, with backoff on backend errors and a clean stop.

use eventforge_core::error::Error;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use eventforge_core::error::BoxError;
use eventforge_core::message::Message;
use eventforge_core::sync::panic_text;

use crate::job::Nack;
use crate::queue::Inner;

/// How long a push consumer waits on the backend before looking at its stop
/// signal again.
const POLL: Duration = Duration::from_secs(1);
/// First pause after a backend error before a push consumer tries again;
/// it doubles with each error in a row, up to `MAX_ERROR_PAUSE`.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(5);

/// A running push consumer made by [`WorkQueue::consume`](crate::WorkQueue::consume).
///
/// Dropping the handle leaves the consumer running until the queue closes;
/// [`stop`](Self::stop) ends it.
#[derive(Debug)]
pub struct Consumer {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) aborts: Vec<tokio::task::AbortHandle>,
}

impl Consumer {
    /// The consumer's name as the backend knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic it consumes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Stops taking jobs and waits until the jobs in hand are settled.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }

    /// Stops at once, as a crash would: jobs in hand are left unsettled and
    /// handed out again after the visibility timeout. For fault tests and
    /// emergencies; prefer [`stop`](Self::stop).
    pub async fn abort(self) {
        self.stop.cancel();
        for handle in &self.aborts {
            handle.abort();
        }
        self.tasks.wait().await;
    }
}

/// One receive-handle-settle loop of a push consumer.
pub(crate) struct ConsumerLoop {
    pub(crate) inner: Arc<Inner>,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) stop: CancellationToken,
}

impl ConsumerLoop {
    pub(crate) async fn run<F, Fut, E>(self, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let mut pause = ERROR_PAUSE;
        loop {
            let received = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                received = inner.backend.receive(
                    &inner.options, &self.topic, &self.group, &self.consumer, POLL,
                ) => received,
            };
            let delivery = match received {
                Ok(Some(delivery)) => delivery,
                Ok(None) => {
                    pause = ERROR_PAUSE;
                    continue;
                }
                Err(Error::Closed(_)) => return,
                Err(error) => {
                    tracing::warn!(
                        topic = %self.topic,
                        group = %self.group,
                        %error,
                        "work queue consumer could not receive; trying again in {pause:?}"
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_ERROR_PAUSE);
                    continue;
                }
            };
            pause = ERROR_PAUSE;
            let Some(mut job) = inner.start(delivery).await else {
                continue;
            };
            let state = job.state.take().expect("a started job has its state");
            // Turned into owned, sendable values before anything else is awaited.
            let outcome: std::result::Result<(), (String, Nack)> =
                // The call itself sits inside the guarded future: a sync
                // part of the handler may panic too.
                match AssertUnwindSafe(async { handler(state.message.clone()).await })
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(failure(error.into(), inner.retry_delay)),
                    Err(panic) => Err((
                        format!("handler panicked: {}", panic_text(panic.as_ref())),
                        retry_action(inner.retry_delay),
                    )),
                };
            let settled = match outcome {
                Ok(()) => inner.ack(state).await,
                Err((error, action)) => inner.fail(state, error, action).await,
            };
            if let Err(error) = settled {
                tracing::warn!(
                    topic = %self.topic,
                    group = %self.group,
                    %error,
                    "job not settled; it comes back after the visibility timeout"
                );
            }
        }
    }
}

/// The text and the outcome of a handler's error: its own [`Nack`] when it
/// returned one, else a retry.
fn failure(error: BoxError, retry_delay: Duration) -> (String, Nack) {
    match error.downcast::<Nack>() {
        Ok(nack) => (nack.to_string(), *nack),
        Err(error) => (error.to_string(), retry_action(retry_delay)),
    }
}

fn retry_action(delay: Duration) -> Nack {
    if delay.is_zero() {
        Nack::Requeue
    } else {
        Nack::Delay(delay)
    }
}
