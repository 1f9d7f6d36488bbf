//! One-shot commands: a new process per call, the request on its stdin,
//! the answer on its stdout. Simple to write (a shell script will do),
//! slower than a [`ProcessPool`](super::ProcessPool) by one process start.

use std::process::Stdio;

use eventforge_rpc::{HandlerError, IncomingCall, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{read_answer, request_json, MAX_ANSWER};

/// Runs `sh -c COMMAND` for each call.
#[derive(Debug, Clone)]
pub struct OneShotCommand {
    // The method served, for logs.
    method: String,
    // Handed to `sh -c`, so pipes and quoting work as in a shell.
    command: String,
}

impl OneShotCommand {
    /// A handler for `method` that runs `command` once per call.
    pub fn new(method: impl Into<String>, command: impl Into<String>) -> Self {
        OneShotCommand {
            method: method.into(),
            command: command.into(),
        }
    }

    /// Runs the command for one call.
    pub async fn call(&self, call: IncomingCall) -> Outcome {
        let fail = |what: String| HandlerError::new("CommandFailed", what);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("could not start {:?}: {e}", self.command)))?;
        let request = serde_json::to_vec(&request_json(&call))
            .map_err(|e| fail(format!("request not encodable: {e}")))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(fail("the command's pipes are missing".to_owned()));
        };
        // Written from its own future so a program that answers before
        // reading all its input cannot deadlock us.
        let write = async move {
            let _ = stdin.write_all(&request).await;
            // Dropping stdin closes it: the program sees end of input.
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = stdout.take(MAX_ANSWER as u64 + 1);
        let mut stderr = stderr.take(64 * 1024);
        let read_out = stdout.read_to_end(&mut out);
        let read_err = stderr.read_to_end(&mut err);
        let ((), read_out, _) = tokio::join!(write, read_out, read_err);
        read_out.map_err(|e| fail(format!("reading the answer: {e}")))?;
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("waiting for the command: {e}")))?;
        if out.len() > MAX_ANSWER {
            return Err(fail(format!("answer larger than {MAX_ANSWER} bytes")));
        }
        if !status.success() && out.iter().all(u8::is_ascii_whitespace) {
            let stderr = String::from_utf8_lossy(&err);
            tracing::warn!(method = %self.method, %status, "one-shot handler failed");
            return Err(fail(format!(
                "{} ({status}): {}",
                self.command,
                stderr.trim()
            )));
        }
        let answer = serde_json::from_slice(&out).map_err(|e| {
            HandlerError::new(
                "HandlerProtocolError",
                format!("the command's output is not JSON: {e}"),
            )
        })?;
        read_answer(answer)
    }
}
