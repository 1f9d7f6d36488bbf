//! `Worker` as a library: native Rust handlers beside the built-ins,
//! called over real loopback TCP.

use eventforge_core::MessageQueue;
use eventforge_rpc::RpcClient;
use eventforge_transports::tcp::TcpClientTransport;
use eventforge_worker::{Worker, WorkerError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_handler_and_builtin_are_served_together() -> Result<(), Box<dyn std::error::Error>>
{
    let worker = Worker::on("tcp://127.0.0.1:0")
        .service("lib")
        .builtin("add")
        .handler("double", |n: i64| async move { Ok::<_, String>(n * 2) })
        .start()
        .await?;
    let addr = worker.url().trim_start_matches("tcp://").to_owned();
    let client =
        RpcClient::new(MessageQueue::new(TcpClientTransport::connect(addr).await?)).service("lib");
    let doubled: i64 = client.call("double", (21,)).await?;
    let sum: i64 = client.call("add", (1, 2)).await?;
    assert_eq!((doubled, sum), (42, 3));
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn worker_without_any_handler_does_not_start() {
    let result = Worker::on("tcp://127.0.0.1:0").start().await;
    assert!(matches!(result, Err(WorkerError::NoHandlers)));
}
