//! [`Worker`]: serves RPC methods on a transport named by a URL, until a
//! signal asks it to drain and stop. The `eventforge worker` command is a
//! `Worker` built from its flags; a Rust binary adds native handlers.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use clap::Parser;
use eventforge_rpc::{IncomingCall, Outcome, RpcHandler, RpcServer};
use futures::future::BoxFuture;

use crate::cli::{split_assignment, WorkerArgs, WorkerCommand};
use crate::config::{MethodConfig, WorkerConfig};
use crate::endpoint::Endpoint;
use crate::error::WorkerError;
use crate::handlers::{Builtin, OneShotCommand, ProcessPool, BUILTINS};

/// Children per `--process` method unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 2;

/// Registers a native handler on the server once it exists.
type NativeHandler = Box<dyn FnOnce(&RpcServer) + Send>;

/// How one method is answered.
enum MethodSource {
    Builtin(Builtin),
    Process { command: String, pool_size: usize },
    Exec(String),
    Native(NativeHandler),
}

impl MethodSource {
    fn kind(&self) -> &'static str {
        match self {
            MethodSource::Builtin(_) => "builtin",
            MethodSource::Process { .. } => "process",
            MethodSource::Exec(_) => "exec",
            MethodSource::Native(_) => "native",
        }
    }
}

/// A worker: a transport URL, a service, and the methods it serves.
///
/// ```no_run
/// use eventforge_worker::Worker;
///
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     // Accepts the flags of `eventforge worker` (URL, --builtin, --exec, ...).
///     Worker::from_args()
///         .handler("double", |n: i64| async move { Ok::<_, String>(n * 2) })
///         .run_main()
///         .await
/// }
/// ```
pub struct Worker {
    // The flags (or their library equivalents) as given.
    args: WorkerArgs,
    // Rust closures registered with `handler`, by method.
    native: Vec<(String, NativeHandler)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let native: Vec<&str> = self.native.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Worker")
            .field("args", &self.args)
            .field("native", &native)
            .finish()
    }
}

impl Worker {
    /// A worker configured by `args`.
    pub fn new(args: WorkerArgs) -> Self {
        Worker {
            args,
            native: Vec::new(),
        }
    }

    /// A worker configured by this process's command line (the flags of
    /// `eventforge worker`, plus `--log-level`/`--log-json`), with logging
    /// set up. On a malformed command line, prints the usage and exits.
    pub fn from_args() -> Self {
        let command = WorkerCommand::parse();
        command.log.init();
        Worker::new(command.worker)
    }

    /// A worker on `url` (library use without a command line).
    pub fn on(url: impl Into<String>) -> Self {
        Worker::new(WorkerArgs {
            url: Some(url.into()),
            ..WorkerArgs::default()
        })
    }

