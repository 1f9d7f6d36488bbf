//! TCP transport figures, each beside a floor measured in the same run.
//!
//! `cargo bench --bench tcp`: client → server and server → client pub-sub
//! (messages/s, beside raw tokio length-prefixed frames of the same bytes),
//! request/reply round trips (median and p99, beside a bare tokio
//! length-prefixed echo of the same bytes), and the server's resident
//! memory while a client floods it.
//!
//! Client and server each run on a thread of their own with a
//! single-threaded runtime, as two processes would, on this 2-core machine.

use std::time::{Duration, Instant};

use bytes::Bytes;
use eventforge::transports::tcp::{SlowClientPolicy, TcpClientTransport, TcpServerTransport};
use eventforge::{Message, MessageQueue, Pattern, Transport};
use eventforge_core::frame::FrameCodec;
use futures::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

const PUBSUB_MESSAGES: u64 = 300_000;
const ROUND_TRIPS: usize = 5_000;
const RUNS: usize = 3;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Serialize)]
struct Tick {
    n: u64,
    kind: &'static str,
}

fn main() -> Result<(), AnyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// True when the section should run: all by default, or those named on
/// the command line (`cargo bench --bench tcp -- up rr inflight`).
fn wanted(section: &str) -> bool {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    names.is_empty() || names.iter().any(|n| n == section)
}

async fn run() -> Result<(), AnyError> {
    println!("eventforge TCP over loopback, {RUNS} runs each, median shown");
    println!();

    let sample = Message::new(
        "bench.data",
        Tick {
            n: 123_456,
            kind: "tick",
        },
    )?;
    let frame = FrameCodec::new().encode_frame(&sample)?;
    println!(
        "pub-sub, {PUBSUB_MESSAGES} messages of {} bytes per run",
        frame.len()
    );
    if wanted("codec") {
        codec_costs(&frame)?;
    }
    if wanted("up") || wanted("down") {
        pub_sub_section(&frame).await?;
    }
    if wanted("rr") {
        request_reply_section().await?;
    }
    if wanted("inflight") {
        rpc_in_flight_section().await?;
    }
    if wanted("memory") {
        println!("server memory while one client floods it for 4 s");
        flood_memory(frame).await?;
    }
    Ok(())
}

async fn pub_sub_section(frame: &Bytes) -> Result<(), AnyError> {
    println!("  (CPU per message is measured per thread: on a loaded machine the rate");
    println!("   is limited by the CPU share each side gets, not by its own cost)");
    let raw = median(RUNS, || raw_one_way(frame.clone(), PUBSUB_MESSAGES)).await?;
    raw.print("raw tokio frames, one way (floor)", None);
    if wanted("up") {
        let up = median(RUNS, || client_to_server(PUBSUB_MESSAGES)).await?;
        up.print("client -> server subscriber", Some(&raw));
    }
    if wanted("down") {
        let down = median(RUNS, || server_to_client(PUBSUB_MESSAGES)).await?;
        down.print("server -> client subscriber", Some(&raw));
    }
    println!();
    Ok(())
}

/// One pub-sub run: the rate, and the CPU time each side spent per message.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    rate: f64,
    sender_cpu: Duration,
    receiver_cpu: Duration,
}

impl Throughput {
    fn new(messages: u64, elapsed: Duration, sender_cpu: Duration, receiver_cpu: Duration) -> Self {
        let n = u32::try_from(messages).unwrap_or(u32::MAX);
        Throughput {
            rate: messages as f64 / elapsed.as_secs_f64(),
            sender_cpu: sender_cpu / n,
            receiver_cpu: receiver_cpu / n,
        }
    }

    /// The rate if each side had a core to itself: the busier side's limit.
    fn dedicated_rate(&self) -> f64 {
        1.0 / self.sender_cpu.max(self.receiver_cpu).as_secs_f64()
    }

    fn print(&self, what: &str, floor: Option<&Throughput>) {
        let share = floor.map_or(String::new(), |f| {
            format!(" ({:.0}% of raw)", 100.0 * self.rate / f.rate)
        });
        println!("  {what:<36} {:>10.0} msg/s{share}", self.rate);
        println!(
            "  {:<36} CPU per message: sender {:.2} µs, receiver {:.2} µs -> {:.0} msg/s with a core per side",
            "",
            micros(self.sender_cpu),
            micros(self.receiver_cpu),
            self.dedicated_rate()
        );
    }
}

