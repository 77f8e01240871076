//! Simulated time and network for ISO-TP state machines: two [`FrameMachine`]s stepped over a
//! lossless virtual link with a virtual clock (the quinn-proto `tests/util.rs` pattern).
//! Every frame put on the link is logged with its time and sender.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use can_io::CanFrame;
use can_io::isotp::{Addressing, FrameMachine, IsoTpConfig, IsoTpEndpoint, IsoTpEvent};

/// Which side put a frame on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Two machines on one link, and the clock.
pub struct Pair<A, B> {
    pub a: A,
    pub b: B,
    pub t0: Instant,
    pub now: Instant,
    pub log: Vec<(Duration, Side, CanFrame)>,
    /// Frames `a` sends are held this long on the link before `b` sees them (and back).
    pub latency: Duration,
}

impl<A: FrameMachine, B: FrameMachine> Pair<A, B> {
    pub fn new(a: A, b: B) -> Self {
        let t0 = Instant::now();
        Pair {
            a,
            b,
            t0,
            now: t0,
            log: Vec::new(),
            latency: Duration::ZERO,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Move every frame due now across the link; returns how many moved.
    pub fn exchange(&mut self) -> usize {
        let Pair {
            a,
            b,
            t0,
            now,
            log,
            latency,
        } = self;
        // Every frame `from` has due now, to `to`.
        let mut cross = |from: &mut dyn FrameMachine, to: &mut dyn FrameMachine, side| {
            let mut moved = 0;
            while let Some(f) = from.poll_transmit(*now) {
                log.push((*now - *t0, side, f));
                *now += *latency;
                to.handle_frame(&f, *now);
                moved += 1;
            }
            moved
        };
        let mut moved = 0;
        loop {
            let round = cross(a, b, Side::A) + cross(b, a, Side::B);
            if round == 0 {
                return moved;
            }
            moved += round;
        }
    }

    /// Run until neither side has anything to send or any timer, or until `limit` of virtual
    /// time has passed. Returns whether it went quiet.
    pub fn run(&mut self, limit: Duration) -> bool {
        let end = self.now + limit;
        loop {
            self.exchange();
            let next = match (self.a.poll_timeout(), self.b.poll_timeout()) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            let Some(next) = next else {
                return true;
            };
            if next > end {
                self.now = end;
                return false;
            }
            self.now = self.now.max(next);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        }
    }

    /// Advance the clock to `t0 + at` and fire timers.
    pub fn advance_to(&mut self, at: Duration) {
        self.now = self.t0 + at;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }
}

/// All events an endpoint has queued.
pub fn events(ep: &mut IsoTpEndpoint) -> Vec<IsoTpEvent> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

/// The messages among `events`.
pub fn received(events: &[IsoTpEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            IsoTpEvent::Received(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// Tester (`0x7E0` → `0x7E8`) and ECU (the reverse) configurations, normal addressing.
pub fn tester_and_ecu() -> (IsoTpConfig, IsoTpConfig) {
    (
        IsoTpConfig::new(Addressing::normal(0x7E0, 0x7E8).expect("ids")),
        IsoTpConfig::new(Addressing::normal(0x7E8, 0x7E0).expect("ids")),
    )
}

/// A pair of endpoints.
pub fn endpoints(a: IsoTpConfig, b: IsoTpConfig) -> Pair<IsoTpEndpoint, IsoTpEndpoint> {
    Pair::new(
        IsoTpEndpoint::new(a).expect("valid config"),
        IsoTpEndpoint::new(b).expect("valid config"),
    )
}

/// A payload of `len` bytes that shows misplaced segments.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}
