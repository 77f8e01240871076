//! ISO-TP endpoint behaviour, frame by frame, on a virtual link with a virtual clock: each
//! frame type and addressing mode, padding, CAN FD and the 32-bit first frame, block size and
//! STmin in both directions, WAIT and OVERFLOW, malformed sequences, and the N_Bs / N_Cr timers.
#![allow(clippy::unwrap_used)]

mod isotp_support;

use std::time::{Duration, Instant};

use can_io::isotp::{
    Addressing, FrameFormat, IsoTpConfig, IsoTpEndpoint, IsoTpError, IsoTpEvent, StMin, Timer,
};
use can_io::{CanFrame, CanId, DataFrame, FdFlags, FdFrame};
use isotp_support::{Side, endpoints, events, payload, received, tester_and_ecu};

fn classic(id: u32, data: &[u8]) -> CanFrame {
    CanFrame::Data(DataFrame::new(CanId::standard(id).unwrap(), data).unwrap())
}

/// The error event of a transfer aborted by `timer`.
fn timed_out(timer: Timer) -> IsoTpEvent {
    IsoTpEvent::Error(IsoTpError::Timeout { timer })
}

fn data_of(log: &[(Duration, Side, CanFrame)]) -> Vec<(Side, Vec<u8>)> {
    log.iter()
        .map(|(_, s, f)| (*s, f.data().to_vec()))
        .collect()
}

