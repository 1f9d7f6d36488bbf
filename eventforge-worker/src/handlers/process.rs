//! Long-lived handler processes: a pool of children per method, each
//! answering one call at a time over length-prefixed JSON frames on its
//! stdin/stdout (a 4-byte big-endian length, then that many bytes of JSON:
//! the kernel's [`FrameCodec`]).
//!
//! A child that dies (or breaks the framing) fails the call it was
//! answering and is replaced at once, so the pool keeps its size.

use std::process::Stdio;
use std::sync::Arc;

use eventforge_core::frame::FrameCodec;
use eventforge_rpc::{HandlerError, IncomingCall, Outcome};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{read_answer, request_json, MAX_ANSWER};
use crate::error::WorkerError;

/// Calls waiting for a free child, per method: beyond this, callers wait
/// (the RPC server's concurrency limit applies before that).
const QUEUED_CALLS: usize = 1024;

/// A pool of long-lived children serving one method.
///
/// Cheap to clone; the children end when the last clone is dropped (their
/// stdin closes, and they are killed if still running).
#[derive(Debug, Clone)]
pub struct ProcessPool {
    // Calls go to whichever child takes them first.
    jobs: mpsc::Sender<Job>,
    // The method served, for errors and logs.
    method: Arc<str>,
}

#[derive(Debug)]
struct Job {
    request: Value,
    answer: oneshot::Sender<Outcome>,
}

/// One running child and its pipes, framed.
struct RunningChild {
    child: Child,
    requests: FramedWrite<ChildStdin, FrameCodec<Value>>,
    answers: FramedRead<ChildStdout, FrameCodec<Value>>,
}

impl ProcessPool {
    /// Starts `size` children running `sh -c COMMAND` for `method`.
    ///
    /// Fails when the first child cannot be started (so a typo in the
    /// command stops the worker at start-up, not at the first call).
    /// Must be called inside a tokio runtime.
    pub fn start(
        method: impl Into<String>,
        command: impl Into<String>,
        size: usize,
    ) -> Result<Self, WorkerError> {
        let method: Arc<str> = method.into().into();
        let command: Arc<str> = command.into().into();
        let (jobs, queue) = mpsc::channel(QUEUED_CALLS);
        let queue = Arc::new(Mutex::new(queue));
        for slot in 0..size.max(1) {
            let worker = spawn(&command).map_err(|source| WorkerError::Spawn {
                method: method.to_string(),
                command: command.to_string(),
                source,
            })?;
            tokio::spawn(run_slot(
                Arc::clone(&method),
                Arc::clone(&command),
                slot,
                worker,
                Arc::clone(&queue),
            ));
        }
        Ok(ProcessPool { jobs, method })
    }

    /// Answers one call with the first free child.
    pub async fn call(&self, call: IncomingCall) -> Outcome {
        let (answer, reply) = oneshot::channel();
        let job = Job {
            request: request_json(&call),
            answer,
        };
        let gone = || {
            HandlerError::new(
                "HandlerUnavailable",
                format!("the processes serving {} have stopped", self.method),
            )
        };
        self.jobs.send(job).await.map_err(|_| gone())?;
        reply.await.map_err(|_| gone())?
    }
}

fn spawn(command: &str) -> std::io::Result<RunningChild> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // The child's own logs go where the worker's go.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("child pipes missing"));
    };
    // A runaway program cannot make the worker allocate without bound.
    let codec = FrameCodec::json_with_max_frame(MAX_ANSWER);
    Ok(RunningChild {
        child,
        requests: FramedWrite::new(stdin, codec),
        answers: FramedRead::new(stdout, codec),
    })
}

/// One child's life: take a call, exchange frames, answer; replace the
/// child when it fails.
async fn run_slot(
    method: Arc<str>,
    command: Arc<str>,
    slot: usize,
    first: RunningChild,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
) {
    let mut worker = Some(first);
    loop {
        // One idle child waits for the next call, the others for the lock;
        // all of them watch their child, so one that dies while idle is
        // replaced before a call reaches it.
        let next = tokio::select! {
            job = async { queue.lock().await.recv().await } => Next::Call(job),
            status = exit_of(&mut worker) => Next::Exited(status),
        };
        let job = match next {
            Next::Call(Some(job)) => job,
            Next::Call(None) => break,
            Next::Exited(status) => {
                tracing::warn!(
                    %method,
                    slot,
                    status = ?status,
                    "handler process exited while idle; starting a new one"
                );
                worker = match spawn(&command) {
                    Ok(fresh) => Some(fresh),
                    Err(e) => {
                        tracing::error!(%method, slot, error = %e, "could not restart handler process");
                        None
                    }
                };
                continue;
            }
        };
        let current = match worker.take() {
            Some(current) => current,
            None => match spawn(&command) {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::error!(%method, slot, error = %e, "could not restart handler process");
                    let _ = job.answer.send(Err(HandlerError::new(
                        "HandlerUnavailable",
                        format!("could not start {command}: {e}"),
                    )));
                    continue;
                }
            },
        };
        let mut current = current;
        match exchange(&mut current, &job.request).await {
            Ok(answer) => {
                let _ = job.answer.send(read_answer(answer));
                worker = Some(current);
            }
            Err(e) => {
                let status = current.child.try_wait().ok().flatten();
                tracing::warn!(
                    %method,
                    slot,
                    error = %e,
                    status = ?status,
                    "handler process failed; starting a new one"
                );
                let _ = current.child.start_kill();
                let _ = job.answer.send(Err(HandlerError::new(
                    "HandlerCrashed",
                    format!("the process serving {method} failed during the call: {e}"),
                )));
                // Replace it now so the next call does not pay the start.
                match spawn(&command) {
                    Ok(fresh) => worker = Some(fresh),
                    Err(e) => {
                        tracing::error!(%method, slot, error = %e, "could not restart handler process")
                    }
                }
            }
        }
    }
    tracing::debug!(%method, slot, "handler process slot ends");
}

/// What an idle slot woke up for.
enum Next {
    // A call, or `None` when the pool is gone.
    Call(Option<Job>),
    // The child ended by itself.
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// Completes when the slot's child exits; never when there is none.
async fn exit_of(worker: &mut Option<RunningChild>) -> std::io::Result<std::process::ExitStatus> {
    match worker {
        // stdin was taken out of `Child`, so waiting does not close it.
        Some(running) => running.child.wait().await,
        None => std::future::pending().await,
    }
}

/// Sends one request frame and reads one answer frame.
async fn exchange(worker: &mut RunningChild, request: &Value) -> std::io::Result<Value> {
    worker.requests.send(request).await?;
    match worker.answers.next().await {
        Some(answer) => Ok(answer?),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the handler process closed its stdout",
        )),
    }
}
