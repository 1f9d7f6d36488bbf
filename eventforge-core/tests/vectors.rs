//! The Python eventforge peer's wire vectors, read and written by `Message`.

use eventforge_core::{Error, Message};
use serde_json::Value;

const VECTORS: &str = include_str!("../../tests/data/vectors.json");
const FRAME: &[u8] = include_bytes!("../../tests/data/frame_message_basic.bin");

fn vector(name: &str) -> Value {
    let all: Value = serde_json::from_str(VECTORS).expect("vectors.json is JSON");
    all[name].clone()
}

fn read(name: &str) -> Message {
    serde_json::from_value(vector(name)).expect("vector reads as a Message")
}

#[test]
fn python_messages_read_and_write_back_unchanged() {
    for name in [
        "message_basic",
        "message_null_payload",
        "rpc_request_message",
    ] {
        let written: Value = serde_json::from_slice(&read(name).to_json().unwrap()).unwrap();
        assert_eq!(written, vector(name), "{name}");
    }
}

#[test]
fn written_messages_have_exactly_the_protocol_fields_in_order() {
    let json = Message::new("a.b", 1).unwrap().to_json().unwrap();
    let text = String::from_utf8(json).unwrap();
    let keys: Vec<&str> = [
        "id",
        "topic",
        "payload",
        "headers",
        "timestamp",
        "reply_to",
        "correlation_id",
    ]
    .into_iter()
    .collect();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).expect(k))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value.as_object().unwrap().len(), keys.len());
    assert_eq!(value["headers"], serde_json::json!({}));
    assert_eq!(value["reply_to"], Value::Null);
    let ts = value["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-11-22T10:21:59.730682Z".len(),
        "{ts}"
    );
    let id = value["id"].as_str().unwrap();
    assert_eq!(uuid_version(id), Some('4'), "{id}");
}

fn uuid_version(id: &str) -> Option<char> {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    (lengths == [8, 4, 4, 4, 12]).then(|| groups[2].chars().next().unwrap())
}

#[test]
fn the_python_tcp_frame_holds_message_basic() {
    let length = u32::from_be_bytes(FRAME[..4].try_into().unwrap()) as usize;
    assert_eq!(length, FRAME.len() - 4);
    let message = Message::from_json(&FRAME[4..]).unwrap();
    assert_eq!(message, read("message_basic"));
    assert_eq!(message.header("n"), Some(&serde_json::json!(3)));
}

#[test]
fn minimal_input_takes_the_python_defaults() {
    let input = serde_json::to_vec(&vector("lenient_minimal_message_input")).unwrap();
    let message = Message::from_json(&input).unwrap();
    let expected = vector("lenient_minimal_message_input_python_parses_to");
    assert_eq!(message.topic, expected["topic"]);
    assert_eq!(message.payload, expected["payload"]);
    assert!(message.headers.is_empty());
    assert_eq!(message.reply_to, None);
    assert_eq!(message.correlation_id, None);
    assert_eq!(uuid_version(&message.id), Some('4'));
}

#[test]
fn offset_timestamps_and_unknown_fields_are_accepted() {
    let input = serde_json::to_vec(&vector("lenient_offset_timestamp_input")).unwrap();
    let message = Message::from_json(&input).unwrap();
    let written: Value = serde_json::from_slice(&message.to_json().unwrap()).unwrap();
    let expected = vector("lenient_offset_timestamp_input_python_parses_to");
    assert_eq!(written["payload"], expected["payload"]);
    // Python writes whole seconds without a fraction; we always write microseconds.
    assert_eq!(written["timestamp"], "2026-11-22T10:04:33.000000Z");
    assert!(written.get("extra_field").is_none());
}

#[test]
fn input_that_is_not_a_message_is_a_decode_error() {
    for bad in [
        &b"not json"[..],
        b"[1, 2]",
        br#"{"payload": 1}"#,
        br#"{"topic": 5}"#,
        br#"{"topic": "a", "timestamp": "yesterday"}"#,
        b"\xff\xfe",
    ] {
        assert!(
            matches!(Message::from_json(bad), Err(Error::Decode { .. })),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
