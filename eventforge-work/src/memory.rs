//! The in-process work-queue store: jobs live in this process's memory and
//! are gone when it exits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::{BackendStats, Delivery, Receipt, WorkBackend, WorkOptions};
use eventforge_core::error::{Error, Result};
use eventforge_core::message::Message;

/// Jobs kept in this process's memory, with the same semantics as the
/// durable backends: groups, competing consumers, visibility timeout,
/// delayed retries and a size limit.
///
/// A job that arrives while consumers of a group wait goes to the one that
/// has waited longest, so jobs go round-robin among them. Nothing survives the
/// process; use the Redis Streams or JetStream backend for that.
///
/// ```
/// use eventforge_work::{MemoryWorkBackend, WorkQueue};
///
/// let queue = WorkQueue::builder(MemoryWorkBackend::new()).max_retries(5).build();
/// # drop(queue);
/// ```
#[derive(Debug, Default)]
pub struct MemoryWorkBackend {
    topics: Mutex<HashMap<String, Topic>>,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Topic {
    groups: HashMap<String, Group>,
}

#[derive(Debug, Default)]
struct Group {
    ready: VecDeque<Stored>,
    /// Retries waiting for their delay, by due time and a tie-breaking sequence.
    delayed: BTreeMap<(Instant, u64), Stored>,
    in_flight: HashMap<u64, InFlight>,
    /// Visibility deadlines of the deliveries in `in_flight`.
    deadlines: BTreeMap<(Instant, u64), ()>,
    next_sequence: u64,
    /// Consumers waiting for a job, longest-waiting first.
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    consumer: String,
    visibility: Duration,
    hand: oneshot::Sender<Delivery>,
}

#[derive(Debug, Clone)]
struct Stored {
    message: Arc<Message>,
    /// Deliveries made so far.
    deliveries: u32,
}

#[derive(Debug)]
struct InFlight {
    stored: Stored,
    deadline: Instant,
}

/// What a memory receipt carries: where the delivery sits in `in_flight`.
#[derive(Debug, Clone)]
struct Token {
    delivery: u64,
    job_id: String,
}

impl Group {
    fn backlog(&self) -> u64 {
        (self.ready.len() + self.delayed.len() + self.in_flight.len()) as u64
    }

    /// Moves due retries and expired deliveries back to `ready`.
    fn release_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let stored = entry.remove();
            self.ready.push_back(stored);
        }
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (_, delivery) = entry.remove_entry().0;
            if let Some(expired) = self.in_flight.remove(&delivery) {
                tracing::debug!(
                    job_id = %expired.stored.message.id,
                    "visibility timeout passed; the job is handed out again"
                );
                self.ready.push_front(expired.stored);
            }
        }
    }

    /// The next instant at which `release_due` would move something.
    fn next_due(&self) -> Option<Instant> {
        let delayed = self.delayed.keys().next().map(|key| key.0);
        let expiring = self.deadlines.keys().next().map(|key| key.0);
        match (delayed, expiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn sequence(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence
    }

    /// Puts `stored` in flight for `consumer` and makes its delivery.
    fn hand_out(&mut self, mut stored: Stored, to: Recipient<'_>, now: Instant) -> Delivery {
        stored.deliveries += 1;
        let delivery = self.sequence();
        let deadline = now + to.visibility;
        self.deadlines.insert((deadline, delivery), ());
        let message = Message::clone(&stored.message);
        let attempt = stored.deliveries;
        let token = Token {
            delivery,
            job_id: message.id.clone(),
        };
        self.in_flight
            .insert(delivery, InFlight { stored, deadline });
        Delivery {
            message,
            attempt,
            receipt: Receipt::new(to.topic, to.group, to.consumer, token),
        }
    }

    /// Takes back a delivery its consumer never saw, as if never made.
    fn undo(&mut self, delivery: Delivery) {
        let Some(token) = delivery.receipt.token::<Token>() else {
            return;
        };
        if let Some(mut returned) = self.in_flight.remove(&token.delivery) {
            self.deadlines.remove(&(returned.deadline, token.delivery));
            returned.stored.deliveries -= 1;
            self.ready.push_front(returned.stored);
        }
    }

    /// Moves due jobs to `ready` and gives ready jobs to waiting consumers,
    /// longest-waiting first.
    fn dispatch(&mut self, topic: &str, group: &str, now: Instant) {
        self.release_due(now);
        while !self.ready.is_empty() {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            if waiter.hand.is_closed() {
                continue;
            }
            let stored = self.ready.pop_front().expect("checked not empty");
            let to = Recipient {
                topic,
                group,
                consumer: &waiter.consumer,
                visibility: waiter.visibility,
            };
            let delivery = self.hand_out(stored, to, now);
            if let Err(unwanted) = waiter.hand.send(delivery) {
                self.undo(unwanted);
            }
        }
    }
}

/// Who a delivery is for.
#[derive(Clone, Copy)]
struct Recipient<'a> {
    topic: &'a str,
    group: &'a str,
    consumer: &'a str,
    visibility: Duration,
}

