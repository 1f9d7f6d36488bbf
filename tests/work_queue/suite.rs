//! The behaviours every work-queue backend promises, written once.
//!
//! Each behaviour is an async function taking the test's [`Backends`]; the
//! [`work_queue_suite!`] macro turns the list into one `#[tokio::test]` per
//! behaviour for a backend. Every test works on topics under a fresh uuid, so
//! the suites of all backends run in parallel on shared brokers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventforge::work::headers::{
    DEAD_LETTER_REASON_HEADER, ENQUEUED_AT_HEADER, GROUP_HEADER, LAST_ERROR_HEADER,
    ORIGINAL_ID_HEADER, ORIGINAL_TOPIC_HEADER, REASON_MAX_RETRIES, REASON_REJECTED,
    REASON_VISIBILITY_TIMEOUT, RETRY_COUNT_HEADER, VISIBILITY_TIMEOUT_HEADER,
};
use eventforge::work::{dead_letter_topic, JobEventPayload, QueueSummary};
use eventforge::work::{Nack, WorkBackend, WorkQueue, WorkQueueBuilder};
use eventforge::Error;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// How long any single expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Connections to one backend store. For an in-process store every
/// connection is the same value; for a broker, a new client each time, as
/// separate consumer processes would have.
pub struct Backends {
    connect: Box<dyn Fn() -> BoxFuture<'static, Arc<dyn WorkBackend>> + Send + Sync>,
    /// Topics a test made, deleted from the store when it ends.
    topics: Mutex<Vec<String>>,
}

impl Backends {
    /// Every connection is `backend` itself.
    pub fn shared(backend: Arc<dyn WorkBackend>) -> Self {
        Backends {
            connect: Box::new(move || {
                let backend = Arc::clone(&backend);
                Box::pin(async move { backend })
            }),
            topics: Mutex::default(),
        }
    }

    /// Each connection is a fresh one made by `connect`.
    #[allow(dead_code)]
    pub fn connecting<F>(connect: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Arc<dyn WorkBackend>> + Send + Sync + 'static,
    {
        Backends {
            connect: Box::new(connect),
            topics: Mutex::default(),
        }
    }

    /// A fresh topic for this test, deleted with its dead letters when the
    /// test ends.
    fn topic(&self, name: &str) -> String {
        let topic = format!("wq.{name}.{}", eventforge::new_id().replace('-', ""));
        self.topics.lock().unwrap().push(topic.clone());
        topic
    }

    /// Deletes the test's topics, so shared brokers do not fill up with them.
    pub async fn clean_up(&self) {
        let topics = std::mem::take(&mut *self.topics.lock().unwrap());
        let backend = (self.connect)().await;
        for topic in topics {
            for name in [dead_letter_topic(&topic), topic] {
                // A test may have closed the store; nothing is left to delete then.
                let _ = backend.delete_topic(&name).await;
            }
        }
    }

    /// Settings for a queue on a new connection, with summaries off unless
    /// a test turns them on.
    async fn queue(&self) -> WorkQueueBuilder {
        WorkQueue::builder_shared((self.connect)().await).summary_interval(None)
    }
}

/// Generates one `#[tokio::test]` per behaviour of this suite for a
/// backend, in a module named after it.
macro_rules! work_queue_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            fn backends() -> ::futures::future::BoxFuture<'static, crate::suite::Backends> {
                Box::pin(async { ($make)().await })
            }

            work_queue_suite!(@tests backends;
                acked_job_is_not_handed_out_again,
                nack_hands_the_job_out_again,
                delayed_nack_waits_for_its_delay,
                max_retries_leads_to_the_dead_letter_with_the_reason,
                handler_can_dead_letter_at_once,
                panicking_handler_is_a_failed_try,
                two_groups_each_get_every_job,
                consumers_of_one_group_share_the_jobs,
                visibility_timeout_hands_the_job_to_another_consumer,
                expired_last_try_is_dead_lettered,
                queue_full_is_typed_and_recovers,
                stats_count_pending_and_in_flight,
                declared_group_keeps_jobs_for_later_consumers,
                lifecycle_events_stream_live,
                summary_event_reports_counts,
                closed_queue_refuses_work,
                deleted_topic_holds_nothing,
                no_loss_across_consumer_restarts,
            );
        }
    };
    (@tests $factory:ident; $($behaviour:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                let backends = $factory().await;
                crate::suite::$behaviour(&backends).await;
                backends.clean_up().await;
            }
        )+
    };
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing after {PATIENCE:?}"),
    }
}

