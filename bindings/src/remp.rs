//! `tether.RempSender` and `tether.RempReceiver`: the REMP datagrams of simulated dongles.

use std::time::{SystemTime, UNIX_EPOCH};

use can_io::wire::remp::{RempEvent, RempReceiver as Receiver, RempSender as Sender, SeqVerdict};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::error;
use crate::frame::Frame;

/// Builds the datagrams one dongle sends: `RempSender(serial, boot_id=None, keepalive_ms=1000)`.
/// `boot_id` is random when not given (a new one tells receivers the dongle restarted). Frames
/// are batched: `push` returns the datagrams to send now (a full batch, and a hello when a
/// frame names a new channel), `flush` the partial batch. Send a `hello()` first and a
/// `keepalive()` every `keepalive_ms`.
#[pyclass(module = "tether")]
pub(crate) struct RempSender {
    inner: Sender,
}

#[pymethods]
impl RempSender {
    #[new]
    #[pyo3(signature = (serial, boot_id = None, keepalive_ms = 1000))]
    fn new(serial: &str, boot_id: Option<u64>, keepalive_ms: u16) -> PyResult<Self> {
        let boot_id = boot_id.unwrap_or_else(rand::random);
        Ok(RempSender {
            inner: Sender::new(serial, boot_id, keepalive_ms).map_err(error::can)?,
        })
    }

    /// A hello datagram naming the channels seen so far.
    fn hello<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.inner.hello().map_err(error::can)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// A keep-alive datagram.
    fn keepalive<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.inner.keepalive().map_err(error::can)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Adds a frame to the batch; returns the datagrams to send now, in order.
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        frame: PyRef<'py, Frame>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let out = self.inner.push(&frame.record).map_err(error::can)?;
        Ok(out.iter().map(|d| PyBytes::new(py, d)).collect())
    }

    /// The pending batch as a datagram, or `None` when no frame is pending.
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let out = self.inner.flush().map_err(error::can)?;
        Ok(out.map(|d| PyBytes::new(py, &d)))
    }

    /// Reports `n` frames the dongle dropped before sending (in the next hello / keep-alive).
    fn note_dropped(&mut self, n: u32) {
        self.inner.note_dropped(n);
    }

    /// Frames waiting for `flush`.
    #[getter]
    fn pending(&self) -> usize {
        self.inner.pending()
    }
}

/// Decodes datagrams from any number of dongles, tracking each one's sequence numbers:
/// `RempReceiver(max_dongles=4096)`. `handle(datagram)` returns a dict with `type`
/// (`"hello"`, `"keepalive"`, `"frames"` or `"dropped"`) and `serial`, plus `frames` (a list of
/// `Frame`, channels named from the hello), `boot_id` / `keepalive_ms` / `restarted` (hello) or
/// `seq` / `verdict` (a duplicate or too-old datagram that was dropped and counted). Raises
/// `MalformedError` / `TruncatedError` for bytes that are not REMP, changing nothing.
#[pyclass(module = "tether")]
pub(crate) struct RempReceiver {
    inner: Receiver,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[pymethods]
impl RempReceiver {
    #[new]
    #[pyo3(signature = (max_dongles = 4096))]
    fn new(max_dongles: usize) -> Self {
        RempReceiver {
            inner: Receiver::new(max_dongles),
        }
    }

    /// Handles one datagram received at `now_ns` (default: now).
    #[pyo3(signature = (datagram, now_ns = None))]
    fn handle<'py>(
        &mut self,
        py: Python<'py>,
        datagram: &[u8],
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let event = self
            .inner
            .handle_datagram(datagram, now_ns.unwrap_or_else(self::now_ns))
            .map_err(error::can)?;
        let (kind, serial) = match &event {
            RempEvent::Hello { serial, .. } => ("hello", serial),
            RempEvent::Keepalive { serial } => ("keepalive", serial),
            RempEvent::Frames { serial, .. } => ("frames", serial),
            RempEvent::Dropped { serial, .. } => ("dropped", serial),
        };
        let d = PyDict::new(py);
        d.set_item("type", kind)?;
        d.set_item("serial", serial)?;
        match event {
            RempEvent::Hello {
                boot_id,
                keepalive_ms,
                restarted,
                ..
            } => {
                d.set_item("boot_id", boot_id)?;
                d.set_item("keepalive_ms", keepalive_ms)?;
                d.set_item("restarted", restarted)?;
            }
            RempEvent::Keepalive { .. } => {}
            RempEvent::Frames { records, .. } => {
                let frames = records
                    .into_iter()
                    .map(|record| Py::new(py, Frame { record }))
                    .collect::<PyResult<Vec<_>>>()?;
                d.set_item("frames", frames)?;
            }
            RempEvent::Dropped { seq, verdict, .. } => {
                d.set_item("seq", seq)?;
                let verdict = match verdict {
                    SeqVerdict::Duplicate => "duplicate",
                    SeqVerdict::Stale => "stale",
                    _ => "other",
                };
                d.set_item("verdict", verdict)?;
            }
        }
        Ok(d)
    }

    /// Counters of one dongle (`datagrams`, `frames`, `lost`, `duplicate`, `reordered`,
    /// `stale`, `restarts`, `dongle_dropped`), or `None` for a serial never seen.
    fn stats<'py>(&self, py: Python<'py>, serial: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.inner
            .stats(serial)
            .map(|s| Ok(pythonize::pythonize(py, &s)?.cast_into()?))
            .transpose()
    }

    /// Datagrams refused because `max_dongles` serials were already tracked.
    #[getter]
    fn rejected_dongles(&self) -> u64 {
        self.inner.rejected_dongles()
    }
}
