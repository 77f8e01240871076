//! # can-io
//!
//! CAN frames and everything that reads, writes and moves them, for the Tether data plane.
//!
//! * [`frame`] — one validated frame model for classic, remote, error and CAN FD frames, and the
//!   timestamped [`CanRecord`] (integer nanoseconds, channel, direction).
//! * [`formats`] — pure codecs for log files (candump, Vector ASC, JSON lines). No I/O.
//! * [`wire`] — pure codecs for wire protocols (REMP, cannelloni, socketcand, python-can
//!   `udp_multicast`, the `CanRelayFrame` JSON shape). No I/O.
//! * [`isotp`] — ISO-TP (ISO 15765-2) as sans-IO state machines (endpoint, passive monitor) and
//!   an async channel over any transport.
//! * [`uds`] — UDS (ISO 14229): request builders and response decoders, a sans-IO client, an
//!   ECU simulator answering from a profile, and async drivers for both.
//! * [`transport`] — async transports behind one trait (virtual bus, UDP, socketcand server,
//!   multicast, SocketCAN behind the `socketcan` feature, log replay and recording).
//!
//! What this crate does not do: it does not relay, buffer or persist frames (that is
//! `relay-core`), and it interprets payloads only as far as diagnostics need (ISO-TP, UDS).

pub mod error;
pub mod error_frame;
pub mod formats;
pub mod frame;
pub mod isotp;
pub mod transport;
pub mod uds;
pub mod wire;

pub use error::Error;
pub use error_frame::{ErrorCauses, ErrorFrame};
pub use frame::{
    CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame,
};
