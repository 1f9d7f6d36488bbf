//! The JetStream work-queue backend through the `WorkBackend` trait:
//! deliveries, attempts, retries, groups, limits, stats, bad entries,
//! cancellation, close, and a server restart.
//!
//! Uses the NATS server (with JetStream) at `NATS_URL` (default
//! `nats://127.0.0.1:4222`); the restart test runs its own server.

#![cfg(feature = "nats")]

mod private_broker;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use eventforge_work::{BackendStats, Delivery, WorkBackend, WorkOptions};

use eventforge_core::{Error, Message};
use eventforge_transports::nats::{JetStreamBackend, JetStreamStorage};
use futures::FutureExt;

/// Longest wait for anything that should happen.
const PATIENCE: Duration = Duration::from_secs(20);

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(name: &str) -> String {
    format!("wq-test.{name}.{}", eventforge_core::new_id())
}

async fn connect() -> JetStreamBackend {
    JetStreamBackend::builder()
        .server(url())
        .storage(JetStreamStorage::Memory)
        .connect()
        .await
        .expect("NATS with JetStream at NATS_URL")
}

fn options(groups: &[&str]) -> WorkOptions {
    WorkOptions {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..WorkOptions::default()
    }
}

fn job(topic: &str, n: u64) -> Message {
    Message::new(topic, n).unwrap()
}

/// The next delivery of `group`, waiting up to [`PATIENCE`].
async fn next(
    backend: &JetStreamBackend,
    options: &WorkOptions,
    topic: &str,
    group: &str,
) -> Delivery {
    let started = Instant::now();
    loop {
        let left = PATIENCE.saturating_sub(started.elapsed());
        assert!(!left.is_zero(), "no delivery for {group} on {topic}");
        let received = tokio::time::timeout(
            PATIENCE,
            backend.receive(options, topic, group, "test-consumer", left),
        )
        .await
        .expect("receive honours its timeout")
        .expect("receive works");
        if let Some(delivery) = received {
            return delivery;
        }
    }
}

/// Asserts that `group` gets nothing within `window`.
async fn nothing_for(
    backend: &JetStreamBackend,
    options: &WorkOptions,
    topic: &str,
    group: &str,
    window: Duration,
) {
    let received = tokio::time::timeout(
        PATIENCE,
        backend.receive(options, topic, group, "test-consumer", window),
    )
    .await
    .expect("receive honours its timeout")
    .expect("receive works");
    assert!(
        received.is_none(),
        "unexpected delivery: {:?}",
        received.map(|d| d.message)
    );
}

async fn stats(
    backend: &JetStreamBackend,
    options: &WorkOptions,
    topic: &str,
    group: &str,
) -> BackendStats {
    tokio::time::timeout(PATIENCE, backend.stats(options, topic, group))
        .await
        .expect("stats in time")
        .unwrap()
}

fn figures(pending: u64, in_flight: u64) -> BackendStats {
    BackendStats { pending, in_flight }
}

