//! Shared proptest strategies for can-io's integration tests.
//!
//! Each test file that wants these says `mod common;`. The strategies produce every valid frame
//! kind the model allows — classic data (with and without a raw DLC), remote, error and CAN FD
//! frames, 11- and 29-bit identifiers — and whole records with channel names and directions.
//! Codecs that cannot carry some kind (classic-only wire protocols, for example) pick the
//! narrower strategies ([`arb_classic_frame`], [`arb_data_frame`], …) instead of filtering.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use can_io::frame::{CLASSIC_MAX_LEN, FD_MAX_LEN};
use can_io::{
    CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, ErrorFrame, FdFlags, FdFrame,
    RemoteFrame,
};
use proptest::prelude::*;

/// Every valid CAN FD payload length.
pub const FD_LENGTHS: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];

/// An 11-bit identifier.
pub fn arb_standard_id() -> impl Strategy<Value = CanId> {
    (0u32..=0x7FF).prop_map(|raw| CanId::standard(raw).expect("11-bit id in range"))
}

/// A 29-bit identifier.
pub fn arb_extended_id() -> impl Strategy<Value = CanId> {
    (0u32..=0x1FFF_FFFF).prop_map(|raw| CanId::extended(raw).expect("29-bit id in range"))
}

/// An 11- or 29-bit identifier, edges included.
pub fn arb_id() -> impl Strategy<Value = CanId> {
    prop_oneof![
        arb_standard_id(),
        arb_extended_id(),
        prop_oneof![
            Just((0u32, false)),
            Just((0x7FF, false)),
            Just((0, true)),
            Just((0x1FFF_FFFF, true))
        ]
        .prop_map(|(raw, ext)| CanId::new(raw, ext).expect("edge id in range")),
    ]
}

/// A classic data frame, 0–8 bytes; 8-byte frames sometimes carry a raw DLC 9–15.
pub fn arb_data_frame() -> impl Strategy<Value = DataFrame> {
    (
        arb_id(),
        prop::collection::vec(any::<u8>(), 0..=CLASSIC_MAX_LEN),
        prop::option::of(9u8..=15),
    )
        .prop_map(|(id, data, raw_dlc)| {
            let frame = DataFrame::new(id, &data).expect("classic length");
            match raw_dlc {
                Some(dlc) if data.len() == CLASSIC_MAX_LEN => {
                    frame.with_raw_dlc(dlc).expect("raw dlc on 8-byte frame")
                }
                _ => frame,
            }
        })
}

/// A classic data frame without a raw DLC (for codecs that cannot carry `len8_dlc`).
pub fn arb_plain_data_frame() -> impl Strategy<Value = DataFrame> {
    (
        arb_id(),
        prop::collection::vec(any::<u8>(), 0..=CLASSIC_MAX_LEN),
    )
        .prop_map(|(id, data)| DataFrame::new(id, &data).expect("classic length"))
}

/// A remote frame with a requested length 0–8.
pub fn arb_remote_frame() -> impl Strategy<Value = RemoteFrame> {
    (arb_id(), 0..=CLASSIC_MAX_LEN)
        .prop_map(|(id, len)| RemoteFrame::new(id, len).expect("remote length"))
}

/// An error frame: any 29-bit class mask, 0–8 detail bytes (SocketCAN always sends 8).
pub fn arb_error_frame() -> impl Strategy<Value = ErrorFrame> {
    (
        prop_oneof![0u32..=0x3FF, 0u32..=0x1FFF_FFFF],
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), CLASSIC_MAX_LEN..=CLASSIC_MAX_LEN),
            1 => prop::collection::vec(any::<u8>(), 0..=CLASSIC_MAX_LEN),
        ],
    )
        .prop_map(|(class, data)| ErrorFrame::new(class, &data).expect("error frame in range"))
}

/// A CAN FD frame of any valid length with any BRS / ESI flags.
pub fn arb_fd_frame() -> impl Strategy<Value = FdFrame> {
    (
        arb_id(),
        prop::sample::select(FD_LENGTHS.to_vec()),
        prop::collection::vec(any::<u8>(), FD_MAX_LEN..=FD_MAX_LEN),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, len, bytes, brs, esi)| {
            FdFrame::new(id, &bytes[..len], FdFlags { brs, esi }).expect("valid FD length")
        })
}

/// A frame of any kind: data (with raw DLC), remote, error or CAN FD.
pub fn arb_frame() -> impl Strategy<Value = CanFrame> {
    prop_oneof![
        3 => arb_data_frame().prop_map(CanFrame::Data),
        1 => arb_remote_frame().prop_map(CanFrame::Remote),
        1 => arb_error_frame().prop_map(CanFrame::Error),
        2 => arb_fd_frame().prop_map(CanFrame::Fd),
    ]
}

/// A classic data or remote frame without raw DLC (no FD, no error frames).
pub fn arb_classic_frame() -> impl Strategy<Value = CanFrame> {
    prop_oneof![
        3 => arb_plain_data_frame().prop_map(CanFrame::Data),
        1 => arb_remote_frame().prop_map(CanFrame::Remote),
    ]
}

/// An interface name as Linux allows it (1–15 visible characters, no whitespace), biased
/// towards a few common names so records often share a channel.
pub fn arb_channel() -> impl Strategy<Value = Channel> {
    prop_oneof![
        3 => prop::sample::select(vec!["can0", "can1", "vcan0", "slcan0"]).prop_map(Arc::from),
        1 => "[a-zA-Z][a-zA-Z0-9_.-]{0,14}".prop_map(|s| Arc::from(s.as_str())),
    ]
}

/// Rx, Tx or unknown.
pub fn arb_direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Rx),
        Just(Direction::Tx),
        Just(Direction::Unknown)
    ]
}

/// Any nanosecond timestamp: sub-microsecond values, whole seconds and the full `u64` range.
pub fn arb_ts_ns() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 1_500_000_000_000_000_000u64..1_900_000_000_000_000_000,
        1 => (0u64..5_000_000).prop_map(|s| s * 1_000_000_000),
        1 => any::<u64>(),
    ]
}

/// A timestamp with microsecond resolution (what ASC and the `SEC.USEC` candump form carry).
pub fn arb_ts_us() -> impl Strategy<Value = u64> {
    arb_ts_ns().prop_map(|ns| ns / 1000 * 1000)
}

/// A record with any frame, channel, direction and timestamp.
pub fn arb_record() -> impl Strategy<Value = CanRecord> {
    arb_record_with(arb_ts_ns(), arb_frame())
}

/// A record built from the given timestamp and frame strategies.
pub fn arb_record_with(
    ts: impl Strategy<Value = u64>,
    frame: impl Strategy<Value = CanFrame>,
) -> impl Strategy<Value = CanRecord> {
    (ts, arb_channel(), arb_direction(), frame).prop_map(|(ts_ns, channel, direction, frame)| {
        CanRecord::new(ts_ns, channel, direction, frame)
    })
}

pub mod data;