/// A consumer's place in a group's line. Leaving it (the receive returned or
/// was cancelled) takes back a job handed over but never read, so a
/// cancelled receive loses nothing.
struct Waiting<'a> {
    backend: &'a MemoryWorkBackend,
    topic: &'a str,
    group: &'a str,
    id: u64,
    hand: oneshot::Receiver<Delivery>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.hand.close();
        let unread = self.hand.try_recv().ok();
        let mut topics = self.backend.lock();
        let Some(state) = topics
            .get_mut(self.topic)
            .and_then(|topic| topic.groups.get_mut(self.group))
        else {
            return;
        };
        state.waiters.retain(|waiter| waiter.id != self.id);
        if let Some(delivery) = unread {
            state.undo(delivery);
            state.dispatch(self.topic, self.group, Instant::now());
        }
    }
}

impl MemoryWorkBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn topics(&self) -> Result<MutexGuard<'_, HashMap<String, Topic>>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("memory work queue"));
        }
        Ok(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        // No code path panics between two updates of the maps, so a
        // poisoned lock still guards consistent state.
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_group<T>(
        &self,
        topic: &str,
        group: &str,
        f: impl FnOnce(&mut Group) -> Result<T>,
    ) -> Result<T> {
        let mut topics = self.topics()?;
        let group = topics
            .entry(topic.to_owned())
            .or_default()
            .groups
            .entry(group.to_owned())
            .or_default();
        f(group)
    }
}

/// Where a receipt's delivery sits, for a receipt this backend made.
fn memory_token(receipt: Receipt) -> Result<(String, String, Token)> {
    let (topic, group) = (receipt.topic.clone(), receipt.group.clone());
    let token = receipt
        .into_token::<Token>()
        .ok_or_else(|| Error::transport("memory", "a receipt of another backend"))?;
    Ok((topic, group, token))
}

