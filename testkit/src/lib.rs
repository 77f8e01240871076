//! Tether's test kit: what every integration-test harness of the workspace needs, written once.
//!
//! - [`process`]: start, signal (`TERM`, `KILL`) and reap child processes by PID;
//! - [`ports`]: free TCP and UDP ports on loopback;
//! - [`poll`]: `eventually`-style polling with a deadline that names what was awaited;
//! - [`rest`]: a JSON client of the REST API ([`rest::Api`]) and the set-up calls every test
//!   makes (agents, dongles, groups, vehicles, commands);
//! - [`sse`]: an event-stream client parsing with sse-core's WHATWG parser, read in the
//!   foreground ([`sse::Events`]) or in the background ([`sse::SseReader`]);
//! - [`metrics`]: reading Prometheus / OpenMetrics text;
//! - [`redis`]: `REDIS_URL`, and key namespaces deleted when dropped;
//! - [`postgres`]: a database of a test's own, dropped when dropped;
//! - [`dir`]: a scratch directory whose process logs are printed when a test fails.
//!
//! It is `publish = false` and only ever a dev-dependency. It knows nothing of the crates under
//! test (no dependency on `tether-server` or the `tether` binary), so every crate can use it.

pub mod dir;
pub mod metrics;
pub mod poll;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod rest;
pub mod sse;

use std::time::Duration;

pub use dir::Workspace;
pub use poll::{eventually, until, wait_for, wait_until};
pub use ports::{free_tcp_port, free_udp_port};
pub use rest::{Api, code, text};

/// Result type of the tests.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Generous limit for anything the system does on its own (agents reconnecting, backlogs
/// draining) on a loaded 2-core machine. Only a ceiling for polling, never an assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The real capture shipped with the project (`data/captures/nissan-leaf-isotp.log`).
pub fn capture_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/captures/nissan-leaf-isotp.log")
}
