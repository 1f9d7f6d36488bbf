//! Faults: bad input from one connection, a client that cannot keep up, a
//! server that goes away. Each must hurt nobody else.
#![cfg(feature = "tcp")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventforge_core::{Error, Message, MessageQueue, Transport};
use eventforge_transports::tcp::{
    SlowClientPolicy, TcpClientTransport, TcpError, TcpServerTransport,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn framed(json: &[u8]) -> Vec<u8> {
    let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(json);
    bytes
}

/// Reads until the server closes the socket; true when it did in time.
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut sink = vec![0; 4096];
    let read_to_end = async {
        loop {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read_to_end).await.is_ok()
}

#[tokio::test]
async fn bad_input_drops_only_the_offending_connection() {
    let server = TcpServerTransport::builder()
        .max_frame(64 * 1024)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    let queue = MessageQueue::new(server.clone());
    let responder = queue.clone();
    queue
        .on("echo.request", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, msg.payload.clone()).await }
        })
        .await
        .unwrap();

    // A well-behaved client keeps exchanging messages the whole time.
    let client = MessageQueue::new(TcpClientTransport::connect(addr).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let exchanged = Arc::new(AtomicU64::new(0));
    let worker = {
        let (client, stop, exchanged) = (client.clone(), stop.clone(), exchanged.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let reply = client.request("echo.request", n, WAIT).await?;
                assert_eq!(reply.payload, n);
                exchanged.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<_, Error>(())
        })
    };

    let garbage: [(&str, Vec<u8>); 6] = [
        (
            "random bytes",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("oversize length prefix", vec![0xff, 0xff, 0xff, 0xff, b'{']),
        ("invalid JSON", framed(b"{\"topic\": \"a\", oops")),
        ("invalid UTF-8", framed(b"{\"topic\": \"\xff\xfe\"}")),
        ("JSON that is not a message", framed(b"[1, 2, 3]")),
        ("a message without a topic", framed(b"{\"payload\": 1}")),
    ];
    for (what, bytes) in &garbage {
        let before = exchanged.load(Ordering::Relaxed);
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(bytes).await.unwrap();
        assert!(
            closed_by_server(&mut socket).await,
            "{what}: connection not dropped"
        );
        // The good client still gets answers after each attack.
        let reply = client.request("echo.request", "still here", WAIT).await;
        assert_eq!(reply.unwrap().payload, "still here", "after {what}");
        assert!(exchanged.load(Ordering::Relaxed) >= before);
    }

    // Half a frame, then the attacker goes away.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(&framed(b"{\"topic\": \"half.frame\"}")[..10])
        .await
        .unwrap();
    socket.shutdown().await.unwrap();
    assert!(closed_by_server(&mut socket).await);
    let reply = client
        .request("echo.request", "after half", WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, "after half");

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(WAIT, worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(exchanged.load(Ordering::Relaxed) > 0);
    assert_eq!(server.stats().bad_input_disconnects, 7);
    client.close().await.unwrap();
    queue.close().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_without_stalling_others() {
    let server = TcpServerTransport::builder()
        .client_queue(16)
        .slow_client(SlowClientPolicy::Disconnect {
            after: Duration::from_millis(100),
        })
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();

    // The slow client: a tiny receive buffer, and it never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();

    let good = MessageQueue::new(TcpClientTransport::connect(addr).await.unwrap());
    let mut inbox = good.subscribe("flood.*").await.unwrap();
    let payload = "x".repeat(32 * 1024);
    let mut published = 0u64;
    // Bounded: the slow client is far behind after a few hundred frames.
    while server.stats().slow_disconnects == 0 && published < 20_000 {
        tokio::time::timeout(
            WAIT,
            server.send(Message::new("flood.data", &payload).unwrap()),
        )
        .await
        .expect("a publish never waits for a slow client")
        .unwrap();
        published += 1;
        // The good client keeps up: it has every message so far.
        let got = tokio::time::timeout(WAIT, inbox.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.topic, "flood.data");
    }
    let stats = server.stats();
    assert_eq!(
        stats.slow_disconnects, 1,
        "after {published} publishes: {stats:?}"
    );
    assert!(stats.dropped_frames > 0);
    assert!(closed_by_server(&mut slow).await);

    // The good client is still connected and served.
    server
        .send(Message::new("flood.last", 1).unwrap())
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.topic, "flood.last");
    good.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn the_client_reconnects_restores_its_subscriptions_and_reports_the_gap() {
    let first = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let addr = first.local_addr();
    let transport = TcpClientTransport::builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect(addr)
        .await
        .unwrap();
    assert!(transport.capabilities().reconnects);
    assert!(transport.capabilities().ordered_per_publisher);
    let client = MessageQueue::new(transport.clone());
    let mut news = client.subscribe("news.*").await.unwrap();
    let mut link = transport.link_events();

    first.close().await.unwrap();
    tokio::time::timeout(WAIT, link.wait_for(|up| !*up))
        .await
        .unwrap()
        .unwrap();

    // While the link is down, sends fail at once with a typed error.
    let started = std::time::Instant::now();
    let err = client.publish("news.lost", 1).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    match &err {
        Error::Transport { source, .. } => assert!(
            matches!(
                source.downcast_ref::<TcpError>(),
                Some(TcpError::NotConnected { .. })
            ),
            "{err:?}"
        ),
        other => panic!("expected a transport error, got {other:?}"),
    }

    // The server comes back on the same address.
    let second = MessageQueue::new(TcpServerTransport::bind(addr).await.unwrap());
    let responder = second.clone();
    second
        .on("svc.ping", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, "pong").await }
        })
        .await
        .unwrap();
    tokio::time::timeout(WAIT, link.wait_for(|up| *up))
        .await
        .unwrap()
        .unwrap();
    // A round trip proves the server has read the restored declarations.
    let pong = client.request("svc.ping", (), WAIT).await.unwrap();
    assert_eq!(pong.payload, "pong");

    second.publish("news.back", 2).await.unwrap();
    let got = tokio::time::timeout(WAIT, news.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.topic, "news.back");
    let stats = transport.stats();
    assert_eq!((stats.disconnects, stats.reconnects), (1, 1), "{stats:?}");
    client.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn a_send_may_wait_a_bounded_time_for_the_link() {
    let server = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let transport = TcpClientTransport::builder()
        .send_wait(Duration::from_millis(200))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect(addr)
        .await
        .unwrap();
    let mut link = transport.link_events();
    server.close().await.unwrap();
    tokio::time::timeout(WAIT, link.wait_for(|up| !*up))
        .await
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    let err = transport
        .send(Message::new("wait.x", 1).unwrap())
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "gave up after {waited:?}"
    );
    assert!(waited < WAIT);
    assert!(err.is_transient(), "{err:?}");
    transport.close().await.unwrap();
}
