//! The local side of broker subscriptions, shared by the Redis and NATS
//! transports (the "remote" column of the 2x2 in the crate docs).
//!
//! A broker delivers one copy of a message per broker subscription that
//! matches it. Each distinct broker subscription (a Redis pattern, a NATS
//! subject and queue group) therefore gets its own [`Router`], and every
//! local subscription lives in exactly one of them: overlapping patterns such
//! as `dup.created` and `dup.*` each receive a message once, never twice, and
//! several local patterns that map to the same broker subscription share it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use eventforge_core::{OverflowPolicy, Pattern, Router, Subscription, SubscriptionId};

/// Routers keyed by broker subscription, and which router each local
/// subscription belongs to.
#[derive(Debug)]
pub(crate) struct BrokerSubscriptions<K> {
    // Named in errors and logs.
    transport: &'static str,
    // Buffer size and overflow policy of every local subscription.
    buffer: usize,
    policy: OverflowPolicy,
    // A std mutex: it is never held across an await.
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    routers: HashMap<K, Arc<Router>>,
    // Lets `unsubscribe(id)` and the drop hook find the broker subscription.
    owners: HashMap<SubscriptionId, K>,
    closed: bool,
}

/// What adding a local subscription did.
pub(crate) struct Added {
    /// The local subscription.
    pub subscription: Subscription,
    /// The router of its broker subscription (to feed from the wire).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub router: Arc<Router>,
    /// True when the broker subscription is new and must be made on the broker.
    pub is_new: bool,
}

impl<K: Clone + Eq + Hash> BrokerSubscriptions<K> {
    pub(crate) fn new(transport: &'static str, buffer: usize, policy: OverflowPolicy) -> Self {
        BrokerSubscriptions {
            transport,
            buffer,
            policy,
            state: Mutex::new(State {
                routers: HashMap::new(),
                owners: HashMap::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The router fed by broker subscription `key`, if it exists.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn router(&self, key: &K) -> Option<Arc<Router>> {
        self.lock().routers.get(key).cloned()
    }

    /// Adds a local subscription to `pattern` under broker subscription `key`.
    /// None once closed.
    pub(crate) fn add(&self, key: K, pattern: Pattern) -> Option<Added> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let mut is_new = false;
        let router = Arc::clone(state.routers.entry(key.clone()).or_insert_with(|| {
            is_new = true;
            Router::new(self.transport, self.buffer, self.policy)
        }));
        let subscription = router.subscribe(pattern).ok()?;
        state.owners.insert(subscription.id(), key);
        Some(Added {
            subscription,
            router,
            is_new,
        })
    }

    /// Removes local subscription `id`; returns its broker key when that
    /// broker subscription has no local subscription left (and was removed).
    /// The outer `Option` is None when the id is unknown.
    pub(crate) fn remove(&self, id: SubscriptionId) -> Option<Option<K>> {
        let mut state = self.lock();
        let key = state.owners.remove(&id)?;
        let router = state.routers.get(&key).cloned();
        if let Some(router) = router {
            router.unsubscribe(id);
            if router.stats().subscriptions == 0 {
                state.routers.remove(&key);
                router.close();
                return Some(Some(key));
            }
        }
        Some(None)
    }

    /// Every broker subscription currently needed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn keys(&self) -> Vec<K> {
        self.lock().routers.keys().cloned().collect()
    }

    /// Number of broker subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.lock().routers.len()
    }

    /// Ends every local subscription; later `add`s return None.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.owners.clear();
        for (_, router) in state.routers.drain() {
            router.close();
        }
    }
}
