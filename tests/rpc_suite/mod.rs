//! The RPC suite, written once against a transport factory so that it runs
//! on every transport: memory today, TCP, Redis and NATS as they land.
//!
//! A factory makes one connected pair of transports: the side a server
//! listens on and the side a client calls from (the same transport twice on
//! memory and on brokers; the two ends of a link on TCP).

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventforge::rpc::{
    with_retry, RetryPolicy, RoundRobinRpcClient, RpcClient, RpcError, RpcServer,
};
use eventforge::rpc::{HandlerError, IncomingCall, Kwargs, ReplyRouting};
use eventforge::{new_id, Message, MessageQueue, Pattern, Transport};
use futures::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A connected pair: (server side, client side).
pub type Pair = (Arc<dyn Transport>, Arc<dyn Transport>);

/// Makes a fresh connected pair.
pub type Factory = fn() -> Pin<Box<dyn Future<Output = Pair> + Send>>;

/// A service name no other test uses.
pub fn unique_service(label: &str) -> String {
    format!("{label}_{}", new_id().replace('-', ""))
}

/// A server on `transport` serving `service` with the methods the suite calls.
pub async fn math_server(transport: Arc<dyn Transport>, service: &str) -> RpcServer {
    let server = RpcServer::new(MessageQueue::from_shared(transport)).service(service);
    server.register("add", |a: i64, b: i64| async move {
        Ok::<_, HandlerError>(a + b)
    });
    server.register("divide", |a: f64, b: f64| {
        if b == 0.0 {
            return Err(HandlerError::new("ZeroDivisionError", "division by zero"));
        }
        Ok(a / b)
    });
    server.register("greet", |Kwargs(g): Kwargs<Greet>| {
        Ok::<_, HandlerError>(format!("hello {}{}", g.name, g.punct.unwrap_or_default()))
    });
    server.register("explode", || -> Result<(), HandlerError> { panic!("boom") });
    server.register("parse", |text: String| async move {
        text.parse::<i64>().map_err(HandlerError::from)
    });
    server.serve().await.expect("server serves");
    server
}

/// Named arguments of `greet`.
#[derive(Debug, Deserialize)]
pub struct Greet {
    name: String,
    punct: Option<String>,
}

/// A transport to run the suite on, and how its clients receive replies.
#[derive(Clone, Copy)]
pub struct Target {
    /// Makes connected pairs.
    pub make: Factory,
    /// The clients' reply routing.
    pub routing: ReplyRouting,
}

impl Target {
    fn client_on(&self, transport: Arc<dyn Transport>) -> RpcClient {
        RpcClient::from_transport(transport).reply_routing(self.routing)
    }

    fn client(&self, transport: Arc<dyn Transport>, service: &str) -> RpcClient {
        self.client_on(transport)
            .service(service)
            .timeout(Duration::from_secs(10))
    }
}

pub async fn thousand_concurrent_calls_are_all_answered(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("many");
    let server = math_server(server_side, &service).await;
    let client = t.client(client_side, &service);
    let calls = (0..1000i64).map(|i| {
        let client = client.clone();
        async move { (i, client.call::<i64>("add", (i, 1000)).await) }
    });
    for (i, result) in join_all(calls).await {
        assert_eq!(result.expect("answered"), i + 1000, "call {i}");
    }
    server.stop().await;
    assert_eq!(server.stats().succeeded, 1000);
}

pub async fn call_to_absent_server_fails_within_its_timeout(t: Target) {
    let (_server_side, client_side) = (t.make)().await;
    let reports = client_side.capabilities().reports_no_responders;
    let timeout = Duration::from_millis(300);
    let client = t
        .client_on(client_side)
        .service(unique_service("absent"))
        .timeout(timeout);
    let started = Instant::now();
    let error = client.call::<i64>("add", (1, 2)).await.unwrap_err();
    assert!(
        started.elapsed() < timeout + Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    if reports {
        assert!(matches!(error, RpcError::NoResponders { .. }), "{error:?}");
    } else {
        // Transports that cannot always tell (a TCP server knows only once
        // every client has declared its subscriptions) may still know.
        assert!(
            matches!(
                error,
                RpcError::Timeout { .. } | RpcError::NoResponders { .. }
            ),
            "{error:?}"
        );
    }
}

pub async fn wrong_argument_type_is_a_type_error_naming_method_and_argument(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("types");
    let server = math_server(server_side, &service).await;
    let error = t
        .client(client_side, &service)
        .call::<i64>("add", (1, "two"))
        .await
        .unwrap_err();
    match error {
        RpcError::Remote {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "TypeError");
            assert!(message.starts_with("add()"), "{message}");
            assert!(message.contains("argument 2"), "{message}");
        }
        other => panic!("expected a TypeError, got {other:?}"),
    }
    server.stop().await;
}

