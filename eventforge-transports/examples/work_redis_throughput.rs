//! Jobs per second through a Redis Streams work queue, enqueue to ack: one
//! producer with many enqueues in flight and two consumers, each with a few
//! concurrent receive-then-ack loops.
//!
//! ```text
//! cargo run --release -p eventforge-transports --features redis \
//!     --example work_redis_throughput -- [jobs] [enqueues_in_flight] [loops_per_consumer]
//! ```
//!
//! Defaults: 50000 jobs, 256 enqueues in flight, 4 loops per consumer.
//! Uses the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! deletes its stream at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge_core::{Error, Message};

use eventforge_transports::redis::RedisStreamsBackend;
use eventforge_work::{WorkBackend, WorkOptions};
use futures::StreamExt;

/// Time spent in `receive` calls that returned a job, and in `ack`.
#[derive(Default)]
struct Waits {
    receive_ns: AtomicU64,
    ack_ns: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().ok());
    let jobs = args.next().flatten().unwrap_or(50_000);
    let in_flight = args.next().flatten().unwrap_or(256) as usize;
    let loops = args.next().flatten().unwrap_or(4);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let topic = format!("bench.jobs.{}", eventforge_core::new_id());
    let options = WorkOptions {
        max_size: jobs + 1,
        ..WorkOptions::default()
    };

    let producer = RedisStreamsBackend::connect(url.as_str()).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let waits = Arc::new(Waits::default());
    let started = Instant::now();
    let mut backends = Vec::new();
    let mut loops_running = Vec::new();
    for c in 0..2 {
        let backend = Arc::new(RedisStreamsBackend::connect(url.as_str()).await?);
        backends.push(Arc::clone(&backend));
        let consumer = format!("{}-{c}", eventforge_core::new_id());
        for _ in 0..loops {
            let backend = Arc::clone(&backend);
            let (consumer, topic, options) = (consumer.clone(), topic.clone(), options.clone());
            let (acked, waits) = (Arc::clone(&acked), Arc::clone(&waits));
            loops_running.push(tokio::spawn(async move {
                while acked.load(Ordering::Relaxed) < jobs {
                    let asked = Instant::now();
                    let timeout = Duration::from_millis(200);
                    let received = backend
                        .receive(&options, &topic, "default", &consumer, timeout)
                        .await?;
                    let Some(job) = received else { continue };
                    let acking = Instant::now();
                    let waited = acking - asked;
                    waits
                        .receive_ns
                        .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
                    backend.ack(job.receipt).await?;
                    let waited = acking.elapsed();
                    waits
                        .ack_ns
                        .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(())
            }));
        }
    }
    futures::stream::iter(0..jobs)
        .map(|n| {
            let message = Message::new(topic.as_str(), n);
            let (producer, options) = (&producer, &options);
            async move { producer.enqueue(options, message?).await }
        })
        .buffer_unordered(in_flight)
        .fold(
            Ok(()),
            |all: Result<(), Error>, one| async move { all.and(one) },
        )
        .await?;
    let enqueued_in = started.elapsed();
    for running in loops_running {
        running.await.expect("a consumer loop panicked")?;
    }
    let total = started.elapsed();
    println!(
        "{jobs} jobs, {in_flight} enqueues in flight, 2 consumers x {loops} loops: \
         enqueued in {:.2} s, all acked in {:.2} s: {:.0} jobs/s",
        enqueued_in.as_secs_f64(),
        total.as_secs_f64(),
        jobs as f64 / total.as_secs_f64()
    );
    println!(
        "mean wait per job: receive {:.0} us, ack {:.0} us",
        waits.receive_ns.load(Ordering::Relaxed) as f64 / jobs as f64 / 1000.0,
        waits.ack_ns.load(Ordering::Relaxed) as f64 / jobs as f64 / 1000.0
    );
    let left = producer.stats(&options, &topic, "default").await?;
    println!(
        "left: {} pending, {} in flight",
        left.pending, left.in_flight
    );

    let redis_error = |e: redis::RedisError| Error::transport("redis", e);
    let client = redis::Client::open(url.as_str()).map_err(redis_error)?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_error)?;
    let stream = producer.stream_key(&topic);
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .map_err(redis_error)?;
    println!("stream length after the run: {length}");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .map_err(redis_error)?;
    for backend in backends {
        backend.close().await?;
    }
    producer.close().await
}
