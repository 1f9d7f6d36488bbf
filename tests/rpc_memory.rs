//! The RPC suite on the memory transport, plus what only memory can show
//! (its subscription count proves that nothing is left behind).

mod rpc_suite;

use std::sync::Arc;
use std::time::Duration;

use eventforge::rpc::ReplyRouting;
use eventforge::rpc::{RpcClient, RpcError};
use eventforge::{MemoryTransport, MessageQueue, Pattern, Transport};
use rpc_suite::{unique_service, Pair, Target};

fn memory() -> std::pin::Pin<Box<dyn std::future::Future<Output = Pair> + Send>> {
    Box::pin(async {
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
        (Arc::clone(&transport), transport)
    })
}

macro_rules! on_memory {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                rpc_suite::$name(Target { make: memory, routing: ReplyRouting::Shared }).await;
            }
        )*
        /// The same suite with a reply subscription per call.
        mod per_call_replies {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    rpc_suite::$name(Target { make: memory, routing: ReplyRouting::PerCall }).await;
                }
            )*
        }
    };
}

on_memory!(
    thousand_concurrent_calls_are_all_answered,
    call_to_absent_server_fails_within_its_timeout,
    wrong_argument_type_is_a_type_error_naming_method_and_argument,
    wrong_argument_count_is_a_type_error,
    unknown_method_is_method_not_found_with_python_text,
    payload_that_is_not_a_request_is_a_validation_error,
    panicking_handler_is_answered_and_server_keeps_serving,
    handler_errors_carry_their_error_type,
    kwargs_bind_by_name_after_positional_args,
    request_without_reply_to_runs_and_sends_no_response,
    requests_run_concurrently_up_to_the_limit,
    worker_gone_mid_stream_loses_no_result_under_round_robin_with_retry,
    stop_answers_calls_in_flight_then_stops_listening,
);

async fn late_reply_is_dropped_and_leaves_nothing_behind(routing: ReplyRouting) {
    let transport = MemoryTransport::new();
    let queue = MessageQueue::new(transport.clone());
    let service = unique_service("late");
    // A responder that holds each request until told to answer it.
    let mut requests = queue
        .subscribe(Pattern::parse(&format!("{service}.request")).unwrap())
        .await
        .unwrap();
    let client = RpcClient::new(queue.clone())
        .service(&service)
        .reply_routing(routing)
        .timeout(Duration::from_millis(50));
    // A first answered call sets up whatever the routing keeps for good.
    let answering = {
        let queue = queue.clone();
        async move {
            let request = requests.recv().await.unwrap();
            let reply = serde_json::json!({"request_id": request.payload["id"], "result": 3});
            queue.reply(&request, reply).await.unwrap();
            requests
        }
    };
    let (sum, mut requests) = tokio::join!(client.call::<i64>("add", (1, 2)), answering);
    assert_eq!(sum.unwrap(), 3);
    let subscriptions = transport.stats().subscriptions;

    let error = client.call::<i64>("add", (1, 2)).await.unwrap_err();
    assert!(matches!(error, RpcError::Timeout { .. }), "{error:?}");
    assert_eq!(client.calls_waiting(), 0);
    assert_eq!(transport.stats().subscriptions, subscriptions);
    let request = requests.recv().await.unwrap();
    queue
        .reply(
            &request,
            serde_json::json!({"request_id": "late", "result": 3}),
        )
        .await
        .unwrap();
    // Still answered correctly afterwards, and still nothing kept.
    let next = tokio::join!(client.call::<i64>("add", (2, 2)), async {
        let request = requests.recv().await.unwrap();
        let reply = serde_json::json!({"request_id": request.payload["id"], "result": 4});
        queue.reply(&request, reply).await.unwrap();
    });
    assert_eq!(next.0.unwrap(), 4);
    assert_eq!(client.calls_waiting(), 0);
    assert_eq!(transport.stats().subscriptions, subscriptions);
    queue.close().await.unwrap();
}

#[tokio::test]
async fn late_reply_after_a_timeout_is_dropped_with_shared_replies() {
    late_reply_is_dropped_and_leaves_nothing_behind(ReplyRouting::Shared).await;
}

#[tokio::test]
async fn late_reply_after_a_timeout_is_dropped_with_per_call_replies() {
    late_reply_is_dropped_and_leaves_nothing_behind(ReplyRouting::PerCall).await;
}

#[tokio::test]
async fn clients_on_one_transport_share_one_reply_subscription() {
    let transport = MemoryTransport::new();
    let queue = MessageQueue::new(transport.clone());
    let service = unique_service("shared");
    let server = eventforge::rpc::RpcServer::new(queue.clone()).service(&service);
    server.register("one", || Ok::<_, eventforge::rpc::HandlerError>(1));
    server.serve().await.unwrap();
    let with_server = transport.stats().subscriptions;
    for _ in 0..5 {
        let client = RpcClient::new(queue.clone()).service(&service);
        assert_eq!(client.call::<i64>("one", ()).await.unwrap(), 1);
    }
    let a = RpcClient::new(queue.clone()).service(&service);
    let b = RpcClient::new(queue.clone()).service(&service);
    a.call::<i64>("one", ()).await.unwrap();
    b.call::<i64>("one", ()).await.unwrap();
    assert_eq!(transport.stats().subscriptions, with_server + 1);
    drop((a, b));
    server.stop().await;
    queue.close().await.unwrap();
}

#[test]
fn client_outlives_the_runtime_that_made_its_reply_subscription() {
    let queue = MessageQueue::memory();
    let service = unique_service("runtimes");
    let client = RpcClient::new(queue.clone())
        .service(&service)
        .timeout(Duration::from_secs(5));
    for round in 0..2i64 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = eventforge::rpc::RpcServer::new(queue.clone()).service(&service);
            server.register("round", move || {
                Ok::<_, eventforge::rpc::HandlerError>(round)
            });
            server.serve().await.unwrap();
            assert_eq!(client.call::<i64>("round", ()).await.unwrap(), round);
            server.stop().await;
        });
    }
}

#[tokio::test]
async fn dropping_a_serving_server_stops_it() {
    let transport = MemoryTransport::new();
    let queue = MessageQueue::new(transport.clone());
    let before = transport.stats().subscriptions;
    let server = eventforge::rpc::RpcServer::new(queue.clone()).service(unique_service("dropped"));
    server.serve().await.unwrap();
    assert_eq!(transport.stats().subscriptions, before + 1);
    drop(server);
    // The serving task is cancelled asynchronously; poll with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while transport.stats().subscriptions != before {
        assert!(std::time::Instant::now() < deadline, "still subscribed");
        tokio::task::yield_now().await;
    }
}