pub async fn wrong_argument_count_is_a_type_error(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("count");
    let server = math_server(server_side, &service).await;
    let error = t
        .client(client_side, &service)
        .call::<i64>("add", (1, 2, 3))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), Some("TypeError"), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("add() takes 2 positional arguments but 3 were given"),
        "{error}"
    );
    server.stop().await;
}

pub async fn unknown_method_is_method_not_found_with_python_text(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("missing");
    let server = math_server(server_side, &service).await;
    let error = t
        .client(client_side, &service)
        .call::<Value>("nope", ())
        .await
        .unwrap_err();
    match error {
        RpcError::MethodNotFound { method, message } => {
            assert_eq!(method, "nope");
            assert_eq!(message, "Method not found: nope");
        }
        other => panic!("expected MethodNotFound, got {other:?}"),
    }
    server.stop().await;
}

pub async fn payload_that_is_not_a_request_is_a_validation_error(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("invalid");
    let server = math_server(server_side, &service).await;
    let request = Message::new(format!("{service}.request"), "not a request").unwrap();
    let reply = client_side
        .request(request, Duration::from_secs(10))
        .await
        .expect("a response");
    assert_eq!(reply.payload["error_type"], "ValidationError");
    assert!(reply.payload["result"].is_null());
    server.stop().await;
}

pub async fn panicking_handler_is_answered_and_server_keeps_serving(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("panic");
    let server = math_server(server_side, &service).await;
    let client = t.client(client_side, &service);
    let error = client.call::<Value>("explode", ()).await.unwrap_err();
    assert_eq!(error.error_type(), Some("Panic"), "{error:?}");
    assert!(error.to_string().contains("boom"), "{error}");
    assert_eq!(client.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    assert_eq!(server.stats().panicked, 1);
    server.stop().await;
}

pub async fn handler_errors_carry_their_error_type(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("errors");
    let server = math_server(server_side, &service).await;
    let client = t.client(client_side, &service);
    match client.call::<f64>("divide", (1, 0)).await.unwrap_err() {
        RpcError::Remote {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "ZeroDivisionError");
            assert_eq!(message, "division by zero");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    let parse = client.call::<i64>("parse", ("x",)).await.unwrap_err();
    assert_eq!(parse.error_type(), Some("ParseIntError"));
    server.stop().await;
}

pub async fn kwargs_bind_by_name_after_positional_args(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("kwargs");
    let server = math_server(server_side, &service).await;
    let client = t.client(client_side, &service);
    let text: String = client
        .method("greet")
        .arg("bob")
        .kwarg("punct", "!")
        .call()
        .await
        .unwrap();
    assert_eq!(text, "hello bob!");
    let named_only: String = client
        .method("greet")
        .kwarg("name", "ann")
        .call()
        .await
        .unwrap();
    assert_eq!(named_only, "hello ann");
    server.stop().await;
}

pub async fn request_without_reply_to_runs_and_sends_no_response(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("oneway");
    let (ran_tx, mut ran_rx) = mpsc::channel::<i64>(1);
    let server = RpcServer::new(MessageQueue::from_shared(server_side)).service(&service);
    server.register("record", move |n: i64| {
        let ran = ran_tx.clone();
        async move {
            ran.send(n)
                .await
                .map_err(|e| HandlerError::new("SendError", e.to_string()))?;
            Ok::<_, HandlerError>(n)
        }
    });
    server.serve().await.unwrap();
    let mut replies = client_side
        .subscribe(Pattern::parse("_rpc_reply.**").unwrap())
        .await
        .unwrap();
    let payload =
        json!({"id": new_id(), "method": "record", "args": [7], "kwargs": {}, "timeout": null});
    client_side
        .send(Message::new(format!("{service}.request"), payload).unwrap())
        .await
        .unwrap();
    assert_eq!(ran_rx.recv().await, Some(7));
    // Stopping waits until the call is fully answered (or not answered).
    server.stop().await;
    assert_eq!(server.stats().succeeded, 1);
    assert!(replies.try_recv().is_none(), "a response was sent");
}

pub async fn requests_run_concurrently_up_to_the_limit(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("limit");
    let (started_tx, mut started_rx) = mpsc::channel::<()>(16);
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let server = RpcServer::new(MessageQueue::from_shared(server_side))
        .service(&service)
        .max_concurrency(2);
    {
        let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
        server.register_raw("hold", move |_call: IncomingCall| {
            let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
            let started = started_tx.clone();
            let mut gate = gate_rx.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let _ = started.send(()).await;
                let _ = gate.wait_for(|open| *open).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        });
    }
    server.serve().await.unwrap();
    let client = t.client(client_side, &service);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call::<Value>("hold", ()).await })
        })
        .collect();
    started_rx.recv().await.unwrap();
    started_rx.recv().await.unwrap();
    // A third start would break the limit; give it a fair chance to show.
    let third = tokio::time::timeout(Duration::from_millis(200), started_rx.recv()).await;
    assert!(
        third.is_err(),
        "a third request started past the limit of 2"
    );
    gate_tx.send(true).unwrap();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    server.stop().await;
}

