//! The producer session: a sans-IO state machine that decides when to connect, when to
//! reconcile, what to send, what to mark acknowledged and what to drop, over any transport.
//!
//! The relay's data plane (`hello` / `welcome.tx_acked` / `frames` / `ack` / `error`) and the
//! telemetry uplink (`hello` / `welcome.acked` / `batch` / `ack`) are both mapped onto it by
//! their drivers; the mapping is in `docs/protocols/uplink.md` ("Store-and-forward").

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tether_retry::{Backoff, FullJitter};

use super::rules::Reconciled;
use super::store::DropReason;
use crate::error::{Error, Result};
use crate::log::Seq;

/// What the session does when the remote's handshake acknowledges seqs the outbox never
/// assigned (the producer's store was lost or reset while the remote remembers the stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RemoteAhead {
    /// Reconcile: the held records are renumbered to follow the remote's ack, so nothing is
    /// taken for a duplicate (the agent's rule).
    #[default]
    Renumber,
    /// Stop in [`UplinkState::Error`] until [`UplinkSession::reset`], for deployments that want
    /// a person to look first.
    Stop,
}

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most records sent and not yet acknowledged (the send window).
    pub window: u64,
    /// Most records in one batch.
    pub batch_max: usize,
    /// Reconnect delays: full jitter, growing per consecutive failure (`tether-retry`).
    pub backoff: FullJitter,
    /// Window over which latency and throughput statistics are computed.
    pub stats_window_ms: u64,
    /// What a remote that is ahead of the outbox means.
    pub remote_ahead: RemoteAhead,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 1024,
            batch_max: 256,
            backoff: FullJitter::new(Duration::from_millis(500), Duration::from_secs(30)),
            stats_window_ms: 10_000,
            remote_ahead: RemoteAhead::Renumber,
        }
    }
}

/// Connection state, as reported in status messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UplinkState {
    /// A connection attempt is under way.
    Connecting,
    /// Connected and handshaken; records flow (unless paused).
    Connected,
    /// Not connected; a reconnect is scheduled ([`UplinkSession::poll_timeout`]).
    Disconnected,
    /// Stopped on a fatal error; no reconnect until [`UplinkSession::reset`].
    Error,
}

impl UplinkState {
    /// Lower-case name for status reports.
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkState::Connecting => "connecting",
            UplinkState::Connected => "connected",
            UplinkState::Disconnected => "disconnected",
            UplinkState::Error => "error",
        }
    }
}

/// What the driver has to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAction {
    /// Open the connection and handshake, then call
    /// [`handle_connected`](UplinkSession::handle_connected) or
    /// [`handle_connect_failed`](UplinkSession::handle_connect_failed).
    Connect,
    /// Reconcile the outbox with the remote's handshake
    /// ([`StreamOutbox::reconcile`](super::StreamOutbox::reconcile)) and report the result with
    /// [`handle_reconciled`](UplinkSession::handle_reconciled). Nothing is sent before.
    Reconcile {
        /// What the remote holds durably.
        remote_acked: Seq,
    },
    /// Take up to `max` pending records after `after`
    /// ([`StreamOutbox::next_batch`](super::StreamOutbox::next_batch)), send them as one batch
    /// and report with [`handle_sent`](UplinkSession::handle_sent).
    Send {
        /// Send records with seqs above this one.
        after: Seq,
        /// At most this many.
        max: usize,
    },
    /// The remote acknowledged everything up to `up_to`:
    /// [`StreamOutbox::ack`](super::StreamOutbox::ack).
    MarkUplinked {
        /// Cumulative ack.
        up_to: Seq,
    },
    /// The remote refused the pending records:
    /// [`StreamOutbox::drop_pending`](super::StreamOutbox::drop_pending) with this reason, then
    /// [`handle_records_available`](UplinkSession::handle_records_available).
    DropPending {
        /// Why.
        reason: DropReason,
    },
    /// Close the connection (the session already counts it as closed).
    Disconnect,
}

