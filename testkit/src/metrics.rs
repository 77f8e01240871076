//! Reading Prometheus / OpenMetrics text.

/// Sum of every sample of a metric family whose labels contain all of `labels`
/// (`key="value"` pieces).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name && labels.iter().all(|want| key.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The value of an unlabelled sample line `name value`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of the first sample line starting with `prefix` (name and labels, as written).
pub fn metric_with_prefix(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_name_labels_and_prefix() {
        let text =
            "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\ny 7.5\n";
        assert_eq!(metric_sum(text, "x_total", &["a=\"1\""]), 7.0);
        assert_eq!(metric_sum(text, "x_total", &["b=\"3\""]), 4.0);
        assert_eq!(metric(text, "y"), Some(7.5));
        assert_eq!(metric(text, "x_total"), None);
        assert_eq!(
            metric_with_prefix(text, "x_total{a=\"1\",b=\"3\"}"),
            Some(4.0)
        );
    }
}
