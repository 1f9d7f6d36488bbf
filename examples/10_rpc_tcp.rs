//! RPC between two processes over TCP.
//!
//! Run `cargo run --example 10_rpc_tcp`: the program serves a `math`
//! service on a loopback port, then runs itself again as a client process
//! (`client <addr>`) that calls it: typed arguments, named arguments, many
//! calls in flight at once, and the typed errors of a wrong call. The
//! server stops, answering calls in flight, once the client is done.
//! Everything is bounded in time.

use std::time::Duration;

use eventforge::rpc::{HandlerError, Kwargs, RpcClient, RpcError, RpcServer};
use eventforge::transports::tcp::{TcpClientTransport, TcpServerTransport};
use eventforge::MessageQueue;
use serde::Deserialize;

const DEADLINE: Duration = Duration::from_secs(20);

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Named arguments of `greet`.
#[derive(Deserialize)]
struct Greeting {
    name: String,
    punct: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().collect();
    let run = async {
        match args.get(1).map(String::as_str) {
            Some("client") => {
                let addr = args.get(2).ok_or("usage: 10_rpc_tcp client <addr>")?;
                client(addr).await
            }
            _ => server().await,
        }
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .map_err(|_| "the example did not finish in time")?
}

async fn server() -> Result<(), AnyError> {
    let transport = TcpServerTransport::bind("127.0.0.1:0").await?;
    let addr = transport.local_addr();
    let queue = MessageQueue::new(transport);

    let server = RpcServer::new(queue.clone()).service("math");
    server.register("add", |a: i64, b: i64| async move {
        Ok::<_, HandlerError>(a + b)
    });
    server.register("divide", |a: f64, b: f64| {
        if b == 0.0 {
            Err(HandlerError::new("ZeroDivisionError", "division by zero"))
        } else {
            Ok(a / b)
        }
    });
    server.register("greet", |Kwargs(g): Kwargs<Greeting>| async move {
        Ok::<_, HandlerError>(format!("hello, {}{}", g.name, g.punct.unwrap_or_default()))
    });
    server.serve().await?;
    println!("[server] serving math on {addr}");

    let status = tokio::process::Command::new(std::env::current_exe()?)
        .arg("client")
        .arg(addr.to_string())
        .kill_on_drop(true)
        .status()
        .await?;
    server.stop().await;
    println!(
        "[server] client exited with {status}; served {:?}",
        server.stats()
    );
    queue.close().await?;
    if !status.success() {
        return Err("the client failed".into());
    }
    Ok(())
}

async fn client(addr: &str) -> Result<(), AnyError> {
    let queue = MessageQueue::new(TcpClientTransport::connect(addr).await?);
    let math = RpcClient::new(queue.clone())
        .service("math")
        .timeout(Duration::from_secs(5));

    let sum: i64 = math.call("add", (40, 2)).await?;
    println!("[client] add(40, 2) = {sum}");

    let greeting: String = math
        .method("greet")
        .arg("bob")
        .kwarg("punct", "!")
        .call()
        .await?;
    println!("[client] greet(\"bob\", punct=\"!\") = {greeting}");

    // Many calls in flight over the one connection, each matched to its reply.
    let calls = (0..100i64).map(|n| {
        let math = math.clone();
        async move { math.call::<i64>("add", (n, n)).await }
    });
    let sums: Vec<i64> = futures::future::try_join_all(calls).await?;
    assert_eq!(sums, (0..100).map(|n| n * 2).collect::<Vec<_>>());
    println!("[client] 100 concurrent calls, each answered with its own sum");

    match math.call::<f64>("divide", (1.0, 0.0)).await {
        Err(RpcError::Remote {
            error_type,
            message,
            ..
        }) => {
            println!("[client] divide(1, 0) failed remotely: {error_type}: {message}")
        }
        other => return Err(format!("expected a remote error, got {other:?}").into()),
    }
    match math.call::<i64>("add", ("one", 2)).await {
        Err(error) => println!("[client] add(\"one\", 2) rejected: {error}"),
        Ok(value) => return Err(format!("expected a TypeError, got {value}").into()),
    }
    match math.call::<i64>("subtract", (3, 1)).await {
        Err(error @ RpcError::MethodNotFound { .. }) => println!("[client] {error}"),
        other => return Err(format!("expected MethodNotFound, got {other:?}").into()),
    }
    queue.close().await?;
    Ok(())
}
