//! The generic worker over loopback TCP: what each kind of handler costs,
//! each figure beside its floor measured in the same run.
//!
//! - built-in `echo` served by `Worker` vs the same method registered
//!   directly on an `RpcServer` (the worker's layer on top of RPC);
//! - a long-lived Python handler (`--process`) called through the worker vs
//!   the same Python process driven directly over its pipes (the RPC hop);
//! - a one-shot Python command (`--exec`) vs starting that command directly.
//!
//! Run with `cargo bench --bench worker` (about 2 s per figure). Needs python3.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventforge::rpc::{HandlerError, RpcClient, RpcServer};
use eventforge::transports::tcp::{TcpClientTransport, TcpServerTransport};
use eventforge::MessageQueue;
use eventforge_worker::cli::WorkerArgs;
use eventforge_worker::Worker;
use serde_json::{json, Value};

/// 2 s per figure under `cargo bench`, a smoke run otherwise.
static RUN_MILLIS: AtomicU64 = AtomicU64::new(50);

fn run_time() -> Duration {
    Duration::from_millis(RUN_MILLIS.load(Ordering::Relaxed))
}

fn script(name: &str) -> String {
    format!("{}/examples/handlers/{name}", env!("CARGO_MANIFEST_DIR"))
}

struct Run {
    calls: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn line(mut self) -> String {
        self.latencies.sort_unstable();
        let at = |p: f64| {
            let index = ((self.latencies.len().max(1) - 1) as f64 * p).round() as usize;
            self.latencies.get(index).copied().unwrap_or_default()
        };
        format!(
            "{:>9.0}/s  p50 {:>8.1} µs  p99 {:>8.1} µs",
            self.rate(),
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6
        )
    }
}

fn report(label: &str, figure: Run, floor_label: &str, floor: Run) {
    let ratio = figure.rate() / floor.rate();
    println!("{label:<44} {}", figure.line());
    println!(
        "  floor: {floor_label:<35} {}   (figure = {:.0}% of floor)",
        floor.line(),
        ratio * 100.0
    );
}

/// `in_flight` callers calling in a loop for the run time.
async fn concurrent(in_flight: usize, client: RpcClient, method: &'static str) -> Run {
    // Warm-up: every handler process has started before the clock runs.
    let warm_up: Vec<_> = (0..in_flight * 2)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let _: Value = client.call(method, (n as i64,)).await.expect("warm-up");
            })
        })
        .collect();
    for call in warm_up {
        call.await.expect("warm-up");
    }
    let started = Instant::now();
    let callers: Vec<_> = (0..in_flight)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < run_time() {
                    let t = Instant::now();
                    let answer: Value = client.call(method, (n as i64,)).await.expect("call");
                    assert!(!answer.is_null());
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("caller"));
    }
    Run {
        calls: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// Runs `call` in a loop for the run time (blocking work, timed per call).
fn blocking(mut call: impl FnMut()) -> Run {
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < run_time() {
        let t = Instant::now();
        call();
        latencies.push(t.elapsed());
    }
    Run {
        calls: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    }
}

async fn client_for(url: &str) -> RpcClient {
    let addr = url.trim_start_matches("tcp://").to_owned();
    let transport = TcpClientTransport::connect(addr).await.expect("connect");
    RpcClient::new(MessageQueue::new(transport))
}

async fn worker(args: WorkerArgs) -> eventforge_worker::RunningWorker {
    Worker::new(WorkerArgs {
        url: Some("tcp://127.0.0.1:0".to_owned()),
        ..args
    })
    .start()
    .await
    .expect("worker starts")
}

async fn builtin_figures() {
    let running = worker(WorkerArgs {
        builtin: vec!["echo".to_owned()],
        ..WorkerArgs::default()
    })
    .await;
    let figure = concurrent(8, client_for(running.url()).await, "echo").await;
    running.stop().await;

    let server_transport = TcpServerTransport::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("tcp://{}", server_transport.local_addr());
    let server = RpcServer::new(MessageQueue::new(server_transport));
    server.register("echo", |v: Value| Ok::<_, HandlerError>(v));
    server.serve().await.expect("serve");
    let floor = concurrent(8, client_for(&url).await, "echo").await;
    server.stop().await;
    report(
        "built-in echo via Worker, 8 callers",
        figure,
        "RpcServer closure, 8 callers",
        floor,
    );
}

async fn process_figures() {
    let command = format!("double=python3 {}", script("process_handler.py"));
    let running = worker(WorkerArgs {
        process: vec![command.clone()],
        pool_size: Some(1),
        ..WorkerArgs::default()
    })
    .await;
    let figure = concurrent(1, client_for(running.url()).await, "double").await;
    running.stop().await;
    let floor = tokio::task::spawn_blocking(direct_process)
        .await
        .expect("floor");
    report(
        "Python --process, pool 1, 1 caller",
        figure,
        "same script over its pipes",
        floor,
    );

    let running = worker(WorkerArgs {
        process: vec![command],
        pool_size: Some(4),
        ..WorkerArgs::default()
    })
    .await;
    let figure = concurrent(8, client_for(running.url()).await, "double").await;
    running.stop().await;
    println!(
        "{:<44} {}   (Python peer, RPC over TCP with 8 clients: 326/s, p99 54 ms)",
        "Python --process, pool 4, 8 callers",
        figure.line()
    );
}

/// The floor of a long-lived handler: frames written to and read from the
/// Python process directly.
fn direct_process() -> Run {
    let mut child = Command::new("python3")
        .arg(script("process_handler.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let body =
        serde_json::to_vec(&json!({"method": "double", "args": [1], "kwargs": {}})).expect("json");
    let run = blocking(|| {
        stdin
            .write_all(&(body.len() as u32).to_be_bytes())
            .and_then(|()| stdin.write_all(&body))
            .and_then(|()| stdin.flush())
            .expect("write");
        let mut header = [0u8; 4];
        stdout.read_exact(&mut header).expect("read");
        let mut answer = vec![0u8; u32::from_be_bytes(header) as usize];
        stdout.read_exact(&mut answer).expect("read");
    });
    drop(stdin);
    let _ = child.wait();
    run
}

async fn oneshot_figures() {
    let command = format!("shout=python3 {}", script("oneshot_handler.py"));
    let running = worker(WorkerArgs {
        exec: vec![command],
        ..WorkerArgs::default()
    })
    .await;
    let client = client_for(running.url()).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < run_time() {
        let t = Instant::now();
        let _: String = client.call("shout", ("hi",)).await.expect("call");
        latencies.push(t.elapsed());
    }
    let figure = Run {
        calls: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    };
    running.stop().await;
    let floor = tokio::task::spawn_blocking(|| {
        blocking(|| {
            let mut child = Command::new("sh")
                .args(["-c", &format!("python3 {}", script("oneshot_handler.py"))])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 starts");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(br#"{"method":"shout","args":["hi"],"kwargs":{}}"#)
                .expect("write");
            drop(stdin);
            let output = child.wait_with_output().expect("wait");
            assert!(output.status.success());
        })
    })
    .await
    .expect("floor");
    report(
        "Python --exec (one process per call)",
        figure,
        "sh -c python3 script, direct",
        floor,
    );
}

fn main() {
    if std::env::args().any(|arg| arg == "--bench") {
        RUN_MILLIS.store(2000, Ordering::Relaxed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("eventforge worker over loopback TCP");
    runtime.block_on(async {
        builtin_figures().await;
        process_figures().await;
        oneshot_figures().await;
    });
}
