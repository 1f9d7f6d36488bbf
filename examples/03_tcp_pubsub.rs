//! Pub-sub and request-reply between two processes over TCP.
//!
//! Run `cargo run --example 03_tcp_pubsub`: the program starts a server,
//! then runs itself again as a client process (`client <addr>`). The client
//! publishes sensor readings, asks the server a question, and waits for the
//! server to tell it to stop. Everything is bounded in time.

use std::time::Duration;

use eventforge::transports::tcp::{TcpClientTransport, TcpServerTransport};
use eventforge::MessageQueue;
use futures::StreamExt;

const READINGS: usize = 5;
const DEADLINE: Duration = Duration::from_secs(20);

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().collect();
    let run = async {
        match args.get(1).map(String::as_str) {
            Some("client") => {
                let addr = args.get(2).ok_or("usage: 03_tcp_pubsub client <addr>")?;
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
    println!("[server] listening on {addr}");

    // Answers questions from any client.
    let responder = queue.clone();
    queue
        .on("greeter.hello", move |msg| {
            let queue = responder.clone();
            async move {
                let name: String = msg.payload_as()?;
                queue.reply(&msg, format!("hello, {name}")).await
            }
        })
        .await?;
    let mut readings = queue.subscribe("sensors.*").await?;

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("client")
        .arg(addr.to_string())
        .kill_on_drop(true)
        .spawn()?;

    for _ in 0..READINGS {
        let reading = readings.next().await.ok_or("subscription ended")?;
        println!("[server] {} = {}", reading.topic, reading.payload);
    }
    queue.publish("control.stop", "done").await?;
    let status = child.wait().await?;
    println!("[server] client exited with {status}");
    queue.close().await?;
    if !status.success() {
        return Err("the client failed".into());
    }
    Ok(())
}

async fn client(addr: &str) -> Result<(), AnyError> {
    let queue = MessageQueue::new(TcpClientTransport::connect(addr).await?);
    // Subscribed before publishing, so the stop cannot be missed.
    let mut control = queue.subscribe("control.*").await?;

    let answer = queue
        .request("greeter.hello", "client", Duration::from_secs(5))
        .await?;
    println!("[client] server says: {}", answer.payload);

    for n in 0..READINGS {
        queue
            .publish("sensors.temperature", 20.0 + n as f64 / 2.0)
            .await?;
    }
    let stop = control.next().await.ok_or("subscription ended")?;
    println!("[client] told to stop: {}", stop.payload);
    queue.close().await?;
    Ok(())
}
