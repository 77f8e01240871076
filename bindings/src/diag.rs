//! ISO-TP and UDS for Python: can-io's sans-IO state machines (`isotp::IsoTpEndpoint`,
//! `uds::UdsTesterCore`) and UDS decoders, driven from Python over any python-can bus by
//! `tether.isotp` and `tether.uds`.
//!
//! The machines take frames as plain values (`can_id, data, extended, fd`), hand back frames to
//! send as tuples `(can_id, extended, fd, brs, data)`, and read the monotonic clock themselves
//! at each call (`poll_timeout` answers in seconds from now). They own no socket and no thread:
//! the Python driver owns the bus. Nothing here retries or queues requests; bad frames are
//! counted in `stats()` and reported as events, never raised.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use can_io::isotp::{
    Addressing, FrameFormat, FrameMachine, IsoTpConfig, IsoTpEndpoint as Endpoint, IsoTpError,
    IsoTpEvent, Side, StMin, Timeouts,
};
use can_io::uds::service::{decode_did_values, decode_dtc_report};
use can_io::uds::{Answer, Nrc, Target, UdsError, UdsEvent, UdsTesterCore, UdsTiming};
use can_io::{CanFrame, CanId, DataFrame, FdFlags, FdFrame};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::error::{self, IsoTpTransferError, UdsProtocolError};

/// A frame to send: `(can_id, extended, fd, brs, data)`.
type OutFrame<'py> = (u32, bool, bool, bool, Bound<'py, PyBytes>);

fn out_frame<'py>(py: Python<'py>, frame: &CanFrame) -> Option<OutFrame<'py>> {
    let id = frame.id()?;
    let brs = matches!(frame, CanFrame::Fd(f) if f.flags().brs);
    Some((
        id.raw(),
        id.is_extended(),
        frame.is_fd(),
        brs,
        PyBytes::new(py, frame.data()),
    ))
}

fn in_frame(can_id: u32, data: &[u8], extended: bool, fd: bool) -> PyResult<CanFrame> {
    let id = CanId::new(can_id, extended).map_err(error::can)?;
    Ok(if fd {
        CanFrame::Fd(FdFrame::new(id, data, FdFlags::default()).map_err(error::can)?)
    } else {
        CanFrame::Data(DataFrame::new(id, data).map_err(error::can)?)
    })
}

/// `handle_frame` of either machine.
fn feed(
    m: &mut impl FrameMachine,
    can_id: u32,
    data: &[u8],
    extended: bool,
    fd: bool,
) -> PyResult<bool> {
    let frame = in_frame(can_id, data, extended, fd)?;
    Ok(m.handle_frame(&frame, Instant::now()))
}

/// `poll_transmit` of either machine.
fn next_out<'py>(py: Python<'py>, m: &mut impl FrameMachine) -> Option<OutFrame<'py>> {
    let frame = m.poll_transmit(Instant::now())?;
    out_frame(py, &frame)
}

fn seconds_until(deadline: Option<Instant>) -> Option<f64> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
}

fn duration(name: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
    })
}

fn isotp_error(e: IsoTpError) -> PyErr {
    IsoTpTransferError::new_err(e.to_string())
}

/// The ISO-TP settings every constructor here takes.
#[allow(clippy::too_many_arguments)]
fn isotp_config(
    tx_id: u32,
    rx_id: u32,
    target_address: Option<u8>,
    source_address: Option<u8>,
    fd_tx_dl: Option<usize>,
    brs: bool,
    padding: Option<u8>,
    block_size: u8,
    st_min: f64,
    timeout: f64,
    max_wait_frames: u8,
    max_rx_len: u32,
) -> PyResult<IsoTpConfig> {
    // A configuration that cannot work is a bad argument: a plain ValueError.
    let invalid = |e: IsoTpError| PyValueError::new_err(e.to_string());
    let mut addressing = Addressing::normal(tx_id, rx_id).map_err(invalid)?;
    match (target_address, source_address, addressing) {
        (None, None, _) => {}
        (Some(ta), Some(sa), Addressing::Normal { tx_id, rx_id }) => {
            addressing = Addressing::Extended {
                tx_id,
                rx_id,
                target_address: ta,
                source_address: sa,
            }
        }
        _ => {
            return Err(PyValueError::new_err(
                "extended addressing needs both target_address and source_address",
            ));
        }
    }
    let mut cfg = IsoTpConfig::new(addressing);
    if let Some(tx_dl) = fd_tx_dl {
        cfg.format = FrameFormat::Fd { tx_dl, brs };
    }
    cfg.padding = padding;
    cfg.block_size = block_size;
    cfg.st_min = StMin::from_duration(duration("st_min", st_min)?);
    let t = duration("timeout", timeout)?;
    cfg.timeouts = Timeouts {
        n_as: t,
        n_ar: t,
        n_bs: t,
        n_cr: t,
    };
    cfg.max_wait_frames = max_wait_frames;
    cfg.max_rx_len = max_rx_len;
    cfg.validate().map_err(invalid)?;
    Ok(cfg)
}

