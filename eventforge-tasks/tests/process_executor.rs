//! Executor in process mode. This binary is its own executor child: `main`
//! first serves as a child when started as one, then runs the tests.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use eventforge_core::MessageQueue;
use eventforge_rpc::{RpcClient, RpcError, RpcServer};
use eventforge_tasks::{
    run_child_if_requested, Executor, ExecutorError, ExecutorMode, FunctionRegistry, TaskStatus,
};
use serde_json::{json, Value};

fn registry() -> FunctionRegistry {
    let mut registry = FunctionRegistry::new();
    registry.register_typed("square", |n: i64| Ok::<_, String>(n * n));
    registry.register_typed("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b));
    registry.register("pid", |_: Value| Ok(json!(std::process::id())));
    registry.register("abort", |_: Value| std::process::abort());
    registry.register("exit", |code: Value| {
        std::process::exit(code.as_i64().unwrap_or(1) as i32)
    });
    registry.register("panic", |_: Value| {
        panic!("child task blew up (a panic this test provokes on purpose)")
    });
    registry.register("chatty", |_: Value| {
        println!("a task printing to stdout must not break the protocol");
        print!("\0EF half a marker");
        Ok(json!("still fine"))
    });
    registry
}

fn process_executor(workers: usize) -> Executor {
    Executor::builder(ExecutorMode::Process)
        .max_workers(workers)
        .registry(registry())
        .build()
}

const WAIT: Duration = Duration::from_secs(30);

async fn tasks_run_in_child_processes() {
    let executor = process_executor(2);
    let result = executor.run("pid", Value::Null).await.unwrap();
    assert_eq!(result.status, TaskStatus::Completed);
    let child = result.value.as_u64().unwrap() as u32;
    assert_ne!(child, std::process::id());
    assert_eq!(result.worker_id, Some(format!("process-{child}")));
    let sums = executor
        .map("add", (0..20).map(|n| json!([n, 1])))
        .await
        .unwrap();
    let values: Vec<i64> = sums.iter().map(|r| r.value.as_i64().unwrap()).collect();
    assert_eq!(values, (1..=20).collect::<Vec<_>>());
    executor.stop(true).await;
}

async fn an_aborting_task_fails_and_the_pool_keeps_serving() {
    let executor = process_executor(1);
    let before = executor.run("pid", Value::Null).await.unwrap().value;
    let aborted = executor.run("abort", Value::Null).await.unwrap();
    assert_eq!(aborted.status, TaskStatus::Failed);
    assert_eq!(aborted.error_type.as_deref(), Some("WorkerCrashed"));
    let text = aborted.error.unwrap();
    assert!(
        text.contains("abort()") && text.contains("SIGABRT"),
        "{text}"
    );
    let after = executor.run("pid", Value::Null).await.unwrap().value;
    assert_ne!(before, after, "the dead child was replaced");
    assert_eq!(executor.run("square", json!(12)).await.unwrap().value, 144);
    executor.stop(true).await;
}

async fn an_exiting_task_fails_with_its_exit_code() {
    let executor = process_executor(1);
    let exited = executor.run("exit", json!(3)).await.unwrap();
    assert_eq!(exited.error_type.as_deref(), Some("WorkerCrashed"));
    assert!(exited.error.unwrap().contains("exited with code 3"));
    assert_eq!(executor.run("square", json!(5)).await.unwrap().value, 25);
    executor.stop(true).await;
}

async fn a_panicking_task_is_reported_and_its_child_replaced() {
    let executor = process_executor(1);
    let before = executor.run("pid", Value::Null).await.unwrap().value;
    let panicked = executor.run("panic", Value::Null).await.unwrap();
    assert_eq!(panicked.error_type.as_deref(), Some("Panic"));
    assert!(panicked.error.unwrap().contains("child task blew up"));
    let after = executor.run("pid", Value::Null).await.unwrap().value;
    assert_ne!(before, after);
    executor.stop(true).await;
}

async fn children_are_recycled_after_max_tasks_per_child() {
    let executor = Executor::builder(ExecutorMode::Process)
        .max_workers(1)
        .max_tasks_per_child(2)
        .registry(registry())
        .build();
    let mut pids = Vec::new();
    for _ in 0..5 {
        pids.push(executor.run("pid", Value::Null).await.unwrap().value);
    }
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[3], pids[4]);
    executor.stop(true).await;
}

