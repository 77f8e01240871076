//! Metric families of the commands service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{ReasonLabels, ServerMetrics};

/// The labels of [`CommandMetrics::ignored`], the ignored diagnostics-channel messages (the name they had before
/// [`ReasonLabels`] served every by-reason family).
pub type IgnoredLabels = ReasonLabels;

/// Labels of command outcomes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `completed` or `failed`.
    pub status: &'static str,
}

/// The commands service's counters (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct CommandMetrics {
    /// Commands accepted.
    pub submitted: Counter,
    /// Commands ended, by status.
    pub finished: Family<OutcomeLabels, Counter>,
    /// Responses stored.
    pub responses: Counter,
    /// Events published on the response bus.
    pub events_published: Counter,
    /// Events Redis refused (they stay in the store).
    pub publish_errors: Counter,
    /// Diagnostics-channel messages ignored, by reason (`unknown_command`, `out_of_order`,
    /// `ended`, `bad_message`, …).
    pub ignored: Family<ReasonLabels, Counter>,
    /// Read-only commands re-sent after their agent reconnected.
    pub retries: Counter,
    /// Commands accepted and not ended.
    pub open: Gauge,
    /// Transactions of the commands writer (group commits).
    pub write_batches: Counter,
    /// Changes the commands writer stored (commands, starts, responses, failures).
    pub writes: Counter,
}

impl CommandMetrics {
    /// Creates the families and registers them in `metrics`' registry.
    pub fn register(metrics: &mut ServerMetrics) -> CommandMetrics {
        let m = CommandMetrics::default();
        let r = metrics.registry_mut();
        tether_runtime::register_all!(r, [
            "commands_submitted" => m.submitted, "Vehicle commands accepted";
            "commands_finished" => m.finished,
                "Vehicle commands ended, by status (completed, failed)";
            "command_responses" => m.responses, "Command responses stored";
            "command_events_published" => m.events_published,
                "Command events published on the response bus";
            "command_publish_errors" => m.publish_errors,
                "Command events Redis did not take (they are stored; readers get them from the store)";
            "diag_messages_ignored" => m.ignored, "Diagnostics-channel messages ignored, by reason";
            "command_retries" => m.retries,
                "Read-only commands re-sent after their agent reconnected";
            "commands_open" => m.open, "Vehicle commands accepted and not ended";
            "command_write_batches" => m.write_batches,
                "Transactions of the commands writer (each a group commit of queued changes)";
            "command_writes" => m.writes,
                "Changes the commands writer stored (commands, starts, responses, failures)";
        ]);
        m
    }

    pub(crate) fn ignored(&self, reason: &'static str) {
        self.ignored.get_or_create(&ReasonLabels { reason }).inc();
    }
}
