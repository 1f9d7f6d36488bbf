//! Waiting for the one answer to something sent: the mechanism behind every
//! request-reply in eventforge.
//!
//! A requester registers what it waits for under a key (a reply topic, an
//! RPC request id, a broker token) before it sends; whoever reads the
//! answers hands each to its key. Replies to the memory transport's
//! requests, RPC replies on a shared reply subscription, Redis and NATS
//! request inboxes, broker round trips and TCP acknowledgements all go
//! through [`ReplyWaiters`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::sync::lock;

/// A table of requests waiting for their answer, keyed by `K`; each answer
/// is a `V`, and each waiter may carry a tag `T` that decides whether an
/// answer is its own ([`complete_if`](Self::complete_if)).
///
/// Cheap to clone: clones share the table. A [`PendingReply`] removes its
/// entry when dropped, so a request that times out or is cancelled leaves
/// nothing behind, and a late answer finds nobody.
///
/// ```
/// use std::time::Duration;
/// use eventforge_core::ReplyWaiters;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventforge_core::Error> {
/// let waiters: ReplyWaiters<u64, String> = ReplyWaiters::new("example");
/// let pending = waiters.wait_for(7)?;
/// // ... the request goes out; its answer comes back on another task:
/// assert!(waiters.complete(&7, "hello".to_owned()));
/// assert_eq!(pending.wait(Duration::from_secs(1), || "an answer".into()).await?, "hello");
/// assert!(!waiters.complete(&7, "again".to_owned()), "nobody waits any more");
/// # Ok(()) }
/// ```
pub struct ReplyWaiters<K, V, T = ()> {
    shared: Arc<Shared<K, V, T>>,
}

struct Shared<K, V, T> {
    // Named in `Error::Closed` ("memory", "redis", "rpc replies", ...).
    owner: &'static str,
    entries: Mutex<HashMap<K, Entry<V, T>>>,
    // Entries in the table: lets `complete` skip the lock when nobody waits,
    // which is the common case on a route that carries other traffic.
    waiting: AtomicUsize,
    // Tells a waiter's entry from a later one registered under the same key,
    // so that dropping the first never removes the second.
    next_ticket: AtomicU64,
    closed: AtomicBool,
}

struct Entry<V, T> {
    ticket: u64,
    tag: T,
    sender: oneshot::Sender<V>,
}

