//! Property tests for the wire codecs: every frame a protocol can carry survives
//! frame → wire → frame unchanged, and every decoder survives arbitrary and mutated bytes
//! (returning an error, never panicking).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use can_io::wire::cannelloni::{self, CannelloniTcpCodec, TCP_BANNER};
use can_io::wire::multicast::MulticastMessage;
use can_io::wire::relay_json::CanRelayFrame;
use can_io::wire::remp::{self, RempEvent, RempReceiver, RempSender};
use can_io::wire::socketcand::{self, ClientMessage, ServerMessage};
use can_io::{CanFrame, CanRecord, DataFrame};
use common::*;
use proptest::prelude::*;

/// The frame without a raw DLC (for protocols that cannot carry `len8_dlc`).
fn without_raw_dlc(f: CanFrame) -> CanFrame {
    match f {
        CanFrame::Data(d) => CanFrame::Data(DataFrame::new(d.id(), d.data()).unwrap()),
        other => other,
    }
}

fn arb_epoch_us() -> impl Strategy<Value = u64> {
    (1_500_000_000_000_000u64..1_900_000_000_000_000).prop_map(|us| us * 1000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn relay_json_round_trips(record in arb_record()) {
        let text = CanRelayFrame::from_record("group-1", &record).encode();
        let back = CanRelayFrame::decode(text.as_bytes()).unwrap();
        prop_assert_eq!(back.to_record(&Arc::from("other")).unwrap(), record);
    }

    #[test]
    fn remp_round_trips_batches(records in prop::collection::vec(arb_record(), 1..40)) {
        let mut sender = RempSender::new("SIM-1", 42, 1000).unwrap();
        let mut datagrams = vec![sender.hello().unwrap()];
        // Keep to the 16 channels a dongle may declare.
        let mut names: Vec<can_io::Channel> = Vec::new();
        for r in &records {
            if !names.contains(&r.channel) && names.len() < 16 {
                names.push(r.channel.clone());
            }
        }
        let records: Vec<CanRecord> = records.into_iter().filter(|r| names.contains(&r.channel)).collect();
        for r in &records {
            datagrams.extend(sender.push(r).unwrap());
        }
        datagrams.extend(sender.flush().unwrap());
        let mut rx = RempReceiver::default();
        let mut out = Vec::new();
        for d in &datagrams {
            prop_assert!(d.len() <= remp::MAX_DATAGRAM);
            // Canonical encoding: decoding and encoding again gives the same bytes.
            prop_assert_eq!(&remp::decode(d).unwrap().to_bytes().unwrap(), d);
            if let RempEvent::Frames { records, .. } = rx.handle_datagram(d, 0).unwrap() {
                out.extend(records);
            }
        }
        prop_assert_eq!(out, records);
        let stats = rx.stats("SIM-1").unwrap();
        prop_assert_eq!((stats.lost, stats.duplicate, stats.reordered), (0, 0, 0));
    }

    #[test]
    fn remp_counts_loss_duplicates_and_reordering(
        n in 2usize..60,
        drops in prop::collection::btree_set(0usize..60, 0..10),
        dups in prop::collection::btree_set(0usize..60, 0..5),
        swap in 0usize..60,
    ) {
        let mut sender = RempSender::new("SIM-2", 1, 1000).unwrap();
        let mut datagrams: Vec<Vec<u8>> = (0..n).map(|_| sender.keepalive().unwrap()).collect();
        // Swap a neighbouring pair (reordering), then drop some and duplicate some.
        let swap = swap % (n - 1);
        datagrams.swap(swap, swap + 1);
        let mut wire = Vec::new();
        let mut delivered = std::collections::BTreeSet::new();
        for (i, d) in datagrams.iter().enumerate() {
            let seq = remp::decode(d).unwrap().seq;
            // Never drop the first one: the loss count starts at the first seen.
            if i > 0 && drops.contains(&i) {
                continue;
            }
            wire.push(d.clone());
            delivered.insert(seq);
            if dups.contains(&i) {
                wire.push(d.clone());
            }
        }
        let mut rx = RempReceiver::default();
        for d in &wire {
            rx.handle_datagram(d, 0).unwrap();
        }
        let s = rx.stats("SIM-2").unwrap();
        // Everything here is within the 64-datagram window, so every distinct datagram is
        // accepted, and what is lost is what never arrived between the lowest and highest seen.
        let min = *delivered.iter().min().unwrap();
        let max = *delivered.iter().max().unwrap();
        let expected_lost = (min..=max).filter(|q| !delivered.contains(q)).count() as u64;
        prop_assert_eq!(s.datagrams, delivered.len() as u64);
        prop_assert_eq!(s.lost, expected_lost);
        prop_assert_eq!(s.duplicate, (wire.len() - delivered.len()) as u64);
    }

    #[test]
    fn cannelloni_round_trips(frames in prop::collection::vec(arb_frame(), 0..20), seq in any::<u8>()) {
        let frames: Vec<CanFrame> = frames.into_iter().map(without_raw_dlc).collect();
        let bytes = cannelloni::encode_datagram(seq, &frames).unwrap();
        let d = cannelloni::decode_datagram(&bytes).unwrap();
        prop_assert_eq!(d.seq, seq);
        prop_assert_eq!(&d.frames, &frames);
        // The same frames over the TCP stream, read in random-sized pieces.
        let mut stream = TCP_BANNER.to_vec();
        for f in &frames {
            cannelloni::encode_frame(f, &mut stream);
        }
        let mut codec = CannelloniTcpCodec::new();
        let mut buf = bytes::BytesMut::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(1 + seq as usize % 13) {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode_buf(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn socketcand_round_trips(frame in arb_plain_data_frame(), ts in arb_ts_us()) {
        let frame = CanFrame::Data(frame);
        let line = socketcand::encode_frame(ts, &frame).unwrap();
        let mut t = socketcand::Tokenizer::new();
        t.push(line.as_bytes());
        let el = t.next_element().unwrap().unwrap();
        prop_assert_eq!(socketcand::parse_server(&el).unwrap(), ServerMessage::Frame { ts_ns: ts, frame });
        let send = socketcand::encode_send(&frame).unwrap();
        t.push(send.as_bytes());
        let el = t.next_element().unwrap().unwrap();
        prop_assert_eq!(socketcand::parse_client(&el).unwrap(), ClientMessage::Send(frame));
    }

    #[test]
    fn multicast_round_trips(frame in arb_frame(), ts in arb_epoch_us(), channel in arb_channel()) {
        let frame = without_raw_dlc(frame);
        let bytes = MulticastMessage::from_frame(ts, Some(&channel), &frame).encode().unwrap();
        let m = MulticastMessage::decode(&bytes).unwrap();
        prop_assert_eq!(m.frame().unwrap(), frame);
        prop_assert_eq!(m.ts_ns(), ts);
        prop_assert_eq!(m.channel_name(), Some(channel.to_string()));
    }

    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
        let _ = remp::decode(&bytes);
        let _ = RempReceiver::default().handle_datagram(&bytes, 0);
        let _ = cannelloni::decode_datagram(&bytes);
        let _ = cannelloni::decode_frame(&bytes);
        let mut codec = CannelloniTcpCodec::new();
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode_buf(&mut buf) {}
        let _ = MulticastMessage::decode(&bytes);
        let _ = CanRelayFrame::decode(&bytes);
        let mut t = socketcand::Tokenizer::new();
        t.push(&bytes);
        while let Some(el) = t.next_element() {
            if let Ok(el) = el {
                let _ = socketcand::parse_client(&el);
                let _ = socketcand::parse_server(&el);
            }
        }
        // Random bytes are not REMP: the magic alone makes that certain unless they start with it.
        if !bytes.starts_with(b"REMP") {
            prop_assert!(remp::decode(&bytes).is_err());
        }
        if bytes.first() != Some(&2) {
            prop_assert!(cannelloni::decode_datagram(&bytes).is_err());
        }
    }

    #[test]
    fn decoders_survive_mutations(records in prop::collection::vec(arb_record(), 1..6), pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut sender = RempSender::new("SIM-3", 1, 1000).unwrap();
        let mut ds = Vec::new();
        for r in &records {
            ds.extend(sender.push(r).unwrap());
        }
        ds.extend(sender.flush().unwrap());
        let frames: Vec<CanFrame> = records.iter().map(|r| without_raw_dlc(r.frame)).collect();
        ds.push(cannelloni::encode_datagram(1, &frames).unwrap());
        ds.push(MulticastMessage::from_frame(1, None, &frames[0]).encode().unwrap());
        ds.push(CanRelayFrame::from_record("g", &records[0]).encode().into_bytes());
        for mut d in ds {
            let i = pos.index(d.len());
            d[i] = byte;
            d.truncate(cut.index(d.len() + 1));
            let _ = remp::decode(&d);
            let _ = cannelloni::decode_datagram(&d);
            let _ = MulticastMessage::decode(&d);
            let _ = CanRelayFrame::decode(&d);
        }
    }
}
