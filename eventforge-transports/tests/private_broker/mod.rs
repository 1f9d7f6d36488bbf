//! A Redis or NATS server of a test's own, on a free loopback port, that the
//! test may kill and restart without touching the shared brokers.

#![allow(dead_code)] // each test file uses the parts it needs

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a broker may take to say it is ready.
const STARTUP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Redis,
    Nats,
}

/// A broker child process, killed when dropped.
pub struct PrivateBroker {
    kind: Kind,
    port: u16,
    // Extra command-line arguments (a password, for example).
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a broker on a free loopback port and waits until it is ready.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, &[]).await
    }

    /// Like [`start`](Self::start), with extra command-line arguments.
    pub async fn start_with(kind: Kind, extra: &[&str]) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address").port()
        };
        let mut broker = PrivateBroker {
            kind,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        broker.launch().await;
        broker
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the broker and starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }

    /// Stops the broker the way an operator does (SIGTERM, then waits for
    /// it to exit), leaving its port free until [`resume`](Self::resume).
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().expect("a running broker has a pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(STARTUP, child.wait()).await {
            Ok(exited) => {
                exited.expect("wait for the broker");
            }
            Err(_) => panic!("the broker did not stop within {STARTUP:?} of SIGTERM"),
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing
    /// sent to it is read, as with a hung server. [`restart`](Self::restart)
    /// ends it.
    pub async fn freeze(&mut self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let pid = child.id().expect("a running broker has a pid").to_string();
        let sent = Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -STOP {pid} failed");
    }

    /// Starts a stopped broker again on the same port and arguments.
    pub async fn resume(&mut self) {
        self.launch().await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill the broker");
        }
    }

    async fn launch(&mut self) {
        let port = self.port.to_string();
        let (program, args, ready_marker): (&str, Vec<&str>, &str) = match self.kind {
            Kind::Redis => (
                "/usr/bin/redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    "",
                ],
                "Ready to accept connections",
            ),
            Kind::Nats => (
                "/usr/sbin/nats-server",
                vec!["-a", "127.0.0.1", "-p", &port],
                "Server is ready",
            ),
        };
        let mut child = Command::new(program)
            .args(&args)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        // Redis logs to stdout, NATS to stderr: watch both for the marker.
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (ready, mut is_ready) = tokio::sync::mpsc::channel::<()>(2);
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let ready = ready.clone();
            let marker = ready_marker.to_owned();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                // Keeps draining after the marker so the broker never blocks on a full pipe.
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains(&marker) {
                        let _ = ready.try_send(());
                    }
                }
            });
        }
        drop(ready);
        match tokio::time::timeout(STARTUP, is_ready.recv()).await {
            Ok(Some(())) => {}
            _ => panic!("{program} on port {port} did not become ready within {STARTUP:?}"),
        }
        self.child = Some(child);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
