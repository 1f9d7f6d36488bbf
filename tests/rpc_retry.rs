//! Retry policy and round-robin pool behaviour over the memory transport.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventforge::rpc::{
    with_retry, RetryPolicy, RoundRobinRpcClient, RpcClient, RpcError, RpcServer,
};
use eventforge::rpc::{HandlerError, RpcErrorKind};
use eventforge::{new_id, MemoryTransport, MessageQueue, Pattern};

fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(attempts)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5))
}

fn service() -> String {
    format!("retry_{}", new_id().replace('-', ""))
}

#[tokio::test]
async fn remote_errors_are_never_retried() {
    let queue = MessageQueue::memory();
    let service = service();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = RpcServer::new(queue.clone()).service(&service);
    {
        let calls = Arc::clone(&calls);
        server.register("fail", move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(HandlerError::new("ValueError", "no"))
        });
    }
    server.serve().await.unwrap();
    let client = with_retry(
        RpcClient::new(queue.clone()).service(&service),
        fast_retries(5),
    );
    let error = client.call::<()>("fail", ()).await.unwrap_err();
    assert_eq!(error.error_type(), Some("ValueError"));
    let missing = client.call::<()>("missing", ()).await.unwrap_err();
    assert!(matches!(missing, RpcError::MethodNotFound { .. }));
    server.stop().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn timeouts_are_retried_up_to_max_attempts() {
    let queue = MessageQueue::memory();
    let service = service();
    // Listens, so there are responders, but never answers.
    let mut silent = queue
        .subscribe(Pattern::parse(&format!("{service}.request")).unwrap())
        .await
        .unwrap();
    let client = with_retry(
        RpcClient::new(queue.clone())
            .service(&service)
            .timeout(Duration::from_millis(20)),
        fast_retries(3),
    );
    let error = client.call::<i64>("add", (1, 2)).await.unwrap_err();
    assert!(matches!(error, RpcError::Timeout { .. }), "{error:?}");
    let mut ids = Vec::new();
    while let Some(request) = silent.try_recv() {
        ids.push(request.payload["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 3, "one request per attempt");
    ids.dedup();
    assert_eq!(ids.len(), 3, "each attempt is a new request");
}

#[tokio::test]
async fn a_policy_retries_only_the_kinds_it_names() {
    let queue = MessageQueue::memory();
    let mut silent = queue
        .subscribe(Pattern::parse("quiet.request").unwrap())
        .await
        .unwrap();
    let client = with_retry(
        RpcClient::new(queue.clone())
            .service("quiet")
            .timeout(Duration::from_millis(10)),
        fast_retries(4).retry_on([RpcErrorKind::NoResponders]),
    );
    assert!(client.call::<i64>("add", (1, 2)).await.is_err());
    assert!(silent.try_recv().is_some());
    assert!(silent.try_recv().is_none(), "a timeout was retried");
}

#[tokio::test]
async fn round_robin_spreads_calls_evenly() {
    let queue = MessageQueue::memory();
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for n in 0..3 {
        let service = service();
        let server = RpcServer::new(queue.clone()).service(&service);
        server.register("who", move || Ok::<_, HandlerError>(n));
        server.serve().await.unwrap();
        servers.push(server);
        clients.push(RpcClient::new(queue.clone()).service(&service));
    }
    let pool = RoundRobinRpcClient::new(clients);
    let mut counts = [0; 3];
    for _ in 0..30 {
        counts[pool.call::<usize>("who", ()).await.unwrap()] += 1;
    }
    assert_eq!(counts, [10, 10, 10]);
    for server in &servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn round_robin_skips_a_member_whose_transport_is_closed() {
    let mut transports = Vec::new();
    let mut servers = Vec::new();
    for n in 0..2 {
        let queue = MessageQueue::new(MemoryTransport::new());
        let server = RpcServer::new(queue.clone()).service("pooled");
        server.register("who", move || Ok::<_, HandlerError>(n));
        server.serve().await.unwrap();
        servers.push(server);
        transports.push(queue);
    }
    let pool = RoundRobinRpcClient::new(
        transports
            .iter()
            .map(|q| RpcClient::new(q.clone()).service("pooled")),
    );
    assert_eq!(pool.available(), 2);
    transports[0].close().await.unwrap();
    assert_eq!(pool.available(), 1);
    for _ in 0..6 {
        assert_eq!(pool.call::<usize>("who", ()).await.unwrap(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_down_is_tried_again_after_its_cool_down() {
    let queue = MessageQueue::memory();
    let (up, down) = (service(), service());
    let server = RpcServer::new(queue.clone()).service(&up);
    server.register("who", || Ok::<_, HandlerError>("up"));
    server.serve().await.unwrap();
    let late = RpcServer::new(queue.clone()).service(&down);
    late.register("who", || Ok::<_, HandlerError>("recovered"));
    let pool = RoundRobinRpcClient::with_cool_down(
        [up.as_str(), down.as_str()].map(|s| RpcClient::new(queue.clone()).service(s)),
        Duration::from_millis(50),
    );
    // The second member has no server: its first call fails and marks it down.
    assert_eq!(pool.call::<String>("who", ()).await.unwrap(), "up");
    assert!(matches!(
        pool.call::<String>("who", ()).await,
        Err(RpcError::NoResponders { .. })
    ));
    assert_eq!(pool.available(), 1);
    // While it is down every call goes to the member that is up.
    for _ in 0..4 {
        assert_eq!(pool.call::<String>("who", ()).await.unwrap(), "up");
    }
    late.serve().await.unwrap();
    tokio::time::advance(Duration::from_millis(60)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(pool.call::<String>("who", ()).await.unwrap());
    }
    assert!(seen.iter().any(|s| s == "recovered"), "{seen:?}");
    assert_eq!(pool.available(), 2);
    server.stop().await;
    late.stop().await;
}
