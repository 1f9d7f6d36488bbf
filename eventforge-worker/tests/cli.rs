//! The `eventforge` binary as a real process on loopback: worker and call,
//! external handlers, error paths and their exit codes, pub/sub, draining.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_eventforge");

/// Longest wait for a process event; a healthy run takes milliseconds.
const EVENT_DEADLINE: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn handler_script(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "examples",
        "handlers",
        name,
    ]
    .iter()
    .collect();
    format!("python3 {}", path.display())
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `eventforge` process whose stdout and stderr lines are read
/// on threads, so the test can wait for a given line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the eventforge binary starts");
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let send = send.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Running { child, lines }
    }

    /// The first line containing `needle` (panics past the deadline).
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line containing {needle:?}: {e}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit (panics past the deadline).
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit");
            // Polling the exit status: std offers no wait with a deadline.
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker on a free loopback port; returns it and its `tcp://` URL.
fn worker(extra: &[&str]) -> (Running, String) {
    let mut args = vec!["worker", "tcp://127.0.0.1:0"];
    args.extend_from_slice(extra);
    let running = Running::start(&args);
    let line = running.wait_for("listening on ");
    let url = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the line names the URL")
        .to_owned();
    (running, url)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the eventforge binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(output)).unwrap_or_else(|e| {
        panic!(
            "stdout {:?} is not JSON ({e}); stderr: {}",
            stdout(output),
            stderr(output)
        )
    })
}

#[test]
fn call_gets_the_result_of_builtin_methods() {
    let (_worker, url) = worker(&["--builtin", "add", "--builtin", "echo"]);
    let sum = run(&["call", &url, "rpc", "add", "2", "3", "4"]);
    assert_eq!(sum.status.code(), Some(0), "{}", stderr(&sum));
    assert_eq!(json(&sum), serde_json::json!(9));
    let echoed = run(&["call", &url, "rpc", "echo", "hello"]);
    assert_eq!(json(&echoed), serde_json::json!("hello"));
    let named = run(&["call", &url, "rpc", "echo", "[1,2]", "--kwarg", "x=3"]);
    assert_eq!(
        json(&named),
        serde_json::json!({"args": [[1, 2]], "kwargs": {"x": 3}})
    );
}

#[test]
fn worker_serves_the_service_it_is_given() {
    let (_worker, url) = worker(&["--service", "math", "--builtin", "add"]);
    let sum = run(&["call", &url, "math", "add", "1", "1"]);
    assert_eq!(json(&sum), serde_json::json!(2));
}

#[test]
fn long_lived_python_handler_answers_calls() {
    let script = handler_script("process_handler.py");
    let double = format!("double={script}");
    let greet = format!("greet={script}");
    let (_worker, url) = worker(&["--process", &double, "--process", &greet]);
    let doubled = run(&["call", &url, "rpc", "double", "21"]);
    assert_eq!(doubled.status.code(), Some(0), "{}", stderr(&doubled));
    assert_eq!(json(&doubled), serde_json::json!(42));
    let greeted = run(&[
        "call",
        &url,
        "rpc",
        "greet",
        "Ada",
        "--kwarg",
        "greeting=hi",
    ]);
    assert_eq!(json(&greeted), serde_json::json!("hi, Ada"));
}

#[test]
fn python_exception_is_a_remote_error_with_its_class() {
    let fail = format!("fail={}", handler_script("process_handler.py"));
    let (_worker, url) = worker(&["--process", &fail]);
    let output = run(&["call", &url, "rpc", "fail", "bad input"]);
    assert_eq!(output.status.code(), Some(6));
    let text = stderr(&output);
    assert!(
        text.contains("ValueError") && text.contains("bad input"),
        "{text}"
    );
}

#[test]
fn one_shot_python_command_answers_calls() {
    let shout = format!("shout={}", handler_script("oneshot_handler.py"));
    let (_worker, url) = worker(&["--exec", &shout]);
    let output = run(&["call", &url, "rpc", "shout", "hi"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output), serde_json::json!("HI!"));
}

