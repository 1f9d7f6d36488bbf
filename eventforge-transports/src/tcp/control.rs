//! Control messages: the protocol extension a Rust client and server speak
//! on top of plain v1 frames, to filter what a server sends each client.
//!
//! They travel as ordinary Messages under the `_eventforge.` prefix, so an
//! old (Python) peer treats them as messages nobody subscribed to, and both
//! sides fall back to v1: a client that never declares anything receives
//! everything the server publishes. A Rust client sends declarations only
//! to a server that said hello, so a v1 server never sees them.
//!
//! - `_eventforge.hello` (server → client, first frame): the server filters
//!   by declared subscriptions and acknowledges declarations.
//! - `_eventforge.subscriptions` `{"patterns": [...]}` (client → server):
//!   the complete set, sent on every (re)connect.
//! - `_eventforge.subscribe` / `_eventforge.unsubscribe` `{"pattern": "..."}`.
//! - `_eventforge.ack` (server → client): carries the `correlation_id` of
//!   the declaration it confirms, so a client's `subscribe` returns only
//!   once the server will send it what matches.

use eventforge_core::Message;
use serde_json::{json, Value};

/// Prefix of every control topic.
pub const CONTROL_PREFIX: &str = "_eventforge.";
/// First frame of a server that filters by declared subscriptions.
pub const HELLO: &str = "_eventforge.hello";
/// Replaces the whole set of a client's declared patterns.
pub const SUBSCRIPTIONS: &str = "_eventforge.subscriptions";
/// Adds one declared pattern.
pub const SUBSCRIBE: &str = "_eventforge.subscribe";
/// Removes one declared pattern.
pub const UNSUBSCRIBE: &str = "_eventforge.unsubscribe";
/// Confirms a declaration (same `correlation_id`).
pub const ACK: &str = "_eventforge.ack";

/// Version of this extension, sent in the hello.
const VERSION: u64 = 1;

/// True for topics of control messages, which are never routed to subscribers.
pub fn is_control(topic: &str) -> bool {
    topic.starts_with(CONTROL_PREFIX)
}

/// True for exact reply topics that a client need not declare: the server
/// sends a reply to the connection its request came from.
pub(crate) fn is_reply_topic(pattern: &str) -> bool {
    (pattern.starts_with("_reply.") || pattern.starts_with("_rpc_reply.")) && !pattern.contains('*')
}

pub(crate) fn hello() -> Message {
    Message::from_value(HELLO, json!({ "version": VERSION, "filters": true }))
}

pub(crate) fn subscriptions<'a>(patterns: impl Iterator<Item = &'a str>) -> Message {
    let patterns: Vec<&str> = patterns.collect();
    Message::from_value(SUBSCRIPTIONS, json!({ "patterns": patterns }))
}

pub(crate) fn declare(topic: &'static str, pattern: &str) -> Message {
    Message::from_value(topic, json!({ "pattern": pattern }))
}

pub(crate) fn ack(correlation_id: String) -> Message {
    Message::from_value(ACK, Value::Null).with_correlation_id(correlation_id)
}

/// The single pattern a subscribe/unsubscribe carries.
pub(crate) fn pattern_of(message: &Message) -> Option<&str> {
    message.payload.get("pattern")?.as_str()
}

/// The patterns a `subscriptions` message carries (non-strings skipped).
pub(crate) fn patterns_of(message: &Message) -> impl Iterator<Item = &str> {
    message
        .payload
        .get("patterns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}
