//! ISO-TP (ISO 15765-2): messages of up to 4 GiB over CAN frames, as sans-IO state machines.
//!
//! * [`IsoTpEndpoint`] — one node's end of one ISO-TP link (a transmit and a receive address),
//!   full duplex: it segments messages into single / first / consecutive frames, reassembles
//!   what the peer sends, answers and obeys flow control (block size, STmin, WAIT, OVERFLOW),
//!   and runs the N_Bs / N_Cr timers.
//! * [`IsoTpMonitor`] — a passive decoder: it watches both directions of a link (a capture, a
//!   bus it must not talk on) and reassembles every message without sending anything.
//! * [`pci`] — the frame-level codec both are built on.
//! * [`IsoTpChannel`] — the async driver: an endpoint over any [`CanBus`](crate::transport::CanBus),
//!   owning the socket and the clock (`send(&[u8]).await`, `recv().await`).
//!
//! The state machines take frames and the current time and hand back frames to send, events
//! and the next timer deadline; they never read a clock or touch a socket. The call order, as
//! in quinn-proto:
//!
//! 1. feed input: [`IsoTpEndpoint::handle_frame`], [`IsoTpEndpoint::send`],
//!    [`IsoTpEndpoint::handle_timeout`] once the deadline from [`IsoTpEndpoint::poll_timeout`]
//!    has passed;
//! 2. drain output: [`IsoTpEndpoint::poll_transmit`] until `None` (frames due now; consecutive
//!    frames held back by STmin show up in `poll_timeout`), then [`IsoTpEndpoint::poll_event`];
//! 3. sleep until `poll_timeout()` or the next frame, whichever is first.
//!
//! Bad input never panics: a malformed frame or sequence aborts that transfer, comes out as an
//! [`IsoTpEvent::Error`] with a typed [`IsoTpError`], and is counted in [`IsoTpStats`].
//!
//! What this module does not do: it does not pick CAN identifiers for a vehicle (that is the
//! UDS layer's ECU list), does not retry a failed transfer, and has no data-link confirmation of
//! its own — a frame counts as sent when [`poll_transmit`](IsoTpEndpoint::poll_transmit) hands
//! it out; the driver enforces N_As / N_Ar around the bus's `send` and reports a miss with
//! [`IsoTpEndpoint::handle_transmit_timeout`]. The performance timers N_Br and N_Cs are met by
//! construction (a flow control is due at once, a consecutive frame exactly at STmin).

mod channel;
mod config;
pub(crate) mod driver;
mod endpoint;
mod monitor;
pub mod pci;
mod rx;

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use crate::frame::CanFrame;

pub use channel::IsoTpChannel;
pub(crate) use config::auto_id as config_auto_id;
pub use config::{Addressing, FrameFormat, IsoTpConfig, Timeouts};
pub use endpoint::IsoTpEndpoint;
pub use monitor::{IsoTpMonitor, MonitorEvent};
pub use pci::{FlowStatus, StMin};

/// The ISO 15765-2 timers this crate runs or reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Sender: a frame was not confirmed by the data link in time.
    NAs,
    /// Receiver: a flow-control frame was not confirmed by the data link in time.
    NAr,
    /// Sender: no flow control arrived after a first frame or a block.
    NBs,
    /// Receiver: no consecutive frame arrived in time.
    NCr,
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Timer::NAs => "N_As",
            Timer::NAr => "N_Ar",
            Timer::NBs => "N_Bs",
            Timer::NCr => "N_Cr",
        })
    }
}

/// Which half of an endpoint an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The receiving half (reassembly, the flow control we send).
    Rx,
    /// The transmitting half (segmentation, the flow control we obey).
    Tx,
}

