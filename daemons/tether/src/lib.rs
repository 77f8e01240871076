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
#[command(
    name = "tether",
    version,
    about,
    after_help = "Examples:\n  tether demo                                   # server, agents and dongles on this machine\n  tether server --data-dir ./tether-data        # run the server\n  tether server token create --user alice       # print an API token\n  tether agent --config agent.yaml              # run the edge daemon\n  tether can stats capture.log                  # summarise a CAN log\n  tether sse tail URL --header 'Authorization: Bearer TOKEN'"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The edge daemon: roles (metering, …) switched on in its config file.
    #[command(
        override_usage = "tether agent --config <FILE> [--check-config] [COMMAND]",
        after_help = "Examples:\n  tether agent --config agent.yaml\n  tether agent --config agent.yaml --check-config\n  tether agent --config agent.yaml metering dlq list --queue usage_records"
    )]
    Agent(cmd::agent::AgentArgs),
    /// CAN log and wire tools: stats, convert, replay, record.
    #[command(
        subcommand,
        after_help = "Examples:\n  tether can stats capture.log\n  tether can convert capture.log --to asc -o capture.asc\n  tether can replay capture.log --bus udp://127.0.0.1:29536\n  tether can record --bus udp://0.0.0.0:29536 -o out.log"
    )]
    Can(cmd::can::CanCommand),
    /// The telemetry collector, vehicle or remote role (`ROLE`, `DB_PATH`, … from the
    /// environment or `--config`).
    #[command(
        after_help = "Examples:\n  ROLE=remote DB_PATH=remote.db tether collector\n  tether collector --config vehicle.env"
    )]
    Collector(cmd::collector::CollectorArgs),
    /// The group relay on this machine: a server, two agents and two simulated dongles.
    #[command(
        after_help = "Examples:\n  tether demo\n  tether demo --listen 127.0.0.1:0 --speed 4\n  tether demo --metering --redis-url redis://127.0.0.1:6379"
    )]
    Demo(cmd::demo::DemoArgs),
    /// The cloud server: REST API, records, health and metrics; `server token …` manages tokens.
    #[command(
        after_help = "Examples:\n  tether server\n  tether server --listen 0.0.0.0:8080 --data-dir /var/lib/tether\n  tether server --config server.yaml --check-config\n  tether server token create --user alice"
    )]
    Server(cmd::server::ServerArgs),
    /// Server-Sent Events tools: parse a stream, tail a URL.
    #[command(
        subcommand,
        after_help = "Examples:\n  curl -sN URL | tether sse parse\n  tether sse tail URL --header 'Authorization: Bearer TOKEN' --max-events 10"
    )]
    Sse(cmd::sse::SseCommand),
}

/// Parse the command line, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`tether can convert … | head`): stop quietly,
        // as a tool killed by SIGPIPE would.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` comes from writing to a pipe whose reader has closed it.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
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
