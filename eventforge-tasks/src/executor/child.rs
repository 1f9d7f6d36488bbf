//! The child side of [`ExecutorMode::Process`](super::ExecutorMode::Process)
//! and the frames both sides exchange over the child's stdin and stdout.
//!
//! A frame is `b"\0EFX"` followed by the kernel's length-prefixed JSON frame
//! ([`FrameCodec`]). The marker lets the parent skip whatever a task prints
//! to stdout itself (it is passed on to the parent's stderr) instead of
//! losing sync.

use std::io::{self, BufRead, Write};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use eventforge_core::frame::FrameCodec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::registry::FunctionRegistry;

/// The environment variable that makes a program serve as an executor child.
pub const CHILD_ENV: &str = "EVENTFORGE_EXECUTOR_CHILD";

const MAGIC: [u8; 4] = *b"\0EFX";

/// Largest frame either side accepts, so a corrupt length cannot make it
/// allocate without bound.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A task sent to a child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildRequest {
    pub(crate) task_id: String,
    pub(crate) function: String,
    pub(crate) input: Value,
}

/// What a child answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildReply {
    pub(crate) task_id: String,
    #[serde(default)]
    pub(crate) value: Value,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) error_type: Option<String>,
    #[serde(default)]
    pub(crate) execution_time: f64,
    // The child exits after this reply (a task panicked): replace it.
    #[serde(default)]
    pub(crate) exiting: bool,
}

fn codec<T>() -> FrameCodec<T> {
    FrameCodec::json_with_max_frame(MAX_FRAME)
}

/// Writes the marker and one frame of `value`, in one write, and flushes.
pub(crate) fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    let body = codec::<T>().encode_frame(value)?;
    let mut frame = Vec::with_capacity(MAGIC.len() + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&body);
    out.write_all(&frame)?;
    out.flush()
}

/// Reads the next frame; bytes before its marker go to `stray`. `Ok(None)`
/// on end of stream before a marker.
pub(crate) fn read_frame<T: DeserializeOwned>(
    input: &mut impl BufRead,
    stray: &mut impl Write,
) -> io::Result<Option<T>> {
    let mut matched = 0;
    let mut byte = [0u8; 1];
    while matched < MAGIC.len() {
        if input.read(&mut byte)? == 0 {
            if matched > 0 {
                stray.write_all(&MAGIC[..matched])?;
            }
            return Ok(None);
        }
        if byte[0] == MAGIC[matched] {
            matched += 1;
        } else {
            stray.write_all(&MAGIC[..matched])?;
            matched = usize::from(byte[0] == MAGIC[0]);
            if matched == 0 {
                stray.write_all(&byte)?;
            }
        }
    }
    match codec::<T>().read_from(input)? {
        Some(value) => Ok(Some(value)),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended right after a frame marker",
        )),
    }
}

/// Serves executor tasks and exits when this process was started as an
/// executor child; returns at once otherwise.
///
/// Process mode starts children from the running program itself
/// (`std::env::current_exe()`) with [`CHILD_ENV`] set, so every program
/// that uses [`ExecutorMode::Process`](super::ExecutorMode::Process) must
/// call this first thing in `main`, with the same registry the parent uses:
///
/// ```no_run
/// use eventforge_tasks::{run_child_if_requested, FunctionRegistry};
///
/// fn registry() -> FunctionRegistry {
///     let mut registry = FunctionRegistry::new();
///     registry.register_typed("square", |n: i64| Ok::<_, String>(n * n));
///     registry
/// }
///
/// fn main() {
///     run_child_if_requested(&registry());
///     // ... the program proper: builds an Executor with registry() ...
/// }
/// ```
pub fn run_child_if_requested(registry: &FunctionRegistry) {
    if std::env::var_os(CHILD_ENV).is_none_or(|v| v != "1") {
        return;
    }
    let code = match serve_child(registry, &mut io::stdin().lock()) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("eventforge executor child {}: {error}", std::process::id());
            1
        }
    };
    std::process::exit(code);
}

fn serve_child(registry: &FunctionRegistry, input: &mut impl BufRead) -> io::Result<()> {
    let mut stray = io::stderr();
    while let Some(request) = read_frame::<ChildRequest>(input, &mut stray)? {
        let reply = run_task(registry, request);
        let exiting = reply.exiting;
        write_frame(&mut io::stdout().lock(), &reply)?;
        if exiting {
            break;
        }
    }
    Ok(())
}

fn run_task(registry: &FunctionRegistry, request: ChildRequest) -> ChildReply {
    let started = Instant::now();
    let mut reply = ChildReply {
        task_id: request.task_id,
        value: Value::Null,
        error: None,
        error_type: None,
        execution_time: 0.0,
        exiting: false,
    };
    let Some(function) = registry.get(&request.function) else {
        reply.error = Some(format!("function not registered: {}", request.function));
        reply.error_type = Some("FunctionNotFound".to_owned());
        return reply;
    };
    let input = request.input;
    match std::panic::catch_unwind(AssertUnwindSafe(|| function(input))) {
        Ok(Ok(value)) => reply.value = value,
        Ok(Err(failure)) => {
            reply.error = Some(failure.message);
            reply.error_type = Some(failure.error_type);
        }
        Err(panic) => {
            reply.error = Some(format!(
                "{}() panicked: {}",
                request.function,
                eventforge_core::sync::panic_text(&*panic)
            ));
            reply.error_type = Some("Panic".to_owned());
            // State touched by the panic may be broken: a fresh child takes over.
            reply.exiting = true;
        }
    }
    reply.execution_time = started.elapsed().as_secs_f64();
    reply
}

pub(crate) fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_stray_output_around_them() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"hello from a task\n\0E");
        write_frame(&mut wire, &serde_json::json!({"a": 1})).unwrap();
        wire.extend_from_slice(b"more noise");
        let mut stray = Vec::new();
        let mut input = io::Cursor::new(wire);
        let frame: Value = read_frame(&mut input, &mut stray).unwrap().unwrap();
        assert_eq!(frame["a"], 1);
        assert_eq!(stray, b"hello from a task\n\0E");
        assert!(read_frame::<Value>(&mut input, &mut stray)
            .unwrap()
            .is_none());
        assert!(stray.ends_with(b"more noise"));
    }

    #[test]
    fn an_oversized_length_is_refused_without_allocating_it() {
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_frame::<Value>(&mut io::Cursor::new(wire), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
