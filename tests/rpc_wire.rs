//! What the RPC client and server put on the wire, checked against the
//! vectors written by the Python eventforge (tests/data/vectors.json).

use std::time::Duration;

use eventforge::rpc::HandlerError;
use eventforge::rpc::{RpcClient, RpcError, RpcRequest, RpcResponse, RpcServer};
use eventforge::tasks::{TaskResult, TaskStatus};
use eventforge::{Message, MessageQueue, Pattern};
use serde_json::{json, Value};

fn vectors() -> Value {
    let text = include_str!("data/vectors.json");
    serde_json::from_str(text).expect("vectors.json is JSON")
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn is_uuid_v4(text: &str) -> bool {
    uuid_like(text) && text.as_bytes()[14] == b'4'
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }
        })
}

#[tokio::test]
async fn client_request_message_matches_the_python_vector() {
    let expected = &vectors()["rpc_request_message"];
    let queue = MessageQueue::memory();
    let mut requests = queue
        .subscribe(Pattern::parse("calculator.request").unwrap())
        .await
        .unwrap();
    let client = RpcClient::new(queue.clone())
        .service("calculator")
        .timeout(Duration::from_secs(30));
    let call = tokio::spawn(async move { client.call::<i64>("add", (10, 20)).await });
    let sent = requests.recv().await.unwrap();
    let wire: Value = serde_json::from_slice(&sent.to_json().unwrap()).unwrap();

    assert_eq!(keys(&wire), keys(expected));
    assert_eq!(keys(&wire["payload"]), keys(&expected["payload"]));
    assert_eq!(wire["topic"], expected["topic"]);
    assert_eq!(wire["headers"], expected["headers"]);
    for field in ["method", "args", "kwargs", "timeout"] {
        assert_eq!(
            wire["payload"][field], expected["payload"][field],
            "{field}"
        );
    }
    let request_id = wire["payload"]["id"].as_str().unwrap();
    assert!(is_uuid_v4(request_id), "{request_id}");
    assert!(is_uuid_v4(wire["id"].as_str().unwrap()));
    assert_ne!(wire["id"], wire["payload"]["id"]);
    assert_eq!(wire["reply_to"], format!("_rpc_reply.{request_id}"));
    assert_eq!(wire["correlation_id"], request_id);
    assert!(wire["timestamp"].as_str().unwrap().ends_with('Z'));

    // Answer with the Python server's success payload.
    let mut ok = vectors()["rpc_response_payload_ok"].clone();
    ok["request_id"] = json!(request_id);
    queue.reply(&sent, ok).await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 30);
}

#[tokio::test]
async fn client_reads_python_error_responses_as_typed_errors() {
    let vectors = vectors();
    let queue = MessageQueue::memory();
    let mut requests = queue
        .subscribe(Pattern::parse("calculator.request").unwrap())
        .await
        .unwrap();
    let client = RpcClient::new(queue.clone()).service("calculator");
    for (vector, method) in [
        ("rpc_response_payload_not_found", "nope"),
        ("rpc_response_payload_exception", "divide"),
    ] {
        let caller = client.clone();
        let call = tokio::spawn(async move { caller.call::<Value>(method, (1, 0)).await });
        let sent = requests.recv().await.unwrap();
        let mut payload = vectors[vector].clone();
        payload["request_id"] = sent.payload["id"].clone();
        queue.reply(&sent, payload).await.unwrap();
        match (vector, call.await.unwrap().unwrap_err()) {
            ("rpc_response_payload_not_found", RpcError::MethodNotFound { message, .. }) => {
                assert_eq!(message, "Method not found: nope");
            }
            (
                "rpc_response_payload_exception",
                RpcError::Remote {
                    error_type,
                    message,
                },
            ) => {
                assert_eq!(error_type, "ZeroDivisionError");
                assert_eq!(message, "division by zero");
            }
            (vector, other) => panic!("{vector}: unexpected {other:?}"),
        }
    }
}

