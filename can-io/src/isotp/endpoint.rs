//! [`IsoTpEndpoint`]: one node's end of an ISO-TP link, as a sans-IO state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::FrameBuf;
use super::pci::{self, FF_DL_12BIT_MAX, FlowStatus, Pci};
use super::rx::{Reassembler, RxStep};
use super::{FrameMachine, IsoTpConfig, IsoTpError, IsoTpEvent, IsoTpStats, Timer};
use crate::frame::CanFrame;

/// What happens when a queued frame is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutKind {
    /// A flow control we send as receiver.
    FlowControl,
    /// A single frame: the message is sent.
    Single,
    /// A first frame: wait for flow control from now.
    First,
}

#[derive(Debug)]
enum TxState {
    /// First frame queued, not yet handed out.
    Queued,
    /// Waiting for a flow control (after the first frame or a block).
    WaitFc { deadline: Instant, waits: u8 },
    /// Sending consecutive frames.
    Sending {
        next_at: Instant,
        block_left: Option<u8>,
        st_min: Duration,
    },
}

#[derive(Debug)]
struct Transmission {
    msg: Vec<u8>,
    offset: usize,
    sn: u8,
    state: TxState,
}

/// One end of an ISO-TP link: segments what it is given to [`send`](Self::send), reassembles
/// what arrives on its receive address, and runs flow control and timers for both. See the
/// [module docs](super) for the call order.
///
/// One message is in flight per direction at a time: `send` while one is being sent is
/// [`IsoTpError::Busy`]. A new first or single frame while a message is being reassembled
/// aborts that reception ([`IsoTpError::Interrupted`]), as the standard says.
#[derive(Debug)]
pub struct IsoTpEndpoint {
    cfg: IsoTpConfig,
    rx: Reassembler,
    rx_deadline: Option<Instant>,
    tx: Option<Transmission>,
    out: VecDeque<(CanFrame, OutKind)>,
    events: VecDeque<IsoTpEvent>,
    stats: IsoTpStats,
}

