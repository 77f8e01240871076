//! Relay engine throughput, side by side with the memory stream log doing the same storage work
//! without the engine (the ceiling, measured in the same run):
//!
//! * **live**: side A sends batches of 64 frames; each is appended, acknowledged, delivered to
//!   side B from memory and acknowledged by B. Ceiling: the same appends plus a read of each
//!   batch, straight on the memory log.
//! * **replay**: B reconnects to 1,000,000 stored items and the engine replays them (rate limit
//!   set out of the way, quantum 1024, reads of 1024). Ceiling: reading the same items in
//!   1024-item reads.
//!
//! Each figure is the median of `REPS` runs; payloads are 64 bytes; the memory log is the driver.
//! Run: `cargo bench -p relay-core --bench relay_engine` (about 10 s; the machine is shared).

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/storage_support/mod.rs"]
mod storage_support;

use std::time::Instant;

use bytes::Bytes;
use futures::executor::block_on;
use relay_core::engine::{
    Direction, EngineConfig, GroupId, GroupSnapshot, RelayEngine, RelayOutput, Side, StreamSnapshot,
};
use relay_core::log::{Item, MemoryStreamLog, StreamLog};
use storage_support::{Cursors, serve};

const REPS: usize = 5;
const LIVE_ITEMS: u64 = 640_000;
const REPLAY_ITEMS: u64 = 1_000_000;
const BATCH: u64 = 64;
const PAYLOAD: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn items(first: u64, n: u64) -> Vec<Item> {
    (first..first + n)
        .map(|seq| Item {
            seq,
            ts_ms: 0,
            payload: Bytes::from_static(PAYLOAD),
        })
        .collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        quantum: 1024,
        replay_rate_per_s: 1_000_000_000,
        replay_burst: 1_000_000_000,
        read_batch: 1024,
        live_buffer: 4096,
        consumer_window: 1_000_000,
        ..EngineConfig::default()
    }
}

/// Runs the driver loop until idle; returns items delivered.
fn drive(engine: &mut RelayEngine, log: &MemoryStreamLog) -> u64 {
    let mut delivered = 0;
    loop {
        let mut progressed = false;
        while let Some(req) = engine.poll_storage() {
            progressed = true;
            serve(engine, log, req, 0, Cursors::Skip);
        }
        if engine.poll_timeout().is_some_and(|t| t == 0) {
            progressed = true;
            engine.handle_timeout(0);
        }
        while let Some(out) = engine.poll_output() {
            progressed = true;
            if let RelayOutput::Deliver {
                group, to, items, ..
            } = out
            {
                delivered += items.len() as u64;
                let last = items.last().map_or(0, |i| i.seq);
                engine.handle_ack(&group, to, last, 0).unwrap();
            }
        }
        if !progressed {
            return delivered;
        }
    }
}

fn engine_live() -> f64 {
    let log = MemoryStreamLog::new();
    let g = GroupId::new("bench");
    let mut engine = RelayEngine::new(config());
    engine.add_group(
        g.clone(),
        GroupSnapshot {
            activated: true,
            ..Default::default()
        },
        0,
    );
    engine.handle_connected(&g, Side::A, 0, 0).unwrap();
    engine.handle_connected(&g, Side::B, 0, 0).unwrap();
    let batches: Vec<Vec<Item>> = (0..LIVE_ITEMS / BATCH)
        .map(|b| items(b * BATCH + 1, BATCH))
        .collect();
    let start = Instant::now();
    let mut delivered = 0;
    for batch in batches {
        engine.handle_frames(&g, Side::A, batch, 0).unwrap();
        delivered += drive(&mut engine, &log);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(delivered, LIVE_ITEMS);
    LIVE_ITEMS as f64 / secs
}

fn log_live() -> f64 {
    let log = MemoryStreamLog::new();
    let key = Direction::AToB.stream_key(&GroupId::new("bench"));
    let batches: Vec<Vec<Item>> = (0..LIVE_ITEMS / BATCH)
        .map(|b| items(b * BATCH + 1, BATCH))
        .collect();
    let start = Instant::now();
    let mut read = 0;
    for (b, batch) in batches.iter().enumerate() {
        block_on(log.append(&key, batch)).unwrap();
        read += block_on(log.read(&key, b as u64 * BATCH, BATCH as usize))
            .unwrap()
            .items
            .len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(read, LIVE_ITEMS);
    LIVE_ITEMS as f64 / secs
}

fn stored_log() -> (MemoryStreamLog, GroupId) {
    let log = MemoryStreamLog::new();
    let g = GroupId::new("bench");
    let key = Direction::AToB.stream_key(&g);
    for b in 0..REPLAY_ITEMS / 1000 {
        block_on(log.append(&key, &items(b * 1000 + 1, 1000))).unwrap();
    }
    (log, g)
}

fn engine_replay(log: &MemoryStreamLog, g: &GroupId) -> f64 {
    let mut engine = RelayEngine::new(config());
    let snapshot = GroupSnapshot {
        activated: true,
        a_to_b: StreamSnapshot {
            head: REPLAY_ITEMS,
            consumer_cursor: 0,
        },
        b_to_a: StreamSnapshot::default(),
    };
    engine.add_group(g.clone(), snapshot, 0);
    let start = Instant::now();
    engine.handle_connected(g, Side::B, 0, 0).unwrap();
    let delivered = drive(&mut engine, log);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(delivered, REPLAY_ITEMS);
    REPLAY_ITEMS as f64 / secs
}

fn log_replay(log: &MemoryStreamLog, g: &GroupId) -> f64 {
    let key = Direction::AToB.stream_key(g);
    let start = Instant::now();
    let mut after = 0;
    while after < REPLAY_ITEMS {
        let batch = block_on(log.read(&key, after, 1024)).unwrap();
        after = batch.items.last().map_or(REPLAY_ITEMS, |i| i.seq);
    }
    REPLAY_ITEMS as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let live_engine = median((0..REPS).map(|_| engine_live()).collect());
    let live_log = median((0..REPS).map(|_| log_live()).collect());
    let (log, g) = stored_log();
    let replay_engine = median((0..REPS).map(|_| engine_replay(&log, &g)).collect());
    let replay_log = median((0..REPS).map(|_| log_replay(&log, &g)).collect());
    println!("| path | engine (items/s) | memory log alone (items/s) | engine / log |");
    println!("|---|---|---|---|");
    println!(
        "| live relay, batches of {BATCH} | {:.0} | {:.0} | {:.2} |",
        live_engine,
        live_log,
        live_engine / live_log
    );
    println!(
        "| replay of {REPLAY_ITEMS} items | {:.0} | {:.0} | {:.2} |",
        replay_engine,
        replay_log,
        replay_engine / replay_log
    );
}
