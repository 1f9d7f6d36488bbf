//! MessageQueue behaviour, written once and run on every transport pair.
//!
//! Each factory gives two queues: `publisher` sends, `receiver` subscribes
//! and handles. On memory both are the same bus; on a network transport they
//! are the two ends of a link.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventforge::{Error, Message, MessageQueue};
use futures::StreamExt;
use tokio::sync::mpsc;

mod support;

const WAIT: Duration = Duration::from_secs(5);

/// Unique topic root per test, so tests can share a broker.
fn root() -> String {
    format!("t{}", eventforge::new_id().replace('-', ""))
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("channel open")
}

pub async fn publish_reaches_a_matching_subscriber_with_headers(
    pair: (MessageQueue, MessageQueue),
) {
    let (publisher, receiver) = pair;
    let root = root();
    let mut sub = receiver.subscribe(format!("{root}.*")).await.unwrap();
    let message = Message::new(format!("{root}.created"), serde_json::json!({"id": 1}))
        .unwrap()
        .with_header("trace", "t-1")
        .with_header("n", 3);
    publisher.send(message.clone()).await.unwrap();
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*got, message);
}

pub async fn sync_and_async_handlers_both_run(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    let root = root();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sync_tx = tx.clone();
    receiver
        .on(format!("{root}.**"), move |msg| {
            sync_tx.send(("sync", msg.payload.clone())).unwrap();
        })
        .await
        .unwrap();
    receiver
        .on(format!("{root}.**"), move |msg| {
            let tx = tx.clone();
            async move {
                tx.send(("async", msg.payload.clone())).unwrap();
                Ok::<(), Error>(())
            }
        })
        .await
        .unwrap();
    publisher.publish(&format!("{root}.a.b"), 9).await.unwrap();
    let mut kinds = vec![next(&mut rx).await, next(&mut rx).await];
    kinds.sort_by_key(|(kind, _)| *kind);
    assert_eq!(kinds, [("async", 9.into()), ("sync", 9.into())]);
}

