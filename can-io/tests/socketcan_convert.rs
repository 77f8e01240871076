//! Conversions between the `socketcan` crate's frames and ours, both ways. These machines have
//! no `AF_CAN`, so this is what checks the SocketCAN transport short of a real bus: every frame
//! of the model survives ours → socketcan → ours, the socketcan side carries the kernel fields
//! (`can_id` flags, `len`/`can_dlc`, `len8_dlc`, FD flags, 8 error bytes) as the kernel expects
//! them, arbitrary kernel structs convert or are refused exactly when the model says, and error
//! frames mean the same to both decoders.
#![cfg(all(feature = "socketcan", target_os = "linux"))]
#![allow(clippy::unwrap_used)]

mod common;

use can_io::transport::socketcan::{from_socketcan, to_socketcan};
use can_io::wire::linux::{CAN_EFF_FLAG, CAN_EFF_MASK, CAN_ERR_FLAG, CAN_RTR_FLAG, CAN_SFF_MASK};
use can_io::{CanFrame, CanId, DataFrame, ErrorFrame, FdFlags, FdFrame, RemoteFrame};
use common::*;
use proptest::prelude::*;
use socketcan::frame::{can_frame_default, canfd_frame_default};
use socketcan::{CanAnyFrame, CanFdFrame, EmbeddedFrame, ErrorCause, Frame};

/// SocketCAN error frames always carry 8 detail bytes: a shorter one comes back zero-padded.
fn padded(frame: CanFrame) -> CanFrame {
    match frame {
        CanFrame::Error(e) => {
            let mut data = [0u8; 8];
            data[..e.data().len()].copy_from_slice(e.data());
            CanFrame::Error(ErrorFrame::new(e.class_bits(), &data).unwrap())
        }
        other => other,
    }
}

fn classic(can_id: u32, dlc: u8, len8_dlc: u8, data: [u8; 8]) -> CanAnyFrame {
    let mut raw = can_frame_default();
    raw.can_id = can_id;
    raw.can_dlc = dlc;
    raw.len8_dlc = len8_dlc;
    raw.data = data;
    CanAnyFrame::from(raw)
}

