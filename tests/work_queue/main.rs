//! The work-queue suite, run against every work-queue backend.
//!
//! Each `work_queue_suite!` line below makes one test per behaviour of
//! `suite.rs` for one backend. To add a backend, add a line with a closure
//! that builds its [`suite::Backends`]. Broker suites read `REDIS_URL` and
//! `NATS_URL` (loopback defaults).

#[macro_use]
mod suite;

#[allow(unused_imports)]
use std::sync::Arc;

#[allow(unused_imports)]
use suite::Backends;

// One store shared by every "connection": memory lives in the process.
work_queue_suite!(memory, || async {
    Backends::shared(Arc::new(eventforge::work::MemoryWorkBackend::new()))
});

// A new client per connection, as separate consumer processes would have.
#[cfg(feature = "redis")]
work_queue_suite!(redis_streams, || async {
    Backends::connecting(|| {
        Box::pin(async {
            let url = support::redis_url();
            match eventforge::transports::redis::RedisStreamsBackend::connect(&url).await {
                Ok(backend) => Arc::new(backend) as Arc<dyn eventforge::work::WorkBackend>,
                Err(error) => panic!("Redis at {url}: {error} (start it with scripts/brokers.sh)"),
            }
        })
    })
});

#[cfg(feature = "nats")]
work_queue_suite!(jetstream, || async {
    Backends::connecting(|| {
        Box::pin(async {
            let url = support::nats_url();
            match eventforge::transports::nats::JetStreamBackend::connect(&url).await {
                Ok(backend) => Arc::new(backend) as Arc<dyn eventforge::work::WorkBackend>,
                Err(error) => panic!("NATS at {url}: {error} (start it with scripts/brokers.sh)"),
            }
        })
    })
});

#[path = "../support/mod.rs"]
mod support;

/// Lifecycle events on a broker reach a subscriber in another process (here,
/// another connection): the queue's events go wherever its `events` queue
/// publishes, whatever stores the jobs.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn events_cross_the_broker(
    publisher: Arc<dyn eventforge::Transport>,
    watcher: Arc<dyn eventforge::Transport>,
) {
    use eventforge::work::JobEventPayload;
    use eventforge::work::WorkQueue;
    use eventforge::MessageQueue;
    use futures::StreamExt;
    use std::time::Duration;

    let topic = format!("wq.remote.{}", &eventforge::new_id()[..8]);
    let watcher = MessageQueue::from_shared(watcher);
    let mut events = watcher
        .subscribe(format!("_events.{topic}.**").as_str())
        .await
        .unwrap();
    let queue = WorkQueue::builder(eventforge::work::MemoryWorkBackend::new())
        .events(MessageQueue::from_shared(publisher))
        .summary_interval(None)
        .build();
    let id = queue.enqueue(&topic, "remote").await.unwrap();
    let job = queue
        .dequeue(&topic, "default", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the job just enqueued");
    job.ack().await.unwrap();
    let mut steps = Vec::new();
    while steps.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event within 20 s")
            .expect("the subscription is open");
        let event: JobEventPayload = message.payload_as().unwrap();
        assert_eq!(event.job_id, id);
        steps.push(event.event.to_string());
    }
    assert_eq!(steps, ["enqueue_job", "start_job", "complete_job"]);
    queue.close().await.unwrap();
    watcher.close().await.unwrap();
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn events_cross_nats() {
    events_cross_the_broker(support::nats().await, support::nats().await).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn events_cross_redis() {
    events_cross_the_broker(support::redis().await, support::redis().await).await;
}