    /// Serves `service` instead of `rpc`.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.args.service = Some(service.into());
        self
    }

    /// Serves the built-in `name` (`echo`, `add`, `sleep`, `whoami`).
    pub fn builtin(mut self, name: impl Into<String>) -> Self {
        self.args.builtin.push(name.into());
        self
    }

    /// Serves `method` with a Rust closure whose arguments are read from
    /// the call's positional arguments (see
    /// [`RpcServer::register`](eventforge_rpc::RpcServer::register)).
    pub fn handler<H, Args>(mut self, method: impl Into<String>, handler: H) -> Self
    where
        H: RpcHandler<Args>,
        Args: 'static,
    {
        let name = method.into();
        let register_as = name.clone();
        self.native.push((
            name,
            Box::new(move |server: &RpcServer| {
                server.register(register_as, handler);
            }),
        ));
        self
    }

    /// Serves until SIGTERM or SIGINT (Ctrl-C), then answers the calls in
    /// flight and returns.
    pub async fn run(self) -> Result<(), WorkerError> {
        self.run_until(shutdown_signal()).await
    }

    /// [`run`](Self::run) for a `main`: logs the error and turns it into
    /// the documented exit code.
    pub async fn run_main(self) -> std::process::ExitCode {
        match self.run().await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("eventforge: error: {error}");
                std::process::ExitCode::from(error.exit_code())
            }
        }
    }

    /// Serves until `shutdown` completes, then drains and returns.
    ///
    /// Prints one line `... listening on URL ...` on stdout once calls are
    /// accepted, so scripts and tests can wait for it.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        let running = self.start().await?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "eventforge worker {} listening on {} service={} methods={}",
                running.id,
                running.url,
                running.server.service_name(),
                running.methods().join(",")
            );
            let _ = out.flush();
        }
        shutdown.await;
        running.stop().await;
        Ok(())
    }

    /// Opens the transport and starts serving; returns once calls are
    /// accepted. Stop it with [`RunningWorker::stop`].
    ///
    /// ```
    /// use eventforge_worker::Worker;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::on("tcp://127.0.0.1:0")
    ///     .handler("double", |n: i64| async move { Ok::<_, String>(n * 2) })
    ///     .start()
    ///     .await?;
    /// assert!(worker.url().starts_with("tcp://127.0.0.1:"));
    /// assert_eq!(worker.methods(), ["double"]);
    /// worker.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(self) -> Result<RunningWorker, WorkerError> {
        let Worker { args, native } = self;
        let config = match &args.config {
            Some(path) => WorkerConfig::load(path)?,
            None => WorkerConfig::default(),
        };
        let id = args
            .id
            .clone()
            .or(config.id.clone())
            .unwrap_or_else(default_id);
        let service = args
            .service
            .clone()
            .or(config.service.clone())
            .unwrap_or_else(|| eventforge_rpc::DEFAULT_SERVICE.to_owned());
        let methods = method_table(&args, &config, &id, native)?;
        let url = args.url.clone().or(config.url.clone()).ok_or_else(|| {
            WorkerError::Invalid(
                "no transport URL: give one (tcp://0.0.0.0:9090, redis://HOST:PORT, nats://HOST:PORT) or set `url` in the config".to_owned(),
            )
        })?;
        let endpoint = Endpoint::parse(&url)?;
        let (queue, bound) = endpoint.serve().await?;
        let mut server = RpcServer::new(queue.clone()).service(service.clone());
        if let Some(limit) = args.max_concurrency.or(config.max_concurrency) {
            server = server.max_concurrency(limit);
        }
        for (method, source) in methods {
            tracing::debug!(%method, kind = source.kind(), "serving method");
            register(&server, method, source)?;
        }
        server.serve().await.map_err(|e| WorkerError::Transport {
            url: bound.clone(),
            reason: e.to_string(),
        })?;
        let names = server.methods().join(",");
        tracing::info!(worker = %id, url = %bound, %service, methods = %names, "worker listening");
        Ok(RunningWorker {
            id,
            url: bound,
            server,
            queue,
        })
    }
}

/// A worker that is serving; [`stop`](Self::stop) drains it.
#[derive(Debug)]
pub struct RunningWorker {
    // Shown in logs, answered by `whoami`.
    id: String,
    // Where callers reach it (the real port when bound to port 0).
    url: String,
    // Owns the handlers (and so the handler processes, which end with it).
    server: RpcServer,
    // Closed after the server has answered what it received.
    queue: eventforge_core::MessageQueue,
}

