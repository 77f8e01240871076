//! The uplink session: a sans-IO state machine that decides when to connect, what to send and
//! what to mark uplinked.

use std::collections::VecDeque;

use rand::Rng;

use crate::error::{Error, Result};
use crate::log::Seq;

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most records sent and not yet acknowledged (the send window).
    pub window: u64,
    /// Most records in one batch.
    pub batch_max: usize,
    /// First reconnect delay ceiling; doubles per consecutive failure.
    pub backoff_base_ms: u64,
    /// Largest reconnect delay ceiling.
    pub backoff_cap_ms: u64,
    /// Window over which latency and throughput statistics are computed.
    pub stats_window_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 1024,
            batch_max: 256,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
            stats_window_ms: 10_000,
        }
    }
}

/// Connection state, as reported in uplink status messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UplinkState {
    /// A connection attempt is under way.
    Connecting,
    /// Connected and handshaken; records flow.
    Connected,
    /// Not connected; a reconnect is scheduled ([`UplinkSession::poll_timeout`]).
    Disconnected,
    /// Stopped on a fatal error (refused credentials, a remote that acknowledges seqs this
    /// vehicle never produced); no reconnect until [`UplinkSession::reset`].
    Error,
}

/// What the driver has to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAction {
    /// Open the connection, then call [`UplinkSession::handle_connected`] or
    /// [`UplinkSession::handle_connect_failed`].
    Connect,
    /// Fetch up to `max` pending records after `after` from the outbox, send them as one batch
    /// and report with [`UplinkSession::handle_sent`].
    Send {
        /// Send records with seq above this one.
        after: Seq,
        /// At most this many.
        max: usize,
    },
    /// The remote acknowledged everything up to `up_to`: mark it uplinked in the outbox.
    MarkUplinked {
        /// Cumulative ack.
        up_to: Seq,
    },
}

/// A batch as actually sent (the outbox may return fewer records than asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBatch {
    /// Seq of the first record sent.
    pub first: Seq,
    /// Seq of the last record sent.
    pub last: Seq,
    /// Records in the batch.
    pub count: u64,
}

/// Statistics for the uplink status report.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkStats {
    /// Current state.
    pub state: UplinkState,
    /// Cumulative ack from the remote.
    pub acked_through: Seq,
    /// Highest seq sent on the current connection.
    pub sent_through: Seq,
    /// Records sent and not yet acknowledged.
    pub in_flight: u64,
    /// Latency (send → ack) of the most recently acknowledged batch.
    pub last_latency_ms: Option<u64>,
    /// Mean batch latency over the stats window.
    pub mean_latency_ms: Option<u64>,
    /// Largest batch latency over the stats window.
    pub max_latency_ms: Option<u64>,
    /// Records acknowledged per second over the stats window.
    pub throughput_per_s: f64,
    /// Records acknowledged since the session was created.
    pub records_acked_total: u64,
    /// Connection attempts since the session was created.
    pub connect_attempts: u64,
    /// Consecutive failed attempts (0 while connected).
    pub consecutive_failures: u32,
    /// The fatal error, in state [`UplinkState::Error`].
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    first: Seq,
    last: Seq,
    count: u64,
    sent_ms: u64,
}

/// The uplink session state machine.
///
/// Call order, for each event the driver sees:
/// 1. feed it: [`handle_connected`](Self::handle_connected),
///    [`handle_connect_failed`](Self::handle_connect_failed),
///    [`handle_disconnected`](Self::handle_disconnected), [`handle_ack`](Self::handle_ack),
///    [`handle_records_available`](Self::handle_records_available),
///    [`handle_sent`](Self::handle_sent), [`handle_fatal`](Self::handle_fatal);
/// 2. drain [`poll_action`](Self::poll_action) until it returns `None`, doing each action;
/// 3. sleep until [`poll_timeout`](Self::poll_timeout) (or the next event), then go to 2.
///
/// Reconnects use exponential backoff with full jitter: after the n-th consecutive failure the
/// delay is uniform in `0 ..= min(cap, base · 2ⁿ)`, drawn from the injected RNG. A reconnect
/// resumes from the remote's ack (the `welcome`), not from what was sent before.
#[derive(Debug)]
pub struct UplinkSession<R> {
    config: SessionConfig,
    rng: R,
    state: UplinkState,
    last_error: Option<String>,
    retry_at: Option<u64>,
    failures: u32,
    acked: Seq,
    sent: Seq,
    available: Seq,
    in_flight: VecDeque<InFlight>,
    send_outstanding: bool,
    mark_pending: Option<Seq>,
    latencies: VecDeque<(u64, u64)>,
    acked_events: VecDeque<(u64, u64)>,
    last_latency_ms: Option<u64>,
    records_acked_total: u64,
    connect_attempts: u64,
}

