//! Log codec speed: candump parsing and writing, plus ASC and JSON lines writing, on the real
//! SavvyCAN capture (12,974 frames) held in memory. Throughput is in frames.
//!
//! Run: `cargo bench -p can-io --bench canlog`. Kept short (a few seconds per benchmark) because
//! the machine is shared.

use std::hint::black_box;
use std::time::Duration;

use can_io::CanRecord;
use can_io::formats::{Entry, asc, candump, jsonl};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn capture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/can/savvycan-candump.log"
    );
    match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("benchmark input {path}: {e}"),
    }
}

fn records(log: &[u8]) -> Vec<(CanRecord, candump::LineStyle)> {
    candump::Reader::new(log)
        .filter_map(Result::ok)
        .filter_map(|l| match l.entry {
            Entry::Record(r) => Some((r, l.style)),
            Entry::Drop(_) => None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let log = capture();
    let recs = records(&log);
    let frames = recs.len() as u64;

    let mut g = c.benchmark_group("candump");
    g.throughput(Throughput::Elements(frames));
    g.bench_function("read", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for line in candump::Reader::new(black_box(log.as_slice())) {
                if line.is_ok() {
                    n += 1;
                }
            }
            n
        })
    });
    g.bench_function("parse_line", |b| {
        let lines: Vec<&[u8]> = log
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut parser = candump::Parser::new();
        b.iter(|| {
            let mut n = 0u64;
            for line in &lines {
                if let Ok(Some(_)) = parser.parse(black_box(line)) {
                    n += 1;
                }
            }
            n
        })
    });
    g.bench_function("write", |b| {
        let mut out = Vec::with_capacity(log.len() * 2);
        b.iter(|| {
            out.clear();
            for (r, style) in &recs {
                candump::write_record(&mut out, r, style);
            }
            out.len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("other_writers");
    g.throughput(Throughput::Elements(frames));
    g.bench_function("asc_write", |b| {
        let mut out = Vec::with_capacity(log.len() * 4);
        b.iter(|| {
            out.clear();
            let mut w = asc::Writer::new();
            for (r, _) in &recs {
                w.write_record(&mut out, r);
            }
            w.finish(&mut out);
            out.len()
        })
    });
    g.bench_function("jsonl_write", |b| {
        let mut out = Vec::with_capacity(log.len() * 6);
        b.iter(|| {
            out.clear();
            for (r, _) in &recs {
                jsonl::write_record(&mut out, r);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
