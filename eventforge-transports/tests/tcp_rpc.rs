//! RPC runs unchanged on the TCP transport, in both directions.
#![cfg(feature = "tcp")]

use eventforge_core::MessageQueue;
use eventforge_rpc::{HandlerError, RpcClient, RpcErrorKind, RpcServer};
use eventforge_transports::tcp::{TcpClientTransport, TcpServerTransport};

async fn link() -> (MessageQueue, MessageQueue) {
    let server = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let client = TcpClientTransport::connect(server.local_addr())
        .await
        .unwrap();
    (MessageQueue::new(server), MessageQueue::new(client))
}

#[tokio::test]
async fn a_client_calls_a_service_served_by_the_tcp_server() {
    let (server_queue, client_queue) = link().await;
    let server = RpcServer::new(server_queue.clone()).service("math");
    server.register("add", |a: i64, b: i64| async move {
        Ok::<_, HandlerError>(a + b)
    });
    server.serve().await.unwrap();

    let client = RpcClient::new(client_queue.clone()).service("math");
    for n in 0..20i64 {
        let sum: i64 = client.call("add", (n, 1)).await.unwrap();
        assert_eq!(sum, n + 1);
    }
    let missing = client.call::<i64>("nope", ()).await.unwrap_err();
    assert_eq!(missing.kind(), RpcErrorKind::MethodNotFound, "{missing:?}");
    server.stop().await;
    client_queue.close().await.unwrap();
    server_queue.close().await.unwrap();
}

#[tokio::test]
async fn the_tcp_server_calls_a_service_served_by_its_client() {
    let (server_queue, client_queue) = link().await;
    let worker = RpcServer::new(client_queue.clone()).service("worker");
    worker.register("shout", |text: String| async move {
        Ok::<_, HandlerError>(text.to_uppercase())
    });
    worker.serve().await.unwrap();

    let caller = RpcClient::new(server_queue.clone()).service("worker");
    let loud: String = caller.call("shout", ("hello",)).await.unwrap();
    assert_eq!(loud, "HELLO");
    worker.stop().await;
    client_queue.close().await.unwrap();
    server_queue.close().await.unwrap();
}
