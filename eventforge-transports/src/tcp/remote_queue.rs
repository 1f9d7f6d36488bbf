//! `RemoteQueue`: remote pub-sub in the 2x2 as a push-only switchboard.
//!
//! A node keeps named TCP links to other nodes and pushes messages to one
//! of them or to all; it receives on an optional local [`MessageQueue`]
//! (typically over a [`TcpServerTransport`](super::TcpServerTransport) the
//! other nodes connect to). Nothing is relayed: a message goes to the peer
//! it is sent to.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use eventforge_core::{
    validate_topic, HandlerId, HandlerReturn, IntoPattern, Message, MessageQueue, Subscription,
    Transport,
};
use serde::Serialize;
use tokio::net::ToSocketAddrs;

use super::client::{TcpClientBuilder, TcpClientTransport};
use super::error::RemoteQueueError;
use super::lock;

/// Header naming the node a message was sent from.
pub const SOURCE_NODE_HEADER: &str = "source_node";

/// Sends messages to named peers over TCP, and receives on a local queue.
///
/// ```
/// use eventforge_core::MessageQueue;
/// use eventforge_transports::tcp::{RemoteQueue, TcpServerTransport};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A worker receives on a queue over a TCP server...
/// let server = TcpServerTransport::bind("127.0.0.1:0").await?;
/// let addr = server.local_addr();
/// let worker = RemoteQueue::new("worker-1").with_local(MessageQueue::new(server));
/// let mut jobs = worker.subscribe("jobs.*").await?;
///
/// // ...and a coordinator pushes to it by name.
/// let coordinator = RemoteQueue::new("coordinator");
/// coordinator.connect("worker-1", addr).await?;
/// coordinator.send("worker-1", "jobs.resize", 640).await?;
///
/// let job = jobs.next().await.expect("a job");
/// assert_eq!(job.payload, 640);
/// assert_eq!(job.headers["source_node"], "coordinator");
/// coordinator.close().await?;
/// worker.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RemoteQueue {
    node_id: Arc<str>,
    // Where this node receives; None for a node that only sends.
    local: Option<MessageQueue>,
    peers: Arc<Mutex<HashMap<String, TcpClientTransport>>>,
    // Options of every link this node opens.
    client: TcpClientBuilder,
    closed: Arc<AtomicBool>,
}

impl RemoteQueue {
    /// A node named `node_id`, with no local queue (it can only send).
    pub fn new(node_id: impl Into<String>) -> Self {
        RemoteQueue {
            node_id: Arc::from(node_id.into()),
            local: None,
            peers: Arc::default(),
            client: TcpClientBuilder::default(),
            closed: Arc::default(),
        }
    }

    /// Receives on `queue`: [`subscribe`](Self::subscribe) and
    /// [`on`](Self::on) use it, and [`close`](Self::close) closes it.
    pub fn with_local(mut self, queue: MessageQueue) -> Self {
        self.local = Some(queue);
        self
    }