/// Whether the model accepts identifier word `can_id`: not RTR and ERR at once, not a remote or
/// error frame marked FD, and a standard identifier within 11 bits.
fn model_accepts(can_id: u32, fd: bool) -> bool {
    let rtr = can_id & CAN_RTR_FLAG != 0;
    let err = can_id & CAN_ERR_FLAG != 0;
    let eff = can_id & CAN_EFF_FLAG != 0;
    if rtr && err || fd && (rtr || err) {
        return false;
    }
    err || eff || can_id & CAN_EFF_MASK <= CAN_SFF_MASK
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ours_round_trip_through_socketcan(frame in arb_frame()) {
        let theirs = to_socketcan(&frame);
        prop_assert_eq!(from_socketcan(&theirs).unwrap(), padded(frame));
    }

    #[test]
    fn socketcan_side_has_the_kernel_fields(frame in arb_frame()) {
        let theirs = to_socketcan(&frame);
        prop_assert_eq!(theirs.id_word(), frame.linux_can_id());
        match (&frame, &theirs) {
            (CanFrame::Data(d), CanAnyFrame::Normal(n)) => {
                prop_assert_eq!(n.data(), d.data());
                prop_assert_eq!(n.dlc(), d.data().len());
                prop_assert_eq!(n.as_ref().len8_dlc, d.raw_dlc().unwrap_or(0));
                prop_assert_eq!(n.is_extended(), d.id().is_extended());
            }
            (CanFrame::Remote(r), CanAnyFrame::Remote(t)) => {
                prop_assert_eq!(t.dlc(), r.len());
                prop_assert!(t.is_remote_frame());
                prop_assert_eq!(t.is_extended(), r.id().is_extended());
            }
            (CanFrame::Error(e), CanAnyFrame::Error(t)) => {
                prop_assert_eq!(t.error_bits(), e.class_bits());
                prop_assert_eq!(t.data().len(), 8);
                prop_assert_eq!(&t.data()[..e.data().len()], e.data());
                prop_assert!(t.data()[e.data().len()..].iter().all(|&b| b == 0));
            }
            (CanFrame::Fd(f), CanAnyFrame::Fd(t)) => {
                prop_assert_eq!(t.data(), f.data());
                prop_assert_eq!(t.len(), f.data().len());
                prop_assert_eq!(t.is_brs(), f.flags().brs);
                prop_assert_eq!(t.is_esi(), f.flags().esi);
                prop_assert!(t.flags().contains(socketcan::id::FdFlags::FDF));
                prop_assert_eq!(t.is_extended(), f.id().is_extended());
            }
            (ours, theirs) => prop_assert!(false, "kind changed: {:?} → {:?}", ours, theirs),
        }
    }

    /// Any `struct can_frame` a caller or the kernel could hand over: converted when the model
    /// accepts its `can_id`, refused (never a panic) otherwise, and what comes out says what the
    /// struct said.
    #[test]
    fn arbitrary_classic_structs(can_id in any::<u32>(), dlc in any::<u8>(), len8_dlc in any::<u8>(), data in any::<[u8; 8]>()) {
        let theirs = classic(can_id, dlc, len8_dlc, data);
        let converted = from_socketcan(&theirs);
        prop_assert_eq!(converted.is_ok(), model_accepts(can_id, false), "{:?}", converted);
        let Ok(ours) = converted else { return Ok(()) };
        match (&ours, &theirs) {
            (CanFrame::Data(d), CanAnyFrame::Normal(n)) => {
                prop_assert_eq!(ours.linux_can_id(), can_id);
                prop_assert_eq!(d.data(), n.data());
                let raw = (n.dlc() == 8 && (9..=15).contains(&len8_dlc)).then_some(len8_dlc);
                prop_assert_eq!(d.raw_dlc(), raw);
            }
            (CanFrame::Remote(r), CanAnyFrame::Remote(t)) => {
                prop_assert_eq!(ours.linux_can_id(), can_id);
                prop_assert_eq!(r.len(), t.dlc());
            }
            (CanFrame::Error(e), CanAnyFrame::Error(t)) => {
                // An error frame has no identifier format: EFF is not kept.
                prop_assert_eq!(e.class_bits(), can_id & CAN_EFF_MASK);
                prop_assert_eq!(e.data(), t.data());
            }
            (ours, theirs) => prop_assert!(false, "kind changed: {:?} → {:?}", theirs, ours),
        }
        // What was accepted goes back to the same kernel fields.
        let back = to_socketcan(&ours);
        let id_word = if ours.id().is_none() { can_id & !CAN_EFF_FLAG } else { can_id };
        prop_assert_eq!(back.id_word(), id_word);
        prop_assert_eq!(back.data(), theirs.data());
        prop_assert_eq!(back.dlc(), theirs.dlc());
    }

    /// Any `struct canfd_frame`: FD flag bits other than BRS/ESI are ignored, RTR/ERR refused.
    #[test]
    fn arbitrary_fd_structs(can_id in any::<u32>(), len in 0u8..=64, flags in any::<u8>(), data in any::<[u8; 64]>()) {
        let mut raw = canfd_frame_default();
        raw.can_id = can_id;
        raw.len = len;
        raw.flags = flags;
        raw.data = data;
        let theirs = CanAnyFrame::Fd(CanFdFrame::from(raw));
        let converted = from_socketcan(&theirs);
        prop_assert_eq!(converted.is_ok(), model_accepts(can_id, true), "{:?}", converted);
        let Ok(ours) = converted else { return Ok(()) };
        let CanFrame::Fd(f) = ours else {
            return Err(TestCaseError::fail(format!("not FD: {ours:?}")));
        };
        prop_assert_eq!(ours.linux_can_id(), can_id);
        prop_assert_eq!(f.data(), theirs.data());
        prop_assert_eq!(f.flags(), FdFlags { brs: flags & 1 != 0, esi: flags & 2 != 0 });
        let back = to_socketcan(&ours);
        prop_assert_eq!(back.id_word(), can_id);
        prop_assert_eq!(back.data(), theirs.data());
    }

    /// Our decoding of an error frame's classes agrees with the socketcan crate's.
    #[test]
    fn error_classes_mean_the_same(frame in arb_error_frame()) {
        let ours = frame.causes();
        let CanAnyFrame::Error(theirs) = to_socketcan(&CanFrame::Error(frame)) else {
            return Err(TestCaseError::fail("not an error frame"));
        };
        let causes: Vec<ErrorCause> = theirs.into_error().into_iter().collect();
        let has = |want: &ErrorCause| causes.iter().any(|c| c == want);
        prop_assert_eq!(ours.tx_timeout, has(&ErrorCause::TransmitTimeout));
        prop_assert_eq!(ours.no_ack, has(&ErrorCause::NoAck));
        prop_assert_eq!(ours.bus_off, has(&ErrorCause::BusOff));
        prop_assert_eq!(ours.bus_error, has(&ErrorCause::BusError));
        prop_assert_eq!(ours.restarted, has(&ErrorCause::Restarted));
        let lost = causes.iter().find_map(|c| match c { ErrorCause::LostArbitration(b) => Some(*b), _ => None });
        prop_assert_eq!(ours.lost_arbitration, lost);
        let counters = causes.iter().find_map(|c| match c { ErrorCause::Counters { tx, rx } => Some((*tx, *rx)), _ => None });
        prop_assert_eq!(ours.counters, counters);
    }
}

