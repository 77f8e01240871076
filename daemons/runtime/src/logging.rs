//! Structured JSON logs on stderr, the same for every daemon.

/// Installs the global `tracing` subscriber: JSON lines on stderr, filtered by `directive` (an
/// `EnvFilter` directive such as `info` or `tether_server=debug`; `info` when it does not
/// parse). A second call is a no-op, so a library or a test that already installed one keeps it.
///
/// The server passes `RUST_LOG` (default `info`), the agent its roles' `log_level`.
pub fn init_json_logs(directive: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(directive)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