/// A refusal from the remote, as the driver maps its protocol's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The remote will not take the pending records (the relay's `group_inactive`): drop them,
    /// counted under `reason`, and reconnect with backoff.
    DropPending {
        /// Why (usually [`DropReason::Refused`]).
        reason: DropReason,
    },
    /// The remote lost track of this connection's stream (the relay's `seq_out_of_order`):
    /// reconnect with backoff and resend from the remote's ack.
    Resync,
    /// Retrying cannot help (unsupported version, malformed requests): stop until
    /// [`UplinkSession::reset`].
    Fatal {
        /// What the remote said.
        reason: String,
    },
}

impl Refusal {
    /// What a relay server's error code means for a producer's session: `group_inactive`
    /// drops the pending frames (counted as [`DropReason::Refused`]); every other code closes
    /// the connection and resends from the server's ack after the backoff, on the same server
    /// (a server that keeps refusing gets no reconnect storm). The data-plane agent adds its
    /// side effects (re-polling assignments, resetting a `cursor_ahead` cursor) around it.
    pub fn for_relay_error(code: crate::protocol::ErrorCode) -> Self {
        match code {
            crate::protocol::ErrorCode::GroupInactive => Refusal::DropPending {
                reason: DropReason::Refused,
            },
            _ => Refusal::Resync,
        }
    }
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
    /// Payload bytes in the batch (for the throughput in bytes; 0 if the driver does not
    /// count them).
    pub bytes: u64,
}

/// Statistics for status reports (the agent's metrics, the telemetry `/status` endpoint and
/// CAN status frames).
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkStats {
    /// Current state.
    pub state: UplinkState,
    /// Sending is paused ([`UplinkSession::set_paused`]).
    pub paused: bool,
    /// Cumulative ack from the remote.
    pub acked_through: Seq,
    /// Highest seq sent on the current connection.
    pub sent_through: Seq,
    /// The outbox's last seq, as last reported.
    pub last_seq: Seq,
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
    /// Payload bytes acknowledged per second over the stats window.
    pub throughput_bytes_per_s: f64,
    /// Records sent since the session was created (retransmissions included).
    pub records_sent_total: u64,
    /// Records acknowledged since the session was created.
    pub records_acked_total: u64,
    /// Connection attempts since the session was created.
    pub connect_attempts: u64,
    /// Connections lost or closed after a refusal since the session was created.
    pub disconnects: u64,
    /// Refusals from the remote since the session was created.
    pub refusals: u64,
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
    bytes: u64,
    sent_ms: u64,
}

/// An acknowledgement event, for the windowed statistics.
#[derive(Debug, Clone, Copy)]
struct AckEvent {
    at_ms: u64,
    records: u64,
    bytes: u64,
}

/// The producer session state machine.
///
/// Call order, for each event the driver sees:
/// 1. feed it: [`handle_connected`](Self::handle_connected),
///    [`handle_reconciled`](Self::handle_reconciled),
///    [`handle_connect_failed`](Self::handle_connect_failed),
///    [`handle_disconnected`](Self::handle_disconnected), [`handle_ack`](Self::handle_ack),
///    [`handle_refused`](Self::handle_refused),
///    [`handle_records_available`](Self::handle_records_available),
///    [`handle_sent`](Self::handle_sent), [`set_paused`](Self::set_paused);
/// 2. drain [`poll_action`](Self::poll_action) until it returns `None`, doing each action;
/// 3. sleep until [`poll_timeout`](Self::poll_timeout) (or the next event), then go to 2.
///
/// A connection goes `Connect` → `handle_connected(remote_acked)` → `Reconcile` →
/// `handle_reconciled` → `Send`…; sending resumes from what the remote holds, not from what
/// was sent before. Reconnects back off with full jitter (`tether-retry`), the uniform sample
/// drawn from the injected RNG.
#[derive(Debug)]
pub struct UplinkSession<R> {
    config: SessionConfig,
    rng: R,
    backoff: Backoff,
    state: UplinkState,
    paused: bool,
    reconciling: bool,
    last_error: Option<String>,
    retry_at: Option<u64>,
    acked: Seq,
    sent: Seq,
    available: Seq,
    in_flight: VecDeque<InFlight>,
    send_outstanding: bool,
    mark_pending: Option<Seq>,
    queued: VecDeque<SessionAction>,
    latencies: VecDeque<(u64, u64)>,
    acked_events: VecDeque<AckEvent>,
    last_latency_ms: Option<u64>,
    records_sent_total: u64,
    records_acked_total: u64,
    connect_attempts: u64,
    disconnects: u64,
    refusals: u64,
}

