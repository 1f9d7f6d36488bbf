//! The Redis Streams work queue backend, through the `WorkBackend` trait:
//! delivery, attempts, retries, groups, limits, stats, trimming, bad
//! entries, cancellation, close and a broker restart.
//!
//! Uses the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`); the
//! restart test runs its own Redis on a free loopback port.

#![cfg(feature = "redis")]

mod private_broker;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use eventforge_work::{Delivery, WorkBackend, WorkOptions};

use eventforge_core::{Error, Message};
use eventforge_transports::redis::{RedisStreamsBackend, RedisStreamsBackendBuilder};
use futures::FutureExt;
use redis::AsyncCommands;

const PATIENCE: Duration = Duration::from_secs(20);
/// How long a receive waits when the test expects nothing to come.
const QUIET: Duration = Duration::from_millis(300);

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A queue on a topic of its own, its keys deleted at the end.
struct Queue {
    backend: RedisStreamsBackend,
    topic: String,
    options: WorkOptions,
    groups: Vec<String>,
}

impl Queue {
    async fn new(name: &str) -> Self {
        Self::with(name, WorkOptions::default()).await
    }

    async fn with(name: &str, options: WorkOptions) -> Self {
        let builder = RedisStreamsBackend::builder(url()).poll_interval(Duration::from_millis(20));
        Self::built(name, options, builder).await
    }

    async fn built(name: &str, options: WorkOptions, builder: RedisStreamsBackendBuilder) -> Self {
        let backend = builder.connect().await.expect("Redis at REDIS_URL");
        Queue {
            backend,
            topic: format!("wq-test.{name}.{}", eventforge_core::new_id()),
            groups: options.groups.clone(),
            options,
        }
    }

    fn job(&self, n: u32) -> Message {
        Message::new(&self.topic, n).unwrap()
    }

    async fn enqueue(&self, n: u32) {
        self.backend
            .enqueue(&self.options, self.job(n))
            .await
            .expect("enqueue");
    }

    async fn try_receive(
        &self,
        group: &str,
        consumer: &str,
        timeout: Duration,
    ) -> Option<Delivery> {
        tokio::time::timeout(
            timeout + PATIENCE,
            self.backend
                .receive(&self.options, &self.topic, group, consumer, timeout),
        )
        .await
        .expect("receive returns within its timeout")
        .expect("receive")
    }

    async fn receive(&self, group: &str, consumer: &str) -> Delivery {
        self.try_receive(group, consumer, PATIENCE)
            .await
            .expect("a job in time")
    }

