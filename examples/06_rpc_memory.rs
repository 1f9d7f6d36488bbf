//! RPC over the memory transport: a server with typed handlers, a client,
//! the errors a caller can match on, and a round-robin pool with retries
//! that keeps answering while one of its workers stops.
//!
//! The same code runs over TCP, Redis or NATS by changing the transport.
//! Run with `cargo run --example 06_rpc_memory`.

use std::time::Duration;

use eventforge::rpc::{
    with_retry, RetryPolicy, RoundRobinRpcClient, RpcClient, RpcError, RpcServer,
};
use eventforge::rpc::{HandlerError, Kwargs};
use eventforge::MessageQueue;
use serde::Deserialize;

#[derive(Deserialize)]
struct Greeting {
    name: String,
    punct: Option<String>,
}

fn calculator(queue: &MessageQueue, service: &str) -> RpcServer {
    let server = RpcServer::new(queue.clone()).service(service);
    let name = service.to_owned();
    server
        .register("add", |a: i64, b: i64| async move {
            Ok::<_, HandlerError>(a + b)
        })
        .register("divide", |a: f64, b: f64| {
            if b == 0.0 {
                return Err(HandlerError::new("ZeroDivisionError", "division by zero"));
            }
            Ok(a / b)
        })
        .register("greet", |Kwargs(g): Kwargs<Greeting>| {
            Ok::<_, HandlerError>(format!("hello {}{}", g.name, g.punct.unwrap_or_default()))
        })
        .register("whoami", move || Ok::<_, HandlerError>(name.clone()));
    server
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = MessageQueue::memory();
    let server = calculator(&queue, "calculator");
    server.serve().await?;

    let client = RpcClient::new(queue.clone())
        .service("calculator")
        .timeout(Duration::from_secs(2));
    let sum: i64 = client.call("add", (10, 20)).await?;
    println!("add(10, 20) = {sum}");
    let text: String = client
        .method("greet")
        .arg("bob")
        .kwarg("punct", "!")
        .call()
        .await?;
    println!("greet('bob', punct='!') = {text}");

    match client.call::<f64>("divide", (1, 0)).await {
        Err(RpcError::Remote {
            error_type,
            message,
        }) => {
            println!("divide(1, 0) failed remotely: {error_type}: {message}")
        }
        other => println!("unexpected: {other:?}"),
    }
    match client.call::<i64>("nope", ()).await {
        Err(RpcError::MethodNotFound { message, .. }) => println!("nope(): {message}"),
        other => println!("unexpected: {other:?}"),
    }
    match client.call::<i64>("add", (1, "two")).await {
        Err(error) => println!("add(1, 'two'): {error}"),
        Ok(sum) => println!("unexpected sum {sum}"),
    }

    // Many calls in flight over one transport, each matched to its reply.
    let calls = (0..100i64).map(|i| {
        let client = client.clone();
        async move { client.call::<i64>("add", (i, i)).await }
    });
    let sums = futures::future::try_join_all(calls).await?;
    println!("100 concurrent calls, last = {}", sums[99]);

    // A pool of two workers; one stops half-way and the calls go on.
    let workers = [
        calculator(&queue, "worker-a"),
        calculator(&queue, "worker-b"),
    ];
    for worker in &workers {
        worker.serve().await?;
    }
    let pool = with_retry(
        RoundRobinRpcClient::new(
            ["worker-a", "worker-b"].map(|w| RpcClient::new(queue.clone()).service(w)),
        ),
        RetryPolicy::new()
            .max_attempts(3)
            .initial_backoff(Duration::from_millis(5)),
    );
    let mut served_by = Vec::new();
    for i in 0..6 {
        if i == 3 {
            workers[0].stop().await;
            println!("worker-a stopped");
        }
        served_by.push(pool.call::<String>("whoami", ()).await?);
    }
    println!("served by: {served_by:?}");

    for worker in &workers {
        worker.stop().await;
    }
    server.stop().await;
    queue.close().await?;
    Ok(())
}
