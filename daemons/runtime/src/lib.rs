//! # tether-runtime
//!
//! The plumbing both Tether daemons (`tether-server` and `tether-agent`) share, so each rule
//! exists once:
//!
//! * [`config`] — the one `${VAR}` expansion rule set (with the `$${` escape) for YAML files,
//!   `TETHER_<SECTION>__<KEY>` environment overrides, and value helpers (seconds, string-like
//!   fields).
//! * [`logging`] — structured JSON logs on stderr.
//! * [`metrics`] — the OpenMetrics text of a `prometheus-client` registry.
//! * [`signals`] — SIGTERM / Ctrl-C as a stop future.
//! * [`ws`] — the data plane's WebSocket settings.
//!
//! What this crate does not do: no business logic, no sockets of its own, no configuration
//! schema (each daemon owns its types), and no SQLite opening (that is `relay-core`'s).
//!
//! ```
//! use tether_runtime::config::{ConfigError, expand};
//!
//! let env = |name: &str| (name == "PORT").then(|| "8080".to_owned());
//! assert_eq!(expand("127.0.0.1:${PORT}", &env)?, "127.0.0.1:8080");
//! assert_eq!(expand("$${PORT} is literal", &env)?, "${PORT} is literal");
//! assert!(matches!(expand("${UNSET}", &env), Err(ConfigError::Unset { .. })));
//! # Ok::<(), ConfigError>(())
//! ```

pub mod config;
pub mod logging;
pub mod metrics;
pub mod signals;
pub mod ws;
