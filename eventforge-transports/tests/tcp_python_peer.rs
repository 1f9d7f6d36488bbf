//! Exchanges with a peer that speaks plain v1, byte for byte as the Python
//! eventforge does, played over raw sockets.
#![cfg(feature = "tcp")]

use std::time::Duration;

use eventforge_core::{Message, MessageQueue, Pattern, Transport};
use eventforge_transports::tcp::{TcpClientTransport, TcpServerTransport};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);
const VECTOR_FRAME: &[u8] = include_bytes!("../../tests/data/frame_message_basic.bin");
const VECTORS: &str = include_str!("../../tests/data/vectors.json");

fn vector(name: &str) -> Value {
    let all: Value = serde_json::from_str(VECTORS).expect("vectors.json is JSON");
    all[name].clone()
}

/// An RPC request as the Python peer writes it: `json.dumps` with its
/// default `", "` and `": "` separators, fields in the Python order.
const PYTHON_RPC_REQUEST: &str = r#"{"id": "6d1ea4d4-9edf-4ec8-b23d-cfd260c0ad95", "topic": "calculator.request", "payload": {"id": "3c37c411-e906-42a9-9498-0db502224ca8", "method": "add", "args": [10, 20], "kwargs": {}, "timeout": 30.0}, "headers": {}, "timestamp": "2026-11-22T10:21:59.731028Z", "reply_to": "_rpc_reply.3c37c411-e906-42a9-9498-0db502224ca8", "correlation_id": "3c37c411-e906-42a9-9498-0db502224ca8"}"#;

fn frame(json: &str) -> Vec<u8> {
    let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes
}

