//! Dispatchers: one call spread over several tasks ([`DispatchNode`]s) by a
//! strategy: to all of them in turn or at once, or to one chosen by
//! round-robin or by least load.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::Task;
use eventforge_rpc::wire::TYPE_ERROR;
use eventforge_rpc::{HandlerError, IntoArgs, Outcome};

/// Error type of a dispatch that found no node with free capacity.
pub const NO_CAPACITY: &str = "NoCapacity";

/// A task with a capacity: how many calls it takes at once through a
/// [`Dispatcher`]. Cheap to clone (clones share the load).
///
/// ```
/// use eventforge_rpc::HandlerError;
/// use eventforge_tasks::{DispatchNode, Task};
///
/// let node = DispatchNode::new(Task::builder("work", || Ok::<_, HandlerError>(1)).build()).capacity(1);
/// let held = node.try_reserve().unwrap();
/// assert!(node.try_reserve().is_none(), "full");
/// drop(held);
/// assert_eq!(node.load(), 0);
/// ```
#[derive(Clone)]
pub struct DispatchNode {
    task: Task,
    capacity: usize,
    // Calls reserved on this node now; only ever changed by compare-and-swap
    // (reserve) and by dropping a reservation (release).
    load: Arc<AtomicUsize>,
}

impl fmt::Debug for DispatchNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchNode")
            .field("task", &self.task.name())
            .field("load", &self.load())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A call reserved on a [`DispatchNode`]; dropping it releases the slot.
#[derive(Debug)]
pub struct Reservation {
    load: Arc<AtomicUsize>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DispatchNode {
    /// A node running `task`, with unbounded capacity until [`capacity`](Self::capacity).
    pub fn new(task: Task) -> Self {
        DispatchNode {
            task,
            capacity: usize::MAX,
            load: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// At most `calls` calls at once (at least 1).
    pub fn capacity(mut self, calls: usize) -> Self {
        self.capacity = calls.max(1);
        self
    }

    /// The node's task.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The node's name: its task's name.
    pub fn name(&self) -> &str {
        self.task.name()
    }

    /// Calls reserved now.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Acquire)
    }

    /// The capacity.
    pub fn max_load(&self) -> usize {
        self.capacity
    }

    /// Reserves one call slot atomically; `None` when the node is full.
    pub fn try_reserve(&self) -> Option<Reservation> {
        self.load
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |load| {
                (load < self.capacity).then_some(load + 1)
            })
            .ok()?;
        Some(Reservation {
            load: Arc::clone(&self.load),
        })
    }

    // Load as a fraction of capacity, for least-loaded choice.
    fn fill(&self) -> f64 {
        self.load() as f64 / self.capacity as f64
    }

    async fn call(&self, args: Vec<Value>, _held: Reservation) -> DispatchOutcome {
        DispatchOutcome {
            node: self.name().to_owned(),
            outcome: self.task.call(args).await,
        }
    }
}

/// How a [`Dispatcher`] spreads a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DispatchStrategy {
    /// Every node, one after the other, in order.
    Broadcast,
    /// Every node at once.
    Concurrent,
    /// One node, the next in turn that has free capacity.
    RoundRobin,
    /// One node, the one with the lowest load for its capacity.
    LeastLoaded,
}

/// The outcome of a dispatched call on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchOutcome {
    /// The node's name.
    pub node: String,
    /// Its result or error.
    pub outcome: Outcome,
}

