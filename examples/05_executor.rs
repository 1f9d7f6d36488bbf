//! The Executor: local request-reply. The same functions run inline, on a
//! pool of threads, or in child processes of this very program, where a
//! crashing task takes down only its own child.
//!
//! Run with `cargo run --example 05_executor`.

use std::time::Duration;

use eventforge::tasks::{run_child_if_requested, Executor, ExecutorMode, FunctionRegistry};
use serde_json::{json, Value};

/// The functions tasks may run. Parent and children build the same registry.
fn registry() -> FunctionRegistry {
    let mut registry = FunctionRegistry::new();
    registry.register_typed("fib", |n: u64| {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            (a, b) = (b, a.wrapping_add(b));
        }
        Ok::<_, String>(a)
    });
    registry.register("crash", |_: Value| std::process::abort());
    registry
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a child started by the process executor this serves tasks and exits.
    run_child_if_requested(&registry());

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for mode in [
            ExecutorMode::Inline,
            ExecutorMode::Thread,
            ExecutorMode::Process,
        ] {
            let executor = Executor::builder(mode)
                .max_workers(2)
                .registry(registry())
                .build();
            let results = executor.map("fib", (10..15).map(|n| json!(n))).await?;
            let values: Vec<Value> = results.iter().map(|r| r.value.clone()).collect();
            let values = Value::Array(values);
            println!(
                "{mode:?}: fib(10..15) = {values} (first ran on {})",
                results[0].worker_id.as_deref().unwrap_or("?")
            );
            executor.stop(true).await;
        }

        // A task that aborts kills its child only; the pool replaces it.
        let isolated = Executor::builder(ExecutorMode::Process)
            .max_workers(1)
            .registry(registry())
            .build();
        let crashed = isolated.run("crash", Value::Null).await?;
        println!(
            "crash: {:?} {} ({})",
            crashed.status,
            crashed.error_type.as_deref().unwrap_or(""),
            crashed.error.as_deref().unwrap_or("")
        );
        let id = isolated.submit("fib", json!(20))?;
        let after = isolated.result(&id, Duration::from_secs(10)).await?;
        println!(
            "after the crash: fib(20) = {} on {:?}",
            after.value, after.worker_id
        );
        // The result in wire form, as a Python peer reads it.
        println!("{}", serde_json::to_string(&after)?);
        isolated.stop(true).await;
        Ok(())
    })
}