impl RunningWorker {
    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URL callers use (`tcp://127.0.0.1:41831` for a worker bound to
    /// port 0).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The methods served, sorted.
    pub fn methods(&self) -> Vec<String> {
        self.server.methods()
    }

    /// Stops reading requests, answers those already received, closes the
    /// transport.
    pub async fn stop(self) {
        tracing::info!(worker = %self.id, "stopping: answering calls in flight");
        self.server.stop().await;
        if let Err(error) = self.queue.close().await {
            tracing::warn!(worker = %self.id, %error, "closing the transport");
        }
        let stats = self.server.stats();
        tracing::info!(
            worker = %self.id,
            succeeded = stats.succeeded,
            failed = stats.failed,
            "worker stopped"
        );
    }
}

/// Every method to serve, from the config then the flags (a flag wins over
/// the config for the same name). Fails when there is none.
fn method_table(
    args: &WorkerArgs,
    config: &WorkerConfig,
    id: &str,
    native: Vec<(String, NativeHandler)>,
) -> Result<Vec<(String, MethodSource)>, WorkerError> {
    let default_pool = args
        .pool_size
        .or(config.pool_size)
        .unwrap_or(DEFAULT_POOL_SIZE);
    let builtin = |name: &str| {
        Builtin::named(name, id).ok_or_else(|| {
            WorkerError::Invalid(format!(
                "unknown built-in {name:?}: choose among {}",
                BUILTINS.join(", ")
            ))
        })
    };
    let mut table: Vec<(String, MethodSource)> = Vec::new();
    let mut put = |name: String, source: MethodSource| {
        table.retain(|(existing, _)| *existing != name);
        table.push((name, source));
    };
    for name in &config.builtins {
        put(name.clone(), MethodSource::Builtin(builtin(name)?));
    }
    for (name, method) in &config.methods {
        put(
            name.clone(),
            from_config(name, method, default_pool, &builtin)?,
        );
    }
    for name in &args.builtin {
        put(name.clone(), MethodSource::Builtin(builtin(name)?));
    }
    for spec in &args.process {
        let (name, command) = assignment("--process", spec)?;
        put(
            name,
            MethodSource::Process {
                command,
                pool_size: default_pool,
            },
        );
    }
    for spec in &args.exec {
        let (name, command) = assignment("--exec", spec)?;
        put(name, MethodSource::Exec(command));
    }
    for (name, handler) in native {
        put(name, MethodSource::Native(handler));
    }
    if table.is_empty() {
        return Err(WorkerError::NoHandlers);
    }
    Ok(table)
}

fn from_config(
    name: &str,
    method: &MethodConfig,
    default_pool: usize,
    builtin: &dyn Fn(&str) -> Result<Builtin, WorkerError>,
) -> Result<MethodSource, WorkerError> {
    match (&method.process, &method.exec, &method.builtin) {
        (Some(command), None, None) => Ok(MethodSource::Process {
            command: command.clone(),
            pool_size: method.pool_size.unwrap_or(default_pool),
        }),
        (None, Some(command), None) => Ok(MethodSource::Exec(command.clone())),
        (None, None, Some(builtin_name)) => Ok(MethodSource::Builtin(builtin(builtin_name)?)),
        _ => Err(WorkerError::Invalid(format!(
            "method {name:?} in the config: give exactly one of `process`, `exec` or `builtin`"
        ))),
    }
}

fn assignment(flag: &str, spec: &str) -> Result<(String, String), WorkerError> {
    split_assignment(spec)
        .filter(|(_, command)| !command.trim().is_empty())
        .map(|(name, command)| (name.to_owned(), command.to_owned()))
        .ok_or_else(|| WorkerError::Invalid(format!("{flag} {spec:?}: expected METHOD=COMMAND")))
}

fn register(server: &RpcServer, method: String, source: MethodSource) -> Result<(), WorkerError> {
    let handler: Arc<dyn CallHandler> = match source {
        MethodSource::Builtin(builtin) => Arc::new(builtin),
        MethodSource::Process { command, pool_size } => {
            Arc::new(ProcessPool::start(method.clone(), command, pool_size)?)
        }
        MethodSource::Exec(command) => Arc::new(OneShotCommand::new(method.clone(), command)),
        MethodSource::Native(register) => {
            register(server);
            return Ok(());
        }
    };
    server.register_raw(method, move |call: IncomingCall| {
        let handler = Arc::clone(&handler);
        async move {
            // Lets an operator (and the drain test) see a call begin.
            tracing::debug!(
                method = %call.request.method,
                request_id = %call.request.id,
                message_id = %call.message.id,
                "call started"
            );
            handler.answer(call).await
        }
    });
    Ok(())
}

/// What the built-in and external handlers have in common: they answer a
/// whole call.
trait CallHandler: Send + Sync + 'static {
    fn answer(&self, call: IncomingCall) -> BoxFuture<'_, Outcome>;
}

impl CallHandler for Builtin {
    fn answer(&self, call: IncomingCall) -> BoxFuture<'_, Outcome> {
        Box::pin(self.call(call))
    }
}

impl CallHandler for ProcessPool {
    fn answer(&self, call: IncomingCall) -> BoxFuture<'_, Outcome> {
        Box::pin(self.call(call))
    }
}

impl CallHandler for OneShotCommand {
    fn answer(&self, call: IncomingCall) -> BoxFuture<'_, Outcome> {
        Box::pin(self.call(call))
    }
}

/// `HOST-PID`: tells workers apart in logs and `whoami` answers.
fn default_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
