//! Async transports that send and receive frames, all behind the one [`CanBus`] trait.
//!
//! | backend | type | notes |
//! |---|---|---|
//! | in-process virtual bus | [`virtual_bus::VirtualBus`] / [`virtual_bus::VirtualPort`] | broadcast, bounded per-port queues, drops counted per port |
//! | REMP over UDP | [`udp::RempUdp`] | dongle or receiver side; loss counted from sequence numbers |
//! | cannelloni over UDP | [`udp::CannelloniUdp`] | v2 datagrams |
//! | socketcand | [`socketcand::SocketcandServer`], [`socketcand::SocketcandClient`] | TCP, raw mode, classic frames |
//! | python-can multicast | [`multicast::MulticastBus`] | msgpack datagrams on an IPv4 group |
//! | SocketCAN | `socketcan::SocketCan` (feature `socketcan`, Linux) | raw `AF_CAN` socket through the `socketcan` crate; classic, remote, error and FD frames, kernel receive timestamps |
//! | log replay | [`replay::LogReplay`] | original timing, scaled, or as fast as possible |
//! | recorder | [`record::record`] | any bus → candump log |
//!
//! [`open`] parses bus addresses (`udp://`, `cannelloni://`, `socketcand://`, `multicast://`,
//! `socketcan://`) and
//! opens any network backend as one [`open::AnyBus`].
//!
//! Sending never spins: a full transmit queue is [`Error::QueueFull`] (retryable) from the
//! non-blocking paths, and the async [`CanBus::send`] waits for room instead. Frames a backend
//! cannot carry (an FD frame on socketcand) and frames dropped by full receive queues are counted
//! in [`BusStats`], never dropped silently.

pub mod multicast;
pub mod open;
pub mod record;
pub mod replay;
#[cfg(all(feature = "socketcan", target_os = "linux"))]
pub mod socketcan;
pub mod socketcand;
pub mod udp;
pub mod virtual_bus;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::frame::CanRecord;

/// Counters every transport keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Frames sent.
    pub sent: u64,
    /// Frames received.
    pub received: u64,
    /// Frames dropped: receive-queue overflow, frames the protocol cannot carry, lost datagrams
    /// (as counted from sequence numbers).
    pub dropped: u64,
    /// Messages received that did not decode (skipped).
    pub malformed: u64,
}

/// One small async interface over every backend.
///
/// `send` may batch (REMP and cannelloni put several frames in one datagram): call
/// [`flush`](Self::flush) when no more frames are due right away. `recv` returns `Ok(None)` when
/// the source has ended (a replayed log is over, the peer closed).
pub trait CanBus: Send {
    /// Send one record (waits for room in the transmit queue; never spins).
    fn send(&mut self, record: &CanRecord) -> impl Future<Output = Result<(), Error>> + Send;
    /// Push out anything `send` batched. A bus that sends every record at once has nothing to
    /// do: the default.
    fn flush(&mut self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }
    /// The next record, or `None` at the end.
    fn recv(&mut self) -> impl Future<Output = Result<Option<CanRecord>, Error>> + Send;
    /// Counters so far.
    fn stats(&self) -> BusStats;
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Map a socket error: a full kernel buffer (`ENOBUFS`, `EAGAIN`) is a full transmit queue.
pub(crate) fn send_error(
    transport: &'static str,
    action: &'static str,
    e: std::io::Error,
) -> Error {
    const ENOBUFS: i32 = 105;
    if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(ENOBUFS) {
        Error::QueueFull {
            transport,
            capacity: 0,
        }
    } else {
        Error::Io { action, source: e }
    }
}
