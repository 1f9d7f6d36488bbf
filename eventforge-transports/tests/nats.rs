//! What the NATS transport does beyond the conformance suite: queue groups,
//! request/reply with peers that use NATS the way the Python eventforge
//! does, bad input, and server lists.
//!
//! Uses the NATS server at `NATS_URL` (default `nats://127.0.0.1:4222`).

#![cfg(feature = "nats")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge_core::{Error, Message, Pattern, Subscription, Transport};
use eventforge_transports::nats::NatsTransport;
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(20);

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(name: &str) -> String {
    format!("nats-test.{name}.{}", eventforge_core::new_id())
}

async fn transport() -> NatsTransport {
    NatsTransport::connect(url())
        .await
        .expect("NATS at NATS_URL")
}

async fn next(subscription: &mut Subscription) -> Arc<Message> {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_members_share_the_messages_and_others_get_them_all() {
    const MESSAGES: usize = 200;
    let topic = unique("group");
    let (first, second, watcher, publisher) = (
        transport().await,
        transport().await,
        transport().await,
        transport().await,
    );
    let mut member_a = first
        .subscribe_in_group(topic.as_str(), "workers")
        .await
        .unwrap();
    let mut member_b = second
        .subscribe_in_group(topic.as_str(), "workers")
        .await
        .unwrap();
    let mut all = watcher
        .subscribe(Pattern::parse(&topic).unwrap())
        .await
        .unwrap();
    for n in 0..MESSAGES {
        publisher
            .send(Message::new(&topic, n).unwrap())
            .await
            .unwrap();
    }
    for _ in 0..MESSAGES {
        next(&mut all).await;
    }
    // Every message reached exactly one member.
    let mut seen = HashSet::new();
    while seen.len() < MESSAGES {
        let arrived = tokio::select! {
            Some(m) = member_a.recv() => m,
            Some(m) = member_b.recv() => m,
        };
        assert!(
            seen.insert(arrived.id.clone()),
            "delivered twice in a group"
        );
    }
    // Both members took part (random distribution; 2^-199 to miss).
    assert!(first.stats().received > 0 && second.stats().received > 0);
    for t in [first, second, watcher, publisher] {
        t.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_request_nobody_listens_to_fails_at_once() {
    let transport = transport().await;
    let started = Instant::now();
    let outcome = transport
        .request(
            Message::new(unique("nobody"), 1).unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        matches!(outcome, Err(Error::NoResponders { .. })),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited instead of failing"
    );
    transport.close().await.unwrap();
}

/// A peer that answers requests the way the Python eventforge does: it
/// publishes a Message JSON to the request Message's `reply_to`, ignoring the
/// NATS reply subject.
#[tokio::test]
async fn a_python_style_responder_answers_a_native_request() {
    let topic = unique("python_responder");
    let raw = async_nats::connect(url()).await.unwrap();
    let mut requests = raw.subscribe(topic.clone()).await.unwrap();
    raw.flush().await.unwrap();
    // A round trip so the server has the SUB before the request is sent.
    let _ = raw.request("_eventforge.test.sync", "".into()).await;
    let responder = tokio::spawn(async move {
        let incoming = requests.next().await.unwrap();
        let request: serde_json::Value = serde_json::from_slice(&incoming.payload).unwrap();
        let reply = serde_json::json!({
            "id": eventforge_core::new_id(),
            "topic": request["reply_to"],
            "payload": {"echo": request["payload"]},
            "headers": {},
            "timestamp": "2026-11-22T10:04:33.123456",
            "reply_to": null,
            "correlation_id": request["correlation_id"],
        });
        let subject = request["reply_to"].as_str().unwrap().to_owned();
        raw.publish(subject, reply.to_string().into())
            .await
            .unwrap();
        raw.flush().await.unwrap();
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
/// `_reply.<uuid>`, request published without a NATS reply subject.
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

    let raw = async_nats::connect(url()).await.unwrap();
    let reply_to = format!("_reply.{}", eventforge_core::new_id());
    let mut replies = raw.subscribe(reply_to.clone()).await.unwrap();
    let request = Message::new(&topic, 1)
        .unwrap()
        .with_reply_to(&reply_to)
        .with_correlation_id("python-call-1");
    raw.publish(topic.clone(), request.to_json().unwrap().into())
        .await
        .unwrap();
    let incoming = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .unwrap()
        .unwrap();
    let reply = Message::from_json(&incoming.payload).unwrap();
    assert_eq!(reply.payload, "done");
    assert_eq!(reply.correlation_id.as_deref(), Some("python-call-1"));
    transport.close().await.unwrap();
}

#[tokio::test]
async fn garbage_on_a_subscribed_subject_is_counted_and_skipped() {
    let topic = unique("garbage");
    let transport = transport().await;
    let mut subscription = transport
        .subscribe(Pattern::parse(&topic).unwrap())
        .await
        .unwrap();
    let raw = async_nats::connect(url()).await.unwrap();
    raw.publish(topic.clone(), "not json {".into())
        .await
        .unwrap();
    raw.publish(topic.clone(), r#"{"no_topic": 1}"#.into())
        .await
        .unwrap();
    raw.publish(
        topic.clone(),
        Message::new(&topic, "fine")
            .unwrap()
            .to_json()
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    assert_eq!(next(&mut subscription).await.payload, "fine");
    assert_eq!(transport.stats().undecodable, 2);
    transport.close().await.unwrap();
}

#[tokio::test]
async fn a_server_list_connects_to_a_server_that_answers() {
    // Port 1 on loopback refuses connections.
    let transport = NatsTransport::builder()
        .server("nats://127.0.0.1:1")
        .server(url())
        .connect()
        .await
        .expect("the second server answers");
    let topic = unique("list");
    let mut subscription = transport
        .subscribe(Pattern::parse(&topic).unwrap())
        .await
        .unwrap();
    transport
        .send(Message::new(&topic, 1).unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload, 1);
    transport.close().await.unwrap();
}
