//! The length-prefixed frame: `[u32 big-endian length][JSON]`.
//!
//! The one framing of eventforge's byte streams: the TCP transport's wire
//! (one [`Message`] per frame, byte for byte what the Python eventforge
//! writes), and the pipes to child processes (executor children, worker
//! handler programs), which carry other JSON values. [`FrameCodec`] plugs
//! into tokio-util's `Framed`/`FramedRead`, reads and writes blocking pipes
//! ([`read_from`](FrameCodec::read_from), [`write_to`](FrameCodec::write_to)),
//! and refuses a frame above its limit *before* allocating for it.

use std::io::{Read, Write};
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use crate::message::Message;

/// Largest frame accepted by default: 16 MiB of JSON.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

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

    /// The frame is JSON, but not what it should hold (a Message without
    /// `topic`, a field of the wrong type).
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

    /// A value could not be serialised as JSON.
    #[error("could not encode a frame as JSON: {0}")]
    Encode(#[source] serde_json::Error),

    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for std::io::Error {
    /// The socket's own error as is; anything else as `InvalidData`.
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Io(error) => error,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// Reads and writes length-prefixed JSON frames of `T`: [`Message`]s on
/// the TCP wire (the default), any serde type on a pipe.
///
/// ```
/// use bytes::BytesMut;
/// use eventforge_core::frame::FrameCodec;
/// use eventforge_core::Message;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut wire = BytesMut::new();
/// let sent = Message::new("greetings.en", "hello")?;
/// codec.encode(&sent, &mut wire)?;
/// assert_eq!(&wire[..4], (wire.len() as u32 - 4).to_be_bytes());
/// assert_eq!(codec.decode(&mut wire)?, Some(sent));
///
/// // Other values over a blocking pipe.
/// let json = FrameCodec::<serde_json::Value>::json();
/// let mut pipe = Vec::new();
/// json.write_to(&mut pipe, &serde_json::json!({"n": 1}))?;
/// assert_eq!(json.read_from(&mut pipe.as_slice())?, Some(serde_json::json!({"n": 1})));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FrameCodec<T = Message> {
    // Caps both what a peer can make us allocate and what we send.
    max_frame: usize,
    // What the frames hold; `fn() -> T` keeps the codec Send and Sync for any T.
    frames_of: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for FrameCodec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl<T> Clone for FrameCodec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for FrameCodec<T> {}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec of [`Message`] frames with the default limit ([`DEFAULT_MAX_FRAME`]).
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A codec of [`Message`] frames refusing frames whose JSON is longer
    /// than `max_frame` bytes (capped at `u32::MAX`, the most a prefix can say).
    pub fn with_max_frame(max_frame: usize) -> Self {
        Self::json_with_max_frame(max_frame)
    }
}

impl<T> FrameCodec<T> {
    /// A codec of frames of `T` with the default limit ([`DEFAULT_MAX_FRAME`]).
    pub fn json() -> Self {
        Self::json_with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A codec of frames of `T` refusing frames whose JSON is longer than
    /// `max_frame` bytes (capped at `u32::MAX`).
    pub fn json_with_max_frame(max_frame: usize) -> Self {
        FrameCodec {
            max_frame: max_frame.min(u32::MAX as usize),
            frames_of: PhantomData,
        }
    }

    /// The limit on a frame's JSON length.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The body length a frame's prefix announces, or
    /// [`FrameError::TooLarge`] when it is over the limit (nothing is
    /// allocated for it then).
    pub fn body_length(&self, prefix: [u8; PREFIX]) -> Result<usize, FrameError> {
        let length = u32::from_be_bytes(prefix) as usize;
        if length > self.max_frame {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_frame,
            });
        }
        Ok(length)
    }
}

impl<T: Serialize> FrameCodec<T> {
    /// Encodes `value` as one complete frame, ready to be written as is
    /// (to one connection or shared by many).
    pub fn encode_frame(&self, value: &T) -> Result<Bytes, FrameError> {
        // A Vec takes serde_json's many small writes faster than a BytesMut,
        // and becomes `Bytes` without a copy.
        let mut frame = Vec::with_capacity(256);
        frame.extend_from_slice(&[0; PREFIX]);
        serde_json::to_writer(&mut frame, value).map_err(FrameError::Encode)?;
        let length = self.check_length(frame.len() - PREFIX)?;
        frame[..PREFIX].copy_from_slice(&length.to_be_bytes());
        Ok(Bytes::from(frame))
    }

    /// Writes `value` as one frame to a blocking writer (a pipe) and flushes.
    pub fn write_to(&self, out: &mut impl Write, value: &T) -> Result<(), FrameError> {
        out.write_all(&self.encode_frame(value)?)?;
        out.flush()?;
        Ok(())
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

    fn encode_into(&self, value: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = serde_json::to_writer((&mut *dst).writer(), value);
        let length = dst.len() - start - PREFIX;
        if let Err(source) = written {
            dst.truncate(start);
            return Err(FrameError::Encode(source));
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

impl<T: DeserializeOwned> FrameCodec<T> {
    /// Reads one frame from a blocking reader (a pipe): `Ok(None)` when the
    /// stream ends before a frame starts, [`FrameError::Truncated`] when it
    /// ends inside one.
    pub fn read_from(&self, input: &mut impl Read) -> Result<Option<T>, FrameError> {
        let mut prefix = [0u8; PREFIX];
        let got = read_full(input, &mut prefix)?;
        if got == 0 {
            return Ok(None);
        }
        if got < PREFIX {
            return Err(FrameError::Truncated {
                expected: PREFIX,
                received: got,
            });
        }
        let length = self.body_length(prefix)?;
        let mut body = vec![0u8; length];
        let got = read_full(input, &mut body)?;
        if got < length {
            return Err(FrameError::Truncated {
                expected: PREFIX + length,
                received: PREFIX + got,
            });
        }
        parse_frame(&body).map(Some)
    }
}

// Reads until `buf` is full or the stream ends; how many bytes came.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses one frame's bytes into a `T`, telling bad text, bad JSON and
/// JSON of the wrong shape apart.
pub fn parse_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
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

impl<T: DeserializeOwned> Decoder for FrameCodec<T> {
    type Item = T;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
        let Some(prefix) = src.get(..PREFIX) else {
            return Ok(None);
        };
        let length = self.body_length([prefix[0], prefix[1], prefix[2], prefix[3]])?;
        if src.len() < PREFIX + length {
            // Bounded by max_frame, checked above.
            src.reserve(PREFIX + length - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        let frame = src.split_to(length);
        parse_frame(&frame).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
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

impl<T: Serialize> Encoder<&T> for FrameCodec<T> {
    type Error = FrameError;

    fn encode(&mut self, value: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(value, dst)
    }
}

impl<T: Serialize> Encoder<T> for FrameCodec<T> {
    type Error = FrameError;

    fn encode(&mut self, value: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(&value, dst)
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
