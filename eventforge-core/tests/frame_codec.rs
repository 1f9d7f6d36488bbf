//! The frame codec against the Python peer's bytes and arbitrary input.
use bytes::{BufMut, BytesMut};
use eventforge_core::frame::{FrameCodec, FrameError};
use eventforge_core::Message;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const VECTOR_FRAME: &[u8] = include_bytes!("../../tests/data/frame_message_basic.bin");
const VECTORS: &str = include_str!("../../tests/data/vectors.json");

fn vector(name: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_str(VECTORS).expect("vectors.json is JSON");
    all[name].clone()
}

#[test]
fn reads_the_python_frame_exactly() {
    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::from(VECTOR_FRAME);
    let message = codec.decode(&mut wire).unwrap().expect("one whole frame");
    assert!(wire.is_empty(), "the frame is consumed exactly");
    let expected: Message = serde_json::from_value(vector("message_basic")).unwrap();
    assert_eq!(message, expected);
    assert_eq!(message.id, "f9d108c5-a4ff-41b7-bb00-ac203a8a8a2e");
    assert_eq!(message.headers["n"], 3);
    assert_eq!(
        serde_json::to_value(&message).unwrap(),
        vector("message_basic"),
        "writing it back gives the same JSON object"
    );
}

#[test]
fn written_frames_carry_a_big_endian_length_of_the_json() {
    let message: Message = serde_json::from_value(vector("message_basic")).unwrap();
    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::new();
    codec.encode(&message, &mut wire).unwrap();
    let length = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
    assert_eq!(length, wire.len() - 4);
    let json: serde_json::Value = serde_json::from_slice(&wire[4..]).unwrap();
    assert_eq!(json, vector("message_basic"));
}

#[test]
fn several_frames_in_one_read_decode_one_by_one() {
    let mut wire = BytesMut::new();
    for _ in 0..3 {
        wire.extend_from_slice(VECTOR_FRAME);
    }
    let mut codec = FrameCodec::new();
    let mut count = 0;
    while let Some(message) = codec.decode(&mut wire).unwrap() {
        assert_eq!(message.topic, "events.user");
        count += 1;
    }
    assert_eq!(count, 3);
}

#[test]
fn a_frame_just_above_the_limit_is_refused() {
    let mut codec = FrameCodec::with_max_frame(VECTOR_FRAME.len() - 5);
    let err = codec.decode(&mut BytesMut::from(VECTOR_FRAME)).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
    let mut exact = FrameCodec::with_max_frame(VECTOR_FRAME.len() - 4);
    assert!(exact
        .decode(&mut BytesMut::from(VECTOR_FRAME))
        .unwrap()
        .is_some());
}

const LIMIT: usize = 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_allocate_past_the_limit(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut codec = FrameCodec::with_max_frame(LIMIT);
        let mut buf = BytesMut::from(&input[..]);
        let bound = 2 * (input.len() + 4 + LIMIT);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
        prop_assert!(buf.capacity() <= bound, "capacity {} above {}", buf.capacity(), bound);
        let _ = codec.decode_eof(&mut buf);
    }

    #[test]
    fn an_arbitrary_length_prefix_never_allocates_past_the_limit(length in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut codec = FrameCodec::with_max_frame(LIMIT);
        let mut buf = BytesMut::new();
        buf.put_u32(length);
        buf.extend_from_slice(&tail);
        let result = codec.decode(&mut buf);
        if length as usize > LIMIT {
            let too_large = matches!(result, Err(FrameError::TooLarge { .. }));
            prop_assert!(too_large);
        }
        prop_assert!(buf.capacity() <= 2 * (4 + 64 + LIMIT));
    }

    #[test]
    fn messages_survive_any_split_of_the_stream(
        topics in proptest::collection::vec("[a-z]{1,8}(\\.[a-z]{1,8}){0,3}", 1..8),
        text in "\\PC{0,40}",
        cut in any::<prop::sample::Index>(),
    ) {
        let mut codec = FrameCodec::new();
        let mut wire = BytesMut::new();
        let sent: Vec<Message> = topics.iter().map(|t| Message::new(t.as_str(), &text).unwrap()).collect();
        for message in &sent {
            codec.encode(message, &mut wire).unwrap();
        }
        let at = cut.index(wire.len());
        let mut buf = BytesMut::from(&wire[..at]);
        let mut received = Vec::new();
        while let Some(message) = codec.decode(&mut buf).unwrap() {
            received.push(message);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(message) = codec.decode(&mut buf).unwrap() {
            received.push(message);
        }
        prop_assert_eq!(received, sent);
    }
}
