//! # tether (the binary)
//!
//! The `tether` binary: `tether server`, `tether agent` and the command-line tools. This crate
//! is wiring only — parsing flags and config, owning sockets, clocks and tasks — around the
//! library crates (`can-io`, `relay-core`, `sse-core`, `metering-core`), which hold the logic.

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
        Command::Demo(args) => cmd::demo::run(args),
        Command::Server(args) => cmd::server::run(args),
        Command::Sse(cmd) => cmd::sse::run(cmd),
    }
}