/// Sends the Python client's request message for `method` to a Rust server
/// and returns the response payload it writes.
async fn server_answer(method: &str, args: Value) -> (Value, String) {
    let queue = MessageQueue::memory();
    let server = RpcServer::new(queue.clone()).service("calculator");
    server.register("add", |a: i64, b: i64| Ok::<_, HandlerError>(a + b));
    server.register("divide", |a: f64, b: f64| {
        if b == 0.0 {
            Err(HandlerError::new("ZeroDivisionError", "division by zero"))
        } else {
            Ok(a / b)
        }
    });
    server.serve().await.unwrap();
    let mut request = vectors()["rpc_request_message"].clone();
    request["payload"]["method"] = json!(method);
    request["payload"]["args"] = args;
    let message = Message::from_json(&serde_json::to_vec(&request).unwrap()).unwrap();
    let mut replies = queue
        .subscribe(Pattern::parse(message.reply_to.as_deref().unwrap()).unwrap())
        .await
        .unwrap();
    queue.send(message.clone()).await.unwrap();
    let reply = replies.recv().await.unwrap();
    assert_eq!(reply.correlation_id, message.correlation_id);
    let wire: Value = serde_json::from_slice(&reply.to_json().unwrap()).unwrap();
    server.stop().await;
    (
        wire["payload"].clone(),
        request["payload"]["id"].as_str().unwrap().to_owned(),
    )
}

fn assert_same_response(got: &Value, expected: &Value, request_id: &str) {
    assert_eq!(keys(got), keys(expected));
    assert!(is_uuid_v4(got["id"].as_str().unwrap()));
    assert_eq!(got["request_id"], request_id);
    assert_eq!(expected["request_id"], request_id);
    for field in ["result", "error", "error_type"] {
        assert_eq!(got[field], expected[field], "{field}");
    }
}

#[tokio::test]
async fn server_success_response_matches_the_python_vector() {
    let (got, request_id) = server_answer("add", json!([10, 20])).await;
    assert_same_response(&got, &vectors()["rpc_response_payload_ok"], &request_id);
}

#[tokio::test]
async fn server_method_not_found_response_matches_the_python_vector() {
    let (got, request_id) = server_answer("nope", json!([])).await;
    assert_same_response(
        &got,
        &vectors()["rpc_response_payload_not_found"],
        &request_id,
    );
}

#[tokio::test]
async fn server_exception_response_matches_the_python_vector() {
    let (got, request_id) = server_answer("divide", json!([1, 0])).await;
    assert_same_response(
        &got,
        &vectors()["rpc_response_payload_exception"],
        &request_id,
    );
}

#[test]
fn kwargs_request_payload_reads_and_writes_like_python() {
    let expected = &vectors()["rpc_request_payload_kwargs"];
    let request: RpcRequest = serde_json::from_value(expected.clone()).unwrap();
    assert_eq!(request.method, "greet");
    assert_eq!(request.args, vec![json!("bob")]);
    assert_eq!(request.kwargs["punct"], "!");
    assert_eq!(request.timeout, None);
    assert_eq!(&serde_json::to_value(&request).unwrap(), expected);
}

#[test]
fn response_payloads_round_trip_unchanged() {
    let vectors = vectors();
    for name in [
        "rpc_response_payload_ok",
        "rpc_response_payload_not_found",
        "rpc_response_payload_exception",
    ] {
        let response: RpcResponse = serde_json::from_value(vectors[name].clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            vectors[name],
            "{name}"
        );
    }
}

#[test]
fn task_result_matches_the_python_vector() {
    let expected = &vectors()["task_result_completed"];
    let result: TaskResult = serde_json::from_value(expected.clone()).unwrap();
    assert_eq!(result.status, TaskStatus::Completed);
    assert_eq!(result.execution_time, Duration::from_millis(1));
    assert_eq!(result.worker_id.as_deref(), Some("thread-x"));
    assert_eq!(&serde_json::to_value(&result).unwrap(), expected);
}