/// Jobs the topic's stream holds, as the server reports it once it has
/// applied `backend`'s acks.
async fn stored(backend: &JetStreamBackend, topic: &str) -> u64 {
    let read = async {
        backend.settle().await.unwrap();
        let client = async_nats::connect(url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(backend.stream_name(topic)).await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("stream state in time")
}

async fn cleanup(backend: JetStreamBackend, topics: &[&str]) {
    for topic in topics {
        backend.delete_topic(topic).await.unwrap();
    }
    backend.close().await.unwrap();
}

#[tokio::test]
async fn an_enqueued_job_is_received_once_and_acked() {
    let (backend, topic, options) = (connect().await, unique("roundtrip"), options(&["default"]));
    let sent = job(&topic, 7).with_header("trace", "abc");
    backend.enqueue(&options, sent.clone()).await.unwrap();

    let delivery = next(&backend, &options, &topic, "default").await;
    assert_eq!(delivery.message.id, sent.id);
    assert_eq!(delivery.message.payload, 7);
    assert_eq!(delivery.message.header("trace"), Some(&"abc".into()));
    assert_eq!(delivery.attempt, 1);
    assert_eq!(
        (
            delivery.receipt.topic.as_str(),
            delivery.receipt.group.as_str()
        ),
        (topic.as_str(), "default")
    );
    backend.ack(delivery.receipt).await.unwrap();

    nothing_for(
        &backend,
        &options,
        &topic,
        "default",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );
    assert_eq!(backend.counters().delivered, 1);
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn attempts_count_retries_and_visibility_timeouts() {
    let backend = connect().await;
    let topic = unique("attempts");
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(500),
        ..options(&["default"])
    };
    backend.enqueue(&options, job(&topic, 1)).await.unwrap();

    let first = next(&backend, &options, &topic, "default").await;
    assert_eq!(first.attempt, 1);
    backend
        .retry(&options, first.receipt, Duration::ZERO)
        .await
        .unwrap();

    let second = next(&backend, &options, &topic, "default").await;
    assert_eq!(second.attempt, 2);
    let handed_out = Instant::now();

    // Not acked: handed out again once the visibility timeout passes.
    let third = next(&backend, &options, &topic, "default").await;
    assert_eq!(third.attempt, 3);
    assert_eq!(third.message.id, second.message.id);
    assert!(
        handed_out.elapsed() >= Duration::from_millis(450),
        "redelivered after {:?}, before the visibility timeout",
        handed_out.elapsed()
    );

    let late = backend.ack(second.receipt).await;
    assert!(
        matches!(&late, Err(Error::DeliveryExpired { job_id }) if *job_id == third.message.id),
        "{late:?}"
    );
    backend.ack(third.receipt).await.unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn an_expired_delivery_counts_as_pending_until_handed_out_again() {
    let backend = connect().await;
    let topic = unique("expired");
    let visibility = Duration::from_millis(500);
    let options = WorkOptions {
        visibility_timeout: visibility,
        ..options(&["default"])
    };
    backend.enqueue(&options, job(&topic, 1)).await.unwrap();
    let first = next(&backend, &options, &topic, "default").await;
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 1)
    );
    // Waiting out the visibility timeout is the behaviour under test.
    tokio::time::sleep(visibility + Duration::from_millis(50)).await;
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(1, 0)
    );
    let again = next(&backend, &options, &topic, "default").await;
    assert_eq!((again.attempt, &again.message.id), (2, &first.message.id));
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 1)
    );
    assert!(matches!(
        backend.retry(&options, first.receipt, Duration::ZERO).await,
        Err(Error::DeliveryExpired { .. })
    ));
    backend.ack(again.receipt).await.unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn a_retry_goes_back_to_its_group_only_after_the_delay() {
    let backend = connect().await;
    let topic = unique("retry_group");
    let options = options(&["billing", "audit"]);
    backend.enqueue(&options, job(&topic, 1)).await.unwrap();

    let billing = next(&backend, &options, &topic, "billing").await;
    let audit = next(&backend, &options, &topic, "audit").await;
    backend.ack(audit.receipt).await.unwrap();

    let delay = Duration::from_millis(800);
    let retried_at = Instant::now();
    backend
        .retry(&options, billing.receipt, delay)
        .await
        .unwrap();
    // Counted as waiting while delayed.
    assert_eq!(
        stats(&backend, &options, &topic, "billing").await,
        figures(1, 0)
    );

    let again = next(&backend, &options, &topic, "billing").await;
    assert!(
        retried_at.elapsed() >= delay,
        "handed out again after {:?}, before the {delay:?} delay",
        retried_at.elapsed()
    );
    assert_eq!((again.attempt, &again.message.id), (2, &billing.message.id));
    nothing_for(
        &backend,
        &options,
        &topic,
        "audit",
        Duration::from_millis(300),
    )
    .await;
    backend.ack(again.receipt).await.unwrap();
    cleanup(backend, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_receives_every_job() {
    const JOBS: u64 = 20;
    let backend = connect().await;
    let topic = unique("two_groups");
    let options = options(&["first", "second"]);
    let mut ids = HashSet::new();
    for n in 0..JOBS {
        let message = job(&topic, n);
        ids.insert(message.id.clone());
        backend.enqueue(&options, message).await.unwrap();
    }
    for group in ["first", "second"] {
        let mut seen = HashSet::new();
        for _ in 0..JOBS {
            let delivery = next(&backend, &options, &topic, group).await;
            assert!(seen.insert(delivery.message.id.clone()), "twice in {group}");
            backend.ack(delivery.receipt).await.unwrap();
        }
        assert_eq!(seen, ids, "{group} got every job");
    }
    cleanup(backend, &[&topic]).await;
}

/// Receives and acks until the group has nothing left; how many it took.
async fn drain(
    backend: &JetStreamBackend,
    options: &WorkOptions,
    topic: &str,
    consumer: &str,
    received: &std::sync::Mutex<Vec<String>>,
) -> u64 {
    let mut taken = 0;
    while let Some(delivery) = backend
        .receive(
            options,
            topic,
            "default",
            consumer,
            Duration::from_millis(500),
        )
        .await
        .unwrap()
    {
        assert_eq!(delivery.attempt, 1);
        received.lock().unwrap().push(delivery.message.id.clone());
        backend.ack(delivery.receipt).await.unwrap();
        taken += 1;
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_one_group_share_the_jobs_each_job_once() {
    const JOBS: u64 = 200;
    let topic = unique("competing");
    let options = options(&["default"]);
    let (first, second) = (connect().await, connect().await);
    let mut ids = HashSet::new();
    for n in 0..JOBS {
        let message = job(&topic, n);
        ids.insert(message.id.clone());
        first.enqueue(&options, message).await.unwrap();
    }
    // Two processes, two concurrent receivers each, one consumer name per
    // process as handler concurrency does it.
    let received = std::sync::Mutex::new(Vec::new());
    let (a, b, c, d) = tokio::time::timeout(
        PATIENCE,
        futures::future::join4(
            drain(&first, &options, &topic, "p1", &received),
            drain(&first, &options, &topic, "p1", &received),
            drain(&second, &options, &topic, "p2", &received),
            drain(&second, &options, &topic, "p2", &received),
        ),
    )
    .await
    .expect("all jobs consumed in time");
    let received = received.into_inner().unwrap();
    assert_eq!(received.len() as u64, JOBS, "each job once");
    assert_eq!(received.into_iter().collect::<HashSet<_>>(), ids);
    assert!(
        a + b > 0 && c + d > 0,
        "both processes took part: {a}+{b} / {c}+{d}"
    );
    second.close().await.unwrap();
    first.delete_topic(&topic).await.unwrap();
    first.close().await.unwrap();
}

#[tokio::test]
async fn a_declared_group_receives_jobs_enqueued_before_any_consumer() {
    let topic = unique("declared");
    let options = options(&["default", "reports"]);
    let producer = connect().await;
    let mut ids = HashSet::new();
    for n in 0..5 {
        let message = job(&topic, n);
        ids.insert(message.id.clone());
        producer.enqueue(&options, message).await.unwrap();
    }
    // Kept by the server although nobody has received from the stream yet.
    assert_eq!(stored(&producer, &topic).await, 5);
    // A consumer that starts later, in another connection.
    let consumer = connect().await;
    for group in ["default", "reports"] {
        let mut seen = HashSet::new();
        for _ in 0..5 {
            let delivery = next(&consumer, &options, &topic, group).await;
            seen.insert(delivery.message.id.clone());
            consumer.ack(delivery.receipt).await.unwrap();
        }
        assert_eq!(seen, ids);
    }
    consumer.close().await.unwrap();
    cleanup(producer, &[&topic]).await;
}

#[tokio::test]
async fn a_group_first_named_by_a_consumer_receives_only_later_jobs() {
    let backend = connect().await;
    let topic = unique("ad_hoc");
    let options = options(&["default"]);
    for n in 0..3 {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    // The first receive creates the group, after the three jobs.
    nothing_for(
        &backend,
        &options,
        &topic,
        "late",
        Duration::from_millis(200),
    )
    .await;
    backend
        .create_group(&options, &topic, "later", false)
        .await
        .unwrap();
    for n in 3..5 {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    for group in ["late", "later"] {
        for n in 3..5 {
            let delivery = next(&backend, &options, &topic, group).await;
            assert_eq!(delivery.message.payload, n, "{group}");
            backend.ack(delivery.receipt).await.unwrap();
        }
        nothing_for(
            &backend,
            &options,
            &topic,
            group,
            Duration::from_millis(200),
        )
        .await;
    }
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(5, 0)
    );
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn a_full_queue_refuses_exactly_the_job_beyond_max_size_and_recovers() {
    let backend = connect().await;
    let topic = unique("full");
    let options = WorkOptions {
        max_size: 5,
        ..options(&["default"])
    };
    for n in 0..5 {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    let refused = backend.enqueue(&options, job(&topic, 5)).await;
    match refused {
        Err(Error::QueueFull {
            topic: full,
            group,
            limit,
        }) => assert_eq!(
            (full.as_str(), group.as_str(), limit),
            (topic.as_str(), "default", 5)
        ),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    // Nothing was stored.
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(5, 0)
    );
    assert_eq!(stored(&backend, &topic).await, 5);

    let delivery = next(&backend, &options, &topic, "default").await;
    backend.ack(delivery.receipt).await.unwrap();
    backend.enqueue(&options, job(&topic, 6)).await.unwrap();
    assert!(matches!(
        backend.enqueue(&options, job(&topic, 7)).await,
        Err(Error::QueueFull { .. })
    ));
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn the_same_message_enqueued_twice_is_stored_once() {
    let backend = connect().await;
    let topic = unique("dedup");
    let options = options(&["default"]);
    let message = job(&topic, 1);
    backend.enqueue(&options, message.clone()).await.unwrap();
    backend.enqueue(&options, message.clone()).await.unwrap();
    backend.enqueue(&options, job(&topic, 2)).await.unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(2, 0)
    );
    assert_eq!(backend.counters().enqueued, 2);
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn a_full_queue_names_the_group_that_holds_the_jobs() {
    let backend = connect().await;
    let topic = unique("full_groups");
    let options = WorkOptions {
        max_size: 3,
        ..options(&["fast", "slow"])
    };
    for n in 0..3 {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    for _ in 0..3 {
        let delivery = next(&backend, &options, &topic, "fast").await;
        backend.ack(delivery.receipt).await.unwrap();
    }
    match backend.enqueue(&options, job(&topic, 3)).await {
        Err(Error::QueueFull { group, limit, .. }) => {
            assert_eq!((group.as_str(), limit), ("slow", 3))
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let delivery = next(&backend, &options, &topic, "slow").await;
    backend.ack(delivery.receipt).await.unwrap();
    backend.enqueue(&options, job(&topic, 4)).await.unwrap();
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn stats_are_exact_when_the_queue_is_quiet() {
    const JOBS: u64 = 10;
    let backend = connect().await;
    let topic = unique("stats");
    let options = options(&["default"]);
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );
    for n in 0..JOBS {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(JOBS, 0)
    );
    assert_eq!(
        stats(&backend, &options, &topic, "nobody").await,
        figures(0, 0)
    );

    // The feed prefetches the rest: they still count as waiting.
    let first = next(&backend, &options, &topic, "default").await;
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(JOBS - 1, 1)
    );
    backend.ack(first.receipt).await.unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(JOBS - 1, 0)
    );

    let second = next(&backend, &options, &topic, "default").await;
    backend
        .retry(&options, second.receipt, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(JOBS - 1, 0)
    );

    let third = next(&backend, &options, &topic, "default").await;
    backend
        .retry(&options, third.receipt, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(JOBS - 1, 0)
    );

    // Another process sees the server's figures: what this one prefetched
    // is in flight there.
    let other = connect().await;
    let seen = stats(&other, &options, &topic, "default").await;
    assert_eq!(seen.pending + seen.in_flight, JOBS - 1);
    other.close().await.unwrap();
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn jobs_acked_by_every_group_leave_the_stream() {
    let backend = connect().await;
    let topic = unique("removed");
    let options = options(&["a", "b"]);
    for n in 0..3 {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    assert_eq!(stored(&backend, &topic).await, 3);
    for _ in 0..3 {
        let delivery = next(&backend, &options, &topic, "a").await;
        backend.ack(delivery.receipt).await.unwrap();
    }
    assert_eq!(
        stored(&backend, &topic).await,
        3,
        "group b still needs them"
    );
    for _ in 0..3 {
        let delivery = next(&backend, &options, &topic, "b").await;
        backend.ack(delivery.receipt).await.unwrap();
    }
    assert_eq!(stored(&backend, &topic).await, 0);
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn an_entry_that_is_not_a_message_is_skipped_and_counted() {
    let backend = connect().await;
    let topic = unique("garbage");
    let options = options(&["default"]);
    backend
        .create_group(&options, &topic, "default", true)
        .await
        .unwrap();
    let client = async_nats::connect(url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(backend.subject(&topic), "not json at all".into())
        .await
        .unwrap()
        .await
        .unwrap();
    backend.enqueue(&options, job(&topic, 1)).await.unwrap();

    let delivery = next(&backend, &options, &topic, "default").await;
    assert_eq!(delivery.message.payload, 1);
    backend.ack(delivery.receipt).await.unwrap();
    assert_eq!(backend.counters().undecodable, 1);
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );
    // Terminated: the group never sees it again, and the stream lets it go.
    nothing_for(
        &backend,
        &options,
        &topic,
        "default",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(stored(&backend, &topic).await, 0);
    cleanup(backend, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_receive_loses_no_job() {
    const JOBS: u64 = 50;
    let backend = connect().await;
    let topic = unique("cancel");
    // Long enough that a lost job could not come back during the test.
    let options = WorkOptions {
        visibility_timeout: Duration::from_secs(120),
        ..options(&["default"])
    };
    // A receive dropped while it waits leaves its pull request behind.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        backend.receive(&options, &topic, "default", "c", Duration::from_secs(10)),
    )
    .await;
    assert!(dropped.is_err(), "nothing to receive yet");
    let mut ids = HashSet::new();
    for n in 0..JOBS {
        let message = job(&topic, n);
        ids.insert(message.id.clone());
        backend.enqueue(&options, message).await.unwrap();
    }
    // Receives dropped at their first await, again and again.
    for _ in 0..200 {
        let polled = backend
            .receive(&options, &topic, "default", "c", Duration::from_secs(10))
            .now_or_never();
        if let Some(Ok(Some(delivery))) = polled {
            assert!(ids.remove(&delivery.message.id));
            backend.ack(delivery.receipt).await.unwrap();
        }
    }
    while !ids.is_empty() {
        let delivery = next(&backend, &options, &topic, "default").await;
        assert_eq!(delivery.attempt, 1, "handed out once before");
        assert!(ids.remove(&delivery.message.id), "unknown or twice");
        backend.ack(delivery.receipt).await.unwrap();
    }
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );
    cleanup(backend, &[&topic]).await;
}

#[tokio::test]
async fn a_closed_backend_refuses_every_call_and_closes_once() {
    let backend = connect().await;
    let topic = unique("closed");
    let options = options(&["default"]);
    backend.enqueue(&options, job(&topic, 1)).await.unwrap();
    let delivery = next(&backend, &options, &topic, "default").await;
    backend.delete_topic(&topic).await.unwrap();

    backend.close().await.unwrap();
    backend.close().await.unwrap();
    let closed = |r: &Result<_, Error>| matches!(r, Err(Error::Closed("jetstream")));
    assert!(closed(&backend.enqueue(&options, job(&topic, 2)).await));
    assert!(closed(
        &backend
            .receive(&options, &topic, "default", "c", Duration::from_millis(10))
            .await
            .map(|_| ())
    ));
    assert!(closed(
        &backend.stats(&options, &topic, "default").await.map(|_| ())
    ));
    assert!(closed(&backend.ack(delivery.receipt).await));
    assert!(closed(
        &backend.create_group(&options, &topic, "x", true).await
    ));
}

#[tokio::test]
async fn topics_that_are_not_subjects_are_refused() {
    let backend = connect().await;
    let options = options(&["default"]);
    let too_long = format!("long.{}", "-".repeat(100));
    for topic in ["a b", "a.>", "a..b", "a.*", too_long.as_str()] {
        let refused = backend
            .enqueue(&options, Message::from_value(topic, 1.into()))
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidTopic { .. })),
            "{topic}: {refused:?}"
        );
    }
    backend.close().await.unwrap();
}

/// A private JetStream server storing on disk (in a fresh directory,
/// returned for removal) and a backend quick to notice it is gone and back.
async fn durable_server() -> (
    private_broker::PrivateBroker,
    JetStreamBackend,
    std::path::PathBuf,
) {
    use private_broker::{Kind, PrivateBroker};
    let store = std::env::temp_dir().join(format!("eventforge-js-{}", eventforge_core::new_id()));
    let store_arg = store.to_str().unwrap().to_owned();
    let broker = PrivateBroker::start_with(Kind::Nats, &["-js", "-sd", &store_arg]).await;
    let backend = JetStreamBackend::builder()
        .server(broker.url())
        .request_timeout(Duration::from_secs(1))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    (broker, backend, store)
}

/// Jobs stored on disk survive a server restart, calls fail with a
/// transport error while the server is down, and the same backend works
/// again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_server_restart_and_the_backend_reconnects() {
    const JOBS: u64 = 20;

    let (mut broker, backend, store) = durable_server().await;
    let topic = unique("durable");
    let options = options(&["default"]);

    // A feed in use before the restart.
    backend.enqueue(&options, job(&topic, 999)).await.unwrap();
    let before = next(&backend, &options, &topic, "default").await;
    backend.ack(before.receipt).await.unwrap();
    let mut ids = HashSet::new();
    for n in 0..JOBS {
        let message = job(&topic, n);
        ids.insert(message.id.clone());
        backend.enqueue(&options, message).await.unwrap();
    }

    let (mut disconnections, reconnections) = (backend.disconnections(), backend.reconnections());
    broker.stop().await;
    // Once the client knows, calls fail at once (before, a publish may
    // wait in the client and reach the server when it is back).
    tokio::time::timeout(PATIENCE, disconnections.wait_for(|n| *n >= 1))
        .await
        .expect("disconnection noticed in time")
        .unwrap();
    let down = backend.enqueue(&options, job(&topic, 1000)).await;
    assert!(matches!(down, Err(Error::Transport { .. })), "{down:?}");
    let down = backend.stats(&options, &topic, "default").await;
    assert!(matches!(down, Err(Error::Transport { .. })), "{down:?}");
    let down = backend
        .receive(&options, &topic, "default", "c", Duration::from_millis(100))
        .await;
    assert!(matches!(down, Err(Error::Transport { .. })), "{down:?}");

    broker.resume().await;
    let mut reconnections = reconnections;
    tokio::time::timeout(PATIENCE, reconnections.wait_for(|n| *n >= 1))
        .await
        .expect("reconnected in time")
        .unwrap();

    while !ids.is_empty() {
        let delivery = next(&backend, &options, &topic, "default").await;
        assert!(ids.remove(&delivery.message.id), "unknown or twice");
        backend.ack(delivery.receipt).await.unwrap();
    }
    backend.enqueue(&options, job(&topic, 2000)).await.unwrap();
    let after = next(&backend, &options, &topic, "default").await;
    assert_eq!(after.message.payload, 2000);
    backend.ack(after.receipt).await.unwrap();
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(0, 0)
    );

    backend.close().await.unwrap();
    drop(broker);
    let _ = std::fs::remove_dir_all(&store);
}

/// Options of one `default` group (named by its first consumer) with the
/// given visibility timeout.
fn visible_for(timeout: Duration) -> WorkOptions {
    WorkOptions {
        visibility_timeout: timeout,
        ..WorkOptions::default()
    }
}

#[tokio::test]
async fn a_job_nobody_was_handed_keeps_attempt_one_after_close() {
    let topic = unique("close-attempt");
    let options = visible_for(Duration::from_secs(30));
    let first_backend = connect().await;
    first_backend
        .create_group(&options, &topic, "default", true)
        .await
        .unwrap();
    for n in 0..3 {
        first_backend
            .enqueue(&options, job(&topic, n))
            .await
            .unwrap();
    }
    let first = next(&first_backend, &options, &topic, "default").await;
    assert_eq!(first.attempt, 1);
    first_backend.ack(first.receipt).await.unwrap();
    // Nothing to await: time for jobs pulled ahead of any receive (there
    // must be none) to arrive before the close gives them back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first_backend.close().await.unwrap();

    let second_backend = connect().await;
    for _ in 0..2 {
        let delivery = next(&second_backend, &options, &topic, "default").await;
        assert_eq!(delivery.attempt, 1, "never handed out before");
        second_backend.ack(delivery.receipt).await.unwrap();
    }
    cleanup(second_backend, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_consumer_holds_no_job_of_its_group() {
    let topic = unique("idle");
    let options = visible_for(Duration::from_secs(30));
    let idle = connect().await;
    let busy = connect().await;
    idle.create_group(&options, &topic, "default", true)
        .await
        .unwrap();
    for n in 0..2 {
        idle.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    let first = next(&idle, &options, &topic, "default").await;
    idle.ack(first.receipt).await.unwrap();
    // `idle` receives no more; the other job goes to `busy` at once.
    let started = Instant::now();
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        busy.receive(&options, &topic, "default", "busy", Duration::from_secs(5)),
    )
    .await
    .expect("receive honours its timeout")
    .unwrap()
    .expect("the job the idle consumer did not take");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(second.attempt, 1);
    busy.ack(second.receipt).await.unwrap();
    idle.close().await.unwrap();
    cleanup(busy, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_not_handed_to_another_consumer_within_its_visibility_timeout() {
    let topic = unique("visibility");
    let visibility = Duration::from_secs(2);
    let options = visible_for(visibility);
    let first_backend = connect().await;
    let second_backend = connect().await;
    first_backend
        .create_group(&options, &topic, "default", true)
        .await
        .unwrap();
    for n in 0..3 {
        first_backend
            .enqueue(&options, job(&topic, n))
            .await
            .unwrap();
    }
    let first = next(&first_backend, &options, &topic, "default").await;
    first_backend.ack(first.receipt).await.unwrap();
    // Most of a visibility timeout passes before the next receive: a job
    // pulled ahead meanwhile would have little of it left.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = next(&first_backend, &options, &topic, "default").await;
    let handed = Instant::now();
    assert_eq!(held.attempt, 1);
    // Well within `held`'s visibility timeout, the other consumer of the
    // group gets every other job but never `held`.
    while handed.elapsed() < visibility * 3 / 4 {
        let received = tokio::time::timeout(
            PATIENCE,
            second_backend.receive(
                &options,
                &topic,
                "default",
                "second",
                Duration::from_millis(200),
            ),
        )
        .await
        .expect("receive honours its timeout")
        .unwrap();
        if let Some(delivery) = received {
            assert_ne!(delivery.message.id, held.message.id, "handed out twice");
            second_backend.ack(delivery.receipt).await.unwrap();
        }
    }
    first_backend.ack(held.receipt).await.unwrap();
    first_backend.close().await.unwrap();
    cleanup(second_backend, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_gives_back_at_once_every_job_not_handed_out() {
    const JOBS: u64 = 60;
    const TAKEN: u64 = 20;
    let topic = unique("close-gives-back");
    let options = visible_for(Duration::from_secs(60));
    let closing = connect().await;
    let other = connect().await;
    closing
        .create_group(&options, &topic, "default", true)
        .await
        .unwrap();
    for n in 0..JOBS {
        closing.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    for _ in 0..TAKEN {
        let delivery = next(&closing, &options, &topic, "default").await;
        closing.ack(delivery.receipt).await.unwrap();
    }
    closing.close().await.unwrap();
    // Far sooner than the visibility timeout, every other job is there.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in TAKEN..JOBS {
            let delivery = next(&other, &options, &topic, "default").await;
            assert_eq!(delivery.attempt, 1, "never handed out before");
            other.ack(delivery.receipt).await.unwrap();
        }
    })
    .await;
    assert!(drained.is_ok(), "jobs held by the closed backend");
    cleanup(other, &[&topic]).await;
}

#[tokio::test]
async fn a_topic_deleted_by_another_process_is_made_again_by_receive_and_create_group() {
    let topic = unique("deleted-elsewhere");
    let options = visible_for(Duration::from_secs(30));
    let here = connect().await;
    let elsewhere = connect().await;
    here.create_group(&options, &topic, "first", false)
        .await
        .unwrap();
    assert!(elsewhere.delete_topic(&topic).await.unwrap());

    nothing_for(
        &here,
        &options,
        &topic,
        "second",
        Duration::from_millis(200),
    )
    .await;
    here.create_group(&options, &topic, "third", false)
        .await
        .unwrap();
    elsewhere.enqueue(&options, job(&topic, 7)).await.unwrap();
    let delivery = next(&here, &options, &topic, "second").await;
    assert_eq!(delivery.message.payload.as_u64(), Some(7));
    here.ack(delivery.receipt).await.unwrap();
    elsewhere.close().await.unwrap();
    cleanup(here, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_waiting_across_delete_topic_gets_the_new_topics_jobs() {
    let topic = unique("delete-while-waiting");
    let options = visible_for(Duration::from_secs(30));
    let here = std::sync::Arc::new(connect().await);
    let elsewhere = connect().await;
    here.create_group(&options, &topic, "default", false)
        .await
        .unwrap();
    let waiting = {
        let (here, options, topic) = (here.clone(), options.clone(), topic.clone());
        tokio::spawn(async move {
            here.receive(&options, &topic, "default", "c", Duration::from_secs(8))
                .await
        })
    };
    // Until the receive has its pull request out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(here.delete_topic(&topic).await.unwrap());
    elsewhere.enqueue(&options, job(&topic, 1)).await.unwrap();
    let received = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("receive honours its timeout")
        .unwrap()
        .unwrap()
        .expect("the job enqueued after the topic was made again");
    assert_eq!(received.message.payload.as_u64(), Some(1));
    here.ack(received.receipt).await.unwrap();
    elsewhere.delete_topic(&topic).await.unwrap();
    elsewhere.close().await.unwrap();
    here.close().await.unwrap();
}

#[tokio::test]
async fn stats_stay_exact_long_after_an_expiry_and_a_retry() {
    let topic = unique("stats-later");
    let options = WorkOptions {
        visibility_timeout: Duration::from_secs(1),
        ..options(&["default"])
    };
    let backend = connect().await;
    for n in 0..2 {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    let expiring = next(&backend, &options, &topic, "default").await;
    let retried = next(&backend, &options, &topic, "default").await;
    backend
        .retry(&options, retried.receipt, Duration::from_secs(60))
        .await
        .unwrap();
    drop(expiring);
    // The figures must not depend on how long ago these happened.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(2, 0)
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        stats(&backend, &options, &topic, "default").await,
        figures(2, 0)
    );
    cleanup(backend, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_reports_acks_sent_before_a_reconnection() {
    const JOBS: u64 = 5;

    let (mut broker, backend, store) = durable_server().await;
    let topic = unique("lost-acks");
    let options = options(&["default"]);
    for n in 0..JOBS {
        backend.enqueue(&options, job(&topic, n)).await.unwrap();
    }
    let mut deliveries = Vec::new();
    for _ in 0..JOBS {
        deliveries.push(next(&backend, &options, &topic, "default").await);
    }

    // The acks reach a server that never reads them.
    broker.freeze().await;
    for delivery in deliveries {
        backend.ack(delivery.receipt).await.unwrap();
    }
    let mut reconnections = backend.reconnections();
    broker.restart().await;
    tokio::time::timeout(PATIENCE, reconnections.wait_for(|n| *n >= 1))
        .await
        .expect("reconnected in time")
        .unwrap();
    let settled = tokio::time::timeout(PATIENCE, backend.settle())
        .await
        .expect("settle in time");
    assert!(
        matches!(settled, Err(Error::Transport { .. })),
        "acks the server may not have had reported as applied: {settled:?}"
    );
    // Reported once: what is sent from now on is confirmed as usual.
    tokio::time::timeout(PATIENCE, backend.settle())
        .await
        .expect("settle in time")
        .unwrap();
    cleanup(backend, &[&topic]).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_consumer_was_deleted_is_made_again_by_its_receives() {
    let topic = unique("consumer-deleted");
    let options = options(&["a", "b"]);
    let backend = connect().await;
    backend.enqueue(&options, job(&topic, 0)).await.unwrap();
    let first = next(&backend, &options, &topic, "a").await;
    backend.ack(first.receipt).await.unwrap();

    // An operator removes the group's consumer; the stream stays.
    let admin = async_nats::jetstream::new(async_nats::connect(url()).await.unwrap());
    let stream = admin.get_stream(backend.stream_name(&topic)).await.unwrap();
    stream.delete_consumer("a").await.unwrap();
    backend.enqueue(&options, job(&topic, 1)).await.unwrap();

    // Receives may fail while the feed finds out; then the group is back.
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            let received = backend
                .receive(&options, &topic, "a", "c", Duration::from_millis(500))
                .await;
            if let Ok(Some(delivery)) = received {
                let payload = delivery.message.payload.as_u64();
                backend.ack(delivery.receipt).await.unwrap();
                if payload == Some(1) {
                    return;
                }
            }
        }
    })
    .await;
    assert!(found.is_ok(), "group a never received the later job");
    cleanup(backend, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_nobody_receives_from_are_closed() {
    const TOPICS: usize = 5;
    let backend = JetStreamBackend::builder()
        .server(url())
        .storage(JetStreamStorage::Memory)
        .feed_idle_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let options = visible_for(Duration::from_secs(1));
    let topics: Vec<String> = (0..TOPICS).map(|n| unique(&format!("idle-{n}"))).collect();
    for topic in &topics {
        nothing_for(
            &backend,
            &options,
            topic,
            "default",
            Duration::from_millis(1),
        )
        .await;
    }
    assert_eq!(backend.counters().feeds, TOPICS as u64);

    // Past the visibility timeout without a receive, every feed goes.
    let closed = tokio::time::timeout(PATIENCE, async {
        while backend.counters().feeds > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{} feeds still open",
        backend.counters().feeds
    );

    // A later receive opens the feed again and gets the job.
    backend.enqueue(&options, job(&topics[0], 5)).await.unwrap();
    let delivery = next(&backend, &options, &topics[0], "default").await;
    assert_eq!(delivery.attempt, 1);
    backend.ack(delivery.receipt).await.unwrap();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    cleanup(backend, &topics).await;
}
