//! MessageQueue behaviour on the TCP transport, both ends, over real
//! loopback sockets.
#![cfg(feature = "tcp")]

use std::time::Duration;

use eventforge_core::{Error, Message, MessageQueue, Transport};
use eventforge_transports::tcp::{TcpClientTransport, TcpServerTransport};
use futures::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

async fn pair() -> (
    MessageQueue,
    TcpServerTransport,
    MessageQueue,
    TcpClientTransport,
) {
    let server = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let client = TcpClientTransport::connect(server.local_addr())
        .await
        .unwrap();
    (
        MessageQueue::new(server.clone()),
        server,
        MessageQueue::new(client.clone()),
        client,
    )
}

async fn next(sub: &mut eventforge_core::Subscription) -> std::sync::Arc<Message> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
}

#[tokio::test]
async fn client_publish_reaches_server_subscriber_with_headers_intact() {
    let (server, _, client, _) = pair().await;
    let mut inbox = server.subscribe("orders.*").await.unwrap();
    let sent = Message::new("orders.created", json!({"id": 7}))
        .unwrap()
        .with_header("trace", "t-1")
        .with_correlation_id("c-1");
    client.send(sent.clone()).await.unwrap();
    let got = next(&mut inbox).await;
    assert_eq!(*got, sent);
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn server_publish_reaches_a_subscribed_client() {
    let (server, _, client, _) = pair().await;
    let mut inbox = client.subscribe("prices.**").await.unwrap();
    server.publish("prices.eu.fr", 12.5).await.unwrap();
    assert_eq!(next(&mut inbox).await.payload, 12.5);
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn messages_from_one_publisher_arrive_in_order() {
    let (server, _, client, _) = pair().await;
    let mut inbox = server.subscribe("seq.n").await.unwrap();
    for n in 0..500 {
        client.publish("seq.n", n).await.unwrap();
    }
    for n in 0..500 {
        assert_eq!(next(&mut inbox).await.payload, n);
    }
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn wildcards_match_the_same_on_the_client_as_everywhere() {
    let table = [
        ("wc.*", "wc.a", true),
        ("wc.*", "wc.a.b", false),
        ("wc.**", "wc.a.b", true),
        ("wc.**", "wc", false),
        ("wc.*.end", "wc.x.end", true),
        ("wc.**.end", "wc.x.y.end", true),
        ("wc.**.end", "wc.end", false),
        ("wc.exact", "wc.exact", true),
        ("wc.exact", "wc.exactly", false),
    ];
    let (server, _, client, _) = pair().await;
    for (pattern, topic, expected) in table {
        let mut sub = client.subscribe(pattern).await.unwrap();
        server.publish(topic, "probe").await.unwrap();
        // A marker the pattern always matches or never does tells when the probe has passed.
        let mut marker = client.subscribe("marker.wc").await.unwrap();
        server.publish("marker.wc", "after").await.unwrap();
        next(&mut marker).await;
        let got = sub.try_recv();
        assert_eq!(got.is_some(), expected, "{pattern} vs {topic}");
    }
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_client_request_is_answered_by_a_server_handler() {
    let (server, _, client, _) = pair().await;
    let responder = server.clone();
    server
        .on("math.double", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, msg.payload_as::<i64>()? * 2).await }
        })
        .await
        .unwrap();
    for n in 0..20 {
        let reply = client.request("math.double", n, WAIT).await.unwrap();
        assert_eq!(reply.payload, n * 2);
    }
    assert_eq!(server.transport().name(), "tcp");
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_server_request_is_answered_by_a_client_handler() {
    let (server, _, client, _) = pair().await;
    let responder = client.clone();
    client
        .on("client.echo", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, msg.payload.clone()).await }
        })
        .await
        .unwrap();
    let reply = server.request("client.echo", "ping", WAIT).await.unwrap();
    assert_eq!(reply.payload, "ping");
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn request_times_out_when_no_reply() {
    let (server, _, client, _) = pair().await;
    let started = std::time::Instant::now();
    let err = client
        .request("nobody.listens", 1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < WAIT);
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn each_side_receives_what_it_publishes_itself() {
    let (server, _, client, _) = pair().await;
    let mut mine = client.subscribe("self.c").await.unwrap();
    client.publish("self.c", 1).await.unwrap();
    assert_eq!(next(&mut mine).await.payload, 1);
    let mut own = server.subscribe("self.s").await.unwrap();
    server.publish("self.s", 2).await.unwrap();
    assert_eq!(next(&mut own).await.payload, 2);
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_client_receives_only_what_it_subscribed_to() {
    let (server, _, client, transport) = pair().await;
    let mut wanted = client.subscribe("only.this").await.unwrap();
    server.publish("only.other", 1).await.unwrap();
    server.publish("only.this", 2).await.unwrap();
    assert_eq!(next(&mut wanted).await.payload, 2);
    assert_eq!(
        transport.stats().received,
        1,
        "only.other never crossed the wire"
    );
    assert!(transport.stats().server_filters);
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn an_unsubscribed_pattern_is_no_longer_sent() {
    let (server, _, client, transport) = pair().await;
    let dropped = client.subscribe("unsub.a").await.unwrap();
    drop(dropped);
    let mut marker = client.subscribe("unsub.marker").await.unwrap();
    server.publish("unsub.a", 1).await.unwrap();
    server.publish("unsub.marker", 2).await.unwrap();
    assert_eq!(next(&mut marker).await.payload, 2);
    assert_eq!(
        transport.stats().received,
        1,
        "unsub.a was not sent after the drop"
    );
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_closed_client_refuses_work_and_ends_its_subscriptions() {
    let (server, _, client, transport) = pair().await;
    let mut sub = client.subscribe("closing.*").await.unwrap();
    client.close().await.unwrap();
    client.close().await.unwrap();
    assert!(transport.is_closed());
    assert!(tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        transport.send(Message::new("closing.x", 1).unwrap()).await,
        Err(Error::Closed("tcp"))
    ));
    assert!(matches!(
        client.publish("closing.x", 1).await,
        Err(Error::Closed(_))
    ));
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_closed_server_refuses_work_and_its_clients_see_the_link_go_down() {
    let (server, transport, client, client_transport) = pair().await;
    let mut sub = server.subscribe("closing.*").await.unwrap();
    let mut link = client_transport.link_events();
    server.close().await.unwrap();
    server.close().await.unwrap();
    assert!(tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        transport.send(Message::new("closing.x", 1).unwrap()).await,
        Err(Error::Closed("tcp"))
    ));
    tokio::time::timeout(WAIT, link.wait_for(|up| !*up))
        .await
        .unwrap()
        .unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn connecting_to_nothing_fails_with_a_typed_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = TcpClientTransport::connect(addr).await.unwrap_err();
    assert!(
        matches!(err, eventforge_transports::tcp::TcpError::Connect { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn close_does_not_hang_on_a_subscriber_that_never_reads() {
    let server = TcpServerTransport::builder()
        .buffer(1)
        .close_timeout(Duration::from_millis(200))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let _never_read = server
        .subscribe(eventforge_core::Pattern::parse("stuck.*").unwrap())
        .await
        .unwrap();
    let client = TcpClientTransport::connect(server.local_addr())
        .await
        .unwrap();
    for n in 0..3 {
        client
            .send(Message::new("stuck.x", n).unwrap())
            .await
            .unwrap();
    }
    // Last resort polling: nothing signals that the reader is blocked.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.stats().router.waited == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader never blocked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(WAIT, server.close())
        .await
        .expect("close finished")
        .unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_clients_each_receive_only_their_own_replies() {
    let transport = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let addr = transport.local_addr();
    let server = MessageQueue::new(transport);
    let responder = server.clone();
    server
        .on("svc.whoami", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, msg.payload.clone()).await }
        })
        .await
        .unwrap();
    const CLIENTS: usize = 8;
    const CALLS: usize = 50;
    let mut callers = Vec::new();
    for c in 0..CLIENTS {
        let transport = TcpClientTransport::connect(addr).await.unwrap();
        callers.push(tokio::spawn(async move {
            let queue = MessageQueue::new(transport.clone());
            for n in 0..CALLS {
                let reply = queue.request("svc.whoami", (c, n), WAIT).await.unwrap();
                assert_eq!(reply.payload, json!([c, n]));
            }
            let received = transport.stats().received;
            queue.close().await.unwrap();
            received
        }));
    }
    for caller in callers {
        let received = caller.await.unwrap();
        assert_eq!(
            received, CALLS as u64,
            "a client got replies meant for others"
        );
    }
    server.close().await.unwrap();
}
