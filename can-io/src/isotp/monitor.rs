//! [`IsoTpMonitor`]: a passive decoder that reassembles ISO-TP messages it overhears.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::pci::{self, Pci};
use super::rx::{Reassembler, RxStep};
use super::{Addressing, IsoTpError, IsoTpEvent, IsoTpStats, Timer};
use crate::frame::{CanFrame, CanId};

/// An event of one watched direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorEvent {
    /// The identifier of the direction (the sender's transmit identifier).
    pub id: CanId,
    /// What happened: [`IsoTpEvent::Received`], [`IsoTpEvent::FirstFrame`] or
    /// [`IsoTpEvent::Error`].
    pub event: IsoTpEvent,
}

#[derive(Debug)]
struct Direction {
    id: CanId,
    prefix: Option<u8>,
    rx: Reassembler,
    deadline: Option<Instant>,
    stats: IsoTpStats,
}

/// Watches one or more directions (a CAN identifier, and an address byte with extended
/// addressing) and reassembles every message on them, without sending anything: no flow
/// control, so block sizes are not checked, but sequence numbers, lengths and the N_Cr gap
/// between consecutive frames are. Flow-control frames are counted as received and otherwise
/// skipped.
///
/// Use it on captures and on buses where listening is all that is allowed.
#[derive(Debug)]
pub struct IsoTpMonitor {
    dirs: Vec<Direction>,
    n_cr: Duration,
    max_len: u32,
    events: VecDeque<MonitorEvent>,
    ignored: u64,
}

impl Default for IsoTpMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl IsoTpMonitor {
    /// A monitor watching nothing yet, with N_Cr 1 s and messages up to 4 GiB.
    pub fn new() -> Self {
        IsoTpMonitor {
            dirs: Vec::new(),
            n_cr: Duration::from_secs(1),
            max_len: u32::MAX,
            events: VecDeque::new(),
            ignored: 0,
        }
    }

    /// A monitor of both directions of `addressing` (what the endpoint sends, and what it
    /// receives).
    pub fn link(addressing: &Addressing) -> Self {
        let mut m = Self::new();
        m.watch(addressing.tx_id(), addressing.tx_prefix());
        m.watch(addressing.rx_id(), addressing.rx_prefix());
        m
    }

    /// Set the consecutive-frame timeout (N_Cr) that aborts a stalled reassembly.
    pub fn with_n_cr(mut self, n_cr: Duration) -> Self {
        self.n_cr = n_cr;
        self
    }

    /// Watch frames on `id` (starting with `prefix`, with extended addressing).
    pub fn watch(&mut self, id: CanId, prefix: Option<u8>) {
        if self.dirs.iter().any(|d| d.id == id && d.prefix == prefix) {
            return;
        }
        self.dirs.push(Direction {
            id,
            prefix,
            rx: Reassembler::new(self.max_len),
            deadline: None,
            stats: IsoTpStats::default(),
        });
    }

    /// Counters of the direction on `id`, if watched (the first one with that identifier).
    pub fn stats(&self, id: CanId) -> Option<IsoTpStats> {
        self.dirs.iter().find(|d| d.id == id).map(|d| d.stats)
    }

    /// Frames seen on identifiers (or address bytes) not watched.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Take in one frame seen at `now`. Returns whether it was on a watched direction.
    pub fn handle_frame(&mut self, frame: &CanFrame, now: Instant) -> bool {
        let (id, data) = match frame {
            CanFrame::Data(f) => (f.id(), f.data()),
            CanFrame::Fd(f) => (f.id(), f.data()),
            _ => {
                self.ignored += 1;
                return false;
            }
        };
        let Some(dir) = self.dirs.iter_mut().find(|d| {
            d.id == id
                && match d.prefix {
                    Some(p) => data.first() == Some(&p),
                    None => true,
                }
        }) else {
            self.ignored += 1;
            return false;
        };
        // A frame arriving after the N_Cr deadline finds the reassembly already expired.
        expire(dir, now, &mut self.events);
        dir.stats.frames_received += 1;
        let overhead = usize::from(dir.prefix.is_some());
        let pdu = &data[overhead..];
        let (interrupted, step) = match pci::parse(pdu, data.len()) {
            Err(e) => (None, RxStep::Refused(e)),
            Ok(Pci::Single { data }) => dir.rx.single(data),
            Ok(Pci::First { len, data: d, .. }) => dir.rx.first(len, d, data.len(), overhead),
            Ok(Pci::Consecutive { sn, data }) => (None, dir.rx.consecutive(sn, data)),
            Ok(Pci::FlowControl { .. }) => return true,
        };
        let mut report = |e: IsoTpError, stats: &mut IsoTpStats| {
            stats.count_error(&e);
            self.events.push_back(MonitorEvent {
                id,
                event: IsoTpEvent::Error(e),
            });
        };
        if let Some(e) = interrupted {
            report(e, &mut dir.stats);
        }
        let event = match step {
            RxStep::Message(m) => {
                dir.stats.messages_received += 1;
                IsoTpEvent::Received(m)
            }
            RxStep::Started { len } => {
                dir.rx.block_restarted();
                IsoTpEvent::FirstFrame { len }
            }
            RxStep::Continue { .. } => {
                dir.deadline = Some(now + self.n_cr);
                return true;
            }
            RxStep::Overflow(e) | RxStep::Refused(e) => {
                report(e, &mut dir.stats);
                if !dir.rx.in_progress() {
                    dir.deadline = None;
                }
                return true;
            }
        };
        dir.deadline = dir.rx.in_progress().then_some(now + self.n_cr);
        self.events.push_back(MonitorEvent { id, event });
        true
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<MonitorEvent> {
        self.events.pop_front()
    }

    /// The earliest N_Cr deadline of a reassembly in progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.dirs.iter().filter_map(|d| d.deadline).min()
    }

    /// Abort reassemblies whose N_Cr deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for d in &mut self.dirs {
            expire(d, now, &mut self.events);
        }
    }
}

fn expire(d: &mut Direction, now: Instant, events: &mut VecDeque<MonitorEvent>) {
    if d.deadline.is_some_and(|t| t <= now) {
        d.deadline = None;
        if d.rx.abort() {
            let e = IsoTpError::Timeout { timer: Timer::NCr };
            d.stats.count_error(&e);
            events.push_back(MonitorEvent {
                id: d.id,
                event: IsoTpEvent::Error(e),
            });
        }
    }
}
