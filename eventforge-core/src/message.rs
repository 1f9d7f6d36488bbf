//! The one envelope every transport carries.
//!
//! A [`Message`] is the same in-process and on the wire: transports that
//! cross a process boundary serialise it to the JSON object of the protocol
//! (field for field what the Python eventforge writes); the memory transport
//! hands the value itself to subscribers, without serialising.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Message headers: string keys, any JSON values.
pub type Headers = Map<String, Value>;

/// A message: a payload sent to a topic, with headers and reply routing.
///
/// Serialises to exactly the JSON object of the eventforge protocol:
/// `id`, `topic`, `payload`, `headers`, `timestamp` (UTC, microseconds, `Z`),
/// `reply_to`, `correlation_id`. Reading is lenient like the Python reader:
/// every field but `topic` may be missing (it takes its default), unknown
/// fields are ignored, and timestamps with an offset or without fractional
/// seconds parse.
///
/// ```
/// use eventforge_core::Message;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Login { user: String }
///
/// let msg = Message::new("events.user", &Login { user: "alice".into() })?
///     .with_header("trace", "t-1");
/// assert_eq!(msg.payload_as::<Login>()?, Login { user: "alice".into() });
///
/// let json = msg.to_json()?;
/// let back = Message::from_json(&json)?;
/// assert_eq!(back, msg);
/// # Ok::<(), eventforge_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id, a UUID v4 in canonical hyphenated form, made by the sender.
    #[serde(default = "new_id")]
    pub id: String,
    /// The concrete topic the message was published on (never a pattern).
    pub topic: String,
    /// Any JSON value, `null` included.
    #[serde(default)]
    pub payload: Value,
    /// Metadata; `{}` when empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub headers: Headers,
    /// When the sender made the message.
    #[serde(
        default = "now",
        serialize_with = "write_timestamp",
        deserialize_with = "read_timestamp"
    )]
    pub timestamp: DateTime<Utc>,
    /// Topic where a reply is expected, if any.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Ties a reply to its request.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// The current time at the precision the wire carries (microseconds), so a
/// message reads back equal to itself.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A fresh message id: a UUID v4 in canonical hyphenated form.
pub fn new_id() -> String {
    // Encoding into a stack buffer skips the formatting machinery of `to_string`.
    let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}

impl Message {
    /// A message on `topic` carrying `payload` turned into JSON.
    ///
    /// Fails with [`Error::Encode`] when the payload cannot be represented as
    /// JSON (a map with non-string keys, for example).
    pub fn new(topic: impl Into<String>, payload: impl Serialize) -> Result<Self> {
        let payload = serde_json::to_value(payload).map_err(|source| Error::Encode {
            what: "payload",
            source,
        })?;
        Ok(Self::from_value(topic, payload))
    }

    /// A message on `topic` carrying a payload that is already JSON.
    pub fn from_value(topic: impl Into<String>, payload: Value) -> Self {
        Message {
            id: new_id(),
            topic: topic.into(),
            payload,
            headers: Headers::new(),
            timestamp: now(),
            reply_to: None,
            correlation_id: None,
        }
    }

    /// Adds (or replaces) a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the topic a reply is expected on.
    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The payload deserialised as `T`.
    ///
    /// Fails with [`Error::Decode`] naming the message when the payload does
    /// not have the shape of `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.payload).map_err(|source| Error::Decode {
            what: format!("payload of message {} on {:?}", self.id, self.topic),
            source,
        })
    }

    /// A header's value, if present.
    pub fn header(&self, key: &str) -> Option<&Value> {
        self.headers.get(key)
    }

    /// The protocol's JSON form, as bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::Encode {
            what: "message",
            source,
        })
    }

    /// Reads a message from the protocol's JSON form, leniently.
    ///
    /// Fails with [`Error::Decode`] when the bytes are not JSON, or are JSON
    /// but not a message (no `topic`, a field of the wrong type).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|source| Error::Decode {
            what: "message".to_owned(),
            source,
        })
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Headers, D::Error> {
    Ok(Option::<Headers>::deserialize(d)?.unwrap_or_default())
}

fn write_timestamp<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn read_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_timestamp(&text).ok_or_else(|| {
        serde::de::Error::custom(format_args!(
            "invalid timestamp {text:?}: expected ISO 8601"
        ))
    })
}

/// Parses the timestamps Python peers write: RFC 3339 with `Z` or an offset,
/// with or without fractional seconds; a timestamp without any offset is UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        return Some(ts.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_written_with_microseconds_and_z() {
        let ts = parse_timestamp("2026-11-22T10:04:33Z").unwrap();
        let msg = Message {
            timestamp: ts,
            ..Message::from_value("a", Value::Null)
        };
        let json: Value = serde_json::from_slice(&msg.to_json().unwrap()).unwrap();
        assert_eq!(json["timestamp"], "2026-11-22T10:04:33.000000Z");
    }

    #[test]
    fn timestamps_parse_in_every_form_python_writes() {
        let expected = parse_timestamp("2026-11-22T10:04:33.123456Z").unwrap();
        for text in [
            "2026-11-22T10:04:33.123456+00:00",
            "2026-11-22T10:04:33.123456",
            "2026-11-22T11:04:33.123456+01:00",
        ] {
            assert_eq!(parse_timestamp(text), Some(expected), "{text}");
        }
        assert!(parse_timestamp("2026-11-22T10:04:33").is_some());
        assert!(parse_timestamp("yesterday").is_none());
    }

    #[test]
    fn null_headers_read_as_empty() {
        let msg = Message::from_json(br#"{"topic":"a","headers":null}"#).unwrap();
        assert!(msg.headers.is_empty());
    }

    #[test]
    fn payload_of_the_wrong_shape_is_a_decode_error_naming_the_message() {
        let msg = Message::new("a.b", "text").unwrap();
        let err = msg.payload_as::<u32>().unwrap_err();
        assert!(matches!(err, Error::Decode { .. }));
        assert!(err.to_string().contains(&msg.id));
    }
}
