//! The child side of [`ExecutorMode::Process`](super::ExecutorMode::Process)
//! and the frames both sides exchange over the child's stdin and stdout.
//!
//! A frame is `b"\0EFX"`, a 4-byte big-endian length, then that many bytes of
//! JSON. The marker lets the parent skip whatever a task prints to stdout
//! itself (it is passed on to the parent's stderr) instead of losing sync.

use std::io::{self, BufRead, Write};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

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

pub(crate) fn write_frame(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let length = u32::try_from(body.len())
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame)?;
    out.flush()
}

/// Reads the next frame; bytes before its marker go to `stray`. `Ok(None)`
/// on end of stream before a marker.
pub(crate) fn read_frame(
    input: &mut impl BufRead,
    stray: &mut impl Write,
) -> io::Result<Option<Vec<u8>>> {
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
    let mut length = [0u8; 4];
    input.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {length} bytes is over the {MAX_FRAME} byte limit"),
        ));
    }
    let mut body = vec![0u8; length];
    input.read_exact(&mut body)?;
    Ok(Some(body))
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
/// use eventforge_tasks::executor::{run_child_if_requested, FunctionRegistry};
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
    while let Some(frame) = read_frame(input, &mut stray)? {
        let request: ChildRequest = serde_json::from_slice(&frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
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
                eventforge_core::panic_text(&*panic)
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
        let frame = read_frame(&mut input, &mut stray).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&frame).unwrap()["a"], 1);
        assert_eq!(stray, b"hello from a task\n\0E");
        assert!(read_frame(&mut input, &mut stray).unwrap().is_none());
        assert!(stray.ends_with(b"more noise"));
    }

    #[test]
    fn an_oversized_length_is_refused_without_allocating_it() {
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_frame(&mut io::Cursor::new(wire), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
