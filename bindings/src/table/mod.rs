//! `tether.FrameTable`: frames as NumPy columns, built in Rust with no Python object per frame,
//! and `read_log` / `iter_log` / `write_log` ([`io`]).

pub(crate) mod columns;
pub(crate) mod io;

use can_io::Channel;
use numpy::ndarray::Array2;
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList};

use self::columns::{ChannelCodes, Columns, DIRECTION_NAMES, IdFilter, RowError, View};
use crate::error;
use crate::frame::Frame;

/// What a log said besides its frames, so nothing is dropped silently.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogMeta {
    pub(crate) format: Option<&'static str>,
    pub(crate) dropped: u64,
    pub(crate) ignored_lines: u64,
    pub(crate) bad_lines: Vec<(u64, String)>,
}

/// Frames as columns: `ts_ns` (int64), `id` (uint32; the error class bits for error frames),
/// `extended` / `remote` / `error` / `fd` / `brs` / `esi` (bool), `len` (uint8: the data
/// length, a remote frame's requested length), `raw_dlc` (uint8: 9–15 for an 8-byte classic
/// frame sent with that DLC, else 0), `direction` (uint8 codes into `direction_names`:
/// unknown, rx, tx), the payloads as `data_offsets` (int64, `len(table) + 1`) and `data_values`
/// (uint8), or `data` (2-D uint8, one row per frame, zero-padded to the longest payload), and
/// the channel dictionary-encoded as `channel_codes` (int32) into `channel_names`.
///
/// The arrays are read-only NumPy arrays that own their memory; the table is immutable.
/// `len(table)`, `table[i]` (a `Frame`), iteration (frames), `filter_ids`, `filter`,
/// `to_arrow()`, `to_pandas()`, `to_polars()`. Tables come from `read_log`, `iter_log` and
/// `FrameTable.from_frames`.
#[pyclass(module = "tether", frozen)]
pub(crate) struct FrameTable {
    ts_ns: Py<PyArray1<i64>>,
    id: Py<PyArray1<u32>>,
    extended: Py<PyArray1<bool>>,
    remote: Py<PyArray1<bool>>,
    error: Py<PyArray1<bool>>,
    fd: Py<PyArray1<bool>>,
    brs: Py<PyArray1<bool>>,
    esi: Py<PyArray1<bool>>,
    len: Py<PyArray1<u8>>,
    raw_dlc: Py<PyArray1<u8>>,
    direction: Py<PyArray1<u8>>,
    offsets: Py<PyArray1<i64>>,
    values: Py<PyArray1<u8>>,
    channel: Py<PyArray1<i32>>,
    names: Vec<Channel>,
    meta: LogMeta,
    /// `data` as a 2-D array, built on first use.
    data_2d: PyOnceLock<Py<PyArray2<u8>>>,
    /// Maximum payload length: the width of `data`.
    width: usize,
}

/// A read-only NumPy array owning `v`.
fn frozen<T: Element>(py: Python<'_>, v: Vec<T>) -> PyResult<Py<PyArray1<T>>> {
    let array = PyArray1::from_vec(py, v);
    freeze(array.as_any())?;
    Ok(array.unbind())
}

fn freeze(array: &Bound<'_, PyAny>) -> PyResult<()> {
    let kwargs = PyDict::new(array.py());
    kwargs.set_item("write", false)?;
    array.call_method("setflags", (), Some(&kwargs))?;
    Ok(())
}

/// Read borrows of every column, from which a [`View`] is taken.
struct Borrowed<'py> {
    ts_ns: PyReadonlyArray1<'py, i64>,
    id: PyReadonlyArray1<'py, u32>,
    extended: PyReadonlyArray1<'py, bool>,
    remote: PyReadonlyArray1<'py, bool>,
    error: PyReadonlyArray1<'py, bool>,
    fd: PyReadonlyArray1<'py, bool>,
    brs: PyReadonlyArray1<'py, bool>,
    esi: PyReadonlyArray1<'py, bool>,
    len: PyReadonlyArray1<'py, u8>,
    raw_dlc: PyReadonlyArray1<'py, u8>,
    direction: PyReadonlyArray1<'py, u8>,
    offsets: PyReadonlyArray1<'py, i64>,
    values: PyReadonlyArray1<'py, u8>,
    channel: PyReadonlyArray1<'py, i32>,
}

fn slice<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|e| PyValueError::new_err(format!("table column: {e}")))
}

