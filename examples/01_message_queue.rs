//! Local pub-sub and request-reply with a `MessageQueue` on the memory
//! transport: handlers, wildcards, a stream subscription and a request.
//!
//! Run: `cargo run --example 01_message_queue`

use std::time::Duration;

use eventforge::{Error, MessageQueue};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let queue = MessageQueue::memory();

    // A sync handler for every order event, whatever the region.
    let (done_tx, mut done) = mpsc::unbounded_channel();
    queue
        .on("orders.*.created", move |msg| {
            let order: Order = msg.payload_as()?;
            println!(
                "[audit]   {} -> order {} ({} x {})",
                msg.topic, order.id, order.quantity, order.item
            );
            done_tx.send(order.id).ok();
            Ok::<(), Error>(())
        })
        .await?;

    // An async responder: prices an order on request.
    let responder = queue.clone();
    queue
        .on("pricing.quote", move |msg| {
            let queue = responder.clone();
            async move {
                let order: Order = msg.payload_as()?;
                let price = f64::from(order.quantity) * 2.5;
                queue
                    .reply(
                        &msg,
                        serde_json::json!({ "order": order.id, "price": price }),
                    )
                    .await
            }
        })
        .await?;

    // A stream subscription over a whole subtree.
    let mut everything = queue.subscribe("orders.**").await?;

    for (id, region, item) in [
        (1, "eu", "keyboard"),
        (2, "us", "mouse"),
        (3, "eu", "screen"),
    ] {
        let order = Order {
            id,
            item: item.into(),
            quantity: id * 2,
        };
        queue
            .publish(&format!("orders.{region}.created"), &order)
            .await?;
    }

    for _ in 0..3 {
        let id = done.recv().await.expect("handler running");
        let msg = everything.next().await.expect("subscription open");
        println!("[stream]  {} (handled order {id})", msg.topic);
    }

    let order = Order {
        id: 4,
        item: "cable".into(),
        quantity: 10,
    };
    let quote = queue
        .request("pricing.quote", &order, Duration::from_secs(1))
        .await?;
    println!("[request] quote for order 4: {}", quote.payload);

    match queue
        .request("nobody.listens", 1, Duration::from_secs(1))
        .await
    {
        Err(err @ Error::NoResponders { .. }) => println!("[request] as expected: {err}"),
        other => println!("[request] unexpected: {other:?}"),
    }

    println!("handler stats: {:?}", queue.stats());
    queue.close().await
}
