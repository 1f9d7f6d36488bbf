//! RemoteQueue: pushing to named peers over TCP.
#![cfg(feature = "tcp")]

use std::time::Duration;

use eventforge_core::MessageQueue;
use eventforge_transports::tcp::{RemoteQueue, RemoteQueueError, TcpServerTransport};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(5);

async fn worker(name: &str) -> (RemoteQueue, std::net::SocketAddr) {
    let server = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    (
        RemoteQueue::new(name).with_local(MessageQueue::new(server)),
        addr,
    )
}

#[tokio::test]
async fn send_reaches_only_the_named_peer() {
    let (one, addr_one) = worker("one").await;
    let (two, addr_two) = worker("two").await;
    let mut inbox_one = one.subscribe("jobs.*").await.unwrap();
    let mut inbox_two = two.subscribe("jobs.*").await.unwrap();
    let coordinator = RemoteQueue::new("coordinator");
    coordinator.connect("one", addr_one).await.unwrap();
    coordinator.connect("two", addr_two).await.unwrap();
    assert_eq!(coordinator.peers(), ["one", "two"]);

    coordinator.send("two", "jobs.resize", 1).await.unwrap();
    coordinator.send("one", "jobs.resize", 2).await.unwrap();
    let got_two = tokio::time::timeout(WAIT, inbox_two.next())
        .await
        .unwrap()
        .unwrap();
    let got_one = tokio::time::timeout(WAIT, inbox_one.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got_one.payload.clone(), got_two.payload.clone()),
        (2.into(), 1.into())
    );
    assert_eq!(got_one.headers["source_node"], "coordinator");
    assert!(inbox_one.try_recv().is_none() && inbox_two.try_recv().is_none());
    coordinator.close().await.unwrap();
    one.close().await.unwrap();
    two.close().await.unwrap();
}

#[tokio::test]
async fn broadcast_reports_a_result_per_peer() {
    let (one, addr_one) = worker("one").await;
    let mut inbox = one.subscribe("all.hello").await.unwrap();
    let (gone, addr_gone) = worker("gone").await;
    let coordinator = RemoteQueue::new("coordinator").with_client_options(
        eventforge_transports::tcp::TcpClientTransport::builder().reconnect(false),
    );
    coordinator.connect("one", addr_one).await.unwrap();
    coordinator.connect("gone", addr_gone).await.unwrap();
    gone.close().await.unwrap();

    // The coordinator sees the link to "gone" go down.
    let mut link = coordinator.peer("gone").unwrap().link_events();
    tokio::time::timeout(WAIT, link.wait_for(|up| !*up))
        .await
        .unwrap()
        .unwrap();

    let results = coordinator.broadcast("all.hello", "hi").await.unwrap();
    assert_eq!(results.keys().collect::<Vec<_>>(), ["gone", "one"]);
    assert!(results["one"].is_ok());
    assert!(matches!(results["gone"], Err(RemoteQueueError::Core(_))));
    let got = tokio::time::timeout(WAIT, inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, "hi");
    coordinator.close().await.unwrap();
    one.close().await.unwrap();
}

#[tokio::test]
async fn unknown_peers_and_missing_local_queue_are_typed_errors() {
    let (one, addr) = worker("one").await;
    let node = RemoteQueue::new("sender-only");
    assert!(matches!(
        node.send("nobody", "a.b", 1).await,
        Err(RemoteQueueError::UnknownPeer { node_id }) if node_id == "nobody"
    ));
    assert!(matches!(
        node.subscribe("a.*").await,
        Err(RemoteQueueError::NoLocalQueue { .. })
    ));
    assert!(matches!(
        node.on("a.*", |_msg| ()).await,
        Err(RemoteQueueError::NoLocalQueue { .. })
    ));
    node.connect("one", addr).await.unwrap();
    assert!(matches!(
        node.connect("one", addr).await,
        Err(RemoteQueueError::AlreadyConnected { .. })
    ));
    assert!(node.disconnect("one").await);
    assert!(!node.disconnect("one").await);
    assert!(node.peers().is_empty());
    node.close().await.unwrap();
    node.close().await.unwrap();
    assert!(matches!(
        node.connect("one", addr).await,
        Err(RemoteQueueError::Closed { .. })
    ));
    one.close().await.unwrap();
}

#[tokio::test]
async fn handlers_on_the_local_queue_receive_pushed_messages() {
    let (worker, addr) = worker("worker").await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(4);
    worker
        .on("tasks.run", move |msg| {
            let done = done_tx.clone();
            async move {
                let _ = done.send(msg.payload.clone()).await;
            }
        })
        .await
        .unwrap();
    let coordinator = RemoteQueue::new("coordinator");
    coordinator.connect("worker", addr).await.unwrap();
    coordinator
        .send("worker", "tasks.run", "build")
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, done_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "build");
    coordinator.close().await.unwrap();
    worker.close().await.unwrap();
}
