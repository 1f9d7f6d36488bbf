//! The client subcommands: `call`, `pub` and `sub`. Each connects to the
//! URL, does its one thing, prints JSON on stdout and closes.

use std::io::Write;

use eventforge_core::MessageQueue;
use eventforge_rpc::RpcClient;
use serde_json::Value;

use crate::cli::{json_or_string, split_assignment, CallArgs, PubArgs, SubArgs};
use crate::endpoint::Endpoint;
use crate::error::WorkerError;

/// Calls a method and prints its result as one JSON line.
pub async fn call(args: CallArgs) -> Result<(), WorkerError> {
    let endpoint = Endpoint::parse(&args.url)?;
    let queue = endpoint.connect().await?;
    let result = call_on(&queue, &args).await;
    let _ = queue.close().await;
    print_line(&result?);
    Ok(())
}

async fn call_on(queue: &MessageQueue, args: &CallArgs) -> Result<Value, WorkerError> {
    let client = RpcClient::new(queue.clone())
        .service(args.service.clone())
        .timeout(args.timeout);
    let mut call = client.method(args.method.clone());
    for arg in &args.args {
        call = call.arg(json_or_string(arg));
    }
    for spec in &args.kwarg {
        let (name, value) = split_assignment(spec).ok_or_else(|| {
            WorkerError::Invalid(format!("--kwarg {spec:?}: expected NAME=VALUE"))
        })?;
        call = call.kwarg(name, json_or_string(value));
    }
    tracing::debug!(service = %args.service, method = %args.method, "calling");
    Ok(call.call_value().await?)
}

/// Publishes one message and prints its id.
pub async fn publish(args: PubArgs) -> Result<(), WorkerError> {
    let endpoint = Endpoint::parse(&args.url)?;
    let queue = endpoint.connect().await?;
    let sent = queue
        .publish(&args.topic, json_or_string(&args.payload))
        .await
        .map_err(|e| WorkerError::Transport {
            url: endpoint.to_string(),
            reason: e.to_string(),
        });
    let _ = queue.close().await;
    let id = sent?;
    tracing::debug!(topic = %args.topic, message_id = %id, "published");
    print_line(&Value::String(id));
    Ok(())
}

/// Prints each matching message as a JSON line until `--count` messages,
/// `--timeout` or Ctrl-C.
///
/// Announces on stderr, once the subscription is in place, the line
/// `subscribed to PATTERN on URL`: a message published after it is seen.
pub async fn subscribe(args: SubArgs) -> Result<(), WorkerError> {
    let endpoint = Endpoint::parse(&args.url)?;
    let queue = endpoint.connect().await?;
    let result = receive(&queue, &endpoint, &args).await;
    let _ = queue.close().await;
    result
}

async fn receive(
    queue: &MessageQueue,
    endpoint: &Endpoint,
    args: &SubArgs,
) -> Result<(), WorkerError> {
    let mut subscription =
        queue
            .subscribe(args.pattern.as_str())
            .await
            .map_err(|e| WorkerError::Transport {
                url: endpoint.to_string(),
                reason: e.to_string(),
            })?;
    eprintln!("subscribed to {} on {endpoint}", args.pattern);
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen: u64 = 0;
    while args.count.is_none_or(|count| seen < count) {
        let next = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, subscription.recv()).await,
                None => Ok(subscription.recv().await),
            }
        };
        let message = tokio::select! {
            message = next => message,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match message {
            Ok(Some(message)) => {
                seen += 1;
                match serde_json::to_value(&*message) {
                    Ok(line) => print_line(&line),
                    Err(error) => {
                        tracing::warn!(message_id = %message.id, %error, "message not printable")
                    }
                }
            }
            Ok(None) => {
                return Err(WorkerError::Transport {
                    url: endpoint.to_string(),
                    reason: "the subscription ended: the transport closed".to_owned(),
                })
            }
            Err(_elapsed) => {
                return match args.count {
                    Some(count) => Err(WorkerError::Timeout(format!(
                        "received {seen} of {count} messages on {} before the timeout",
                        args.pattern
                    ))),
                    None => Ok(()),
                };
            }
        }
    }
    Ok(())
}

fn print_line(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
