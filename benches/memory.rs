//! Memory transport and MessageQueue throughput, beside a bare tokio mpsc
//! channel carrying the same `Arc`'d message (the floor of this machine).
//!
//! Run: `cargo bench --bench memory` (about 20 s). Each figure is the median
//! of 3 runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge::{MemoryTransport, Message, MessageQueue, Pattern, Transport};
use serde_json::{json, Value};

const MESSAGES: u64 = 500_000;
const RUNS: usize = 3;

fn payload() -> Value {
    json!({"user": "alice", "action": "login", "n": 42})
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn human(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else {
        format!("{:.0} k/s", per_second / 1e3)
    }
}

/// Floor: a bounded mpsc channel of the same capacity carrying one `Arc<Message>`.
async fn bare_mpsc() -> f64 {
    let message = Arc::new(Message::new("bench.floor", payload()).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Message>>(eventforge::DEFAULT_BUFFER);
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let start = Instant::now();
    for _ in 0..MESSAGES {
        tx.send(Arc::clone(&message)).await.unwrap();
    }
    drop(tx);
    assert_eq!(consumer.await.unwrap(), MESSAGES);
    rate(MESSAGES, start.elapsed())
}

/// `publish` of a small JSON object to `subscribers` stream subscriptions of
/// `pattern`; returns deliveries per second.
async fn pubsub(subscribers: usize, pattern: &str, unrelated: usize) -> f64 {
    let queue = MessageQueue::memory();
    for i in 0..unrelated {
        let pattern = if i % 2 == 0 {
            format!("other{i}.events")
        } else {
            format!("other{i}.*.events")
        };
        std::mem::forget(queue.subscribe(pattern).await.unwrap());
    }
    let mut consumers = Vec::new();
    for _ in 0..subscribers {
        let mut sub = queue.subscribe(pattern).await.unwrap();
        consumers.push(tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            let mut n = 0;
            while n < MESSAGES {
                batch.clear();
                n += sub.recv_many(&mut batch, 256).await as u64;
            }
        }));
    }
    let value = payload();
    let start = Instant::now();
    for _ in 0..MESSAGES {
        queue.publish("bench.user.login", &value).await.unwrap();
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let elapsed = start.elapsed();
    queue.close().await.unwrap();
    rate(MESSAGES * subscribers as u64, elapsed)
}

/// Sequential request/reply round trips through a `MessageQueue` handler.
async fn request_reply() -> f64 {
    const CALLS: u64 = 100_000;
    let queue = MessageQueue::memory();
    let responder = queue.clone();
    queue
        .on("bench.echo", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, &msg.payload).await }
        })
        .await
        .unwrap();
    let value = payload();
    let start = Instant::now();
    for _ in 0..CALLS {
        queue
            .request("bench.echo", &value, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let elapsed = start.elapsed();
    queue.close().await.unwrap();
    rate(CALLS, elapsed)
}

/// Nanoseconds per `send` of a pre-built message with one matching
/// subscription (drained by its own task), plus `unrelated` others.
async fn publish_cost(unrelated: usize) -> f64 {
    let transport = MemoryTransport::new();
    let mut keep = Vec::new();
    for i in 0..unrelated {
        let pattern = match i % 3 {
            0 => format!("other{i}.events"),
            1 => format!("bench.other{i}.*"),
            _ => format!("other{i}.**"),
        };
        keep.push(
            transport
                .subscribe(Pattern::parse(&pattern).unwrap())
                .await
                .unwrap(),
        );
    }
    let mut sub = transport
        .subscribe(Pattern::parse("bench.user.login").unwrap())
        .await
        .unwrap();
    let drain = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256);
        let mut n = 0;
        while n < MESSAGES {
            batch.clear();
            n += sub.recv_many(&mut batch, 256).await as u64;
        }
    });
    let message = Message::new("bench.user.login", payload()).unwrap();
    let start = Instant::now();
    for _ in 0..MESSAGES {
        transport.send(message.clone()).await.unwrap();
    }
    drain.await.unwrap();
    start.elapsed().as_nanos() as f64 / MESSAGES as f64
}

/// Median of `RUNS` runs, each spawned on a worker thread like application
/// code (not on the thread that blocks on the runtime).
async fn measure<F, Fut>(f: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64> + Send + 'static,
{
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        samples.push(tokio::spawn(f()).await.unwrap());
    }
    median(samples)
}

/// Prints every figure on one runtime. `only` keeps the figures whose
/// label contains it.
async fn figures(only: Option<&str>) {
    let wanted = |label: &str| only.is_none_or(|only| label.contains(only));
    let floor = measure(bare_mpsc).await;
    println!(
        "{:<52} {:>12}",
        "floor: bare tokio mpsc, Arc<Message>",
        human(floor)
    );
    if wanted("pub/sub 1 -> 1") {
        let one = measure(|| pubsub(1, "bench.user.login", 0)).await;
        println!(
            "{:<52} {:>12}   ({:.0}% of floor)",
            "pub/sub 1 -> 1, small JSON object",
            human(one),
            one / floor * 100.0
        );
    }
    if wanted("pub/sub 1 -> 10") {
        let ten = measure(|| pubsub(10, "bench.user.login", 0)).await;
        println!(
            "{:<52} {:>12}   (deliveries)",
            "pub/sub 1 -> 10",
            human(ten)
        );
    }
    if wanted("pub/sub wildcard") {
        let wildcard = measure(|| pubsub(1, "bench.**", 0)).await;
        println!(
            "{:<52} {:>12}",
            "pub/sub wildcard: 1 -> 1 `bench.**`",
            human(wildcard)
        );
    }
    if wanted("request/reply") {
        let rr = measure(request_reply).await;
        println!(
            "{:<52} {:>12}",
            "request/reply round trips, sequential",
            human(rr)
        );
    }
    if wanted("send") {
        let cost_one = measure(|| publish_cost(0)).await;
        let cost_many = measure(|| publish_cost(10_000)).await;
        println!("{:<52} {:>9.0} ns", "send, 1 subscription", cost_one);
        println!(
            "{:<52} {:>9.0} ns   ({:.2}x)",
            "send, 1 subscription + 10,000 unrelated",
            cost_many,
            cost_many / cost_one
        );
    }
}

fn main() {
    // `cargo bench --bench memory -- NAME` runs only the figures whose label contains NAME.
    let only = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    println!("eventforge memory benchmarks ({MESSAGES} messages per run, median of {RUNS})");

    // Publisher and subscribers on one thread, as an event loop (the
    // Python peer's asyncio) runs them: no cross-thread wake-ups or frees.
    println!();
    println!("-- current-thread runtime (one core)");
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(figures(only.as_deref()));
    drop(current);

    // Publisher and subscribers spread over both cores.
    println!();
    println!("-- multi-thread runtime (2 workers)");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on(figures(only.as_deref()));
}