    async fn stats(&self, group: &str) -> (u64, u64) {
        let stats = self
            .backend
            .stats(&self.options, &self.topic, group)
            .await
            .expect("stats");
        (stats.pending, stats.in_flight)
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Deletes the `index`-th entry of the stream by hand, as an operator's
    /// `XDEL` would, whatever the groups think of it.
    async fn delete_entry(&self, index: usize) {
        let stream = self.backend.stream_key(&self.topic);
        let mut redis = self.redis().await;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        let _: u64 = redis::cmd("XDEL")
            .arg(&stream)
            .arg(&entries[index].0)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    async fn stream_len(&self) -> u64 {
        redis::cmd("XLEN")
            .arg(self.backend.stream_key(&self.topic))
            .query_async(&mut self.redis().await)
            .await
            .unwrap()
    }

    /// Waits for the stream to hold `expected` entries: trimming may run
    /// just after an ack returns, and nothing marks it (last resort).
    async fn wait_stream_len(&self, expected: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let length = self.stream_len().await;
            if length == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stream length {length}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn clean_up(self, extra_groups: &[&str]) {
        let mut keys = vec![self.backend.stream_key(&self.topic)];
        for group in self
            .groups
            .iter()
            .map(String::as_str)
            .chain(extra_groups.iter().copied())
        {
            keys.push(self.backend.delayed_key(&self.topic, group));
        }
        let _: () = self.redis().await.del(keys).await.unwrap();
        self.backend.close().await.unwrap();
    }
}

fn payload(delivery: &Delivery) -> u32 {
    delivery.message.payload_as().unwrap()
}

fn consumer() -> String {
    format!("{}-0", eventforge_core::new_id())
}

#[tokio::test]
async fn a_job_enqueued_is_received_once_and_acked() {
    let queue = Queue::new("roundtrip").await;
    let job = queue.job(7);
    let id = job.id.clone();
    queue.backend.enqueue(&queue.options, job).await.unwrap();
    let me = consumer();
    let delivery = queue.receive("default", &me).await;
    assert_eq!(delivery.message.id, id, "the message id is kept");
    assert_eq!(payload(&delivery), 7);
    assert_eq!(delivery.attempt, 1);
    assert_eq!(delivery.receipt.consumer, me);
    queue.backend.ack(delivery.receipt).await.unwrap();
    assert!(queue.try_receive("default", &me, QUIET).await.is_none());
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_retried_job_comes_back_with_the_next_attempt() {
    let queue = Queue::new("retry-attempt").await;
    queue.enqueue(1).await;
    let me = consumer();
    let first = queue.receive("default", &me).await;
    assert_eq!(first.attempt, 1);
    queue
        .backend
        .retry(&queue.options, first.receipt, Duration::ZERO)
        .await
        .unwrap();
    let second = queue.receive("default", &me).await;
    assert_eq!((payload(&second), second.attempt), (1, 2));
    queue
        .backend
        .retry(&queue.options, second.receipt, Duration::ZERO)
        .await
        .unwrap();
    let third = queue.receive("default", &consumer()).await;
    assert_eq!((payload(&third), third.attempt), (1, 3));
    queue.backend.ack(third.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn an_unacked_job_comes_back_after_the_visibility_timeout_and_a_late_ack_fails() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(300),
        ..WorkOptions::default()
    };
    let queue = Queue::with("visibility", options).await;
    queue.enqueue(5).await;
    let taken = Instant::now();
    let first = queue.receive("default", &consumer()).await;
    assert_eq!(first.attempt, 1);
    let second = queue.receive("default", &consumer()).await;
    assert!(
        taken.elapsed() >= Duration::from_millis(300),
        "handed out again after {:?}, before the visibility timeout",
        taken.elapsed()
    );
    assert_eq!((payload(&second), second.attempt), (5, 2));
    let late = queue.backend.ack(first.receipt).await;
    assert!(
        matches!(&late, Err(Error::DeliveryExpired { job_id }) if *job_id == second.message.id),
        "{late:?}"
    );
    queue.backend.ack(second.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_late_ack_succeeds_when_nobody_took_the_job_again() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(200),
        ..WorkOptions::default()
    };
    let queue = Queue::with("late-ack", options).await;
    queue.enqueue(6).await;
    let me = consumer();
    let delivery = queue.receive("default", &me).await;
    // The time passing is what is tested: the ack is checked, not plain.
    tokio::time::sleep(Duration::from_millis(250)).await;
    queue.backend.ack(delivery.receipt).await.unwrap();
    assert!(queue.try_receive("default", &me, QUIET).await.is_none());
    assert_eq!(queue.stats("default").await, (0, 0));
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_late_retry_fails_as_expired_too() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(300),
        ..WorkOptions::default()
    };
    let queue = Queue::with("late-retry", options).await;
    queue.enqueue(5).await;
    let first = queue.receive("default", &consumer()).await;
    let second = queue.receive("default", &consumer()).await;
    let late = queue
        .backend
        .retry(&queue.options, first.receipt, Duration::ZERO)
        .await;
    assert!(
        matches!(late, Err(Error::DeliveryExpired { .. })),
        "{late:?}"
    );
    queue.backend.ack(second.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_retry_goes_back_to_its_own_group_only_and_waits_its_delay() {
    let options = WorkOptions {
        groups: vec!["billing".into(), "audit".into()],
        ..WorkOptions::default()
    };
    let queue = Queue::with("retry-group", options).await;
    queue.enqueue(3).await;
    let (billing, audit) = (consumer(), consumer());
    let failed = queue.receive("billing", &billing).await;
    let audited = queue.receive("audit", &audit).await;
    queue.backend.ack(audited.receipt).await.unwrap();
    let delay = Duration::from_millis(400);
    let retried_at = Instant::now();
    queue
        .backend
        .retry(&queue.options, failed.receipt, delay)
        .await
        .unwrap();
    let again = queue.receive("billing", &billing).await;
    assert!(
        retried_at.elapsed() >= delay,
        "handed out after {:?}, before its delay",
        retried_at.elapsed()
    );
    assert_eq!((payload(&again), again.attempt), (3, 2));
    assert!(
        queue.try_receive("audit", &audit, QUIET).await.is_none(),
        "the other group does not see the retry"
    );
    queue.backend.ack(again.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_retry_delayed_beyond_the_visibility_timeout_waits_its_delay() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(200),
        ..WorkOptions::default()
    };
    let queue = Queue::with("long-delay", options).await;
    queue.enqueue(4).await;
    let me = consumer();
    let first = queue.receive("default", &me).await;
    let delay = Duration::from_millis(900);
    let retried_at = Instant::now();
    queue
        .backend
        .retry(&queue.options, first.receipt, delay)
        .await
        .unwrap();
    let again = queue.receive("default", &me).await;
    assert!(
        retried_at.elapsed() >= delay,
        "handed out after {:?}, before its delay",
        retried_at.elapsed()
    );
    assert_eq!(
        again.attempt, 2,
        "the expiry scans did not count deliveries"
    );
    queue.backend.ack(again.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn two_groups_each_receive_every_job() {
    let options = WorkOptions {
        groups: vec!["a".into(), "b".into()],
        ..WorkOptions::default()
    };
    let queue = Queue::with("two-groups", options).await;
    for n in 0..10 {
        queue.enqueue(n).await;
    }
    for group in ["a", "b"] {
        let me = consumer();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let delivery = queue.receive(group, &me).await;
            seen.push(payload(&delivery));
            queue.backend.ack(delivery.receipt).await.unwrap();
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>(), "group {group}");
        assert!(queue.try_receive(group, &me, QUIET).await.is_none());
    }
    queue.clean_up(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_handle_each_job_once() {
    let queue = Queue::new("competing").await;
    for n in 0..40 {
        queue.enqueue(n).await;
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let work = |me: String| {
        let (queue, seen) = (&queue, &seen);
        async move {
            let mut mine = 0;
            while seen.lock().unwrap().len() < 40 {
                let Some(delivery) = queue
                    .try_receive("default", &me, Duration::from_millis(100))
                    .await
                else {
                    continue;
                };
                seen.lock().unwrap().push(payload(&delivery));
                queue.backend.ack(delivery.receipt).await.unwrap();
                mine += 1;
            }
            mine
        }
    };
    let (one, two) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(work(consumer()), work(consumer()))
    })
    .await
    .expect("all jobs handled in time");
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    assert_eq!(seen, (0..40).collect::<Vec<_>>(), "each job exactly once");
    assert_eq!(one + two, 40);
    assert!(queue
        .try_receive("default", &consumer(), QUIET)
        .await
        .is_none());
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_declared_group_receives_jobs_enqueued_before_any_consumer() {
    let queue = Queue::new("declared").await;
    queue.enqueue(1).await;
    queue.enqueue(2).await;
    let me = consumer();
    assert_eq!(payload(&queue.receive("default", &me).await), 1);
    assert_eq!(payload(&queue.receive("default", &me).await), 2);
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_group_first_named_by_a_consumer_receives_only_later_jobs() {
    let queue = Queue::new("ad-hoc").await;
    queue.enqueue(1).await;
    let me = consumer();
    assert!(
        queue
            .try_receive("late", &me, Duration::ZERO)
            .await
            .is_none(),
        "the job enqueued before the group existed is not for it"
    );
    queue.enqueue(2).await;
    assert_eq!(payload(&queue.receive("late", &me).await), 2);
    // create_group without from_start behaves the same.
    queue
        .backend
        .create_group(&queue.options, &queue.topic, "later", false)
        .await
        .unwrap();
    queue.enqueue(3).await;
    assert_eq!(payload(&queue.receive("later", &me).await), 3);
    // ... and with from_start it sees what the stream still holds.
    queue
        .backend
        .create_group(&queue.options, &queue.topic, "replay", true)
        .await
        .unwrap();
    assert_eq!(payload(&queue.receive("replay", &me).await), 1);
    queue.clean_up(&["late", "later", "replay"]).await;
}

#[tokio::test]
async fn enqueue_fails_when_a_group_is_full_and_works_again_after_an_ack() {
    let options = WorkOptions {
        max_size: 5,
        groups: vec!["fast".into(), "slow".into()],
        ..WorkOptions::default()
    };
    let queue = Queue::with("full", options).await;
    for n in 0..5 {
        queue.enqueue(n).await;
    }
    // The fast group takes everything: only the slow one is full.
    let fast = consumer();
    for _ in 0..5 {
        let delivery = queue.receive("fast", &fast).await;
        queue.backend.ack(delivery.receipt).await.unwrap();
    }
    let full = queue.backend.enqueue(&queue.options, queue.job(5)).await;
    match full {
        Err(Error::QueueFull {
            topic,
            group,
            limit,
        }) => {
            assert_eq!(
                (topic.as_str(), group.as_str(), limit),
                (queue.topic.as_str(), "slow", 5)
            );
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(queue.stats("slow").await, (5, 0), "nothing was stored");
    let slow = consumer();
    let taken = queue.receive("slow", &slow).await;
    let still_full = queue.backend.enqueue(&queue.options, queue.job(5)).await;
    assert!(
        matches!(still_full, Err(Error::QueueFull { .. })),
        "in flight counts: {still_full:?}"
    );
    queue.backend.ack(taken.receipt).await.unwrap();
    queue.enqueue(5).await;
    assert_eq!(queue.stats("slow").await, (5, 0));
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn stats_count_pending_and_in_flight_jobs() {
    let queue = Queue::new("stats").await;
    assert_eq!(queue.stats("default").await, (0, 0), "unknown topic");
    for n in 0..4 {
        queue.enqueue(n).await;
    }
    assert_eq!(queue.stats("default").await, (4, 0));
    assert_eq!(queue.stats("nobody").await, (0, 0), "unknown group");
    let me = consumer();
    let first = queue.receive("default", &me).await;
    assert_eq!(queue.stats("default").await, (3, 1));
    queue.backend.ack(first.receipt).await.unwrap();
    assert_eq!(queue.stats("default").await, (3, 0));
    // This receive finds a backlog and takes a batch from Redis: the jobs
    // not handed out yet still count as pending.
    let second = queue.receive("default", &me).await;
    assert_eq!(queue.stats("default").await, (2, 1));
    queue
        .backend
        .retry(&queue.options, second.receipt, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        queue.stats("default").await,
        (3, 0),
        "a delayed retry is pending"
    );
    let third = queue.receive("default", &me).await;
    queue
        .backend
        .retry(&queue.options, third.receipt, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        queue.stats("default").await,
        (3, 0),
        "so is an immediate one"
    );
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn jobs_acked_by_every_group_are_removed_from_the_stream() {
    let options = WorkOptions {
        groups: vec!["a".into(), "b".into()],
        ..WorkOptions::default()
    };
    let queue = Queue::with("trim", options).await;
    for n in 0..6 {
        queue.enqueue(n).await;
    }
    assert_eq!(queue.stream_len().await, 6);
    let me = consumer();
    for _ in 0..6 {
        let delivery = queue.receive("a", &me).await;
        queue.backend.ack(delivery.receipt).await.unwrap();
    }
    // A's acks alone remove nothing: once a trim has run after b's first
    // ack, only that entry is gone.
    let first_b = queue.receive("b", &me).await;
    queue.backend.ack(first_b.receipt).await.unwrap();
    queue.wait_stream_len(5).await;
    assert_eq!(
        queue.stream_len().await,
        5,
        "group b still needs the others"
    );
    for expected_left in (0..5).rev() {
        let delivery = queue.receive("b", &me).await;
        queue.backend.ack(delivery.receipt).await.unwrap();
        queue.wait_stream_len(expected_left).await;
    }
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn an_entry_that_is_not_a_message_is_skipped_and_counted() {
    let queue = Queue::new("garbage").await;
    queue.enqueue(1).await;
    let stream = queue.backend.stream_key(&queue.topic);
    let mut redis = queue.redis().await;
    for (field, value) in [("message", "not json"), ("other", "field")] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    queue.enqueue(2).await;
    let me = consumer();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = queue.receive("default", &me).await;
        seen.push(payload(&delivery));
        queue.backend.ack(delivery.receipt).await.unwrap();
    }
    assert_eq!(seen, [1, 2]);
    assert_eq!(queue.backend.counters().undecodable, 2);
    assert!(queue.try_receive("default", &me, QUIET).await.is_none());
    assert_eq!(
        queue.stats("default").await,
        (0, 0),
        "the bad entries were acked"
    );
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_job_deleted_while_in_flight_is_dropped_without_error() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(300),
        ..WorkOptions::default()
    };
    let queue = Queue::with("deleted", options).await;
    queue.enqueue(1).await;
    let taken = queue.receive("default", &consumer()).await;
    queue.delete_entry(0).await;
    // Past the visibility timeout the expiry scan finds the entry gone.
    assert!(queue
        .try_receive("default", &consumer(), Duration::from_millis(600))
        .await
        .is_none());
    assert_eq!(queue.stats("default").await, (0, 0));
    let late = queue.backend.ack(taken.receipt).await;
    assert!(
        matches!(late, Err(Error::DeliveryExpired { .. })),
        "{late:?}"
    );
    queue.enqueue(2).await;
    assert_eq!(
        queue.stats("default").await,
        (1, 0),
        "counted after a deletion"
    );
    let next = queue.receive("default", &consumer()).await;
    assert_eq!(payload(&next), 2);
    queue.backend.ack(next.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_cancelled_receive_loses_no_job() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(300),
        ..WorkOptions::default()
    };
    let queue = Queue::with("cancel", options).await;
    queue.enqueue(1).await;
    let me = consumer();
    // Polled once (which starts taking the job from Redis), then dropped.
    let dropped = queue
        .backend
        .receive(&queue.options, &queue.topic, "default", &me, PATIENCE)
        .now_or_never();
    assert!(
        dropped.is_none(),
        "nothing can be ready without Redis answering"
    );
    // The same consumer gets it at once...
    let delivery = queue.receive("default", &me).await;
    assert_eq!((payload(&delivery), delivery.attempt), (1, 1));
    queue.backend.ack(delivery.receipt).await.unwrap();

    // ... and if that consumer is gone, it is given back to the group.
    queue.enqueue(2).await;
    let gone = consumer();
    let dropped = queue
        .backend
        .receive(&queue.options, &queue.topic, "default", &gone, PATIENCE)
        .now_or_never();
    assert!(dropped.is_none());
    let delivery = queue.receive("default", &consumer()).await;
    assert_eq!(payload(&delivery), 2);
    queue.backend.ack(delivery.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn close_is_idempotent_and_ends_every_call() {
    let queue = Queue::new("close").await;
    queue.enqueue(1).await;
    let me = consumer();
    let delivery = queue.receive("default", &me).await;
    let waiting = {
        let backend = &queue.backend;
        let (options, topic) = (&queue.options, &queue.topic);
        async move {
            backend
                .receive(options, topic, "other", "x-0", PATIENCE)
                .await
        }
    };
    let closing = async {
        tokio::task::yield_now().await;
        queue.backend.close().await
    };
    let (waited, closed) = tokio::time::timeout(PATIENCE, async { tokio::join!(waiting, closing) })
        .await
        .expect("close ends a waiting receive");
    closed.unwrap();
    assert!(matches!(waited, Err(Error::Closed("redis"))), "{waited:?}");
    queue.backend.close().await.expect("a second close is fine");
    let options = &queue.options;
    assert!(matches!(
        queue.backend.enqueue(options, queue.job(2)).await,
        Err(Error::Closed("redis"))
    ));
    assert!(matches!(
        queue.backend.ack(delivery.receipt).await,
        Err(Error::Closed("redis"))
    ));
    assert!(matches!(
        queue.backend.stats(options, &queue.topic, "default").await,
        Err(Error::Closed("redis"))
    ));
    assert!(matches!(
        queue
            .backend
            .receive(options, &queue.topic, "default", &me, QUIET)
            .await,
        Err(Error::Closed("redis"))
    ));
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn close_first_finishes_the_acks_and_enqueues_already_made() {
    let queue = Queue::new("close-drain").await;
    queue.enqueue(1).await;
    let delivery = queue.receive("default", &consumer()).await;
    let backend = &queue.backend;
    // join! polls in order: the ack and the enqueue are handed over first.
    let (acked, enqueued, closed) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(
            backend.ack(delivery.receipt),
            backend.enqueue(&queue.options, queue.job(2)),
            backend.close()
        )
    })
    .await
    .expect("close in time");
    acked.unwrap();
    enqueued.unwrap();
    closed.unwrap();
    let after = RedisStreamsBackend::connect(url()).await.unwrap();
    let stats = after
        .stats(&queue.options, &queue.topic, "default")
        .await
        .unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight),
        (1, 0),
        "job 1 acked, job 2 stored"
    );
    after.close().await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_while_redis_is_down_and_work_again_after_it_restarts() {
    use private_broker::{Kind, PrivateBroker};

    let mut broker = PrivateBroker::start(Kind::Redis).await;
    let backend = RedisStreamsBackend::builder(broker.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .command_timeout(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    let options = WorkOptions::default();
    let topic = "restart.jobs";
    let me = consumer();
    backend
        .enqueue(&options, Message::new(topic, 1).unwrap())
        .await
        .unwrap();
    let before = backend
        .receive(&options, topic, "default", &me, PATIENCE)
        .await
        .unwrap()
        .expect("a job before the restart");
    backend.ack(before.receipt).await.unwrap();

    // Scripts flushed from Redis are loaded again on first use.
    let mut admin = redis::Client::open(broker.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let stats = backend.stats(&options, topic, "default").await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (0, 0));

    broker.stop().await;
    let down = backend
        .enqueue(&options, Message::new(topic, 2).unwrap())
        .await;
    assert!(matches!(down, Err(Error::Transport { .. })), "{down:?}");
    let down = backend
        .receive(&options, topic, "default", &me, QUIET)
        .await;
    assert!(matches!(down, Err(Error::Transport { .. })), "{down:?}");
    let down = backend.stats(&options, topic, "default").await;
    assert!(matches!(down, Err(Error::Transport { .. })), "{down:?}");

    broker.resume().await;
    // Each failure is one real reconnection attempt, spaced by the backoff.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match backend
            .enqueue(&options, Message::new(topic, 3).unwrap())
            .await
        {
            Ok(()) => break,
            Err(Error::Transport { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("no recovery: {error}"),
        }
    }
    let after = backend
        .receive(&options, topic, "default", &me, PATIENCE)
        .await
        .unwrap()
        .expect("a job after the restart");
    assert_eq!(after.message.payload_as::<u32>().unwrap(), 3);
    backend.ack(after.receipt).await.unwrap();
    assert!(backend.counters().reconnects >= 1);
    backend.close().await.unwrap();
}

/// The names of the Redis consumers of `group` on the queue's stream.
async fn consumer_names(queue: &Queue, group: &str) -> Vec<String> {
    let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(queue.backend.stream_key(&queue.topic))
        .arg(group)
        .query_async(&mut queue.redis().await)
        .await
        .unwrap();
    consumers
        .iter()
        .filter_map(|consumer| match consumer.get("name") {
            Some(redis::Value::BulkString(name)) => {
                Some(String::from_utf8_lossy(name).into_owned())
            }
            Some(redis::Value::SimpleString(name)) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Waits until Redis knows `consumer` in `group`: its first fetch has run
/// (and found nothing to take, when the stream is empty).
async fn wait_for_consumer(queue: &Queue, group: &str, consumer: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !consumer_names(queue, group)
        .await
        .iter()
        .any(|name| name == consumer)
    {
        assert!(
            Instant::now() < deadline,
            "consumer {consumer} never fetched"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_job_fetched_for_a_dropped_receive_goes_to_another_consumer_at_once() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_secs(30),
        ..WorkOptions::default()
    };
    let queue = Queue::with("give-back-dropped", options).await;
    queue.enqueue(1).await;
    // Polled once (which starts taking the job from Redis), then dropped
    // by a consumer that never calls again.
    let dropped = queue
        .backend
        .receive(
            &queue.options,
            &queue.topic,
            "default",
            &consumer(),
            PATIENCE,
        )
        .now_or_never();
    assert!(
        dropped.is_none(),
        "nothing can be ready without Redis answering"
    );
    assert_eq!(queue.stats("default").await, (1, 0), "still waiting");
    // Well within the visibility timeout, and not counted as an attempt.
    let delivery = queue
        .try_receive("default", &consumer(), Duration::from_secs(5))
        .await
        .expect("handed to another consumer before the visibility timeout");
    assert_eq!((payload(&delivery), delivery.attempt), (1, 1));
    assert_eq!(queue.stats("default").await, (0, 1));
    queue.backend.ack(delivery.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_job_taken_by_the_blocked_read_of_a_dropped_receive_goes_to_another_consumer() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_secs(30),
        ..WorkOptions::default()
    };
    // Long blocking reads: the read outlives the receive that started it.
    let builder = RedisStreamsBackend::builder(url()).poll_interval(Duration::from_secs(2));
    let queue = Queue::built("give-back-blocked", options, builder).await;
    let gone = consumer();
    {
        let waiting =
            queue
                .backend
                .receive(&queue.options, &queue.topic, "default", &gone, PATIENCE);
        tokio::pin!(waiting);
        // Dropped once its fetch found the stream empty and went on to wait.
        tokio::select! {
            received = &mut waiting => panic!("nothing to receive: {received:?}"),
            () = wait_for_consumer(&queue, "default", &gone) => {}
        }
    }
    queue.enqueue(1).await;
    let delivery = queue
        .try_receive("default", &consumer(), Duration::from_secs(5))
        .await
        .expect("handed to another consumer before the visibility timeout");
    assert_eq!((payload(&delivery), delivery.attempt), (1, 1));
    queue.backend.ack(delivery.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_that_time_out_leave_no_job_behind() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_secs(30),
        ..WorkOptions::default()
    };
    let queue = std::sync::Arc::new(Queue::with("give-back-timeout", options).await);
    const JOBS: u32 = 60;
    let producer = {
        let queue = std::sync::Arc::clone(&queue);
        tokio::spawn(async move {
            for n in 0..JOBS {
                queue.enqueue(n).await;
                // Paced so that jobs arrive while short receives come and go.
                tokio::time::sleep(Duration::from_millis(37)).await;
            }
        })
    };
    let mut received = Vec::new();
    // Each call a consumer of its own that never calls again, and times out
    // while its fetch may still be taking a job from Redis.
    while !producer.is_finished() {
        if let Some(delivery) = queue
            .try_receive("default", &consumer(), Duration::from_millis(25))
            .await
        {
            received.push(payload(&delivery));
            queue.backend.ack(delivery.receipt).await.unwrap();
        }
    }
    tokio::time::timeout(PATIENCE, producer)
        .await
        .expect("producer ends")
        .unwrap();
    let last = consumer();
    while let Some(delivery) = queue.try_receive("default", &last, QUIET).await {
        assert_eq!(delivery.attempt, 1, "never handed out before");
        received.push(payload(&delivery));
        queue.backend.ack(delivery.receipt).await.unwrap();
    }
    received.sort_unstable();
    assert_eq!(received, (0..JOBS).collect::<Vec<_>>());
    assert_eq!(queue.stats("default").await, (0, 0));
    std::sync::Arc::into_inner(queue)
        .expect("the producer is done")
        .clean_up(&[])
        .await;
}

#[tokio::test]
async fn a_dequeue_cancelled_before_its_answer_leaves_the_job_unspent() {
    use eventforge_work::WorkQueue;

    let builder = RedisStreamsBackend::builder(url()).poll_interval(Duration::from_millis(20));
    let backend = builder.connect().await.expect("Redis at REDIS_URL");
    let topic = format!("wq-test.dequeue-cancel.{}", eventforge_core::new_id());
    let stream = backend.stream_key(&topic);
    let delayed = backend.delayed_key(&topic, "default");
    let queue = WorkQueue::builder(backend)
        .max_retries(1)
        .visibility_timeout(Duration::from_secs(30))
        .summary_interval(None)
        .build();
    queue.enqueue(&topic, 7u32).await.unwrap();
    let dropped = queue.dequeue(&topic, "default", PATIENCE).now_or_never();
    assert!(
        dropped.is_none(),
        "nothing can be ready without Redis answering"
    );
    // Neither lost for the visibility timeout nor dead-lettered unrun.
    let job = tokio::time::timeout(
        PATIENCE,
        queue.dequeue(&topic, "default", Duration::from_secs(5)),
    )
    .await
    .expect("dequeue returns within its timeout")
    .unwrap()
    .expect("the job, before its visibility timeout");
    assert_eq!(job.attempt(), 1);
    job.ack().await.unwrap();
    let mut redis = redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis.del(vec![stream, delayed]).await.unwrap();
    queue.close().await.unwrap();
}

#[tokio::test]
async fn consumers_holding_nothing_are_deleted_once_idle_and_holders_stay() {
    let builder = RedisStreamsBackend::builder(url())
        .poll_interval(Duration::from_millis(20))
        .consumer_idle_limit(Duration::ZERO);
    let queue = Queue::built("forget-consumers", WorkOptions::default(), builder).await;
    queue.enqueue(1).await;
    let holder = consumer();
    let held = queue.receive("default", &holder).await;
    for _ in 0..20 {
        assert!(queue
            .try_receive("default", &consumer(), Duration::ZERO)
            .await
            .is_none());
    }
    assert!(consumer_names(&queue, "default").await.len() >= 20);
    // An ack trims the stream, which deletes the idle consumers.
    queue.enqueue(2).await;
    let delivery = queue.receive("default", &consumer()).await;
    queue.backend.ack(delivery.receipt).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let names = consumer_names(&queue, "default").await;
        if names == [holder.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "consumers left: {names:?}");
        // Trimming runs just after the ack returns; nothing marks its end.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    queue
        .backend
        .ack(held.receipt)
        .await
        .expect("the holder still owns its job");
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn a_job_enqueued_on_a_topic_without_groups_is_not_stored() {
    let options = WorkOptions {
        groups: Vec::new(),
        max_size: 3,
        ..WorkOptions::default()
    };
    let queue = Queue::with("no-groups", options).await;
    for n in 0..10 {
        queue.enqueue(n).await;
    }
    assert_eq!(queue.stream_len().await, 0, "nothing kept for no group");
    assert!(queue
        .try_receive("late", &consumer(), QUIET)
        .await
        .is_none());
    // Once a group exists, jobs are stored for it, within max_size.
    for n in 0..3 {
        queue.enqueue(n).await;
    }
    let full = queue.backend.enqueue(&queue.options, queue.job(3)).await;
    assert!(
        matches!(full, Err(Error::QueueFull { limit: 3, .. })),
        "{full:?}"
    );
    assert_eq!(queue.stats("late").await, (3, 0));
    queue.clean_up(&["late"]).await;
}

#[tokio::test]
async fn a_retry_of_a_job_deleted_while_in_flight_fails_as_expired_and_delays_nothing() {
    let queue = Queue::new("retry-deleted").await;
    queue.enqueue(1).await;
    queue.enqueue(2).await;
    let first = queue.receive("default", &consumer()).await;
    let second = queue.receive("default", &consumer()).await;
    assert_eq!(payload(&first), 1, "the first entry is job 1");
    queue.delete_entry(0).await;
    let retried = queue
        .backend
        .retry(&queue.options, first.receipt, Duration::from_secs(600))
        .await;
    assert!(
        matches!(retried, Err(Error::DeliveryExpired { .. })),
        "{retried:?}"
    );
    let delayed: u64 = queue
        .redis()
        .await
        .zcard(queue.backend.delayed_key(&queue.topic, "default"))
        .await
        .unwrap();
    assert_eq!(delayed, 0, "no retry recorded for a job that is gone");
    assert_eq!(queue.stats("default").await, (0, 1), "job 2 in flight");
    queue.backend.ack(second.receipt).await.unwrap();
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn enqueue_without_a_size_limit_works_after_an_entry_is_deleted() {
    let options = WorkOptions {
        max_size: u64::MAX,
        ..WorkOptions::default()
    };
    let queue = Queue::with("no-limit", options).await;
    for n in 0..3 {
        queue.enqueue(n).await;
    }
    // Deleting an entry the group has not read yet makes Redis unable to
    // report the group's lag: the script counts the entries instead.
    queue.delete_entry(1).await;
    queue.enqueue(3).await;
    assert_eq!(queue.stats("default").await, (3, 0));
    queue.clean_up(&[]).await;
}

#[tokio::test]
async fn jobs_buffered_for_a_consumer_that_stopped_receiving_go_to_another_consumer() {
    let options = WorkOptions {
        visibility_timeout: Duration::from_secs(30),
        ..WorkOptions::default()
    };
    let queue = Queue::with("give-back-busy", options).await;
    const JOBS: u32 = 10;
    for n in 0..JOBS {
        queue.enqueue(n).await;
    }
    // Concurrent calls: once they find a backlog the consumer takes a batch
    // ahead of need, then it never calls again (stopped while running its
    // three jobs).
    let busy = consumer();
    let held = futures::future::join_all((0..3).map(|_| queue.receive("default", &busy))).await;
    let mut received: Vec<u32> = held.iter().map(payload).collect();
    let other = consumer();
    while received.len() < JOBS as usize {
        let delivery = queue
            .try_receive("default", &other, Duration::from_secs(5))
            .await
            .expect("the rest before the visibility timeout");
        assert_eq!(delivery.attempt, 1, "never handed out before");
        received.push(payload(&delivery));
        queue.backend.ack(delivery.receipt).await.unwrap();
    }
    received.sort_unstable();
    assert_eq!(received, (0..JOBS).collect::<Vec<_>>());
    for delivery in held {
        queue.backend.ack(delivery.receipt).await.unwrap();
    }
    queue.clean_up(&[]).await;
}

/// With Redis set to persist (append-only file), jobs survive a restart:
/// those waiting and the one in flight, which comes back after its
/// visibility timeout.
#[tokio::test]
async fn jobs_survive_a_restart_of_a_redis_that_persists() {
    use private_broker::{Kind, PrivateBroker};
    const JOBS: i64 = 10;

    let dir = std::env::temp_dir().join(format!("eventforge-redis-{}", eventforge_core::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let persist = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ];
    let mut broker = PrivateBroker::start_with(Kind::Redis, &persist).await;
    let backend = RedisStreamsBackend::builder(broker.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .command_timeout(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    let options = WorkOptions {
        visibility_timeout: Duration::from_millis(500),
        ..WorkOptions::default()
    };
    let topic = "persisted.jobs";
    for n in 0..JOBS {
        backend
            .enqueue(&options, Message::new(topic, n).unwrap())
            .await
            .unwrap();
    }
    let held = backend
        .receive(&options, topic, "default", &consumer(), PATIENCE)
        .await
        .unwrap()
        .expect("a job before the restart");
    // The consumer holding it dies with the server.
    drop(held);

    broker.stop().await;
    broker.resume().await;

    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < JOBS as usize {
        assert!(Instant::now() < deadline, "only {seen:?} after the restart");
        match backend
            .receive(
                &options,
                topic,
                "default",
                &consumer(),
                Duration::from_secs(1),
            )
            .await
        {
            Ok(Some(delivery)) => {
                seen.push(delivery.message.payload_as::<i64>().unwrap());
                backend.ack(delivery.receipt).await.unwrap();
            }
            Ok(None) => {}
            // Reconnecting: each failure is one attempt, spaced by the backoff.
            Err(Error::Transport { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => panic!("unexpected error after the restart: {error}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..JOBS).collect::<Vec<_>>(), "every job, once");
    backend.close().await.unwrap();
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
