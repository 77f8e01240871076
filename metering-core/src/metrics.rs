//! Prometheus metrics of the metering role (labels `server_id`, `region`, `queue_name`).

use std::hash::Hash;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::message::QueueKind;

/// Labels of per-queue series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Configured server id.
    pub server_id: String,
    /// Configured region.
    pub region: String,
    /// Short queue name.
    pub queue_name: String,
}

/// Labels of per-agent series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Configured server id.
    pub server_id: String,
    /// Configured region.
    pub region: String,
}

type HistogramFamily = Family<QueueLabels, Histogram, fn() -> Histogram>;

/// Labels of `control_plane_request_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, ids replaced by `{id}` (`/api/v1/sessions/{id}/usage-records`).
    pub endpoint: String,
    /// `success`, `duplicate`, `client_error`, `server_error`, `timeout` or `network_error`.
    pub outcome: String,
}

/// `control_plane_request_seconds`, one series per endpoint and outcome.
pub type RequestHistogram = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Registers each `(name, help, family)` of `families` and creates the series of every one
/// of `labels` in it.
fn register_with_series<L, M, C, const N: usize>(
    registry: &mut Registry,
    labels: &[L],
    families: [(&str, &str, &Family<L, M, C>); N],
) where
    L: Clone + Hash + Eq,
    C: MetricConstructor<M>,
    Family<L, M, C>: Metric + Clone,
{
    for (name, help, family) in families {
        registry.register(name, help, family.clone());
        for l in labels {
            let _ = family.get_or_create(l);
        }
    }
}

/// All metering metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    server: ServerLabels,
    /// Items the control plane accepted (`usage_records_processed_total`).
    pub processed: Family<QueueLabels, Counter>,
    /// Items moved to a DLQ (`metering_dead_lettered_total`).
    pub dead_lettered: Family<QueueLabels, Counter>,
    /// HTTP requests sent to the control plane (`control_plane_requests_total`).
    pub cp_requests: Family<QueueLabels, Counter>,
    /// Retries within attempt cycles (`control_plane_retries_total`).
    pub retries: Family<QueueLabels, Counter>,
    /// Attempt cycles that ended with the control plane unavailable (`failed_deliveries_total`).
    pub failed_deliveries: Family<QueueLabels, Counter>,
    /// Seconds from taking an item to its acknowledgement (`delivery_latency_seconds`).
    pub latency: HistogramFamily,
    /// Queue length (`redis_queue_depth`).
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// This instance's processing-list length (`metering_processing_depth`).
    pub processing_depth: Family<QueueLabels, Gauge>,
    /// DLQ length (`metering_dlq_size`).
    pub dlq_size: Family<QueueLabels, Gauge>,
    /// 1 when the last Redis command succeeded (`redis_connection_status`).
    pub redis_status: Family<ServerLabels, Gauge>,
    /// 0 closed, 1 half-open, 2 open (`circuit_breaker_state`).
    pub breaker_state: Family<ServerLabels, Gauge>,
    /// Items of dead instances returned to their queue (`metering_reaped_total`).
    pub reaped: Family<ServerLabels, Counter>,
    /// Duration of each control-plane HTTP try (`control_plane_request_seconds`).
    pub cp_request_seconds: RequestHistogram,
}

impl Metrics {
    /// Register everything for `server_id` / `region`.
    pub fn new(server_id: &str, region: &str) -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            server: ServerLabels {
                server_id: server_id.into(),
                region: region.into(),
            },
            processed: Family::default(),
            dead_lettered: Family::default(),
            cp_requests: Family::default(),
            retries: Family::default(),
            failed_deliveries: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            processing_depth: Family::default(),
            dlq_size: Family::default(),
            redis_status: Family::default(),
            breaker_state: Family::default(),
            reaped: Family::default(),
            cp_request_seconds: Family::new_with_constructor(latency_histogram),
        };
        // Every per-queue and per-agent series is created up front so that dashboards see
        // zeros, not gaps; the request durations have a series per endpoint and outcome seen.
        let queues = QueueKind::ALL.map(|q| m.queue(q));
        let server = std::slice::from_ref(&m.server);
        let r = &mut m.registry;
        register_with_series(
            r,
            &[],
            [(
                "control_plane_request_seconds",
                "Duration of control-plane HTTP requests, by endpoint and outcome",
                &m.cp_request_seconds,
            )],
        );
        register_with_series(
            r,
            &queues,
            [
                (
                    "usage_records_processed",
                    "Items accepted by the control plane",
                    &m.processed,
                ),
                (
                    "metering_dead_lettered",
                    "Items moved to a dead-letter queue",
                    &m.dead_lettered,
                ),
                (
                    "control_plane_requests",
                    "Requests sent to the control plane",
                    &m.cp_requests,
                ),
                (
                    "control_plane_retries",
                    "Retries after retryable failures",
                    &m.retries,
                ),
                (
                    "failed_deliveries",
                    "Attempt cycles that ended unavailable",
                    &m.failed_deliveries,
                ),
            ],
        );
        register_with_series(
            r,
            &queues,
            [(
                "delivery_latency_seconds",
                "Time from take to acknowledgement",
                &m.latency,
            )],
        );
        register_with_series(
            r,
            &queues,
            [
                (
                    "redis_queue_depth",
                    "Items waiting in the queue",
                    &m.queue_depth,
                ),
                (
                    "metering_processing_depth",
                    "Items held by this instance",
                    &m.processing_depth,
                ),
                (
                    "metering_dlq_size",
                    "Items in the dead-letter queue",
                    &m.dlq_size,
                ),
            ],
        );
        register_with_series(
            r,
            server,
            [
                (
                    "redis_connection_status",
                    "1 if Redis answered the last command",
                    &m.redis_status,
                ),
                (
                    "circuit_breaker_state",
                    "0 closed, 1 half-open, 2 open",
                    &m.breaker_state,
                ),
            ],
        );
        register_with_series(
            r,
            server,
            [(
                "metering_reaped",
                "Items of dead instances returned to their queue",
                &m.reaped,
            )],
        );
        m
    }

    /// Labels for `q`.
    pub fn queue(&self, q: QueueKind) -> QueueLabels {
        QueueLabels {
            server_id: self.server.server_id.clone(),
            region: self.server.region.clone(),
            queue_name: q.name().into(),
        }
    }

    /// Per-agent labels.
    pub fn server(&self) -> &ServerLabels {
        &self.server
    }

    /// Sum of a per-queue counter over all queues.
    pub fn total(&self, family: &Family<QueueLabels, Counter>) -> u64 {
        QueueKind::ALL
            .into_iter()
            .map(|q| family.get_or_create(&self.queue(q)).get())
            .sum()
    }

    /// Sum of a per-queue gauge over all queues.
    pub fn total_gauge(&self, family: &Family<QueueLabels, Gauge>) -> i64 {
        QueueKind::ALL
            .into_iter()
            .map(|q| family.get_or_create(&self.queue(q)).get())
            .sum()
    }

    /// Render in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