impl IsoTpEndpoint {
    /// An idle endpoint; refuses an invalid configuration.
    pub fn new(cfg: IsoTpConfig) -> Result<Self, IsoTpError> {
        cfg.validate()?;
        Ok(IsoTpEndpoint {
            rx: Reassembler::new(cfg.max_rx_len),
            cfg,
            rx_deadline: None,
            tx: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: IsoTpStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IsoTpConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> IsoTpStats {
        self.stats
    }

    /// Whether nothing is being sent, received or waiting to go out.
    pub fn is_idle(&self) -> bool {
        self.tx.is_none() && !self.rx.in_progress() && self.out.is_empty()
    }

    /// Whether a message is being sent (a single frame not yet handed out counts).
    pub fn is_sending(&self) -> bool {
        self.tx.is_some() || self.out.iter().any(|(_, k)| *k == OutKind::Single)
    }

    /// Start sending `payload`: a single frame if it fits, else a first frame and, as flow
    /// control allows, consecutive frames. [`IsoTpEvent::Sent`] follows once the last frame has
    /// been handed out.
    pub fn send(&mut self, payload: &[u8], now: Instant) -> Result<(), IsoTpError> {
        if self.is_sending() {
            return Err(IsoTpError::Busy);
        }
        let len = payload.len();
        if len > u32::MAX as usize {
            return Err(IsoTpError::CannotSend {
                len,
                reason: "longer than 4 GiB",
            });
        }
        if len <= self.cfg.max_single_frame() {
            let frame = self.cfg.single_frame(payload)?;
            self.out.push_back((frame, OutKind::Single));
            return Ok(());
        }
        let mut buf = FrameBuf::new(self.cfg.addressing.tx_prefix());
        if len as u32 <= FF_DL_12BIT_MAX {
            buf.push(0x10 | (len >> 8) as u8);
            buf.push(len as u8);
        } else {
            buf.extend(&[0x10, 0x00]);
            buf.extend(&(len as u32).to_be_bytes());
        }
        let first = self.cfg.format.tx_dl() - buf.len();
        buf.extend(&payload[..first]);
        let frame = self.cfg.frame(&buf, true)?;
        self.out.push_back((frame, OutKind::First));
        self.tx = Some(Transmission {
            msg: payload.to_vec(),
            offset: first,
            sn: 1,
            state: TxState::Queued,
        });
        let _ = now;
        Ok(())
    }

    /// Take in a frame from the bus. Returns whether it was for this endpoint (its receive
    /// identifier and, with extended addressing, its address byte); other frames are counted in
    /// `frames_ignored` and change nothing.
    pub fn handle_frame(&mut self, frame: &CanFrame, now: Instant) -> bool {
        let data = match frame {
            CanFrame::Data(f) if f.id() == self.cfg.addressing.rx_id() => f.data(),
            CanFrame::Fd(f) if f.id() == self.cfg.addressing.rx_id() => f.data(),
            _ => {
                self.stats.frames_ignored += 1;
                return false;
            }
        };
        let pdu = match self.cfg.addressing.rx_prefix() {
            Some(p) if data.first() == Some(&p) => &data[1..],
            Some(_) => {
                self.stats.frames_ignored += 1;
                return false;
            }
            None => data,
        };
        self.stats.frames_received += 1;
        let overhead = self.cfg.addressing.overhead();
        match pci::parse(pdu, data.len()) {
            // A flow control with a reserved status ends a transmission that awaited one.
            Err(e @ IsoTpError::InvalidFlowStatus { .. }) => match &self.tx {
                Some(Transmission {
                    state: TxState::WaitFc { .. },
                    ..
                }) => self.abort_tx(e),
                _ => self.error(IsoTpError::UnexpectedFlowControl),
            },
            Err(e) => self.error(e),
            Ok(Pci::Single { data }) => {
                let (interrupted, step) = self.rx.single(data);
                self.rx_step(interrupted, step, now);
            }
            Ok(Pci::First { len, data: d, .. }) => {
                let (interrupted, step) = self.rx.first(len, d, data.len(), overhead);
                self.rx_step(interrupted, step, now);
            }
            Ok(Pci::Consecutive { sn, data }) => {
                let step = self.rx.consecutive(sn, data);
                self.rx_step(None, step, now);
            }
            Ok(Pci::FlowControl {
                status,
                block_size,
                st_min,
            }) => self.flow_control(status, block_size, st_min.duration(), now),
        }
        true
    }

    fn rx_step(&mut self, interrupted: Option<IsoTpError>, step: RxStep, now: Instant) {
        if let Some(e) = interrupted {
            self.rx_deadline = None;
            self.error(e);
        }
        match step {
            RxStep::Message(m) => {
                self.rx_deadline = None;
                self.stats.messages_received += 1;
                self.events.push_back(IsoTpEvent::Received(m));
            }
            RxStep::Started { len } => {
                self.events.push_back(IsoTpEvent::FirstFrame { len });
                self.send_flow_control(FlowStatus::ContinueToSend);
                self.rx_deadline = Some(now + self.cfg.timeouts.n_cr);
            }
            RxStep::Continue { in_block } => {
                if self.cfg.block_size != 0 && in_block >= u32::from(self.cfg.block_size) {
                    self.send_flow_control(FlowStatus::ContinueToSend);
                    self.rx.block_restarted();
                }
                self.rx_deadline = Some(now + self.cfg.timeouts.n_cr);
            }
            RxStep::Overflow(e) => {
                self.rx_deadline = None;
                self.send_flow_control(FlowStatus::Overflow);
                self.error(e);
            }
            RxStep::Refused(e) => {
                if !self.rx.in_progress() {
                    self.rx_deadline = None;
                }
                self.error(e);
            }
        }
    }

    fn send_flow_control(&mut self, status: FlowStatus) {
        let mut buf = FrameBuf::new(self.cfg.addressing.tx_prefix());
        buf.extend(&[
            0x30 | status.nibble(),
            self.cfg.block_size,
            self.cfg.st_min.raw(),
        ]);
        match self.cfg.frame(&buf, false) {
            Ok(f) => self.out.push_back((f, OutKind::FlowControl)),
            // Unreachable with a validated configuration; reported rather than lost.
            Err(e) => self.error(e),
        }
    }

    fn flow_control(&mut self, status: FlowStatus, block_size: u8, st_min: Duration, now: Instant) {
        let Some(tx) = self.tx.as_mut() else {
            return self.error(IsoTpError::UnexpectedFlowControl);
        };
        let TxState::WaitFc { waits, .. } = tx.state else {
            return self.error(IsoTpError::UnexpectedFlowControl);
        };
        match status {
            FlowStatus::ContinueToSend => {
                tx.state = TxState::Sending {
                    next_at: now,
                    block_left: (block_size != 0).then_some(block_size),
                    st_min,
                };
            }
            FlowStatus::Wait => {
                if waits >= self.cfg.max_wait_frames {
                    let max = self.cfg.max_wait_frames;
                    self.abort_tx(IsoTpError::TooManyWaits { max });
                } else {
                    tx.state = TxState::WaitFc {
                        deadline: now + self.cfg.timeouts.n_bs,
                        waits: waits + 1,
                    };
                }
            }
            FlowStatus::Overflow => {
                let len = tx.msg.len();
                self.abort_tx(IsoTpError::Overflow { len });
            }
        }
    }

    /// The next frame to put on the bus now, if any. Consecutive frames wait for STmin: when
    /// this returns `None` while sending, [`poll_timeout`](Self::poll_timeout) says when to ask
    /// again.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<CanFrame> {
        if let Some((frame, kind)) = self.out.pop_front() {
            self.stats.frames_sent += 1;
            match kind {
                OutKind::FlowControl => {}
                OutKind::Single => self.sent(),
                OutKind::First => {
                    if let Some(tx) = self.tx.as_mut() {
                        tx.state = TxState::WaitFc {
                            deadline: now + self.cfg.timeouts.n_bs,
                            waits: 0,
                        };
                    }
                }
            }
            return Some(frame);
        }
        let tx = self.tx.as_mut()?;
        let TxState::Sending {
            next_at,
            block_left,
            st_min,
        } = tx.state
        else {
            return None;
        };
        if next_at > now {
            return None;
        }
        let mut buf = FrameBuf::new(self.cfg.addressing.tx_prefix());
        buf.push(0x20 | tx.sn);
        let take = (self.cfg.format.tx_dl() - buf.len()).min(tx.msg.len() - tx.offset);
        buf.extend(&tx.msg[tx.offset..tx.offset + take]);
        tx.offset += take;
        tx.sn = (tx.sn + 1) & 0x0F;
        let last = tx.offset == tx.msg.len();
        let frame = match self.cfg.frame(&buf, !last) {
            Ok(f) => f,
            Err(e) => {
                self.abort_tx(e);
                return None;
            }
        };
        self.stats.frames_sent += 1;
        if last {
            self.sent();
        } else {
            let block_left = block_left.map(|n| n - 1);
            tx.state = if block_left == Some(0) {
                TxState::WaitFc {
                    deadline: now + self.cfg.timeouts.n_bs,
                    waits: 0,
                }
            } else {
                TxState::Sending {
                    next_at: now + st_min,
                    block_left,
                    st_min,
                }
            };
        }
        Some(frame)
    }

    fn sent(&mut self) {
        self.tx = None;
        self.stats.messages_sent += 1;
        self.events.push_back(IsoTpEvent::Sent);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<IsoTpEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) or [`poll_transmit`](Self::poll_transmit)
    /// should next be called: the earliest of the N_Bs and N_Cr deadlines and the moment the
    /// next consecutive frame is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self.tx.as_ref().and_then(|tx| match tx.state {
            TxState::Queued => None,
            TxState::WaitFc { deadline, .. } => Some(deadline),
            TxState::Sending { next_at, .. } => Some(next_at),
        });
        match (tx, self.rx_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expire the timers due at `now`: a missing flow control aborts the transmission (N_Bs), a
    /// missing consecutive frame the reception (N_Cr).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.rx_deadline.is_some_and(|d| d <= now) {
            self.rx_deadline = None;
            self.rx.abort();
            self.error(IsoTpError::Timeout { timer: Timer::NCr });
        }
        if let Some(Transmission {
            state: TxState::WaitFc { deadline, .. },
            ..
        }) = self.tx
            && deadline <= now
        {
            self.abort_tx(IsoTpError::Timeout { timer: Timer::NBs });
        }
    }

    /// The data link did not confirm `frame` (one this endpoint handed out) within N_As / N_Ar:
    /// abort the transfer it belonged to.
    pub fn handle_transmit_timeout(&mut self, frame: &CanFrame) {
        let skip = self.cfg.addressing.overhead();
        let is_fc = frame.data().get(skip).is_some_and(|b| b >> 4 == 3);
        if is_fc {
            self.rx_deadline = None;
            self.rx.abort();
            self.error(IsoTpError::Timeout { timer: Timer::NAr });
        } else {
            self.abort_tx(IsoTpError::Timeout { timer: Timer::NAs });
        }
    }

    fn abort_tx(&mut self, e: IsoTpError) {
        self.tx = None;
        self.out.retain(|(_, k)| *k == OutKind::FlowControl);
        self.error(e);
    }

    fn error(&mut self, e: IsoTpError) {
        self.stats.count_error(&e);
        self.events.push_back(IsoTpEvent::Error(e));
    }
}

impl FrameMachine for IsoTpEndpoint {
    fn handle_frame(&mut self, frame: &CanFrame, now: Instant) -> bool {
        IsoTpEndpoint::handle_frame(self, frame, now)
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<CanFrame> {
        IsoTpEndpoint::poll_transmit(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        IsoTpEndpoint::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        IsoTpEndpoint::handle_timeout(self, now)
    }
    fn handle_transmit_timeout(&mut self, frame: &CanFrame, _now: Instant) {
        IsoTpEndpoint::handle_transmit_timeout(self, frame)
    }
}
