//! How RPC replies find their caller.
//!
//! The protocol fixes each reply's topic: `_rpc_reply.<request id>`. A
//! client can subscribe to that topic for each call ([`ReplyRouting::PerCall`])
//! or hold one subscription to `_rpc_reply.*` per transport and hand each
//! reply to its waiting call by request id ([`ReplyRouting::Shared`]).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use tokio::task::JoinHandle;

use crate::wire::RPC_REPLY_PREFIX;
use eventforge_core::error::Result;
use eventforge_core::message::Message;
use eventforge_core::reply_waiter::{PendingReply, ReplyWaiters};
use eventforge_core::sync::lock;
use eventforge_core::topic::Pattern;
use eventforge_core::transport::Transport;

/// How an [`RpcClient`](crate::RpcClient) receives its replies. Both are
/// correct with any server, Python ones included; they differ in cost.
///
/// A client picks [`ReplyRouting::for_transport`] unless told otherwise:
/// `Shared` on memory and TCP, `PerCall` on a shared broker (Redis, NATS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplyRouting {
    /// One subscription to `_rpc_reply.*` per transport in this process,
    /// shared by every client on it; replies are matched to calls by
    /// request id. No subscribe per call, so the fastest on memory and TCP.
    /// On a broker every process holding such a subscription also receives
    /// (and drops) the replies meant for other processes.
    #[default]
    Shared,
    /// A subscription to the call's own reply topic, made before the
    /// request is sent, through [`Transport::request`]: a broker delivers
    /// each reply to its caller only, and transports with a native
    /// request/reply (NATS "no responders") use it.
    PerCall,
}

impl ReplyRouting {
    /// The cheaper routing that keeps other processes' replies away:
    /// `PerCall` when the transport is a broker shared with other processes
    /// ([`Capabilities::shared_broker`](eventforge_core::Capabilities::shared_broker)),
    /// `Shared` otherwise.
    pub fn for_transport(transport: &dyn Transport) -> Self {
        if transport.capabilities().shared_broker {
            ReplyRouting::PerCall
        } else {
            ReplyRouting::Shared
        }
    }
}

/// The shared `_rpc_reply.*` subscription of one transport and the calls
/// waiting on it.
pub(crate) struct ReplyDemux {
    waiters: ReplyWaiters<String, Arc<Message>>,
    // Reads the subscription; aborted when the last client lets go.
    task: JoinHandle<()>,
}

impl Drop for ReplyDemux {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplyDemux {
    /// The demux of `transport`, shared by every client on it in this process.
    pub(crate) async fn of(transport: &Arc<dyn Transport>) -> Result<Arc<ReplyDemux>> {
        // Keyed by the transport's address; the demux holds the transport
        // (through its subscription task), so the address stays taken while
        // the entry is alive.
        let key = Arc::as_ptr(transport) as *const () as usize;
        if let Some(live) = Self::registered(key) {
            return Ok(live);
        }
        let pattern = Pattern::parse(&format!("{RPC_REPLY_PREFIX}*"))?;
        let mut subscription = transport.subscribe(pattern).await?;
        let waiters = ReplyWaiters::new("transport");
        let routing = waiters.clone();
        let keep_alive = Arc::clone(transport);
        let task = tokio::spawn(async move {
            let _transport = keep_alive;
            while let Some(reply) = subscription.recv().await {
                let Some(request_id) = reply.topic.strip_prefix(RPC_REPLY_PREFIX) else {
                    continue;
                };
                match routing.take(request_id) {
                    // The reply moves to its call: the only holder left, the
                    // call can take its payload without a copy.
                    Some(waiter) => {
                        waiter.send(reply);
                    }
                    None => tracing::trace!(
                        request_id,
                        "rpc reply for no waiting call here (late, or another process's)"
                    ),
                }
            }
            // The transport closed: waiting calls end with Error::Closed.
            routing.close();
        });
        let demux = Arc::new(ReplyDemux { waiters, task });
        let mut registry = registry();
        registry.retain(|_, entry| entry.strong_count() > 0);
        if let Some(raced) = registry
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|demux| demux.is_alive())
        {
            return Ok(raced);
        }
        registry.insert(key, Arc::downgrade(&demux));
        Ok(demux)
    }

    fn registered(key: usize) -> Option<Arc<ReplyDemux>> {
        registry()
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|demux| demux.is_alive())
    }

    /// False once its subscription ended (the transport closed) or its task
    /// was dropped with the runtime that ran it; a new one is then needed.
    pub(crate) fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// Registers a call before its request is sent; dropping what it
    /// returns (a timeout, a cancelled call) forgets the call, so a late
    /// reply finds nobody and nothing is kept.
    pub(crate) fn wait_for(&self, request_id: &str) -> Result<PendingReply<String, Arc<Message>>> {
        self.waiters.wait_for(request_id.to_owned())
    }

    /// Calls waiting for a reply.
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

fn registry() -> std::sync::MutexGuard<'static, HashMap<usize, Weak<ReplyDemux>>> {
    static REGISTRY: LazyLock<Mutex<HashMap<usize, Weak<ReplyDemux>>>> =
        LazyLock::new(Mutex::default);
    lock(&REGISTRY)
}
