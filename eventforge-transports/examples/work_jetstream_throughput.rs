//! Work-queue throughput on the JetStream backend, through the
//! `WorkBackend` trait: one producer keeping 256 enqueues in flight and two
//! consumers (each its own connection) looping receive → ack, until every
//! job is acked.
//!
//! ```text
//! cargo run --release -p eventforge-transports --features nats \
//!     --example work_jetstream_throughput
//! ```
//!
//! Environment: `NATS_URL` (default `nats://127.0.0.1:4222`), `JOBS`
//! (default 50000), `STORAGE=memory` for a memory stream (default file),
//! `DEDUP=off` to publish without `Nats-Msg-Id`.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge_core::Message;

use eventforge_transports::nats::{JetStreamBackend, JetStreamStorage};
use eventforge_work::{WorkBackend, WorkOptions};
use futures::{StreamExt, TryStreamExt};

/// Enqueues the producer keeps in flight.
const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError + Send + Sync>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let jobs: u64 = match std::env::var("JOBS") {
        Ok(jobs) => jobs.parse()?,
        Err(_) => 50_000,
    };
    let storage = match std::env::var("STORAGE").as_deref() {
        Ok("memory") => JetStreamStorage::Memory,
        _ => JetStreamStorage::File,
    };
    let deduplicate = std::env::var("DEDUP").as_deref() != Ok("off");
    let connect = || {
        JetStreamBackend::builder()
            .server(url.clone())
            .storage(storage)
            .deduplicate(deduplicate)
            .connect()
    };
    let producer = Arc::new(connect().await?);
    let consumers = [Arc::new(connect().await?), Arc::new(connect().await?)];
    let topic = format!("bench.work.{}", eventforge_core::new_id());
    let options = Arc::new(WorkOptions {
        max_size: jobs.max(1),
        ..WorkOptions::default()
    });
    producer
        .create_group(&options, &topic, "default", true)
        .await?;

    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut consuming = Vec::new();
    for (n, consumer) in consumers.iter().enumerate() {
        let (consumer, options, topic, acked) = (
            Arc::clone(consumer),
            Arc::clone(&options),
            topic.clone(),
            Arc::clone(&acked),
        );
        consuming.push(tokio::spawn(async move {
            let name = format!("consumer-{n}");
            while acked.load(Ordering::Relaxed) < jobs {
                let received = consumer
                    .receive(
                        &options,
                        &topic,
                        "default",
                        &name,
                        Duration::from_millis(500),
                    )
                    .await?;
                if let Some(delivery) = received {
                    consumer.ack(delivery.receipt).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, eventforge_core::Error>(())
        }));
    }
    futures::stream::iter(0..jobs)
        .map(|n| Message::new(topic.as_str(), n))
        .try_for_each_concurrent(IN_FLIGHT, |job| {
            let (producer, options) = (&producer, &options);
            async move { producer.enqueue(options, job).await }
        })
        .await?;
    let enqueued = started.elapsed();
    for consumer in consuming {
        consumer.await??;
    }
    let elapsed = started.elapsed();

    println!(
        "{jobs} jobs, {storage:?} storage, dedup {deduplicate}: all enqueued after \
         {enqueued:.2?}, all acked after {elapsed:.2?}: {:.0} jobs/s end to end",
        jobs as f64 / elapsed.as_secs_f64()
    );
    producer.delete_topic(&topic).await?;
    for backend in consumers.iter().chain([&producer]) {
        backend.close().await?;
    }
    Ok(())
}