/// CPU time the calling thread has used (Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

async fn request_reply_section() -> Result<(), AnyError> {
    println!("request/reply, {ROUND_TRIPS} sequential round trips per run");
    let request = Message::new("bench.echo", Tick { n: 7, kind: "ping" })?
        .with_reply_to(format!("_reply.{}", eventforge::new_id()))
        .with_correlation_id(eventforge::new_id());
    let request_frame = FrameCodec::new().encode_frame(&request)?;
    let mut echo = Vec::new();
    let mut queue = Vec::new();
    let mut rpc = Vec::new();
    for _ in 0..RUNS {
        echo.push(bare_echo(request_frame.clone(), ROUND_TRIPS).await?);
        queue.push(request_reply(ROUND_TRIPS).await?);
        rpc.push(rpc_calls(ROUND_TRIPS).await?);
    }
    let echo = middle(echo);
    let queue = middle(queue);
    let rpc = middle(rpc);
    echo.print("bare tokio echo (floor)", None);
    queue.print("MessageQueue.request", Some(&echo));
    rpc.print("RpcClient.call add(a, b)", Some(&echo));
    println!();
    Ok(())
}

/// Calls kept in flight on one connection by the in-flight section.
const IN_FLIGHT: usize = 64;
/// Calls per in-flight run.
const IN_FLIGHT_CALLS: usize = 100_000;

async fn rpc_in_flight_section() -> Result<(), AnyError> {
    println!("RPC, {IN_FLIGHT} calls in flight on one connection, {IN_FLIGHT_CALLS} calls per run");
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        rates.push(rpc_in_flight(IN_FLIGHT_CALLS).await?);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "  RpcClient.call add(a, b)  {:>10.0} calls/s",
        rates[rates.len() / 2]
    );
    println!();
    Ok(())
}

