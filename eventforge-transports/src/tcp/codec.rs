//! The TCP frame: `[u32 big-endian length][JSON Message]`.
//!
//! The wire of the remote column of the 2x2 when no broker sits in between:
//! one [`Message`] per frame, byte for byte what the Python eventforge
//! writes. [`FrameCodec`] plugs into tokio-util's `Framed`/`FramedRead`, and
//! refuses a frame above its limit *before* allocating for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use eventforge_core::Message;
use tokio_util::codec::{Decoder, Encoder};

/// Largest frame accepted by default: 16 MiB of JSON.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more bytes than the limit allows; nothing
    /// was allocated for it. The connection cannot be resynchronised.
    #[error("frame of {length} bytes exceeds the limit of {max} bytes; raise max_frame on both sides if such messages are expected")]
    TooLarge {
        /// The announced (or, when writing, the encoded) length.
        length: usize,
        /// The configured limit.
        max: usize,
    },

    /// The frame's bytes are not UTF-8 text.
    #[error("frame is not UTF-8 text (first bad byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },

    /// The frame's text is not JSON.
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),

    /// The frame is JSON, but not a Message (no `topic`, a field of the wrong type).
    #[error("frame is JSON but not a message: {0}")]
    NotAMessage(#[source] serde_json::Error),

    /// The peer closed the connection in the middle of a frame.
    #[error(
        "connection closed in the middle of a frame ({received} of {expected} bytes received)"
    )]
    Truncated {
        /// Bytes the frame needed (prefix included, when the prefix was complete).
        expected: usize,
        /// Bytes that had arrived.
        received: usize,
    },

    /// A message could not be serialised.
    #[error("could not encode message {id}: {source}")]
    Encode {
        /// Id of the message.
        id: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and writes length-prefixed JSON [`Message`] frames.
///
/// ```
/// use bytes::BytesMut;
/// use eventforge_core::Message;
/// use eventforge_transports::tcp::FrameCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut wire = BytesMut::new();
/// let sent = Message::new("greetings.en", "hello")?;
/// codec.encode(&sent, &mut wire)?;
/// assert_eq!(&wire[..4], (wire.len() as u32 - 4).to_be_bytes());
/// assert_eq!(codec.decode(&mut wire)?, Some(sent));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    // Caps both what a peer can make us allocate and what we send.
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the default limit ([`DEFAULT_MAX_FRAME`]).
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A codec refusing frames whose JSON is longer than `max_frame` bytes
    /// (capped at `u32::MAX`, the most a prefix can say).
    pub fn with_max_frame(max_frame: usize) -> Self {
        FrameCodec {
            max_frame: max_frame.min(u32::MAX as usize),
        }
    }

    /// The limit on a frame's JSON length.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Encodes `message` as one complete frame, ready to be written as is
    /// (to one connection or shared by many).
    pub fn encode_frame(&self, message: &Message) -> Result<Bytes, FrameError> {
        // A Vec takes serde_json's many small writes faster than a BytesMut,
        // and becomes `Bytes` without a copy.
        let mut frame = Vec::with_capacity(256);
        frame.extend_from_slice(&[0; PREFIX]);
        serde_json::to_writer(&mut frame, message).map_err(|source| FrameError::Encode {
            id: message.id.clone(),
            source,
        })?;
        let length = self.check_length(frame.len() - PREFIX)?;
        frame[..PREFIX].copy_from_slice(&length.to_be_bytes());
        Ok(Bytes::from(frame))
    }

    /// The length as a prefix, or [`FrameError::TooLarge`].
    fn check_length(&self, length: usize) -> Result<u32, FrameError> {
        if length > self.max_frame {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_frame,
            });
        }
        // Fits: max_frame is capped at u32::MAX.
        Ok(length as u32)
    }

    fn encode_into(&self, message: &Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = serde_json::to_writer((&mut *dst).writer(), message);
        let length = dst.len() - start - PREFIX;
        if let Err(source) = written {
            dst.truncate(start);
            return Err(FrameError::Encode {
                id: message.id.clone(),
                source,
            });
        }
        let length = match self.check_length(length) {
            Ok(length) => length,
            Err(error) => {
                dst.truncate(start);
                return Err(error);
            }
        };
        dst[start..start + PREFIX].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }
}

/// Parses one frame's bytes into a message, telling bad text, bad JSON and
/// JSON that is not a message apart.
pub fn parse_frame(bytes: &[u8]) -> Result<Message, FrameError> {
    // serde_json checks UTF-8 as it reads: a separate pass is only needed
    // to name the error once parsing failed.
    serde_json::from_slice(bytes).map_err(|e| {
        if let Err(utf8) = std::str::from_utf8(bytes) {
            FrameError::InvalidUtf8 {
                valid_up_to: utf8.valid_up_to(),
            }
        } else if e.is_data() {
            FrameError::NotAMessage(e)
        } else {
            FrameError::InvalidJson(e)
        }
    })
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        let Some(prefix) = src.get(..PREFIX) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if length > self.max_frame {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_frame,
            });
        }
        if src.len() < PREFIX + length {
            // Bounded by max_frame, checked above.
            src.reserve(PREFIX + length - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        let frame = src.split_to(length);
        parse_frame(&frame).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = match src.get(..PREFIX) {
                    Some(p) => PREFIX + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
                    None => PREFIX,
                };
                let received = src.len();
                src.clear();
                Err(FrameError::Truncated { expected, received })
            }
        }
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(message, dst)
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(&message, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(json: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(json.len() as u32);
        buf.put_slice(json);
        buf
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let mut codec = FrameCodec::new();
        let full = frame_of(br#"{"topic":"a.b","payload":1}"#);
        let mut buf = BytesMut::from(&full[..10]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[10..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().topic, "a.b");
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversize_prefix_is_refused_without_allocating() {
        let mut codec = FrameCodec::with_max_frame(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        let capacity = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { length, max: 1024 } if length == u32::MAX as usize)
        );
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn bad_text_bad_json_and_non_messages_are_told_apart() {
        let mut codec = FrameCodec::new();
        type IsExpected = fn(&FrameError) -> bool;
        let cases: [(&[u8], IsExpected); 4] = [
            (b"\xff\xfe{}", |e| {
                matches!(e, FrameError::InvalidUtf8 { .. })
            }),
            (b"{\"topic\": ", |e| matches!(e, FrameError::InvalidJson(_))),
            (b"[1, 2, 3]", |e| matches!(e, FrameError::NotAMessage(_))),
            (b"{\"payload\": 1}", |e| {
                matches!(e, FrameError::NotAMessage(_))
            }),
        ];
        for (json, expected) in cases {
            let err = codec.decode(&mut frame_of(json)).unwrap_err();
            assert!(expected(&err), "{json:?} gave {err:?}");
        }
    }

    #[test]
    fn a_connection_closed_mid_frame_is_reported_as_truncated() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&frame_of(b"{\"topic\": \"a\"}")[..7]);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 18,
                    received: 7
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn encoding_above_the_limit_fails_and_leaves_the_buffer_as_it_was() {
        let mut codec = FrameCodec::with_max_frame(64);
        let mut buf = BytesMut::from(&b"xy"[..]);
        let big = Message::new("a.b", "x".repeat(100)).unwrap();
        assert!(matches!(
            codec.encode(&big, &mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(&buf[..], b"xy");
    }
}
