//! The dongle role's counters: Prometheus families (`tether_agent_dongle_*`) and the totals
//! logged periodically and at exit.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::info;

/// Why a frame was dropped by the agent (every drop has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Read while the dongle had no group, or an inactive one.
    NoGroup,
    /// Refused by the server because the group was not active (not stored).
    GroupInactive,
    /// The oldest unacknowledged frame, removed because the outbox was full.
    OutboxFull,
    /// The dongle's queue inside the agent was full (the outbox could not keep up).
    QueueFull,
    /// A frame the data plane cannot carry or a stored frame that no longer decodes.
    Invalid,
    /// Still waiting for a group that changed: frames of the old group are not relayed.
    GroupChanged,
    /// A frame for the dongle that could not be sent: the UDP socket refused its REMP or
    /// cannelloni datagram, a cannelloni edge has heard from no peer yet, the SocketCAN
    /// interface refused it.
    NotSent,
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoGroup => "no_group",
            DropReason::GroupInactive => "group_inactive",
            DropReason::OutboxFull => "outbox_full",
            DropReason::QueueFull => "queue_full",
            DropReason::Invalid => "invalid",
            DropReason::GroupChanged => "group_changed",
            DropReason::NotSent => "not_sent",
        }
    }

    /// Every reason, for the totals line.
    pub const ALL: [DropReason; 7] = [
        DropReason::NoGroup,
        DropReason::GroupInactive,
        DropReason::OutboxFull,
        DropReason::QueueFull,
        DropReason::Invalid,
        DropReason::GroupChanged,
        DropReason::NotSent,
    ];
}

/// Per-dongle labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SerialLabels {
    /// Dongle serial.
    pub serial: String,
}

/// Per-dongle, per-reason labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Dongle serial.
    pub serial: String,
    /// [`DropReason::as_str`].
    pub reason: &'static str,
}

/// All families. Cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub struct DongleMetrics {
    /// Frames read from dongles over UDP.
    pub frames_in: Family<SerialLabels, Counter>,
    /// Frames appended to the outbox.
    pub frames_queued: Family<SerialLabels, Counter>,
    /// Frames sent to the server (retransmits included).
    pub frames_sent: Family<SerialLabels, Counter>,
    /// Frames the server acknowledged as durable.
    pub frames_acked: Family<SerialLabels, Counter>,
    /// Frames dropped, by reason.
    pub frames_dropped: Family<DropLabels, Counter>,
    /// Frames received from the server and sent to the dongle.
    pub frames_delivered: Family<SerialLabels, Counter>,
    /// Inbound frames received twice (across reconnects) and skipped.
    pub frames_duplicate: Family<SerialLabels, Counter>,
    /// Inbound frames the server reported missing (`gap`).
    pub gap_frames: Family<SerialLabels, Counter>,
    /// REMP datagrams lost between dongle and agent (sequence holes).
    pub remp_lost: Family<SerialLabels, Gauge>,
    /// Frames the dongle reported dropping itself.
    pub remp_dongle_dropped: Family<SerialLabels, Gauge>,
    /// Unacknowledged frames in the outbox.
    pub outbox_pending: Family<SerialLabels, Gauge>,
    /// Frames a full outbox dropped after sending them, until the server says whether it holds
    /// them (then counted as acknowledged or as dropped `outbox_full`).
    pub outbox_unsettled: Family<SerialLabels, Gauge>,
    /// 1 while the dongle's `/ws/data` session is up.
    pub connected: Family<SerialLabels, Gauge>,
    /// 1 while the dongle's frames are relayed (it has a group that is not inactive).
    pub relaying: Family<SerialLabels, Gauge>,
    /// Connection attempts that failed or ended.
    pub disconnects: Family<SerialLabels, Counter>,
    /// Sessions lost or not opened that moved the dongle's next attempt to another server of
    /// `server_url`.
    pub failovers: Family<SerialLabels, Counter>,
    /// Index in `server_url` (0-based) of the server of the dongle's last session attempt.
    pub server_index: Family<SerialLabels, Gauge>,
    /// Frames for the diagnostics role that a shared dongle's full tap queue dropped (the
    /// relay still got them; `dongle::tap`).
    pub tap_dropped: Family<SerialLabels, Counter>,
    /// UDP datagrams (REMP, cannelloni) or SocketCAN reads that did not decode.
    pub malformed_datagrams: Counter,
    /// REMP datagrams dropped by authentication (no valid tag, no key, an older boot).
    pub unauthenticated_datagrams: Counter,
    /// Serials seen, for the totals lines.
    known: Arc<Mutex<BTreeSet<String>>>,
}

