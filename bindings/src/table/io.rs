//! `read_log`, `iter_log` and `write_log`: logs to tables and back. Parsing and writing run
//! without the GIL.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use can_io::formats::candump::{self, LineStyle};
use can_io::formats::{Entry, LogFormat, LogReader, asc, jsonl};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use super::columns::{ChannelCodes, Columns, IdFilter, RowError, TimestampOverflow};
use super::{FrameTable, LogMeta, row_error};
use crate::error::{self, LogFormatError};
use crate::logs::{bad_line, format_by_name};

/// Buffer of the file reader of `iter_log`.
const READ_BUFFER: usize = 1 << 20;

/// What stopped a read.
enum ReadError {
    Log(can_io::Error),
    Timestamp(u64, TimestampOverflow),
}

impl ReadError {
    fn into_py(self) -> PyErr {
        match self {
            ReadError::Log(e) => error::can(e),
            ReadError::Timestamp(line, e) => overflow_error(Some(line), e),
        }
    }
}

/// The error for a timestamp beyond the `int64` column.
pub(crate) fn overflow_error(line: Option<u64>, e: TimestampOverflow) -> PyErr {
    let at = line.map_or_else(String::new, |l| format!("line {l}: "));
    LogFormatError::new_err(format!(
        "{at}timestamp {} ns does not fit the int64 ts_ns column (after 2262-04-11)",
        e.0
    ))
}

/// Reads up to `limit` kept records (all with `None`) from `reader` into `columns`. Returns
/// whether the input ended.
fn read_into<R: BufRead>(
    reader: &mut LogReader<R>,
    limit: Option<usize>,
    filter: &IdFilter,
    strict: bool,
    columns: &mut Columns,
    names: &mut ChannelCodes,
    meta: &mut LogMeta,
) -> Result<bool, ReadError> {
    let ignored_before = reader.ignored_lines();
    let ended = loop {
        if limit.is_some_and(|l| columns.rows() >= l) {
            break false;
        }
        let Some(line) = reader.next() else {
            break true;
        };
        match line {
            Ok(line) => match line.entry {
                Entry::Record(record) => {
                    if filter.keeps_record(&record)
                        && let Err(e) = columns.push(&record, names)
                    {
                        if strict {
                            return Err(ReadError::Timestamp(line.number, e));
                        }
                        let err = overflow_error(Some(line.number), e);
                        meta.bad_lines.push((line.number, err.to_string()));
                    }
                }
                Entry::Drop(notice) => meta.dropped = meta.dropped.saturating_add(notice.dropped),
            },
            // An I/O error ends the reader; it is never a bad line.
            Err(err @ can_io::Error::Io { .. }) => return Err(ReadError::Log(err)),
            Err(err) if strict => return Err(ReadError::Log(err)),
            Err(err) => meta.bad_lines.push(bad_line(&err)),
        }
    };
    meta.ignored_lines += reader.ignored_lines() - ignored_before;
    Ok(ended)
}

fn detect(head: &[u8], format: Option<&str>) -> PyResult<LogFormat> {
    match format {
        Some(name) => format_by_name(name),
        None => LogFormat::detect(head).ok_or_else(|| {
            LogFormatError::new_err(
                "cannot tell the log format from its first line: pass format=\"candump\", \"asc\" or \"jsonl\"",
            )
        }),
    }
}

fn io_error(path: &std::path::Path, action: &str, e: std::io::Error) -> PyErr {
    PyOSError::new_err((
        e.raw_os_error().unwrap_or(0),
        format!("{action} {}: {e}", path.display()),
    ))
}

/// A log given as a path or as its bytes.
enum Source<'a> {
    Bytes(Cow<'a, [u8]>),
    Path(PathBuf),
}

fn source<'a>(arg: &'a Bound<'_, PyAny>) -> PyResult<Source<'a>> {
    if let Ok(b) = arg.cast::<PyBytes>() {
        Ok(Source::Bytes(Cow::Borrowed(b.as_bytes())))
    } else if let Ok(b) = arg.cast::<PyByteArray>() {
        Ok(Source::Bytes(Cow::Owned(b.to_vec())))
    } else if arg.cast::<PyMemoryView>().is_ok() {
        let bytes = arg
            .py()
            .import("builtins")?
            .getattr("bytes")?
            .call1((arg,))?;
        Ok(Source::Bytes(Cow::Owned(
            bytes.cast::<PyBytes>()?.as_bytes().to_vec(),
        )))
    } else if let Ok(path) = arg.extract::<PathBuf>() {
        Ok(Source::Path(path))
    } else {
        Err(PyValueError::new_err(
            "source must be a path (str or os.PathLike) or the log's bytes",
        ))
    }
}

