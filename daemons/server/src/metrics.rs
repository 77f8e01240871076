//! Prometheus metrics of the HTTP server, in the OpenMetrics text format.
//!
//! Only families this server actually updates are registered: relay ([`RelayMetrics`]) and SSE
//! families are added by the code that produces those numbers, never pre-registered at zero.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-request metrics. `route` is the matched route template (`/api/v1/groups/{id}`)
/// or `unmatched`, so label cardinality stays bounded whatever paths clients send.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template.
    pub route: String,
    /// HTTP method (`GET`, `POST`, …, or `other`).
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of the request duration histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

/// Labels of per-group relay gauges. One series per loaded group and direction: bounded by the
/// number of groups, and removed when a group is unloaded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupDirectionLabels {
    /// Group id (UUID).
    pub group: String,
    /// `a_to_b` or `b_to_a`.
    pub direction: &'static str,
}

/// Labels of counters by reason: the retention rule of trims, why console events were dropped,
/// why diagnostics-channel messages were ignored (each family's docs list its reasons).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Reason.
    pub reason: &'static str,
}

/// The labels of [`RelayMetrics::frames_trimmed`] and
/// [`RelayMetrics::frames_trimmed_undelivered`] (the name they had before [`ReasonLabels`]
/// served every by-reason family).
pub type TrimLabels = ReasonLabels;

/// The labels of [`ServerMetrics::console_events_dropped`] (the name they had before
/// [`ReasonLabels`]).
pub type DropLabels = ReasonLabels;

/// Labels of data-plane refusals and connection ends.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// A data-plane error code (`bad_message`, `group_inactive`, …) or close cause.
    pub code: &'static str,
}

fn relay_delay_histogram() -> Histogram {
    // 50 µs … ~13 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// The data plane's metric families (`tether_server_relay_*`), registered by
/// [`RelayMetrics::register`] when the data plane starts.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Frames received from producers in `frames` messages (retransmits included).
    pub frames_received: Counter,
    /// Frames stored in a stream log for the first time.
    pub frames_stored: Counter,
    /// Frames received again that were already stored or on their way to the log (a producer's
    /// resend after a reconnect, a refusal or a lost ack): dropped and acknowledged again.
    pub frames_duplicate: Counter,
    /// Frames stored while their consumer was offline or still replaying a backlog.
    pub frames_buffered: Counter,
    /// Frames handed to a consumer connection (live or replayed).
    pub frames_relayed: Counter,
    /// Frames refused without being stored (inactive group, out of order, bad message), by code.
    pub frames_refused: Family<CodeLabels, Counter>,
    /// Frames removed by retention, by rule (`age` or `length`).
    pub frames_trimmed: Family<ReasonLabels, Counter>,
    /// Frames removed by retention before their consumer acknowledged them (reported to it as
    /// a gap, to the group console as buffer pressure), by rule (`age` or `length`).
    pub frames_trimmed_undelivered: Family<ReasonLabels, Counter>,
    /// Frames waiting for an offline or replaying consumer, per group and direction.
    pub backlog: Family<GroupDirectionLabels, Gauge>,
    /// Data-plane WebSocket connections past the handshake.
    pub connections: Gauge,
    /// Data-plane connections refused or closed with a protocol error, by code.
    pub errors: Family<CodeLabels, Counter>,
    /// Stream-log operations that failed (appends, reads, trims, cursor stores).
    pub storage_errors: Counter,
    /// Stored items that were not valid frames when read for delivery (storage corruption, or
    /// another writer): skipped and reported to the consumer as a `corrupt` gap.
    pub frames_corrupt: Counter,
    /// Time from a frame batch arriving at the server to its delivery to the consumer
    /// connection: the relay's added latency when live, the replay lag after an outage.
    pub delivery_delay: Histogram,
}

impl RelayMetrics {
    /// Creates the families and registers them in `metrics`' registry.
    pub fn register(metrics: &mut ServerMetrics) -> RelayMetrics {
        let relay = RelayMetrics {
            frames_received: Counter::default(),
            frames_stored: Counter::default(),
            frames_duplicate: Counter::default(),
            frames_buffered: Counter::default(),
            frames_relayed: Counter::default(),
            frames_refused: Family::default(),
            frames_trimmed: Family::default(),
            frames_trimmed_undelivered: Family::default(),
            backlog: Family::default(),
            connections: Gauge::default(),
            errors: Family::default(),
            storage_errors: Counter::default(),
            frames_corrupt: Counter::default(),
            delivery_delay: relay_delay_histogram(),
        };
        let r = metrics.registry_mut();
        tether_runtime::register_all!(r, [
            "relay_frames_received" => relay.frames_received,
                "Frames received from producing agents (retransmits included)";
            "relay_frames_stored" => relay.frames_stored,
                "Frames stored in a relay stream log for the first time";
            "relay_frames_duplicate" => relay.frames_duplicate,
                "Frames received again that the relay already held (resends): dropped, acknowledged again";
            "relay_frames_buffered" => relay.frames_buffered,
                "Frames stored while their consumer was offline or replaying a backlog";
            "relay_frames_relayed" => relay.frames_relayed,
                "Frames delivered to a consuming agent (live or replayed)";
            "relay_frames_refused" => relay.frames_refused,
                "Frames refused without being stored, by error code";
            "relay_frames_trimmed" => relay.frames_trimmed,
                "Frames removed from relay streams by retention, by rule";
            "relay_frames_trimmed_undelivered" => relay.frames_trimmed_undelivered,
                "Frames removed by retention before their consumer acknowledged them (buffer pressure)";
            "relay_backlog_frames" => relay.backlog,
                "Frames waiting for an offline or replaying consumer, per group and direction";
            "relay_connections" => relay.connections,
                "Data-plane WebSocket connections past the handshake";
            "relay_errors" => relay.errors, "Data-plane protocol errors sent to agents, by code";
            "relay_storage_errors" => relay.storage_errors,
                "Relay stream-log operations that failed";
            "relay_frames_corrupt" => relay.frames_corrupt,
                "Stored items that were not valid frames when read for delivery, skipped as a corrupt gap";
            "relay_delivery_delay_seconds" => relay.delivery_delay,
                "Time from a frame batch arriving to its delivery to the consumer connection";
        ]);
        relay
    }
}

