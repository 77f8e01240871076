//! Data-plane codec cost per frame batch, side by side with the baseline it replaced:
//!
//! * `decode/two_pass` — [`protocol::decode`] (type probe, then the message's own struct, then
//!   validation) of one 22-frame `frames` batch (4,500 frames/s in 5 ms batches).
//! * `decode/tagged_derive` — the same bytes through serde's derived internally tagged
//!   [`Message`] (buffers the whole message in serde's `Content` tree first), no validation.
//! * `deliver/live` and `deliver/log` — what the server does to deliver the batch
//!   ([`protocol::encode_delivery`]): from memory, MessagePack spliced without decoding; read
//!   back from the log, every frame decoded and validated first, then spliced (MessagePack) or
//!   re-encoded (JSON). Beside `deliver/reencoded`, decode-and-encode for every frame.
//! * `store` — turning a received batch into stream items: MessagePack (the stored format)
//!   encoded again, MessagePack sliced from the received message
//!   ([`FrameBatch::to_items_from`], what the server does), and compact JSON (the format
//!   before).
//! * `produce` — what the dongle agent does with each frame it stores: the record's stored form
//!   written straight from the record ([`protocol::StoredFrameEncoder`]) beside the reference
//!   path (`WireFrame::from_record`, then [`protocol::encode_stored_frame`]).
//!
//! Run: `cargo bench -p relay-core --bench protocol` (the machine is shared: compare ratios).

#![allow(clippy::unwrap_used, missing_docs)]

use can_io::wire::relay_json::CanRelayFrame;
use can_io::{CanFrame, CanId, CanRecord, Channel, DataFrame, Direction};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relay_core::engine::DeliverySource;
use relay_core::protocol::{self, Encoding, FrameBatch, Message};

const FRAMES: u64 = 22;

const GROUP: &str = "0b6f3c1e-4a58-4c2b-9a55-3f2d4c1e9b7a";

/// The batch's frames as the dongle captured them.
fn records() -> Vec<CanRecord> {
    let id = CanId::standard(0x7e8).unwrap();
    (0..FRAMES)
        .map(|i| {
            let data = DataFrame::new(id, &[0x02, 0x10, 0x03, 0, 0, 0, 0, 0]).unwrap();
            CanRecord::new(
                1_700_000_000_000_000_000 + i * 222_222,
                Channel::from(""),
                Direction::Rx,
                CanFrame::Data(data),
            )
        })
        .collect()
}

fn batch() -> Message {
    let frames = records()
        .iter()
        .map(|record| CanRelayFrame::from_record(GROUP, record))
        .collect();
    Message::Frames(FrameBatch {
        first_seq: 1,
        frames,
    })
}

fn codec(c: &mut Criterion) {
    let message = batch();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(FRAMES));
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let bytes = protocol::encode(&message, encoding).unwrap();
        group.bench_with_input(
            BenchmarkId::new("two_pass", encoding.as_str()),
            &bytes,
            |b, bytes| b.iter(|| protocol::decode(bytes, encoding).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("tagged_derive", encoding.as_str()),
            &bytes,
            |b, bytes| {
                b.iter(|| -> Message {
                    match encoding {
                        Encoding::Json => serde_json::from_slice(bytes).unwrap(),
                        Encoding::Msgpack => rmp_serde::from_slice(bytes).unwrap(),
                    }
                })
            },
        );
    }
    group.finish();

    let Message::Frames(frames) = &message else {
        unreachable!()
    };
    let items = frames.to_items().unwrap();
    let mut group = c.benchmark_group("deliver");
    group.throughput(Throughput::Elements(FRAMES));
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        for (name, source) in [("live", DeliverySource::Live), ("log", DeliverySource::Log)] {
            group.bench_function(BenchmarkId::new(name, encoding.as_str()), |b| {
                b.iter(|| protocol::encode_delivery("a_to_b", &items, encoding, source).unwrap())
            });
        }
        group.bench_function(BenchmarkId::new("reencoded", encoding.as_str()), |b| {
            b.iter(|| {
                let batch = FrameBatch::from_items("a_to_b", &items).unwrap();
                protocol::encode(&Message::Frames(batch), encoding).unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(FRAMES));
    group.bench_function("msgpack", |b| b.iter(|| frames.to_items().unwrap()));
    let received = bytes::Bytes::from(protocol::encode(&message, Encoding::Msgpack).unwrap());
    group.bench_function("msgpack_received_slices", |b| {
        b.iter(|| frames.to_items_from(&received, Encoding::Msgpack).unwrap())
    });
    group.bench_function("json", |b| {
        b.iter(|| {
            frames
                .frames
                .iter()
                .map(CanRelayFrame::encode)
                .collect::<Vec<_>>()
        })
    });
    group.finish();

    let records = records();
    let mut group = c.benchmark_group("produce");
    group.throughput(Throughput::Elements(FRAMES));
    let encoder = protocol::StoredFrameEncoder::new(GROUP);
    group.bench_function("direct", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| encoder.encode(r))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("via_wire_frame", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| {
                    protocol::encode_stored_frame(&protocol::WireFrame::from_record(GROUP, r))
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
