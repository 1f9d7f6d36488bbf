//! A work queue: one producer, two competing consumers, a job that fails for
//! good and lands in the dead-letter topic, and the lifecycle events of it
//! all.
//!
//! The same code runs on every backend; pick one with the first argument:
//!
//! ```text
//! cargo run --example 11_work_queue                                         # in-process
//! cargo run --example 11_work_queue --features redis -- redis://127.0.0.1:6379
//! cargo run --example 11_work_queue --features nats  -- nats://127.0.0.1:4222
//! ```
//!
//! On a broker the lifecycle events go to the broker too; watch them from
//! another terminal with
//! `cargo run -q -p eventforge-worker -- sub nats://127.0.0.1:4222 '_events.**'`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventforge::work::headers::DEAD_LETTER_REASON_HEADER;
use eventforge::work::{dead_letter_topic, JobEventPayload};
use eventforge::work::{WorkBackend, WorkQueue};
use eventforge::{BoxError, MessageQueue};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
}

/// The backend named by the command line (memory, Redis Streams or
/// JetStream), and where lifecycle events go: on a broker, the broker
/// itself, so `eventforge sub <url> '_events.**'` shows them from another
/// terminal.
async fn backend(
    url: Option<&str>,
) -> Result<(Arc<dyn WorkBackend>, MessageQueue), Box<dyn std::error::Error>> {
    match url {
        None | Some("memory") => Ok((
            Arc::new(eventforge::work::MemoryWorkBackend::new()),
            MessageQueue::memory(),
        )),
        #[cfg(feature = "redis")]
        Some(url) if url.starts_with("redis://") => Ok((
            Arc::new(eventforge::transports::redis::RedisStreamsBackend::connect(url).await?),
            MessageQueue::new(eventforge::transports::redis::RedisTransport::connect(url).await?),
        )),
        #[cfg(feature = "nats")]
        Some(url) if url.starts_with("nats://") => Ok((
            Arc::new(eventforge::transports::nats::JetStreamBackend::connect(url).await?),
            MessageQueue::new(eventforge::transports::nats::NatsTransport::connect(url).await?),
        )),
        Some(other) => Err(format!(
            "no backend for {other:?}: use memory, redis://… (feature redis) or nats://… (feature nats)"
        )
        .into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1);
    let (backend, events) = backend(url.as_deref()).await?;
    let queue = WorkQueue::builder_shared(Arc::clone(&backend))
        .events(events)
        .groups(["mailers"])
        .max_retries(2)
        .retry_delay(Duration::from_millis(50))
        .visibility_timeout(Duration::from_secs(10))
        .build();
    // A fresh topic per run, so a durable backend starts empty.
    let topic = format!("emails.{}", &eventforge::new_id()[..8]);
    println!("backend: {}, topic: {topic}", queue.backend_name());

    // Every step of every job, live.
    let mut events = queue.events().subscribe("_events.**").await?;
    tokio::spawn(async move {
        while let Some(message) = events.next().await {
            if let Ok(event) = message.payload_as::<JobEventPayload>() {
                let job = &event.job_id[..8];
                let attempt = event
                    .attempt
                    .map(|n| format!(" try {n}"))
                    .unwrap_or_default();
                let error = event.error.map(|e| format!(": {e}")).unwrap_or_default();
                println!(
                    "  {:<16} {job} on {}{attempt}{error}",
                    event.event, event.topic
                );
            }
        }
    });

    let jobs = 6;
    let settled = Arc::new(AtomicUsize::new(0));
    let all_settled = Arc::new(Notify::new());
    let mut consumers = Vec::new();
    for name in ["alice", "bob"] {
        let (settled, all_settled) = (Arc::clone(&settled), Arc::clone(&all_settled));
        let consumer = queue
            .consume(&topic, "mailers", move |message| {
                let (settled, all_settled) = (Arc::clone(&settled), Arc::clone(&all_settled));
                async move {
                    let email: Email = message.payload_as()?;
                    // An error is a failed try: retried after `retry_delay`,
                    // dead-lettered after `max_retries`.
                    let outcome: Result<(), BoxError> = if email.to.ends_with("@invalid") {
                        Err(format!("no mailbox for {}", email.to).into())
                    } else {
                        // Sending takes a moment, so both consumers get a share.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        println!("{name} sent {:?} to {}", email.subject, email.to);
                        Ok(())
                    };
                    if outcome.is_ok() && settled.fetch_add(1, Ordering::SeqCst) + 1 == jobs - 1 {
                        all_settled.notify_one();
                    }
                    outcome
                }
            })
            .await?;
        consumers.push(consumer);
    }

    for n in 0..jobs {
        let to = if n == 3 {
            "nobody@invalid".to_owned()
        } else {
            format!("user{n}@example.com")
        };
        let email = Email {
            to,
            subject: format!("invoice #{n}"),
        };
        queue.enqueue(&topic, &email).await?;
    }

    // The good jobs are done; the bad one ends in the dead-letter topic.
    all_settled.notified().await;
    let letter = queue
        .dequeue(
            &dead_letter_topic(&topic),
            "mailers",
            Duration::from_secs(10),
        )
        .await?
        .ok_or("the failing job never reached the dead-letter topic")?;
    println!(
        "dead letter: {} ({})",
        letter.payload()["to"],
        letter
            .message()
            .header(DEAD_LETTER_REASON_HEADER)
            .cloned()
            .unwrap_or_default()
    );
    for consumer in consumers {
        consumer.stop().await;
    }
    let stats = queue.stats(&topic, "mailers").await?;
    println!(
        "stats: {} pending, {} in flight, {} acked, {} failed tries, {} dead",
        stats.pending, stats.in_flight, stats.acked, stats.nacked, stats.dead
    );
    letter.ack().await?;

    // Durable backends keep topics; this run's are not needed any more.
    for name in [dead_letter_topic(&topic), topic] {
        backend.delete_topic(&name).await?;
    }
    queue.close().await?;
    queue.events().close().await?;
    backend.close().await?;
    Ok(())
}
