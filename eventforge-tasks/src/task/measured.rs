//! The call's future, measured and guarded poll by poll.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;

use super::TaskFunction;
use crate::observers::{allocated_bytes_on_this_thread, thread_cpu_time, Measures};
use eventforge_core::sync::panic_text;
use eventforge_rpc::wire::PANIC;
use eventforge_rpc::{HandlerError, IncomingCall, Outcome};

/// Starts the function at its first poll (so a sync function's work is
/// inside the measurement too), catches panics, and adds up the CPU time
/// and allocated bytes of each poll when asked.
pub(crate) struct Measured {
    stage: Stage,
    measures: Measures,
    cpu: Duration,
    allocated: u64,
    // False when a clock or counter was unavailable at some poll.
    cpu_known: bool,
    allocated_known: bool,
}

enum Stage {
    Start(TaskFunction, IncomingCall),
    Running(BoxFuture<'static, Outcome>),
    Done,
}

impl Measured {
    pub(crate) fn new(function: TaskFunction, call: IncomingCall, measures: Measures) -> Self {
        Measured {
            stage: Stage::Start(function, call),
            measures,
            cpu: Duration::ZERO,
            allocated: 0,
            cpu_known: true,
            allocated_known: true,
        }
    }

    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Stage::Start(..) = self.stage {
            if let Stage::Start(function, call) = std::mem::replace(&mut self.stage, Stage::Done) {
                self.stage = Stage::Running(function(call));
            }
        }
        match &mut self.stage {
            Stage::Running(future) => future.as_mut().poll(cx),
            Stage::Start(..) | Stage::Done => Poll::Ready(Err(HandlerError::new(
                "Error",
                "task call polled after it completed",
            ))),
        }
    }
}

impl Future for Measured {
    type Output = (Outcome, Option<Duration>, Option<u64>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let cpu_before = this.measures.cpu.then(thread_cpu_time).flatten();
        let allocated_before = this
            .measures
            .memory
            .then(allocated_bytes_on_this_thread)
            .flatten();
        let polled = catch_unwind(AssertUnwindSafe(|| this.poll_call(cx)));
        if this.measures.cpu {
            match (cpu_before, thread_cpu_time()) {
                (Some(before), Some(after)) => this.cpu += after.saturating_sub(before),
                _ => this.cpu_known = false,
            }
        }
        if this.measures.memory {
            match (allocated_before, allocated_bytes_on_this_thread()) {
                (Some(before), Some(after)) => {
                    this.allocated += after.wrapping_sub(before);
                }
                _ => this.allocated_known = false,
            }
        }
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => outcome,
            Err(panic) => Err(HandlerError::new(
                PANIC,
                format!("task panicked: {}", panic_text(&*panic)),
            )),
        };
        // The future is done with: free it now rather than with the wrapper.
        this.stage = Stage::Done;
        Poll::Ready((
            outcome,
            (this.measures.cpu && this.cpu_known).then_some(this.cpu),
            (this.measures.memory && this.allocated_known).then_some(this.allocated),
        ))
    }
}
