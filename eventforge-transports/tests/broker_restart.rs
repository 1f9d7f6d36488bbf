//! A broker restart: subscriptions come back by themselves, and the gap is
//! reported. Each test runs its own broker on a free loopback port.

#![cfg(any(feature = "redis", feature = "nats"))]

mod private_broker;

use std::sync::Arc;
use std::time::Duration;

use eventforge_core::{Message, Pattern, Subscription, Transport};
use private_broker::{Kind, PrivateBroker};

const PATIENCE: Duration = Duration::from_secs(20);

async fn next(subscription: &mut Subscription) -> Arc<Message> {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("a message in time")
        .expect("the subscription is still open")
}

async fn wait_reconnected(mut reconnections: tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(PATIENCE, reconnections.wait_for(|n| *n >= 1))
        .await
        .expect("reconnected in time")
        .expect("transport alive");
}

/// Sends until the publisher's own connection is back (each failure is a
/// real reconnection attempt, bounded in count).
async fn send_after_restart(publisher: &dyn Transport, message: Message) {
    let mut last = None;
    for _ in 0..50 {
        match publisher.send(message.clone()).await {
            Ok(()) => return,
            Err(error) => last = Some(error),
        }
        tokio::task::yield_now().await;
    }
    panic!("publisher never recovered: {last:?}");
}

/// A request from `requester` answered through `responder` works.
async fn request_round_trip(requester: &dyn Transport, responder: &dyn Transport) {
    let mut requests = responder
        .subscribe(Pattern::parse("restart.rpc").unwrap())
        .await
        .unwrap();
    let asked = requester.request(Message::new("restart.rpc", 3).unwrap(), PATIENCE);
    let answer = async {
        let request = next(&mut requests).await;
        let mut reply = Message::new(request.reply_to.clone().unwrap(), 6).unwrap();
        reply.correlation_id = request.correlation_id.clone();
        responder.send(reply).await.unwrap();
    };
    let (reply, ()) = tokio::join!(asked, answer);
    assert_eq!(reply.unwrap().payload, 6);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscription_delivers_again_after_a_broker_restart() {
    use eventforge_transports::redis::RedisTransport;

    let mut broker = PrivateBroker::start(Kind::Redis).await;
    let connect = || {
        RedisTransport::builder(broker.url())
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
            .connect()
    };
    let subscriber = connect().await.expect("subscriber");
    let publisher = connect().await.expect("publisher");
    let mut subscription = subscriber
        .subscribe(Pattern::parse("restart.*").unwrap())
        .await
        .unwrap();
    publisher
        .send(Message::new("restart.before", 1).unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload, 1);
    assert_eq!(subscriber.stats().disconnects, 0);

    let reconnections = subscriber.reconnections();
    broker.restart().await;
    wait_reconnected(reconnections).await;

    send_after_restart(&publisher, Message::new("restart.after", 2).unwrap()).await;
    let after = next(&mut subscription).await;
    assert_eq!(
        (after.topic.as_str(), &after.payload),
        ("restart.after", &2.into())
    );

    // Requests work again too: their reply subscription was re-made.
    request_round_trip(&subscriber, &publisher).await;

    let stats = subscriber.stats();
    assert_eq!(stats.disconnects, 1, "the gap is counted");
    assert_eq!(stats.reconnects, 1);
    assert_eq!(
        stats.broker_subscriptions, 1,
        "the pattern was re-subscribed"
    );
    subscriber.close().await.unwrap();
    publisher.close().await.unwrap();
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subscription_delivers_again_after_a_broker_restart() {
    use eventforge_transports::nats::NatsTransport;

    let mut broker = PrivateBroker::start(Kind::Nats).await;
    let connect = || {
        NatsTransport::builder()
            .server(broker.url())
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
            .connect()
    };
    let subscriber = connect().await.expect("subscriber");
    let publisher = connect().await.expect("publisher");
    let mut subscription = subscriber
        .subscribe(Pattern::parse("restart.*").unwrap())
        .await
        .unwrap();
    publisher
        .send(Message::new("restart.before", 1).unwrap())
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload, 1);

    let (subscriber_back, publisher_back) = (subscriber.reconnections(), publisher.reconnections());
    broker.restart().await;
    wait_reconnected(subscriber_back).await;
    wait_reconnected(publisher_back).await;
    // The client re-sends its subscriptions on reconnection; one round trip
    // through the server proves they are in place.
    subscriber
        .flush()
        .await
        .expect("round trip after reconnection");

    send_after_restart(&publisher, Message::new("restart.after", 2).unwrap()).await;
    let after = next(&mut subscription).await;
    assert_eq!(
        (after.topic.as_str(), &after.payload),
        ("restart.after", &2.into())
    );

    request_round_trip(&subscriber, &publisher).await;

    let stats = subscriber.stats();
    assert!(stats.disconnects >= 1, "the gap is counted: {stats:?}");
    assert!(stats.reconnects >= 1, "{stats:?}");
    subscriber.close().await.unwrap();
    publisher.close().await.unwrap();
}
