//! `RoundRobinRpcClient`: spreads calls over a pool of clients, typically
//! one per worker, skipping members that are down.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, so that a paused test clock drives cool-downs too.
use tokio::time::Instant;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::args::IntoArgs;
use crate::client::{call_typed, CallBuilder, RpcCall, RpcCaller, RpcClient};
use crate::error::RpcError;
use eventforge_core::sync::lock;

/// How long a member that failed as unreachable is skipped by default.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);

/// Calls members of a pool in turn.
///
/// A member is skipped while it is down: its transport is closed, or its
/// last call failed as unreachable (no responders, a transport failure).
/// After the cool-down it is tried again, and one success brings it back.
/// When every member is down the one that went down first is tried anyway.
/// The pool does not retry by itself: wrap it [`with_retry`](crate::retry::with_retry)
/// so that a failed call goes on to the next member.
///
/// ```
/// use eventforge_rpc::{HandlerError, RoundRobinRpcClient, RpcClient, RpcServer};
/// use eventforge_core::MessageQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = MessageQueue::memory();
/// let (mut servers, mut clients) = (Vec::new(), Vec::new());
/// for worker in ["w1", "w2"] {
///     let server = RpcServer::new(queue.clone()).service(worker);
///     let name = worker.to_owned();
///     server.register("whoami", move || Ok::<_, HandlerError>(name.clone()));
///     server.serve().await?;
///     servers.push(server);
///     clients.push(RpcClient::new(queue.clone()).service(worker));
/// }
/// let pool = RoundRobinRpcClient::new(clients);
/// let first: String = pool.call("whoami", ()).await?;
/// let second: String = pool.call("whoami", ()).await?;
/// assert_ne!(first, second);
/// # Ok(()) }
/// ```
pub struct RoundRobinRpcClient<C = RpcClient> {
    inner: Arc<Pool<C>>,
}

// Clones share the pool (and its rotation); members need not be `Clone`.
impl<C> Clone for RoundRobinRpcClient<C> {
    fn clone(&self) -> Self {
        RoundRobinRpcClient {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Pool<C> {
    members: Vec<Member<C>>,
    // Where the next call starts looking; shared so calls spread evenly.
    next: AtomicUsize,
    cool_down: Duration,
}

struct Member<C> {
    caller: C,
    // Set when a call found the member unreachable; cleared by a success.
    down_since: Mutex<Option<Instant>>,
}

impl<C> fmt::Debug for RoundRobinRpcClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoundRobinRpcClient")
            .field("members", &self.inner.members.len())
            .field("cool_down", &self.inner.cool_down)
            .finish()
    }
}

impl<C: RpcCaller> RoundRobinRpcClient<C> {
    /// A pool over `members` with the default cool-down (1 s).
    pub fn new(members: impl IntoIterator<Item = C>) -> Self {
        Self::with_cool_down(members, DEFAULT_COOL_DOWN)
    }

    /// A pool over `members`; a member found unreachable is skipped for `cool_down`.
    pub fn with_cool_down(members: impl IntoIterator<Item = C>, cool_down: Duration) -> Self {
        RoundRobinRpcClient {
            inner: Arc::new(Pool {
                members: members
                    .into_iter()
                    .map(|caller| Member {
                        caller,
                        down_since: Mutex::new(None),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                cool_down,
            }),
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    /// True when the pool has no member.
    pub fn is_empty(&self) -> bool {
        self.inner.members.is_empty()
    }

    /// Members currently considered up.
    pub fn available(&self) -> usize {
        let now = Instant::now();
        self.inner
            .members
            .iter()
            .filter(|member| self.inner.is_up(member, now))
            .count()
    }

    /// Calls `method` with positional `args` on the next member up.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl IntoArgs,
    ) -> Result<R, RpcError> {
        call_typed(self, method, args).await
    }

    /// A builder for a call with named arguments or its own deadline.
    pub fn method(&self, method: impl Into<String>) -> CallBuilder<'_, Self> {
        CallBuilder::new(self, method)
    }
}

impl<C: RpcCaller> Pool<C> {
    fn is_up(&self, member: &Member<C>, now: Instant) -> bool {
        if !member.caller.is_available() {
            return false;
        }
        match *lock(&member.down_since) {
            None => true,
            Some(since) => now.duration_since(since) >= self.cool_down,
        }
    }

    /// The member to call next: the first one up from the rotation point,
    /// else the reachable one that has been down longest.
    fn pick(&self) -> Option<&Member<C>> {
        let count = self.members.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let now = Instant::now();
        let in_turn = (0..count).map(|offset| &self.members[(start + offset) % count]);
        if let Some(member) = in_turn.clone().find(|member| self.is_up(member, now)) {
            return Some(member);
        }
        in_turn
            .filter(|member| member.caller.is_available())
            .min_by_key(|member| lock(&member.down_since).unwrap_or(now))
    }
}

#[async_trait]
impl<C: RpcCaller> RpcCaller for RoundRobinRpcClient<C> {
    async fn invoke(&self, call: RpcCall) -> Result<Value, RpcError> {
        let Some(member) = self.inner.pick() else {
            return Err(RpcError::Closed);
        };
        let method = call.method.clone();
        let result = match member.caller.invoke(call).await {
            // One member's closed link is not the pool's: report it as a
            // transport failure, which a retry policy sends to the next member.
            Err(RpcError::Closed) => Err(RpcError::Transport {
                method,
                source: eventforge_core::Error::Closed("rpc pool member"),
            }),
            other => other,
        };
        let mut down_since = lock(&member.down_since);
        match &result {
            Err(error) if error.is_unreachable() => {
                if down_since.is_none() {
                    tracing::debug!(%error, "rpc pool member is down; skipping it for a while");
                }
                *down_since = Some(Instant::now());
            }
            _ => *down_since = None,
        }
        result
    }

    fn is_available(&self) -> bool {
        self.inner
            .members
            .iter()
            .any(|member| member.caller.is_available())
    }
}
