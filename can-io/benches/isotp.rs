//! ISO-TP segmentation + reassembly speed, in memory: a sender endpoint and a receiver endpoint
//! wired back to back (frames one way, flow control the other), classic CAN, padding 0xCC,
//! block size 0, STmin 0. The workload is 1,000 messages cycling through sizes 2, 6, 7, 20, 31,
//! 53, 100, 255, 1000 and 4095 bytes (556,900 bytes, ~80,000 frames) — the same messages
//! `scripts/bench-isotp.sh` gives python `can-isotp`. Also: the passive monitor over the Nissan
//! Leaf capture (5,588 frames).
//!
//! Run: `cargo bench -p can-io --bench isotp`. Kept short: the machine is shared.

use std::hint::black_box;
use std::time::{Duration, Instant};

use can_io::formats::{Entry, candump};
use can_io::isotp::{Addressing, IsoTpConfig, IsoTpEndpoint, IsoTpEvent, IsoTpMonitor};
use can_io::{CanFrame, CanId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 10] = [2, 6, 7, 20, 31, 53, 100, 255, 1000, 4095];
const MESSAGES: usize = 1000;

/// The workload; `scripts/bench-isotp.sh` builds the same bytes in Python.
fn messages() -> Vec<Vec<u8>> {
    (0..MESSAGES)
        .map(|k| {
            let len = SIZES[k % SIZES.len()];
            (0..len).map(|i| ((i * 7 + k) & 0xFF) as u8).collect()
        })
        .collect()
}

fn pair() -> (IsoTpEndpoint, IsoTpEndpoint) {
    let cfg = |tx, rx| IsoTpConfig::new(Addressing::normal(tx, rx).expect("ids"));
    (
        IsoTpEndpoint::new(cfg(0x7E0, 0x7E8)).expect("config"),
        IsoTpEndpoint::new(cfg(0x7E8, 0x7E0)).expect("config"),
    )
}

/// Send every message from `a` to `b` and collect what `b` reassembles.
fn run(a: &mut IsoTpEndpoint, b: &mut IsoTpEndpoint, msgs: &[Vec<u8>], now: Instant) -> usize {
    let mut received = 0;
    for m in msgs {
        a.send(m, now).expect("send");
        'msg: loop {
            while let Some(f) = a.poll_transmit(now) {
                b.handle_frame(&f, now);
            }
            while let Some(f) = b.poll_transmit(now) {
                a.handle_frame(&f, now);
            }
            while let Some(ev) = b.poll_event() {
                if let IsoTpEvent::Received(r) = ev {
                    received += r.len();
                    break 'msg;
                }
            }
        }
        while a.poll_event().is_some() {}
    }
    received
}

fn capture() -> Vec<CanFrame> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/captures/nissan-leaf-isotp.log"
    );
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("benchmark input {path}: {e}"));
    candump::Reader::new(&bytes[..])
        .filter_map(Result::ok)
        .filter_map(|l| match l.entry {
            Entry::Record(r) => Some(r.frame),
            Entry::Drop(_) => None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let msgs = messages();
    let total: usize = msgs.iter().map(Vec::len).sum();
    let now = Instant::now();
    let mut g = c.benchmark_group("isotp");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.bench_function("segment_reassemble_messages", |bch| {
        let (mut a, mut b) = pair();
        bch.iter(|| assert_eq!(run(&mut a, &mut b, black_box(&msgs), now), total));
    });
    let frames = capture();
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("monitor_nissan_capture", |bch| {
        bch.iter(|| {
            let mut m = IsoTpMonitor::link(&Addressing::Normal {
                tx_id: CanId::standard(0x79B).expect("id"),
                rx_id: CanId::standard(0x7BB).expect("id"),
            });
            let mut n = 0;
            for f in &frames {
                m.handle_frame(black_box(f), now);
                while m.poll_event().is_some() {
                    n += 1;
                }
            }
            n
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
