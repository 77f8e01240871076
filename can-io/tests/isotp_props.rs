//! Property tests: two ISO-TP endpoints over a lossless virtual link with a virtual clock carry
//! any message (0–5000 bytes) both ways at once, under any block size, STmin, frame format,
//! padding and addressing mode, with consecutive frames never closer than STmin and never more
//! per block than the block size; and arbitrary frame sequences into a receiver never panic and
//! every error is counted.
#![allow(clippy::unwrap_used)]

mod isotp_support;

use std::time::{Duration, Instant};

use can_io::isotp::{
    Addressing, FrameFormat, IsoTpConfig, IsoTpEndpoint, IsoTpError, IsoTpEvent, StMin,
};
use can_io::{CanFrame, CanId, DataFrame, FdFlags, FdFrame};
use isotp_support::{Side, endpoints, events, payload, received};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct LinkParams {
    addressing: u8,
    format: FrameFormat,
    padding: Option<u8>,
    bs: [u8; 2],
    st_min: [StMin; 2],
}

fn arb_st_min() -> impl Strategy<Value = StMin> {
    prop_oneof![
        Just(StMin::ZERO),
        (0u8..=20).prop_map(StMin::from_raw),
        (0xF1u8..=0xF9).prop_map(StMin::from_raw),
        Just(StMin::from_raw(0x7F)),
    ]
}

fn arb_format() -> impl Strategy<Value = FrameFormat> {
    prop_oneof![
        Just(FrameFormat::Classic),
        (
            prop::sample::select(vec![8usize, 12, 16, 20, 24, 32, 48, 64]),
            any::<bool>()
        )
            .prop_map(|(tx_dl, brs)| FrameFormat::Fd { tx_dl, brs }),
    ]
}

fn arb_params() -> impl Strategy<Value = LinkParams> {
    (
        0u8..3,
        arb_format(),
        prop::option::of(any::<u8>()),
        [
            prop_oneof![Just(0u8), 1u8..8, any::<u8>()],
            prop_oneof![Just(0u8), 1u8..8, any::<u8>()],
        ],
        [arb_st_min(), arb_st_min()],
    )
        .prop_map(|(addressing, format, padding, bs, st_min)| LinkParams {
            addressing,
            format,
            padding,
            bs,
            st_min,
        })
}

fn configs(p: &LinkParams) -> (IsoTpConfig, IsoTpConfig) {
    let id = |r| CanId::standard(r).unwrap();
    let (a, b) = match p.addressing {
        0 => (
            Addressing::normal(0x7E0, 0x7E8).unwrap(),
            Addressing::normal(0x7E8, 0x7E0).unwrap(),
        ),
        1 => (
            Addressing::Extended {
                tx_id: id(0x6F1),
                rx_id: id(0x612),
                target_address: 0x12,
                source_address: 0xF1,
            },
            Addressing::Extended {
                tx_id: id(0x612),
                rx_id: id(0x6F1),
                target_address: 0xF1,
                source_address: 0x12,
            },
        ),
        _ => (
            Addressing::NormalFixed {
                source_address: 0xF1,
                target_address: 0x33,
            },
            Addressing::NormalFixed {
                source_address: 0x33,
                target_address: 0xF1,
            },
        ),
    };
    let mk = |addressing, i: usize| {
        let mut c = IsoTpConfig::new(addressing);
        c.format = p.format;
        c.padding = p.padding;
        c.block_size = p.bs[i];
        c.st_min = p.st_min[i];
        c.max_rx_len = 1 << 16;
        c
    };
    (mk(a, 0), mk(b, 1))
}

