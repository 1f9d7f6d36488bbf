//! Executor in inline and thread modes (process mode has its own test
//! binary, which can serve as its own child).

use std::time::Duration;

use eventforge_tasks::{Executor, ExecutorError, ExecutorMode, FunctionRegistry, TaskStatus};
use serde_json::{json, Value};

fn registry() -> FunctionRegistry {
    let mut registry = FunctionRegistry::new();
    registry.register_typed("square", |n: i64| Ok::<_, String>(n * n));
    registry.register_typed("fail", |text: String| Err::<(), _>(text));
    registry.register("panic", |_: Value| panic!("task blew up"));
    registry.register("thread_name", |_: Value| {
        Ok(json!(std::thread::current().name().unwrap_or("")))
    });
    registry
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn inline_mode_runs_at_submit_time_on_the_caller() {
    let executor = Executor::new(ExecutorMode::Inline, registry());
    let id = executor.submit("square", json!(9)).unwrap();
    // Already finished: no wait at all is needed.
    let result = executor.result(&id, Duration::ZERO).await.unwrap();
    assert_eq!(result.value, 81);
    assert_eq!(result.worker_id.as_deref(), Some("inline"));
}

#[tokio::test]
async fn thread_mode_runs_on_named_worker_threads() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(2)
        .thread_name_prefix("calc")
        .registry(registry())
        .build();
    let result = executor.run("thread_name", Value::Null).await.unwrap();
    let name = result.value.as_str().unwrap().to_owned();
    assert!(name == "calc-1" || name == "calc-2", "{name}");
    assert_eq!(result.worker_id.as_deref(), Some(name.as_str()));
    executor.stop(true).await;
}

#[tokio::test]
async fn map_returns_results_in_input_order() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(3)
        .registry(registry())
        .build();
    let results = executor
        .map("square", (1..=20).map(|n| json!(n)))
        .await
        .unwrap();
    let values: Vec<i64> = results.iter().map(|r| r.value.as_i64().unwrap()).collect();
    assert_eq!(values, (1..=20).map(|n| n * n).collect::<Vec<_>>());
    executor.stop(true).await;
}

#[tokio::test]
async fn failures_panics_and_unknown_functions_are_failed_results() {
    for mode in [ExecutorMode::Inline, ExecutorMode::Thread] {
        let executor = Executor::builder(mode)
            .max_workers(1)
            .registry(registry())
            .build();
        let failed = executor.run("fail", json!("bad input")).await.unwrap();
        assert_eq!(failed.status, TaskStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("bad input"));
        let panicked = executor.run("panic", Value::Null).await.unwrap();
        assert_eq!(panicked.error_type.as_deref(), Some("Panic"));
        assert!(panicked.error.unwrap().contains("task blew up"));
        let unknown = executor.run("nothing", Value::Null).await.unwrap();
        assert_eq!(unknown.error_type.as_deref(), Some("FunctionNotFound"));
        // The worker survived all of it.
        assert_eq!(executor.run("square", json!(3)).await.unwrap().value, 9);
        executor.stop(true).await;
    }
}

#[tokio::test]
async fn a_result_is_handed_out_once_then_forgotten() {
    let executor = Executor::new(ExecutorMode::Inline, registry());
    let id = executor.submit("square", json!(2)).unwrap();
    assert_eq!(executor.held_results(), 1);
    executor.result(&id, WAIT).await.unwrap();
    assert_eq!(executor.held_results(), 0);
    assert!(matches!(
        executor.result(&id, WAIT).await,
        Err(ExecutorError::UnknownTask(_))
    ));
}

#[tokio::test]
async fn untaken_results_are_bounded() {
    let executor = Executor::builder(ExecutorMode::Inline)
        .max_retained_results(100)
        .registry(registry())
        .build();
    let ids: Vec<String> = (0..1000)
        .map(|n| executor.submit("square", json!(n)).unwrap())
        .collect();
    assert_eq!(executor.held_results(), 100);
    assert_eq!(executor.dropped_results(), 900);
    // The newest are the ones kept.
    let last = executor.result(ids.last().unwrap(), WAIT).await.unwrap();
    assert_eq!(last.value, 999 * 999);
    assert!(executor.result(&ids[0], WAIT).await.is_err());
}

#[tokio::test]
async fn a_running_task_times_out_and_can_be_taken_later() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(1)
        .build();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let id = executor
        .submit_fn(move || gate.recv().map(|()| "released"))
        .unwrap();
    let early = executor.result(&id, Duration::from_millis(20)).await;
    assert!(matches!(early, Err(ExecutorError::Timeout { .. })));
    release.send(()).unwrap();
    let result = executor.result(&id, WAIT).await.unwrap();
    assert_eq!(result.value, "released");
    executor.stop(true).await;
}

#[tokio::test]
async fn stop_without_waiting_cancels_queued_tasks() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(1)
        .build();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let blocker = executor
        .submit_fn(move || {
            let _ = started_tx.send(());
            gate.recv().map(|()| 1)
        })
        .unwrap();
    let queued = executor.submit_fn(|| Ok::<_, String>(2)).unwrap();
    started.recv().unwrap();
    executor.stop(false).await;
    release.send(()).unwrap();
    assert_eq!(executor.result(&blocker, WAIT).await.unwrap().value, 1);
    let cancelled = executor.result(&queued, WAIT).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(matches!(
        executor.submit_fn(|| Ok::<_, String>(3)),
        Err(ExecutorError::Stopped)
    ));
    // Stopping twice is harmless.
    executor.stop(true).await;
}

#[test]
fn blocking_variants_work_outside_a_runtime() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(2)
        .registry(registry())
        .build();
    let results = executor
        .map_blocking("square", [json!(4), json!(5)])
        .unwrap();
    assert_eq!(results[1].value, 25);
    let id = executor.submit("square", json!(6)).unwrap();
    assert_eq!(executor.result_blocking(&id, WAIT).unwrap().value, 36);
    executor.stop_blocking(true);
    assert!(executor.is_stopped());
}

#[test]
fn default_workers_is_the_cpu_count() {
    let executor = Executor::builder(ExecutorMode::Thread).build();
    let cpus = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap();
    assert_eq!(executor.max_workers(), cpus);
}

#[tokio::test]
async fn submit_fails_when_too_many_tasks_are_unfinished() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(1)
        .max_queued_tasks(2)
        .build();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let first = executor.submit_fn(move || gate.recv().map(|()| 1)).unwrap();
    let second = executor.submit_fn(|| Ok::<_, String>(2)).unwrap();
    assert!(matches!(
        executor.submit_fn(|| Ok::<_, String>(3)),
        Err(ExecutorError::QueueFull { limit: 2 })
    ));
    release.send(()).unwrap();
    assert_eq!(executor.result(&first, WAIT).await.unwrap().value, 1);
    assert_eq!(executor.result(&second, WAIT).await.unwrap().value, 2);
    // Finished tasks no longer count.
    let third = executor.submit_fn(|| Ok::<_, String>(3)).unwrap();
    let fourth = executor.submit_fn(|| Ok::<_, String>(4)).unwrap();
    assert_eq!(executor.result(&third, WAIT).await.unwrap().value, 3);
    assert_eq!(executor.result(&fourth, WAIT).await.unwrap().value, 4);
    executor.stop(true).await;
}