impl Borrowed<'_> {
    fn view<'a>(&'a self, names: &'a [Channel]) -> PyResult<View<'a>> {
        Ok(View {
            ts_ns: slice(&self.ts_ns)?,
            id: slice(&self.id)?,
            extended: slice(&self.extended)?,
            remote: slice(&self.remote)?,
            error: slice(&self.error)?,
            fd: slice(&self.fd)?,
            brs: slice(&self.brs)?,
            esi: slice(&self.esi)?,
            len: slice(&self.len)?,
            raw_dlc: slice(&self.raw_dlc)?,
            direction: slice(&self.direction)?,
            offsets: slice(&self.offsets)?,
            values: slice(&self.values)?,
            channel: slice(&self.channel)?,
            names,
        })
    }
}

pub(crate) fn row_error(e: RowError) -> PyErr {
    match e {
        RowError::Frame(e) => error::can(e),
        RowError::Column(text) => PyValueError::new_err(text),
    }
}

impl FrameTable {
    /// A table owning `columns` (no copy), with `names` for the channel codes.
    pub(crate) fn new(
        py: Python<'_>,
        c: Columns,
        names: Vec<Channel>,
        meta: LogMeta,
    ) -> PyResult<Self> {
        let width = c.len_max_data();
        Ok(FrameTable {
            ts_ns: frozen(py, c.ts_ns)?,
            id: frozen(py, c.id)?,
            extended: frozen(py, c.extended)?,
            remote: frozen(py, c.remote)?,
            error: frozen(py, c.error)?,
            fd: frozen(py, c.fd)?,
            brs: frozen(py, c.brs)?,
            esi: frozen(py, c.esi)?,
            len: frozen(py, c.len)?,
            raw_dlc: frozen(py, c.raw_dlc)?,
            direction: frozen(py, c.direction)?,
            offsets: frozen(py, c.offsets)?,
            values: frozen(py, c.values)?,
            channel: frozen(py, c.channel)?,
            names,
            meta,
            data_2d: PyOnceLock::new(),
            width,
        })
    }

    fn borrow<'py>(&self, py: Python<'py>) -> PyResult<Borrowed<'py>> {
        fn ro<'py, T: Element>(
            py: Python<'py>,
            a: &Py<PyArray1<T>>,
        ) -> PyResult<PyReadonlyArray1<'py, T>> {
            a.bind(py)
                .try_readonly()
                .map_err(|e| PyValueError::new_err(format!("table column: {e}")))
        }
        Ok(Borrowed {
            ts_ns: ro(py, &self.ts_ns)?,
            id: ro(py, &self.id)?,
            extended: ro(py, &self.extended)?,
            remote: ro(py, &self.remote)?,
            error: ro(py, &self.error)?,
            fd: ro(py, &self.fd)?,
            brs: ro(py, &self.brs)?,
            esi: ro(py, &self.esi)?,
            len: ro(py, &self.len)?,
            raw_dlc: ro(py, &self.raw_dlc)?,
            direction: ro(py, &self.direction)?,
            offsets: ro(py, &self.offsets)?,
            values: ro(py, &self.values)?,
            channel: ro(py, &self.channel)?,
        })
    }

    /// Runs `f` over a view of the columns.
    pub(crate) fn with_view<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(View<'_>) -> PyResult<R>,
    ) -> PyResult<R> {
        let b = self.borrow(py)?;
        f(b.view(&self.names)?)
    }

    fn rows(&self, py: Python<'_>) -> usize {
        numpy::PyUntypedArrayMethods::len(self.ts_ns.bind(py))
    }

    /// The rows at `indices` as a new table (same channel names and codes).
    fn take(&self, py: Python<'_>, indices: &[usize]) -> PyResult<FrameTable> {
        let columns = self.with_view(py, |v| v.gather(indices).map_err(row_error))?;
        FrameTable::new(py, columns, self.names.clone(), self.meta.clone())
    }

    fn frame(&self, py: Python<'_>, i: usize) -> PyResult<Frame> {
        self.with_view(py, |v| {
            Ok(Frame {
                record: v.record(i).map_err(row_error)?,
            })
        })
    }

    fn convert<'py>(&self, slf: &Bound<'py, Self>, to: &str) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("tether._convert")?
            .getattr(to)?
            .call1((slf,))
    }
}

impl Columns {
    fn len_max_data(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }
}