/// One event of an `IsoTpEndpoint`: `kind` is `"received"` (`data` is the whole message),
/// `"first_frame"` (`length` bytes are on their way), `"sent"` (the message given to `send`
/// is out) or `"error"` (`error` says what; `aborted` whether a transfer was aborted rather
/// than one frame ignored; `side` is `"rx"` for reception, `"tx"` for transmission).
#[pyclass(module = "tether", name = "IsoTpEvent", frozen, get_all)]
#[derive(Debug)]
pub(crate) struct IsoTpEventInfo {
    kind: &'static str,
    data: Option<Py<PyBytes>>,
    length: Option<u32>,
    error: Option<String>,
    aborted: bool,
    side: Option<&'static str>,
}

#[pymethods]
impl IsoTpEventInfo {
    fn __repr__(&self) -> String {
        format!(
            "IsoTpEvent(kind={:?}, length={:?}, error={:?}, aborted={})",
            self.kind, self.length, self.error, self.aborted
        )
    }
}

/// One end of an ISO-TP (ISO 15765-2) link as a sans-IO state machine (can-io's
/// `IsoTpEndpoint`): it segments what `send` is given, reassembles what arrives on `rx_id`,
/// and runs flow control and the N_Bs / N_Cr timers. Feed it frames (`handle_frame`) and
/// expired timers (`handle_timeout` once `poll_timeout()` seconds have passed), then put the
/// frames of `poll_transmit` on the bus and read `poll_event`. `tether.isotp.IsoTpSocket`
/// does all of that over a python-can bus.
///
/// `IsoTpEndpoint(tx_id, rx_id, *, target_address=None, source_address=None, fd_tx_dl=None,
/// brs=True, padding=0xCC, block_size=0, st_min=0.0, timeout=1.0, max_wait_frames=10,
/// max_rx_len=1048576)`: ids above 0x7FF are 29-bit; both addresses set mean extended
/// addressing; `fd_tx_dl` (8–64) sends CAN FD frames; `padding=None` sends short frames;
/// `block_size` and `st_min` (seconds) are what we ask senders for; `timeout` is every
/// ISO-TP timer in seconds.
#[pyclass(module = "tether")]
#[derive(Debug)]
pub(crate) struct IsoTpEndpoint {
    inner: Endpoint,
}