/// Why an ISO-TP frame was refused or a transfer aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IsoTpError {
    /// A frame that is not a valid ISO-TP frame (bad PCI, a length that does not fit). Ignored.
    #[error("invalid ISO-TP frame: {reason}")]
    InvalidFrame {
        /// What is wrong.
        reason: &'static str,
    },
    /// A first frame announcing a length a single frame could carry (or, escaped, one of at
    /// most 4095 bytes), or sent in a CAN frame shorter than 8 bytes. Ignored.
    #[error("first frame announces {len} bytes, at least {min} required")]
    FirstFrameTooShort {
        /// The announced length.
        len: u32,
        /// The least length a first frame may announce here.
        min: u32,
    },
    /// A first frame announcing more than the receive buffer holds; we answered OVERFLOW.
    #[error("message of {len} bytes exceeds the receive limit of {max}")]
    MessageTooLong {
        /// The announced length.
        len: u32,
        /// The configured limit.
        max: u32,
    },
    /// A consecutive frame out of sequence; the reception was aborted.
    #[error("consecutive frame with sequence number {got}, expected {expected}")]
    WrongSequenceNumber {
        /// The sequence number due.
        expected: u8,
        /// The one received.
        got: u8,
    },
    /// A consecutive frame with no reception in progress. Ignored.
    #[error("consecutive frame without a first frame")]
    UnexpectedConsecutiveFrame,
    /// A consecutive frame too short for the bytes still due; the reception was aborted.
    #[error("consecutive frame carries {got} bytes, {needed} due")]
    ShortConsecutiveFrame {
        /// Bytes the frame had to carry.
        needed: usize,
        /// Bytes it carried.
        got: usize,
    },
    /// A new single or first frame arrived while a message was being reassembled; the old
    /// reception was aborted (the new message is processed).
    #[error("reception of {len} bytes interrupted by a new message after {received} bytes")]
    Interrupted {
        /// Length of the aborted message.
        len: u32,
        /// Bytes of it received.
        received: usize,
    },
    /// A flow control frame when none was awaited. Ignored.
    #[error("flow control frame while not waiting for one")]
    UnexpectedFlowControl,
    /// A flow control frame with a reserved flow status; the transmission was aborted.
    #[error("flow control with reserved flow status {status}")]
    InvalidFlowStatus {
        /// The nibble received.
        status: u8,
    },
    /// The receiver answered OVERFLOW: the message is too long for it. Transmission aborted.
    #[error("receiver reported overflow for a message of {len} bytes")]
    Overflow {
        /// The length we tried to send.
        len: usize,
    },
    /// The receiver sent more WAIT frames in a row than allowed (N_WFTmax). Aborted.
    #[error("receiver sent more than {max} flow-control WAIT frames")]
    TooManyWaits {
        /// The configured N_WFTmax.
        max: u8,
    },
    /// A timer expired; the transfer was aborted.
    #[error("{timer} timeout")]
    Timeout {
        /// Which one.
        timer: Timer,
    },
    /// `send` while a transmission is in progress (one message at a time per endpoint).
    #[error("a transmission is already in progress")]
    Busy,
    /// `send` with a message this endpoint cannot carry (empty, over 4 GiB, or multi-frame on a
    /// functional address, which admits single frames only).
    #[error("cannot send a message of {len} bytes: {reason}")]
    CannotSend {
        /// The length asked for.
        len: usize,
        /// Why.
        reason: &'static str,
    },
    /// A configuration that cannot work (invalid CAN FD data length, an identifier that does
    /// not fit).
    #[error("invalid ISO-TP configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
}

impl IsoTpError {
    /// Which side of the link the error concerns (`None` for `send` and configuration errors,
    /// which are returned, not reported as events).
    pub fn side(&self) -> Option<Side> {
        use IsoTpError::*;
        match self {
            InvalidFrame { .. }
            | FirstFrameTooShort { .. }
            | MessageTooLong { .. }
            | WrongSequenceNumber { .. }
            | UnexpectedConsecutiveFrame
            | ShortConsecutiveFrame { .. }
            | Interrupted { .. }
            | Timeout {
                timer: Timer::NCr | Timer::NAr,
            } => Some(Side::Rx),
            UnexpectedFlowControl
            | InvalidFlowStatus { .. }
            | Overflow { .. }
            | TooManyWaits { .. }
            | Timeout {
                timer: Timer::NBs | Timer::NAs,
            } => Some(Side::Tx),
            Busy | CannotSend { .. } | InvalidConfig { .. } => None,
        }
    }

    /// Whether this error aborted a transfer in progress (as opposed to a frame that was
    /// ignored).
    pub fn aborts_transfer(&self) -> bool {
        use IsoTpError::*;
        matches!(
            self,
            MessageTooLong { .. }
                | WrongSequenceNumber { .. }
                | ShortConsecutiveFrame { .. }
                | Interrupted { .. }
                | InvalidFlowStatus { .. }
                | Overflow { .. }
                | TooManyWaits { .. }
                | Timeout { .. }
        )
    }
}

/// What an endpoint reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsoTpEvent {
    /// A whole message arrived (N_USData.indication).
    Received(Vec<u8>),
    /// A first frame arrived: a message of `len` bytes is on its way (N_USDataFF.indication).
    /// A UDS client uses it to know a response has started.
    FirstFrame {
        /// The announced message length.
        len: u32,
    },
    /// The message given to [`IsoTpEndpoint::send`] has been handed out completely
    /// (N_USData.confirmation).
    Sent,
    /// A frame was refused or a transfer aborted.
    Error(IsoTpError),
}

/// Counters an endpoint or monitor keeps. Every error event increments exactly one of
/// `rx_aborted`, `tx_aborted`, `invalid_frames`, `unexpected_frames`.
/// Its serde form (the field names) is the `stats()` dict of the Python bindings: renaming a
/// field renames a Python key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IsoTpStats {
    /// CAN frames handed out by `poll_transmit`.
    pub frames_sent: u64,
    /// CAN frames taken in for this endpoint's receive address.
    pub frames_received: u64,
    /// CAN frames on other identifiers (or another address byte), not for us.
    pub frames_ignored: u64,
    /// Messages sent completely.
    pub messages_sent: u64,
    /// Messages reassembled completely.
    pub messages_received: u64,
    /// Receptions aborted (wrong sequence number, overflow, interruption, N_Cr, N_Ar).
    pub rx_aborted: u64,
    /// Transmissions aborted (OVERFLOW answer, bad flow status, too many WAITs, N_Bs, N_As).
    pub tx_aborted: u64,
    /// Frames that were not valid ISO-TP (bad PCI or length, short first frame) and were ignored.
    pub invalid_frames: u64,
    /// Valid frames that arrived when nothing awaited them (a consecutive frame without a first
    /// frame, an unawaited flow control) and were ignored.
    pub unexpected_frames: u64,
}

