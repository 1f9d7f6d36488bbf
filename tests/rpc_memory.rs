//! The RPC suite on the memory transport, plus what only memory can show
//! (its subscription count proves that nothing is left behind).

mod rpc_suite;

use std::sync::Arc;
use std::time::Duration;

use eventforge::{MemoryTransport, MessageQueue, Pattern, RpcClient, RpcError, Transport};
use rpc_suite::{unique_service, Pair};

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
                rpc_suite::$name(memory).await;
            }
        )*
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
    server_stopped_mid_stream_loses_no_result_under_round_robin_with_retry,
);

#[tokio::test]
async fn late_reply_after_a_timeout_is_dropped_and_nothing_is_left_behind() {
    let transport = MemoryTransport::new();
    let queue = MessageQueue::new(transport.clone());
    let service = unique_service("late");
    // A responder that holds each request until told to answer it.
    let mut requests = queue
        .subscribe(Pattern::parse(&format!("{service}.request")).unwrap())
        .await
        .unwrap();
    let before = transport.stats().subscriptions;
    let client = RpcClient::new(queue.clone())
        .service(&service)
        .timeout(Duration::from_millis(50));
    let error = client.call::<i64>("add", (1, 2)).await.unwrap_err();
    assert!(matches!(error, RpcError::Timeout { .. }), "{error:?}");
    // The call's reply subscription is gone once the call has failed.
    assert_eq!(transport.stats().subscriptions, before);
    let request = requests.recv().await.unwrap();
    let routed = transport.stats().routed;
    queue
        .reply(
            &request,
            serde_json::json!({"request_id": "x", "result": 3}),
        )
        .await
        .unwrap();
    assert_eq!(transport.stats().routed, routed + 1);
    assert_eq!(transport.stats().subscriptions, before);
    queue.close().await.unwrap();
}
