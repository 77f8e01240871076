//! `tether can convert FILE --to candump|asc|jsonl`: stream a log from one format to another.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use can_io::formats::{Entry, LogFormat, asc, candump, jsonl};

use super::{InputFormat, bad_line_warning, open_log};

/// The format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// can-utils `candump -L` log.
    Candump,
    /// Vector ASC.
    Asc,
    /// One JSON object per frame.
    Jsonl,
}

/// Arguments of `tether can convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The log file to read.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub to: OutputFormat,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    pub from: InputFormat,
    /// Output file (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Stop with exit status 1 at the first bad line instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

/// Flush the staging buffer to the output once it holds this much.
const FLUSH_AT: usize = 256 * 1024;

/// Run `tether can convert`.
pub fn run(args: &ConvertArgs) -> anyhow::Result<ExitCode> {
    let mut log = open_log(&args.file, args.from)?;
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::with_capacity(FLUSH_AT, sink);
    let mut buf: Vec<u8> = Vec::with_capacity(FLUSH_AT * 2);
    let mut asc_writer = asc::Writer::new();
    let (mut frames, mut skipped, mut drop_notices, mut dropped_frames) = (0u64, 0u64, 0u64, 0u64);
    // A candump → candump conversion keeps each line's layout, so it gives back the same bytes.
    let keep_style = log.format == LogFormat::Candump;

    for item in log.reader.by_ref() {
        let line = match item {
            Ok(line) => line,
            Err(e) => {
                let warning = bad_line_warning(&args.file, e)?;
                eprintln!("{warning}");
                if args.strict {
                    sink.write_all(&buf)
                        .and_then(|()| sink.flush())
                        .context("writing output")?;
                    log.progress.finish_and_clear();
                    return Ok(ExitCode::FAILURE);
                }
                skipped += 1;
                continue;
            }
        };
        let style = if keep_style {
            line.style
        } else {
            candump::LineStyle::default()
        };
        match (&line.entry, args.to) {
            (Entry::Record(r), OutputFormat::Candump) => candump::write_record(&mut buf, r, &style),
            (Entry::Record(r), OutputFormat::Asc) => asc_writer.write_record(&mut buf, r),
            (Entry::Record(r), OutputFormat::Jsonl) => jsonl::write_record(&mut buf, r),
            (Entry::Drop(d), OutputFormat::Candump) => candump::write_drop(&mut buf, d),
            (Entry::Drop(d), _) => {
                drop_notices += 1;
                dropped_frames += d.dropped;
            }
        }
        if matches!(line.entry, Entry::Record(_)) {
            frames += 1;
        }
        if buf.len() >= FLUSH_AT {
            sink.write_all(&buf).context("writing output")?;
            buf.clear();
        }
    }
    if args.to == OutputFormat::Asc {
        asc_writer.finish(&mut buf);
    }
    sink.write_all(&buf)
        .and_then(|()| sink.flush())
        .context("writing output")?;
    log.progress.finish_and_clear();

    let to = match args.to {
        OutputFormat::Candump => "candump",
        OutputFormat::Asc => "asc",
        OutputFormat::Jsonl => "jsonl",
    };
    eprintln!(
        "{}: converted {frames} frames from {} to {to}, skipped {skipped} bad lines",
        args.file.display(),
        log.format
    );
    if drop_notices > 0 {
        eprintln!(
            "{}: {drop_notices} DROPCOUNT notices ({dropped_frames} frames lost by the capture) have no place in {to} and were left out",
            args.file.display()
        );
    }
    let ignored = log.reader.ignored_lines();
    if ignored > 0 {
        eprintln!(
            "{}: {ignored} lines without a frame (statistics, status, comments) passed over",
            args.file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
