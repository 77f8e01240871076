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

/// Checks a log filter directive (`info`, `tether_server=debug,warn`) the way
/// [`init_json_logs`] reads it; the error says what does not parse.
pub fn check_log_level(directive: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(directive)
        .map(drop)
        .map_err(|err| {
            format!("{directive:?} is not a log filter ({err}); try info, debug or warn")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_checked() {
        for good in ["info", "debug", "tether_server=debug,warn", "trace"] {
            assert_eq!(check_log_level(good), Ok(()), "{good}");
        }
        for bad in ["no[such", "info,x=[", "tether=loud"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }
}
