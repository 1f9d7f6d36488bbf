//! Distributed workers: a demander spreads calls over several `eventforge
//! worker` processes with round-robin and retry, and counts who answered.
//!
//! Start workers (each serving the built-in `whoami`), then run
//!
//! ```text
//! cargo run --example 09_distributed_workers -- --calls 300 \
//!     tcp://127.0.0.1:9101 tcp://127.0.0.1:9102 tcp://127.0.0.1:9103
//! ```
//!
//! Calls are paced (`--interval`, default 10ms) so that a worker can be
//! stopped while they run: prints `halfway` after half of them, per-worker
//! counts at the end, and exits with status 1 if any call was lost.
//! `deploy/local-topology.sh` does all of this, killing one worker at
//! `halfway`.

use std::collections::BTreeMap;
use std::time::Duration;

use eventforge::rpc::{with_retry, RetryPolicy, RoundRobinRpcClient, RpcClient};
use eventforge::transports::tcp::TcpClientTransport;
use eventforge::MessageQueue;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// What the demander was asked to do.
struct Plan {
    calls: usize,
    interval: Duration,
    urls: Vec<String>,
}

fn plan() -> Result<Plan, AnyError> {
    let mut plan = Plan {
        calls: 300,
        interval: Duration::from_millis(10),
        urls: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--calls" => plan.calls = args.next().ok_or("--calls needs a number")?.parse()?,
            "--interval-ms" => {
                let ms: u64 = args.next().ok_or("--interval-ms needs a number")?.parse()?;
                plan.interval = Duration::from_millis(ms);
            }
            url => plan.urls.push(url.to_owned()),
        }
    }
    if plan.urls.is_empty() {
        return Err(
            "usage: 09_distributed_workers [--calls N] [--interval-ms MS] tcp://HOST:PORT..."
                .into(),
        );
    }
    Ok(plan)
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let plan = plan()?;
    let mut members = Vec::new();
    for url in &plan.urls {
        let addr = url
            .strip_prefix("tcp://")
            .ok_or("worker URLs are tcp://HOST:PORT")?;
        let transport = TcpClientTransport::connect(addr).await?;
        members.push(RpcClient::new(MessageQueue::new(transport)).timeout(Duration::from_secs(1)));
    }
    // A call whose worker died goes on to the next one: retry timeouts and
    // transport failures, a few times, quickly.
    let policy = RetryPolicy::new()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(20));
    let workers = with_retry(RoundRobinRpcClient::new(members), policy);

    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = 0;
    let mut pace = tokio::time::interval(plan.interval);
    for call in 0..plan.calls {
        pace.tick().await;
        match workers.call::<String>("whoami", ()).await {
            Ok(worker) => *answered.entry(worker).or_default() += 1,
            Err(error) => {
                lost += 1;
                eprintln!("call {call} lost: {error}");
            }
        }
        if call + 1 == plan.calls / 2 {
            println!("halfway: {} calls made", call + 1);
        }
    }
    for (worker, count) in &answered {
        println!("worker {worker}: {count} calls");
    }
    println!("total: {} answered, {lost} lost", plan.calls - lost);
    if lost > 0 {
        std::process::exit(1);
    }
    Ok(())
}
