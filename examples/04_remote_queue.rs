//! A coordinator pushing jobs to named workers with `RemoteQueue`, and the
//! workers pushing results back.
//!
//! Run `cargo run --example 04_remote_queue`. Each node listens on its own
//! TCP port (its local queue) and opens links to the nodes it sends to; the
//! nodes run in one process here, but they would work the same way in
//! separate processes or on separate machines. Bounded in time.

use std::time::Duration;

use eventforge::transports::tcp::{RemoteQueue, TcpServerTransport};
use eventforge::MessageQueue;
use futures::StreamExt;
use serde_json::json;

const JOBS: u64 = 6;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// A node that receives on its own TCP server.
async fn node(name: &str) -> Result<(RemoteQueue, std::net::SocketAddr), AnyError> {
    let server = TcpServerTransport::bind("127.0.0.1:0").await?;
    let addr = server.local_addr();
    Ok((
        RemoteQueue::new(name).with_local(MessageQueue::new(server)),
        addr,
    ))
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    tokio::time::timeout(Duration::from_secs(20), run())
        .await
        .map_err(|_| "the example did not finish in time")?
}

async fn run() -> Result<(), AnyError> {
    let (coordinator, coordinator_addr) = node("coordinator").await?;
    let mut results = coordinator.subscribe("results.*").await?;

    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let (worker, addr) = node(name).await?;
        worker.connect("coordinator", coordinator_addr).await?;
        // Squares what it is sent and pushes the result back.
        let replier = worker.clone();
        worker
            .on("jobs.square", move |msg| {
                let worker = replier.clone();
                async move {
                    let n: u64 = msg.payload_as()?;
                    let result = json!({ "n": n, "square": n * n, "by": worker.node_id() });
                    worker.send("coordinator", "results.square", result).await?;
                    Ok::<(), AnyError>(())
                }
            })
            .await?;
        coordinator.connect(name, addr).await?;
        workers.push(worker);
    }
    println!("coordinator peers: {:?}", coordinator.peers());

    let peers = coordinator.peers();
    for n in 0..JOBS {
        let to = &peers[(n as usize) % peers.len()];
        coordinator.send(to, "jobs.square", n).await?;
    }
    let mut total = 0;
    for _ in 0..JOBS {
        let result = results.next().await.ok_or("results ended")?;
        println!(
            "{} computed {}² = {}",
            result.payload["by"], result.payload["n"], result.payload["square"]
        );
        total += result.payload["square"].as_u64().unwrap_or(0);
    }
    println!("sum of squares: {total}");

    let acks = coordinator.broadcast("jobs.shutdown", ()).await?;
    for (peer, result) in &acks {
        println!(
            "shutdown sent to {peer}: {}",
            if result.is_ok() { "ok" } else { "failed" }
        );
    }
    coordinator.close().await?;
    for worker in workers {
        worker.close().await?;
    }
    Ok(())
}