#[pymethods]
impl IsoTpEndpoint {
    #[new]
    #[pyo3(signature = (tx_id, rx_id, *, target_address = None, source_address = None,
        fd_tx_dl = None, brs = true, padding = Some(0xCC), block_size = 0, st_min = 0.0,
        timeout = 1.0, max_wait_frames = 10, max_rx_len = 1 << 20))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        tx_id: u32,
        rx_id: u32,
        target_address: Option<u8>,
        source_address: Option<u8>,
        fd_tx_dl: Option<usize>,
        brs: bool,
        padding: Option<u8>,
        block_size: u8,
        st_min: f64,
        timeout: f64,
        max_wait_frames: u8,
        max_rx_len: u32,
    ) -> PyResult<Self> {
        let cfg = isotp_config(
            tx_id,
            rx_id,
            target_address,
            source_address,
            fd_tx_dl,
            brs,
            padding,
            block_size,
            st_min,
            timeout,
            max_wait_frames,
            max_rx_len,
        )?;
        Ok(IsoTpEndpoint {
            inner: Endpoint::new(cfg).map_err(isotp_error)?,
        })
    }

    /// Starts sending `payload`; raises `IsoTpTransferError` while another message is being
    /// sent, or for a message this link cannot carry.
    fn send(&mut self, payload: &[u8]) -> PyResult<()> {
        self.inner
            .send(payload, Instant::now())
            .map_err(isotp_error)
    }

    /// Takes in a frame seen on the bus; returns whether it was for this endpoint.
    #[pyo3(signature = (can_id, data, extended = false, fd = false))]
    fn handle_frame(
        &mut self,
        can_id: u32,
        data: &[u8],
        extended: bool,
        fd: bool,
    ) -> PyResult<bool> {
        feed(&mut self.inner, can_id, data, extended, fd)
    }

    /// The next frame due now, `(can_id, extended, fd, brs, data)`, or `None`.
    fn poll_transmit<'py>(&mut self, py: Python<'py>) -> Option<OutFrame<'py>> {
        next_out(py, &mut self.inner)
    }

    /// The next event, or `None`.
    fn poll_event(&mut self, py: Python<'_>) -> Option<IsoTpEventInfo> {
        let ev = self.inner.poll_event()?;
        let mut info = IsoTpEventInfo {
            kind: "sent",
            data: None,
            length: None,
            error: None,
            aborted: false,
            side: None,
        };
        match ev {
            IsoTpEvent::Received(m) => {
                info.kind = "received";
                info.length = Some(m.len() as u32);
                info.data = Some(PyBytes::new(py, &m).unbind());
            }
            IsoTpEvent::FirstFrame { len } => {
                info.kind = "first_frame";
                info.length = Some(len);
            }
            IsoTpEvent::Sent => {}
            IsoTpEvent::Error(e) => {
                info.kind = "error";
                info.aborted = e.aborts_transfer();
                info.side = e.side().map(|s| match s {
                    Side::Rx => "rx",
                    Side::Tx => "tx",
                });
                info.error = Some(e.to_string());
            }
        }
        Some(info)
    }

    /// Seconds until `handle_timeout` is due (0 when overdue), or `None` with no timer running
    /// (consecutive frames held back by STmin count as timers).
    fn poll_timeout(&self) -> Option<f64> {
        seconds_until(self.inner.poll_timeout())
    }

    /// Expires the timers that are due.
    fn handle_timeout(&mut self) {
        self.inner.handle_timeout(Instant::now());
    }

    /// Whether nothing is being sent, received or waiting to go out.
    #[getter]
    fn idle(&self) -> bool {
        self.inner.is_idle()
    }

    /// Whether a message is being sent.
    #[getter]
    fn sending(&self) -> bool {
        self.inner.is_sending()
    }

    /// The most bytes one single frame carries on this link.
    #[getter]
    fn max_single_frame(&self) -> usize {
        self.inner.config().max_single_frame()
    }

    /// Counters: `frames_sent`, `frames_received`, `frames_ignored`, `messages_sent`,
    /// `messages_received`, `rx_aborted`, `tx_aborted`, `invalid_frames`,
    /// `unexpected_frames`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        Ok(pythonize::pythonize(py, &self.inner.stats())?.cast_into()?)
    }
}

/// One event of a `UdsTester`: `kind` is `"pending"` (`responder` answered response-pending,
/// its wait is now P2*), `"positive"` (`data` is the whole positive response), `"negative"`
/// (`nrc`, `nrc_name`), or `"finished"` (the request is over; `error` is `None`, or
/// `"timeout"` when nobody answered, or the reason the transfer failed, with `error_kind`
/// `"timeout"`, `"transfer"` or `"other"`).
#[pyclass(module = "tether", name = "UdsEvent", frozen, get_all)]
#[derive(Debug)]
pub(crate) struct UdsEventInfo {
    kind: &'static str,
    responder: Option<u32>,
    data: Option<Py<PyBytes>>,
    nrc: Option<u8>,
    nrc_name: Option<String>,
    error: Option<String>,
    error_kind: Option<&'static str>,
}

