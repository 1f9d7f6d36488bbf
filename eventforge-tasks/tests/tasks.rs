//! Tasks and their observers, called directly, from a queue and over RPC,
//! on the memory transport.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventforge_core::MessageQueue;
use eventforge_rpc::{HandlerError, Kwargs, RpcClient, RpcServer};
use eventforge_tasks::observers::{
    CpuMeter, MemoryMeter, MetricsMeter, Observer, Reduction, Summary, TimingMeter,
};
use eventforge_tasks::{Executor, ExecutorMode};
use eventforge_tasks::{SharedState, Task, TaskContext};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

fn add_task() -> Task {
    Task::builder("add", |a: i64, b: i64| Ok::<_, HandlerError>(a + b))
        .params(["a", "b"])
        .build()
}

/// Records every hook it sees as `(hook, task_id)`.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<(&'static str, String)>>>);

impl Recorder {
    fn push(&self, hook: &'static str, ctx: &TaskContext) {
        self.0
            .lock()
            .unwrap()
            .push((hook, ctx.task_id().to_owned()));
    }
    fn take(&self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Observer for Recorder {
    fn on_start(&self, ctx: &TaskContext) {
        self.push("start", ctx);
    }
    fn on_success(&self, ctx: &TaskContext) {
        self.push("success", ctx);
    }
    fn on_failure(&self, ctx: &TaskContext) {
        self.push("failure", ctx);
    }
    fn on_complete(&self, ctx: &TaskContext) {
        self.push("complete", ctx);
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", eventforge_core::new_id().replace('-', ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_on_a_shared_meter_are_all_recorded() {
    let timing = TimingMeter::new("add.time");
    let task = Task::builder("add", |a: i64, b: i64| async move {
        Ok::<_, HandlerError>(a + b)
    })
    .observer(timing.clone())
    .build();
    let calls: Vec<_> = (0..8)
        .map(|worker| {
            let task = task.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    assert_eq!(task.call_as::<i64>((worker, i)).await.unwrap(), worker + i);
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let stats = timing.stats();
    assert_eq!(stats.count, 4000);
    assert!(stats.min.unwrap() >= 0.0 && stats.max.unwrap() >= stats.min.unwrap());
    assert_eq!(task.stats().successes, 4000);
}

#[tokio::test(flavor = "current_thread")]
async fn max_instances_bounds_calls_in_flight_under_contention() {
    let gate = Arc::new(Semaphore::new(0));
    let (started, mut started_rx) = mpsc::unbounded_channel::<i64>();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let task = {
        let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
        Task::builder("gated", move |n: i64| {
            let (gate, started, running, peak) =
                (gate.clone(), started.clone(), running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                started.send(n).unwrap();
                gate.acquire().await.unwrap().forget();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(n)
            }
        })
        .max_instances(2)
        .build()
    };
    let all = {
        let task = task.clone();
        tokio::spawn(
            async move { futures::future::join_all((0..6).map(|n| task.call((n,)))).await },
        )
    };
    // Two calls got an instance; the other four wait for one.
    started_rx.recv().await.unwrap();
    started_rx.recv().await.unwrap();
    let stats = task.pool_stats().unwrap();
    assert_eq!(
        (stats.active, stats.queued, stats.available, stats.max),
        (2, 4, 0, 2)
    );
    assert!(started_rx.try_recv().is_err(), "a third call started");

    gate.add_permits(6);
    let results = all.await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    let stats = task.pool_stats().unwrap();
    assert_eq!(
        (stats.active, stats.queued, stats.total_processed),
        (0, 0, 6)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_waiting_past_instance_timeout_fails_with_timeout_error() {
    let gate = Arc::new(Semaphore::new(0));
    let (started, mut started_rx) = mpsc::unbounded_channel::<()>();
    let recorder = Recorder::default();
    let task = {
        let gate = gate.clone();
        Task::builder("slow", move || {
            let (gate, started) = (gate.clone(), started.clone());
            async move {
                started.send(()).unwrap();
                gate.acquire().await.unwrap().forget();
                Ok::<_, HandlerError>(())
            }
        })
        .max_instances(1)
        .instance_timeout(Duration::from_millis(20))
        .observer(recorder.clone())
        .build()
    };
    let first = tokio::spawn({
        let task = task.clone();
        async move { task.call(()).await }
    });
    // The first call holds the only instance until the gate opens.
    started_rx.recv().await.unwrap();
    let error = task.call(()).await.unwrap_err();
    assert_eq!(error.error_type(), "TimeoutError");
    let hooks: Vec<_> = recorder.take().into_iter().map(|(hook, _)| hook).collect();
    assert_eq!(hooks, ["start", "start", "failure", "complete"]);
    gate.add_permits(1);
    first.await.unwrap().unwrap();
}

struct Panics;

impl Observer for Panics {
    fn on_start(&self, _: &TaskContext) {
        panic!("observer broke on start");
    }
    fn on_complete(&self, _: &TaskContext) {
        panic!("observer broke on complete");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_observer_is_counted_and_never_breaks_the_call() {
    let recorder = Recorder::default();
    let task = Task::builder("add", |a: i64, b: i64| Ok::<_, HandlerError>(a + b))
        .observer(Panics)
        .observer(recorder.clone())
        .build();
    assert_eq!(task.call_as::<i64>((2, 3)).await.unwrap(), 5);
    let stats = task.stats();
    assert_eq!((stats.successes, stats.observer_panics), (1, 2));
    // The observer after the panicking one still saw every hook.
    assert_eq!(recorder.take().len(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_function_is_a_failure_with_error_type_panic() {
    let task = Task::builder("boom", || -> Result<(), HandlerError> {
        panic!("bad input")
    })
    .build();
    let error = task.call(()).await.unwrap_err();
    assert_eq!(error.error_type(), "Panic");
    assert!(error.message().contains("bad input"), "{error}");
    assert_eq!(task.stats().failures, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn payloads_unpack_by_name_by_position_or_as_the_single_argument() {
    let add = add_task();
    assert_eq!(
        add.call_payload(json!({"b": 2, "a": 40})).await.unwrap(),
        42
    );
    assert_eq!(add.call_payload(json!([40, 2])).await.unwrap(), 42);
    let double = Task::builder("double", |x: i64| Ok::<_, HandlerError>(x * 2)).build();
    assert_eq!(double.call_payload(json!(21)).await.unwrap(), 42);
}

#[tokio::test(flavor = "current_thread")]
async fn payloads_that_do_not_fit_are_type_errors() {
    let add = add_task();
    for (payload, says) in [
        (json!({"a": 1}), "missing required argument 'b'"),
        (
            json!({"a": 1, "b": 2, "c": 3}),
            "unexpected keyword argument 'c'",
        ),
        (json!([1]), "takes 2 positional arguments"),
        (json!(["one", 2]), "argument 1 has the wrong type"),
        (json!("seven"), "takes 2 positional arguments"),
        (json!({"a": "x", "b": 2}), "argument 1 has the wrong type"),
    ] {
        let error = add.call_payload(payload.clone()).await.unwrap_err();
        assert_eq!(error.error_type(), "TypeError", "{payload}");
        assert!(error.message().contains(says), "{payload}: {error}");
    }
    assert_eq!(add.stats().failures, 6);
}

#[tokio::test(flavor = "current_thread")]
async fn named_arguments_reach_a_kwargs_function_without_parameter_names() {
    #[derive(serde::Deserialize)]
    struct Greeting {
        name: String,
    }
    let greet = Task::builder("greet", |Kwargs(g): Kwargs<Greeting>| {
        Ok::<_, HandlerError>(format!("hello {}", g.name))
    })
    .build();
    assert_eq!(
        greet.call_payload(json!({"name": "ada"})).await.unwrap(),
        "hello ada"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn publish_result_sends_protocol_payloads_on_success_and_failure_topics() {
    let queue = MessageQueue::memory();
    let topic = unique("divide");
    let (ids, mut ids_rx) = mpsc::unbounded_channel::<String>();
    let task = Task::builder("divide", |a: f64, b: f64| {
        if b == 0.0 {
            return Err(HandlerError::new("ZeroDivisionError", "division by zero"));
        }
        Ok(a / b)
    })
    .params(["a", "b"])
    .topic(topic.clone())
    .publish_result(true)
    .on_complete(move |ctx| ids.send(ctx.task_id().to_owned()).unwrap())
    .build();
    task.bind(&queue).await.unwrap();
    let mut success = queue
        .subscribe(format!("{topic}.success").as_str())
        .await
        .unwrap();
    let mut failure = queue
        .subscribe(format!("{topic}.failure").as_str())
        .await
        .unwrap();

    queue
        .publish(&topic, json!({"a": 9, "b": 3}))
        .await
        .unwrap();
    let done = success.recv().await.unwrap();
    let payload = done.payload.as_object().unwrap();
    let mut keys: Vec<&str> = payload.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["execution_time", "result", "task_id"]);
    assert_eq!(payload["result"], 3.0);
    assert_eq!(payload["task_id"], ids_rx.recv().await.unwrap());
    assert!(payload["execution_time"].as_f64().unwrap() >= 0.0);

    queue.publish(&topic, json!([1, 0])).await.unwrap();
    let failed = failure.recv().await.unwrap();
    let payload = failed.payload.as_object().unwrap();
    let mut keys: Vec<&str> = payload.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "error_type", "execution_time", "task_id"]);
    assert_eq!(payload["error_type"], "ZeroDivisionError");
    assert_eq!(payload["error"], "division by zero");
    assert_eq!(payload["task_id"], ids_rx.recv().await.unwrap());

    // A payload that does not fit is published as a TypeError failure.
    queue.publish(&topic, json!({"a": 1})).await.unwrap();
    let failed = failure.recv().await.unwrap();
    assert_eq!(failed.payload["error_type"], "TypeError");
    queue.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_queue_and_rpc_calls_run_the_same_observers() {
    let queue = MessageQueue::memory();
    let topic = unique("sum");
    let service = unique("svc");
    let recorder = Recorder::default();
    let timing = TimingMeter::new("sum.time");
    let (done, mut done_rx) = mpsc::unbounded_channel::<Value>();
    let task = Task::builder("sum", |a: i64, b: i64| Ok::<_, HandlerError>(a + b))
        .params(["a", "b"])
        .topic(topic.clone())
        .observer(recorder.clone())
        .observer(timing.clone())
        .on_success(move |ctx| done.send(ctx.result().cloned().unwrap()).unwrap())
        .build();
    task.bind(&queue).await.unwrap();
    let server = RpcServer::new(queue.clone()).service(service.clone());
    task.serve_on(&server);
    server.serve().await.unwrap();

    assert_eq!(task.call((1, 2)).await.unwrap(), 3);
    queue
        .publish(&topic, json!({"a": 3, "b": 4}))
        .await
        .unwrap();
    assert_eq!(done_rx.recv().await.unwrap(), 3);
    assert_eq!(done_rx.recv().await.unwrap(), 7);
    let client = RpcClient::new(queue.clone()).service(service);
    let sum: i64 = client
        .method("sum")
        .arg(5)
        .kwarg("b", 6)
        .call()
        .await
        .unwrap();
    assert_eq!(sum, 11);
    assert_eq!(done_rx.recv().await.unwrap(), 11);

    let hooks = recorder.take();
    assert_eq!(hooks.len(), 9);
    for call in hooks.chunks(3) {
        let names: Vec<_> = call.iter().map(|(hook, _)| *hook).collect();
        assert_eq!(names, ["start", "success", "complete"]);
        assert!(
            call.iter().all(|(_, id)| id == &call[0].1),
            "one task id per call"
        );
    }
    assert_eq!(timing.stats().count, 3);
    assert_eq!(task.stats().calls, 3);
    server.stop().await;
    queue.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_triggered_from_a_queue_carries_the_message_in_its_metadata() {
    let queue = MessageQueue::memory();
    let topic = unique("meta");
    let (seen, mut seen_rx) = mpsc::unbounded_channel::<(Option<Value>, Value)>();
    let task = Task::builder("meta", |x: i64| Ok::<_, HandlerError>(x))
        .topic(topic.clone())
        .on_complete(move |ctx| {
            seen.send((ctx.metadata("message_id"), ctx.args().clone()))
                .unwrap();
        })
        .build();
    task.bind(&queue).await.unwrap();
    let id = queue.publish(&topic, 5).await.unwrap();
    let (message_id, args) = seen_rx.recv().await.unwrap();
    assert_eq!(message_id, Some(Value::from(id)));
    assert_eq!(args, 5);
    queue.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn timing_meter_flags_calls_slower_than_its_threshold() {
    let timing = TimingMeter::new("t").threshold(Duration::from_millis(5));
    let (slow, mut slow_rx) = mpsc::unbounded_channel::<Option<Value>>();
    let task = Task::builder("sleepy", |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, HandlerError>(())
    })
    .observer(timing.clone())
    .on_complete(move |ctx| slow.send(ctx.metadata("slow")).unwrap())
    .build();
    task.call((0u64,)).await.unwrap();
    task.call((20u64,)).await.unwrap();
    assert_eq!(timing.slow_calls(), 1);
    assert_eq!(slow_rx.recv().await.unwrap(), None);
    assert_eq!(slow_rx.recv().await.unwrap(), Some(Value::Bool(true)));
    assert!(timing.stats().max.unwrap() >= 0.020);
}

#[tokio::test(flavor = "current_thread")]
async fn cpu_meter_counts_the_work_of_the_call_not_its_waiting() {
    let cpu = CpuMeter::with_reduction("cpu", Reduction::Last);
    let timing = TimingMeter::with_reduction("wall", Reduction::Last);
    let task = Task::builder("spin_then_wait", |rounds: u64| async move {
        let mut x = 0u64;
        for i in 0..rounds {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok::<_, HandlerError>(x)
    })
    .observer(cpu.clone())
    .observer(timing.clone())
    .build();
    task.call((2_000_000u64,)).await.unwrap();
    let cpu_s = cpu.meter().value().unwrap();
    let wall_s = timing.meter().value().unwrap();
    assert!(cpu_s > 0.0, "the loop used CPU");
    assert!(wall_s >= 0.030, "the call lasted at least its sleep");
    assert!(
        cpu_s < wall_s,
        "sleeping is not CPU time: {cpu_s} vs {wall_s}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn memory_meter_records_nothing_without_the_counting_allocator() {
    let memory = MemoryMeter::new("bytes");
    let task = Task::builder("alloc", || Ok::<_, HandlerError>(vec![0u8; 4096].len()))
        .observer(memory.clone())
        .build();
    task.call(()).await.unwrap();
    assert_eq!(memory.stats().count, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_meter_reads_a_number_from_each_result() {
    let rows = MetricsMeter::new("rows", Reduction::Sum, |result| result["rows"].as_f64());
    let task = Task::builder("import", |n: u64| Ok::<_, HandlerError>(json!({"rows": n})))
        .observer(rows.clone())
        .build();
    task.call((3u64,)).await.unwrap();
    task.call((4u64,)).await.unwrap();
    assert_eq!(rows.meter().value(), Some(7.0));
}

#[tokio::test(flavor = "current_thread")]
async fn summary_counts_outcomes_and_gives_percentiles() {
    let summary = Summary::new("div");
    let task = Task::builder("div", |a: i64, b: i64| {
        a.checked_div(b).ok_or("division by zero")
    })
    .observer(summary.clone())
    .build();
    for b in [1, 2, 0, 4] {
        let _ = task.call((8, b)).await;
    }
    let stats = summary.stats();
    assert_eq!((stats.count, stats.successes, stats.failures), (4, 3, 1));
    assert!(stats.p50.unwrap() <= stats.p99.unwrap());
    assert!(stats.p99.unwrap() <= stats.max.unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_on_a_thread_executor_runs_on_an_executor_thread() {
    let executor = Executor::builder(ExecutorMode::Thread)
        .max_workers(1)
        .thread_name_prefix("taskpool")
        .build();
    let cpu = CpuMeter::new("cpu");
    let task = Task::builder("where", || {
        Ok::<_, HandlerError>(std::thread::current().name().unwrap_or("").to_owned())
    })
    .executor(executor.clone())
    .observer(cpu.clone())
    .build();
    let thread: String = task.call_as(()).await.unwrap();
    assert!(thread.starts_with("taskpool"), "{thread}");
    assert_eq!(cpu.stats().count, 1);
    let failing = Task::builder("fails", || {
        Err::<(), _>(HandlerError::new("ValueError", "no"))
    })
    .executor(executor.clone())
    .build();
    assert_eq!(
        failing.call(()).await.unwrap_err().error_type(),
        "ValueError"
    );
    executor.stop(true).await;
}

#[test]
fn shared_state_updates_from_many_threads_are_atomic() {
    let state = SharedState::new();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let state = state.clone();
            scope.spawn(move || {
                for _ in 0..1000 {
                    state.update("n", |old| {
                        (old.and_then(|v| v.as_i64()).unwrap_or(0) + 1).into()
                    });
                }
            });
        }
    });
    assert_eq!(state.get("n"), Some(4000.into()));
    assert_eq!(state.items(), vec![("n".to_owned(), Value::from(4000))]);
}

#[tokio::test(flavor = "current_thread")]
async fn calls_share_the_task_state() {
    let state = SharedState::new();
    let counted = state.clone();
    let task = Task::builder("count", move || {
        Ok::<_, HandlerError>(counted.update("calls", |old| {
            (old.and_then(|v| v.as_i64()).unwrap_or(0) + 1).into()
        }))
    })
    .state(state.clone())
    .on_complete(|ctx| assert!(ctx.state().get("calls").is_some()))
    .build();
    task.call(()).await.unwrap();
    assert_eq!(task.call(()).await.unwrap(), 2);
    assert_eq!(task.state().get("calls"), Some(2.into()));
    assert_eq!(task.stats().observer_panics, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_that_does_not_fit_is_a_type_error_seen_by_the_observers() {
    let queue = MessageQueue::memory();
    let service = unique("svc");
    let recorder = Recorder::default();
    let task = Task::builder("sum", |a: i64, b: i64| Ok::<_, HandlerError>(a + b))
        .params(["a", "b"])
        .observer(recorder.clone())
        .build();
    let server = RpcServer::new(queue.clone()).service(service.clone());
    task.serve_on(&server);
    server.serve().await.unwrap();
    let client = RpcClient::new(queue.clone()).service(service);
    let error = client
        .method("sum")
        .kwarg("a", 1)
        .kwarg("c", 2)
        .call::<i64>()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("TypeError"), "{error}");
    let hooks: Vec<_> = recorder.take().into_iter().map(|(hook, _)| hook).collect();
    assert_eq!(hooks, ["start", "failure", "complete"]);
    server.stop().await;
    queue.close().await.unwrap();
}
