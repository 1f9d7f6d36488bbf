//! MemoryTransport: delivery, buffers and their overflow policies, close.

use std::time::Duration;

use eventforge_core::{Error, MemoryTransport, Message, OverflowPolicy, Pattern, Transport};
use futures::FutureExt;

fn msg(topic: &str, n: u64) -> Message {
    Message::new(topic, n).unwrap()
}

#[tokio::test]
async fn a_reading_subscriber_gets_every_one_of_many_messages() {
    // The Python peer's memory buffer filled after 1,000 messages even when read.
    let transport = MemoryTransport::builder().buffer(16).build();
    let mut sub = transport
        .subscribe(Pattern::parse("bulk.*").unwrap())
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut next = 0;
        while next < 10_000 {
            let m = sub.recv().await.expect("stream open");
            assert_eq!(m.payload, next);
            next += 1;
        }
    });
    for n in 0..10_000 {
        transport.send(msg("bulk.items", n)).await.unwrap();
    }
    reader.await.unwrap();
    assert_eq!(transport.stats().dropped, 0);
}

#[tokio::test]
async fn a_full_buffer_makes_the_publisher_wait_by_default() {
    let transport = MemoryTransport::builder().buffer(1).build();
    let mut sub = transport
        .subscribe(Pattern::parse("w").unwrap())
        .await
        .unwrap();
    transport.send(msg("w", 1)).await.unwrap();

    let mut blocked = Box::pin(transport.send(msg("w", 2)));
    assert!(
        (&mut blocked).now_or_never().is_none(),
        "second send must wait"
    );

    assert_eq!(sub.recv().await.unwrap().payload, 1);
    blocked.await.unwrap();
    assert_eq!(sub.recv().await.unwrap().payload, 2);
    assert_eq!(transport.stats().waited, 1);
    assert_eq!(transport.stats().dropped, 0);
}

#[tokio::test]
async fn the_drop_policy_drops_the_newest_and_counts() {
    let transport = MemoryTransport::builder()
        .buffer(2)
        .overflow(OverflowPolicy::DropNewest)
        .build();
    let mut slow = transport
        .subscribe(Pattern::parse("d").unwrap())
        .await
        .unwrap();
    for n in 0..5 {
        transport.send(msg("d", n)).await.unwrap();
    }
    assert_eq!(transport.stats().dropped, 3);
    assert_eq!(slow.recv().await.unwrap().payload, 0);
    assert_eq!(slow.recv().await.unwrap().payload, 1);
    assert!(slow.try_recv().is_none());
}

#[tokio::test]
async fn the_fail_policy_reports_buffer_full_and_still_serves_the_others() {
    let transport = MemoryTransport::builder()
        .buffer(1)
        .overflow(OverflowPolicy::Fail)
        .build();
    let _slow = transport
        .subscribe(Pattern::parse("f").unwrap())
        .await
        .unwrap();
    let mut fast = transport
        .subscribe(Pattern::parse("f").unwrap())
        .await
        .unwrap();
    transport.send(msg("f", 1)).await.unwrap();
    assert_eq!(fast.recv().await.unwrap().payload, 1);

    let err = transport.send(msg("f", 2)).await.unwrap_err();
    assert!(
        matches!(err, Error::BufferFull { capacity: 1, .. }),
        "{err}"
    );
    assert_eq!(fast.recv().await.unwrap().payload, 2);
    assert_eq!(transport.stats().dropped, 1);
}

#[tokio::test]
async fn every_subscriber_of_a_topic_gets_each_message_once() {
    let transport = MemoryTransport::new();
    let mut subs = Vec::new();
    for pattern in ["dup.created", "dup.*", "dup.**", "**"] {
        subs.push(
            transport
                .subscribe(Pattern::parse(pattern).unwrap())
                .await
                .unwrap(),
        );
    }
    transport.send(msg("dup.created", 7)).await.unwrap();
    for sub in &mut subs {
        assert_eq!(sub.recv().await.unwrap().payload, 7);
        assert!(sub.try_recv().is_none(), "{} got it twice", sub.pattern());
    }
}

#[tokio::test]
async fn subscribers_share_one_message_without_copies() {
    let transport = MemoryTransport::new();
    let mut a = transport
        .subscribe(Pattern::parse("s.*").unwrap())
        .await
        .unwrap();
    let mut b = transport
        .subscribe(Pattern::parse("s.x").unwrap())
        .await
        .unwrap();
    transport.send(msg("s.x", 1)).await.unwrap();
    let (a, b) = (a.recv().await.unwrap(), b.recv().await.unwrap());
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

#[tokio::test]
async fn unsubscribe_ends_the_stream_and_dropping_unsubscribes() {
    let transport = MemoryTransport::new();
    let mut kept = transport
        .subscribe(Pattern::parse("u").unwrap())
        .await
        .unwrap();
    let dropped = transport
        .subscribe(Pattern::parse("u").unwrap())
        .await
        .unwrap();
    assert_eq!(transport.stats().subscriptions, 2);
    drop(dropped);
    assert_eq!(transport.stats().subscriptions, 1);

    assert!(transport.unsubscribe(kept.id()).await);
    assert!(
        !transport.unsubscribe(kept.id()).await,
        "second unsubscribe is a no-op"
    );
    transport.send(msg("u", 1)).await.unwrap();
    assert!(
        kept.recv().await.is_none(),
        "stream ends, nothing delivered"
    );
}

#[tokio::test]
async fn close_is_idempotent_ends_streams_and_refuses_new_work() {
    let transport = MemoryTransport::new();
    let mut sub = transport
        .subscribe(Pattern::parse("c").unwrap())
        .await
        .unwrap();
    transport.send(msg("c", 1)).await.unwrap();
    transport.close().await.unwrap();
    transport.close().await.unwrap();
    assert!(transport.is_closed());

    assert_eq!(
        sub.recv().await.unwrap().payload,
        1,
        "buffered messages drain"
    );
    assert!(sub.recv().await.is_none());
    assert!(matches!(
        transport.send(msg("c", 2)).await,
        Err(Error::Closed("memory transport"))
    ));
    assert!(matches!(
        transport.subscribe(Pattern::parse("c").unwrap()).await,
        Err(Error::Closed("memory transport"))
    ));
    assert!(matches!(
        transport.request(msg("c", 3), Duration::from_secs(1)).await,
        Err(Error::Closed("memory transport"))
    ));
}

#[tokio::test]
async fn a_request_nobody_listens_to_fails_at_once_with_no_responders() {
    let transport = MemoryTransport::new();
    let err = transport
        .request(msg("nobody.home", 1), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoResponders { ref topic } if topic == "nobody.home"),
        "{err}"
    );
    assert_eq!(
        transport.stats().subscriptions,
        0,
        "reply subscription cleaned up"
    );
}

#[tokio::test]
async fn a_reply_is_matched_by_correlation_id() {
    let transport = MemoryTransport::new();
    let mut requests = transport
        .subscribe(Pattern::parse("echo").unwrap())
        .await
        .unwrap();
    let responder = transport.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let reply_to = request.reply_to.clone().unwrap();
            // A stray reply for another request first, then the real one.
            let stray = Message::from_value(&reply_to, "stray".into()).with_correlation_id("other");
            responder.send(stray).await.unwrap();
            let mut reply = Message::from_value(&reply_to, request.payload.clone());
            reply.correlation_id = request.correlation_id.clone();
            responder.send(reply).await.unwrap();
        }
    });
    let reply = transport
        .request(msg("echo", 5), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.payload, 5);
}
