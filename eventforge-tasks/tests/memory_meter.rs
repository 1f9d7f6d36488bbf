//! `MemoryMeter` with the counting allocator installed (its own test binary,
//! since the global allocator is chosen per program).

use eventforge_rpc::HandlerError;
use eventforge_tasks::observers::{CountingAllocator, MemoryMeter, Reduction};
use eventforge_tasks::Task;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[tokio::test(flavor = "current_thread")]
async fn memory_meter_counts_the_bytes_a_call_allocates() {
    let memory = MemoryMeter::with_reduction("bytes", Reduction::Last);
    let task = Task::builder("alloc", |n: usize| {
        let buffer = std::hint::black_box(vec![1u8; n]);
        Ok::<_, HandlerError>(buffer.len())
    })
    .observer(memory.clone())
    .build();
    task.call((1_000_000usize,)).await.unwrap();
    let big = memory.meter().value().unwrap();
    assert!(big >= 1_000_000.0, "{big}");
    task.call((10usize,)).await.unwrap();
    let small = memory.meter().value().unwrap();
    assert!(small < 100_000.0, "{small}");
}
