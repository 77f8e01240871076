//! `tether can stats FILE`: one streaming pass over a log, counting as it goes.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use can_io::formats::Entry;
use can_io::{CanFrame, CanRecord};

use super::{InputFormat, bad_line_warning, open_log};

/// Arguments of `tether can stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The log file.
    pub file: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    pub from: InputFormat,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `stats` counts. Pure: feed it records, read the totals.
#[derive(Debug, Clone)]
pub struct LogStats {
    /// Frames of any kind.
    pub frames: u64,
    /// Classic data frames.
    pub data: u64,
    /// Remote frames.
    pub remote: u64,
    /// CAN FD frames.
    pub fd: u64,
    /// Error frames.
    pub error: u64,
    /// Earliest and latest timestamp seen (logs are not always in order).
    pub span_ns: Option<(u64, u64)>,
    /// Frames per 11-bit id, indexed by id.
    standard: Vec<u64>,
    /// Frames per 29-bit id.
    extended: HashMap<u32, u64>,
    /// Distinct channel names.
    pub channels: BTreeSet<String>,
    last_channel: Option<can_io::Channel>,
    /// Bad lines skipped.
    pub skipped_lines: u64,
    /// Well-formed lines without a frame that were passed over (ASC events).
    pub ignored_lines: u64,
    /// `DROPCOUNT:` notices.
    pub drop_notices: u64,
    /// Frames the capture says it dropped.
    pub dropped_frames: u64,
}

impl Default for LogStats {
    fn default() -> Self {
        Self {
            frames: 0,
            data: 0,
            remote: 0,
            fd: 0,
            error: 0,
            span_ns: None,
            standard: vec![0; 0x800],
            extended: HashMap::new(),
            channels: BTreeSet::new(),
            last_channel: None,
            skipped_lines: 0,
            ignored_lines: 0,
            drop_notices: 0,
            dropped_frames: 0,
        }
    }
}

impl LogStats {
    /// Count one record.
    pub fn add(&mut self, record: &CanRecord) {
        self.frames += 1;
        match &record.frame {
            CanFrame::Data(_) => self.data += 1,
            CanFrame::Remote(_) => self.remote += 1,
            CanFrame::Fd(_) => self.fd += 1,
            CanFrame::Error(_) => self.error += 1,
        }
        if let Some(id) = record.frame.id() {
            if id.is_extended() {
                *self.extended.entry(id.raw()).or_insert(0) += 1;
            } else if let Some(n) = self.standard.get_mut(id.raw() as usize) {
                *n += 1;
            }
        }
        self.span_ns = Some(match self.span_ns {
            None => (record.ts_ns, record.ts_ns),
            Some((lo, hi)) => (lo.min(record.ts_ns), hi.max(record.ts_ns)),
        });
        // Readers share one allocation per channel, so a pointer check skips the set lookup.
        if !self
            .last_channel
            .as_ref()
            .is_some_and(|c| std::sync::Arc::ptr_eq(c, &record.channel))
        {
            if !self.channels.contains(&*record.channel) {
                self.channels.insert(record.channel.to_string());
            }
            self.last_channel = Some(record.channel.clone());
        }
    }

    /// Frames per identifier, ordered standard ids first, then extended, each ascending.
    /// Id text as candump writes it (3 or 8 hex digits).
    pub fn per_id(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .standard
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(id, n)| (format!("{id:03X}"), *n))
            .collect();
        let mut ext: Vec<(&u32, &u64)> = self.extended.iter().collect();
        ext.sort();
        out.extend(ext.into_iter().map(|(id, n)| (format!("{id:08X}"), *n)));
        out
    }

    /// Time from the earliest to the latest frame, in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.span_ns.map(|(lo, hi)| hi - lo).unwrap_or(0)
    }

    /// Frames per second over the duration; `None` when the duration is zero.
    pub fn mean_rate(&self) -> Option<f64> {
        let d = self.duration_ns();
        (d > 0).then(|| self.frames as f64 / (d as f64 / 1e9))
    }
}

