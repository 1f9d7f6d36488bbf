//! The behaviours every transport promises, written once.
//!
//! Each behaviour is an async function taking a [`PeersFactory`]; the
//! [`conformance_suite!`] macro turns the whole list into one `#[tokio::test]`
//! per behaviour for a transport. Every test uses topics under a fresh uuid,
//! so the suites of all transports run in parallel on shared brokers.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge::{Error, Message, Pattern, Subscription, Transport};
// The wildcard table every transport must agree on, from the kernel that defines it.
use eventforge_core::MATCH_TABLE;
use futures::future::{join_all, BoxFuture};
use serde_json::json;

/// How long any single expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// Two endpoints of one transport: what `publisher` sends reaches the
/// subscriptions of `subscriber`, and what `subscriber` sends (replies)
/// reaches the subscriptions of `publisher`. For an in-process transport both
/// are the same value; for a broker, two connections; for a point-to-point
/// link, its two ends.
pub struct Peers {
    pub publisher: Arc<dyn Transport>,
    pub subscriber: Arc<dyn Transport>,
}

impl Peers {
    /// Both roles played by one transport (in-process buses).
    pub fn shared(transport: Arc<dyn Transport>) -> Self {
        Peers {
            publisher: Arc::clone(&transport),
            subscriber: transport,
        }
    }

    /// Two connected endpoints.
    pub fn pair(publisher: Arc<dyn Transport>, subscriber: Arc<dyn Transport>) -> Self {
        Peers {
            publisher,
            subscriber,
        }
    }

    async fn close(&self) {
        self.publisher.close().await.expect("close publisher");
        self.subscriber.close().await.expect("close subscriber");
    }
}

/// Makes a fresh pair of connected endpoints; called once or more per test.
pub type PeersFactory = fn() -> BoxFuture<'static, Peers>;

/// Generates one `#[tokio::test]` per behaviour of this suite for a
/// transport, in a module named after it:
///
/// ```ignore
/// conformance_suite!(memory, || async {
///     Peers::shared(Arc::new(MemoryTransport::new()))
/// });
/// ```
macro_rules! conformance_suite {
    ($transport:ident, $make:expr) => {
        mod $transport {
            #[allow(unused_imports)]
            use super::*;

            fn peers() -> ::futures::future::BoxFuture<'static, crate::suite::Peers> {
                Box::pin(async { ($make)().await })
            }

            conformance_suite!(@tests peers;
                round_trip_keeps_payload_and_headers,
                every_subscriber_gets_every_message,
                topics_do_not_cross_talk,
                wildcards_follow_the_match_table_on_the_wire,
                order_is_kept_per_publisher,
                request_gets_its_reply,
                request_times_out_when_no_reply,
                request_fails_fast_when_nobody_listens,
                unsubscribe_stops_delivery,
                close_is_idempotent,
                send_and_subscribe_fail_after_close,
                subscribe_then_close_cycles_lose_nothing,
                a_subscription_receives_only_what_is_published_after_it,
                overlapping_patterns_deliver_once_per_subscription,
            );
        }
    };
    (@tests $peers:ident; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                crate::suite::$behaviour($peers).await;
            }
        )*
    };
}

/// A topic prefix no other test uses.
fn unique(behaviour: &str) -> String {
    format!("conformance.{behaviour}.{}", eventforge::new_id())
}

async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, work).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

async fn next(subscription: &mut Subscription) -> Arc<Message> {
    let what = format!("next message on {}", subscription.pattern());
    within(&what, subscription.recv())
        .await
        .unwrap_or_else(|| panic!("subscription {} ended", subscription.pattern()))
}

async fn subscribe(transport: &Arc<dyn Transport>, pattern: &str) -> Subscription {
    let pattern = Pattern::parse(pattern).expect("valid pattern");
    within("subscribe", transport.subscribe(pattern))
        .await
        .expect("subscribe")
}

async fn send(transport: &Arc<dyn Transport>, message: Message) {
    within("send", transport.send(message)).await.expect("send");
}

fn numbered(topic: &str, n: usize) -> Message {
    Message::new(topic, json!({ "n": n })).expect("message")
}

fn number(message: &Message) -> u64 {
    message.payload["n"].as_u64().expect("numbered payload")
}