/// Labels of console event counters: the SSE event type (`presence`, `can_frame`, `log`,
/// `group_state`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    /// Event type.
    pub event_type: &'static str,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms … ~1 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 12))
}

/// The server's metric families and their registry.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    /// HTTP requests answered, by route, method and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// Time to answer HTTP requests, by route.
    pub http_request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// TCP connections currently open.
    pub connections_open: Gauge,
    /// TCP connections accepted since start.
    pub connections_accepted: Counter,
    /// `/readyz` answers of 503 (the failing dependency is logged).
    pub readiness_failures: Counter,
    /// Open console (SSE) responses.
    pub sse_subscribers: Gauge,
    /// Console events written to the hub, by event type.
    pub console_events_published: Family<EventTypeLabels, Counter>,
    /// Console events lost before reaching the hub, by reason (`queue_full`, `closed`,
    /// `backend_error`).
    pub console_events_dropped: Family<ReasonLabels, Counter>,
    /// `can_frame` events left out of console streams by sampling (not an error: the relay
    /// still carries every frame).
    pub console_can_frames_sampled_out: Counter,
    /// Bytes the in-memory console history holds over all streams.
    pub console_history_bytes: Gauge,
    /// Events the in-memory console history holds over all streams.
    pub console_history_events: Gauge,
    /// The global console history budget (bytes).
    pub console_history_budget_bytes: Gauge,
    /// Console events trimmed (oldest across streams first) to hold the history budget.
    pub console_history_trimmed_by_budget: Counter,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}

impl ServerMetrics {
    /// Creates and registers all families under the `tether_server` prefix.
    pub fn new() -> ServerMetrics {
        let mut metrics = ServerMetrics {
            registry: Registry::with_prefix("tether_server"),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(duration_histogram),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            readiness_failures: Counter::default(),
            sse_subscribers: Gauge::default(),
            console_events_published: Family::default(),
            console_events_dropped: Family::default(),
            console_can_frames_sampled_out: Counter::default(),
            console_history_bytes: Gauge::default(),
            console_history_events: Gauge::default(),
            console_history_budget_bytes: Gauge::default(),
            console_history_trimmed_by_budget: Counter::default(),
        };
        tether_runtime::register_all!(metrics.registry, [
            "http_requests" => metrics.http_requests,
                "HTTP requests answered, by route template, method and status";
            "http_request_duration_seconds" => metrics.http_request_duration,
                "Time to answer HTTP requests, by route template";
            "connections_open" => metrics.connections_open, "TCP connections currently open";
            "connections_accepted" => metrics.connections_accepted,
                "TCP connections accepted since start";
            "readiness_failures" => metrics.readiness_failures,
                "/readyz answers of 503 (database or Redis unreachable)";
            "sse_subscribers" => metrics.sse_subscribers,
                "Open console (Server-Sent Events) responses";
            "console_events_published" => metrics.console_events_published,
                "Console events written to the event hub, by event type";
            "console_events_dropped" => metrics.console_events_dropped,
                "Console events lost before reaching the event hub, by reason";
            "console_can_frames_sampled_out" => metrics.console_can_frames_sampled_out,
                "can_frame events left out of console streams by sampling (the relay carries all)";
            "console_history_bytes" => metrics.console_history_bytes,
                "Bytes the in-memory console history holds over all streams";
            "console_history_events" => metrics.console_history_events,
                "Events the in-memory console history holds over all streams";
            "console_history_budget_bytes" => metrics.console_history_budget_bytes,
                "The global budget of the in-memory console history, in bytes";
            "console_history_trimmed_by_budget" => metrics.console_history_trimmed_by_budget,
                "Console events trimmed, oldest across streams first, to hold the history budget";
        ]);
        metrics
    }

    /// The registry, for code that adds its own families (data plane, consoles) at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Renders every family in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        tether_runtime::metrics::encode_text(&self.registry)
    }
}
