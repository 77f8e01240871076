//! The vehicle's Prometheus families (`tether_telemetry_vehicle_*`), refreshed by the driver
//! at every status report.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::VehicleStatus;

/// Drop reason label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `overflow` (`MAX_LOCAL_RECORDS`), `refused`, `abandoned`, `listener_overflow`,
    /// `store_error`.
    pub reason: &'static str,
}

/// State label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `connecting`, `connected`, `disconnected`, `error`.
    pub state: &'static str,
}

/// The vehicle's metrics.
#[derive(Debug, Default)]
pub struct VehicleMetrics {
    /// Records appended to the local store.
    pub collected: Counter,
    /// Records the remote acknowledged.
    pub uplinked: Counter,
    /// Records the local store refused (lost).
    pub store_errors: Counter,
    /// Records dropped before the remote held them, by reason (exact, persisted counts).
    pub dropped: Family<ReasonLabels, Gauge>,
    /// Pending records.
    pub queue_size: Gauge,
    /// Stored records.
    pub stored: Gauge,
    /// 1 for the current uplink state.
    pub state: Family<StateLabels, Gauge>,
    /// Mean send → ack latency (ms).
    pub latency_ms: Gauge,
}

impl VehicleMetrics {
    /// Registers every family under `tether_telemetry_vehicle`.
    pub fn register(self: &std::sync::Arc<Self>, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tether_telemetry_vehicle");
        tether_runtime::register_all!(r, [
            "records_collected" => self.collected, "Records appended to the local store";
            "records_uplinked" => self.uplinked, "Records the remote acknowledged";
            "store_errors" => self.store_errors, "Records the local store refused (lost)";
            "records_dropped" => self.dropped,
                "Records dropped before the remote held them, by reason";
            "queue_size" => self.queue_size, "Records not yet acknowledged by the remote";
            "stored_records" => self.stored, "Records in the local store";
            "uplink_state" => self.state, "1 for the current uplink state";
            "latency_mean_ms" => self.latency_ms, "Mean send to ack latency";
        ]);
    }

    /// Sets the gauges from a status snapshot.
    pub fn refresh(&self, s: &VehicleStatus) {
        let set = |reason, v: u64| {
            self.dropped
                .get_or_create(&ReasonLabels { reason })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set("overflow", s.dropped_overflow);
        set("refused", s.dropped_refused);
        set("abandoned", s.dropped_abandoned);
        set("listener_overflow", s.dropped_listener_overflow);
        set("store_error", s.store_errors);
        self.queue_size.set(s.queue_size as i64);
        self.stored.set(s.stored as i64);
        self.latency_ms.set(s.latency_mean_ms.unwrap_or(0) as i64);
        for state in ["connecting", "connected", "disconnected", "error"] {
            self.state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == s.state));
        }
    }
}