impl<K, V, T> Clone for ReplyWaiters<K, V, T> {
    fn clone(&self) -> Self {
        ReplyWaiters {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, V, T> std::fmt::Debug for ReplyWaiters<K, V, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyWaiters")
            .field("owner", &self.shared.owner)
            .field("waiting", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V> ReplyWaiters<K, V> {
    /// Registers a waiter for the answer under `key`; register before the
    /// request goes out, so that even an immediate answer finds it.
    ///
    /// A second waiter under the same key replaces the first, which then
    /// sees [`Error::Closed`]. Fails with [`Error::Closed`] once
    /// [`close`](Self::close) was called.
    pub fn wait_for(&self, key: K) -> Result<PendingReply<K, V, ()>> {
        self.wait_for_tagged(key, ())
    }
}

impl<K, V, T> ReplyWaiters<K, V, T> {
    /// An empty table; `owner` names it in [`Error::Closed`].
    pub fn new(owner: &'static str) -> Self {
        ReplyWaiters {
            shared: Arc::new(Shared {
                owner,
                entries: Mutex::new(HashMap::new()),
                waiting: AtomicUsize::new(0),
                next_ticket: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// How many requests wait now.
    pub fn len(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// True when no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl<K: Eq + Hash + Clone, V, T> ReplyWaiters<K, V, T> {
    /// Like [`wait_for`](ReplyWaiters::wait_for), with a tag that
    /// [`complete_if`](Self::complete_if) shows to decide whether an answer
    /// is this waiter's (an expected correlation id, say).
    pub fn wait_for_tagged(&self, key: K, tag: T) -> Result<PendingReply<K, V, T>> {
        let (sender, receiver) = oneshot::channel();
        let ticket = self.shared.next_ticket.fetch_add(1, Ordering::Relaxed);
        {
            let mut entries = lock(&self.shared.entries);
            // Checked under the lock so that `close` cannot miss this entry.
            if self.is_closed() {
                return Err(Error::Closed(self.shared.owner));
            }
            let entry = Entry {
                ticket,
                tag,
                sender,
            };
            if entries.insert(key.clone(), entry).is_none() {
                self.shared.waiting.fetch_add(1, Ordering::Release);
            }
        }
        Ok(PendingReply {
            shared: Arc::downgrade(&self.shared),
            owner: self.shared.owner,
            key,
            ticket,
            receiver,
        })
    }

    /// Hands `answer` to the waiter under `key`. False when nobody waits
    /// there (the answer is late, a duplicate, or for someone else) or the
    /// waiter gave up meanwhile; the answer is then dropped.
    pub fn complete<Q>(&self, key: &Q, answer: V) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.complete_if(key, |_| true, answer)
    }

    /// Like [`complete`](Self::complete), but only when `accept` says the
    /// answer belongs to the waiter whose tag it is shown; otherwise the
    /// waiter keeps waiting.
    pub fn complete_if<Q>(&self, key: &Q, accept: impl FnOnce(&T) -> bool, answer: V) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.take_if(key, accept)
            .is_some_and(|waiter| waiter.send(answer))
    }

    /// Takes the waiter under `key` out of the table, to be answered with
    /// [`Waiter::send`] once the key is no longer needed (when the key is
    /// borrowed from the answer itself, say). `None` when nobody waits.
    pub fn take<Q>(&self, key: &Q) -> Option<Waiter<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.take_if(key, |_| true)
    }

    fn take_if<Q>(&self, key: &Q, accept: impl FnOnce(&T) -> bool) -> Option<Waiter<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.is_empty() {
            return None;
        }
        let mut entries = lock(&self.shared.entries);
        if !entries.get(key).is_some_and(|entry| accept(&entry.tag)) {
            return None;
        }
        let entry = entries.remove(key)?;
        self.shared.waiting.fetch_sub(1, Ordering::Release);
        Some(Waiter(entry.sender))
    }

    /// Ends every wait with [`Error::Closed`] and refuses new ones.
    /// Idempotent.
    pub fn close(&self) {
        let mut entries = lock(&self.shared.entries);
        self.shared.closed.store(true, Ordering::Release);
        self.shared
            .waiting
            .fetch_sub(entries.len(), Ordering::Release);
        entries.clear();
    }
}

/// A waiter taken out of its table by [`ReplyWaiters::take`]: the way to
/// hand it its answer.
#[derive(Debug)]
pub struct Waiter<V>(oneshot::Sender<V>);

impl<V> Waiter<V> {
    /// Hands the waiter its answer; false when it gave up meanwhile.
    pub fn send(self, answer: V) -> bool {
        self.0.send(answer).is_ok()
    }
}

/// One request's wait for its answer, made by [`ReplyWaiters::wait_for`].
/// Dropping it (a timeout, a cancelled call) removes its entry.
pub struct PendingReply<K: Eq + Hash, V, T = ()> {
    shared: Weak<Shared<K, V, T>>,
    owner: &'static str,
    key: K,
    ticket: u64,
    receiver: oneshot::Receiver<V>,
}

impl<K: Eq + Hash + std::fmt::Debug, V, T> std::fmt::Debug for PendingReply<K, V, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("owner", &self.owner)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash, V, T> PendingReply<K, V, T> {
    /// The key this request waits under.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Waits up to `timeout` for the answer.
    ///
    /// Fails with [`Error::Timeout`] (naming what was awaited with
    /// `waiting_for`, called only then) when none comes in time, and with
    /// [`Error::Closed`] when the table is closed or another waiter took
    /// the key.
    pub async fn wait(
        mut self,
        timeout: Duration,
        waiting_for: impl FnOnce() -> String,
    ) -> Result<V> {
        match tokio::time::timeout(timeout, &mut self.receiver).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::Closed(self.owner)),
            Err(_) => Err(Error::Timeout {
                waiting_for: waiting_for(),
                timeout,
            }),
        }
    }

    /// Waits for the answer without a deadline of its own (the caller
    /// bounds the wait); `None` when the table is closed or another waiter
    /// took the key.
    pub async fn answer(mut self) -> Option<V> {
        (&mut self.receiver).await.ok()
    }
}

impl<K: Eq + Hash, V, T> Drop for PendingReply<K, V, T> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut entries = lock(&shared.entries);
        if entries
            .get(&self.key)
            .is_some_and(|entry| entry.ticket == self.ticket)
        {
            entries.remove(&self.key);
            shared.waiting.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn an_answer_reaches_its_waiter_once() {
        let waiters = ReplyWaiters::new("test");
        let pending = waiters.wait_for("a".to_owned()).unwrap();
        assert_eq!(waiters.len(), 1);
        assert!(waiters.complete("a", 1));
        assert!(!waiters.complete("a", 2));
        assert_eq!(pending.wait(SOON, String::new).await.unwrap(), 1);
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_nothing_behind() {
        let waiters: ReplyWaiters<u64, ()> = ReplyWaiters::new("test");
        drop(waiters.wait_for(1).unwrap());
        assert!(waiters.is_empty());
        assert!(!waiters.complete(&1, ()));
    }

    #[tokio::test]
    async fn a_timed_out_wait_names_what_it_waited_for_and_is_forgotten() {
        let waiters: ReplyWaiters<u64, ()> = ReplyWaiters::new("test");
        let pending = waiters.wait_for(1).unwrap();
        let error = pending
            .wait(Duration::from_millis(1), || "the answer to 1".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::Timeout { waiting_for, .. } if waiting_for == "the answer to 1"),
            "{error}"
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_tag_refuses_answers_that_are_not_its_own() {
        let waiters = ReplyWaiters::new("test");
        let pending = waiters
            .wait_for_tagged("topic".to_owned(), "id-1".to_owned())
            .unwrap();
        assert!(!waiters.complete_if("topic", |tag| tag == "id-2", 2));
        assert_eq!(waiters.len(), 1, "still waiting");
        assert!(waiters.complete_if("topic", |tag| tag == "id-1", 1));
        assert_eq!(pending.wait(SOON, String::new).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_replaced_waiter_is_closed_and_its_drop_keeps_the_new_one() {
        let waiters = ReplyWaiters::new("test");
        let first = waiters.wait_for(1).unwrap();
        let second = waiters.wait_for(1).unwrap();
        assert!(matches!(
            first.wait(SOON, String::new).await,
            Err(Error::Closed("test"))
        ));
        assert_eq!(waiters.len(), 1);
        assert!(waiters.complete(&1, "two"));
        assert_eq!(second.wait(SOON, String::new).await.unwrap(), "two");
    }

    #[tokio::test]
    async fn close_ends_every_wait_and_refuses_new_ones() {
        let waiters: ReplyWaiters<u64, ()> = ReplyWaiters::new("test");
        let pending = waiters.wait_for(1).unwrap();
        waiters.close();
        waiters.close();
        assert!(matches!(
            pending.wait(SOON, String::new).await,
            Err(Error::Closed("test"))
        ));
        assert!(matches!(waiters.wait_for(2), Err(Error::Closed("test"))));
        assert!(waiters.is_empty());
    }
}