/// Calls per second with `IN_FLIGHT` calls outstanding at any time, the
/// server on a thread of its own.
async fn rpc_in_flight(n: usize) -> Result<f64, AnyError> {
    use eventforge::rpc::{HandlerError, RpcClient, RpcServer};
    use futures::stream::{self, StreamExt};
    let (addr_tx, addr_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let server = peer(move || async move {
        let transport = TcpServerTransport::bind("127.0.0.1:0").await?;
        let _ = addr_tx.send(transport.local_addr());
        let server = RpcServer::new(MessageQueue::new(transport)).service("math");
        server.register("add", |a: i64, b: i64| async move {
            Ok::<_, HandlerError>(a + b)
        });
        server.serve().await?;
        let _ = done_rx.await;
        server.stop().await;
        Ok(())
    });
    let queue = MessageQueue::new(TcpClientTransport::connect(addr_rx.await?).await?);
    let client = RpcClient::new(queue.clone()).service("math");
    let started = Instant::now();
    let answered = stream::iter(0..n as i64)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .call::<i64>("add", (i, 1))
                    .await
                    .map(|sum| sum == i + 1)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter(|ok| std::future::ready(matches!(ok, Ok(true))))
        .count()
        .await;
    let elapsed = started.elapsed();
    let _ = done_tx.send(());
    joined(server).await?;
    queue.close().await?;
    if answered != n {
        return Err(format!("{} of {n} calls were not answered correctly", n - answered).into());
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

async fn median<F, Fut>(runs: usize, mut measure: F) -> Result<Throughput, AnyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Throughput, AnyError>>,
{
    let mut figures = Vec::with_capacity(runs);
    for _ in 0..runs {
        figures.push(measure().await?);
    }
    figures.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    Ok(figures[figures.len() / 2])
}

/// Round trips of one run: latency percentiles, and the CPU time each
/// side spent per round trip.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
}

impl Latency {
    fn new(mut latencies: Vec<Duration>, client_cpu: Duration, server_cpu: Duration) -> Self {
        latencies.sort();
        let n = u32::try_from(latencies.len()).unwrap_or(u32::MAX).max(1);
        Latency {
            p50: latencies[latencies.len() / 2],
            p99: latencies[latencies.len() * 99 / 100],
            client_cpu: client_cpu / n,
            server_cpu: server_cpu / n,
        }
    }

    fn print(&self, what: &str, floor: Option<&Latency>) {
        let ratio = floor.map_or(String::new(), |f| {
            format!(
                "   ({:.2}x the echo median)",
                self.p50.as_secs_f64() / f.p50.as_secs_f64()
            )
        });
        println!(
            "  {what:<25} p50 {:>7.1} µs   p99 {:>7.1} µs{ratio}",
            micros(self.p50),
            micros(self.p99)
        );
        println!(
            "  {:<25} CPU per round trip: client {:.1} µs, server {:.1} µs",
            "",
            micros(self.client_cpu),
            micros(self.server_cpu)
        );
    }
}

/// The run with the median p50.
fn middle(mut runs: Vec<Latency>) -> Latency {
    runs.sort_by_key(|run| run.p50);
    runs[runs.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `work` on a thread of its own with a single-threaded runtime, as a
/// peer process would run; its result arrives on the returned receiver.
fn peer<F, Fut, T>(work: F) -> oneshot::Receiver<Result<T, AnyError>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, AnyError>>,
    T: Send + 'static,
{
    let (result_tx, result_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AnyError::from)
            .and_then(|runtime| runtime.block_on(work()));
        let _ = result_tx.send(result);
    });
    result_rx
}

async fn joined<T>(peer: oneshot::Receiver<Result<T, AnyError>>) -> Result<T, AnyError> {
    peer.await.map_err(|_| "the peer thread died")?
}

async fn raw_one_way(frame: Bytes, n: u64) -> Result<Throughput, AnyError> {
    let (addr_tx, addr_rx) = oneshot::channel();
    let reader = peer(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let _ = addr_tx.send(listener.local_addr()?);
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let cpu = thread_cpu();
        let mut frames = FramedRead::new(socket, LengthDelimitedCodec::new());
        let mut got = 0;
        while got < n {
            match frames.next().await {
                Some(frame) => {
                    frame?;
                    got += 1;
                }
                None => return Err("stream ended early".into()),
            }
        }
        Ok((Instant::now(), thread_cpu() - cpu))
    });
    let socket = TcpStream::connect(addr_rx.await?).await?;
    socket.set_nodelay(true)?;
    let mut writer = BufWriter::with_capacity(64 * 1024, socket);
    let started = Instant::now();
    let cpu = thread_cpu();
    for _ in 0..n {
        writer.write_all(&frame).await?;
    }
    writer.flush().await?;
    let sender_cpu = thread_cpu() - cpu;
    let (done, receiver_cpu) = joined(reader).await?;
    Ok(Throughput::new(n, done - started, sender_cpu, receiver_cpu))
}

async fn client_to_server(n: u64) -> Result<Throughput, AnyError> {
    let (addr_tx, addr_rx) = oneshot::channel();
    let server = peer(move || async move {
        let server = TcpServerTransport::bind("127.0.0.1:0").await?;
        let mut inbox = server.subscribe(Pattern::parse("bench.data")?).await?;
        let _ = addr_tx.send(server.local_addr());
        let cpu = thread_cpu();
        let got = count(&mut inbox, n).await;
        let done = Instant::now();
        let cpu = thread_cpu() - cpu;
        server.close().await?;
        if got < n {
            return Err(format!("only {got} of {n} messages arrived").into());
        }
        Ok((done, cpu))
    });
    let client = MessageQueue::new(TcpClientTransport::connect(addr_rx.await?).await?);
    let started = Instant::now();
    let cpu = thread_cpu();
    for i in 0..n {
        client
            .publish("bench.data", Tick { n: i, kind: "tick" })
            .await?;
    }
    let (done, receiver_cpu) = joined(server).await?;
    // The client thread idles while it waits: its CPU time is the sending.
    let sender_cpu = thread_cpu() - cpu;
    client.close().await?;
    Ok(Throughput::new(n, done - started, sender_cpu, receiver_cpu))
}

async fn count(inbox: &mut eventforge::Subscription, n: u64) -> u64 {
    let mut got = 0;
    let mut batch = Vec::with_capacity(256);
    while got < n {
        let k = inbox.recv_many(&mut batch, 256).await;
        if k == 0 {
            break;
        }
        got += k as u64;
        batch.clear();
    }
    got
}

async fn server_to_client(n: u64) -> Result<Throughput, AnyError> {
    let (addr_tx, addr_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let server = peer(move || async move {
        // The publisher waits for the client instead of dropping: a
        // throughput figure must count every message.
        let server = TcpServerTransport::builder()
            .slow_client(SlowClientPolicy::Wait)
            .bind("127.0.0.1:0")
            .await?;
        let _ = addr_tx.send(server.local_addr());
        let queue = MessageQueue::new(server);
        go_rx.await?;
        let cpu = thread_cpu();
        for i in 0..n {
            queue
                .publish("bench.data", Tick { n: i, kind: "tick" })
                .await?;
        }
        let _ = done_rx.await;
        let cpu = thread_cpu() - cpu;
        queue.close().await?;
        Ok(cpu)
    });
    let client = TcpClientTransport::connect(addr_rx.await?).await?;
    let mut inbox = client.subscribe(Pattern::parse("bench.data")?).await?;
    let started = Instant::now();
    let cpu = thread_cpu();
    let _ = go_tx.send(());
    let got = count(&mut inbox, n).await;
    let elapsed = started.elapsed();
    let receiver_cpu = thread_cpu() - cpu;
    let _ = done_tx.send(());
    let sender_cpu = joined(server).await?;
    client.close().await?;
    if got < n {
        return Err(format!("only {got} of {n} messages arrived").into());
    }
    Ok(Throughput::new(n, elapsed, sender_cpu, receiver_cpu))
}

async fn request_reply(n: usize) -> Result<Latency, AnyError> {
    let (addr_tx, addr_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let server = peer(move || async move {
        let transport = TcpServerTransport::bind("127.0.0.1:0").await?;
        let _ = addr_tx.send(transport.local_addr());
        let server = MessageQueue::new(transport);
        let responder = server.clone();
        server
            .on("bench.echo", move |msg| {
                let queue = responder.clone();
                async move { queue.reply(&msg, msg.payload.clone()).await }
            })
            .await?;
        let cpu = thread_cpu();
        let _ = done_rx.await;
        let cpu = thread_cpu() - cpu;
        server.close().await?;
        Ok(cpu)
    });
    let client = MessageQueue::new(TcpClientTransport::connect(addr_rx.await?).await?);
    let mut latencies = Vec::with_capacity(n);
    let cpu = thread_cpu();
    for i in 0..n {
        let started = Instant::now();
        let reply = client
            .request(
                "bench.echo",
                Tick {
                    n: i as u64,
                    kind: "ping",
                },
                Duration::from_secs(5),
            )
            .await?;
        latencies.push(started.elapsed());
        debug_assert_eq!(reply.payload["n"], i as u64);
    }
    let client_cpu = thread_cpu() - cpu;
    let _ = done_tx.send(());
    let server_cpu = joined(server).await?;
    client.close().await?;
    Ok(Latency::new(latencies, client_cpu, server_cpu))
}

async fn rpc_calls(n: usize) -> Result<Latency, AnyError> {
    use eventforge::rpc::{HandlerError, RpcClient, RpcServer};
    let (addr_tx, addr_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let server = peer(move || async move {
        let transport = TcpServerTransport::bind("127.0.0.1:0").await?;
        let _ = addr_tx.send(transport.local_addr());
        let server = RpcServer::new(MessageQueue::new(transport)).service("math");
        server.register("add", |a: i64, b: i64| async move {
            Ok::<_, HandlerError>(a + b)
        });
        server.serve().await?;
        let cpu = thread_cpu();
        let _ = done_rx.await;
        let cpu = thread_cpu() - cpu;
        server.stop().await;
        Ok(cpu)
    });
    let queue = MessageQueue::new(TcpClientTransport::connect(addr_rx.await?).await?);
    let client = RpcClient::new(queue.clone()).service("math");
    let mut latencies = Vec::with_capacity(n);
    let cpu = thread_cpu();
    for i in 0..n {
        let started = Instant::now();
        let sum: i64 = client.call("add", (i as i64, 1)).await?;
        latencies.push(started.elapsed());
        debug_assert_eq!(sum, i as i64 + 1);
    }
    let client_cpu = thread_cpu() - cpu;
    let _ = done_tx.send(());
    let server_cpu = joined(server).await?;
    queue.close().await?;
    Ok(Latency::new(latencies, client_cpu, server_cpu))
}

async fn bare_echo(frame: Bytes, n: usize) -> Result<Latency, AnyError> {
    let (addr_tx, addr_rx) = oneshot::channel();
    let echo = peer(move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let _ = addr_tx.send(listener.local_addr()?);
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let cpu = thread_cpu();
        let mut body = Vec::new();
        loop {
            let length = match socket.read_u32().await {
                Ok(length) => length as usize,
                Err(_) => return Ok(thread_cpu() - cpu),
            };
            body.resize(length + 4, 0);
            body[..4].copy_from_slice(&(length as u32).to_be_bytes());
            socket.read_exact(&mut body[4..]).await?;
            socket.write_all(&body).await?;
        }
    });
    let mut socket = TcpStream::connect(addr_rx.await?).await?;
    socket.set_nodelay(true)?;
    let mut latencies = Vec::with_capacity(n);
    let mut back = Vec::new();
    let cpu = thread_cpu();
    for _ in 0..n {
        let started = Instant::now();
        socket.write_all(&frame).await?;
        let length = socket.read_u32().await? as usize;
        back.resize(length, 0);
        socket.read_exact(&mut back).await?;
        latencies.push(started.elapsed());
    }
    let client_cpu = thread_cpu() - cpu;
    drop(socket);
    let server_cpu = joined(echo).await?;
    Ok(Latency::new(latencies, client_cpu, server_cpu))
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

async fn flood_memory(frame: Bytes) -> Result<(), AnyError> {
    let server = TcpServerTransport::bind("127.0.0.1:0").await?;
    let mut inbox = server.subscribe(Pattern::parse("bench.data")?).await?;
    let addr = server.local_addr();
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        let mut batch = Vec::with_capacity(256);
        loop {
            let k = inbox.recv_many(&mut batch, 256).await;
            if k == 0 {
                return got;
            }
            got += k as u64;
            batch.clear();
        }
    });
    // The flooding client writes pre-encoded frames as fast as it can.
    let flooder = tokio::spawn(async move {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let mut writer = BufWriter::with_capacity(64 * 1024, socket);
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(4) {
            for _ in 0..1000 {
                writer.write_all(&frame).await?;
            }
            sent += 1000;
        }
        writer.flush().await?;
        Ok::<u64, std::io::Error>(sent)
    });
    let before = rss_mib();
    let mut samples = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(rss_mib());
    }
    let sent = flooder.await??;
    server.close().await?;
    let got = counter.await?;
    println!(
        "  resident memory: before {:.1} MiB, every 0.5 s: {}",
        before,
        samples
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  ({sent} frames sent, {got} delivered to the subscriber)");
    Ok(())
}

/// Per-message CPU cost of the steps around the socket, one thread.
fn codec_costs(frame: &Bytes) -> Result<(), AnyError> {
    use tokio_util::codec::Decoder;
    const N: u32 = 200_000;
    let codec = FrameCodec::new();
    let started = Instant::now();
    for n in 0..N {
        let message = Message::new(
            "bench.data",
            Tick {
                n: n.into(),
                kind: "tick",
            },
        )?;
        std::hint::black_box(&message);
    }
    let make = started.elapsed() / N;
    let message = Message::new("bench.data", Tick { n: 1, kind: "tick" })?;
    let started = Instant::now();
    for _ in 0..N {
        std::hint::black_box(codec.encode_frame(&message)?);
    }
    let encode = started.elapsed() / N;
    let mut decoder = FrameCodec::new();
    let started = Instant::now();
    for _ in 0..N {
        let mut buf = bytes::BytesMut::from(&frame[..]);
        std::hint::black_box(decoder.decode(&mut buf)?);
    }
    let decode = started.elapsed() / N;
    println!("  per message: Message::new {make:?}, encode {encode:?}, decode {decode:?}");
    Ok(())
}
