//! Observers: meters and callbacks watching every call of a task.
//!
//! A task that parses orders is watched by a TimingMeter (with a slow-call
//! threshold), a CpuMeter, a MetricsMeter reading a number from each
//! result, a Summary with latency percentiles, a callback on failures, and
//! an observer that panics, which is reported and harms nothing.
//!
//! Run with `cargo run --example 07_observers`.

use std::time::Duration;

use eventforge::rpc::HandlerError;
use eventforge::tasks::observers::{
    CpuMeter, MetricsMeter, Observer, Reduction, Summary, TimingMeter, TracingReporter,
};
use eventforge::tasks::{Task, TaskContext};
use serde_json::json;

/// An observer with a bug: its panic is caught, counted and reported.
struct Careless;

impl Observer for Careless {
    fn on_success(&self, _: &TaskContext) {
        panic!("this observer is careless");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The careless observer panics on purpose: print one line per panic
    // instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("(panic, caught by the task) {info}")
    }));

    let timing = TimingMeter::new("orders.parse.time").threshold(Duration::from_millis(5));
    let cpu = CpuMeter::with_reduction("orders.parse.cpu", Reduction::Sum);
    let items = MetricsMeter::new("orders.items", Reduction::Max, |result| {
        result["items"].as_f64()
    });
    let summary = Summary::new("orders.parse");

    let parse = Task::builder("parse_order", |lines: Vec<String>, slow: bool| async move {
        if lines.is_empty() {
            return Err(HandlerError::new(
                "ValueError",
                "an order needs at least one line",
            ));
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let total: usize = lines.iter().map(String::len).sum();
        Ok(json!({"items": lines.len(), "bytes": total}))
    })
    .params(["lines", "slow"])
    .observer(timing.clone())
    .observer(cpu.clone())
    .observer(items.clone())
    .observer(summary.clone())
    .observer(TracingReporter::new())
    .observer(Careless)
    .on_failure(|ctx| {
        if let Some(error) = ctx.error() {
            println!("  callback: {} failed ({})", ctx.name(), error);
        }
    })
    .build();

    for (lines, slow) in [
        (vec!["apple", "pear"], false),
        (vec!["bread"], true),
        (vec![], false),
        (vec!["milk", "tea", "rice"], false),
    ] {
        let payload = json!({"lines": lines, "slow": slow});
        match parse.call_payload(payload).await {
            Ok(result) => println!("parsed: {result}"),
            Err(error) => println!("failed: {error}"),
        }
    }

    let time = timing.stats();
    println!(
        "time: {} calls, mean {:.3} ms, max {:.3} ms, {} slow",
        time.count,
        time.mean.unwrap_or_default() * 1e3,
        time.max.unwrap_or_default() * 1e3,
        timing.slow_calls()
    );
    println!(
        "cpu: {:.1} µs in total",
        cpu.meter().value().unwrap_or_default() * 1e6
    );
    println!("most items in one order: {:?}", items.meter().value());
    let stats = summary.stats();
    println!(
        "summary: {} calls, {} ok, {} failed, p50 {:?}, p99 {:?}",
        stats.count, stats.successes, stats.failures, stats.p50, stats.p99
    );
    let task_stats = parse.stats();
    println!(
        "observer panics caught: {} (the calls were not affected: {} succeeded)",
        task_stats.observer_panics, task_stats.successes
    );
    assert_eq!(task_stats.successes, 3);
    assert_eq!(timing.slow_calls(), 1);
    Ok(())
}