#[test]
fn handler_process_that_dies_is_replaced() {
    let pid = format!("pid={}", handler_script("process_handler.py"));
    let (_worker, url) = worker(&["--pool-size", "1", "--process", &pid]);
    let first = run(&["call", &url, "rpc", "pid"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    // `pid(true)` makes the one process exit in the middle of the call.
    let died = run(&["call", &url, "rpc", "pid", "true"]);
    assert_eq!(died.status.code(), Some(6));
    assert!(
        stderr(&died).contains("HandlerCrashed"),
        "{}",
        stderr(&died)
    );
    let after = run(&["call", &url, "rpc", "pid"]);
    assert_eq!(after.status.code(), Some(0), "{}", stderr(&after));
    assert_ne!(json(&first), json(&after), "a new process answers");
}

#[test]
fn handler_process_killed_while_idle_is_replaced_before_the_next_call() {
    let pid = format!("pid={}", handler_script("process_handler.py"));
    let (worker, url) = worker(&["--pool-size", "1", "--process", &pid]);
    let first = json(&run(&["call", &url, "rpc", "pid"]));
    let status = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    worker.wait_for("exited while idle");
    let after = run(&["call", &url, "rpc", "pid"]);
    assert_eq!(after.status.code(), Some(0), "{}", stderr(&after));
    assert_ne!(first, json(&after));
}

#[test]
fn python_exception_does_not_restart_the_process() {
    let pid = format!("pid={}", handler_script("process_handler.py"));
    let (_worker, url) = worker(&["--pool-size", "1", "--process", &pid]);
    let first = json(&run(&["call", &url, "rpc", "pid"]));
    let rejected = run(&["call", &url, "rpc", "pid", "--kwarg", "unexpected=1"]);
    assert_eq!(rejected.status.code(), Some(6));
    assert!(
        stderr(&rejected).contains("TypeError"),
        "{}",
        stderr(&rejected)
    );
    assert_eq!(first, json(&run(&["call", &url, "rpc", "pid"])));
}

#[test]
fn config_file_declares_methods() {
    let dir = std::env::temp_dir().join(unique("eventforge-config-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("worker.toml");
    let script = handler_script("process_handler.py");
    std::fs::write(
        &config,
        format!(
            "url = \"tcp://127.0.0.1:0\"\nbuiltins = [\"add\"]\n\n[methods.double]\nprocess = \"{script}\"\npool_size = 1\n"
        ),
    )
    .expect("config written");
    let config = config.display().to_string();
    let running = Running::start(&["worker", "--config", &config]);
    let line = running.wait_for("listening on ");
    let url = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the line names the URL")
        .to_owned();
    assert_eq!(
        json(&run(&["call", &url, "rpc", "double", "4"])),
        serde_json::json!(8)
    );
    assert_eq!(
        json(&run(&["call", &url, "rpc", "add", "4", "1"])),
        serde_json::json!(5)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_config_file_is_a_config_error() {
    let output = run(&["worker", "--config", "/nonexistent/eventforge.toml"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("cannot read"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn worker_without_handlers_refuses_to_start() {
    let output = run(&["worker", "tcp://127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("no handler to serve"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_builtin_is_a_config_error() {
    let output = run(&["worker", "tcp://127.0.0.1:0", "--builtin", "nope"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("unknown built-in"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn port_in_use_is_a_transport_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("tcp://{}", taken.local_addr().expect("addr"));
    let output = run(&["worker", &url, "--builtin", "echo"]);
    assert_eq!(output.status.code(), Some(4));
    assert!(
        stderr(&output).contains("could not listen"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unreachable_broker_is_a_transport_error() {
    let output = run(&["worker", "redis://127.0.0.1:1", "--builtin", "echo"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("redis://127.0.0.1:1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn call_to_closed_port_is_a_transport_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("tcp://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let output = run(&["call", &url, "rpc", "echo", "1"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
}

#[test]
fn slow_call_times_out_with_its_own_exit_code() {
    let (_worker, url) = worker(&["--builtin", "sleep"]);
    let output = run(&["call", &url, "rpc", "sleep", "5", "--timeout", "300ms"]);
    assert_eq!(output.status.code(), Some(5));
    assert!(stderr(&output).contains("timed out"), "{}", stderr(&output));
}

#[test]
fn unknown_method_has_its_own_exit_code() {
    let (_worker, url) = worker(&["--builtin", "echo"]);
    let output = run(&["call", &url, "rpc", "nosuch"]);
    assert_eq!(output.status.code(), Some(7));
    assert!(stderr(&output).contains("nosuch"), "{}", stderr(&output));
}

#[test]
fn remote_type_error_is_a_remote_error() {
    let (_worker, url) = worker(&["--builtin", "add"]);
    let output = run(&["call", &url, "rpc", "add", "1", "x"]);
    assert_eq!(output.status.code(), Some(6));
    assert!(stderr(&output).contains("TypeError"), "{}", stderr(&output));
}

#[test]
fn sub_prints_published_messages_and_stops_at_count() {
    let redis = redis_url();
    let topic = unique("clitest.");
    let pattern = format!("{topic}.*");
    let mut sub = Running::start(&["sub", &redis, &pattern, "--count", "2", "--timeout", "20s"]);
    sub.wait_for("subscribed to");
    for (name, payload) in [("a", "{\"n\":1}"), ("b", "plain")] {
        let output = run(&["pub", &redis, &format!("{topic}.{name}"), payload]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    let first: serde_json::Value =
        serde_json::from_str(&sub.wait_for("\"topic\"")).expect("a JSON line");
    let second: serde_json::Value =
        serde_json::from_str(&sub.wait_for("\"topic\"")).expect("a JSON line");
    assert_eq!(first["topic"], format!("{topic}.a"));
    assert_eq!(first["payload"], serde_json::json!({"n": 1}));
    assert_eq!(second["payload"], serde_json::json!("plain"));
    assert_eq!(sub.exit_code(), Some(0));
}

#[test]
fn sub_with_count_times_out_when_messages_are_missing() {
    let pattern = unique("clitest.") + ".*";
    let output = run(&[
        "sub",
        &redis_url(),
        &pattern,
        "--count",
        "1",
        "--timeout",
        "200ms",
    ]);
    assert_eq!(output.status.code(), Some(5));
}

#[test]
fn sigterm_lets_the_call_in_flight_finish() {
    let mut args = vec![
        "--builtin",
        "sleep",
        "--log-level",
        "eventforge_worker=debug",
    ];
    args.push("--id");
    args.push("draining");
    let (mut worker, url) = worker(&args);
    let caller = Command::new(BIN)
        .args(["call", &url, "rpc", "sleep", "1.0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("call starts");
    worker.wait_for("call started");
    worker.signal("TERM");
    let answered = caller.wait_with_output().expect("call ends");
    assert_eq!(answered.status.code(), Some(0), "{}", stderr(&answered));
    assert_eq!(json(&answered), serde_json::json!(1.0));
    assert_eq!(worker.exit_code(), Some(0));
}

#[test]
fn every_subcommand_has_help_and_exit_codes() {
    for sub in ["worker", "call", "pub", "sub"] {
        let output = run(&[sub, "--help"]);
        assert_eq!(output.status.code(), Some(0));
        assert!(stdout(&output).contains("Exit codes"), "{sub}");
    }
    let version = run(&["--version"]);
    assert!(stdout(&version).starts_with("eventforge "));
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A worker on a broker URL; a unique service keeps parallel tests apart.
fn broker_round_trip(url: &str) {
    let service = unique("svc");
    let running = Running::start(&["worker", url, "--service", &service, "--builtin", "add"]);
    running.wait_for("listening on ");
    let output = run(&["call", url, &service, "add", "40", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output), serde_json::json!(42));
}

#[test]
fn worker_and_call_over_redis() {
    broker_round_trip(&redis_url());
}

#[test]
fn worker_and_call_over_nats() {
    broker_round_trip(&nats_url());
}

#[test]
fn call_without_a_server_on_redis_fails_at_once_with_no_responders() {
    let service = unique("nobody");
    let redis = redis_url();
    let started = std::time::Instant::now();
    let output = run(&["call", &redis, &service, "add", "1", "--timeout", "30s"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no server listens for service"),
        "{}",
        stderr(&output)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "waited {:?} instead of failing at once",
        started.elapsed()
    );
}

#[test]
fn log_json_writes_json_lines_with_the_worker_id() {
    let worker = Running::start(&[
        "worker",
        "tcp://127.0.0.1:0",
        "--builtin",
        "echo",
        "--log-json",
        "--id",
        "json-logs",
    ]);
    let line = worker.wait_for("\"worker listening\"");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["fields"]["worker"], "json-logs");
    assert_eq!(event["level"], "INFO");
}