/// Takes the next job, failing the test if none comes in time.
async fn take(queue: &WorkQueue, topic: &str, group: &str) -> eventforge::work::Job {
    queue
        .dequeue(topic, group, PATIENCE)
        .await
        .expect("dequeue")
        .unwrap_or_else(|| panic!("no job on {topic} for {group} within {PATIENCE:?}"))
}

fn header_u64(job: &eventforge::work::Job, key: &str) -> u64 {
    job.message()
        .header(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("header {key} missing on {:?}", job.message().headers))
}

pub async fn acked_job_is_not_handed_out_again(backends: &Backends) {
    let visibility = Duration::from_millis(300);
    let queue = backends
        .queue()
        .await
        .visibility_timeout(visibility)
        .build();
    let topic = backends.topic("ack");
    let id = queue.enqueue(&topic, json!({"n": 1})).await.unwrap();
    let job = take(&queue, &topic, "default").await;
    assert_eq!(job.id(), id);
    assert_eq!(job.attempt(), 1);
    assert_eq!(header_u64(&job, RETRY_COUNT_HEADER), 0);
    // The headers of the Python peer's work queue.
    let header = |key| job.message().header(key).cloned();
    assert_eq!(header(ORIGINAL_TOPIC_HEADER), Some(json!(topic)));
    assert_eq!(header(VISIBILITY_TIMEOUT_HEADER), Some(json!(0.3)));
    let enqueued_at = header(ENQUEUED_AT_HEADER).expect("enqueued-at header");
    let enqueued_at = enqueued_at.as_str().expect("an ISO 8601 string");
    assert!(
        chrono::DateTime::parse_from_rfc3339(enqueued_at).is_ok()
            && enqueued_at.ends_with("+00:00"),
        "{enqueued_at:?} is not the Python peer's isoformat()"
    );
    job.ack().await.unwrap();
    // Absence can only be shown by waiting: well past the visibility timeout.
    let again = queue
        .dequeue(&topic, "default", visibility * 4)
        .await
        .unwrap();
    assert!(again.is_none(), "an acked job came back: {again:?}");
    let stats = queue.stats(&topic, "default").await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.acked), (0, 0, 1));
    queue.close().await.unwrap();
}

pub async fn nack_hands_the_job_out_again(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("nack");
    let id = queue.enqueue(&topic, "payload").await.unwrap();
    let first = take(&queue, &topic, "default").await;
    first.nack(Nack::Requeue).await.unwrap();
    let second = take(&queue, &topic, "default").await;
    assert_eq!(second.id(), id);
    assert_eq!(second.attempt(), 2);
    assert_eq!(header_u64(&second, RETRY_COUNT_HEADER), 1);
    assert_eq!(second.payload(), &json!("payload"));
    second.ack().await.unwrap();
    let stats = queue.stats(&topic, "default").await.unwrap();
    assert_eq!((stats.acked, stats.nacked), (1, 1));
    queue.close().await.unwrap();
}

pub async fn delayed_nack_waits_for_its_delay(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("delay");
    queue.enqueue(&topic, 1).await.unwrap();
    let delay = Duration::from_millis(400);
    let job = take(&queue, &topic, "default").await;
    let nacked_at = Instant::now();
    job.nack(Nack::Delay(delay)).await.unwrap();
    let again = take(&queue, &topic, "default").await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay,
        "handed out after {waited:?}, before its {delay:?} delay"
    );
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
    queue.close().await.unwrap();
}