pub async fn failing_and_panicking_handlers_are_counted_and_do_not_stop_the_queue(
    pair: (MessageQueue, MessageQueue),
) {
    let (publisher, receiver) = pair;
    let topic = format!("{}.jobs", root());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fragile_tx = tx.clone();
    receiver
        .on(&topic, move |msg| {
            let n: u64 = msg.payload_as().unwrap();
            match n {
                0 => panic!("handler bug on message 0"),
                1 => Err(format!("cannot handle {n}")),
                _ => {
                    fragile_tx.send(("fragile", n)).unwrap();
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    receiver
        .on(&topic, move |msg| {
            tx.send(("steady", msg.payload_as::<u64>().unwrap()))
                .unwrap()
        })
        .await
        .unwrap();
    for n in 0..3u64 {
        publisher.publish(&topic, n).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut rx).await);
    }
    seen.sort();
    assert_eq!(
        seen,
        [("fragile", 2), ("steady", 0), ("steady", 1), ("steady", 2)]
    );
    let stats = receiver.stats();
    assert_eq!(stats.handler_panics, 1);
    assert_eq!(stats.handler_errors, 1);
}

pub async fn an_unsubscribed_handler_gets_nothing_more(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    let topic = format!("{}.u", root());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let id = receiver
        .on(&topic, move |_msg| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    let mut probe = receiver.subscribe(&topic).await.unwrap();
    publisher.publish(&topic, 1).await.unwrap();
    tokio::time::timeout(WAIT, probe.next()).await.unwrap();

    assert!(receiver.unsubscribe(id).await);
    assert!(!receiver.unsubscribe(id).await);
    let before = calls.load(Ordering::SeqCst);
    publisher.publish(&topic, 2).await.unwrap();
    let got = tokio::time::timeout(WAIT, probe.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, 2);
    assert_eq!(calls.load(Ordering::SeqCst), before);
    assert!(receiver.topics().is_empty());
}

pub async fn receive_returns_the_next_message_or_times_out(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    let topic = format!("{}.r", root());
    let waiting = {
        let receiver = receiver.clone();
        let topic = topic.clone();
        tokio::spawn(async move { receiver.receive(&topic, WAIT).await })
    };
    // Keep publishing until the receiver has subscribed and got one.
    let mut attempts = 0;
    while !waiting.is_finished() {
        attempts += 1;
        assert!(attempts < 100_000, "receive never saw a message");
        publisher.publish(&topic, "hello").await.unwrap();
        tokio::task::yield_now().await;
    }
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.payload, "hello");

    let err = receiver
        .receive(format!("{topic}.never"), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

pub async fn request_gets_the_reply_of_a_handler(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    let topic = format!("{}.double", root());
    let responder = receiver.clone();
    receiver
        .on(&topic, move |msg| {
            let responder = responder.clone();
            async move {
                let n: i64 = msg.payload_as()?;
                responder.reply(&msg, n * 2).await
            }
        })
        .await
        .unwrap();
    for n in 0..20 {
        let reply = publisher.request(&topic, n, WAIT).await.unwrap();
        assert_eq!(reply.payload_as::<i64>().unwrap(), n * 2);
    }
}

pub async fn request_times_out_when_no_reply(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    let topic = format!("{}.silent", root());
    receiver.on(&topic, |_msg| {}).await.unwrap();
    let err = publisher
        .request(&topic, 1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(100)),
        "{err}"
    );
}

pub async fn reply_to_a_message_without_reply_to_is_an_error(pair: (MessageQueue, MessageQueue)) {
    let (_, receiver) = pair;
    let original = Message::new("plain.event", 1).unwrap();
    let err = receiver.reply(&original, 2).await.unwrap_err();
    assert!(
        matches!(err, Error::NoReplyTo { ref id, .. } if *id == original.id),
        "{err}"
    );
}

pub async fn bad_patterns_and_topics_are_rejected(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    for bad in ["", "a..b", "a**", "**b", "a.*x"] {
        assert!(
            matches!(
                receiver.subscribe(bad).await,
                Err(Error::InvalidPattern { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                receiver.on(bad, |_msg| {}).await,
                Err(Error::InvalidPattern { .. })
            ),
            "{bad:?}"
        );
    }
    for bad in ["", "a.", "a.*", "x.**"] {
        assert!(
            matches!(
                publisher.publish(bad, 1).await,
                Err(Error::InvalidTopic { .. })
            ),
            "{bad:?}"
        );
    }
}

pub async fn topics_lists_the_patterns_with_handlers(pair: (MessageQueue, MessageQueue)) {
    let (_, receiver) = pair;
    let root = root();
    receiver.on(format!("{root}.b"), |_msg| {}).await.unwrap();
    receiver.on(format!("{root}.a.*"), |_msg| {}).await.unwrap();
    receiver.on(format!("{root}.b"), |_msg| {}).await.unwrap();
    assert_eq!(
        receiver.topics(),
        [format!("{root}.a.*"), format!("{root}.b")]
    );
    assert_eq!(receiver.stats().handlers, 3);
}

pub async fn close_is_idempotent_and_refuses_new_work(pair: (MessageQueue, MessageQueue)) {
    let (publisher, receiver) = pair;
    receiver.on("closing.x", |_msg| {}).await.unwrap();
    receiver.close().await.unwrap();
    receiver.close().await.unwrap();
    publisher.close().await.unwrap();
    assert!(receiver.is_closed());
    assert_eq!(receiver.stats().handlers, 0);
    assert!(matches!(
        receiver.on("closing.x", |_msg| {}).await,
        Err(Error::Closed(_))
    ));
    assert!(matches!(
        publisher.publish("closing.x", 1).await,
        Err(Error::Closed(_))
    ));
    assert!(matches!(
        receiver.subscribe("closing.x").await,
        Err(Error::Closed(_))
    ));
}

/// One test per behaviour above, for the transport pair `$pair`.
macro_rules! queue_suite {
    ($transport:ident, $pair:expr) => {
        mod $transport {
            use super::*;

            queue_suite!(@tests $pair;
                publish_reaches_a_matching_subscriber_with_headers,
                sync_and_async_handlers_both_run,
                failing_and_panicking_handlers_are_counted_and_do_not_stop_the_queue,
                an_unsubscribed_handler_gets_nothing_more,
                receive_returns_the_next_message_or_times_out,
                request_gets_the_reply_of_a_handler,
                request_times_out_when_no_reply,
                reply_to_a_message_without_reply_to_is_an_error,
                bad_patterns_and_topics_are_rejected,
                topics_lists_the_patterns_with_handlers,
                close_is_idempotent_and_refuses_new_work,
            );
        }
    };
    (@tests $pair:expr; $($behaviour:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                super::$behaviour($pair.await).await;
            }
        )*
    };
}

async fn memory_pair() -> (MessageQueue, MessageQueue) {
    let queue = MessageQueue::memory();
    (queue.clone(), queue)
}

queue_suite!(memory, memory_pair());

/// The client of a TCP link publishes, its server receives.
#[cfg(feature = "tcp")]
async fn tcp_client_to_server_pair() -> (MessageQueue, MessageQueue) {
    let (server, client) = support::tcp_link().await;
    (
        MessageQueue::from_shared(client),
        MessageQueue::from_shared(server),
    )
}

/// The server of a TCP link publishes, its client receives.
#[cfg(feature = "tcp")]
async fn tcp_server_to_client_pair() -> (MessageQueue, MessageQueue) {
    let (client, server) = tcp_client_to_server_pair().await;
    (server, client)
}

#[cfg(feature = "tcp")]
queue_suite!(tcp_client_to_server, tcp_client_to_server_pair());
#[cfg(feature = "tcp")]
queue_suite!(tcp_server_to_client, tcp_server_to_client_pair());