#[async_trait]
impl WorkBackend for MemoryWorkBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create_group(
        &self,
        _options: &WorkOptions,
        topic: &str,
        group: &str,
        _from_start: bool,
    ) -> Result<()> {
        // Jobs are copied into each group as they arrive, so a new group has
        // nothing to catch up on: "from the start" of an existing topic
        // would need the acked history, which memory does not keep.
        self.with_group(topic, group, |_| Ok(()))
    }

    async fn enqueue(&self, options: &WorkOptions, job: Message) -> Result<()> {
        let mut topics = self.topics()?;
        let entry = topics.entry(job.topic.clone()).or_default();
        for declared in &options.groups {
            entry.groups.entry(declared.clone()).or_default();
        }
        let now = Instant::now();
        for (name, group) in &mut entry.groups {
            group.release_due(now);
            if group.backlog() >= options.max_size {
                return Err(Error::QueueFull {
                    topic: job.topic.clone(),
                    group: name.clone(),
                    limit: options.max_size,
                });
            }
        }
        let topic = job.topic.clone();
        let message = Arc::new(job);
        for (name, group) in &mut entry.groups {
            group.ready.push_back(Stored {
                message: Arc::clone(&message),
                deliveries: 0,
            });
            group.dispatch(&topic, name, now);
        }
        Ok(())
    }

    async fn receive(
        &self,
        options: &WorkOptions,
        topic: &str,
        group: &str,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>> {
        let give_up = Instant::now() + timeout;
        let to = Recipient {
            topic,
            group,
            consumer,
            visibility: options.visibility_timeout,
        };
        let (hand, waiting, mut wake_at) = {
            let now = Instant::now();
            let mut topics = self.topics()?;
            let state = topics
                .entry(topic.to_owned())
                .or_default()
                .groups
                .entry(group.to_owned())
                .or_default();
            state.dispatch(topic, group, now);
            if let Some(stored) = state.ready.pop_front() {
                return Ok(Some(state.hand_out(stored, to, now)));
            }
            if now >= give_up {
                return Ok(None);
            }
            let (hand, taken) = oneshot::channel();
            let id = state.sequence();
            state.waiters.push_back(Waiter {
                id,
                consumer: consumer.to_owned(),
                visibility: options.visibility_timeout,
                hand,
            });
            let wake_at = state.next_due().map_or(give_up, |due| due.min(give_up));
            (taken, id, wake_at)
        };
        let mut waiting = Waiting {
            backend: self,
            topic,
            group,
            id: waiting,
            hand,
        };
        loop {
            match tokio::time::timeout_at(wake_at, &mut waiting.hand).await {
                Ok(Ok(delivery)) => return Ok(Some(delivery)),
                // The sender went away: the store was closed, or the topic
                // deleted (then there is nothing to wait for).
                Ok(Err(_)) if self.closed.load(Ordering::Acquire) => {
                    return Err(Error::Closed("memory work queue"));
                }
                Ok(Err(_)) => return Ok(None),
                Err(_) => {}
            }
            // A retry came due or a delivery expired: hand it out in line order.
            let now = Instant::now();
            let mut topics = self.topics()?;
            let Some(state) = topics
                .get_mut(topic)
                .and_then(|entry| entry.groups.get_mut(group))
            else {
                return Ok(None);
            };
            state.dispatch(topic, group, now);
            if let Ok(delivery) = waiting.hand.try_recv() {
                return Ok(Some(delivery));
            }
            if now >= give_up {
                return Ok(None);
            }
            wake_at = state.next_due().map_or(give_up, |due| due.min(give_up));
        }
    }

    async fn ack(&self, receipt: Receipt) -> Result<()> {
        let (topic, group, token) = memory_token(receipt)?;
        self.with_group(&topic, &group, |state| {
            match state.in_flight.remove(&token.delivery) {
                Some(done) => {
                    state.deadlines.remove(&(done.deadline, token.delivery));
                    Ok(())
                }
                None => Err(Error::DeliveryExpired {
                    job_id: token.job_id,
                }),
            }
        })
    }

    async fn retry(&self, _options: &WorkOptions, receipt: Receipt, delay: Duration) -> Result<()> {
        let (topic, group, token) = memory_token(receipt)?;
        self.with_group(&topic, &group, |state| {
            let Some(failed) = state.in_flight.remove(&token.delivery) else {
                return Err(Error::DeliveryExpired {
                    job_id: token.job_id,
                });
            };
            state.deadlines.remove(&(failed.deadline, token.delivery));
            if delay.is_zero() {
                // First in line, as the Python peer requeues.
                state.ready.push_front(failed.stored);
            } else {
                let sequence = state.sequence();
                state
                    .delayed
                    .insert((Instant::now() + delay, sequence), failed.stored);
            }
            state.dispatch(&topic, &group, Instant::now());
            Ok(())
        })
    }

    async fn stats(
        &self,
        _options: &WorkOptions,
        topic: &str,
        group: &str,
    ) -> Result<BackendStats> {
        let mut topics = self.topics()?;
        let Some(state) = topics
            .get_mut(topic)
            .and_then(|entry| entry.groups.get_mut(group))
        else {
            return Ok(BackendStats::default());
        };
        state.release_due(Instant::now());
        Ok(BackendStats {
            pending: (state.ready.len() + state.delayed.len()) as u64,
            in_flight: state.in_flight.len() as u64,
        })
    }

    async fn delete_topic(&self, topic: &str) -> Result<bool> {
        // Dropping the groups drops their waiters' senders: a consumer
        // waiting on the topic wakes, finds nothing and waits again.
        Ok(self.topics()?.remove(topic).is_some())
    }

    async fn close(&self) -> Result<()> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let mut topics = self.lock();
            for group in topics
                .values_mut()
                .flat_map(|topic| topic.groups.values_mut())
            {
                // Dropping the senders tells every waiting consumer.
                group.waiters.clear();
            }
        }
        Ok(())
    }
}