/// Spreads calls over [`DispatchNode`]s by a [`DispatchStrategy`]. Cheap to clone.
///
/// A node that is full is skipped (broadcast and concurrent dispatch report
/// it as a [`NO_CAPACITY`] outcome; round-robin and least-loaded pick
/// another, and fail with [`NO_CAPACITY`] only when every node is full).
///
/// ```
/// use eventforge_rpc::HandlerError;
/// use eventforge_tasks::{DispatchStrategy, Dispatcher, DispatchNode, Task};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let node = |name: &str| DispatchNode::new(Task::builder(name, |x: i64| Ok::<_, HandlerError>(x)).build());
/// let dispatcher = Dispatcher::new(DispatchStrategy::RoundRobin, vec![node("a"), node("b")]);
/// let first = dispatcher.dispatch((1,)).await;
/// let second = dispatcher.dispatch((2,)).await;
/// assert_eq!((first[0].node.as_str(), second[0].node.as_str()), ("a", "b"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Dispatcher {
    strategy: DispatchStrategy,
    nodes: Arc<[DispatchNode]>,
    // Where round-robin starts looking next.
    next: Arc<AtomicUsize>,
}

impl Dispatcher {
    /// A dispatcher over `nodes` with `strategy`.
    pub fn new(strategy: DispatchStrategy, nodes: Vec<DispatchNode>) -> Self {
        Dispatcher {
            strategy,
            nodes: nodes.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[DispatchNode] {
        &self.nodes
    }

    /// The strategy.
    pub fn strategy(&self) -> DispatchStrategy {
        self.strategy
    }

    /// Calls the nodes the strategy picks with positional `args`; one
    /// outcome per node called (one for round-robin and least-loaded).
    pub async fn dispatch(&self, args: impl IntoArgs) -> Vec<DispatchOutcome> {
        let args = match args.into_args() {
            Ok(args) => args,
            Err(error) => {
                return vec![DispatchOutcome {
                    node: String::new(),
                    outcome: Err(HandlerError::new(
                        TYPE_ERROR,
                        format!("arguments are not JSON: {error}"),
                    )),
                }]
            }
        };
        match self.strategy {
            DispatchStrategy::Broadcast => {
                let mut outcomes = Vec::with_capacity(self.nodes.len());
                for node in self.nodes.iter() {
                    outcomes.push(match node.try_reserve() {
                        Some(held) => node.call(args.clone(), held).await,
                        None => full(node),
                    });
                }
                outcomes
            }
            DispatchStrategy::Concurrent => {
                let calls = self.nodes.iter().map(|node| {
                    let args = args.clone();
                    async move {
                        match node.try_reserve() {
                            Some(held) => node.call(args, held).await,
                            None => full(node),
                        }
                    }
                });
                futures::future::join_all(calls).await
            }
            DispatchStrategy::RoundRobin => match self.reserve_round_robin() {
                Some((node, held)) => vec![node.call(args, held).await],
                None => vec![self.no_capacity()],
            },
            DispatchStrategy::LeastLoaded => match self.reserve_least_loaded() {
                Some((node, held)) => vec![node.call(args, held).await],
                None => vec![self.no_capacity()],
            },
        }
    }

    fn reserve_round_robin(&self) -> Option<(&DispatchNode, Reservation)> {
        let count = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).find_map(|step| {
            let node = &self.nodes[(start + step) % count];
            let held = node.try_reserve()?;
            Some((node, held))
        })
    }

    fn reserve_least_loaded(&self) -> Option<(&DispatchNode, Reservation)> {
        // Another caller may fill the emptiest node between the look and the
        // reservation: then the next emptiest is tried.
        let mut order: Vec<&DispatchNode> = self.nodes.iter().collect();
        order.sort_by(|a, b| a.fill().total_cmp(&b.fill()));
        order
            .into_iter()
            .find_map(|node| Some((node, node.try_reserve()?)))
    }

    fn no_capacity(&self) -> DispatchOutcome {
        DispatchOutcome {
            node: String::new(),
            outcome: Err(HandlerError::new(
                NO_CAPACITY,
                format!("all {} nodes are at capacity", self.nodes.len()),
            )),
        }
    }
}

fn full(node: &DispatchNode) -> DispatchOutcome {
    DispatchOutcome {
        node: node.name().to_owned(),
        outcome: Err(HandlerError::new(
            NO_CAPACITY,
            format!("node {} is at capacity ({})", node.name(), node.capacity),
        )),
    }
}