pub async fn round_trip_keeps_payload_and_headers(peers: PeersFactory) {
    let peers = peers().await;
    let topic = unique("round_trip");
    let mut subscription = subscribe(&peers.subscriber, &topic).await;
    let sent: Vec<Message> = (0..100)
        .map(|i| {
            Message::new(
                &topic,
                json!({ "n": i, "text": "héllo \u{1F600} \"quoted\"", "nested": { "list": [1, 2.5, null, true] } }),
            )
            .expect("message")
            .with_header("trace", format!("t-{i}"))
            .with_header("attempt", i)
            .with_header("flags", json!({ "retry": i % 2 == 0 }))
            .with_correlation_id(format!("c-{i}"))
            .with_reply_to(format!("{topic}.replies"))
        })
        .collect();
    for message in &sent {
        send(&peers.publisher, message.clone()).await;
    }
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push((*next(&mut subscription).await).clone());
    }
    if !peers.publisher.capabilities().ordered_per_publisher {
        received.sort_by_key(number);
    }
    assert_eq!(received, sent, "messages must arrive exactly as sent");
    peers.close().await;
}

pub async fn every_subscriber_gets_every_message(peers: PeersFactory) {
    const SUBSCRIBERS: usize = 50;
    const MESSAGES: usize = 5_000;
    let peers = peers().await;
    let topic = unique("fan_out");
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut subscription = subscribe(&peers.subscriber, &topic).await;
        readers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while seen.len() < MESSAGES {
                let message = next(&mut subscription).await;
                assert!(seen.insert(number(&message)), "duplicate {}", message.id);
            }
            seen.len()
        }));
    }
    for n in 0..MESSAGES {
        send(&peers.publisher, numbered(&topic, n)).await;
    }
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), MESSAGES);
    }
    peers.close().await;
}

pub async fn topics_do_not_cross_talk(peers: PeersFactory) {
    const TOPICS: usize = 20;
    const EACH: usize = 50;
    let peers = peers().await;
    let prefix = unique("isolation");
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("{prefix}.t{t}")).collect();
    let mut subscriptions = Vec::new();
    for topic in &topics {
        subscriptions.push(subscribe(&peers.subscriber, topic).await);
    }
    // Interleaved, so a transport mixing topics up would show it.
    for n in 0..EACH {
        for topic in &topics {
            send(&peers.publisher, numbered(topic, n)).await;
        }
    }
    let ordered = peers.publisher.capabilities().ordered_per_publisher;
    if ordered {
        for topic in &topics {
            send(
                &peers.publisher,
                Message::new(topic, "end").expect("marker"),
            )
            .await;
        }
    }
    for (topic, subscription) in topics.iter().zip(&mut subscriptions) {
        let mut seen = HashSet::new();
        for _ in 0..EACH {
            let message = next(subscription).await;
            assert_eq!(&message.topic, topic, "cross-talk");
            assert!(seen.insert(number(&message)));
        }
        if ordered {
            let last = next(subscription).await;
            assert_eq!(last.payload, "end", "{topic} got more than was sent to it");
        }
    }
    peers.close().await;
}

