//! Tasks: one function, three ways to call it, one lifecycle.
//!
//! The same task is called directly, triggered by messages on its topic
//! (publishing its results on `<topic>.success` / `<topic>.failure`), and
//! served over RPC; an instance limit and shared state apply to all three.
//! With the `macros` feature, `#[task]` on a function writes the builder
//! below for you (see `eventforge::macros`).
//!
//! Run with `cargo run --example 08_tasks`.

use std::time::Duration;

use eventforge::rpc::{HandlerError, RpcClient, RpcServer};
use eventforge::tasks::observers::TimingMeter;
use eventforge::tasks::Task;
use eventforge::MessageQueue;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = MessageQueue::memory();
    let timing = TimingMeter::new("invoice.total.time");

    let total = Task::builder("invoice_total", |prices: Vec<f64>, tax: f64| async move {
        if tax < 0.0 {
            return Err(HandlerError::new("ValueError", "tax cannot be negative"));
        }
        Ok(prices.iter().sum::<f64>() * (1.0 + tax))
    })
    .params(["prices", "tax"])
    .topic("invoices.total")
    .publish_result(true)
    .max_instances(4)
    .instance_timeout(Duration::from_secs(1))
    .observer(timing.clone())
    .on_complete(|ctx| {
        // Every call, whatever its path, counts itself in the shared state.
        ctx.state().update("calls", |old| {
            (old.and_then(|v| v.as_u64()).unwrap_or(0) + 1).into()
        });
    })
    .build();

    // 1. Directly.
    // `HandlerError` is not a `std::error::Error` (any error converts into
    // it with `?`), so it is turned into text here.
    let direct: f64 = total
        .call_as((vec![10.0, 20.0], 0.1))
        .await
        .map_err(|e| e.to_string())?;
    println!("direct call: {direct:.2}");

    // 2. From its topic: an object payload binds by parameter name.
    let mut successes = queue.subscribe("invoices.total.success").await?;
    let mut failures = queue.subscribe("invoices.total.failure").await?;
    total.bind(&queue).await?;
    queue
        .publish("invoices.total", json!({"prices": [5.0, 5.0], "tax": 0.2}))
        .await?;
    let done = successes.recv().await.ok_or("queue closed")?;
    println!("invoices.total.success: {}", done.payload);
    queue
        .publish("invoices.total", json!({"prices": [1.0]}))
        .await?;
    let failed = failures.recv().await.ok_or("queue closed")?;
    println!("invoices.total.failure: {}", failed.payload);

    // 3. Over RPC: the same observers run around each remote call.
    let server = RpcServer::new(queue.clone()).service("billing");
    total.serve_on(&server);
    server.serve().await?;
    let client = RpcClient::new(queue.clone()).service("billing");
    let remote: f64 = client
        .method("invoice_total")
        .arg(vec![100.0])
        .kwarg("tax", 0.0)
        .call()
        .await?;
    println!("rpc call: {remote:.2}");

    println!(
        "calls seen by the shared state: {}, by the timing meter: {}",
        total.state().get("calls").unwrap_or_default(),
        timing.stats().count
    );
    println!("instance pool: {:?}", total.pool_stats());
    assert_eq!(timing.stats().count, 4);
    server.stop().await;
    queue.close().await?;
    Ok(())
}
