//! Metric families of the commands service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::ServerMetrics;

/// Labels of command outcomes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `completed` or `failed`.
    pub status: &'static str,
}

/// Labels of ignored diagnostics-channel messages.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IgnoredLabels {
    /// Why it was ignored (`unknown_command`, `out_of_order`, `ended`, `bad_message`, …).
    pub reason: &'static str,
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
    /// Diagnostics-channel messages ignored, by reason.
    pub ignored: Family<IgnoredLabels, Counter>,
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
        r.register(
            "commands_submitted",
            "Vehicle commands accepted",
            m.submitted.clone(),
        );
        r.register(
            "commands_finished",
            "Vehicle commands ended, by status (completed, failed)",
            m.finished.clone(),
        );
        r.register(
            "command_responses",
            "Command responses stored",
            m.responses.clone(),
        );
        r.register(
            "command_events_published",
            "Command events published on the response bus",
            m.events_published.clone(),
        );
        r.register(
            "command_publish_errors",
            "Command events Redis did not take (they are stored; readers get them from the store)",
            m.publish_errors.clone(),
        );
        r.register(
            "diag_messages_ignored",
            "Diagnostics-channel messages ignored, by reason",
            m.ignored.clone(),
        );
        r.register(
            "command_retries",
            "Read-only commands re-sent after their agent reconnected",
            m.retries.clone(),
        );
        r.register(
            "commands_open",
            "Vehicle commands accepted and not ended",
            m.open.clone(),
        );
        r.register(
            "command_write_batches",
            "Transactions of the commands writer (each a group commit of queued changes)",
            m.write_batches.clone(),
        );
        r.register(
            "command_writes",
            "Changes the commands writer stored (commands, starts, responses, failures)",
            m.writes.clone(),
        );
        m
    }

    pub(crate) fn ignored(&self, reason: &'static str) {
        self.ignored.get_or_create(&IgnoredLabels { reason }).inc();
    }
}