/// A topic the pattern surely matches: each wildcard replaced by one segment.
fn concrete(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|s| if s.starts_with('*') { "m" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

pub async fn wildcards_follow_the_match_table_on_the_wire(peers: PeersFactory) {
    let peers = peers().await;
    assert!(
        peers.publisher.capabilities().ordered_per_publisher,
        "this check proves a non-delivery by a later marker; an unordered transport needs another proof"
    );
    let base = unique("wildcards");
    // A literal prefix segment changes no row's outcome: literals match only
    // themselves and every wildcard is segment-aware.
    let rows = MATCH_TABLE.iter().enumerate().map(|(i, &(pattern, topic, expected))| {
        let peers = &peers;
        let prefix = format!("{base}.r{i}");
        async move {
            let mut subscription = subscribe(&peers.subscriber, &format!("{prefix}.{pattern}")).await;
            let probe = Message::new(format!("{prefix}.{topic}"), "probe").expect("probe");
            let marker = Message::new(format!("{prefix}.{}", concrete(pattern)), "marker").expect("marker");
            send(&peers.publisher, probe).await;
            send(&peers.publisher, marker).await;
            let first = next(&mut subscription).await;
            let delivered = first.payload == "probe";
            assert_eq!(
                delivered, expected,
                "pattern {pattern:?} vs topic {topic:?}: delivered {delivered}, table says {expected}"
            );
            if delivered {
                assert_eq!(next(&mut subscription).await.payload, "marker");
            }
        }
    });
    join_all(rows).await;
    peers.close().await;
}

pub async fn order_is_kept_per_publisher(peers: PeersFactory) {
    const MESSAGES: usize = 1_000;
    let peers = peers().await;
    if !peers.publisher.capabilities().ordered_per_publisher {
        eprintln!("{} does not promise order: skipped", peers.publisher.name());
        return peers.close().await;
    }
    let topic = unique("order");
    let mut subscription = subscribe(&peers.subscriber, &format!("{topic}.*")).await;
    for n in 0..MESSAGES {
        // Two topics under one pattern: order holds across them too.
        let leaf = if n % 2 == 0 { "even" } else { "odd" };
        send(&peers.publisher, numbered(&format!("{topic}.{leaf}"), n)).await;
    }
    for expected in 0..MESSAGES as u64 {
        assert_eq!(number(&*next(&mut subscription).await), expected);
    }
    peers.close().await;
}

/// Answers every request on `topic` with its payload doubled, from the
/// subscriber side; returns once subscribed.
async fn start_doubler(peers: &Peers, topic: &str) -> tokio::task::JoinHandle<()> {
    let mut requests = subscribe(&peers.subscriber, topic).await;
    let replier = Arc::clone(&peers.subscriber);
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let Some(reply_to) = request.reply_to.clone() else {
                continue;
            };
            let doubled = request.payload.as_i64().unwrap_or_default() * 2;
            let mut reply = Message::new(reply_to, doubled).expect("reply");
            reply.correlation_id = request.correlation_id.clone();
            if replier.send(reply).await.is_err() {
                return;
            }
        }
    })
}

pub async fn request_gets_its_reply(peers: PeersFactory) {
    let peers = peers().await;
    let topic = unique("request");
    let responder = start_doubler(&peers, &topic).await;
    for n in 0..10i64 {
        let request = Message::new(&topic, n)
            .expect("request")
            .with_correlation_id(format!("call-{n}"));
        let reply = peers
            .publisher
            .request(request, PATIENCE)
            .await
            .expect("a reply");
        assert_eq!(reply.payload, n * 2);
        assert_eq!(
            reply.correlation_id.as_deref(),
            Some(format!("call-{n}").as_str())
        );
    }
    peers.close().await;
    within("responder ends on close", responder)
        .await
        .expect("responder");
}

pub async fn request_times_out_when_no_reply(peers: PeersFactory) {
    let peers = peers().await;
    let topic = unique("silent");
    // Somebody listens (so this is no "no responders" case) but never answers.
    let _silent = subscribe(&peers.subscriber, &topic).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = peers
        .publisher
        .request(Message::new(&topic, 1).expect("request"), timeout)
        .await;
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    assert!(started.elapsed() >= timeout, "gave up before its timeout");
    peers.close().await;
}

pub async fn request_fails_fast_when_nobody_listens(peers: PeersFactory) {
    let peers = peers().await;
    if !peers.publisher.capabilities().reports_no_responders {
        eprintln!(
            "{} does not report no responders: skipped",
            peers.publisher.name()
        );
        return peers.close().await;
    }
    let topic = unique("nobody");
    let outcome = peers
        .publisher
        .request(
            Message::new(&topic, 1).expect("request"),
            Duration::from_secs(60),
        )
        .await;
    match outcome {
        Err(Error::NoResponders { topic: reported }) => assert_eq!(reported, topic),
        other => panic!("expected NoResponders, got {other:?}"),
    }
    peers.close().await;
}

pub async fn unsubscribe_stops_delivery(peers: PeersFactory) {
    let peers = peers().await;
    let topic = unique("unsubscribe");
    let mut leaving = subscribe(&peers.subscriber, &topic).await;
    let mut staying = subscribe(&peers.subscriber, &topic).await;
    assert!(peers.subscriber.unsubscribe(leaving.id()).await);
    assert!(
        !peers.subscriber.unsubscribe(leaving.id()).await,
        "second unsubscribe"
    );
    send(&peers.publisher, numbered(&topic, 1)).await;
    assert_eq!(number(&*next(&mut staying).await), 1);
    assert!(
        within("the stream to end", leaving.recv()).await.is_none(),
        "an unsubscribed subscription still received a message"
    );
    // The last local subscription going must not break a later one.
    drop(staying);
    let mut again = subscribe(&peers.subscriber, &topic).await;
    send(&peers.publisher, numbered(&topic, 2)).await;
    assert_eq!(number(&*next(&mut again).await), 2);
    peers.close().await;
}