impl IsoTpStats {
    pub(crate) fn count_error(&mut self, e: &IsoTpError) {
        if e.aborts_transfer() {
            match e.side() {
                Some(Side::Tx) => self.tx_aborted += 1,
                _ => self.rx_aborted += 1,
            }
        } else if matches!(
            e,
            IsoTpError::UnexpectedConsecutiveFrame | IsoTpError::UnexpectedFlowControl
        ) {
            self.unexpected_frames += 1;
        } else {
            self.invalid_frames += 1;
        }
    }

    /// All error events so far.
    pub fn errors(&self) -> u64 {
        self.rx_aborted + self.tx_aborted + self.invalid_frames + self.unexpected_frames
    }
}

/// A sans-IO state machine that exchanges CAN frames: what the async drivers in this crate
/// run over a [`CanBus`](crate::transport::CanBus). Implemented by [`IsoTpEndpoint`] and by the
/// UDS tester and ECU simulator cores.
pub trait FrameMachine {
    /// Take in a frame seen on the bus; returns whether it was for this machine.
    fn handle_frame(&mut self, frame: &CanFrame, now: Instant) -> bool;
    /// The next frame due at `now`, if any.
    fn poll_transmit(&mut self, now: Instant) -> Option<CanFrame>;
    /// When to call [`handle_timeout`](Self::handle_timeout) (and `poll_transmit`) next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Expire timers due at `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The bus did not take `frame` within N_As / N_Ar.
    fn handle_transmit_timeout(&mut self, frame: &CanFrame, now: Instant);
}

/// Fuzz entry point (`fuzz/fuzz_targets/isotp_frames.rs`): `data` is a sequence of frames, each
/// `[flags, len, bytes…]` (flags bit 0: CAN FD, bit 1: on the peer's identifier rather than
/// ours, bits 2–7: milliseconds since the previous frame). They go into a receiving endpoint
/// that is also mid-transmission (so flow control matters) and into a passive monitor. Never
/// panics; every error event is counted exactly once.
/// Built only for tests and `cargo fuzz` (`--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fuzz_frames(data: &[u8]) {
    use crate::frame::{CanId, DataFrame, FdFlags, FdFrame, fd_len_to_dlc};
    let (Ok(ours), Ok(peer)) = (CanId::standard(0x7E0), CanId::standard(0x7E8)) else {
        return;
    };
    let mut cfg = IsoTpConfig::new(Addressing::Normal {
        tx_id: peer,
        rx_id: ours,
    });
    cfg.max_rx_len = 4096;
    cfg.block_size = 2;
    let Ok(mut ep) = IsoTpEndpoint::new(cfg) else {
        return;
    };
    let mut monitor = IsoTpMonitor::link(&Addressing::Normal {
        tx_id: peer,
        rx_id: ours,
    });
    let mut now = Instant::now();
    let _ = ep.send(&[0x5A; 300], now);
    let (mut ep_errors, mut mon_errors) = (0u64, 0u64);
    let mut rest = data;
    while let [flags, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len()).min(64);
        let (bytes, next) = tail.split_at(n);
        rest = next;
        now += std::time::Duration::from_millis(u64::from(flags >> 2));
        let id = if flags & 2 == 0 { ours } else { peer };
        let frame = if flags & 1 == 1 && fd_len_to_dlc(n).is_some() {
            FdFrame::new(id, bytes, FdFlags::default()).map(CanFrame::Fd)
        } else {
            DataFrame::new(id, &bytes[..n.min(8)]).map(CanFrame::Data)
        };
        let Ok(frame) = frame else { continue };
        ep.handle_timeout(now);
        ep.handle_frame(&frame, now);
        while ep.poll_transmit(now).is_some() {}
        while let Some(e) = ep.poll_event() {
            if let IsoTpEvent::Received(m) = &e {
                assert!(m.len() <= 4096);
            }
            ep_errors += u64::from(matches!(e, IsoTpEvent::Error(_)));
        }
        monitor.handle_timeout(now);
        monitor.handle_frame(&frame, now);
        while let Some(e) = monitor.poll_event() {
            mon_errors += u64::from(matches!(e.event, IsoTpEvent::Error(_)));
        }
    }
    assert_eq!(ep.stats().errors(), ep_errors);
    let counted: u64 = [ours, peer]
        .iter()
        .filter_map(|id| monitor.stats(*id))
        .map(|s| s.errors())
        .sum();
    assert_eq!(counted, mon_errors);
}
