//! The process pool behind [`ExecutorMode::Process`](super::ExecutorMode::Process):
//! each worker slot owns one child process of the same program and feeds it
//! tasks one at a time. A child that dies takes only its task with it.

use std::io::{self, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use super::child::{read_frame, seconds, write_frame, ChildReply, ChildRequest, CHILD_ENV};
use super::result::TaskResult;
use super::store::TaskCell;
use super::thread::WorkerThreads;

/// A task on its way to a child.
pub(crate) struct ProcessJob {
    pub(crate) task_id: String,
    pub(crate) function: String,
    pub(crate) input: Value,
    pub(crate) cell: Arc<TaskCell>,
}

/// How children are started and recycled.
#[derive(Debug, Clone)]
pub(crate) struct ChildSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    // Recycle a child after this many tasks (a leak in a task stays bounded).
    pub(crate) max_tasks_per_child: Option<usize>,
}

/// The pool of [`ExecutorMode::Process`](super::ExecutorMode::Process):
/// one thread per worker slot, each driving its child.
pub(crate) type ChildPool = WorkerThreads<ProcessJob>;

impl ChildPool {
    /// Starts `workers` slots, each starting children as `spec` says.
    pub(crate) fn start_slots(
        workers: usize,
        spec: ChildSpec,
        cancelled: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        Self::start(
            workers,
            |n| format!("eventforge-process-slot-{n}"),
            move |_, receiver| run_slot(&spec, receiver, &cancelled),
        )
    }
}

fn run_slot(
    spec: &ChildSpec,
    receiver: &Mutex<mpsc::Receiver<ProcessJob>>,
    cancelled: &AtomicBool,
) {
    // Started before the first task so that it does not pay for the spawn.
    let mut worker = match ChildWorker::spawn(spec) {
        Ok(worker) => Some(worker),
        Err(error) => {
            tracing::error!(program = %spec.program.display(), %error, "executor child could not start");
            None
        }
    };
    loop {
        let next = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(job) = next else {
            break;
        };
        if cancelled.load(Ordering::Acquire) {
            job.cell.complete(TaskResult::cancelled(job.task_id));
            continue;
        }
        if worker.is_none() {
            match ChildWorker::spawn(spec) {
                Ok(fresh) => worker = Some(fresh),
                Err(error) => {
                    job.cell.complete(TaskResult::failed(
                        job.task_id,
                        "SpawnError",
                        format!(
                            "could not start executor child {}: {error}",
                            spec.program.display()
                        ),
                        Duration::ZERO,
                        None,
                    ));
                    continue;
                }
            }
        }
        let Some(child) = worker.as_mut() else {
            continue;
        };
        let worker_id = format!("process-{}", child.pid);
        match child.run(&job) {
            Ok(reply) => {
                child.tasks += 1;
                let recycle = reply.exiting
                    || spec
                        .max_tasks_per_child
                        .is_some_and(|max| child.tasks >= max);
                job.cell.complete(reply_to_result(reply, worker_id));
                if recycle {
                    if let Some(done) = worker.take() {
                        done.finish();
                    }
                }
            }
            Err(error) => {
                let pid = child.pid;
                // End of stream: the child is exiting by itself; anything
                // else: it lives on but cannot be trusted, so it is killed.
                let exited = error.kind() == io::ErrorKind::UnexpectedEof;
                let status = worker.take().map(|dead| dead.reap(!exited));
                let how = match status {
                    Some(Ok(status)) => describe_exit(status),
                    Some(Err(wait_error)) => format!("could not be waited for: {wait_error}"),
                    None => "is gone".to_owned(),
                };
                tracing::warn!(task_id = %job.task_id, function = %job.function, pid, %error, exit = %how, "executor child died during a task; replacing it");
                job.cell.complete(TaskResult::failed(
                    job.task_id,
                    "WorkerCrashed",
                    format!(
                        "worker process {pid} died while running {}(): it {how} \
                         (if every task ends so, check that the program's main calls \
                         run_child_if_requested first)",
                        job.function
                    ),
                    Duration::ZERO,
                    Some(worker_id),
                ));
            }
        }
    }
    if let Some(child) = worker {
        child.finish();
    }
}

fn reply_to_result(reply: ChildReply, worker_id: String) -> TaskResult {
    let execution_time = seconds(reply.execution_time);
    match reply.error {
        None if reply.error_type.is_none() => {
            TaskResult::completed(reply.task_id, reply.value, execution_time, worker_id)
        }
        error => TaskResult::failed(
            reply.task_id,
            reply.error_type.unwrap_or_else(|| "Error".to_owned()),
            error.unwrap_or_default(),
            execution_time,
            Some(worker_id),
        ),
    }
}

#[cfg(unix)]
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(6)) => "was killed by signal 6 (SIGABRT, the process aborted)".to_owned(),
        (None, Some(9)) => "was killed by signal 9 (SIGKILL)".to_owned(),
        (None, Some(11)) => "was killed by signal 11 (SIGSEGV)".to_owned(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

#[cfg(not(unix))]
fn describe_exit(status: ExitStatus) -> String {
    format!("ended ({status})")
}

/// One running child and the pipes to it.
struct ChildWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    // Tasks run so far, for `max_tasks_per_child`.
    tasks: usize,
}

impl ChildWorker {
    fn spawn(spec: &ChildSpec) -> io::Result<Self> {
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("child pipes missing"));
        };
        tracing::debug!(pid, program = %spec.program.display(), "executor child started");
        Ok(ChildWorker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            pid,
            tasks: 0,
        })
    }

    /// Sends one task and reads its reply; an error means the child is gone
    /// or no longer speaks the protocol.
    fn run(&mut self, job: &ProcessJob) -> io::Result<ChildReply> {
        let request = ChildRequest {
            task_id: job.task_id.clone(),
            function: job.function.clone(),
            input: job.input.clone(),
        };
        write_frame(&mut self.stdin, &request)?;
        read_frame(&mut self.stdout, &mut io::stderr())?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "child closed its stdout"))
    }

    /// Ends a healthy child: closing its stdin makes it exit.
    fn finish(self) {
        let ChildWorker {
            mut child,
            stdin,
            pid,
            ..
        } = self;
        drop(stdin);
        match child.wait() {
            Ok(status) => tracing::debug!(pid, %status, "executor child finished"),
            Err(error) => tracing::warn!(pid, %error, "executor child could not be waited for"),
        }
    }

    /// Collects a dead (or broken) child's exit status, killing it if needed.
    fn reap(self, kill: bool) -> io::Result<ExitStatus> {
        let ChildWorker {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if kill {
            let _ = child.kill();
        }
        child.wait()
    }
}