impl<R: Rng> UplinkSession<R> {
    /// A session for an outbox whose remote ack is `acked_through` and whose last seq is
    /// `last_seq` ([`super::StreamOutbox::acked`], [`super::StreamOutbox::last_seq`]). It
    /// connects at the first [`poll_action`](Self::poll_action).
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
            backoff: Backoff::new(config.backoff),
            state: UplinkState::Disconnected,
            paused: false,
            reconciling: false,
            last_error: None,
            retry_at: Some(now_ms),
            acked: acked_through,
            sent: acked_through,
            available: last_seq.max(acked_through),
            in_flight: VecDeque::new(),
            send_outstanding: false,
            mark_pending: None,
            queued: VecDeque::new(),
            latencies: VecDeque::new(),
            acked_events: VecDeque::new(),
            last_latency_ms: None,
            records_sent_total: 0,
            records_acked_total: 0,
            connect_attempts: 0,
            disconnects: 0,
            refusals: 0,
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
        if let Some(action) = self.queued.pop_front() {
            return Some(action);
        }
        match self.state {
            UplinkState::Disconnected if self.retry_at.is_some_and(|t| t <= now_ms) => {
                self.retry_at = None;
                self.state = UplinkState::Connecting;
                self.connect_attempts += 1;
                Some(SessionAction::Connect)
            }
            UplinkState::Connected
                if !self.reconciling
                    && !self.paused
                    && !self.send_outstanding
                    && self.sent < self.available =>
            {
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

    /// The connection is up and the remote's handshake says it holds everything up to
    /// `remote_acked`: the next action is [`SessionAction::Reconcile`]. With
    /// [`RemoteAhead::Stop`], a remote ack beyond the outbox's last seq is fatal instead.
    pub fn handle_connected(&mut self, remote_acked: Seq, now_ms: u64) {
        if self.state != UplinkState::Connecting {
            return;
        }
        if remote_acked > self.available && self.config.remote_ahead == RemoteAhead::Stop {
            let reason = format!(
                "remote acknowledges seq {remote_acked} but the outbox only reached {}: \
                 the outbox was reset; give this producer a new stream id",
                self.available
            );
            self.queued.push_back(SessionAction::Disconnect);
            self.handle_fatal(reason, now_ms);
            return;
        }
        self.state = UplinkState::Connected;
        self.backoff.reset();
        self.reconciling = true;
        self.in_flight.clear();
        self.send_outstanding = false;
        self.queued
            .push_back(SessionAction::Reconcile { remote_acked });
    }

    /// The outbox was reconciled: sending starts after `reconciled.resume_after`.
    pub fn handle_reconciled(&mut self, reconciled: &Reconciled, _now_ms: u64) {
        if self.state != UplinkState::Connected || !self.reconciling {
            return;
        }
        self.reconciling = false;
        self.acked = reconciled.acked;
        self.sent = reconciled.resume_after;
        self.available = reconciled.last_seq;
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
            self.disconnects += 1;
            self.go_disconnected(now_ms);
        }
    }

    /// The remote refused something on the current connection (see [`Refusal`]).
    pub fn handle_refused(&mut self, refusal: Refusal, now_ms: u64) {
        if !matches!(self.state, UplinkState::Connected | UplinkState::Connecting) {
            return;
        }
        self.refusals += 1;
        self.disconnects += 1;
        match refusal {
            Refusal::DropPending { reason } => {
                self.queued.push_back(SessionAction::DropPending { reason });
                self.queued.push_back(SessionAction::Disconnect);
                self.go_disconnected(now_ms);
            }
            Refusal::Resync => {
                self.queued.push_back(SessionAction::Disconnect);
                self.go_disconnected(now_ms);
            }
            Refusal::Fatal { reason } => {
                self.queued.push_back(SessionAction::Disconnect);
                self.handle_fatal(reason, now_ms);
            }
        }
    }

    /// A fatal error: stop until [`reset`](Self::reset).
    pub fn handle_fatal(&mut self, reason: String, _now_ms: u64) {
        self.state = UplinkState::Error;
        self.last_error = Some(reason);
        self.retry_at = None;
        self.reconciling = false;
        self.in_flight.clear();
        self.send_outstanding = false;
    }

    /// Leaves [`UplinkState::Error`] (for example after new credentials): reconnect now.
    pub fn reset(&mut self, now_ms: u64) {
        if self.state == UplinkState::Error {
            self.state = UplinkState::Disconnected;
            self.backoff.reset();
            self.retry_at = Some(now_ms);
            self.last_error = None;
        }
    }

    /// Pauses or resumes sending (the stream has no destination for now, e.g. the relay group
    /// is inactive). Connecting, acknowledgements and reconciling go on while paused.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// The outbox's last seq is now `last_seq` (after an append, a drop or a renumbering).
    pub fn handle_records_available(&mut self, last_seq: Seq) {
        self.available = last_seq;
    }

    /// Reports what the driver sent for the last [`SessionAction::Send`]; `None` when the
    /// outbox had nothing pending after `after`.
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
                self.records_sent_total += b.count;
                self.in_flight.push_back(InFlight {
                    first: b.first,
                    last: b.last,
                    count: b.count,
                    bytes: b.bytes,
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
        let mut records = 0;
        let mut bytes = 0;
        while let Some(front) = self.in_flight.front_mut() {
            if front.last <= up_to {
                records += front.count;
                bytes += front.bytes;
                let latency = now_ms.saturating_sub(front.sent_ms);
                self.last_latency_ms = Some(latency);
                self.latencies.push_back((now_ms, latency));
                self.in_flight.pop_front();
            } else {
                if front.first <= up_to {
                    // Partially acknowledged batch: count the acknowledged part by seq span.
                    let part = (up_to - front.first + 1).min(front.count);
                    let part_bytes = front.bytes * part / front.count.max(1);
                    records += part;
                    bytes += part_bytes;
                    front.count -= part;
                    front.bytes -= part_bytes;
                    front.first = up_to + 1;
                }
                break;
            }
        }
        self.records_acked_total += records;
        self.acked_events.push_back(AckEvent {
            at_ms: now_ms,
            records,
            bytes,
        });
        self.expire_stats(now_ms);
        Ok(())
    }

    /// Statistics at `now_ms`.
    pub fn stats(&mut self, now_ms: u64) -> UplinkStats {
        self.expire_stats(now_ms);
        let window_s = self.config.stats_window_ms.max(1) as f64 / 1000.0;
        let (records, bytes) = self
            .acked_events
            .iter()
            .fold((0u64, 0u64), |(r, b), e| (r + e.records, b + e.bytes));
        let (sum, max) = self
            .latencies
            .iter()
            .fold((0u64, None::<u64>), |(s, m), (_, l)| {
                (s.saturating_add(*l), Some(m.map_or(*l, |m| m.max(*l))))
            });
        UplinkStats {
            state: self.state,
            paused: self.paused,
            acked_through: self.acked,
            sent_through: self.sent,
            last_seq: self.available,
            in_flight: self.in_flight_records(),
            last_latency_ms: self.last_latency_ms,
            mean_latency_ms: (!self.latencies.is_empty())
                .then(|| sum / self.latencies.len() as u64),
            max_latency_ms: max,
            throughput_per_s: records as f64 / window_s,
            throughput_bytes_per_s: bytes as f64 / window_s,
            records_sent_total: self.records_sent_total,
            records_acked_total: self.records_acked_total,
            connect_attempts: self.connect_attempts,
            disconnects: self.disconnects,
            refusals: self.refusals,
            consecutive_failures: self.backoff.failures(),
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
        while self.acked_events.front().is_some_and(|e| e.at_ms < horizon) {
            self.acked_events.pop_front();
        }
    }

    fn go_disconnected(&mut self, now_ms: u64) {
        self.state = UplinkState::Disconnected;
        self.reconciling = false;
        self.in_flight.clear();
        self.send_outstanding = false;
        self.sent = self.acked;
        let unit: f64 = self.rng.random();
        let delay = self.backoff.next_delay(unit);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.retry_at = Some(now_ms.saturating_add(delay_ms));
    }
}
