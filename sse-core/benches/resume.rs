//! Resume cost: finding the position of a last-event ID 1, 100 and 10,000 events back in a full
//! buffer (10,000 events), and a whole `subscribe` with that ID. The peer measured in the same run
//! is a linear scan over the same buffer (what a resume without ordered IDs would cost).
//!
//! Run: `cargo bench -p sse-core --bench resume` (about 20 s).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sse_core::buffer::{StreamBuffer, StreamItem};
use sse_core::{EventId, ManualClock, MemoryBackend, StreamBounds, StreamConfig};

const DEPTH_MAX: usize = 10_000;

fn resume(c: &mut Criterion) {
    let mut buffer = StreamBuffer::new(StreamBounds::default(), 1_800_000_000_000);
    let hub = MemoryBackend::new(
        Arc::new(ManualClock::new(1_800_000_000_000)),
        StreamConfig::default(),
    );
    let mut ids: Vec<EventId> = Vec::new();
    for i in 0..DEPTH_MAX {
        let data = format!("{{\"n\":{i}}}");
        ids.push(
            buffer
                .push("can_frame", &data, 1_800_000_000_000 + i as u64 / 10)
                .expect("push")
                .id,
        );
        hub.publish_now("dongle:1", "can_frame", &data)
            .expect("publish");
    }
    let hub_ids: Vec<EventId> = {
        let mut sub = hub
            .subscribe_now("dongle:1", Some("0-0"))
            .expect("subscribe");
        std::iter::from_fn(|| sub.try_next())
            .filter_map(|i| match i {
                StreamItem::Event(e) => Some(e.id),
                StreamItem::Reset(_) => None,
            })
            .collect()
    };
    // A plain copy of the events for the linear-scan peer.
    let deque: std::collections::VecDeque<EventId> = ids.iter().copied().collect();

    let mut group = c.benchmark_group("resume");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for depth in [1usize, 100, 10_000] {
        // "depth events back": the subscriber has seen everything up to this ID.
        let requested = if depth == DEPTH_MAX {
            ids[0]
        } else {
            ids[DEPTH_MAX - 1 - depth]
        }
        .to_string();
        let hub_requested = if depth == DEPTH_MAX {
            hub_ids[0]
        } else {
            hub_ids[DEPTH_MAX - 1 - depth]
        }
        .to_string();
        group.bench_with_input(
            BenchmarkId::new("locate_binary_search", depth),
            &requested,
            |b, req| b.iter(|| black_box(buffer.locate(Some(black_box(req))))),
        );
        group.bench_with_input(
            BenchmarkId::new("subscribe_memory_hub", depth),
            &hub_requested,
            |b, req| {
                b.iter(|| {
                    black_box(
                        hub.subscribe_now("dongle:1", Some(black_box(req)))
                            .expect("subscribe"),
                    )
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("linear_scan_peer", depth),
            &requested,
            |b, req| {
                b.iter(|| {
                    let id: EventId = black_box(req).parse().expect("id");
                    black_box(deque.iter().position(|e| *e == id))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, resume);
criterion_main!(benches);