impl<R: Rng> UplinkSession<R> {
    /// A session for an outbox whose remote ack is `acked_through` and whose newest record is
    /// `last_seq` (both from [`super::OutboxStats`]). It connects at the first
    /// [`poll_action`](Self::poll_action).
    pub fn new(
        config: SessionConfig,
        rng: R,
        acked_through: Seq,
        last_seq: Seq,
        now_ms: u64,
    ) -> Self {
        UplinkSession {
            config,
            rng,
            state: UplinkState::Disconnected,
            last_error: None,
            retry_at: Some(now_ms),
            failures: 0,
            acked: acked_through,
            sent: acked_through,
            available: last_seq.max(acked_through),
            in_flight: VecDeque::new(),
            send_outstanding: false,
            mark_pending: None,
            latencies: VecDeque::new(),
            acked_events: VecDeque::new(),
            last_latency_ms: None,
            records_acked_total: 0,
            connect_attempts: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> UplinkState {
        self.state
    }

    /// The next action, if any.
    pub fn poll_action(&mut self, now_ms: u64) -> Option<SessionAction> {
        if let Some(up_to) = self.mark_pending.take() {
            return Some(SessionAction::MarkUplinked { up_to });
        }
        match self.state {
            UplinkState::Disconnected if self.retry_at.is_some_and(|t| t <= now_ms) => {
                self.retry_at = None;
                self.state = UplinkState::Connecting;
                self.connect_attempts += 1;
                Some(SessionAction::Connect)
            }
            UplinkState::Connected if !self.send_outstanding && self.sent < self.available => {
                let in_flight = self.in_flight_records();
                if in_flight >= self.config.window {
                    return None;
                }
                let room = usize::try_from(self.config.window - in_flight).unwrap_or(usize::MAX);
                self.send_outstanding = true;
                Some(SessionAction::Send {
                    after: self.sent,
                    max: room.min(self.config.batch_max),
                })
            }
            _ => None,
        }
    }

    /// When the driver should poll again without another event (a scheduled reconnect).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            UplinkState::Disconnected => self.retry_at,
            _ => None,
        }
    }

    /// The connection is up; the remote's handshake says it holds everything up to
    /// `remote_ack`. Sending resumes right after it. A remote ack beyond the newest local
    /// record means the outbox was reset while the remote remembers this source: that is fatal
    /// (new records would be taken for duplicates), and the error says so.
    pub fn handle_connected(&mut self, remote_ack: Seq, now_ms: u64) {
        if self.state != UplinkState::Connecting {
            return;
        }
        if remote_ack > self.available {
            self.handle_fatal(
                format!(
                    "remote acknowledges seq {remote_ack} but the outbox only reached {}: \
                     the outbox was reset; give this vehicle a new source id",
                    self.available
                ),
                now_ms,
            );
            return;
        }
        self.state = UplinkState::Connected;
        self.failures = 0;
        if remote_ack > self.acked {
            self.acked = remote_ack;
            self.mark_pending = Some(remote_ack);
        }
        self.sent = self.acked;
        self.in_flight.clear();
        self.send_outstanding = false;
    }

    /// The connection attempt failed; a retry is scheduled with backoff.
    pub fn handle_connect_failed(&mut self, now_ms: u64) {
        if self.state == UplinkState::Connecting {
            self.go_disconnected(now_ms);
        }
    }

    /// The connection dropped. Unacknowledged records are resent after the reconnect.
    pub fn handle_disconnected(&mut self, now_ms: u64) {
        if matches!(self.state, UplinkState::Connected | UplinkState::Connecting) {
            self.go_disconnected(now_ms);
        }
    }

    /// A fatal error: stop until [`reset`](Self::reset).
    pub fn handle_fatal(&mut self, reason: String, _now_ms: u64) {
        self.state = UplinkState::Error;
        self.last_error = Some(reason);
        self.retry_at = None;
        self.in_flight.clear();
        self.send_outstanding = false;
    }

    /// Leaves [`UplinkState::Error`] (for example after new credentials): reconnect now.
    pub fn reset(&mut self, now_ms: u64) {
        if self.state == UplinkState::Error {
            self.state = UplinkState::Disconnected;
            self.failures = 0;
            self.retry_at = Some(now_ms);
            self.last_error = None;
        }
    }

