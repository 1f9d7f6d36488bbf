//! Work queues end to end: jobs/s from the first enqueue to the last ack,
//! with one producer and two competing consumers, per backend.
//!
//! Run: `cargo bench --bench work_queue` for the memory backend;
//! `cargo bench --bench work_queue --features redis,nats` adds Redis Streams
//! and JetStream (brokers at REDIS_URL / NATS_URL, loopback defaults;
//! `scripts/brokers.sh` starts them). Beside each broker figure the bench
//! prints the raw client doing the same work (add, read as a group, ack)
//! with the same batching, so the ratio holds on a noisy machine.
//!
//! Each figure is the median of three runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge::work::{WorkBackend, WorkQueue};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Notify;

const RUNS: usize = 3;
/// Enqueues the producer keeps in flight.
const WINDOW: usize = 256;
/// Jobs each consumer handles at once.
const CONCURRENCY: usize = 16;
const PATIENCE: Duration = Duration::from_secs(120);

#[allow(dead_code)]
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[allow(dead_code)]
fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(name: &str) -> String {
    format!("bench.{name}.{}", &eventforge::new_id()[..8])
}

/// The small dict payload of the Python peer's figures.
fn payload(n: usize) -> serde_json::Value {
    json!({ "order": n, "item": "book", "quantity": 2 })
}

/// One producer, two consumers (each its own connection from `connect`),
/// `jobs` jobs: jobs/s from the first enqueue to the last ack.
async fn eventforge_jobs_per_second<F, Fut>(connect: F, jobs: usize) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn WorkBackend>>,
{
    let topic = unique("jobs");
    let build = |backend| {
        WorkQueue::builder_shared(backend)
            .max_size(jobs as u64 + 1)
            .summary_interval(None)
            .build()
    };
    let producer = build(connect().await);
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let queue = build(connect().await);
        let (done, finished) = (Arc::clone(&done), Arc::clone(&finished));
        let consumer = queue
            .consume_with(&topic, "default", CONCURRENCY, move |_job| {
                if done.fetch_add(1, Ordering::Relaxed) + 1 == jobs {
                    finished.notify_one();
                }
                async { Ok::<(), std::io::Error>(()) }
            })
            .await
            .expect("start a consumer");
        consumers.push((queue, consumer));
    }

    let started = Instant::now();
    futures::stream::iter(0..jobs)
        .map(|n| {
            let producer = &producer;
            let topic = &topic;
            async move { producer.enqueue(topic, payload(n)).await }
        })
        .buffer_unordered(WINDOW)
        .for_each(|stored| async move {
            stored.expect("enqueue");
        })
        .await;
    tokio::time::timeout(PATIENCE, finished.notified())
        .await
        .expect("every job acked in time");
    let elapsed = started.elapsed();

    for (queue, consumer) in consumers {
        consumer.stop().await;
        queue.close().await.expect("close a consumer queue");
    }
    producer.close().await.expect("close the producer");
    let backend = connect().await;
    backend
        .delete_topic(&topic)
        .await
        .expect("delete the topic");
    backend.close().await.expect("close the backend");
    jobs as f64 / elapsed.as_secs_f64()
}

fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

fn report(name: &str, figure: f64, peer: Option<(&str, f64)>) {
    match peer {
        Some((peer_name, peer_figure)) => println!(
            "{name:<28} {figure:>10.0} jobs/s   {peer_name}: {peer_figure:>10.0} jobs/s   ratio {:.2}",
            figure / peer_figure
        ),
        None => println!("{name:<28} {figure:>10.0} jobs/s"),
    }
}

#[cfg(feature = "redis")]
mod redis_peer {
    //! The raw redis-rs client doing a Redis Streams work queue by hand:
    //! XADD, XREADGROUP in batches, XACK per job, two consumers.

    use super::*;
    use redis::AsyncCommands;

    pub async fn jobs_per_second(jobs: usize) -> f64 {
        let client = redis::Client::open(redis_url()).expect("Redis URL");
        let key = format!("bench:raw:{}", unique("stream"));
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis");
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut admin)
            .await
            .expect("create the group");
        let body = serde_json::to_string(&payload(0)).expect("payload");
        let done = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for consumer in 0..2 {
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to Redis");
            let (key, done, finished) = (key.clone(), Arc::clone(&done), Arc::clone(&finished));
            tasks.push(tokio::spawn(async move {
                let name = format!("c{consumer}");
                while done.load(Ordering::Relaxed) < jobs {
                    let options = redis::streams::StreamReadOptions::default()
                        .group("g", &name)
                        .count(64)
                        .block(100);
                    let reply: redis::streams::StreamReadReply = connection
                        .xread_options(&[&key], &[">"], &options)
                        .await
                        .expect("XREADGROUP");
                    let ids: Vec<String> = reply
                        .keys
                        .into_iter()
                        .flat_map(|stream| stream.ids.into_iter().map(|entry| entry.id))
                        .collect();
                    let acks = ids.iter().map(|id| {
                        let mut connection = connection.clone();
                        let key = key.clone();
                        async move {
                            let _: i64 = connection.xack(&key, "g", &[id]).await.expect("XACK");
                        }
                    });
                    futures::future::join_all(acks).await;
                    if done.fetch_add(ids.len(), Ordering::Relaxed) + ids.len() >= jobs
                        && !ids.is_empty()
                    {
                        finished.notify_one();
                    }
                }
            }));
        }
        let started = Instant::now();
        futures::stream::iter(0..jobs)
            .map(|_| {
                let mut connection = admin.clone();
                let (key, body) = (key.clone(), body.clone());
                async move {
                    let _: String = connection
                        .xadd(&key, "*", &[("message", body)])
                        .await
                        .expect("XADD");
                }
            })
            .buffer_unordered(WINDOW)
            .for_each(|()| async {})
            .await;
        tokio::time::timeout(PATIENCE, finished.notified())
            .await
            .expect("raw Redis consumers done");
        let elapsed = started.elapsed();
        for task in tasks {
            task.await.expect("raw consumer");
        }
        let _: () = admin.del(&key).await.expect("DEL");
        jobs as f64 / elapsed.as_secs_f64()
    }
}

