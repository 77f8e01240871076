//! `tether.parse_log` and `tether.format_log`: candump, Vector ASC and JSON-lines logs.

use can_io::formats::candump::{self, LineStyle};
use can_io::formats::{Entry, LogFormat, LogReader, asc, jsonl};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{self, LogFormatError};
use crate::frame::Frame;

pub(crate) fn format_by_name(name: &str) -> PyResult<LogFormat> {
    match name {
        "candump" => Ok(LogFormat::Candump),
        "asc" => Ok(LogFormat::Asc),
        "jsonl" => Ok(LogFormat::Jsonl),
        other => Err(PyValueError::new_err(format!(
            "format must be \"candump\", \"asc\" or \"jsonl\", not {other:?}"
        ))),
    }
}

/// A line a reader refused, as `bad_lines` lists it: its number (0 when unknown) and reason.
pub(crate) fn bad_line(err: &can_io::Error) -> (u64, String) {
    let number = match err {
        can_io::Error::AtLine { line, .. } => *line,
        _ => 0,
    };
    (number, err.to_string())
}

/// What `parse_log` read: the frames in file order, and everything else the log said, so
/// nothing is dropped silently.
#[pyclass(module = "tether", frozen, get_all)]
pub(crate) struct ParsedLog {
    /// The format read: `"candump"`, `"asc"` or `"jsonl"`.
    format: &'static str,
    /// The frames, in file order.
    frames: Vec<Py<Frame>>,
    /// Frames the capture itself reported lost (candump `DROPCOUNT:` lines), summed.
    dropped: u64,
    /// Well-formed lines that carry no frame and were skipped on purpose (ASC statistics,
    /// status and J1939 transport events, comments).
    ignored_lines: u64,
    /// With `strict=False`: `(line number, reason)` of every line that did not parse.
    bad_lines: Vec<(u64, String)>,
}

#[pymethods]
impl ParsedLog {
    fn __len__(&self) -> usize {
        self.frames.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "ParsedLog(format={:?}, frames={}, dropped={}, ignored_lines={}, bad_lines={})",
            self.format,
            self.frames.len(),
            self.dropped,
            self.ignored_lines,
            self.bad_lines.len()
        )
    }
}

/// Parses a log (`bytes` or `str`) into a `ParsedLog`. `format` is `"candump"`, `"asc"` or
/// `"jsonl"`, or `None` to tell it from the first non-blank line. With `strict=True` (the
/// default) the first bad line raises `LogFormatError`; with `strict=False` bad lines are
/// skipped and listed in `bad_lines`.
#[pyfunction]
#[pyo3(signature = (data, format = None, *, strict = true))]
pub(crate) fn parse_log(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    format: Option<&str>,
    strict: bool,
) -> PyResult<ParsedLog> {
    let (bytes, _) = crate::bytes_or_str(data, "data")?;
    let bytes: &[u8] = &bytes;
    let format = match format {
        Some(name) => format_by_name(name)?,
        None => LogFormat::detect(bytes).ok_or_else(|| {
            LogFormatError::new_err(
                "cannot tell the log format from its first line: pass format=\"candump\", \"asc\" or \"jsonl\"",
            )
        })?,
    };
    let mut reader = LogReader::new(format, bytes);
    let mut out = ParsedLog {
        format: format.name(),
        frames: Vec::new(),
        dropped: 0,
        ignored_lines: 0,
        bad_lines: Vec::new(),
    };
    for line in reader.by_ref() {
        match line {
            Ok(line) => match line.entry {
                Entry::Record(record) => out.frames.push(Py::new(py, Frame { record })?),
                Entry::Drop(notice) => out.dropped = out.dropped.saturating_add(notice.dropped),
            },
            Err(err) if strict => return Err(error::can(err)),
            Err(err) => out.bad_lines.push(bad_line(&err)),
        }
    }
    out.ignored_lines = reader.ignored_lines();
    Ok(out)
}

/// Writes frames as a log in `format` (`"candump"` — `candump -L` lines —, `"asc"` or
/// `"jsonl"`) and returns its bytes.
#[pyfunction]
#[pyo3(signature = (frames, format = "candump"))]
pub(crate) fn format_log<'py>(
    py: Python<'py>,
    frames: Vec<PyRef<'py, Frame>>,
    format: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let format = format_by_name(format)?;
    let mut out = Vec::with_capacity(frames.len() * 40);
    let style = LineStyle::default();
    let mut asc_writer = asc::Writer::new();
    for frame in &frames {
        match format {
            LogFormat::Candump => candump::write_record(&mut out, &frame.record, &style),
            LogFormat::Asc => asc_writer.write_record(&mut out, &frame.record),
            LogFormat::Jsonl => jsonl::write_record(&mut out, &frame.record),
        }
    }
    if format == LogFormat::Asc {
        asc_writer.finish(&mut out);
    }
    Ok(PyBytes::new(py, &out))
}