    /// The outbox now holds records up to `last_seq`.
    pub fn handle_records_available(&mut self, last_seq: Seq) {
        self.available = self.available.max(last_seq);
    }

    /// Reports what the driver sent for the last [`SessionAction::Send`]; `None` when the
    /// outbox had nothing pending after `after` (records dropped by the overflow cap).
    pub fn handle_sent(&mut self, batch: Option<SentBatch>, now_ms: u64) {
        if !self.send_outstanding {
            return;
        }
        self.send_outstanding = false;
        match batch {
            Some(b)
                if self.state == UplinkState::Connected
                    && b.first > self.sent
                    && b.last >= b.first =>
            {
                self.sent = b.last;
                self.available = self.available.max(b.last);
                self.in_flight.push_back(InFlight {
                    first: b.first,
                    last: b.last,
                    count: b.count,
                    sent_ms: now_ms,
                });
            }
            Some(_) => {}
            None => self.available = self.sent,
        }
    }

    /// The remote acknowledged (after durable storage) every record up to `up_to`. An ack for
    /// something never sent is refused with [`Error::UplinkAckAhead`] and changes nothing.
    pub fn handle_ack(&mut self, up_to: Seq, now_ms: u64) -> Result<()> {
        if up_to > self.sent {
            return Err(Error::UplinkAckAhead {
                acked: up_to,
                sent: self.sent,
            });
        }
        if up_to <= self.acked {
            return Ok(());
        }
        self.acked = up_to;
        self.mark_pending = Some(up_to);
        let mut newly = 0;
        while let Some(front) = self.in_flight.front_mut() {
            if front.last <= up_to {
                newly += front.count;
                let latency = now_ms.saturating_sub(front.sent_ms);
                self.last_latency_ms = Some(latency);
                self.latencies.push_back((now_ms, latency));
                self.in_flight.pop_front();
            } else {
                if front.first <= up_to {
                    // Partially acknowledged batch: count the acknowledged part by seq span.
                    let part = (up_to - front.first + 1).min(front.count);
                    newly += part;
                    front.count -= part;
                    front.first = up_to + 1;
                }
                break;
            }
        }
        self.records_acked_total += newly;
        self.acked_events.push_back((now_ms, newly));
        self.expire_stats(now_ms);
        Ok(())
    }

    /// Statistics at `now_ms`.
    pub fn stats(&mut self, now_ms: u64) -> UplinkStats {
        self.expire_stats(now_ms);
        let window_ms = self.config.stats_window_ms.max(1);
        let acked_in_window: u64 = self.acked_events.iter().map(|(_, n)| n).sum();
        let (sum, max) = self
            .latencies
            .iter()
            .fold((0u64, None::<u64>), |(s, m), (_, l)| {
                (s.saturating_add(*l), Some(m.map_or(*l, |m| m.max(*l))))
            });
        UplinkStats {
            state: self.state,
            acked_through: self.acked,
            sent_through: self.sent,
            in_flight: self.in_flight_records(),
            last_latency_ms: self.last_latency_ms,
            mean_latency_ms: (!self.latencies.is_empty())
                .then(|| sum / self.latencies.len() as u64),
            max_latency_ms: max,
            throughput_per_s: acked_in_window as f64 * 1000.0 / window_ms as f64,
            records_acked_total: self.records_acked_total,
            connect_attempts: self.connect_attempts,
            consecutive_failures: self.failures,
            last_error: self.last_error.clone(),
        }
    }

    fn in_flight_records(&self) -> u64 {
        self.in_flight.iter().map(|b| b.count).sum()
    }

    fn expire_stats(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.config.stats_window_ms);
        while self.latencies.front().is_some_and(|(t, _)| *t < horizon) {
            self.latencies.pop_front();
        }
        while self.acked_events.front().is_some_and(|(t, _)| *t < horizon) {
            self.acked_events.pop_front();
        }
    }

    fn go_disconnected(&mut self, now_ms: u64) {
        self.state = UplinkState::Disconnected;
        self.in_flight.clear();
        self.send_outstanding = false;
        self.sent = self.acked;
        let exp = self.failures.min(32);
        let ceiling = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.config.backoff_cap_ms);
        let delay = self.rng.random_range(0..=ceiling);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now_ms.saturating_add(delay));
    }
}