/// A consumer whose handler records every try and fails as `fail` says.
async fn failing_consumer(
    queue: &WorkQueue,
    topic: &str,
    fail: impl Fn(u64) -> Result<(), Nack> + Send + Sync + 'static,
) -> (eventforge::work::Consumer, Arc<Mutex<Vec<u64>>>) {
    let tries = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&tries);
    let fail = Arc::new(fail);
    let consumer = queue
        .consume(topic, "default", move |message| {
            let retry = message
                .header(RETRY_COUNT_HEADER)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(u64::MAX);
            seen.lock().unwrap().push(retry);
            let outcome = fail(retry);
            async move { outcome }
        })
        .await
        .unwrap();
    (consumer, tries)
}

pub async fn max_retries_leads_to_the_dead_letter_with_the_reason(backends: &Backends) {
    let queue = backends.queue().await.max_retries(3).build();
    let topic = backends.topic("dead");
    let id = queue.enqueue(&topic, json!({"bad": true})).await.unwrap();
    let (consumer, tries) = failing_consumer(&queue, &topic, |_| {
        Err(Nack::Delay(Duration::from_millis(10)))
    })
    .await;
    let letter = take(&queue, &dead_letter_topic(&topic), "default").await;
    consumer.stop().await;
    assert_ne!(letter.id(), id, "a dead letter is a new message");
    assert_eq!(letter.payload(), &json!({"bad": true}));
    let header = |key| letter.message().header(key).cloned();
    assert_eq!(header(ORIGINAL_ID_HEADER), Some(json!(id)));
    assert_eq!(
        header(DEAD_LETTER_REASON_HEADER),
        Some(json!(REASON_MAX_RETRIES))
    );
    assert_eq!(header(ORIGINAL_TOPIC_HEADER), Some(json!(topic)));
    assert_eq!(header(GROUP_HEADER), Some(json!("default")));
    assert!(header(LAST_ERROR_HEADER).is_some());
    assert_eq!(
        *tries.lock().unwrap(),
        vec![0, 1, 2],
        "max_retries 3: three tries"
    );
    letter.ack().await.unwrap();
    let stats = queue.stats(&topic, "default").await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.nacked), (0, 0, 3));
    assert_eq!(queue.counts(&topic).dead, 1);
    queue.close().await.unwrap();
}

pub async fn handler_can_dead_letter_at_once(backends: &Backends) {
    let queue = backends.queue().await.max_retries(5).build();
    let topic = backends.topic("reject");
    queue.enqueue(&topic, "poison").await.unwrap();
    let (consumer, tries) = failing_consumer(&queue, &topic, |_| {
        Err(Nack::DeadLetter("unknown customer".into()))
    })
    .await;
    let letter = take(&queue, &dead_letter_topic(&topic), "default").await;
    consumer.stop().await;
    assert_eq!(
        letter.message().header(DEAD_LETTER_REASON_HEADER),
        Some(&json!(REASON_REJECTED))
    );
    let error = letter
        .message()
        .header(LAST_ERROR_HEADER)
        .unwrap()
        .to_string();
    assert!(error.contains("unknown customer"), "{error}");
    assert_eq!(tries.lock().unwrap().len(), 1, "no retry after a rejection");
    letter.ack().await.unwrap();
    queue.close().await.unwrap();
}