    /// Options of the links opened by [`connect`](Self::connect).
    pub fn with_client_options(mut self, options: TcpClientBuilder) -> Self {
        self.client = options;
        self
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The local queue, if any.
    pub fn local(&self) -> Option<&MessageQueue> {
        self.local.as_ref()
    }

    /// Opens a link to the node `node_id` listening at `addr`.
    pub async fn connect(
        &self,
        node_id: impl Into<String>,
        addr: impl ToSocketAddrs + std::fmt::Debug,
    ) -> Result<(), RemoteQueueError> {
        self.check_open()?;
        let node_id = node_id.into();
        if self.peers().contains(&node_id) {
            return Err(RemoteQueueError::AlreadyConnected { node_id });
        }
        let link = self.client.clone().connect(addr).await.map_err(|source| {
            RemoteQueueError::Connect {
                node_id: node_id.clone(),
                source,
            }
        })?;
        let raced = {
            let mut peers = self.lock_peers();
            if peers.contains_key(&node_id) {
                Some(link)
            } else {
                tracing::info!(node = %self.node_id, peer = %node_id, addr = %link.server_addr(), "peer connected");
                peers.insert(node_id.clone(), link);
                None
            }
        };
        if let Some(link) = raced {
            let _ = link.close().await;
            return Err(RemoteQueueError::AlreadyConnected { node_id });
        }
        Ok(())
    }

    /// Closes the link to `node_id`; false when there was none.
    pub async fn disconnect(&self, node_id: &str) -> bool {
        let link = self.lock_peers().remove(node_id);
        match link {
            Some(link) => {
                // Closing a client only fails when it was already closed.
                let _ = link.close().await;
                tracing::info!(node = %self.node_id, peer = node_id, "peer disconnected");
                true
            }
            None => false,
        }
    }

    /// Sends `payload` on `topic` to the peer `node_id`; returns the message id.
    ///
    /// Fails with [`RemoteQueueError::UnknownPeer`] when no such peer is
    /// connected, and with a transport error when its link is down.
    pub async fn send(
        &self,
        node_id: &str,
        topic: &str,
        payload: impl Serialize,
    ) -> Result<String, RemoteQueueError> {
        self.check_open()?;
        let message = self.message(topic, payload)?;
        let link = self.lock_peers().get(node_id).cloned().ok_or_else(|| {
            RemoteQueueError::UnknownPeer {
                node_id: node_id.to_owned(),
            }
        })?;
        let id = message.id.clone();
        link.send(message).await?;
        Ok(id)
    }

    /// Sends `payload` on `topic` to every peer; returns each peer's result
    /// (the message id, or why it failed), by peer name.
    pub async fn broadcast(
        &self,
        topic: &str,
        payload: impl Serialize,
    ) -> Result<BTreeMap<String, Result<String, RemoteQueueError>>, RemoteQueueError> {
        self.check_open()?;
        let message = self.message(topic, payload)?;
        let links: Vec<(String, TcpClientTransport)> = self
            .lock_peers()
            .iter()
            .map(|(name, link)| (name.clone(), link.clone()))
            .collect();
        let sends = links.into_iter().map(|(name, link)| {
            let mut message = message.clone();
            message.id = eventforge_core::new_id();
            async move {
                let id = message.id.clone();
                let result = link.send(message).await.map(|()| id).map_err(Into::into);
                (name, result)
            }
        });
        Ok(futures::future::join_all(sends).await.into_iter().collect())
    }

    /// A stream of the messages matching `pattern` on the local queue.
    ///
    /// Fails with [`RemoteQueueError::NoLocalQueue`] without a local queue.
    pub async fn subscribe(
        &self,
        pattern: impl IntoPattern,
    ) -> Result<Subscription, RemoteQueueError> {
        Ok(self.local_queue()?.subscribe(pattern).await?)
    }

    /// Calls `handler` for every message matching `pattern` on the local
    /// queue (see [`MessageQueue::on`]).
    ///
    /// Fails with [`RemoteQueueError::NoLocalQueue`] without a local queue.
    pub async fn on<F, R, K>(
        &self,
        pattern: impl IntoPattern,
        handler: F,
    ) -> Result<HandlerId, RemoteQueueError>
    where
        F: Fn(Arc<Message>) -> R + Send + Sync + 'static,
        R: HandlerReturn<K>,
        K: 'static,
    {
        Ok(self.local_queue()?.on(pattern, handler).await?)
    }

    /// The link to `node_id`, for its state and counters
    /// ([`TcpClientTransport::link_events`], [`TcpClientTransport::stats`]).
    pub fn peer(&self, node_id: &str) -> Option<TcpClientTransport> {
        self.lock_peers().get(node_id).cloned()
    }

    /// Names of the connected peers, sorted.
    pub fn peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self.lock_peers().keys().cloned().collect();
        peers.sort();
        peers
    }

    /// Closes every link and the local queue. Idempotent.
    pub async fn close(&self) -> Result<(), RemoteQueueError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let links: Vec<TcpClientTransport> =
            self.lock_peers().drain().map(|(_, link)| link).collect();
        for link in links {
            link.close().await?;
        }
        if let Some(local) = &self.local {
            local.close().await?;
        }
        Ok(())
    }

    /// True once [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn message(&self, topic: &str, payload: impl Serialize) -> Result<Message, RemoteQueueError> {
        validate_topic(topic)?;
        Ok(Message::new(topic, payload)?.with_header(SOURCE_NODE_HEADER, &*self.node_id))
    }

    fn local_queue(&self) -> Result<&MessageQueue, RemoteQueueError> {
        self.local
            .as_ref()
            .ok_or_else(|| RemoteQueueError::NoLocalQueue {
                node_id: self.node_id.to_string(),
            })
    }

    fn check_open(&self) -> Result<(), RemoteQueueError> {
        if self.is_closed() {
            return Err(RemoteQueueError::Closed {
                node_id: self.node_id.to_string(),
            });
        }
        Ok(())
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, TcpClientTransport>> {
        lock(&self.peers)
    }
}
