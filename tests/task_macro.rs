//! `#[task]`: the functions it writes, their options, and how payloads bind
//! to the parameter names it knows.
#![cfg(feature = "macros")]

use eventforge::macros::task;
use eventforge::rpc::HandlerError;
use eventforge::tasks::observers::TimingMeter;
use eventforge::MessageQueue;
use serde_json::json;

#[task]
async fn add(a: i64, b: i64) -> Result<i64, HandlerError> {
    Ok(a + b)
}

#[task(topic = "macro.tests.concat", max_instances = 2, publish_result = true)]
fn concat(left: String, right: String) -> String {
    format!("{left}{right}")
}

#[task(name = "checked_div", instance_timeout_ms = 250, max_instances = 1)]
fn divide(a: i64, b: i64) -> Result<i64, HandlerError> {
    a.checked_div(b)
        .ok_or_else(|| HandlerError::new("ZeroDivisionError", "division by zero"))
}

#[tokio::test]
async fn an_async_task_binds_an_object_payload_by_parameter_name() {
    let task = add_task();
    assert_eq!(task.name(), "add");
    assert_eq!(task.topic(), "add");
    assert_eq!(task.params(), Some(&["a".to_owned(), "b".to_owned()][..]));
    assert_eq!(task.call_payload(json!({"b": 2, "a": 1})).await.unwrap(), 3);
    assert_eq!(task.call_as::<i64>((4, 5)).await.unwrap(), 9);
    // The function itself is still there.
    assert_eq!(add(1, 1).await.unwrap(), 2);
}

#[tokio::test]
async fn a_sync_task_returning_a_plain_value_succeeds_with_it() {
    let task = concat_task();
    assert_eq!(task.topic(), "macro.tests.concat");
    assert_eq!(task.pool_stats().unwrap().max, 2);
    let joined = task
        .call_payload(json!({"left": "ab", "right": "cd"}))
        .await
        .unwrap();
    assert_eq!(joined, "abcd");
}

#[tokio::test]
async fn options_name_the_task_and_errors_keep_their_type() {
    let task = divide_task();
    assert_eq!(task.name(), "checked_div");
    let error = task.call((1, 0)).await.unwrap_err();
    assert_eq!(error.error_type(), "ZeroDivisionError");
    let error = task.call_payload(json!({"a": 1})).await.unwrap_err();
    assert_eq!(error.error_type(), "TypeError");
    assert!(error.message().contains("'b'"), "{error}");
}

#[tokio::test]
async fn the_builder_takes_observers_and_the_task_publishes_its_result() {
    let timing = TimingMeter::new("concat.time");
    let task = concat_task_builder().observer(timing.clone()).build();
    let queue = MessageQueue::memory();
    task.bind(&queue).await.unwrap();
    let mut results = queue.subscribe("macro.tests.concat.success").await.unwrap();
    queue
        .publish("macro.tests.concat", json!(["x", "y"]))
        .await
        .unwrap();
    let done = results.recv().await.unwrap();
    assert_eq!(done.payload["result"], "xy");
    assert_eq!(timing.stats().count, 1);
    queue.close().await.unwrap();
}

#[test]
fn misuse_is_a_readable_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
