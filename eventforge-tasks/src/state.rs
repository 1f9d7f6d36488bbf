//! `SharedState`: values shared by every call of a task.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

/// A map of JSON values shared by every call of a task (and by whoever
/// holds a clone): counters, caches, the last seen id.
///
/// Each operation holds a short lock; [`update`](Self::update) reads and
/// writes one key atomically, so concurrent calls never lose an update.
///
/// ```
/// use eventforge_tasks::SharedState;
///
/// let state = SharedState::new();
/// state.set("seen", 1.into());
/// state.update("seen", |old| (old.and_then(|v| v.as_i64()).unwrap_or(0) + 1).into());
/// assert_eq!(state.get("seen"), Some(2.into()));
/// assert_eq!(state.delete("seen"), Some(2.into()));
/// assert!(state.items().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct SharedState {
    values: Arc<Mutex<HashMap<String, Value>>>,
}

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.items()).finish()
    }
}

impl SharedState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.lock().get(key).cloned()
    }

    /// Sets `key`; returns the value it replaced.
    pub fn set(&self, key: impl Into<String>, value: Value) -> Option<Value> {
        self.lock().insert(key.into(), value)
    }

    /// Replaces the value of `key` by `change(old)` atomically and returns
    /// the new value. `change` runs under the lock: keep it short, and do
    /// not touch this state from inside it.
    pub fn update(&self, key: &str, change: impl FnOnce(Option<Value>) -> Value) -> Value {
        let mut values = self.lock();
        let new = change(values.remove(key));
        values.insert(key.to_owned(), new.clone());
        new
    }

    /// Removes `key`; returns its value.
    pub fn delete(&self, key: &str) -> Option<Value> {
        self.lock().remove(key)
    }

    /// Every key and value, sorted by key.
    pub fn items(&self) -> Vec<(String, Value)> {
        let mut items: Vec<(String, Value)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }
}