#[pymethods]
impl FrameTable {
    /// A table of `frames` (any iterable of `Frame`), in order.
    #[staticmethod]
    fn from_frames(py: Python<'_>, frames: &Bound<'_, PyAny>) -> PyResult<FrameTable> {
        let mut names = ChannelCodes::default();
        let mut columns = Columns::with_capacity(0);
        for item in frames.try_iter()? {
            let item = item?;
            let frame = item.cast::<Frame>()?.get();
            columns
                .push(&frame.record, &mut names)
                .map_err(|e| io::overflow_error(None, e))?;
        }
        FrameTable::new(py, columns, names.names, LogMeta::default())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.rows(py)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let names: Vec<&str> = self.names.iter().map(|n| &**n).collect();
        format!(
            "FrameTable(rows={}, format={:?}, channels={:?}, dropped={}, bad_lines={})",
            self.rows(py),
            self.meta.format.unwrap_or("none"),
            names,
            self.meta.dropped,
            self.meta.bad_lines.len()
        )
    }

    /// Row `index` as a `Frame` (negative indices count from the end).
    fn __getitem__(&self, py: Python<'_>, index: isize) -> PyResult<Frame> {
        let n = self.rows(py);
        let i = if index < 0 {
            index.checked_add_unsigned(n)
        } else {
            Some(index)
        };
        match i.and_then(|i| usize::try_from(i).ok()).filter(|&i| i < n) {
            Some(i) => self.frame(py, i),
            None => Err(PyIndexError::new_err(format!(
                "row {index} out of range for a table of {n}"
            ))),
        }
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.frames(py)?.call_method0("__iter__")
    }