#[cfg(feature = "nats")]
mod jetstream_peer {
    //! The raw async-nats client doing a JetStream work queue by hand:
    //! publish with acks in flight, two pull consumers on one durable
    //! consumer, ack per job.

    use super::*;
    use async_nats::jetstream::{self, consumer::pull, stream};

    pub async fn jobs_per_second(jobs: usize) -> f64 {
        let client = async_nats::connect(nats_url())
            .await
            .expect("connect to NATS");
        let context = jetstream::new(client);
        let name = format!("BENCH_RAW_{}", &eventforge::new_id()[..8]);
        let subject = format!("bench.raw.{name}");
        let stream = context
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .expect("create the stream");
        stream
            .create_consumer(pull::Config {
                durable_name: Some("g".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("create the consumer");
        let body = serde_json::to_vec(&payload(0)).expect("payload");
        let done = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer("g").await.expect("the consumer");
            let (done, finished) = (Arc::clone(&done), Arc::clone(&finished));
            tasks.push(tokio::spawn(async move {
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(64)
                    .messages()
                    .await
                    .expect("pull messages");
                while let Some(message) = messages.next().await {
                    let message = message.expect("a message");
                    message.ack().await.expect("ack");
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == jobs {
                        finished.notify_one();
                    }
                    if done.load(Ordering::Relaxed) >= jobs {
                        break;
                    }
                }
            }));
        }
        let started = Instant::now();
        futures::stream::iter(0..jobs)
            .map(|_| {
                let context = context.clone();
                let (subject, body) = (subject.clone(), body.clone());
                async move {
                    context
                        .publish(subject, body.into())
                        .await
                        .expect("publish")
                        .await
                        .expect("stored");
                }
            })
            .buffer_unordered(WINDOW)
            .for_each(|()| async {})
            .await;
        tokio::time::timeout(PATIENCE, finished.notified())
            .await
            .expect("raw JetStream consumers done");
        let elapsed = started.elapsed();
        for task in tasks {
            task.abort();
        }
        context
            .delete_stream(&name)
            .await
            .expect("delete the stream");
        jobs as f64 / elapsed.as_secs_f64()
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("work queue, 1 producer ({WINDOW} enqueues in flight) → 2 consumers ({CONCURRENCY} jobs each at once), enqueue → ack");

        let mut figures = Vec::new();
        for _ in 0..RUNS {
            let memory = Arc::new(eventforge::work::MemoryWorkBackend::new());
            figures.push(
                eventforge_jobs_per_second(
                    move || {
                        let memory: Arc<dyn WorkBackend> = memory.clone();
                        async move { memory }
                    },
                    200_000,
                )
                .await,
            );
        }
        report("memory", median(figures), None);

        #[cfg(feature = "redis")]
        {
            use eventforge::transports::redis::RedisStreamsBackend;
            let jobs = 50_000;
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                raw.push(redis_peer::jobs_per_second(jobs).await);
                ours.push(
                    eventforge_jobs_per_second(
                        || async {
                            let backend: Arc<dyn WorkBackend> = Arc::new(
                                RedisStreamsBackend::connect(&redis_url())
                                    .await
                                    .expect("connect to Redis"),
                            );
                            backend
                        },
                        jobs,
                    )
                    .await,
                );
            }
            report("redis streams", median(ours), Some(("raw redis-rs", median(raw))));
        }

        #[cfg(feature = "nats")]
        {
            use eventforge::transports::nats::JetStreamBackend;
            let jobs = 50_000;
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                raw.push(jetstream_peer::jobs_per_second(jobs).await);
                ours.push(
                    eventforge_jobs_per_second(
                        || async {
                            let backend: Arc<dyn WorkBackend> = Arc::new(
                                JetStreamBackend::connect(&nats_url())
                                    .await
                                    .expect("connect to NATS"),
                            );
                            backend
                        },
                        jobs,
                    )
                    .await,
                );
            }
            report("jetstream", median(ours), Some(("raw async-nats", median(raw))));
        }
    });
}
