//! `tether agent`: flag parsing, the runtime and the role tools; the roles themselves are
//! [`tether_agent`]'s. Roles are switched on by sections of the config file: `metering` (usage
//! forwarder) and `dongle` (REMP dongles ↔ the server's group relay, see `docs/agent.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use tether_agent::config::{self, MeteringConfig};
use tether_agent::dlq::{self, DlqAction};
use tether_runtime::signals::StopSignals;

/// `tether agent` arguments.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (YAML). Required (it is the only source of the agent's settings).
    #[arg(long, global = true, value_name = "FILE")]
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
    #[command(
        subcommand,
        after_help = "Examples:\n  tether agent --config agent.yaml metering dlq list\n  tether agent --config agent.yaml metering dlq retry --queue usage_records"
    )]
    Metering(MeteringTool),
}

/// `tether agent metering …`.
#[derive(Debug, clap::Subcommand)]
pub enum MeteringTool {
    /// Dead-letter queues: list, retry, purge.
    #[command(
        subcommand,
        after_help = "Examples:\n  tether agent --config agent.yaml metering dlq list --limit 10\n  tether agent --config agent.yaml metering dlq purge --queue quota_refresh --all"
    )]
    Dlq(DlqCommand),
}

/// DLQ subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Print entries as JSON lines (newest first).
    #[command(
        after_help = "Examples:\n  tether agent --config agent.yaml metering dlq list --queue usage_records --limit 20"
    )]
    List {
        /// Queue (`usage_records`, `session_lifecycle`, `quota_refresh`); all when omitted.
        #[arg(long)]
        queue: Option<String>,
        /// Most entries per queue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move entries back to the head of their queue, atomically.
    #[command(
        after_help = "Examples:\n  tether agent --config agent.yaml metering dlq retry --queue usage_records --all\n  tether agent --config agent.yaml metering dlq retry --id ENTRY_ID"
    )]
    Retry(DlqEntries),
    /// Delete entries.
    #[command(
        after_help = "Examples:\n  tether agent --config agent.yaml metering dlq purge --queue quota_refresh --all\n  tether agent --config agent.yaml metering dlq purge --id ENTRY_ID"
    )]
    Purge(DlqEntries),
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
        println!("layout: {}", cfg.layout.describe());
        if let Some(m) = &cfg.metering {
            println!(
                "metering: server {} ({}), control plane {}, heartbeat every {} s, health port {}, metrics port {}",
                m.server.id,
                m.server.region,
                m.control_plane.base_url,
                m.monitoring.heartbeat_interval,
                m.monitoring.health_check_port,
                m.monitoring.metrics_port
            );
            match &m.monitoring.log_dir {
                Some(dir) => println!(
                    "logs: {} (daily files, kept {} days)",
                    dir.display(),
                    m.monitoring.log_retention_days
                ),
                None => println!(
                    "logs: stderr (log_retention_days applies only when monitoring.log_dir is set)"
                ),
            }
        }
        if cfg.dongle.is_some() {
            println!("dongle: on");
        }
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
            rt.block_on(run_dlq(&m, cmd))
        }
        None => rt.block_on(async move {
            // First of all, so a stop request during start-up is a graceful stop, not a kill
            // by the default action (a role can start and stop within milliseconds).
            let stop = StopSignals::register();
            match cfg.metering.as_ref().and_then(|m| {
                m.monitoring
                    .log_dir
                    .clone()
                    .map(|dir| (dir, m.monitoring.log_retention_days))
            }) {
                Some((dir, days)) => tether_runtime::logging::init_json_logs_in_dir(
                    cfg.log_level(),
                    &tether_runtime::logging::LogFiles {
                        dir: dir.clone(),
                        prefix: "tether-agent".into(),
                        retention_days: days as usize,
                    },
                )
                .with_context(|| format!("log directory {}", dir.display()))?,
                None => tether_runtime::logging::init_json_logs(cfg.log_level()),
            }
            tether_agent::run(cfg, stop.wait()).await?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// The entries `retry` and `purge` act on.
#[derive(Debug, clap::Args)]
pub struct DlqEntries {
    /// Queue; all when omitted.
    #[arg(long)]
    queue: Option<String>,
    /// One entry id.
    #[arg(long, conflicts_with = "all")]
    id: Option<String>,
    /// Every entry.
    #[arg(long)]
    all: bool,
}

/// Runs a DLQ command, printing JSON lines.
async fn run_dlq(cfg: &MeteringConfig, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { queue, limit } => {
            for e in dlq::list(cfg, queue.as_deref(), limit).await? {
                println!("{}", serde_json::to_string(&e)?);
            }
        }
        DlqCommand::Retry(entries) => {
            let n = apply_dlq(cfg, DlqAction::Retry, entries).await?;
            println!("{{\"retried\": {n}}}");
        }
        DlqCommand::Purge(entries) => {
            let n = apply_dlq(cfg, DlqAction::Purge, entries).await?;
            println!("{{\"purged\": {n}}}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Retries or purges `entries`; refuses a command that names none.
async fn apply_dlq(
    cfg: &MeteringConfig,
    action: DlqAction,
    entries: DlqEntries,
) -> anyhow::Result<u64> {
    if entries.id.is_none() && !entries.all {
        bail!("say which entries: --id ID or --all");
    }
    dlq::apply(cfg, action, entries.queue.as_deref(), entries.id.as_deref()).await
}
