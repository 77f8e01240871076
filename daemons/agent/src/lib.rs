//! # tether-agent
//!
//! Tether's edge side as a library: the roles of `tether agent`, each a future that runs until
//! a stop future completes, so another Rust program can run them next to its own work.
//!
//! * [`dongle`] — REMP dongles on a UDP port ↔ the server's `/ws/data` group relay, with a
//!   durable outbox per stream (`docs/agent.md`): [`dongle::run`] with a
//!   [`dongle::config::DongleRole`].
//! * [`metering`] — usage records, session events and quota refreshes from Redis queues to a
//!   control plane (`docs/protocols/metering.md`): [`metering::run`] with a
//!   [`config::MeteringConfig`].
//! * telemetry — the vehicle collector (`tether_collector::vehicle`, `docs/protocols/telemetry.md`):
//!   a `telemetry:` section with the keys of `tether collector`'s file; it uplinks to the
//!   server's `/ws/telemetry/upload` with the agent's token.
//! * [`diagnostics`] — vehicle commands from the server's `/ws/data` diagnostics channel run
//!   as UDS over ISO-TP on CAN buses, answers streamed back: [`diagnostics::run`] with a
//!   [`diagnostics::config::DiagnosticsRole`]. Its `dongle:` buses run on dongles the dongle
//!   role serves ([`dongle::tap`]): [`run`] hands both roles the same taps.
//! * [`dlq`] — the metering role's dead-letter queues as a tool (list, retry, purge).
//! * [`servers`] — `server_url` as one URL or a list, and the fail-over between them that the
//!   dongle, diagnostics and telemetry roles use when a connection is lost.
//! * [`config`] — the agent file: one optional section per role, `${VAR}` and `TETHER_…`
//!   overrides by `tether-runtime`'s rules, validated before anything starts.
//!
//! [`run`] runs every role the configuration switches on, as `tether agent` does. A new role is
//! a module here with a `run(config, stop)` future, an optional section in
//! [`config::AgentConfig`] (validated in [`config::parse`]) and a branch in [`run`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let yaml = "server_url: http://127.0.0.1:8080\ntoken: ${AGENT_TOKEN}\n\
//!             data_dir: ${STATE}\ndongle:\n  listen: 127.0.0.1:0\n";
//! let state = dir.path().display().to_string();
//! let env = |name: &str| match name {
//!     "AGENT_TOKEN" => Some("ta_example".to_owned()),
//!     "STATE" => Some(state.clone()),
//!     _ => None,
//! };
//! let config = tether_agent::config::parse(yaml, &env, &[])?;
//! // Runs until the stop future completes (here at once), then flushes and returns.
//! tether_agent::run(config, async {}).await?;
//! # Ok(())
//! # }
//! ```
//!
//! What it does not do: it installs no signal handler and no log subscriber (the `tether`
//! binary registers SIGTERM / Ctrl-C and JSON logs with `tether-runtime`), and parses no
//! command line. The wire protocols, relay rules and metering pipeline are the core crates'
//! (`relay-core`, `can-io`, `metering-core`); the roles own the sockets, files and tasks.
//! Errors are `anyhow` errors with context (start-up failures); once running, a role retries
//! on its own and only stops when asked.

use std::future::Future;

use anyhow::bail;
use futures::FutureExt;

pub mod config;
pub mod diagnostics;
pub mod dlq;
pub mod dongle;
pub mod metering;
pub mod servers;

/// Runs every role `config` switches on until `stop` completes, then stops them all (each
/// flushes what it holds) and returns. A role that fails — at start-up, say — ends the others
/// with its error instead of leaving them running unnoticed.
pub async fn run(
    config: config::AgentConfig,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let dongle = config.dongle_role()?;
    let telemetry = config.telemetry_role()?;
    let diagnostics = config.diagnostics_role()?;
    let stop = stop.shared();
    // The diagnostics role's `dongle:` buses, tapped from the dongle role (checked at parse:
    // a `dongle:` section is there).
    let taps = diagnostics
        .as_ref()
        .map(|d| dongle::tap::DongleTaps::new(d.shared_dongles()))
        .unwrap_or_default();
    let mut roles: Vec<futures::future::LocalBoxFuture<'_, anyhow::Result<()>>> = Vec::new();
    if let Some(m) = config.metering {
        roles.push(metering::run(m, stop.clone()).boxed_local());
    }
    if let Some(d) = dongle {
        roles.push(dongle::run_with_taps(d, taps.clone(), stop.clone()).boxed_local());
    }
    if let Some(t) = telemetry {
        roles.push(tether_collector::vehicle::run(t, stop.clone()).boxed_local());
    }
    if let Some(d) = diagnostics {
        let counters = std::sync::Arc::new(diagnostics::DiagCounters::default());
        roles.push(
            diagnostics::run_with_taps(d, taps.clone(), counters, stop.clone()).boxed_local(),
        );
    }
    if roles.is_empty() {
        bail!("no role configured");
    }
    futures::future::try_join_all(roles).await?;
    Ok(())
}