pub async fn close_is_idempotent(peers: PeersFactory) {
    let peers = peers().await;
    for transport in [&peers.publisher, &peers.subscriber] {
        assert!(!transport.is_closed() || Arc::ptr_eq(&peers.publisher, &peers.subscriber));
        transport.close().await.expect("first close");
        transport.close().await.expect("second close");
        assert!(transport.is_closed());
    }
}

pub async fn send_and_subscribe_fail_after_close(peers: PeersFactory) {
    let peers = peers().await;
    let topic = unique("closed");
    let mut before = subscribe(&peers.subscriber, &topic).await;
    peers.close().await;
    assert!(
        within("the stream to end on close", before.recv())
            .await
            .is_none(),
        "a subscription outlived its transport"
    );
    let transport = &peers.publisher;
    let sent = transport
        .send(Message::new(&topic, 1).expect("message"))
        .await;
    assert!(matches!(sent, Err(Error::Closed(_))), "send: {sent:?}");
    let subscribed = transport
        .subscribe(Pattern::parse(&topic).expect("pattern"))
        .await;
    assert!(
        matches!(subscribed, Err(Error::Closed(_))),
        "subscribe: {subscribed:?}"
    );
    let requested = transport
        .request(
            Message::new(&topic, 1).expect("message"),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(requested, Err(Error::Closed(_))),
        "request: {requested:?}"
    );
}

pub async fn subscribe_then_close_cycles_lose_nothing(peers: PeersFactory) {
    const CYCLES: usize = 10;
    const MESSAGES: usize = 100;
    let cycles = (0..CYCLES).map(|cycle| async move {
        let peers = peers().await;
        let topic = unique(&format!("cycle{cycle}"));
        let mut subscription = subscribe(&peers.subscriber, &topic).await;
        for n in 0..MESSAGES {
            send(&peers.publisher, numbered(&topic, n)).await;
        }
        let mut seen = HashSet::new();
        while seen.len() < MESSAGES {
            seen.insert(number(&*next(&mut subscription).await));
        }
        peers.close().await;
    });
    join_all(cycles).await;
}

pub async fn a_subscription_receives_only_what_is_published_after_it(peers: PeersFactory) {
    let peers = peers().await;
    let topic = unique("no_hidden_buffer");
    let mut early = subscribe(&peers.subscriber, &topic).await;
    send(&peers.publisher, numbered(&topic, 1)).await;
    // Seen by the early one: the message has gone all the way through.
    assert_eq!(number(&*next(&mut early).await), 1);
    let mut late = subscribe(&peers.subscriber, &topic).await;
    send(&peers.publisher, numbered(&topic, 2)).await;
    assert_eq!(number(&*next(&mut early).await), 2);
    assert_eq!(
        number(&*next(&mut late).await),
        2,
        "a subscription received a message published before it existed"
    );
    peers.close().await;
}

pub async fn overlapping_patterns_deliver_once_per_subscription(peers: PeersFactory) {
    let peers = peers().await;
    assert!(peers.publisher.capabilities().ordered_per_publisher);
    let prefix = unique("overlap");
    let patterns = ["dup.created", "dup.*", "**", "dup.**", "*.created"];
    let mut subscriptions = Vec::new();
    for pattern in patterns {
        subscriptions.push(subscribe(&peers.subscriber, &format!("{prefix}.{pattern}")).await);
    }
    let topic = format!("{prefix}.dup.created");
    send(
        &peers.publisher,
        Message::new(&topic, "once").expect("message"),
    )
    .await;
    // Every pattern matches the marker too: a duplicate would arrive before it.
    send(
        &peers.publisher,
        Message::new(&topic, "marker").expect("marker"),
    )
    .await;
    for (pattern, subscription) in patterns.iter().zip(&mut subscriptions) {
        assert_eq!(next(subscription).await.payload, "once", "{pattern}");
        assert_eq!(
            next(subscription).await.payload,
            "marker",
            "{pattern} got a duplicate"
        );
    }
    peers.close().await;
}