#[pymethods]
impl UdsEventInfo {
    fn __repr__(&self) -> String {
        format!(
            "UdsEvent(kind={:?}, responder={:?}, nrc_name={:?}, error={:?})",
            self.kind, self.responder, self.nrc_name, self.error
        )
    }
}

/// A UDS (ISO 14229) tester over ISO-TP as a sans-IO state machine (can-io's
/// `UdsTesterCore`): one ISO-TP link per ECU, functional requests as single frames, P2 / P2*
/// waits, response-pending, negative answers by NRC. Driven like `IsoTpEndpoint`;
/// `tether.uds.UdsClient` does that over a python-can bus.
///
/// `UdsTester(ecus, *, functional_id=0x7DF, p2=1.0, p2_star=5.0, padding=0xCC, fd_tx_dl=None,
/// timeout=1.0)`: `ecus` is a list of `(request_id, response_id)`; `functional_id=None` turns
/// functional requests off.
#[pyclass(module = "tether")]
#[derive(Debug)]
pub(crate) struct UdsTester {
    inner: UdsTesterCore,
}

#[pymethods]
impl UdsTester {
    #[new]
    #[pyo3(signature = (ecus, *, functional_id = Some(0x7DF), p2 = 1.0, p2_star = 5.0,
        padding = Some(0xCC), fd_tx_dl = None, timeout = 1.0))]
    fn new(
        ecus: Vec<(u32, u32)>,
        functional_id: Option<u32>,
        p2: f64,
        p2_star: f64,
        padding: Option<u8>,
        fd_tx_dl: Option<usize>,
        timeout: f64,
    ) -> PyResult<Self> {
        if ecus.is_empty() {
            return Err(PyValueError::new_err("a tester needs at least one ECU"));
        }
        let link = |tx: u32, rx: u32| {
            isotp_config(
                tx,
                rx,
                None,
                None,
                fd_tx_dl,
                true,
                padding,
                0,
                0.0,
                timeout,
                10,
                1 << 20,
            )
        };
        let links = ecus
            .iter()
            .map(|&(tx, rx)| link(tx, rx))
            .collect::<PyResult<Vec<_>>>()?;
        let functional = functional_id.map(|id| link(id, id)).transpose()?;
        let timing = UdsTiming {
            p2: duration("p2", p2)?,
            p2_star: duration("p2_star", p2_star)?,
        };
        let inner = UdsTesterCore::new(links, functional, timing)
            .map_err(|e| UdsProtocolError::new_err(e.to_string()))?;
        Ok(UdsTester { inner })
    }

    /// Starts a request to the ECU with request id `ecu`, or to every ECU (`ecu=None`, one
    /// single frame on the functional id). Raises `UdsProtocolError` while a request is
    /// outstanding, for an unknown ECU, or a functional request longer than a single frame.
    #[pyo3(signature = (ecu, request))]
    fn request(&mut self, ecu: Option<u32>, request: &[u8]) -> PyResult<()> {
        let target = match ecu {
            Some(raw) => Target::Ecu(CanId::new(raw, raw > 0x7FF).map_err(error::can)?),
            None => Target::Functional,
        };
        self.inner
            .request(target, request, Instant::now())
            .map_err(|e| UdsProtocolError::new_err(e.to_string()))
    }

    /// Drops an outstanding request.
    fn abandon(&mut self) {
        self.inner.abandon();
    }

    /// Takes in a frame seen on the bus; returns whether it was for one of the links.
    #[pyo3(signature = (can_id, data, extended = false, fd = false))]
    fn handle_frame(
        &mut self,
        can_id: u32,
        data: &[u8],
        extended: bool,
        fd: bool,
    ) -> PyResult<bool> {
        feed(&mut self.inner, can_id, data, extended, fd)
    }

    /// The next frame due now, `(can_id, extended, fd, brs, data)`, or `None`.
    fn poll_transmit<'py>(&mut self, py: Python<'py>) -> Option<OutFrame<'py>> {
        next_out(py, &mut self.inner)
    }

    /// Seconds until `handle_timeout` is due, or `None`.
    fn poll_timeout(&self) -> Option<f64> {
        seconds_until(self.inner.poll_timeout())
    }

    /// Expires the timers that are due.
    fn handle_timeout(&mut self) {
        self.inner.handle_timeout(Instant::now());
    }

    /// The next event, or `None`.
    fn poll_event(&mut self, py: Python<'_>) -> Option<UdsEventInfo> {
        let ev = self.inner.poll_event()?;
        let mut info = UdsEventInfo {
            kind: "finished",
            responder: None,
            data: None,
            nrc: None,
            nrc_name: None,
            error: None,
            error_kind: None,
        };
        match ev {
            UdsEvent::Pending { responder } => {
                info.kind = "pending";
                info.responder = Some(responder.raw());
            }
            UdsEvent::Answer(a) => {
                info.responder = Some(a.responder.raw());
                match a.answer {
                    Answer::Positive(m) => {
                        info.kind = "positive";
                        info.data = Some(PyBytes::new(py, &m).unbind());
                    }
                    Answer::Negative(nrc) => {
                        info.kind = "negative";
                        info.nrc = Some(nrc.0);
                        info.nrc_name = Some(nrc.name());
                    }
                }
            }
            UdsEvent::Finished(Ok(())) => {}
            UdsEvent::Finished(Err(e)) => {
                info.error_kind = Some(match e {
                    UdsError::Timeout { .. } => "timeout",
                    UdsError::Transfer(_) => "transfer",
                    _ => "other",
                });
                info.error = Some(e.reason());
            }
        }
        Some(info)
    }

    /// The client's counters: `requests`, `positive`, `negative`, `pending`, `timeouts`,
    /// `unmatched`, `failed_transfers`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        Ok(pythonize::pythonize(py, &self.inner.stats())?.cast_into()?)
    }
}

