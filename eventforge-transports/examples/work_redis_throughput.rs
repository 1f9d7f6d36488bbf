//! Jobs per second through a Redis Streams work queue, enqueue to ack: one
//! producer with many enqueues in flight and two consumers, each with a few
//! concurrent receive loops.
//!
//! ```text
//! cargo run --release -p eventforge-transports --features redis \
//!     --example work_redis_throughput -- [jobs] [in_flight] [loops_per_consumer]
//! ```
//!
//! Uses the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! deletes its stream at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge_core::{Message, WorkBackend, WorkOptions};
use eventforge_transports::redis_streams::RedisStreamsBackend;
use futures::StreamExt;

static RECEIVE_NS: AtomicU64 = AtomicU64::new(0);
static ACK_NS: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> Result<(), eventforge_core::Error> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let jobs = args.next().and_then(Result::ok).unwrap_or(50_000);
    let in_flight = args.next().and_then(Result::ok).unwrap_or(256) as usize;
    let loops = args.next().and_then(Result::ok).unwrap_or(4);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let topic = format!("bench.jobs.{}", eventforge_core::new_id());
    let options = WorkOptions {
        max_size: jobs + 1,
        ..WorkOptions::default()
    };

    let producer = RedisStreamsBackend::connect(url.as_str()).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut consumers = Vec::new();
    for c in 0..2 {
        let backend = Arc::new(RedisStreamsBackend::connect(url.as_str()).await?);
        let consumer = format!("{}-{c}", eventforge_core::new_id());
        for _ in 0..loops {
            let (backend, consumer, topic, options, acked) = (
                Arc::clone(&backend),
                consumer.clone(),
                topic.clone(),
                options.clone(),
                Arc::clone(&acked),
            );
            consumers.push(tokio::spawn(async move {
                while acked.load(Ordering::Relaxed) < jobs {
                    let t0 = Instant::now();
                    let received = backend
                        .receive(
                            &options,
                            &topic,
                            "default",
                            &consumer,
                            Duration::from_millis(200),
                        )
                        .await?;
                    RECEIVE_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if let Some(job) = received {
                        let t1 = Instant::now();
                        backend.ack(job.receipt).await?;
                        ACK_NS.fetch_add(t1.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, eventforge_core::Error>(())
            }));
        }
    }
    let enqueued = futures::stream::iter(0..jobs)
        .map(|n| {
            let message = Message::new(topic.as_str(), n);
            let (producer, options) = (&producer, &options);
            async move { producer.enqueue(options, message?).await }
        })
        .buffer_unordered(in_flight)
        .fold(
            Ok(()),
            |all: Result<(), eventforge_core::Error>, one| async move { all.and(one) },
        )
        .await;
    enqueued?;
    let enqueue_time = started.elapsed();
    for consumer in consumers {
        consumer.await.expect("consumer task")?;
    }
    let total = started.elapsed();
    println!(
        "{jobs} jobs, {in_flight} enqueues in flight, 2 consumers x {loops} loops: \
         enqueued in {:.2}s, all acked in {:.2}s: {:.0} jobs/s",
        enqueue_time.as_secs_f64(),
        total.as_secs_f64(),
        jobs as f64 / total.as_secs_f64()
    );
    println!(
        "mean receive {:.0} us, mean ack {:.0} us",
        RECEIVE_NS.load(Ordering::Relaxed) as f64 / jobs as f64 / 1000.0,
        ACK_NS.load(Ordering::Relaxed) as f64 / jobs as f64 / 1000.0
    );
    let left = producer.stats(&options, &topic, "default").await?;
    println!("left: {left:?}");
    let client = redis::Client::open(url.as_str())
        .map_err(|e| eventforge_core::Error::transport("redis", e))?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| eventforge_core::Error::transport("redis", e))?;
    let length: u64 = redis::cmd("XLEN")
        .arg(producer.stream_key(&topic))
        .query_async(&mut connection)
        .await
        .map_err(|e| eventforge_core::Error::transport("redis", e))?;
    println!("stream length after the run: {length}");
    let _: () = redis::cmd("DEL")
        .arg(producer.stream_key(&topic))
        .query_async(&mut connection)
        .await
        .map_err(|e| eventforge_core::Error::transport("redis", e))?;
    producer.close().await
}
