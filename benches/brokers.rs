//! Broker transports against the raw clients doing the same work, in the
//! same run: pub-sub throughput and request/reply round trips on Redis and
//! NATS, and how fast a NATS request with no responders fails.
//!
//! Run: `cargo bench --bench brokers --features redis,nats`
//! (brokers at REDIS_URL / NATS_URL, loopback defaults; `scripts/brokers.sh`
//! starts them). Each figure is the median of three runs, raw and
//! eventforge alternating.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventforge::transports::nats::NatsTransport;
use eventforge::transports::redis::RedisTransport;
use eventforge::{Error, Message, Pattern, Transport};
use futures::StreamExt;
use redis::AsyncCommands;
use serde_json::json;

const RUNS: usize = 3;
const NATS_MESSAGES: usize = 200_000;
const REDIS_MESSAGES: usize = 100_000;
/// Publishes in flight at once on Redis (each waits for its PUBLISH answer).
const REDIS_WINDOW: usize = 64;
const REQUESTS: usize = 3_000;
const NO_RESPONDER_REQUESTS: usize = 200;
const PATIENCE: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(name: &str) -> String {
    format!("bench.{name}.{}", eventforge::new_id())
}

/// The small dict payload of the Python peer's figures.
fn payload(n: usize) -> serde_json::Value {
    json!({ "order": n, "item": "book", "quantity": 2 })
}

/// What the raw clients publish: a whole protocol message, serialised once.
fn wire_bytes(topic: &str) -> Bytes {
    Message::new(topic, payload(0))
        .and_then(|m| m.to_json())
        .expect("message")
        .into()
}

/// Flow control for the NATS pub-sub figures: core NATS has none, and a
/// subscriber more than the client's buffer (64k messages) behind loses
/// messages. Both the raw and the eventforge publisher keep at most `WINDOW`
/// messages unconsumed, as a real producer on core NATS must.
const WINDOW: usize = 20_000;

struct Progress {
    consumed: tokio::sync::watch::Sender<usize>,
}

impl Progress {
    fn new() -> (Arc<Self>, tokio::sync::watch::Receiver<usize>) {
        let (consumed, watcher) = tokio::sync::watch::channel(0);
        (Arc::new(Progress { consumed }), watcher)
    }

    fn report(&self, consumed: usize) {
        self.consumed.send_replace(consumed);
    }
}

