//! `tether.Frame`: one timestamped frame (can-io's `CanRecord`).

use std::sync::Arc;

use can_io::formats::candump::{self, LineStyle};
use can_io::wire::relay_json::CanRelayFrame;
use can_io::wire::remp::{MAX_CHANNEL_NAME, validate_channel_name};
use can_io::{
    CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error;

/// A CAN, CAN FD, remote or error frame with its timestamp (integer nanoseconds), channel and
/// direction. Immutable, comparable and hashable.
///
/// `Frame(can_id, data=b"", *, extended=None, fd=False, brs=False, esi=False, remote=False,
/// length=None, ts_ns=0, channel="can0", direction="unknown")`: `extended` defaults to whether
/// `can_id` needs 29 bits; `length` is a remote frame's requested length; `direction` is
/// `"rx"`, `"tx"` or `"unknown"`. Raises `InvalidFrameError` for what CAN cannot carry.
#[pyclass(module = "tether", frozen, eq, hash)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Frame {
    pub(crate) record: CanRecord,
}

pub(crate) fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Rx => "rx",
        Direction::Tx => "tx",
        Direction::Unknown => "unknown",
    }
}

/// A channel name that every log format and REMP can carry (REMP's rule: 1–15 printable ASCII
/// bytes without spaces, so it cannot break a candump line); a plain `ValueError` otherwise.
fn check_channel(name: &str) -> PyResult<()> {
    validate_channel_name(name).map_err(|_| {
        PyValueError::new_err(format!(
            "channel {name:?} must be 1–{MAX_CHANNEL_NAME} printable ASCII bytes without spaces"
        ))
    })
}

fn parse_direction(name: &str) -> PyResult<Direction> {
    match name {
        "rx" => Ok(Direction::Rx),
        "tx" => Ok(Direction::Tx),
        "unknown" => Ok(Direction::Unknown),
        other => Err(PyValueError::new_err(format!(
            "direction must be \"rx\", \"tx\" or \"unknown\", not {other:?}"
        ))),
    }
}

#[pymethods]
impl Frame {
    #[new]
    #[pyo3(signature = (can_id, data = b"".as_slice(), *, extended = None, fd = false, brs = false,
        esi = false, remote = false, length = None, ts_ns = 0, channel = "can0", direction = "unknown"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        can_id: u32,
        data: &[u8],
        extended: Option<bool>,
        fd: bool,
        brs: bool,
        esi: bool,
        remote: bool,
        length: Option<usize>,
        ts_ns: u64,
        channel: &str,
        direction: &str,
    ) -> PyResult<Self> {
        let id = CanId::new(can_id, extended.unwrap_or(can_id > 0x7FF)).map_err(error::can)?;
        if (brs || esi) && !fd {
            return Err(PyValueError::new_err(
                "brs and esi are CAN FD flags: pass fd=True",
            ));
        }
        if length.is_some() && !remote {
            return Err(PyValueError::new_err(
                "length is for remote frames: pass remote=True",
            ));
        }
        let frame = if remote {
            if fd || !data.is_empty() {
                return Err(PyValueError::new_err(
                    "a remote frame carries no data and is not CAN FD (give its length instead)",
                ));
            }
            CanFrame::Remote(RemoteFrame::new(id, length.unwrap_or(0)).map_err(error::can)?)
        } else if fd {
            CanFrame::Fd(FdFrame::new(id, data, FdFlags { brs, esi }).map_err(error::can)?)
        } else {
            CanFrame::Data(DataFrame::new(id, data).map_err(error::can)?)
        };
        check_channel(channel)?;
        let channel: Channel = Arc::from(channel);
        Ok(Frame {
            record: CanRecord::new(ts_ns, channel, parse_direction(direction)?, frame),
        })
    }

    /// The identifier; `None` for an error frame.
    #[getter]
    fn can_id(&self) -> Option<u32> {
        self.record.frame.id().map(CanId::raw)
    }

    /// Whether the identifier is 29-bit.
    #[getter]
    fn is_extended(&self) -> bool {
        self.record.frame.id().is_some_and(CanId::is_extended)
    }

    /// `"data"`, `"fd"`, `"remote"` or `"error"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.record.frame {
            CanFrame::Data(_) => "data",
            CanFrame::Fd(_) => "fd",
            CanFrame::Remote(_) => "remote",
            CanFrame::Error(_) => "error",
        }
    }

    /// Whether this is a CAN FD frame.
    #[getter]
    fn is_fd(&self) -> bool {
        self.record.frame.is_fd()
    }

    /// Whether this is a remote (RTR) frame.
    #[getter]
    fn is_remote(&self) -> bool {
        matches!(self.record.frame, CanFrame::Remote(_))
    }

    /// Whether this is an error frame.
    #[getter]
    fn is_error(&self) -> bool {
        matches!(self.record.frame, CanFrame::Error(_))
    }

    /// CAN FD bit rate switch.
    #[getter]
    fn brs(&self) -> bool {
        matches!(self.record.frame, CanFrame::Fd(f) if f.flags().brs)
    }

    /// CAN FD error state indicator.
    #[getter]
    fn esi(&self) -> bool {
        matches!(self.record.frame, CanFrame::Fd(f) if f.flags().esi)
    }

    /// The payload (empty for a remote frame; the 8 error bytes for an error frame).
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.record.frame.data())
    }

    /// The data length (a remote frame's requested length).
    #[getter]
    fn length(&self) -> usize {
        self.record.frame.len()
    }

    /// Nanoseconds since the Unix epoch (or since the capture's start, for relative logs).
    #[getter]
    fn ts_ns(&self) -> u64 {
        self.record.ts_ns
    }

    /// The channel (interface) name.
    #[getter]
    fn channel(&self) -> &str {
        &self.record.channel
    }

    /// `"rx"`, `"tx"` or `"unknown"`.
    #[getter]
    fn direction(&self) -> &'static str {
        direction_name(self.record.direction)
    }

    fn __repr__(&self) -> String {
        let mut line = Vec::new();
        candump::write_frame(&mut line, &self.record.frame, &LineStyle::default());
        format!(
            "Frame({} {} ts_ns={} direction={})",
            self.record.channel,
            String::from_utf8_lossy(&line).trim_end(),
            self.record.ts_ns,
            direction_name(self.record.direction)
        )
    }

    /// This frame as the protocol's `CanRelayFrame` dict for group `group_id` (what a
    /// `frames` message carries).
    /// Raises `ProtocolError` for a `group_id` the protocol refuses (empty, over 128 bytes).
    fn to_relay<'py>(&self, py: Python<'py>, group_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let wire = CanRelayFrame::from_record(group_id, &self.record);
        wire.validate()
            .map_err(|e| error::ProtocolError::new_err(e.to_string()))?;
        Ok(pythonize::pythonize(py, &wire)?)
    }

    /// A frame from a `CanRelayFrame` dict (as `decode_message` returns them); `channel` names
    /// it when the dict has none. Raises `ProtocolError` for a dict the protocol refuses.
    #[staticmethod]
    #[pyo3(signature = (relay, channel = "can0"))]
    fn from_relay(relay: &Bound<'_, PyAny>, channel: &str) -> PyResult<Frame> {
        check_channel(channel)?;
        let json = crate::protocol::to_json(relay)?;
        let wire = CanRelayFrame::decode(&json)
            .map_err(|e| error::ProtocolError::new_err(format!("not a CanRelayFrame: {e}")))?;
        let record = wire.to_record(&channel.into()).map_err(error::can)?;
        check_channel(&record.channel)?;
        Ok(Frame { record })
    }
}
