//! Wire codec speed on the real SavvyCAN capture (12,974 classic frames) held in memory:
//! REMP batch encode / decode (with sequence accounting), cannelloni UDP encode / decode,
//! python-can multicast encode / decode, and as a ceiling a plain copy of the REMP bytes.
//! Throughput is in frames.
//!
//! Run: `cargo bench -p can-io --bench wire`. Kept short (2 s per benchmark): the machine is
//! shared.

use std::hint::black_box;
use std::time::Duration;

use can_io::formats::{Entry, candump};
use can_io::wire::cannelloni::{self, CannelloniSender};
use can_io::wire::multicast::MulticastMessage;
use can_io::wire::remp::{RempReceiver, RempSender};
use can_io::{CanFrame, CanRecord};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn records() -> Vec<CanRecord> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/can/savvycan-candump.log"
    );
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => panic!("benchmark input {path}: {e}"),
    };
    candump::Reader::new(&bytes[..])
        .filter_map(Result::ok)
        .filter_map(|l| match l.entry {
            Entry::Record(r) => Some(r),
            Entry::Drop(_) => None,
        })
        .collect()
}

fn remp_datagrams(records: &[CanRecord]) -> Vec<Vec<u8>> {
    let mut s = RempSender::new("BENCH-1", 1, 1000).expect("serial");
    let mut out = vec![s.hello().expect("hello")];
    for r in records {
        out.extend(s.push(r).expect("push"));
    }
    out.extend(s.flush().expect("flush"));
    out
}

fn cannelloni_datagrams(frames: &[CanFrame]) -> Vec<Vec<u8>> {
    let mut s = CannelloniSender::new();
    let mut out = Vec::new();
    for f in frames {
        out.extend(s.push(*f).expect("push"));
    }
    out.extend(s.flush().expect("flush"));
    out
}

fn bench(c: &mut Criterion) {
    let records = records();
    let frames: Vec<CanFrame> = records.iter().map(|r| r.frame).collect();
    let n = records.len() as u64;
    let remp = remp_datagrams(&records);
    let canl = cannelloni_datagrams(&frames);
    let mc: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            MulticastMessage::from_frame(r.ts_ns, Some(&r.channel), &r.frame)
                .encode()
                .expect("encode")
        })
        .collect();

    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(n));
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);

    g.bench_function("ceiling_copy_remp_bytes", |b| {
        b.iter(|| {
            let copies: Vec<Vec<u8>> = remp.iter().map(|d| d.to_vec()).collect();
            black_box(copies)
        })
    });
    g.bench_function("remp_encode", |b| {
        b.iter(|| black_box(remp_datagrams(black_box(&records))))
    });
    g.bench_function("remp_decode", |b| {
        b.iter(|| {
            let mut rx = RempReceiver::default();
            let mut count = 0usize;
            for d in &remp {
                if let Ok(can_io::wire::remp::RempEvent::Frames { records, .. }) =
                    rx.handle_datagram(d, 0)
                {
                    count += records.len();
                }
            }
            black_box(count)
        })
    });
    g.bench_function("cannelloni_encode", |b| {
        b.iter(|| black_box(cannelloni_datagrams(black_box(&frames))))
    });
    g.bench_function("cannelloni_decode", |b| {
        b.iter(|| {
            let mut count = 0usize;
            for d in &canl {
                if let Ok(d) = cannelloni::decode_datagram(d) {
                    count += d.frames.len();
                }
            }
            black_box(count)
        })
    });
    g.bench_function("multicast_encode", |b| {
        b.iter(|| {
            for r in &records {
                black_box(
                    MulticastMessage::from_frame(r.ts_ns, Some(&r.channel), &r.frame)
                        .encode()
                        .ok(),
                );
            }
        })
    });
    g.bench_function("multicast_decode", |b| {
        b.iter(|| {
            for d in &mc {
                black_box(MulticastMessage::decode(d).ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
