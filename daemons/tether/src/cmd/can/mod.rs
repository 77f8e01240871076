//! `tether can …`: command-line tools over CAN logs and buses.
//!
//! Each subcommand has its own argument struct and `run` in its own file; add a variant here
//! and a match arm in [`run`] for a new one.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use can_io::formats::{LogFormat, LogReader};
use indicatif::{ProgressBar, ProgressBarIter, ProgressStyle};

pub mod convert;
pub mod dongle;
pub mod ecu;
pub mod record;
pub mod replay;
pub mod stats;
pub mod uds;

/// CAN subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CanCommand {
    /// Summarise a log: frames, ids, duration, mean rate, per-id counts, skipped lines.
    #[command(
        after_help = "Examples:\n  tether can stats capture.log\n  tether can stats capture.asc --from asc --json"
    )]
    Stats(stats::StatsArgs),
    /// Convert a log between candump, ASC and JSON lines, streaming.
    #[command(
        after_help = "Examples:\n  tether can convert capture.log --to asc -o capture.asc\n  tether can convert capture.asc --from asc --to jsonl | head"
    )]
    Convert(convert::ConvertArgs),
    /// Send a log to a bus as a simulated dongle (REMP), cannelloni peer, socketcand client or
    /// python-can multicast node.
    #[command(
        after_help = "Examples:\n  tether can replay capture.log --bus udp://127.0.0.1:29536 --speed max\n  tether can replay capture.log --bus udp://127.0.0.1:20000 --protocol cannelloni --loop\n  tether can replay capture.log --bus multicast://239.74.163.2:43113"
    )]
    Replay(replay::ReplayArgs),
    /// Record a bus (REMP/cannelloni UDP, socketcand, multicast) to a candump log.
    #[command(
        after_help = "Examples:\n  tether can record --bus udp://0.0.0.0:29536 -o out.log --count 1000\n  tether can record --bus socketcand://127.0.0.1:29536/vcan0 -o - --duration 10"
    )]
    Record(record::RecordArgs),
    /// A simulated REMP dongle for `tether agent`: replays a capture, records what it receives.
    #[command(
        after_help = "Examples:\n  tether can dongle --serial DONGLE-1 --agent 127.0.0.1:29536 --replay capture.log --loop\n  TETHER_DONGLE_KEY=HEX tether can dongle --serial DONGLE-1 --agent 127.0.0.1:29536 --record -"
    )]
    Dongle(dongle::DongleArgs),
    /// Simulated ECUs answering UDS over ISO-TP on a bus, from a YAML profile.
    Ecu(ecu::EcuArgs),
    /// Run one diagnostic command (ReadDTC, ReadDataByID, …) as UDS on a bus; JSON lines out.
    Uds(uds::UdsArgs),
    /// Run a socketcand server whose clients share one bus (for tests and demos).
    #[command(name = "serve-socketcand", hide = true)]
    ServeSocketcand(record::ServeSocketcandArgs),
}

/// Run a `tether can` subcommand.
pub fn run(cmd: CanCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CanCommand::Stats(args) => stats::run(&args),
        CanCommand::Convert(args) => convert::run(&args),
        CanCommand::Replay(args) => replay::run(&args),
        CanCommand::Record(args) => record::run_record(&args),
        CanCommand::Dongle(args) => dongle::run(&args),
        CanCommand::Ecu(args) => ecu::run(&args),
        CanCommand::Uds(args) => uds::run(&args),
        CanCommand::ServeSocketcand(args) => record::run_serve_socketcand(&args),
    }
}

/// The format of an input log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Guess from the first line.
    Auto,
    /// can-utils `candump -L` log.
    Candump,
    /// Vector ASC.
    Asc,
    /// JSON lines as written by `convert --to jsonl`.
    Jsonl,
}

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 32 * 1024 * 1024;
/// Read buffer: large enough that the parser, not the system calls, sets the pace.
const READ_BUFFER: usize = 256 * 1024;

/// An opened input log: its reader, the format in use and the progress bar (hidden unless
/// stderr is a terminal and the file is large).
pub(crate) struct OpenLog {
    pub(crate) reader: LogReader<BufReader<ProgressBarIter<File>>>,
    pub(crate) format: LogFormat,
    pub(crate) progress: ProgressBar,
}

/// Open `path` for streaming, detecting the format when asked to.
pub(crate) fn open_log(path: &Path, from: InputFormat) -> anyhow::Result<OpenLog> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if std::io::stderr().is_terminal() && size >= PROGRESS_MIN_BYTES {
        let bar = ProgressBar::new(size);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut input = BufReader::with_capacity(READ_BUFFER, progress.wrap_read(file));
    let format = match from {
        InputFormat::Candump => LogFormat::Candump,
        InputFormat::Asc => LogFormat::Asc,
        InputFormat::Jsonl => LogFormat::Jsonl,
        InputFormat::Auto => {
            let head = input
                .fill_buf()
                .with_context(|| format!("reading {}", path.display()))?;
            match LogFormat::detect(head) {
                Some(f) => f,
                None if head.is_empty() => LogFormat::Candump,
                None => bail!("cannot tell the format of {}; pass --from", path.display()),
            }
        }
    };
    Ok(OpenLog {
        reader: LogReader::new(format, input),
        format,
        progress,
    })
}

/// `FILE:LINE: reason` for a bad line; other errors (I/O) come back as `Err`.
pub(crate) fn bad_line_warning(path: &Path, err: can_io::Error) -> anyhow::Result<String> {
    match err {
        can_io::Error::AtLine { line, source } => {
            Ok(format!("{}:{line}: {source}", path.display()))
        }
        other => Err(anyhow::Error::new(other).context(format!("reading {}", path.display()))),
    }
}
