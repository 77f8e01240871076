//! `tether collector`: the telemetry collector in either role (`ROLE=vehicle|remote`),
//! configured by the environment names of the original collector and an optional YAML file
//! (`tether_collector::config`). The roles are [`tether_collector`]'s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tether_runtime::signals::StopSignals;

/// `tether collector` arguments.
#[derive(Debug, clap::Args)]
pub struct CollectorArgs {
    /// Configuration file (YAML; keys are the environment names in lower case). The
    /// environment (`ROLE`, `DB_PATH`, `REMOTE_ENDPOINT_URL`, …) wins over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log filter (tracing directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Run `tether collector`.
pub fn run(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    let text = args
        .config
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let config = tether_collector::config::load(text.as_deref(), &|n| std::env::var(n).ok())?;
    if args.check_config {
        println!("configuration OK");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = config.runtime().context("starting the async runtime")?;
    rt.block_on(async move {
        let stop = StopSignals::register();
        tether_runtime::logging::init_json_logs(&args.log_level);
        tether_collector::run(config, stop.wait()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