impl DongleMetrics {
    /// Register every family in `reg`.
    pub fn register(&self, reg: &mut Registry) {
        let p = reg.sub_registry_with_prefix("tether_agent_dongle");
        p.register(
            "frames_in",
            "Frames read from dongles",
            self.frames_in.clone(),
        );
        p.register(
            "frames_queued",
            "Frames appended to the outbox",
            self.frames_queued.clone(),
        );
        p.register(
            "frames_sent",
            "Frames sent to the server, retransmits included",
            self.frames_sent.clone(),
        );
        p.register(
            "frames_acked",
            "Frames the server acknowledged as durable",
            self.frames_acked.clone(),
        );
        p.register(
            "frames_dropped",
            "Frames dropped by the agent, by reason",
            self.frames_dropped.clone(),
        );
        p.register(
            "frames_delivered",
            "Frames from the server sent to the dongle",
            self.frames_delivered.clone(),
        );
        p.register(
            "frames_duplicate",
            "Inbound frames received again and skipped",
            self.frames_duplicate.clone(),
        );
        p.register(
            "gap_frames",
            "Inbound frames the server reported missing",
            self.gap_frames.clone(),
        );
        p.register(
            "remp_lost_datagrams",
            "REMP datagrams lost between dongle and agent",
            self.remp_lost.clone(),
        );
        p.register(
            "remp_dongle_dropped",
            "Frames the dongle reported dropping",
            self.remp_dongle_dropped.clone(),
        );
        p.register(
            "outbox_pending",
            "Unacknowledged frames in the outbox",
            self.outbox_pending.clone(),
        );
        p.register(
            "outbox_unsettled",
            "Frames a full outbox dropped after sending them, until the server says whether it holds them",
            self.outbox_unsettled.clone(),
        );
        p.register(
            "connected",
            "1 while the data-plane session is up",
            self.connected.clone(),
        );
        p.register(
            "relaying",
            "1 while the dongle's frames are relayed",
            self.relaying.clone(),
        );
        p.register(
            "disconnects",
            "Data-plane sessions that failed or ended",
            self.disconnects.clone(),
        );
        p.register(
            "failovers",
            "Lost sessions after which the next attempt went to another server",
            self.failovers.clone(),
        );
        p.register(
            "server_index",
            "Index in server_url of the server of the last session attempt",
            self.server_index.clone(),
        );
        p.register(
            "tap_dropped_frames",
            "Frames for the diagnostics role a shared dongle's full tap queue dropped (the relay still got them)",
            self.tap_dropped.clone(),
        );
        p.register(
            "malformed_datagrams",
            "Datagrams (REMP, cannelloni) or SocketCAN reads that did not decode",
            self.malformed_datagrams.clone(),
        );
        p.register(
            "unauthenticated_datagrams",
            "REMP datagrams dropped by authentication (bad or missing tag, no key, older boot)",
            self.unauthenticated_datagrams.clone(),
        );
    }

    /// Remember `serial` for the totals lines.
    pub fn note_serial(&self, serial: &str) {
        if let Ok(mut k) = self.known.lock() {
            k.insert(serial.to_owned());
        }
    }