#[test]
fn single_frame_padded_and_unpadded() {
    let (t, mut e) = tester_and_ecu();
    e.padding = None;
    let mut p = endpoints(t, e);
    p.a.send(&[0x22, 0xF1, 0x90], p.now).unwrap();
    p.b.send(&[0x62, 0xF1], p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    assert_eq!(
        data_of(&p.log),
        vec![
            (
                Side::A,
                vec![0x03, 0x22, 0xF1, 0x90, 0xCC, 0xCC, 0xCC, 0xCC]
            ),
            (Side::B, vec![0x02, 0x62, 0xF1]),
        ]
    );
    assert_eq!(p.log[0].2.id(), Some(CanId::standard(0x7E0).unwrap()));
    assert_eq!(received(&events(&mut p.b)), vec![vec![0x22, 0xF1, 0x90]]);
    let a = events(&mut p.a);
    assert_eq!(a[0], IsoTpEvent::Sent);
    assert_eq!(received(&a), vec![vec![0x62, 0xF1]]);
}

#[test]
fn first_flow_control_and_consecutive_frames() {
    let (t, e) = tester_and_ecu();
    let mut p = endpoints(t, e);
    let msg = payload(20);
    p.b.send(&msg, p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    let frames = data_of(&p.log);
    assert_eq!(frames[0], (Side::B, [&[0x10, 20][..], &msg[..6]].concat()));
    assert_eq!(
        frames[1],
        (Side::A, vec![0x30, 0, 0, 0xCC, 0xCC, 0xCC, 0xCC, 0xCC])
    );
    assert_eq!(frames[2], (Side::B, [&[0x21][..], &msg[6..13]].concat()));
    assert_eq!(frames[3], (Side::B, [&[0x22][..], &msg[13..20]].concat()));
    assert_eq!(frames.len(), 4);
    let a = events(&mut p.a);
    assert_eq!(a[0], IsoTpEvent::FirstFrame { len: 20 });
    assert_eq!(received(&a), vec![msg]);
    assert_eq!(p.a.stats().messages_received, 1);
    assert_eq!(p.b.stats().frames_sent, 3);
}

#[test]
fn sequence_numbers_wrap_after_fifteen() {
    let (t, e) = tester_and_ecu();
    let mut p = endpoints(t, e);
    let msg = payload(6 + 7 * 20);
    p.a.send(&msg, p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    let sns: Vec<u8> = p
        .log
        .iter()
        .filter(|(_, s, f)| *s == Side::A && f.data()[0] >> 4 == 2)
        .map(|(_, _, f)| f.data()[0] & 0xF)
        .collect();
    assert_eq!(sns.len(), 20);
    assert_eq!(&sns[13..17], &[14, 15, 0, 1]);
    assert_eq!(received(&events(&mut p.b)), vec![msg]);
}

#[test]
fn extended_addressing_prefixes_every_frame_and_filters_by_address() {
    let id = |r| CanId::standard(r).unwrap();
    let t = IsoTpConfig::new(Addressing::Extended {
        tx_id: id(0x6F1),
        rx_id: id(0x612),
        target_address: 0x12,
        source_address: 0xF1,
    });
    let e = IsoTpConfig::new(Addressing::Extended {
        tx_id: id(0x612),
        rx_id: id(0x6F1),
        target_address: 0xF1,
        source_address: 0x12,
    });
    assert_eq!(t.max_single_frame(), 6);
    let mut p = endpoints(t, e);
    let msg = payload(15);
    p.a.send(&msg, p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    let frames = data_of(&p.log);
    assert_eq!(frames[0].1[..3], [0x12, 0x10, 15]);
    assert_eq!(frames[1].1[..2], [0xF1, 0x30]);
    assert_eq!(frames[2].1[..2], [0x12, 0x21]);
    assert_eq!(frames.len(), 4); // FF 5 bytes + CF 6 + CF 4
    assert_eq!(received(&events(&mut p.b)), vec![msg]);
    // Same identifier, another address byte: not for us.
    let other = classic(0x6F1, &[0x13, 0x02, 0x3E, 0x00]);
    assert!(!p.b.handle_frame(&other, p.now));
    assert_eq!(p.b.stats().frames_ignored, 1);
}

#[test]
fn normal_fixed_addressing_uses_0x18da_identifiers() {
    let t = IsoTpConfig::new(Addressing::NormalFixed {
        source_address: 0xF1,
        target_address: 0x10,
    });
    let e = IsoTpConfig::new(Addressing::NormalFixed {
        source_address: 0x10,
        target_address: 0xF1,
    });
    let mut p = endpoints(t, e);
    let msg = payload(30);
    p.a.send(&msg, p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    for (_, side, f) in &p.log {
        let want = match side {
            Side::A => 0x18DA_10F1,
            Side::B => 0x18DA_F110,
        };
        assert_eq!(f.id(), Some(CanId::extended(want).unwrap()));
    }
    assert_eq!(received(&events(&mut p.b)), vec![msg]);
}

#[test]
fn can_fd_frames_and_single_frame_escape() {
    let (mut t, mut e) = tester_and_ecu();
    t.format = FrameFormat::FD64;
    e.format = FrameFormat::FD64;
    e.padding = None;
    let mut p = endpoints(t, e);
    // 40 bytes: one escaped single frame of 42 → padded to 48 (the next FD length).
    let msg = payload(40);
    p.a.send(&msg, p.now).unwrap();
    // 200 bytes: FF of 64 (62 data) + CFs of 63.
    let long = payload(200);
    p.b.send(&long, p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    let sf = &p.log[0].2;
    assert!(sf.is_fd());
    assert_eq!(sf.data().len(), 48);
    assert_eq!(&sf.data()[..2], &[0x00, 40]);
    assert!(sf.data()[42..].iter().all(|b| *b == 0xCC));
    let b_frames: Vec<usize> = p
        .log
        .iter()
        .filter(|(_, s, _)| *s == Side::B)
        .map(|(_, _, f)| f.data().len())
        .collect();
    // 62 + 63 + 63 = 188, 12 left + 1 PCI = 13 → 16 (FD length, filled with 0xCC).
    assert_eq!(b_frames, vec![64, 64, 64, 16]);
    assert_eq!(received(&events(&mut p.b)), vec![msg]);
    assert_eq!(received(&events(&mut p.a)), vec![long]);
}

#[test]
fn messages_over_4095_bytes_use_the_32_bit_first_frame() {
    for format in [FrameFormat::Classic, FrameFormat::FD64] {
        let (mut t, mut e) = tester_and_ecu();
        t.format = format;
        e.format = format;
        let mut p = endpoints(t, e);
        let msg = payload(5000);
        p.a.send(&msg, p.now).unwrap();
        assert!(p.run(Duration::from_secs(10)));
        let ff = p.log[0].2.data();
        assert_eq!(&ff[..6], &[0x10, 0x00, 0x00, 0x00, 0x13, 0x88]);
        assert_eq!(received(&events(&mut p.b)), vec![msg]);
    }
}

#[test]
fn block_size_and_st_min_are_honoured_by_the_sender() {
    let (t, mut e) = tester_and_ecu();
    e.block_size = 3;
    e.st_min = StMin::from_raw(0x0A); // 10 ms
    let mut p = endpoints(t, e);
    let msg = payload(6 + 7 * 7); // FF + 7 CFs
    p.a.send(&msg, p.now).unwrap();
    assert!(p.run(Duration::from_secs(5)));
    let kinds: Vec<(Side, u8)> = p
        .log
        .iter()
        .map(|(_, s, f)| (*s, f.data()[0] >> 4))
        .collect();
    use Side::{A, B};
    assert_eq!(
        kinds,
        vec![
            (A, 1),
            (B, 3),
            (A, 2),
            (A, 2),
            (A, 2),
            (B, 3),
            (A, 2),
            (A, 2),
            (A, 2),
            (B, 3),
            (A, 2)
        ]
    );
    let cf_times: Vec<Duration> = p
        .log
        .iter()
        .filter(|(_, s, f)| *s == A && f.data()[0] >> 4 == 2)
        .map(|(t, _, _)| *t)
        .collect();
    // Within a block, consecutive frames are exactly STmin apart.
    assert_eq!(cf_times[1] - cf_times[0], Duration::from_millis(10));
    assert_eq!(cf_times[2] - cf_times[1], Duration::from_millis(10));
    assert_eq!(received(&events(&mut p.b)), vec![msg]);
}

#[test]
fn microsecond_st_min_is_honoured() {
    let (t, mut e) = tester_and_ecu();
    e.st_min = StMin::from_raw(0xF3); // 300 µs
    let mut p = endpoints(t, e);
    p.a.send(&payload(6 + 7 * 3), p.now).unwrap();
    assert!(p.run(Duration::from_secs(1)));
    let cf: Vec<Duration> = p
        .log
        .iter()
        .filter(|(_, _, f)| f.data()[0] >> 4 == 2)
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(cf[2] - cf[1], Duration::from_micros(300));
}

/// Drive a tester endpoint by hand: it sent a first frame, we answer with `fc`.
fn sender_after_first_frame(len: usize) -> (IsoTpEndpoint, Instant) {
    let (t, _) = tester_and_ecu();
    let mut ep = IsoTpEndpoint::new(t).unwrap();
    let now = Instant::now();
    ep.send(&payload(len), now).unwrap();
    let ff = ep.poll_transmit(now).unwrap();
    assert_eq!(ff.data()[0] >> 4, 1);
    assert_eq!(ep.poll_transmit(now), None);
    (ep, now)
}

#[test]
fn flow_control_wait_then_continue() {
    let (mut ep, t0) = sender_after_first_frame(20);
    let t1 = t0 + Duration::from_millis(900);
    ep.handle_frame(&classic(0x7E8, &[0x31, 0, 0]), t1);
    // WAIT restarts N_Bs: nothing expires at the old deadline.
    ep.handle_timeout(t0 + Duration::from_millis(1500));
    assert!(events(&mut ep).is_empty());
    assert_eq!(ep.poll_timeout(), Some(t1 + Duration::from_secs(1)));
    ep.handle_frame(&classic(0x7E8, &[0x30, 0, 0]), t1);
    assert!(ep.poll_transmit(t1).is_some());
    assert!(ep.poll_transmit(t1).is_some());
    assert_eq!(events(&mut ep), vec![IsoTpEvent::Sent]);
}

#[test]
fn too_many_waits_abort() {
    let (mut ep, t0) = sender_after_first_frame(20);
    for _ in 0..=10 {
        ep.handle_frame(&classic(0x7E8, &[0x31, 0, 0]), t0);
    }
    assert_eq!(
        events(&mut ep),
        vec![IsoTpEvent::Error(IsoTpError::TooManyWaits { max: 10 })]
    );
    assert_eq!(ep.stats().tx_aborted, 1);
    assert!(!ep.is_sending());
}

#[test]
fn overflow_answer_aborts_the_transmission() {
    let (mut ep, t0) = sender_after_first_frame(300);
    ep.handle_frame(&classic(0x7E8, &[0x32, 0, 0]), t0);
    assert_eq!(
        events(&mut ep),
        vec![IsoTpEvent::Error(IsoTpError::Overflow { len: 300 })]
    );
    assert_eq!(ep.poll_transmit(t0), None);
    // A reserved flow status aborts too.
    let (mut ep, t0) = sender_after_first_frame(300);
    ep.handle_frame(&classic(0x7E8, &[0x35, 0, 0]), t0);
    assert_eq!(
        events(&mut ep),
        vec![IsoTpEvent::Error(IsoTpError::InvalidFlowStatus {
            status: 5
        })]
    );
    assert_eq!(ep.stats().tx_aborted, 1);
    assert!(!ep.is_sending());
}

#[test]
fn over_long_first_frame_is_answered_with_overflow() {
    let (_, mut e) = tester_and_ecu();
    e.max_rx_len = 100;
    let mut ep = IsoTpEndpoint::new(e).unwrap();
    let now = Instant::now();
    ep.handle_frame(&classic(0x7E0, &[0x10, 101, 1, 2, 3, 4, 5, 6]), now);
    let fc = ep.poll_transmit(now).unwrap();
    assert_eq!(fc.data()[..3], [0x32, 0, 0]);
    assert_eq!(
        events(&mut ep),
        vec![IsoTpEvent::Error(IsoTpError::MessageTooLong {
            len: 101,
            max: 100
        })]
    );
    assert_eq!(ep.stats().rx_aborted, 1);
    // Its consecutive frames then find no reception.
    ep.handle_frame(&classic(0x7E0, &[0x21, 7, 8, 9, 10, 11, 12, 13]), now);
    assert_eq!(
        events(&mut ep),
        vec![IsoTpEvent::Error(IsoTpError::UnexpectedConsecutiveFrame)]
    );
}

#[test]
fn malformed_sequences_abort_and_are_counted() {
    let (_, e) = tester_and_ecu();
    let mut ep = IsoTpEndpoint::new(e).unwrap();
    let now = Instant::now();
    let f = |d: &[u8]| classic(0x7E0, d);
    // Wrong sequence number.
    ep.handle_frame(&f(&[0x10, 20, 0, 1, 2, 3, 4, 5]), now);
    ep.handle_frame(&f(&[0x22, 6, 7, 8, 9, 10, 11, 12]), now);
    // Short first frame (7 bytes fit a single frame), and one in a 5-byte CAN frame.
    ep.handle_frame(&f(&[0x10, 7, 0, 1, 2, 3, 4, 5]), now);
    ep.handle_frame(&f(&[0x10, 20, 0, 1, 2]), now);
    // Unexpected consecutive frame, unexpected flow control, bad PCI, empty frame.
    ep.handle_frame(&f(&[0x21, 1, 2, 3, 4, 5, 6, 7]), now);
    ep.handle_frame(&f(&[0x30, 0, 0]), now);
    ep.handle_frame(&f(&[0x70, 1]), now);
    ep.handle_frame(&f(&[]), now);
    // A new first frame interrupts a reception; the new message then completes.
    ep.handle_frame(&f(&[0x10, 9, 0, 1, 2, 3, 4, 5]), now);
    ep.handle_frame(&f(&[0x10, 8, 9, 9, 9, 9, 9, 9]), now);
    ep.handle_frame(&f(&[0x21, 9, 9, 0xCC, 0xCC, 0xCC, 0xCC, 0xCC]), now);
    // A consecutive frame too short for what is due.
    ep.handle_frame(&f(&[0x10, 20, 0, 1, 2, 3, 4, 5]), now);
    ep.handle_frame(&f(&[0x21, 1, 2]), now);
    let errors: Vec<IsoTpError> = events(&mut ep)
        .into_iter()
        .filter_map(|e| match e {
            IsoTpEvent::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            IsoTpError::WrongSequenceNumber {
                expected: 1,
                got: 2
            },
            IsoTpError::FirstFrameTooShort { len: 7, min: 8 },
            IsoTpError::InvalidFrame {
                reason: "first frame in a CAN frame shorter than 8 bytes"
            },
            IsoTpError::UnexpectedConsecutiveFrame,
            IsoTpError::UnexpectedFlowControl,
            IsoTpError::InvalidFrame {
                reason: "unknown frame type (PCI nibble 4–15)"
            },
            IsoTpError::InvalidFrame {
                reason: "empty frame"
            },
            IsoTpError::Interrupted {
                len: 9,
                received: 6
            },
            IsoTpError::ShortConsecutiveFrame { needed: 7, got: 2 },
        ]
    );
    let s = ep.stats();
    assert_eq!(s.rx_aborted, 3);
    assert_eq!(s.invalid_frames, 4);
    assert_eq!(s.unexpected_frames, 2);
    assert_eq!(s.errors(), 9);
    assert_eq!(s.messages_received, 1);
}

#[test]
fn n_bs_expires_without_flow_control() {
    let (mut ep, t0) = sender_after_first_frame(50);
    assert_eq!(ep.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    ep.handle_timeout(t0 + Duration::from_millis(999));
    assert!(events(&mut ep).is_empty());
    ep.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(events(&mut ep), vec![timed_out(Timer::NBs)]);
    // The endpoint can send again.
    ep.send(&[1, 2], t0).unwrap();
    assert!(ep.poll_transmit(t0).is_some());
}

#[test]
fn n_cr_expires_between_consecutive_frames() {
    let (_, e) = tester_and_ecu();
    let mut ep = IsoTpEndpoint::new(e).unwrap();
    let t0 = Instant::now();
    ep.handle_frame(&classic(0x7E0, &[0x10, 20, 0, 1, 2, 3, 4, 5]), t0);
    ep.poll_transmit(t0).unwrap();
    let t1 = t0 + Duration::from_millis(800);
    ep.handle_frame(&classic(0x7E0, &[0x21, 6, 7, 8, 9, 10, 11, 12]), t1);
    assert_eq!(ep.poll_timeout(), Some(t1 + Duration::from_secs(1)));
    ep.handle_timeout(t1 + Duration::from_secs(1));
    assert_eq!(events(&mut ep)[1..], [timed_out(Timer::NCr)]);
    assert!(ep.is_idle());
}

#[test]
fn transmit_timeouts_abort_the_right_side() {
    let (mut ep, t0) = sender_after_first_frame(50);
    let ff = classic(0x7E0, &[0x10, 50, 0, 0, 0, 0, 0, 0]);
    ep.handle_transmit_timeout(&ff);
    assert_eq!(events(&mut ep), vec![timed_out(Timer::NAs)]);
    ep.handle_frame(&classic(0x7E8, &[0x10, 20, 0, 1, 2, 3, 4, 5]), t0);
    let fc = ep.poll_transmit(t0).unwrap();
    ep.handle_transmit_timeout(&fc);
    assert_eq!(events(&mut ep)[1..], [timed_out(Timer::NAr)]);
    assert!(ep.is_idle());
}

#[test]
fn send_refuses_what_it_cannot_carry() {
    let (t, _) = tester_and_ecu();
    let mut ep = IsoTpEndpoint::new(t).unwrap();
    let now = Instant::now();
    assert!(matches!(
        ep.send(&[], now),
        Err(IsoTpError::CannotSend { len: 0, .. })
    ));
    ep.send(&[1, 2], now).unwrap();
    assert_eq!(ep.send(&[3], now), Err(IsoTpError::Busy));
    ep.poll_transmit(now).unwrap();
    ep.send(&payload(100), now).unwrap();
    assert_eq!(ep.send(&payload(100), now), Err(IsoTpError::Busy));
    let mut bad = IsoTpConfig::new(Addressing::normal(1, 2).unwrap());
    bad.format = FrameFormat::Fd {
        tx_dl: 13,
        brs: false,
    };
    assert!(IsoTpEndpoint::new(bad).is_err());
}

#[test]
fn frames_not_for_us_change_nothing() {
    let (_, e) = tester_and_ecu();
    let mut ep = IsoTpEndpoint::new(e).unwrap();
    let now = Instant::now();
    assert!(!ep.handle_frame(&classic(0x7E1, &[0x02, 0x3E, 0x00]), now));
    let fd = FdFrame::new(
        CanId::extended(0x7E0).unwrap(),
        &[0x02, 0x3E, 0],
        FdFlags::default(),
    )
    .unwrap();
    assert!(!ep.handle_frame(&CanFrame::Fd(fd), now));
    assert_eq!(ep.stats().frames_ignored, 2);
    assert!(events(&mut ep).is_empty());
    assert!(ep.is_idle());
}