/// Check the consecutive frames `sender` put on the link against the receiver's flow control:
/// at most `bs` per block, and STmin apart within a block.
fn check_flow(
    log: &[(Duration, Side, CanFrame)],
    sender: Side,
    overhead: usize,
    bs: u8,
    st_min: StMin,
) {
    let mut in_block = 0u32;
    let mut last_cf: Option<Duration> = None;
    for (t, side, f) in log {
        let Some(&b0) = f.data().get(overhead) else {
            continue;
        };
        match (*side == sender, b0 >> 4) {
            (false, 3) => {
                in_block = 0;
                last_cf = None;
            }
            (true, 2) => {
                in_block += 1;
                if bs != 0 {
                    assert!(
                        in_block <= u32::from(bs),
                        "more than BS={bs} frames in a block"
                    );
                }
                if let Some(prev) = last_cf {
                    assert!(
                        *t - prev >= st_min.duration(),
                        "CF gap {:?} < {:?}",
                        *t - prev,
                        st_min.duration()
                    );
                }
                last_cf = Some(*t);
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_message_crosses_both_ways(
        p in arb_params(),
        len_a in prop_oneof![0usize..70, 0usize..=5000],
        len_b in prop_oneof![0usize..70, 0usize..=5000],
    ) {
        let (ca, cb) = configs(&p);
        let overhead = ca.addressing.overhead();
        let max_frame = ca.format.tx_dl();
        let mut pair = endpoints(ca, cb);
        let (ma, mb) = (payload(len_a), payload(len_b).into_iter().rev().collect::<Vec<_>>());
        let now = pair.now;
        for (ep, m) in [(&mut pair.a, &ma), (&mut pair.b, &mb)] {
            let sent = ep.send(m, now);
            if m.is_empty() {
                let refused = matches!(sent, Err(IsoTpError::CannotSend { .. }));
                prop_assert!(refused, "empty message not refused: {:?}", sent);
            } else {
                sent.unwrap();
            }
        }
        prop_assert!(pair.run(Duration::from_secs(3600)), "link did not go quiet");
        let (ea, eb) = (events(&mut pair.a), events(&mut pair.b));
        let want = |m: &Vec<u8>| if m.is_empty() { vec![] } else { vec![m.clone()] };
        prop_assert_eq!(received(&eb), want(&ma));
        prop_assert_eq!(received(&ea), want(&mb));
        for ev in ea.iter().chain(&eb) {
            prop_assert!(!matches!(ev, IsoTpEvent::Error(_)), "error event {:?}", ev);
        }
        prop_assert_eq!(pair.a.stats().errors() + pair.b.stats().errors(), 0);
        prop_assert!(pair.a.is_idle() && pair.b.is_idle());
        for (_, _, f) in &pair.log {
            prop_assert!(f.data().len() <= max_frame);
            prop_assert_eq!(f.is_fd(), matches!(p.format, FrameFormat::Fd { .. }));
            if p.padding.is_some() {
                prop_assert!(f.data().len() >= 8);
            }
        }
        check_flow(&pair.log, Side::A, overhead, p.bs[1], p.st_min[1]);
        check_flow(&pair.log, Side::B, overhead, p.bs[0], p.st_min[0]);
    }

    #[test]
    fn arbitrary_frames_never_panic_and_every_error_is_counted(
        frames in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..=8), prop::sample::select(vec![0u8, 1, 2, 3]), any::<u8>()),
            0..200,
        ),
        fd in any::<bool>(),
    ) {
        let mut cfg = IsoTpConfig::new(Addressing::normal(0x7E8, 0x7E0).unwrap());
        if fd {
            cfg.format = FrameFormat::FD64;
        }
        cfg.max_rx_len = 300;
        let mut ep = IsoTpEndpoint::new(cfg).unwrap();
        let t0 = Instant::now();
        ep.send(&payload(100), t0).unwrap();
        let mut error_events = 0u64;
        let mut now = t0;
        for (ours, mut data, kind, lo) in frames {
            // Bias the first byte towards valid PCI types so sequences get somewhere.
            if let Some(b) = data.first_mut() {
                *b = (kind << 4) | (lo & 0x0F);
            }
            let id = CanId::standard(if ours { 0x7E0 } else { 0x7E1 }).unwrap();
            let frame = if fd && data.len() > 1 {
                let mut d = data.clone();
                d.resize([12, 16, 20, 24, 32, 48, 64][usize::from(lo) % 7], 0xCC);
                CanFrame::Fd(FdFrame::new(id, &d, FdFlags::default()).unwrap())
            } else {
                CanFrame::Data(DataFrame::new(id, &data).unwrap())
            };
            now += Duration::from_millis(u64::from(lo) * 4);
            ep.handle_timeout(now);
            ep.handle_frame(&frame, now);
            while ep.poll_transmit(now).is_some() {}
            error_events += events(&mut ep).iter().filter(|e| matches!(e, IsoTpEvent::Error(_))).count() as u64;
        }
        prop_assert_eq!(ep.stats().errors(), error_events);
    }
}