    /// Serials seen.
    pub fn serials(&self) -> Vec<String> {
        self.known
            .lock()
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Count `n` dropped frames of `serial`.
    pub fn dropped(&self, serial: &str, reason: DropReason, n: u64) {
        if n > 0 {
            self.frames_dropped
                .get_or_create(&DropLabels {
                    serial: serial.to_owned(),
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Shorthand for a per-serial counter.
    pub fn inc(family: &Family<SerialLabels, Counter>, serial: &str, n: u64) {
        if n > 0 {
            family
                .get_or_create(&SerialLabels {
                    serial: serial.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// The `tap_dropped` counter of `serial` (shared with the family: what it counts is
    /// exposed).
    pub fn tap_dropped_counter(&self, serial: &str) -> Counter {
        self.tap_dropped
            .get_or_create(&SerialLabels {
                serial: serial.to_owned(),
            })
            .clone()
    }

    /// Shorthand for a per-serial gauge.
    pub fn set(family: &Family<SerialLabels, Gauge>, serial: &str, v: u64) {
        family
            .get_or_create(&SerialLabels {
                serial: serial.to_owned(),
            })
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// The per-frame counters and the gauges of `serial` that its worker updates on every
    /// batch, taken from their families once: an update is then an atomic add, without the
    /// label's allocation and lookup.
    pub fn of_serial(&self, serial: &str) -> SerialMetrics {
        let l = SerialLabels {
            serial: serial.to_owned(),
        };
        let counter = |f: &Family<SerialLabels, Counter>| f.get_or_create(&l).clone();
        let gauge = |f: &Family<SerialLabels, Gauge>| f.get_or_create(&l).clone();
        SerialMetrics {
            frames_in: counter(&self.frames_in),
            frames_queued: counter(&self.frames_queued),
            frames_sent: counter(&self.frames_sent),
            frames_acked: counter(&self.frames_acked),
            frames_delivered: counter(&self.frames_delivered),
            frames_duplicate: counter(&self.frames_duplicate),
            outbox_pending: gauge(&self.outbox_pending),
            outbox_unsettled: gauge(&self.outbox_unsettled),
            relaying: gauge(&self.relaying),
        }
    }

    /// The totals of `serial`.
    pub fn totals(&self, serial: &str) -> Totals {
        let l = SerialLabels {
            serial: serial.to_owned(),
        };
        let m = self;
        Totals {
            frames_in: m.frames_in.get_or_create(&l).get(),
            acked: m.frames_acked.get_or_create(&l).get(),
            delivered: m.frames_delivered.get_or_create(&l).get(),
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    let n = m
                        .frames_dropped
                        .get_or_create(&DropLabels {
                            serial: serial.to_owned(),
                            reason: r.as_str(),
                        })
                        .get();
                    (r.as_str(), n)
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            gaps: m.gap_frames.get_or_create(&l).get(),
            pending: u64::try_from(m.outbox_pending.get_or_create(&l).get()).unwrap_or(0),
            unsettled: u64::try_from(m.outbox_unsettled.get_or_create(&l).get()).unwrap_or(0),
        }
    }
}

/// One dongle's series of the families its worker updates per batch ([`DongleMetrics::of_serial`];
/// shared with the families: what they count is exposed).
#[derive(Debug, Clone)]
pub struct SerialMetrics {
    /// `frames_in`.
    pub frames_in: Counter,
    /// `frames_queued`.
    pub frames_queued: Counter,
    /// `frames_sent`.
    pub frames_sent: Counter,
    /// `frames_acked`.
    pub frames_acked: Counter,
    /// `frames_delivered`.
    pub frames_delivered: Counter,
    /// `frames_duplicate`.
    pub frames_duplicate: Counter,
    /// `outbox_pending`.
    pub outbox_pending: Gauge,
    /// `outbox_unsettled`.
    pub outbox_unsettled: Gauge,
    /// `relaying`.
    pub relaying: Gauge,
}

/// Totals of one dongle, for log lines and the exit report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Frames read.
    pub frames_in: u64,
    /// Frames acknowledged by the server.
    pub acked: u64,
    /// Frames delivered to the dongle.
    pub delivered: u64,
    /// Dropped, by reason (label, count).
    pub dropped: Vec<(&'static str, u64)>,
    /// Frames reported missing by the server.
    pub gaps: u64,
    /// Outbox size.
    pub pending: u64,
    /// Frames dropped after sending, not yet known to have arrived or not.
    pub unsettled: u64,
}

impl Totals {
    /// Logs these totals of `serial` as one structured line with the message `what`.
    pub fn log(&self, serial: &str, what: &str) {
        info!(%serial, frames_in = self.frames_in, acked = self.acked, delivered = self.delivered,
            pending = self.pending, unsettled = self.unsettled, dropped = ?self.dropped,
            gap_frames = self.gaps, "{what}");
    }
}

/// Registry and metrics, shared by the HTTP endpoint.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    /// The families.
    pub metrics: DongleMetrics,
    /// The registry to encode.
    pub registry: Arc<Registry>,
}

impl MetricsHandle {
    /// A registry with the dongle families.
    pub fn new() -> Self {
        let metrics = DongleMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        MetricsHandle {
            metrics,
            registry: Arc::new(registry),
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        tether_runtime::metrics::encode_text(&self.registry).unwrap_or_default()
    }
}

impl Default for MetricsHandle {
    fn default() -> Self {
        Self::new()
    }
}
