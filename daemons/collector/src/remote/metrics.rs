//! The remote's Prometheus families (`tether_telemetry_remote_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The remote's metrics.
#[derive(Debug, Default)]
pub struct RemoteMetrics {
    /// Upgrades refused for a missing or unknown credential.
    pub auth_refused: Counter,
    /// Open upload connections.
    pub connections: Gauge,
    /// Batches received.
    pub batches: Counter,
    /// Batches refused as malformed (the connection is closed).
    pub bad_batches: Counter,
    /// Uplink status messages received.
    pub statuses: Counter,
    /// Text messages refused as malformed (the connection is closed).
    pub bad_statuses: Counter,
    /// Records stored.
    pub records_stored: Counter,
    /// Records received again and not stored (retransmissions).
    pub duplicates: Counter,
    /// Inbox transactions (each holds the batches of every connection queued meanwhile).
    pub commit_groups: Counter,
    /// Inbox transactions that failed (their batches were not acknowledged).
    pub commit_errors: Counter,
}

impl RemoteMetrics {
    /// Registers every family under `tether_telemetry_remote`.
    pub fn register(self: &std::sync::Arc<Self>, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tether_telemetry_remote");
        tether_runtime::register_all!(r, [
            "auth_refused" => self.auth_refused, "Upgrades refused for a bad credential";
            "connections" => self.connections, "Open upload connections";
            "batches" => self.batches, "Batches received";
            "bad_batches" => self.bad_batches, "Batches refused as malformed";
            "statuses" => self.statuses, "Uplink status messages received";
            "bad_statuses" => self.bad_statuses, "Text messages refused as malformed";
            "records_stored" => self.records_stored, "Records stored";
            "duplicates" => self.duplicates, "Records received again, not stored";
            "commit_groups" => self.commit_groups, "Inbox transactions";
            "commit_errors" => self.commit_errors, "Inbox transactions that failed";
        ]);
    }
}