async fn stdout_noise_from_a_task_does_not_break_the_protocol() {
    let executor = process_executor(1);
    let result = executor.run("chatty", Value::Null).await.unwrap();
    assert_eq!(result.value, "still fine");
    assert_eq!(executor.run("square", json!(4)).await.unwrap().value, 16);
    executor.stop(true).await;
}

async fn closures_are_refused_in_process_mode() {
    let executor = process_executor(1);
    let refused = executor.submit_fn(|| Ok::<_, String>(1));
    assert!(matches!(refused, Err(ExecutorError::ClosureInProcessMode)));
    let unknown = executor.run("nothing", Value::Null).await.unwrap();
    assert_eq!(unknown.error_type.as_deref(), Some("FunctionNotFound"));
    let id = executor.submit("square", json!(3)).unwrap();
    assert_eq!(executor.result_blocking(&id, WAIT).unwrap().value, 9);
    executor.stop(true).await;
}

async fn rpc_methods_can_run_on_a_process_executor() {
    let executor = process_executor(1);
    let queue = MessageQueue::memory();
    let server = RpcServer::new(queue.clone()).service("isolated");
    executor
        .serve_on(&server, "add", "add")
        .serve_on(&server, "abort", "abort");
    server.serve().await.unwrap();
    let client = RpcClient::new(queue.clone()).service("isolated");
    assert_eq!(client.call::<i64>("add", (2, 40)).await.unwrap(), 42);
    match client.call::<Value>("abort", ()).await.unwrap_err() {
        RpcError::Remote { error_type, .. } => assert_eq!(error_type, "WorkerCrashed"),
        other => panic!("expected a remote WorkerCrashed, got {other:?}"),
    }
    assert_eq!(client.call::<i64>("add", (1, 1)).await.unwrap(), 2);
    server.stop().await;
    executor.stop(true).await;
}

async fn a_child_program_that_does_not_serve_fails_its_tasks_with_a_hint() {
    let executor = Executor::builder(ExecutorMode::Process)
        .max_workers(1)
        .child_program(
            "sh",
            vec!["-c".into(), "echo I am not an executor child".into()],
        )
        .build();
    let result = executor.run("square", json!(2)).await.unwrap();
    assert_eq!(result.error_type.as_deref(), Some("WorkerCrashed"));
    let text = result.error.unwrap();
    assert!(text.contains("exited with code 0"), "{text}");
    assert!(text.contains("run_child_if_requested"), "{text}");
    executor.stop(true).await;
}

/// Set (with the child variable) to play a program whose main forgot to
/// serve and then builds a process executor itself.
const FORGETFUL: &str = "EVENTFORGE_TEST_FORGETFUL_CHILD";

fn forgetful_main() {
    let executor = Executor::builder(ExecutorMode::Process)
        .max_workers(1)
        .registry(registry())
        .build();
    match executor.start() {
        Err(ExecutorError::Spawn(error)) => println!("refused: {error}"),
        Err(other) => println!("unexpected error: {other}"),
        Ok(()) => println!("started children of its own"),
    }
}

async fn a_child_that_did_not_serve_cannot_start_children_of_its_own() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env(eventforge_tasks::CHILD_ENV, "1")
        .env(FORGETFUL, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("refused:") && text.contains("run_child_if_requested"),
        "{text}"
    );
}

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), Box::pin($name()) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)),*]
    };
}

fn main() {
    if std::env::var_os(FORGETFUL).is_some() {
        forgetful_main();
        return;
    }
    run_child_if_requested(&registry());

    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let tests = tests!(
        tasks_run_in_child_processes,
        an_aborting_task_fails_and_the_pool_keeps_serving,
        an_exiting_task_fails_with_its_exit_code,
        a_panicking_task_is_reported_and_its_child_replaced,
        children_are_recycled_after_max_tasks_per_child,
        stdout_noise_from_a_task_does_not_break_the_protocol,
        closures_are_refused_in_process_mode,
        rpc_methods_can_run_on_a_process_executor,
        a_child_program_that_does_not_serve_fails_its_tasks_with_a_hint,
        a_child_that_did_not_serve_cannot_start_children_of_its_own,
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(test)));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
