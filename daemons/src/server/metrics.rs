//! Prometheus metrics of the HTTP server, in the OpenMetrics text format.
//!
//! Only families this server actually updates are registered: relay and SSE families are added
//! by the code that produces those numbers, never pre-registered at zero.

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
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}

impl ServerMetrics {
    /// Creates and registers all families under the `tether_server` prefix.
    pub fn new() -> ServerMetrics {
        let mut registry = Registry::with_prefix("tether_server");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route template",
            http_request_duration.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "TCP connections currently open",
            connections_open.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted since start",
            connections_accepted.clone(),
        );
        let readiness_failures = Counter::default();
        registry.register(
            "readiness_failures",
            "/readyz answers of 503 (database or Redis unreachable)",
            readiness_failures.clone(),
        );
        ServerMetrics {
            registry,
            http_requests,
            http_request_duration,
            connections_open,
            connections_accepted,
            readiness_failures,
        }
    }

    /// The registry, for code that adds its own families (data plane, consoles) at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Renders every family in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