#[test]
fn each_kind_by_hand() {
    let std = CanId::standard(0x7DF).unwrap();
    let ext = CanId::extended(0x18DA_F110).unwrap();

    let data = CanFrame::Data(DataFrame::new(std, &[2, 1, 0]).unwrap());
    let CanAnyFrame::Normal(n) = to_socketcan(&data) else {
        panic!("data frame")
    };
    assert_eq!((n.id_word(), n.data()), (0x7DF, &[2u8, 1, 0][..]));

    let remote = CanFrame::Remote(RemoteFrame::new(ext, 5).unwrap());
    let CanAnyFrame::Remote(r) = to_socketcan(&remote) else {
        panic!("remote frame")
    };
    assert_eq!(r.id_word(), 0x18DA_F110 | CAN_EFF_FLAG | CAN_RTR_FLAG);
    assert_eq!(r.dlc(), 5);

    let fd = CanFrame::Fd(
        FdFrame::new(
            ext,
            &[0xAA; 48],
            FdFlags {
                brs: true,
                esi: false,
            },
        )
        .unwrap(),
    );
    let CanAnyFrame::Fd(f) = to_socketcan(&fd) else {
        panic!("FD frame")
    };
    assert_eq!(f.id_word(), 0x18DA_F110 | CAN_EFF_FLAG);
    assert_eq!(f.as_ref().flags, 0x01 | 0x04, "BRS + FDF");
    assert_eq!(f.as_ref().len, 48);

    // Bus off + controller (RX warning) + counters, as a real controller reports it.
    let err = CanFrame::Error(
        ErrorFrame::new(0x40 | 0x04 | 0x200, &[0, 0x04, 0, 0, 0, 0, 97, 3]).unwrap(),
    );
    let CanAnyFrame::Error(e) = to_socketcan(&err) else {
        panic!("error frame")
    };
    assert_eq!(e.id_word(), CAN_ERR_FLAG | 0x244);
    assert_eq!(from_socketcan(&CanAnyFrame::Error(e)).unwrap(), err);

    // Refused: a standard id above 0x7FF, RTR with ERR, a remote FD frame.
    assert!(from_socketcan(&classic(0x800, 0, 0, [0; 8])).is_err());
    assert!(from_socketcan(&classic(CAN_RTR_FLAG | CAN_ERR_FLAG, 0, 0, [0; 8])).is_err());
    let mut raw = canfd_frame_default();
    raw.can_id = CAN_RTR_FLAG | 0x123;
    let err = from_socketcan(&CanAnyFrame::Fd(CanFdFrame::from(raw))).unwrap_err();
    assert!(
        err.to_string().contains("CAN FD has no remote frames"),
        "{err}"
    );
}