    /// Every row as a `Frame`, in order (one Python object per frame: for small tables).
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let frames = self.with_view(py, |v| {
            (0..v.rows())
                .map(|i| v.record(i).map_err(row_error))
                .collect::<PyResult<Vec<_>>>()
        })?;
        let list = PyList::empty(py);
        for record in frames {
            list.append(Py::new(py, Frame { record })?)?;
        }
        Ok(list)
    }

    /// The rows whose identifier is one of `ids` (standard or extended alike; error frames
    /// never match), as a new table. Done in Rust: no Python object per frame.
    fn filter_ids(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<FrameTable> {
        let filter = IdFilter::new(Some(ids));
        let keep = self.with_view(py, |v| {
            Ok((0..v.rows())
                .filter(|&i| filter.keeps(v.id[i], v.error[i]))
                .collect::<Vec<_>>())
        })?;
        self.take(py, &keep)
    }

    /// The rows where `mask` (a bool array of the table's length, e.g. `table.id > 0x700`)
    /// is true, as a new table.
    fn filter(&self, py: Python<'_>, mask: PyReadonlyArray1<'_, bool>) -> PyResult<FrameTable> {
        let mask = mask.as_array();
        let n = self.rows(py);
        if mask.len() != n {
            return Err(PyValueError::new_err(format!(
                "mask has {} entries for a table of {n} rows",
                mask.len()
            )));
        }
        let keep: Vec<usize> = mask
            .iter()
            .enumerate()
            .filter_map(|(i, &k)| k.then_some(i))
            .collect();
        self.take(py, &keep)
    }

    /// Nanoseconds since the Unix epoch (int64).
    #[getter]
    fn ts_ns<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.ts_ns.bind(py).clone()
    }
    /// Identifiers without flag bits; the error class bits for error frames (uint32).
    #[getter]
    fn id<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        self.id.bind(py).clone()
    }
    /// 29-bit identifier (bool).
    #[getter]
    fn extended<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.extended.bind(py).clone()
    }
    /// Remote (RTR) frame (bool).
    #[getter]
    fn remote<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.remote.bind(py).clone()
    }
    /// Error frame (bool).
    #[getter]
    fn error<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.error.bind(py).clone()
    }
    /// CAN FD frame (bool).
    #[getter]
    fn fd<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.fd.bind(py).clone()
    }
    /// CAN FD bit rate switch (bool).
    #[getter]
    fn brs<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.brs.bind(py).clone()
    }
    /// CAN FD error state indicator (bool).
    #[getter]
    fn esi<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        self.esi.bind(py).clone()
    }
    /// Data length in bytes; a remote frame's requested length (uint8).
    #[getter]
    fn len<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.len.bind(py).clone()
    }
    /// Raw DLC 9–15 of an 8-byte classic frame, else 0 (uint8).
    #[getter]
    fn raw_dlc<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.raw_dlc.bind(py).clone()
    }
    /// Direction codes into `direction_names` (uint8).
    #[getter]
    fn direction<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.direction.bind(py).clone()
    }
    /// `["unknown", "rx", "tx"]`: the names of the `direction` codes.
    #[getter]
    fn direction_names(&self) -> Vec<&'static str> {
        DIRECTION_NAMES.to_vec()
    }
    /// Start of each payload in `data_values`, and the end of the last (int64, rows + 1).
    #[getter]
    fn data_offsets<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.offsets.bind(py).clone()
    }
    /// Every payload, back to back (uint8).
    #[getter]
    fn data_values<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.values.bind(py).clone()
    }
    /// Channel codes into `channel_names` (int32).
    #[getter]
    fn channel_codes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        self.channel.bind(py).clone()
    }
    /// The channel names, in order of first appearance (for `iter_log`: across all batches
    /// so far, so codes mean the same name in every batch).
    #[getter]
    fn channel_names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }
    /// Channel names per row, as a NumPy object array (the row's entry of `channel_names`;
    /// shared `str` objects, one per name, not per frame).
    #[getter]
    fn channel<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", py.import("builtins")?.getattr("object")?)?;
        py.import("numpy")?
            .call_method("array", (self.channel_names(),), Some(&kwargs))?
            .call_method1("take", (self.channel.bind(py),))
    }
    /// Payloads as a 2-D uint8 array: one row per frame, `max(len)` columns, zero-padded
    /// (remote frames have no payload). Built on first use, then kept.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let array = self.data_2d.get_or_try_init(py, || -> PyResult<_> {
            let n = self.rows(py);
            let width = self.width;
            let grid = self.with_view(py, |v| {
                let mut grid = vec![0u8; n * width];
                for i in 0..n {
                    let data = v.data(i).map_err(row_error)?;
                    grid[i * width..i * width + data.len()].copy_from_slice(data);
                }
                Ok(grid)
            })?;
            let grid = Array2::from_shape_vec((n, width), grid)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let array = grid.into_pyarray(py);
            freeze(array.as_any())?;
            Ok(array.unbind())
        })?;
        Ok(array.bind(py).clone())
    }
    /// Every payload as `bytes` (one Python object per frame; the conversions use it for
    /// pandas and polars).
    fn data_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.with_view(py, |v| {
            let list = PyList::empty(py);
            for i in 0..v.rows() {
                list.append(PyBytes::new(py, v.data(i).map_err(row_error)?))?;
            }
            Ok(list)
        })
    }
    /// The format read (`"candump"`, `"asc"`, `"jsonl"`), or `None` for a table not read from a log.
    #[getter]
    fn format(&self) -> Option<&'static str> {
        self.meta.format
    }
    /// Frames the capture itself reported lost (candump `DROPCOUNT:` lines), summed.
    #[getter]
    fn dropped(&self) -> u64 {
        self.meta.dropped
    }
    /// Well-formed lines that carry no frame (ASC statistics, comments), skipped on purpose.
    #[getter]
    fn ignored_lines(&self) -> u64 {
        self.meta.ignored_lines
    }
    /// With `strict=False`: `(line number, reason)` of every line that did not parse.
    #[getter]
    fn bad_lines(&self) -> Vec<(u64, String)> {
        self.meta.bad_lines.clone()
    }
    /// The numeric columns by name (`ts_ns`, `id`, `extended`, `remote`, `error`, `fd`, `brs`,
    /// `esi`, `len`, `raw_dlc`, `direction`, `channel_codes`).
    #[getter]
    fn columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("ts_ns", &self.ts_ns)?;
        d.set_item("id", &self.id)?;
        d.set_item("extended", &self.extended)?;
        d.set_item("remote", &self.remote)?;
        d.set_item("error", &self.error)?;
        d.set_item("fd", &self.fd)?;
        d.set_item("brs", &self.brs)?;
        d.set_item("esi", &self.esi)?;
        d.set_item("len", &self.len)?;
        d.set_item("raw_dlc", &self.raw_dlc)?;
        d.set_item("direction", &self.direction)?;
        d.set_item("channel_codes", &self.channel)?;
        Ok(d)
    }

    /// The table as a `pyarrow.Table` (needs pyarrow): `channel` and `direction` as
    /// dictionary arrays, `data` as binary, no copy of the numeric columns.
    fn to_arrow<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().convert(slf, "to_arrow")
    }
    /// The table as a `pandas.DataFrame` (needs pandas): `channel` and `direction` as
    /// categoricals, `data` as `bytes` objects.
    fn to_pandas<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().convert(slf, "to_pandas")
    }
    /// The table as a `polars.DataFrame` (needs polars): `channel` and `direction` as enums,
    /// `data` as binary.
    fn to_polars<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().convert(slf, "to_polars")
    }
}