async fn wait_window(watcher: &mut tokio::sync::watch::Receiver<usize>, sent: usize) {
    if sent.saturating_sub(*watcher.borrow()) >= WINDOW {
        watcher
            .wait_for(|consumed| sent - consumed < WINDOW)
            .await
            .expect("consumer alive");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

struct Latencies {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

impl Latencies {
    fn of(mut samples: Vec<Duration>, total: Duration) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Latencies {
            per_second: samples.len() as f64 / total.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

fn print_header() {
    println!(
        "{:<60} {:>14} {:>14} {:>7}  target",
        "figure (median of 3)", "eventforge", "raw client", "ratio"
    );
}

/// A pub-sub figure: eventforge beside the raw client moving the same
/// Messages (the target's floor) and beside the raw client's bytes-only floor.
fn print_pubsub(figure: &str, ours: f64, same_work: f64, bytes_only: f64, target: f64) {
    print_rate(
        &format!("{figure}, raw moving the same Messages"),
        ours,
        same_work,
        "msg/s",
        Some(target),
    );
    print_rate(
        &format!("{figure}, raw moving bytes only"),
        ours,
        bytes_only,
        "msg/s",
        None,
    );
}

fn print_rate(figure: &str, ours: f64, raw: f64, unit: &str, target: Option<f64>) {
    let ratio = ours / raw;
    let verdict = match target {
        Some(floor) if ratio >= floor => format!(">= {floor:.2} met"),
        Some(floor) => format!(">= {floor:.2} NOT MET"),
        None => String::new(),
    };
    println!(
        "{:<60} {:>14} {:>14} {:>7.2}  {}",
        format!("{figure} ({unit})"),
        format!("{ours:.0}"),
        format!("{raw:.0}"),
        ratio,
        verdict
    );
}

fn print_latency(figure: &str, ours: &Latencies, raw: &Latencies) {
    print_rate(figure, ours.per_second, raw.per_second, "calls/s", None);
    println!(
        "{:<60} {:>14} {:>14}",
        "    p50 / p99",
        format!("{:.0?} / {:.0?}", ours.p50, ours.p99),
        format!("{:.0?} / {:.0?}", raw.p50, raw.p99),
    );
}

// ---------------------------------------------------------------- NATS

async fn nats_pubsub_eventforge() -> f64 {
    let subscriber = NatsTransport::connect(nats_url()).await.expect("nats");
    let publisher = NatsTransport::connect(nats_url()).await.expect("nats");
    let topic = unique("nats_pubsub");
    let mut subscription = subscriber
        .subscribe(Pattern::parse(&topic).expect("pattern"))
        .await
        .expect("subscribe");
    let (progress, mut watcher) = Progress::new();
    let counter = tokio::spawn(async move {
        let (mut got, mut batch) = (0, Vec::with_capacity(256));
        while got < NATS_MESSAGES {
            let n = subscription.recv_many(&mut batch, 256).await;
            if n == 0 {
                break;
            }
            got += n;
            progress.report(got);
            batch.clear();
        }
        Instant::now()
    });
    let started = Instant::now();
    for n in 0..NATS_MESSAGES {
        wait_window(&mut watcher, n).await;
        let message = Message::new(&topic, payload(n)).expect("message");
        publisher.send(message).await.expect("send");
    }
    let finished = tokio::time::timeout(PATIENCE, counter)
        .await
        .expect("every message in time")
        .expect("counter");
    publisher.close().await.expect("close");
    subscriber.close().await.expect("close");
    NATS_MESSAGES as f64 / (finished - started).as_secs_f64()
}

/// Waits until the server has processed what `client` sent (a request that
/// nobody answers comes back as "no responders" after the server saw it).
async fn nats_sync(client: &async_nats::Client) {
    let _ = client
        .request(unique("sync"), Bytes::new())
        .await
        .expect_err("nobody answers the sync subject");
}

/// What a raw client moves in a pub-sub figure.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// The same eventforge Messages: each built and serialised by the
    /// publisher and parsed by the subscriber, as an application using the
    /// raw client for the protocol would.
    Messages,
    /// One serialised message sent again and again, never parsed: the
    /// client's own floor.
    Bytes,
}

async fn nats_pubsub_raw(work: Work) -> f64 {
    let subscriber = async_nats::connect(nats_url()).await.expect("nats");
    let publisher = async_nats::connect(nats_url()).await.expect("nats");
    let topic = unique("nats_pubsub_raw");
    let mut subscription = subscriber
        .subscribe(topic.clone())
        .await
        .expect("subscribe");
    nats_sync(&subscriber).await;
    let (progress, mut watcher) = Progress::new();
    let counter = tokio::spawn(async move {
        let mut got = 0;
        while got < NATS_MESSAGES {
            let Some(message) = subscription.next().await else {
                break;
            };
            if work == Work::Messages {
                std::hint::black_box(Message::from_json(&message.payload).expect("message"));
            }
            got += 1;
            if got % 256 == 0 {
                progress.report(got);
            }
        }
        Instant::now()
    });
    let bytes = wire_bytes(&topic);
    let started = Instant::now();
    for n in 0..NATS_MESSAGES {
        wait_window(&mut watcher, n).await;
        let bytes = match work {
            Work::Messages => Message::new(&topic, payload(n))
                .and_then(|m| m.to_json())
                .expect("message")
                .into(),
            Work::Bytes => bytes.clone(),
        };
        publisher
            .publish(topic.clone(), bytes)
            .await
            .expect("publish");
    }
    let finished = tokio::time::timeout(PATIENCE, counter)
        .await
        .expect("every message in time")
        .expect("counter");
    NATS_MESSAGES as f64 / (finished - started).as_secs_f64()
}

/// Sequential requests through eventforge's `Transport::request` on a
/// broker, answered by a plain responder subscribed on another connection.
async fn requests_eventforge(
    responder: Arc<dyn Transport>,
    requester: Arc<dyn Transport>,
    topic: String,
) -> Latencies {
    let mut requests = responder
        .subscribe(Pattern::parse(&topic).expect("pattern"))
        .await
        .expect("subscribe");
    let replier = Arc::clone(&responder);
    let serve = tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let Some(reply_to) = request.reply_to.clone() else {
                continue;
            };
            let mut reply = Message::new(reply_to, "ok").expect("reply");
            reply.correlation_id = request.correlation_id.clone();
            if replier.send(reply).await.is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(REQUESTS);
    let started = Instant::now();
    for n in 0..REQUESTS {
        let call = Instant::now();
        let request = Message::new(&topic, payload(n)).expect("request");
        requester.request(request, PATIENCE).await.expect("reply");
        samples.push(call.elapsed());
    }
    let total = started.elapsed();
    requester.close().await.expect("close");
    responder.close().await.expect("close");
    serve.await.expect("responder");
    Latencies::of(samples, total)
}

async fn nats_requests_eventforge() -> Latencies {
    let connect = || async { Arc::new(NatsTransport::connect(nats_url()).await.expect("nats")) };
    requests_eventforge(connect().await, connect().await, unique("nats_rpc")).await
}

async fn redis_requests_eventforge() -> Latencies {
    let connect = || async { Arc::new(RedisTransport::connect(redis_url()).await.expect("redis")) };
    requests_eventforge(connect().await, connect().await, unique("redis_rpc")).await
}

async fn nats_requests_raw() -> Latencies {
    let responder = async_nats::connect(nats_url()).await.expect("nats");
    let requester = async_nats::connect(nats_url()).await.expect("nats");
    let topic = unique("nats_rpc_raw");
    let mut requests = responder.subscribe(topic.clone()).await.expect("subscribe");
    nats_sync(&responder).await;
    let answer = responder.clone();
    let reply_bytes = wire_bytes("_reply");
    let serve = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = answer.publish(reply, reply_bytes.clone()).await;
            }
        }
    });
    let bytes = wire_bytes(&topic);
    let mut samples = Vec::with_capacity(REQUESTS);
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let call = Instant::now();
        requester
            .request(topic.clone(), bytes.clone())
            .await
            .expect("reply");
        samples.push(call.elapsed());
    }
    let total = started.elapsed();
    serve.abort();
    Latencies::of(samples, total)
}