async fn read_frame(stream: &mut TcpStream) -> Value {
    let read = async {
        let length = stream.read_u32().await.expect("a length prefix") as usize;
        let mut json = vec![0; length];
        stream.read_exact(&mut json).await.expect("the whole frame");
        serde_json::from_slice(&json).expect("JSON")
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame in time")
}

/// Reads frames until one on `topic`, returning it and the topics skipped.
async fn read_until(stream: &mut TcpStream, topic: &str) -> (Value, Vec<String>) {
    let mut skipped = Vec::new();
    loop {
        let frame = read_frame(stream).await;
        if frame["topic"] == topic {
            return (frame, skipped);
        }
        skipped.push(frame["topic"].as_str().unwrap_or_default().to_owned());
    }
}

#[test]
fn the_handwritten_request_is_the_recorded_vector() {
    let parsed: Value = serde_json::from_str(PYTHON_RPC_REQUEST).unwrap();
    assert_eq!(parsed, vector("rpc_request_message"));
}

#[tokio::test]
async fn the_python_frame_reaches_a_server_subscriber_intact() {
    let server = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let mut inbox = server
        .subscribe(Pattern::parse("events.*").unwrap())
        .await
        .unwrap();
    let mut python = TcpStream::connect(server.local_addr()).await.unwrap();
    python.write_all(VECTOR_FRAME).await.unwrap();
    let got = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    let expected: Message = serde_json::from_value(vector("message_basic")).unwrap();
    assert_eq!(*got, expected);
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_python_rpc_request_gets_its_reply_on_the_same_socket() {
    let transport = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let addr = transport.local_addr();
    let server = MessageQueue::new(transport);
    let responder = server.clone();
    server
        .on("calculator.request", move |msg| {
            let queue = responder.clone();
            async move {
                let args: Vec<i64> =
                    serde_json::from_value(msg.payload["args"].clone()).map_err(|source| {
                        eventforge_core::Error::Decode {
                            what: "args".into(),
                            source,
                        }
                    })?;
                let request_id = msg.payload["id"].clone();
                queue
                    .reply(
                        &msg,
                        json!({
                            "id": eventforge_core::new_id(),
                            "request_id": request_id,
                            "result": args.iter().sum::<i64>(),
                            "error": null,
                            "error_type": null,
                        }),
                    )
                    .await
            }
        })
        .await
        .unwrap();
    let mut python = TcpStream::connect(addr).await.unwrap();
    let request = vector("rpc_request_message");
    python.write_all(&frame(PYTHON_RPC_REQUEST)).await.unwrap();

    let reply_to = request["reply_to"].as_str().unwrap();
    let (reply, skipped) = read_until(&mut python, reply_to).await;
    assert_eq!(
        skipped,
        ["_eventforge.hello"],
        "only the hello came before the reply"
    );
    assert_eq!(reply["correlation_id"], request["correlation_id"]);
    assert_eq!(reply["payload"]["result"], 30);
    assert_eq!(reply["payload"]["request_id"], request["payload"]["id"]);
    assert_eq!(reply["payload"]["error"], Value::Null);
    let _: Message = serde_json::from_value(reply).expect("the reply is a Message");
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_reply_goes_only_to_the_python_client_that_asked() {
    let transport = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let addr = transport.local_addr();
    let server = MessageQueue::new(transport);
    let responder = server.clone();
    server
        .on("svc.request", move |msg| {
            let queue = responder.clone();
            async move { queue.reply(&msg, "answer").await }
        })
        .await
        .unwrap();
    let mut asker = TcpStream::connect(addr).await.unwrap();
    let mut bystander = TcpStream::connect(addr).await.unwrap();
    // Both are connected once each has its hello.
    read_until(&mut asker, "_eventforge.hello").await;
    read_until(&mut bystander, "_eventforge.hello").await;

    let request = r#"{"id": "11111111-2222-4333-8444-555555555555", "topic": "svc.request", "payload": null, "headers": {}, "timestamp": "2026-11-22T10:21:59.731028Z", "reply_to": "_reply.only-for-asker", "correlation_id": "c-42"}"#;
    asker.write_all(&frame(request)).await.unwrap();
    let (reply, _) = read_until(&mut asker, "_reply.only-for-asker").await;
    assert_eq!(reply["payload"], "answer");

    // Everything the server publishes after the reply reaches the bystander
    // behind it: the bystander sees the marker, and no reply before it.
    server.publish("marker.after", 1).await.unwrap();
    let (_, skipped) = read_until(&mut bystander, "marker.after").await;
    assert!(skipped.is_empty(), "the bystander got {skipped:?}");
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_python_client_that_declares_nothing_receives_everything() {
    let server = TcpServerTransport::bind("127.0.0.1:0").await.unwrap();
    let mut python = TcpStream::connect(server.local_addr()).await.unwrap();
    read_until(&mut python, "_eventforge.hello").await;
    for topic in ["any.one", "other.two.three"] {
        server.send(Message::new(topic, 1).unwrap()).await.unwrap();
        let (got, skipped) = read_until(&mut python, topic).await;
        assert!(skipped.is_empty());
        assert_eq!(got["payload"], 1);
    }
    server.close().await.unwrap();
}

#[tokio::test]
async fn a_rust_client_works_with_a_python_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let python_server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Answer the first message with the vector frame.
        let (first, skipped) = read_until(&mut socket, "jobs.submit").await;
        socket.write_all(VECTOR_FRAME).await.unwrap();
        (first, skipped)
    });
    let client = TcpClientTransport::builder()
        .hello_timeout(Duration::from_millis(50))
        .connect(addr)
        .await
        .unwrap();
    let queue = MessageQueue::new(client.clone());
    let mut events = queue.subscribe("events.user").await.unwrap();
    queue.publish("jobs.submit", json!({"n": 1})).await.unwrap();
    let got = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, "f9d108c5-a4ff-41b7-bb00-ac203a8a8a2e");
    let (first, skipped) = python_server.await.unwrap();
    assert_eq!(first["payload"]["n"], 1);
    assert!(
        skipped.is_empty(),
        "a v1 server got control messages: {skipped:?}"
    );
    assert!(!client.stats().server_filters);
    queue.close().await.unwrap();
}