pub async fn worker_gone_mid_stream_loses_no_result_under_round_robin_with_retry(t: Target) {
    const WORKERS: usize = 3;
    const CALLERS: i64 = 8;
    const CALLS_EACH: i64 = 60;
    let mut servers = Vec::new();
    let mut links = Vec::new();
    let mut clients = Vec::new();
    for n in 0..WORKERS {
        let (server_side, client_side) = (t.make)().await;
        links.push(Arc::clone(&server_side));
        let service = unique_service(&format!("pool{n}"));
        servers.push(math_server(server_side, &service).await);
        clients.push(
            t.client_on(client_side)
                .service(&service)
                .timeout(Duration::from_secs(2)),
        );
    }
    let pool = Arc::new(with_retry(
        RoundRobinRpcClient::with_cool_down(clients, Duration::from_secs(30)),
        RetryPolicy::new()
            .max_attempts(WORKERS as u32 + 2)
            .initial_backoff(Duration::from_millis(5)),
    ));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let pool = Arc::clone(&pool);
            let done = done_tx.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for i in 0..CALLS_EACH {
                    let (a, b) = (caller * 1000, i);
                    let sum = pool.call::<i64>("add", (a, b)).await;
                    results.push((a + b, sum));
                    let _ = done.send(());
                }
                results
            })
        })
        .collect();
    // One worker goes away once a quarter of the calls are through, as a
    // process that exits: it stops serving, then its link closes.
    for _ in 0..(CALLERS * CALLS_EACH / 4) {
        done_rx.recv().await.unwrap();
    }
    servers[1].stop().await;
    let served_before_stop = servers[1].stats().succeeded;
    links[1].close().await.expect("close the worker's link");
    let mut answered = 0;
    for caller in callers {
        for (expected, result) in caller.await.unwrap() {
            assert_eq!(result.expect("every call succeeds"), expected);
            answered += 1;
        }
    }
    assert_eq!(answered, CALLERS * CALLS_EACH);
    assert_eq!(servers[1].stats().succeeded, served_before_stop);
    assert!(servers[0].stats().succeeded > 0 && servers[2].stats().succeeded > 0);
    for server in &servers {
        server.stop().await;
    }
}

pub async fn stop_answers_calls_in_flight_then_stops_listening(t: Target) {
    let (server_side, client_side) = (t.make)().await;
    let service = unique_service("drain");
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let server = RpcServer::new(MessageQueue::from_shared(server_side)).service(&service);
    server.register("slow", move |n: i64| {
        let started = started_tx.clone();
        let mut gate = gate_rx.clone();
        async move {
            let _ = started.send(()).await;
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, HandlerError>(n * 2)
        }
    });
    server.serve().await.unwrap();
    let client = t
        .client(client_side, &service)
        .timeout(Duration::from_secs(2));
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<i64>("slow", (21,)).await })
    };
    started_rx.recv().await.unwrap();
    let mut stopping = tokio::spawn(async move {
        server.stop().await;
        server
    });
    // stop() cannot finish while the call is still running.
    let early = tokio::time::timeout(Duration::from_millis(100), &mut stopping).await;
    assert!(
        early.is_err(),
        "stop returned before the call in flight was answered"
    );
    gate_tx.send(true).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), 42);
    let server = stopping.await.unwrap();
    assert!(!server.is_serving().await);
    let after = client.call::<i64>("slow", (1,)).await.unwrap_err();
    assert!(
        matches!(
            after,
            RpcError::NoResponders { .. } | RpcError::Timeout { .. }
        ),
        "{after:?}"
    );
}

/// Every test of the suite, by name, for a transport's test file to run.
pub async fn run_all(t: Target) {
    thousand_concurrent_calls_are_all_answered(t).await;
    call_to_absent_server_fails_within_its_timeout(t).await;
    wrong_argument_type_is_a_type_error_naming_method_and_argument(t).await;
    wrong_argument_count_is_a_type_error(t).await;
    unknown_method_is_method_not_found_with_python_text(t).await;
    payload_that_is_not_a_request_is_a_validation_error(t).await;
    panicking_handler_is_answered_and_server_keeps_serving(t).await;
    handler_errors_carry_their_error_type(t).await;
    kwargs_bind_by_name_after_positional_args(t).await;
    request_without_reply_to_runs_and_sends_no_response(t).await;
    requests_run_concurrently_up_to_the_limit(t).await;
    worker_gone_mid_stream_loses_no_result_under_round_robin_with_retry(t).await;
    stop_answers_calls_in_flight_then_stops_listening(t).await;
}
