//! What the Redis transport does beyond the conformance suite: sharing broker
//! subscriptions, talking to peers that use Redis the way the Python
//! eventforge does, bad input, and authenticated URLs.
//!
//! Uses the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`).

#![cfg(feature = "redis")]

mod private_broker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge_core::{Error, Message, Pattern, Subscription, Transport};
use eventforge_transports::redis::RedisTransport;
use futures::StreamExt;
use redis::AsyncCommands;

const PATIENCE: Duration = Duration::from_secs(20);

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique(name: &str) -> String {
    format!("redis-test.{name}.{}", eventforge_core::new_id())
}

async fn transport() -> RedisTransport {
    RedisTransport::connect(url())
        .await
        .expect("Redis at REDIS_URL")
}

async fn next(subscription: &mut Subscription) -> Arc<Message> {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

/// Waits for a background release to happen (no event marks it: last resort).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn local_patterns_mapping_to_one_redis_pattern_share_one_subscription() {
    let transport = transport().await;
    let prefix = unique("share");
    // `a.*` and `a.**` are both `a.*` for Redis.
    let narrow = transport
        .subscribe(Pattern::parse(&format!("{prefix}.a.*")).unwrap())
        .await
        .unwrap();
    let broad = transport
        .subscribe(Pattern::parse(&format!("{prefix}.a.**")).unwrap())
        .await
        .unwrap();
    assert_eq!(transport.stats().broker_subscriptions, 1);
    assert!(transport.unsubscribe(narrow.id()).await);
    assert_eq!(
        transport.stats().broker_subscriptions,
        1,
        "still needed by the other"
    );
    drop(broad);
    eventually("the dropped subscription's pattern is released", || {
        transport.stats().broker_subscriptions == 0
    })
    .await;
    transport.close().await.unwrap();
}

#[tokio::test]
async fn requests_leave_no_subscription_behind() {
    let transport = transport().await;
    let topic = unique("echo");
    let mut requests = transport
        .subscribe(Pattern::parse(&topic).unwrap())
        .await
        .unwrap();
    let responder = transport
        .subscribe(Pattern::parse("unused.x").unwrap())
        .await
        .unwrap();
    drop(responder);
    eventually("baseline", || transport.stats().broker_subscriptions == 1).await;
    let transport = Arc::new(transport);
    let replier = Arc::clone(&transport);
    let serve = tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let mut reply = Message::new(request.reply_to.clone().unwrap(), "pong").unwrap();
            reply.correlation_id = request.correlation_id.clone();
            replier.send(reply).await.unwrap();
        }
    });
    for _ in 0..20 {
        let reply = transport
            .request(Message::new(&topic, "ping").unwrap(), PATIENCE)
            .await
            .unwrap();
        assert_eq!(reply.payload, "pong");
    }
    eventually("reply subscriptions released", || {
        transport.stats().broker_subscriptions == 1
    })
    .await;
    transport.close().await.unwrap();
    serve.await.unwrap();
}

/// A peer that answers requests the way the Python eventforge does over
/// Redis: a Message JSON published to the request's `reply_to`.
#[tokio::test]
async fn a_python_style_responder_answers_a_request() {
    let topic = unique("python_responder");
    let client = redis::Client::open(url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&topic).await.unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let responder = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        let raw = stream.next().await.unwrap();
        let request: serde_json::Value = serde_json::from_slice(raw.get_payload_bytes()).unwrap();
        // The protocol's reply topic: `_reply.` and a canonical uuid v4.
        let reply_to = request["reply_to"].as_str().unwrap();
        let uuid = reply_to.strip_prefix("_reply.").unwrap();
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{reply_to}");
        assert_eq!(uuid.as_bytes()[14], b'4', "version 4: {reply_to}");
        let reply = serde_json::json!({
            "id": eventforge_core::new_id(),
            "topic": request["reply_to"],
            "payload": {"echo": request["payload"]},
            "headers": {},
            "timestamp": "2026-11-22T10:04:33.123456+00:00",
            "reply_to": null,
            "correlation_id": request["correlation_id"],
        });
        let channel = request["reply_to"].as_str().unwrap().to_owned();
        let _: i64 = publisher.publish(channel, reply.to_string()).await.unwrap();
    });
    let transport = transport().await;
    let reply = transport
        .request(Message::new(&topic, 7).unwrap(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(reply.payload, serde_json::json!({"echo": 7}));
    responder.await.unwrap();
    transport.close().await.unwrap();
}

/// A requester that behaves like the Python eventforge: subscribed to
/// `_reply.<uuid>` before it publishes the request.
#[tokio::test]
async fn a_rust_responder_answers_a_python_style_request() {
    let topic = unique("python_requester");
    let transport = Arc::new(transport().await);
    let mut requests = transport
        .subscribe(Pattern::parse(&topic).unwrap())
        .await
        .unwrap();
    let replier = Arc::clone(&transport);
    tokio::spawn(async move {
        let request = requests.recv().await.unwrap();
        let mut reply = Message::new(request.reply_to.clone().unwrap(), "done").unwrap();
        reply.correlation_id = request.correlation_id.clone();
        replier.send(reply).await.unwrap();
    });

    let client = redis::Client::open(url()).unwrap();
    let reply_to = format!("_reply.{}", eventforge_core::new_id());
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&reply_to).await.unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let request = Message::new(&topic, 1)
        .unwrap()
        .with_reply_to(&reply_to)
        .with_correlation_id("python-call-1");
    let receivers: i64 = publisher
        .publish(&topic, request.to_json().unwrap())
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    let raw = tokio::time::timeout(PATIENCE, pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    let reply = Message::from_json(raw.get_payload_bytes()).unwrap();
    assert_eq!(reply.payload, "done");
    assert_eq!(reply.correlation_id.as_deref(), Some("python-call-1"));
    transport.close().await.unwrap();
}

#[tokio::test]
async fn garbage_on_a_subscribed_channel_is_counted_and_skipped() {
    let topic = unique("garbage");
    let transport = transport().await;
    let mut subscription = transport
        .subscribe(Pattern::parse(&topic).unwrap())
        .await
        .unwrap();
    let mut raw = redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = raw.publish(&topic, "not json {").await.unwrap();
    let _: i64 = raw.publish(&topic, r#"{"no_topic": 1}"#).await.unwrap();
    transport
        .send(Message::new(&topic, "fine").unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload, "fine");
    assert_eq!(transport.stats().undecodable, 2);
    transport.close().await.unwrap();
}

#[tokio::test]
async fn a_password_in_the_url_is_used_and_a_wrong_one_is_refused() {
    use private_broker::{Kind, PrivateBroker};

    let broker = PrivateBroker::start_with(Kind::Redis, &["--requirepass", "s3cret"]).await;
    let port = broker.url().rsplit(':').next().unwrap().to_owned();
    let good = format!("redis://:s3cret@127.0.0.1:{port}/2");
    let transport = RedisTransport::connect(good).await.expect("right password");
    let mut subscription = transport
        .subscribe(Pattern::parse("auth.*").unwrap())
        .await
        .unwrap();
    transport
        .send(Message::new("auth.ok", 1).unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.topic, "auth.ok");
    transport.close().await.unwrap();

    let wrong = format!("redis://:nope@127.0.0.1:{port}");
    let refused = RedisTransport::connect(wrong).await;
    assert!(
        matches!(refused, Err(Error::Transport { .. })),
        "{refused:?}"
    );
}
