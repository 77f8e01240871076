//! # tether (the binary)
//!
//! The `tether` binary: `tether server`, `tether agent`, `tether demo` and the command-line
//! tools (`can …`, `sse …`), and `tether collector` (the telemetry roles). This crate is wiring only — parsing flags (clap), building the
//! async runtime, registering stop signals and JSON logs (`tether-runtime`) — around the
//! libraries that hold the logic: `tether-server` and `tether-agent` for the daemons, `can-io`
//! and `sse-core` for the tools. `main.rs` only calls [`main`]; tests call [`run`] with a parsed
//! [`Cli`].
//!
//! What it does not do: serve or relay anything itself, or define a configuration schema (the
//! server's and agent's config types are their libraries').

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod cmd;

/// Tether: the data plane between vehicles and the cloud.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The edge daemon: roles (metering, …) switched on in its config file.
    Agent(cmd::agent::AgentArgs),
    /// CAN log and wire tools: stats, convert, replay, record.
    #[command(subcommand)]
    Can(cmd::can::CanCommand),
    /// The telemetry collector, vehicle or remote role (`ROLE`, `DB_PATH`, … from the
    /// environment or `--config`).
    Collector(cmd::collector::CollectorArgs),
    /// The group relay on this machine: a server, two agents and two simulated dongles.
    Demo(cmd::demo::DemoArgs),
    /// The cloud server: REST API, records, health and metrics; `server token …` manages tokens.
    Server(cmd::server::ServerArgs),
    /// Server-Sent Events tools: parse a stream, tail a URL.
    #[command(subcommand)]
    Sse(cmd::sse::SseCommand),
}

/// Parse the command line, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => cmd::agent::run(args),
        Command::Can(cmd) => cmd::can::run(cmd),
        Command::Collector(args) => cmd::collector::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Server(args) => cmd::server::run(args),
        Command::Sse(cmd) => cmd::sse::run(cmd),
    }
}
