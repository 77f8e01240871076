//! # can-io
//!
//! CAN frames and everything that reads, writes and moves them, for the Tether data plane.
//!
//! * [`frame`] — one validated frame model for classic, remote, error and CAN FD frames, and the
//!   timestamped [`CanRecord`] (integer nanoseconds, channel, direction).
//! * [`formats`] — pure codecs for log files (candump, Vector ASC, JSON lines). No I/O.
//! * [`wire`] — pure codecs for wire protocols (REMP, cannelloni, socketcand, python-can
//!   `udp_multicast`, the `CanRelayFrame` JSON shape). No I/O.
//! * [`transport`] — async transports behind one trait (virtual bus, UDP, socketcand server,
//!   multicast, SocketCAN behind the `socketcan` feature, log replay and recording).
//!
//! What this crate does not do: it does not relay, buffer or persist frames (that is
//! `relay-core`), and it does not interpret payloads beyond the CAN layer.

pub mod error;
pub mod error_frame;
pub mod formats;
pub mod frame;
pub mod transport;
pub mod wire;

pub use error::Error;
pub use error_frame::{ErrorCauses, ErrorFrame};
pub use frame::{
    CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame,
};
