//! Fan-out: one stream, 10,000 subscribers, deliveries per second in-process; and memory per idle
//! subscriber (counted with an allocation-counting global allocator). The peer measured in the
//! same run is `tokio::sync::broadcast` with 10,000 receivers (same fan-out, no resume, no bounds).
//!
//! Run: `cargo bench -p sse-core --bench fanout` (about 20 s).
#![allow(unsafe_code, missing_docs)] // the counting allocator needs `unsafe impl GlobalAlloc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sse_core::{ManualClock, MemoryBackend, StreamConfig};

struct Counting;
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SUBSCRIBERS: usize = 10_000;
const EVENTS_PER_ROUND: usize = 10;

fn hub() -> MemoryBackend {
    MemoryBackend::new(
        Arc::new(ManualClock::new(1_800_000_000_000)),
        StreamConfig::default(),
    )
}

fn memory_per_idle_subscriber() {
    let hub = hub();
    hub.publish_now("dongle:1", "log", "{}").expect("publish");
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| hub.subscribe_now("dongle:1", None).expect("subscribe"))
        .collect();
    let fresh = LIVE_BYTES.load(Ordering::Relaxed) - before;
    // After traffic each subscriber keeps its (drained) batch buffers: the steady idle state.
    for _ in 0..64 {
        hub.publish_now("dongle:1", "log", "{\"n\":1}")
            .expect("publish");
    }
    let after_publish = LIVE_BYTES.load(Ordering::Relaxed);
    for s in &mut subs {
        while s.try_next().is_some() {}
    }
    let used = LIVE_BYTES.load(Ordering::Relaxed) - after_publish + fresh;
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<String>>(10_000);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let rxs: Vec<_> = (0..SUBSCRIBERS).map(|_| tx.subscribe()).collect();
    let broadcast = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "memory per idle subscriber: sse-core fresh {} B, after traffic {} B (struct {} B); broadcast::Receiver {} B",
        fresh / SUBSCRIBERS as isize,
        used / SUBSCRIBERS as isize,
        std::mem::size_of::<sse_core::MemorySubscription>(),
        broadcast / SUBSCRIBERS as isize,
    );
    drop((subs, rxs));
}

fn fanout(c: &mut Criterion) {
    memory_per_idle_subscriber();
    let mut group = c.benchmark_group("fanout_10k_subscribers");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(
        (SUBSCRIBERS * EVENTS_PER_ROUND) as u64,
    ));

    let hub = hub();
    let mut subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| hub.subscribe_now("dongle:1", None).expect("subscribe"))
        .collect();
    group.bench_function("sse_core_memory_hub", |b| {
        b.iter(|| {
            for i in 0..EVENTS_PER_ROUND {
                hub.publish_now(
                    "dongle:1",
                    "can_frame",
                    if i % 2 == 0 { "{\"a\":1}" } else { "{\"b\":2}" },
                )
                .expect("publish");
            }
            let delivered = drain_all(&mut subs, |s| s.try_next());
            assert_eq!(delivered, SUBSCRIBERS * EVENTS_PER_ROUND);
        })
    });

    let (tx, _) = tokio::sync::broadcast::channel::<Arc<String>>(1024);
    let mut rxs: Vec<_> = (0..SUBSCRIBERS).map(|_| tx.subscribe()).collect();
    group.bench_function("tokio_broadcast_peer", |b| {
        b.iter(|| {
            for i in 0..EVENTS_PER_ROUND {
                let _ = tx.send(Arc::new(if i % 2 == 0 {
                    "{\"a\":1}".to_owned()
                } else {
                    "{\"b\":2}".to_owned()
                }));
            }
            let delivered = drain_all(&mut rxs, |r| r.try_recv().ok());
            assert_eq!(delivered, SUBSCRIBERS * EVENTS_PER_ROUND);
        })
    });
    group.finish();
}

/// Takes every item each receiver holds (`try_next` yields `None` when it holds no more);
/// returns how many there were.
fn drain_all<R, T>(receivers: &mut [R], mut try_next: impl FnMut(&mut R) -> Option<T>) -> usize {
    let mut delivered = 0;
    for r in receivers {
        while let Some(item) = try_next(r) {
            black_box(&item);
            delivered += 1;
        }
    }
    delivered
}

criterion_group!(benches, fanout);
criterion_main!(benches);
