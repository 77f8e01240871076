//! The uplink statuses the vehicles report (`status` messages, `docs/protocols/telemetry.md`):
//! per vehicle, the latest one and the last [`STATUS_HISTORY`] (about five minutes at one a
//! second), each with the remote's time of receipt.
//!
//! Kept in memory only: after a restart of the remote a vehicle has no status until it
//! reconnects (it sends one on connect). Vehicles that never sent one (older collectors, or
//! not connected since the start) have none.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::wire::UplinkStatus;

/// Statuses kept per vehicle.
pub const STATUS_HISTORY: usize = 300;

/// The remote's wall clock, ms since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A status as the remote received it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedStatus {
    /// What the vehicle sent.
    #[serde(flatten)]
    pub status: UplinkStatus,
    /// When the remote received it (ms since the Unix epoch, the remote's clock).
    pub received_ts_ms: u64,
}

/// Every vehicle's recent statuses.
#[derive(Debug, Default)]
pub(crate) struct StatusBook {
    vehicles: Mutex<HashMap<String, VecDeque<ReceivedStatus>>>,
}

impl StatusBook {
    /// Records `status` of `vehicle`, received at `received_ts_ms`.
    pub(crate) fn record(&self, vehicle: &str, status: UplinkStatus, received_ts_ms: u64) {
        let mut vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
        let history = vehicles.entry(vehicle.to_owned()).or_default();
        if history.len() == STATUS_HISTORY {
            history.pop_front();
        }
        history.push_back(ReceivedStatus {
            status,
            received_ts_ms,
        });
    }

    /// The latest status of `vehicle`.
    pub(crate) fn latest(&self, vehicle: &str) -> Option<ReceivedStatus> {
        let vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
        vehicles.get(vehicle).and_then(|h| h.back().cloned())
    }

    /// The kept statuses of `vehicle`, oldest first.
    pub(crate) fn history(&self, vehicle: &str) -> Vec<ReceivedStatus> {
        let vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
        vehicles
            .get(vehicle)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The vehicles with a status.
    pub(crate) fn vehicles(&self) -> Vec<String> {
        let vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
        vehicles.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_a_bounded_history() {
        let book = StatusBook::default();
        assert_eq!(book.latest("v1"), None);
        for n in 0..(STATUS_HISTORY as u64 + 5) {
            book.record("v1", UplinkStatus::new(n, "connected", n, 0, 1.0), 10 + n);
        }
        let latest = book
            .latest("v1")
            .map(|s| (s.status.queue, s.received_ts_ms));
        assert_eq!(
            latest,
            Some((STATUS_HISTORY as u64 + 4, STATUS_HISTORY as u64 + 14))
        );
        let history = book.history("v1");
        assert_eq!(history.len(), STATUS_HISTORY);
        assert_eq!(history[0].status.queue, 5);
        assert_eq!(book.vehicles(), vec!["v1".to_owned()]);
        assert!(book.history("v2").is_empty());
    }
}