/// (p50, slowest) of requests nobody listens to.
async fn nats_no_responders_eventforge() -> (Duration, Duration) {
    let requester = NatsTransport::connect(nats_url()).await.expect("nats");
    let topic = unique("nobody");
    let mut samples = Vec::with_capacity(NO_RESPONDER_REQUESTS);
    for _ in 0..NO_RESPONDER_REQUESTS {
        let call = Instant::now();
        let outcome = requester
            .request(
                Message::new(&topic, 1).expect("request"),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(outcome, Err(Error::NoResponders { .. })),
            "{outcome:?}"
        );
        samples.push(call.elapsed());
    }
    requester.close().await.expect("close");
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

async fn nats_no_responders_raw() -> (Duration, Duration) {
    let requester = async_nats::connect(nats_url()).await.expect("nats");
    let topic = unique("nobody_raw");
    let mut samples = Vec::with_capacity(NO_RESPONDER_REQUESTS);
    for _ in 0..NO_RESPONDER_REQUESTS {
        let call = Instant::now();
        let outcome = requester
            .request(topic.clone(), Bytes::from_static(b"1"))
            .await;
        assert!(outcome.is_err());
        samples.push(call.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

// ---------------------------------------------------------------- Redis

async fn redis_pubsub_eventforge() -> f64 {
    let subscriber = RedisTransport::connect(redis_url()).await.expect("redis");
    let publisher = RedisTransport::connect(redis_url()).await.expect("redis");
    let topic = unique("redis_pubsub");
    let mut subscription = subscriber
        .subscribe(Pattern::parse(&topic).expect("pattern"))
        .await
        .expect("subscribe");
    let counter = tokio::spawn(async move {
        let (mut got, mut batch) = (0, Vec::with_capacity(256));
        while got < REDIS_MESSAGES {
            let n = subscription.recv_many(&mut batch, 256).await;
            if n == 0 {
                break;
            }
            got += n;
            batch.clear();
        }
        Instant::now()
    });
    let started = Instant::now();
    futures::stream::iter(0..REDIS_MESSAGES)
        .for_each_concurrent(REDIS_WINDOW, |n| {
            let (publisher, topic) = (&publisher, &topic);
            async move {
                let message = Message::new(topic, payload(n)).expect("message");
                publisher.send(message).await.expect("send");
            }
        })
        .await;
    let finished = tokio::time::timeout(PATIENCE, counter)
        .await
        .expect("every message in time")
        .expect("counter");
    publisher.close().await.expect("close");
    subscriber.close().await.expect("close");
    REDIS_MESSAGES as f64 / (finished - started).as_secs_f64()
}

async fn redis_pubsub_raw(work: Work) -> f64 {
    let client = redis::Client::open(redis_url()).expect("url");
    let topic = unique("redis_pubsub_raw");
    let mut pubsub = client.get_async_pubsub().await.expect("redis");
    pubsub.subscribe(&topic).await.expect("subscribe");
    let counter = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        let mut got = 0;
        while got < REDIS_MESSAGES {
            let Some(message) = messages.next().await else {
                break;
            };
            if work == Work::Messages {
                let parsed = Message::from_json(message.get_payload_bytes());
                std::hint::black_box(parsed.expect("message"));
            }
            got += 1;
        }
        Instant::now()
    });
    let publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let bytes = wire_bytes(&topic);
    let started = Instant::now();
    futures::stream::iter(0..REDIS_MESSAGES)
        .for_each_concurrent(REDIS_WINDOW, |n| {
            let (mut publisher, topic, bytes) = (publisher.clone(), &topic, &bytes);
            async move {
                let bytes = match work {
                    Work::Messages => Message::new(topic, payload(n))
                        .and_then(|m| m.to_json())
                        .expect("message")
                        .into(),
                    Work::Bytes => bytes.clone(),
                };
                let _: i64 = publisher
                    .publish(topic, bytes.as_ref())
                    .await
                    .expect("publish");
            }
        })
        .await;
    let finished = tokio::time::timeout(PATIENCE, counter)
        .await
        .expect("every message in time")
        .expect("counter");
    REDIS_MESSAGES as f64 / (finished - started).as_secs_f64()
}

/// The least a requester can do on Redis: one reply channel subscribed
/// once, then PUBLISH and wait for the answer.
async fn redis_requests_raw() -> Latencies {
    let client = redis::Client::open(redis_url()).expect("url");
    let topic = unique("redis_rpc_raw");
    let reply_channel = unique("redis_rpc_raw_reply");
    let mut requests = client.get_async_pubsub().await.expect("redis");
    requests.subscribe(&topic).await.expect("subscribe");
    let mut answer = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let reply_bytes = wire_bytes(&reply_channel);
    let channel = reply_channel.clone();
    let serve = tokio::spawn(async move {
        let mut incoming = requests.into_on_message();
        while incoming.next().await.is_some() {
            let _: Result<i64, _> = answer.publish(&channel, reply_bytes.as_ref()).await;
        }
    });
    let mut replies = client.get_async_pubsub().await.expect("redis");
    replies.subscribe(&reply_channel).await.expect("subscribe");
    let mut replies = replies.into_on_message();
    let mut publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let bytes = wire_bytes(&topic);
    let mut samples = Vec::with_capacity(REQUESTS);
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let call = Instant::now();
        let _: i64 = publisher
            .publish(&topic, bytes.as_ref())
            .await
            .expect("publish");
        replies.next().await.expect("reply");
        samples.push(call.elapsed());
    }
    let total = started.elapsed();
    serve.abort();
    Latencies::of(samples, total)
}

// ---------------------------------------------------------------- main

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `cargo bench --bench brokers --features redis,nats -- nats` runs only
    // the figures whose name contains "nats".
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    let wanted = |name: &str| name.contains(filter.as_str());
    runtime.block_on(async {
        println!(
            "eventforge broker transports vs raw clients (redis {}, nats {})",
            redis_url(),
            nats_url()
        );
        print_header();

        if wanted("nats pub-sub") {
            let (mut ours, mut same, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                bytes.push(nats_pubsub_raw(Work::Bytes).await);
                same.push(nats_pubsub_raw(Work::Messages).await);
                ours.push(nats_pubsub_eventforge().await);
            }
            print_pubsub(
                "NATS pub-sub 1->1",
                median(ours),
                median(same),
                median(bytes),
                0.70,
            );
        }

        if wanted("redis pub-sub") {
            let (mut ours, mut same, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                bytes.push(redis_pubsub_raw(Work::Bytes).await);
                same.push(redis_pubsub_raw(Work::Messages).await);
                ours.push(redis_pubsub_eventforge().await);
            }
            print_pubsub(
                "Redis pub-sub 1->1",
                median(ours),
                median(same),
                median(bytes),
                0.70,
            );
        }

        if wanted("nats request") {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push((nats_requests_eventforge().await, nats_requests_raw().await));
            }
            runs.sort_by(|a, b| a.0.per_second.total_cmp(&b.0.per_second));
            let (ours, raw) = &runs[RUNS / 2];
            print_latency("NATS request/reply, sequential", ours, raw);
        }

        if wanted("redis request") {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push((
                    redis_requests_eventforge().await,
                    redis_requests_raw().await,
                ));
            }
            runs.sort_by(|a, b| a.0.per_second.total_cmp(&b.0.per_second));
            let (ours, raw) = &runs[RUNS / 2];
            print_latency("Redis request/reply, sequential", ours, raw);
        }

        if !wanted("nats no responders") {
            return;
        }
        let (p50, slowest) = nats_no_responders_eventforge().await;
        let (raw_p50, raw_slowest) = nats_no_responders_raw().await;
        let verdict = if slowest < Duration::from_millis(50) {
            "< 50ms met"
        } else {
            "< 50ms NOT MET"
        };
        println!(
            "{:<60} {:>14} {:>14} {:>7}  {}",
            "NATS no responders, p50 / slowest of 200",
            format!("{p50:.0?} / {slowest:.0?}"),
            format!("{raw_p50:.0?} / {raw_slowest:.0?}"),
            "",
            verdict
        );
    });
}
