//! Prometheus metrics: the text every `/metrics` endpoint of the daemons answers with.
//!
//! Each daemon keeps its own [`Registry`] of `prometheus-client` families; this module renders
//! one, and [`register_all!`](crate::register_all) registers a daemon's families in it.

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

/// Registers metric families in a registry, one line each:
/// `register_all!(registry, ["name" => metric, "help"; …])` registers a clone of every
/// `metric` (a handle: the clone shares its values) under `name` with `help`, in order.
#[macro_export]
macro_rules! register_all {
    ($registry:expr, [$($name:literal => $metric:expr, $help:literal;)+]) => {
        $( $registry.register($name, $help, ::std::clone::Clone::clone(&$metric)); )+
    };
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

    #[test]
    fn register_all_registers_shared_handles_in_order() {
        let mut registry = Registry::with_prefix("t");
        let (hits, misses) = (Counter::<u64>::default(), Counter::<u64>::default());
        crate::register_all!(registry, [
            "hits" => hits, "Hits";
            "misses" => misses, "Misses";
        ]);
        hits.inc();
        misses.inc_by(2);
        let text = encode_text(&registry).expect("encodes");
        let hits_at = text.find("t_hits_total 1").expect(&text);
        let misses_at = text.find("t_misses_total 2").expect(&text);
        assert!(hits_at < misses_at, "{text}");
        assert!(text.contains("# HELP t_misses Misses"), "{text}");
    }
}
