//! The passive ISO-TP decoder on a real capture: `data/captures/nissan-leaf-isotp.log` holds
//! Nissan Leaf diagnostics between a tester on 0x79B and an ECU on 0x7BB (single frames, first
//! frames, flow control, consecutive frames) among 5,367 frames of other traffic. Every message
//! of both directions is reassembled, with no error.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use can_io::CanId;
use can_io::formats::{Entry, candump};
use can_io::isotp::{Addressing, IsoTpEvent, IsoTpMonitor};

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/captures/nissan-leaf-isotp.log"
);

#[test]
fn every_message_of_the_nissan_capture_is_reassembled() {
    let bytes = std::fs::read(CAPTURE).unwrap();
    let tester = CanId::standard(0x79B).unwrap();
    let ecu = CanId::standard(0x7BB).unwrap();
    let mut monitor = IsoTpMonitor::link(&Addressing::Normal {
        tx_id: tester,
        rx_id: ecu,
    });
    let t0 = Instant::now();
    let mut first_ts = None;
    let mut frames = 0;
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    let mut errors = Vec::new();
    for line in candump::Reader::new(&bytes[..]) {
        let Entry::Record(r) = line.unwrap().entry else {
            continue;
        };
        frames += 1;
        let first = *first_ts.get_or_insert(r.ts_ns);
        let now = t0 + Duration::from_nanos(r.ts_ns - first);
        monitor.handle_timeout(now);
        monitor.handle_frame(&r.frame, now);
        while let Some(ev) = monitor.poll_event() {
            match ev.event {
                IsoTpEvent::Received(m) if ev.id == tester => requests.push(m),
                IsoTpEvent::Received(m) => responses.push(m),
                IsoTpEvent::Error(e) => errors.push((ev.id, e)),
                IsoTpEvent::FirstFrame { .. } | IsoTpEvent::Sent => {}
            }
        }
    }
    assert_eq!(frames, 5588);
    assert_eq!(errors, vec![]);
    // The tester asks 26 times, each time in one single frame: 0x21 0x01 or 0x21 0x04
    // (KWP2000-style ReadDataByLocalIdentifier, as the Leaf's battery ECU speaks it).
    assert_eq!(requests.len(), 26);
    assert!(
        requests
            .iter()
            .all(|r| r == &[0x21, 0x01] || r == &[0x21, 0x04])
    );
    // Every answer is multi-frame: 53 bytes to 0x21 0x01, 31 bytes to 0x21 0x04.
    assert_eq!(responses.len(), 26);
    for (req, resp) in requests.iter().zip(&responses) {
        assert_eq!(resp[..2], [0x61, req[1]]);
        assert_eq!(resp.len(), if req[1] == 0x01 { 53 } else { 31 });
    }
    let tester_stats = monitor.stats(tester).unwrap();
    let ecu_stats = monitor.stats(ecu).unwrap();
    // 26 single frames and 26 flow controls from the tester; 26 first frames and 143
    // consecutive frames from the ECU.
    assert_eq!(tester_stats.frames_received, 52);
    assert_eq!(ecu_stats.frames_received, 169);
    assert_eq!(
        (tester_stats.messages_received, ecu_stats.messages_received),
        (26, 26)
    );
    assert_eq!(tester_stats.errors() + ecu_stats.errors(), 0);
    assert_eq!(monitor.ignored(), 5588 - 221);
}