fn seconds(ns: u64) -> String {
    format!("{}.{:06}", ns / 1_000_000_000, ns % 1_000_000_000 / 1000)
}

/// Run `tether can stats`.
pub fn run(args: &StatsArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut log = open_log(&args.file, args.from)?;
    let mut stats = LogStats::default();
    for item in log.reader.by_ref() {
        match item {
            Ok(line) => match line.entry {
                Entry::Record(r) => stats.add(&r),
                Entry::Drop(d) => {
                    stats.drop_notices += 1;
                    stats.dropped_frames += d.dropped;
                }
            },
            Err(e) => {
                eprintln!("warning: {}", bad_line_warning(&args.file, e)?);
                stats.skipped_lines += 1;
            }
        }
    }
    stats.ignored_lines = log.reader.ignored_lines();
    log.progress.finish_and_clear();
    let per_id = stats.per_id();
    if args.json {
        let value = serde_json::json!({
            "file": args.file.display().to_string(),
            "format": log.format.name(),
            "frames": stats.frames,
            "data": stats.data,
            "remote": stats.remote,
            "fd": stats.fd,
            "error": stats.error,
            "ids": per_id.len(),
            "channels": stats.channels,
            "first_ts_ns": stats.span_ns.map(|s| s.0),
            "last_ts_ns": stats.span_ns.map(|s| s.1),
            "duration_ns": stats.duration_ns(),
            "mean_rate": stats.mean_rate(),
            "skipped_lines": stats.skipped_lines,
            "ignored_lines": stats.ignored_lines,
            "drop_notices": stats.drop_notices,
            "dropped_frames": stats.dropped_frames,
            "per_id": per_id.iter().map(|(id, n)| (id.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
        });
        write_stdout(&format!("{value}\n"))?;
        return nothing_read(args, &stats, log.format.name());
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<15}{v}\n"));
    line("file:", args.file.display().to_string());
    line("format:", log.format.name().to_string());
    line(
        "frames:",
        format!(
            "{} (data {}, remote {}, fd {}, error {})",
            stats.frames, stats.data, stats.remote, stats.fd, stats.error
        ),
    );
    line("ids:", per_id.len().to_string());
    line(
        "channels:",
        format!(
            "{} ({})",
            stats.channels.len(),
            stats
                .channels
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    if let Some((lo, hi)) = stats.span_ns {
        line("first:", seconds(lo));
        line("last:", seconds(hi));
    }
    line("duration:", format!("{} s", seconds(stats.duration_ns())));
    line(
        "mean rate:",
        stats
            .mean_rate()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1} frames/s")),
    );
    line("skipped lines:", stats.skipped_lines.to_string());
    if stats.ignored_lines > 0 {
        line(
            "ignored lines:",
            format!("{} (events without a frame)", stats.ignored_lines),
        );
    }
    line(
        "drops:",
        format!(
            "{} notices, {} frames",
            stats.drop_notices, stats.dropped_frames
        ),
    );
    out.push_str("per-id counts:\n");
    for (id, n) in &per_id {
        out.push_str(&format!("  {id:<10}{n}\n"));
    }
    write_stdout(&out)?;
    nothing_read(args, &stats, log.format.name())
}

/// Writes `text` to stdout; a closed pipe (`| head`) comes back as an error `main` ends quietly
/// on, where `print!` would panic.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// Success, unless every line was skipped: then the file is not a log of this format (or not
/// a log at all), and the summary above says nothing useful.
fn nothing_read(args: &StatsArgs, stats: &LogStats, format: &str) -> anyhow::Result<ExitCode> {
    if stats.skipped_lines > 0 && stats.frames == 0 && stats.drop_notices == 0 {
        eprintln!(
            "error: no line of {} could be read as {format} ({} skipped); pass --from if the format was guessed wrong",
            args.file.display(),
            stats.skipped_lines
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