/// The ISO 14229 name of a negative response code (`0x31` → `"requestOutOfRange"`).
#[pyfunction]
pub(crate) fn nrc_name(nrc: u8) -> String {
    Nrc(nrc).name()
}

/// Decodes a positive answer to ReadDTCInformation reportDTCByStatusMask (`59 02 …`):
/// `(availability_mask, [(dtc, code, ftb, status, description), …])` with `dtc` the 3-byte
/// number, `code` its SAE form (`"P0420"`) and `description` the generic title or `None`.
/// Raises `UdsProtocolError` for an answer that does not decode.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub(crate) fn decode_dtc_response(
    response: &[u8],
) -> PyResult<(u8, Vec<(u32, String, u8, u8, Option<&'static str>)>)> {
    let body = match response.split_first() {
        Some((0x59, body)) => body,
        _ => {
            return Err(UdsProtocolError::new_err(
                "not a positive ReadDTCInformation answer (0x59)",
            ));
        }
    };
    let (mask, records) = decode_dtc_report(body).map_err(UdsProtocolError::new_err)?;
    Ok((
        mask,
        records
            .iter()
            .map(|r| {
                (
                    r.dtc.raw(),
                    r.dtc.sae_code(),
                    r.dtc.ftb(),
                    r.status.0,
                    r.dtc.description(),
                )
            })
            .collect(),
    ))
}

/// Decodes a positive answer to ReadDataByIdentifier (`62 …`) for the DIDs `requested`:
/// `[(did, value), …]` in the order of the answer. `lengths` gives the value length of DIDs
/// that are not last (a DID of unknown length must be the last one).
#[pyfunction]
#[pyo3(signature = (response, requested, lengths = BTreeMap::new()))]
pub(crate) fn decode_did_response<'py>(
    py: Python<'py>,
    response: &[u8],
    requested: Vec<u16>,
    lengths: BTreeMap<u16, usize>,
) -> PyResult<Vec<(u16, Bound<'py, PyBytes>)>> {
    let body = match response.split_first() {
        Some((0x62, body)) => body,
        _ => {
            return Err(UdsProtocolError::new_err(
                "not a positive ReadDataByIdentifier answer (0x62)",
            ));
        }
    };
    let values =
        decode_did_values(body, &requested, &lengths).map_err(UdsProtocolError::new_err)?;
    Ok(values
        .into_iter()
        .map(|v| (v.did, PyBytes::new(py, &v.data)))
        .collect())
}
