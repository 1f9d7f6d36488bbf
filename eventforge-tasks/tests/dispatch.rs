//! Dispatchers over nodes: which nodes a call reaches under each strategy,
//! and node capacity under contention.

use std::sync::Arc;

use eventforge_rpc::HandlerError;
use eventforge_tasks::{DispatchNode, DispatchStrategy, Dispatcher, Task};
use tokio::sync::{mpsc, Barrier, Semaphore};

fn echo(name: &str) -> DispatchNode {
    DispatchNode::new(Task::builder(name, |x: i64| Ok::<_, HandlerError>(x)).build())
}

fn names(outcomes: &[eventforge_tasks::DispatchOutcome]) -> Vec<&str> {
    outcomes.iter().map(|o| o.node.as_str()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn round_robin_takes_each_node_in_turn() {
    let dispatcher = Dispatcher::new(
        DispatchStrategy::RoundRobin,
        vec![echo("a"), echo("b"), echo("c")],
    );
    let mut seen = Vec::new();
    for i in 0..6 {
        let outcomes = dispatcher.dispatch((i,)).await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].outcome, Ok(i.into()));
        seen.push(outcomes[0].node.clone());
    }
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c"]);
}

#[tokio::test(flavor = "current_thread")]
async fn broadcast_calls_every_node_in_order() {
    let dispatcher = Dispatcher::new(DispatchStrategy::Broadcast, vec![echo("a"), echo("b")]);
    let outcomes = dispatcher.dispatch((7,)).await;
    assert_eq!(names(&outcomes), ["a", "b"]);
    assert!(outcomes.iter().all(|o| o.outcome == Ok(7.into())));
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_dispatch_runs_every_node_at_once() {
    // Each node waits until all three are running: this only finishes when
    // the calls truly overlap.
    let barrier = Arc::new(Barrier::new(3));
    let node = |name: &str| {
        let barrier = barrier.clone();
        DispatchNode::new(
            Task::builder(name, move |x: i64| {
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    Ok::<_, HandlerError>(x)
                }
            })
            .build(),
        )
    };
    let dispatcher = Dispatcher::new(
        DispatchStrategy::Concurrent,
        vec![node("a"), node("b"), node("c")],
    );
    let outcomes = dispatcher.dispatch((1,)).await;
    assert_eq!(names(&outcomes), ["a", "b", "c"]);
    assert!(outcomes.iter().all(|o| o.outcome.is_ok()));
}

#[tokio::test(flavor = "current_thread")]
async fn least_loaded_avoids_a_busy_node_and_full_nodes_are_no_capacity() {
    let gate = Arc::new(Semaphore::new(0));
    let (started, mut started_rx) = mpsc::unbounded_channel::<()>();
    let busy = {
        let gate = gate.clone();
        DispatchNode::new(
            Task::builder("busy", move |x: i64| {
                let (gate, started) = (gate.clone(), started.clone());
                async move {
                    started.send(()).unwrap();
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, HandlerError>(x)
                }
            })
            .build(),
        )
        .capacity(1)
    };
    let idle = echo("idle").capacity(1);
    let dispatcher = Dispatcher::new(DispatchStrategy::LeastLoaded, vec![busy.clone(), idle]);

    // Both nodes are empty: the first in order, `busy`, takes the call and holds it.
    let held = tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move { dispatcher.dispatch((1,)).await }
    });
    started_rx.recv().await.unwrap();
    assert_eq!(busy.load(), 1);
    let outcomes = dispatcher.dispatch((2,)).await;
    assert_eq!(names(&outcomes), ["idle"]);

    // With `busy` full and a full `idle` as well, nothing is left.
    let _hold_idle = dispatcher.nodes()[1].try_reserve().unwrap();
    let outcomes = dispatcher.dispatch((3,)).await;
    let error = outcomes[0].outcome.clone().unwrap_err();
    assert_eq!(error.error_type(), "NoCapacity");

    gate.add_permits(1);
    assert_eq!(names(&held.await.unwrap()), ["busy"]);
    assert_eq!(busy.load(), 0);
}

#[test]
fn reservations_never_exceed_capacity_under_contention() {
    let node = echo("n").capacity(3);
    let peak = std::sync::atomic::AtomicUsize::new(0);
    let granted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20_000 {
                    if let Some(held) = node.try_reserve() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        peak.fetch_max(node.load(), std::sync::atomic::Ordering::Relaxed);
                        drop(held);
                    }
                }
            });
        }
    });
    assert!(peak.into_inner() <= 3);
    assert!(granted.into_inner() > 0);
    assert_eq!(node.load(), 0, "every reservation was released");
}