pub async fn panicking_handler_is_a_failed_try(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("panic");
    queue.enqueue(&topic, 7).await.unwrap();
    let (done_tx, mut done_rx) = watch::channel(Vec::<u64>::new());
    let consumer = queue
        .consume(&topic, "default", move |message| {
            let retry = message
                .header(RETRY_COUNT_HEADER)
                .and_then(serde_json::Value::as_u64)
                .unwrap();
            if retry == 0 {
                panic!("first try blows up");
            }
            done_tx.send_modify(|tries| tries.push(retry));
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
    within(
        "the retried job",
        done_rx.wait_for(|tries| !tries.is_empty()),
    )
    .await
    .unwrap();
    consumer.stop().await;
    assert_eq!(*done_rx.borrow(), vec![1]);
    let counts = queue.counts(&topic);
    assert_eq!((counts.failed, counts.completed), (1, 1));
    queue.close().await.unwrap();
}

/// Runs a consumer that records job ids until `expected` distinct ones are seen.
async fn collect(
    queue: &WorkQueue,
    topic: &str,
    group: &str,
    expected: usize,
) -> HashMap<String, usize> {
    let (seen_tx, mut seen_rx) = watch::channel(HashMap::<String, usize>::new());
    let consumer = queue
        .consume(topic, group, move |message| {
            seen_tx.send_modify(|seen| *seen.entry(message.id.clone()).or_default() += 1);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
    within("every job", seen_rx.wait_for(|seen| seen.len() >= expected))
        .await
        .unwrap();
    consumer.stop().await;
    let seen = seen_rx.borrow().clone();
    seen
}

pub async fn two_groups_each_get_every_job(backends: &Backends) {
    let queue = backends.queue().await.groups(["billing", "audit"]).build();
    let topic = backends.topic("groups");
    let mut ids = HashSet::new();
    for n in 0..20 {
        ids.insert(queue.enqueue(&topic, n).await.unwrap());
    }
    let other = backends.queue().await.groups(["billing", "audit"]).build();
    let (billing, audit) = tokio::join!(
        collect(&queue, &topic, "billing", ids.len()),
        collect(&other, &topic, "audit", ids.len()),
    );
    for (group, seen) in [("billing", billing), ("audit", audit)] {
        let seen_ids: HashSet<String> = seen.keys().cloned().collect();
        assert_eq!(seen_ids, ids, "group {group} missed jobs");
        assert!(seen.values().all(|&n| n == 1), "{group}: a job came twice");
    }
    queue.close().await.unwrap();
    other.close().await.unwrap();
}

pub async fn consumers_of_one_group_share_the_jobs(backends: &Backends) {
    let topic = backends.topic("compete");
    let producer = backends.queue().await.build();
    let jobs = 200;
    let (seen_tx, mut seen_rx) = watch::channel(Vec::<(usize, String)>::new());
    let seen_tx = Arc::new(seen_tx);
    let mut consumers = Vec::new();
    let mut queues = Vec::new();
    for who in 0..2 {
        let queue = backends.queue().await.build();
        let seen_tx = Arc::clone(&seen_tx);
        let consumer = queue
            .consume(&topic, "default", move |message| {
                seen_tx.send_modify(|seen| seen.push((who, message.id.clone())));
                // A job takes a moment, as real work does, so both consumers get a share.
                async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok::<(), std::io::Error>(())
                }
            })
            .await
            .unwrap();
        consumers.push(consumer);
        queues.push(queue);
    }
    for n in 0..jobs {
        producer.enqueue(&topic, n).await.unwrap();
    }
    within("every job", seen_rx.wait_for(|seen| seen.len() >= jobs))
        .await
        .unwrap();
    for consumer in consumers {
        consumer.stop().await;
    }
    let seen = seen_rx.borrow().clone();
    let distinct: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(
        distinct.len(),
        jobs,
        "a job went to two consumers of one group"
    );
    assert_eq!(seen.len(), jobs);
    let first = seen.iter().filter(|(who, _)| *who == 0).count();
    assert!(
        first > 0 && first < jobs,
        "one consumer took every job ({first} of {jobs} went to the first)"
    );
    for queue in queues {
        queue.close().await.unwrap();
    }
    producer.close().await.unwrap();
}

pub async fn visibility_timeout_hands_the_job_to_another_consumer(backends: &Backends) {
    let visibility = Duration::from_millis(500);
    let crashed = backends
        .queue()
        .await
        .visibility_timeout(visibility)
        .build();
    let survivor = backends
        .queue()
        .await
        .visibility_timeout(visibility)
        .build();
    let topic = backends.topic("visibility");
    let id = crashed.enqueue(&topic, "work").await.unwrap();
    let job = take(&crashed, &topic, "default").await;
    let taken_at = Instant::now();
    // The consumer dies holding the job: never settled.
    std::mem::forget(job);
    let again = take(&survivor, &topic, "default").await;
    let waited = taken_at.elapsed();
    assert_eq!(again.id(), id);
    assert_eq!(again.attempt(), 2);
    assert!(
        waited >= visibility - Duration::from_millis(50),
        "handed out again after {waited:?}, before the {visibility:?} visibility timeout"
    );
    again.ack().await.unwrap();
    survivor.close().await.unwrap();
    crashed.close().await.unwrap();
}

pub async fn expired_last_try_is_dead_lettered(backends: &Backends) {
    let visibility = Duration::from_millis(300);
    let queue = backends
        .queue()
        .await
        .visibility_timeout(visibility)
        .max_retries(0)
        .build();
    let topic = backends.topic("expired");
    let id = queue.enqueue(&topic, "stuck").await.unwrap();
    std::mem::forget(take(&queue, &topic, "default").await);
    // The next look after the timeout finds the job out of tries.
    let nothing = queue
        .dequeue(&topic, "default", visibility * 3)
        .await
        .unwrap();
    assert!(nothing.is_none(), "a job with no tries left was handed out");
    let letter = take(&queue, &dead_letter_topic(&topic), "default").await;
    assert_eq!(
        letter.message().header(ORIGINAL_ID_HEADER),
        Some(&json!(id))
    );
    assert_eq!(
        letter.message().header(DEAD_LETTER_REASON_HEADER),
        Some(&json!(REASON_VISIBILITY_TIMEOUT))
    );
    letter.ack().await.unwrap();
    queue.close().await.unwrap();
}

pub async fn queue_full_is_typed_and_recovers(backends: &Backends) {
    let queue = backends.queue().await.max_size(5).build();
    let topic = backends.topic("full");
    for n in 0..5 {
        queue.enqueue(&topic, n).await.unwrap();
    }
    match queue.enqueue(&topic, 5).await {
        Err(Error::QueueFull {
            topic: full,
            group,
            limit,
        }) => {
            assert_eq!(
                (full.as_str(), group.as_str(), limit),
                (topic.as_str(), "default", 5)
            );
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let stats = queue.stats(&topic, "default").await.unwrap();
    assert_eq!(stats.pending, 5, "the refused job was stored anyway");
    take(&queue, &topic, "default").await.ack().await.unwrap();
    queue
        .enqueue(&topic, 6)
        .await
        .expect("room again after an ack");

    // 0 means no limit, as in the Python peer.
    let unlimited = backends.queue().await.max_size(0).build();
    let roomy = backends.topic("unlimited");
    for n in 0..20 {
        unlimited.enqueue(&roomy, n).await.expect("no limit");
    }
    assert_eq!(
        unlimited.stats(&roomy, "default").await.unwrap().pending,
        20
    );
    unlimited.close().await.unwrap();
    queue.close().await.unwrap();
}

pub async fn stats_count_pending_and_in_flight(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("stats");
    let empty = queue.stats(&topic, "default").await.unwrap();
    assert_eq!((empty.pending, empty.in_flight), (0, 0));
    for n in 0..3 {
        queue.enqueue(&topic, n).await.unwrap();
    }
    let figures = |s: eventforge::work::WorkStats| (s.pending, s.in_flight, s.acked, s.nacked);
    assert_eq!(
        figures(queue.stats(&topic, "default").await.unwrap()),
        (3, 0, 0, 0)
    );
    let first = take(&queue, &topic, "default").await;
    assert_eq!(
        figures(queue.stats(&topic, "default").await.unwrap()),
        (2, 1, 0, 0)
    );
    first.ack().await.unwrap();
    assert_eq!(
        figures(queue.stats(&topic, "default").await.unwrap()),
        (2, 0, 1, 0)
    );
    let second = take(&queue, &topic, "default").await;
    second
        .nack(Nack::Delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        figures(queue.stats(&topic, "default").await.unwrap()),
        (2, 0, 1, 1)
    );
    queue.close().await.unwrap();
}

pub async fn declared_group_keeps_jobs_for_later_consumers(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("declared");
    let early = queue.enqueue(&topic, "before any consumer").await.unwrap();
    queue.create_group(&topic, "late").await.unwrap();
    let later = queue.enqueue(&topic, "after the late group").await.unwrap();
    let first = take(&queue, &topic, "default").await;
    assert_eq!(first.id(), early, "the declared group lost the early job");
    first.ack().await.unwrap();
    let late = take(&queue, &topic, "late").await;
    assert_eq!(late.id(), later, "a group named later saw an older job");
    late.ack().await.unwrap();
    queue.close().await.unwrap();
}

pub async fn lifecycle_events_stream_live(backends: &Backends) {
    let queue = backends.queue().await.max_retries(2).build();
    let topic = backends.topic("events");
    let mut events = queue.events().subscribe("_events.**").await.unwrap();
    let good = queue.enqueue(&topic, "good").await.unwrap();
    let bad = queue.enqueue(&topic, "bad").await.unwrap();
    let consumer = queue
        .consume(&topic, "default", |message| async move {
            if message.payload == json!("bad") {
                Err(Nack::Requeue)
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    while !seen
        .get(&bad)
        .is_some_and(|steps| steps.contains(&"dead_letter_job".to_string()))
        || !seen
            .get(&good)
            .is_some_and(|steps| steps.contains(&"complete_job".to_string()))
    {
        let message = within("a lifecycle event", events.next()).await.unwrap();
        let event: JobEventPayload = message.payload_as().unwrap();
        assert_eq!(message.topic, format!("_events.{topic}.{}", event.event));
        assert_eq!(event.topic, topic);
        assert!(chrono::DateTime::parse_from_rfc3339(&event.timestamp).is_ok());
        seen.entry(event.job_id)
            .or_default()
            .push(event.event.to_string());
    }
    consumer.stop().await;
    assert_eq!(seen[&good], ["enqueue_job", "start_job", "complete_job"]);
    assert_eq!(
        seen[&bad],
        [
            "enqueue_job",
            "start_job",
            "failed_job",
            "retry_job",
            "start_job",
            "failed_job",
            "dead_letter_job"
        ]
    );
    queue.close().await.unwrap();
}

pub async fn summary_event_reports_counts(backends: &Backends) {
    let queue = backends
        .queue()
        .await
        .summary_interval(Some(Duration::from_millis(100)))
        .build();
    let topic = backends.topic("summary");
    let mut summaries = queue
        .events()
        .subscribe(format!("_events.{topic}.summary").as_str())
        .await
        .unwrap();
    for n in 0..3 {
        queue.enqueue(&topic, n).await.unwrap();
    }
    take(&queue, &topic, "default").await.ack().await.unwrap();
    loop {
        let message = within("a summary", summaries.next()).await.unwrap();
        let summary: QueueSummary = message.payload_as().unwrap();
        let Some(default) = summary.groups.get("default") else {
            continue;
        };
        if summary.counts.completed == 1 {
            assert_eq!((default.pending, default.in_flight), (2, 0));
            assert_eq!(summary.counts.enqueued, 3);
            break;
        }
    }
    queue.close().await.unwrap();
}

pub async fn closed_queue_refuses_work(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("closed");
    queue.close().await.unwrap();
    queue.close().await.expect("close is idempotent");
    assert!(matches!(
        queue.enqueue(&topic, 1).await,
        Err(Error::Closed(_))
    ));
    assert!(matches!(
        queue
            .dequeue(&topic, "default", Duration::from_millis(10))
            .await,
        Err(Error::Closed(_))
    ));
    assert!(matches!(
        queue.stats(&topic, "default").await,
        Err(Error::Closed(_))
    ));

    // A closed backend refuses work with the same typed error.
    let backend = (backends.connect)().await;
    backend.close().await.unwrap();
    backend
        .close()
        .await
        .expect("closing a backend is idempotent");
    let options = eventforge::work::WorkOptions::default();
    let job = eventforge::Message::new(topic.as_str(), 1).unwrap();
    assert!(matches!(
        backend.enqueue(&options, job).await,
        Err(Error::Closed(_))
    ));
    assert!(matches!(
        backend
            .receive(&options, &topic, "default", "c", Duration::from_millis(10))
            .await,
        Err(Error::Closed(_))
    ));
}

pub async fn deleted_topic_holds_nothing(backends: &Backends) {
    let queue = backends.queue().await.build();
    let topic = backends.topic("deleted");
    for n in 0..3 {
        queue.enqueue(&topic, n).await.unwrap();
    }
    let _in_hand = take(&queue, &topic, "default").await;
    let backend = (backends.connect)().await;
    assert!(
        backend.delete_topic(&topic).await.unwrap(),
        "the topic existed"
    );
    assert!(
        !backend.delete_topic(&topic).await.unwrap(),
        "deleted twice"
    );
    let stats = queue.stats(&topic, "default").await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (0, 0));
    let id = queue.enqueue(&topic, "fresh").await.unwrap();
    assert_eq!(
        take(&queue, &topic, "default").await.id(),
        id,
        "the topic is usable again"
    );
    queue.close().await.unwrap();
}

/// 5,000 jobs flow while the consumer crashes and restarts five times:
/// every job is completed, none lost (some may run twice: at least once).
pub async fn no_loss_across_consumer_restarts(backends: &Backends) {
    const JOBS: usize = 5_000;
    const RESTARTS: usize = 5;
    let visibility = Duration::from_secs(1);
    // Enough tries that a job caught in several crashes is still retried:
    // this test is about loss, not dead letters.
    let settings =
        move |builder: WorkQueueBuilder| builder.visibility_timeout(visibility).max_retries(20);
    let producer = settings(backends.queue().await).build();
    let topic = backends.topic("restarts");
    let (done_tx, mut done_rx) = watch::channel(HashSet::<String>::new());
    let done_tx = Arc::new(done_tx);

    let feeding = {
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut ids = HashSet::with_capacity(JOBS);
            for n in 0..JOBS {
                ids.insert(producer.enqueue(&topic, json!({ "n": n })).await.unwrap());
            }
            ids
        })
    };

    let start = |queue: WorkQueue| {
        let done_tx = Arc::clone(&done_tx);
        let topic = topic.clone();
        async move {
            let consumer = queue
                .consume_with(&topic, "default", 4, move |message| {
                    let done_tx = Arc::clone(&done_tx);
                    async move {
                        tokio::task::yield_now().await;
                        done_tx.send_modify(|done| {
                            done.insert(message.id.clone());
                        });
                        Ok::<(), std::io::Error>(())
                    }
                })
                .await
                .unwrap();
            (queue, consumer)
        }
    };

    let mut running = start(settings(backends.queue().await).build()).await;
    for restart in 1..=RESTARTS {
        let mark = restart * JOBS / (RESTARTS + 1);
        within(
            "progress before a restart",
            done_rx.wait_for(|done| done.len() >= mark),
        )
        .await
        .unwrap();
        // A crash: jobs in hand are left unsettled, to come back after the
        // visibility timeout on the next consumer.
        let (queue, consumer) = running;
        consumer.abort().await;
        drop(queue);
        running = start(settings(backends.queue().await).build()).await;
    }
    let ids = within("the producer", feeding).await.unwrap();
    within(
        "every job completed",
        done_rx.wait_for(|done| done.len() >= JOBS),
    )
    .await
    .unwrap();
    let (queue, consumer) = running;
    consumer.stop().await;
    assert_eq!(
        *done_rx.borrow(),
        ids,
        "the completed jobs are not the enqueued ones"
    );
    // Duplicates are possible (a crash after the handler, before the ack);
    // loss is not: nothing is left waiting once the last redeliveries ran.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = queue.stats(&topic, "default").await.unwrap();
        assert_eq!(stats.dead, 0, "jobs were dead-lettered");
        if stats.pending == 0 && stats.in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs left behind: {stats:?}");
        // Jobs of the crashed consumers come back after their visibility
        // timeout; a fresh consumer settles them.
        let job = queue
            .dequeue(&topic, "default", visibility * 2)
            .await
            .unwrap();
        if let Some(job) = job {
            job.ack().await.unwrap();
        }
    }
    queue.close().await.unwrap();
    producer.close().await.unwrap();
}
