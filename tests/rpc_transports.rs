//! The RPC suite on the network transports: TCP (both ends serving),
//! Redis and NATS (real brokers at `REDIS_URL` / `NATS_URL`).

#![cfg(any(feature = "tcp", feature = "redis", feature = "nats"))]

mod rpc_suite;
mod support;

use eventforge::rpc::ReplyRouting;
use rpc_suite::{Pair, Target};
use std::future::Future;
use std::pin::Pin;

type PairFuture = Pin<Box<dyn Future<Output = Pair> + Send>>;

/// One test per behaviour of the RPC suite, for one factory and each of the
/// given reply routings.
macro_rules! rpc_suite_on {
    ($transport:ident, $make:expr, $routing:expr) => {
        mod $transport {
            use super::*;

            rpc_suite_on!(@tests $make, $routing;
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
        }
    };
    (@tests $make:expr, $routing:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                rpc_suite::$name(Target { make: $make, routing: $routing }).await;
            }
        )*
    };
}

/// The TCP server serves, its client calls.
#[cfg(feature = "tcp")]
fn tcp_server_serves() -> PairFuture {
    Box::pin(support::tcp_link())
}

/// The TCP client serves, its server calls.
#[cfg(feature = "tcp")]
fn tcp_client_serves() -> PairFuture {
    Box::pin(async {
        let (server, client) = support::tcp_link().await;
        (client, server)
    })
}

#[cfg(feature = "tcp")]
rpc_suite_on!(tcp_server_serves, tcp_server_serves, ReplyRouting::Shared);
#[cfg(feature = "tcp")]
rpc_suite_on!(tcp_client_serves, tcp_client_serves, ReplyRouting::Shared);

#[cfg(feature = "redis")]
fn redis() -> PairFuture {
    Box::pin(async { (support::redis().await, support::redis().await) })
}

#[cfg(feature = "redis")]
rpc_suite_on!(redis, redis, ReplyRouting::PerCall);

#[cfg(feature = "nats")]
fn nats() -> PairFuture {
    Box::pin(async { (support::nats().await, support::nats().await) })
}

#[cfg(feature = "nats")]
rpc_suite_on!(nats, nats, ReplyRouting::PerCall);