/// Reads a whole log into a `FrameTable`. `source` is a path (`str`, `os.PathLike`) or the
/// log's bytes (`bytes`, `bytearray`, `memoryview`); `format` is `"candump"`, `"asc"` or
/// `"jsonl"`, or `None` to tell it from the first non-blank line. `ids` keeps only frames with
/// those identifiers (filtered while parsing). With `strict=True` (the default) the first bad
/// line raises `LogFormatError`; with `strict=False` bad lines are skipped and listed in
/// `bad_lines`. Parsing runs without the GIL and creates no Python object per frame.
#[pyfunction]
#[pyo3(signature = (source, format = None, *, ids = None, strict = true))]
pub(crate) fn read_log(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    format: Option<&str>,
    ids: Option<Vec<u32>>,
    strict: bool,
) -> PyResult<FrameTable> {
    let src = self::source(source)?;
    let bytes: Cow<'_, [u8]> = match src {
        Source::Bytes(b) => b,
        Source::Path(path) => Cow::Owned(
            py.detach(|| std::fs::read(&path))
                .map_err(|e| io_error(&path, "reading", e))?,
        ),
    };
    let format = detect(&bytes, format)?;
    let filter = IdFilter::new(ids);
    let data: &[u8] = &bytes;
    let (columns, names, meta) = py
        .detach(|| {
            // Classic logs take about 30 bytes a line: a close upper bound for the capacity.
            let mut columns = Columns::with_capacity(data.len() / 30);
            let mut names = ChannelCodes::default();
            let mut meta = LogMeta {
                format: Some(format.name()),
                ..LogMeta::default()
            };
            let mut reader = LogReader::new(format, data);
            read_into(
                &mut reader,
                None,
                &filter,
                strict,
                &mut columns,
                &mut names,
                &mut meta,
            )?;
            Ok((columns, names, meta))
        })
        .map_err(ReadError::into_py)?;
    FrameTable::new(py, columns, names.names, meta)
}

struct BatchState {
    reader: LogReader<BufReader<File>>,
    names: ChannelCodes,
    filter: IdFilter,
    strict: bool,
    batch: usize,
    format: LogFormat,
}

/// The iterator `iter_log` returns: a `FrameTable` of up to `batch` frames per step.
#[pyclass(module = "tether")]
pub(crate) struct LogBatches {
    state: Mutex<Option<BatchState>>,
}

#[pymethods]
impl LogBatches {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<FrameTable>> {
        let mut guard = self
            .state
            .lock()
            .map_err(|_| PyValueError::new_err("iter_log: a previous step panicked"))?;
        let Some(state) = guard.as_mut() else {
            return Ok(None);
        };
        let step = py.detach(|| -> Result<_, ReadError> {
            let mut columns = Columns::with_capacity(state.batch);
            let mut meta = LogMeta {
                format: Some(state.format.name()),
                ..LogMeta::default()
            };
            let ended = read_into(
                &mut state.reader,
                Some(state.batch),
                &state.filter,
                state.strict,
                &mut columns,
                &mut state.names,
                &mut meta,
            )?;
            Ok((columns, meta, ended))
        });
        let (columns, meta, ended) = match step {
            Ok(step) => step,
            Err(e) => {
                *guard = None;
                return Err(e.into_py());
            }
        };
        let names = state.names.names.clone();
        if ended {
            *guard = None;
            // The end: a last empty batch only when it carries news (drops, bad lines).
            if columns.rows() == 0
                && meta.dropped == 0
                && meta.bad_lines.is_empty()
                && meta.ignored_lines == 0
            {
                return Ok(None);
            }
        }
        FrameTable::new(py, columns, names, meta).map(Some)
    }
}

/// Streams a log file as `FrameTable`s of up to `batch` frames each, reading it in bounded
/// memory (for files larger than memory). Arguments as for `read_log`; channel codes are
/// shared across batches (each batch's `channel_names` lists every name seen so far).
#[pyfunction]
#[pyo3(signature = (path, batch = 65536, *, format = None, ids = None, strict = true))]
pub(crate) fn iter_log(
    path: PathBuf,
    batch: usize,
    format: Option<&str>,
    ids: Option<Vec<u32>>,
    strict: bool,
) -> PyResult<LogBatches> {
    if batch == 0 {
        return Err(PyValueError::new_err("batch must be at least 1"));
    }
    let file = File::open(&path).map_err(|e| io_error(&path, "opening", e))?;
    let mut input = BufReader::with_capacity(READ_BUFFER, file);
    let head = input
        .fill_buf()
        .map_err(|e| io_error(&path, "reading", e))?;
    let format = detect(head, format)?;
    Ok(LogBatches {
        state: Mutex::new(Some(BatchState {
            reader: LogReader::new(format, input),
            names: ChannelCodes::default(),
            filter: IdFilter::new(ids),
            strict,
            batch,
            format,
        })),
    })
}

/// Writes a table as a log in `format` (`"candump"` — `candump -L` lines —, `"asc"` or
/// `"jsonl"`): to `path` (returns the number of frames written), or, without a path, returns
/// the log's bytes. Every row is checked as a `Frame` would be.
#[pyfunction]
#[pyo3(signature = (table, path = None, format = "candump"))]
pub(crate) fn write_log(
    py: Python<'_>,
    table: &FrameTable,
    path: Option<PathBuf>,
    format: &str,
) -> PyResult<Py<PyAny>> {
    let format = format_by_name(format)?;
    let out = table.with_view(py, |v| {
        py.detach(|| -> Result<Vec<u8>, RowError> {
            let mut out = Vec::with_capacity(v.rows() * 40);
            let style = LineStyle::default();
            let mut asc_writer = asc::Writer::new();
            for i in 0..v.rows() {
                let record = v.record(i)?;
                match format {
                    LogFormat::Candump => candump::write_record(&mut out, &record, &style),
                    LogFormat::Asc => asc_writer.write_record(&mut out, &record),
                    LogFormat::Jsonl => jsonl::write_record(&mut out, &record),
                }
            }
            if format == LogFormat::Asc {
                asc_writer.finish(&mut out);
            }
            Ok(out)
        })
        .map_err(row_error)
    })?;
    match path {
        None => Ok(PyBytes::new(py, &out).into_any().unbind()),
        Some(path) => {
            py.detach(|| File::create(&path).and_then(|mut f| f.write_all(&out)))
                .map_err(|e| io_error(&path, "writing", e))?;
            Ok(table.__len__(py).into_pyobject(py)?.into_any().unbind())
        }
    }
}
