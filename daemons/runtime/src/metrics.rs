//! Prometheus metrics: the text every `/metrics` endpoint of the daemons answers with.
//!
//! Each daemon keeps its own [`Registry`] of `prometheus-client` families; this module only
//! renders one.

use prometheus_client::registry::Registry;

/// `Content-Type` of a `/metrics` answer (OpenMetrics text).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every family of `registry` in the OpenMetrics text format.
pub fn encode_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn renders_families_and_eof() {
        let mut registry = Registry::with_prefix("t");
        let counter = Counter::<u64>::default();
        registry.register("hits", "Hits", counter.clone());
        counter.inc();
        let text = encode_text(&registry).expect("encodes");
        assert!(text.contains("t_hits_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
