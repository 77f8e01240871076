//! `tether agent`: the edge-side daemon. Roles are switched on by sections of its config file:
//! `metering` (usage forwarder) and `dongle` (REMP dongles ↔ the server's group relay, see
//! `docs/agent.md`). New roles add an optional section to [`config::AgentConfig`] and a task in
//! [`run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

pub mod config;
pub mod dlq;
pub mod dongle;
pub mod metering;

/// `tether agent` arguments.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (YAML).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Role tools (run without one to start the daemon).
    #[command(subcommand)]
    pub tool: Option<AgentTool>,
}

/// Role tools.
#[derive(Debug, clap::Subcommand)]
pub enum AgentTool {
    /// Metering role tools.
    #[command(subcommand)]
    Metering(MeteringTool),
}

/// `tether agent metering …`.
#[derive(Debug, clap::Subcommand)]
pub enum MeteringTool {
    /// Dead-letter queues: list, retry, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

/// Load the config named by `--config` with the process environment.
pub fn load_config(args: &AgentArgs) -> anyhow::Result<config::AgentConfig> {
    let Some(path) = &args.config else {
        bail!("--config FILE is required")
    };
    let vars: Vec<(String, String)> = std::env::vars().collect();
    config::load(path, &|n| std::env::var(n).ok(), &vars)
}

/// Run `tether agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args)?;
    if args.check_config {
        println!("configuration OK");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match args.tool {
        Some(AgentTool::Metering(MeteringTool::Dlq(cmd))) => {
            let m = cfg.metering.context("the config has no metering section")?;
            rt.block_on(dlq::run(&m, cmd))
        }
        None => {
            let dongle = match &cfg.dongle {
                Some(_) => Some(dongle::config::DongleRole::from_agent(&cfg)?),
                None => None,
            };
            rt.block_on(async move {
                match (cfg.metering, dongle) {
                    (Some(m), Some(d)) => {
                        // A role that fails (at start-up, say) ends the process instead of
                        // leaving the other one running unnoticed.
                        let (a, b) = tokio::try_join!(metering::run(m), dongle::run(d))?;
                        Ok(if a == ExitCode::SUCCESS { b } else { a })
                    }
                    (Some(m), None) => metering::run(m).await,
                    (None, Some(d)) => dongle::run(d).await,
                    (None, None) => bail!("no role configured"),
                }
            })
        }
    }
}
