//! The dongle role inside another Rust program: the host builds the role's configuration,
//! runs the role as a task next to its own work, and stops it when it stops.
//!
//! ```text
//! TETHER_URL=http://127.0.0.1:8080 AGENT_TOKEN=ta_… \
//!     cargo run -p tether-agent --example embed_agent -- ./embed-agent-state
//! ```
//!
//! Dongles send REMP to UDP 127.0.0.1:20100; Ctrl-C stops the host, which stops the role (it
//! flushes its outboxes) before exiting.
#![allow(clippy::print_stdout)]

use tether_agent::config;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let state_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./embed-agent-state".to_owned());
    tether_runtime::logging::init_json_logs("info");

    // The same file format as `tether agent --config`; here written by the host. `${…}` comes
    // from the lookup (the environment, plus what the host knows).
    let yaml = "server_url: ${TETHER_URL}\ntoken: ${AGENT_TOKEN}\ndata_dir: ${STATE_DIR}\n\
                dongle:\n  listen: 127.0.0.1:20100\n  stats_interval: 10\n";
    let lookup = |name: &str| match name {
        "STATE_DIR" => Some(state_dir.clone()),
        other => std::env::var(other).ok(),
    };
    let role = config::parse(yaml, &lookup, &[])?
        .dongle_role()?
        .ok_or_else(|| anyhow::anyhow!("the configuration has no dongle section"))?;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stopped = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let agent = tokio::spawn(tether_agent::dongle::run(role, stopped));

    // … the host's own work would run here …
    println!("dongle role running; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    agent.await??;
    println!("dongle role stopped");
    Ok(())
}
