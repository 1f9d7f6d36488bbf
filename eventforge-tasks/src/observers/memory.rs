//! `MemoryMeter` and the counting allocator it reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Measures, Meter, MeterStats, Observer, Reduction};
use crate::context::TaskContext;

thread_local! {
    // Bytes this thread asked the allocator for. Const-initialised with no
    // destructor, so the allocator can touch it without allocating.
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

// Set by the first allocation through `CountingAllocator`: tells the meter
// whether counts exist at all.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A global allocator that counts, per thread, the bytes allocated, and
/// otherwise is the system allocator. Install it in your binary to make
/// [`MemoryMeter`] work:
///
/// ```
/// use eventforge_tasks::observers::CountingAllocator;
///
/// #[global_allocator]
/// static ALLOCATOR: CountingAllocator = CountingAllocator;
/// # fn main() {}
/// ```
///
/// The cost is one thread-local add per allocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

fn count(bytes: usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    // `try_with`: during thread teardown the slot may be gone; skip the count.
    let _ = ALLOCATED.try_with(|total| total.set(total.get().wrapping_add(bytes as u64)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; counting touches no allocator state.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Growing counts the extra bytes; shrinking allocates nothing.
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Bytes allocated so far by the calling thread, or `None` when
/// [`CountingAllocator`] is not the global allocator.
pub fn allocated_bytes_on_this_thread() -> Option<u64> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    ALLOCATED.try_with(Cell::get).ok()
}

/// Records the bytes each call allocated during its own polls (the thread's
/// allocation count is read before and after each poll of the call).
///
/// It measures allocations, not memory held: bytes freed are not
/// subtracted, and allocations made by other tasks or threads on the call's
/// behalf are not counted. It needs [`CountingAllocator`] installed as the
/// program's global allocator; without it nothing is recorded and the
/// meter's count stays 0.
///
/// ```
/// use eventforge_tasks::observers::MemoryMeter;
///
/// let memory = MemoryMeter::new("parse.bytes");
/// assert_eq!(memory.stats().count, 0);
/// ```
#[derive(Debug, Clone)]
pub struct MemoryMeter {
    meter: Meter,
}

impl MemoryMeter {
    /// A memory meter named `name` whose value is the mean bytes per call.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_reduction(name, Reduction::Mean)
    }

    /// A memory meter with another reduction.
    pub fn with_reduction(name: impl Into<String>, reduction: Reduction) -> Self {
        MemoryMeter {
            meter: Meter::new(name, reduction),
        }
    }

    /// The meter of allocated bytes.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The meter's stats, in bytes.
    pub fn stats(&self) -> MeterStats {
        self.meter.stats()
    }
}

impl Observer for MemoryMeter {
    fn on_complete(&self, ctx: &TaskContext) {
        if let Some(bytes) = ctx.allocated_bytes() {
            self.meter.record(bytes as f64);
        }
    }

    fn measures(&self) -> Measures {
        Measures {
            cpu: false,
            memory: true,
        }
    }
}
