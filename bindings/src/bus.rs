//! `tether.CanLink`: one network CAN bus (can-io's `AnyBus`) driven by a task on a shared
//! background runtime, for the python-can interface (`tether.can_bus.TetherBus`).
//!
//! Why the socket lives in Rust: python-can's notifier thread blocks in `recv` while the
//! program sends from another thread. One task per bus owns the socket and selects over
//! "datagram arrived" and "frame to send", so sending never waits for a receive timeout. It
//! decodes, applies python-can's filters (so filtered-out frames never become Python objects)
//! and queues frames in a bounded inbox; Python waits on the inbox without the GIL. A full
//! inbox drops the newest frame and counts it (`stats()["dropped"]`).

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use can_io::transport::open::{AnyBus, BusAddress, OpenOptions};
use can_io::transport::{BusStats, CanBus, now_ns};
use can_io::wire::remp::validate_channel_name;
use can_io::{CanFrame, CanRecord, Channel, Direction};
use pyo3::exceptions::{PyConnectionError, PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::error;
use crate::table::columns::{FrameParts, build_frame, fd_of, id_of};

/// Frames the task takes from the send queue before it flushes.
const SEND_BATCH: usize = 256;
/// How long `close` waits for the task to let go of its socket.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The runtime every bus task runs on: one worker thread, started on first use.
fn runtime() -> PyResult<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tether-can-io")
        .enable_all()
        .build()
        .map_err(|e| PyOSError::new_err(format!("starting the I/O thread: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// The exception for a transport error.
fn transport_error(err: can_io::Error) -> PyErr {
    match err {
        can_io::Error::Io { .. } => PyOSError::new_err(err.to_string()),
        can_io::Error::Closed { .. } => PyConnectionError::new_err(err.to_string()),
        other => error::can(other),
    }
}

/// One python-can filter: `(arbitration_id ^ can_id) & can_mask == 0`, and the id kind when
/// `extended` is given.
#[derive(Debug, Clone, Copy)]
struct Filter {
    can_id: u32,
    can_mask: u32,
    extended: Option<bool>,
}

/// python-can's rule: no filters pass everything; otherwise any matching filter passes.
fn passes(filters: &Option<Vec<Filter>>, record: &CanRecord) -> bool {
    let Some(filters) = filters else {
        return true;
    };
    let (id, extended) = id_of(&record.frame);
    filters
        .iter()
        .any(|f| f.extended.is_none_or(|e| e == extended) && (f.can_id ^ id) & f.can_mask == 0)
}

/// State shared by the Python object and its task.
#[derive(Debug, Default)]
struct Shared {
    filters: RwLock<Option<Vec<Filter>>>,
    counters: Mutex<Counters>,
    /// Why the task ended, when it was not asked to.
    failure: Mutex<Option<String>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    sent: u64,
    received: u64,
    filtered: u64,
    dropped: u64,
    transport: BusStats,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Counters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(&mut c);
        }
    }
}

/// A frame for `recv`: received, or one of ours echoed back (`receive_own_messages`).
struct Inbound {
    record: CanRecord,
    own: bool,
}

enum Command {
    Send(CanRecord, SyncSender<Result<(), String>>),
    Close,
}

/// A network CAN bus for python-can: `CanLink(url, *, listen=False, serial="PYCAN-0001",
/// channel="can0", local=None, queue=65536, receive_own_messages=False)`. `url` is
/// `udp://HOST:PORT` (REMP: a dongle towards an agent, or with `listen=True` an agent),
/// `cannelloni://HOST:PORT`, `socketcand://HOST:PORT/BUS` or `multicast://GROUP:PORT`.
/// Raises `OSError` when the socket cannot be opened, `ValueError` for a bad address.
#[pyclass(module = "tether", frozen)]
pub(crate) struct CanLink {
    commands: mpsc::Sender<Command>,
    inbox: Mutex<Receiver<Inbound>>,
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    channel: Channel,
    local_addr: Option<String>,
}

/// The task: owns the bus until `Close` or a failure.
async fn drive(
    mut bus: AnyBus,
    mut commands: mpsc::Receiver<Command>,
    inbox: SyncSender<Inbound>,
    shared: Arc<Shared>,
    echo: bool,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let needs_ticks = bus.needs_ticks();
    let mut batch = Vec::with_capacity(SEND_BATCH);
    let deliver = |record: CanRecord, own: bool, shared: &Shared| {
        let keep = shared
            .filters
            .read()
            .map_or(true, |filters| passes(&filters, &record));
        if !keep {
            shared.count(|c| c.filtered += 1);
            return true;
        }
        match inbox.try_send(Inbound { record, own }) {
            Ok(()) => shared.count(|c| c.received += 1),
            Err(TrySendError::Full(_)) => shared.count(|c| c.dropped += 1),
            // Python dropped the link: nobody is left to read.
            Err(TrySendError::Disconnected(_)) => return false,
        }
        true
    };
    let failure = loop {
        tokio::select! {
            n = commands.recv_many(&mut batch, SEND_BATCH) => {
                let mut closing = n == 0;
                let mut replies = Vec::with_capacity(batch.len());
                let mut echoes = Vec::new();
                for command in batch.drain(..) {
                    match command {
                        Command::Close => closing = true,
                        Command::Send(record, reply) => {
                            let result = bus.send(&record).await.map_err(|e| e.to_string());
                            if result.is_ok() {
                                shared.count(|c| c.sent += 1);
                                if echo {
                                    echoes.push(record);
                                }
                            }
                            replies.push((reply, result));
                        }
                    }
                }
                let flushed = bus.flush().await.map_err(|e| e.to_string());
                for (reply, result) in replies {
                    let result = result.and(flushed.clone());
                    // The caller may have timed out and gone: nothing to tell then.
                    let _ = reply.send(result);
                }
                for record in echoes {
                    deliver(record, true, &shared);
                }
                if closing {
                    break None;
                }
            }
            received = bus.recv() => {
                shared.count(|c| c.transport = bus.stats());
                match received {
                    Ok(Some(record)) => {
                        if !deliver(record, false, &shared) {
                            break None;
                        }
                    }
                    Ok(None) => break Some("the peer closed the connection".to_owned()),
                    Err(e) => break Some(e.to_string()),
                }
            }
            _ = ticks.tick(), if needs_ticks => {
                // A lost keep-alive shows at the peer (it marks us offline); a socket that
                // stopped working fails the next send, which is reported to its caller.
                let _ = bus.tick().await;
            }
        }
    };
    shared.count(|c| c.transport = bus.stats());
    if let Some(reason) = failure
        && let Ok(mut f) = shared.failure.lock()
    {
        *f = Some(reason);
    }
}

fn duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| {
            Duration::try_from_secs_f64(t.max(0.0))
                .map_err(|e| PyValueError::new_err(format!("timeout {t}: {e}")))
        })
        .transpose()
}

impl CanLink {
    fn failure(&self) -> Option<String> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    fn closed_error(&self) -> PyErr {
        match self.failure() {
            Some(reason) => PyConnectionError::new_err(format!("the bus failed: {reason}")),
            None => PyConnectionError::new_err("the bus is closed"),
        }
    }
}

#[pymethods]
impl CanLink {
    #[new]
    #[pyo3(signature = (url, *, listen = false, serial = "PYCAN-0001", channel = "can0",
        local = None, queue = 65536, receive_own_messages = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &str,
        listen: bool,
        serial: &str,
        channel: &str,
        local: Option<&str>,
        queue: usize,
        receive_own_messages: bool,
    ) -> PyResult<Self> {
        let address: BusAddress = url
            .parse()
            .map_err(|e: can_io::Error| PyValueError::new_err(e.to_string()))?;
        validate_channel_name(channel)
            .map_err(|e| PyValueError::new_err(format!("channel {channel:?}: {e}")))?;
        can_io::wire::remp::validate_serial(serial)
            .map_err(|e| PyValueError::new_err(format!("serial {serial:?}: {e}")))?;
        if queue == 0 {
            return Err(PyValueError::new_err("queue must hold at least one frame"));
        }
        let local = local
            .map(|l| {
                l.parse()
                    .map_err(|e| PyValueError::new_err(format!("local {l:?}: {e}")))
            })
            .transpose()?;
        let options = OpenOptions {
            listen,
            serial: serial.to_owned(),
            channel: channel.to_owned(),
            local,
        };
        let rt = runtime()?;
        let bus = py
            .detach(|| rt.block_on(AnyBus::open(&address, &options)))
            .map_err(transport_error)?;
        let local_addr = bus.local_addr().map(|a| a.to_string());
        let (commands, command_rx) = mpsc::channel(SEND_BATCH * 4);
        let (inbox_tx, inbox) = sync_channel(queue);
        let shared = Arc::new(Shared::default());
        let task = rt.spawn(drive(
            bus,
            command_rx,
            inbox_tx,
            shared.clone(),
            receive_own_messages,
        ));
        Ok(CanLink {
            commands,
            inbox: Mutex::new(inbox),
            shared,
            task: Mutex::new(Some(task)),
            channel: Channel::from(channel),
            local_addr,
        })
    }

    /// Sends one frame and waits until it is on the wire (`timeout` seconds at most; `None`
    /// waits as long as it takes). `ts_ns` 0 means now; `channel` `None` means the link's;
    /// `is_rx` is the direction mark protocols that carry one (REMP) send: true = the frame
    /// was read from a bus (python-can's default), false = transmitted onto one.
    /// Raises `InvalidFrameError` for a frame CAN cannot carry, `TimeoutError`, and
    /// `ConnectionError` once the bus failed or was closed.
    #[pyo3(signature = (can_id, data, *, extended = false, remote = false, error = false,
        fd = false, brs = false, esi = false, dlc = 0, ts_ns = 0, channel = None, is_rx = true,
        timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        can_id: u32,
        data: &[u8],
        extended: bool,
        remote: bool,
        error: bool,
        fd: bool,
        brs: bool,
        esi: bool,
        dlc: u8,
        ts_ns: u64,
        channel: Option<&str>,
        is_rx: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let parts = FrameParts {
            id: can_id,
            extended,
            remote,
            error,
            fd,
            brs,
            esi,
            len: dlc,
            raw_dlc: 0,
        };
        let frame = build_frame(parts, data).map_err(error::can)?;
        let channel = match channel {
            Some(name) if validate_channel_name(name).is_ok() => Channel::from(name),
            _ => self.channel.clone(),
        };
        let ts = if ts_ns == 0 { now_ns() } else { ts_ns };
        let direction = if is_rx { Direction::Rx } else { Direction::Tx };
        let record = CanRecord::new(ts, channel, direction, frame);
        let timeout = duration(timeout)?;
        let (reply, answer) = sync_channel(1);
        let rt = runtime()?;
        let sent = py.detach(move || -> Result<Result<(), String>, PyErr> {
            let command = Command::Send(record, reply);
            match timeout {
                None => self
                    .commands
                    .blocking_send(command)
                    .map_err(|_| self.closed_error())?,
                Some(t) => rt
                    .block_on(tokio::time::timeout(t, self.commands.send(command)))
                    .map_err(|_| PyTimeoutError::new_err("the send queue stayed full"))?
                    .map_err(|_| self.closed_error())?,
            }
            match timeout {
                None => answer.recv().map_err(|_| self.closed_error()),
                Some(t) => answer.recv_timeout(t).map_err(|e| match e {
                    RecvTimeoutError::Timeout => {
                        PyTimeoutError::new_err("the frame was not sent in time")
                    }
                    RecvTimeoutError::Disconnected => self.closed_error(),
                }),
            }
        })?;
        sent.map_err(|reason| PyOSError::new_err(format!("sending: {reason}")))
    }

    /// The next frame, waiting `timeout` seconds at most (`None`: until one comes), as a
    /// tuple `(ts_ns, can_id, extended, remote, error, fd, brs, esi, dlc, data, channel,
    /// is_rx)` (`is_rx` false only for our own frames echoed by `receive_own_messages`);
    /// `None` on timeout. Raises `ConnectionError` once the bus failed or was
    /// closed and every queued frame was read.
    #[pyo3(signature = (timeout = None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let timeout = duration(timeout)?;
        let got = py.detach(|| {
            let inbox = self
                .inbox
                .lock()
                .map_err(|_| PyValueError::new_err("a receiver panicked"))?;
            Ok::<_, PyErr>(match timeout {
                None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => inbox.recv_timeout(t),
            })
        })?;
        let Inbound { record, own } = match got {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => return Err(self.closed_error()),
        };
        let f = &record.frame;
        let (id, extended) = id_of(f);
        let (fd, brs, esi) = fd_of(f);
        let items: [Bound<'py, PyAny>; 12] = [
            record.ts_ns.into_pyobject(py)?.into_any(),
            id.into_pyobject(py)?.into_any(),
            pyo3::types::PyBool::new(py, extended).to_owned().into_any(),
            pyo3::types::PyBool::new(py, matches!(f, CanFrame::Remote(_)))
                .to_owned()
                .into_any(),
            pyo3::types::PyBool::new(py, matches!(f, CanFrame::Error(_)))
                .to_owned()
                .into_any(),
            pyo3::types::PyBool::new(py, fd).to_owned().into_any(),
            pyo3::types::PyBool::new(py, brs).to_owned().into_any(),
            pyo3::types::PyBool::new(py, esi).to_owned().into_any(),
            f.len().into_pyobject(py)?.into_any(),
            PyBytes::new(py, f.data()).into_any(),
            record.channel.as_ref().into_pyobject(py)?.into_any(),
            pyo3::types::PyBool::new(py, !own).to_owned().into_any(),
        ];
        Ok(Some(PyTuple::new(py, items)?))
    }

    /// Sets python-can filters (`[{"can_id", "can_mask", "extended"?}, …]`, or `None` for
    /// everything), applied in Rust before frames are queued.
    #[pyo3(signature = (filters = None))]
    fn set_filters(&self, filters: Option<Vec<Bound<'_, PyDict>>>) -> PyResult<()> {
        let parsed = filters
            .filter(|f| !f.is_empty())
            .map(|list| {
                list.iter()
                    .map(|d| {
                        let get = |key: &str| -> PyResult<u32> {
                            d.get_item(key)?
                                .ok_or_else(|| {
                                    PyValueError::new_err(format!("a filter needs {key:?}"))
                                })?
                                .extract()
                        };
                        Ok(Filter {
                            can_id: get("can_id")?,
                            can_mask: get("can_mask")?,
                            extended: d
                                .get_item("extended")?
                                .map(|e| e.extract::<bool>())
                                .transpose()?,
                        })
                    })
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let mut filters = self
            .shared
            .filters
            .write()
            .map_err(|_| PyValueError::new_err("a filter update panicked"))?;
        *filters = parsed;
        Ok(())
    }

    /// Counters: `sent`, `received` (queued for `recv`), `filtered` (refused by the
    /// filters), `dropped` (the inbox was full), and the transport's `transport_dropped`
    /// (lost datagrams counted from sequence numbers, frames the protocol cannot carry) and
    /// `malformed` (datagrams or elements that did not decode).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.shared.counters.lock().map(|c| *c).unwrap_or_default();
        let d = PyDict::new(py);
        d.set_item("sent", c.sent)?;
        d.set_item("received", c.received)?;
        d.set_item("filtered", c.filtered)?;
        d.set_item("dropped", c.dropped)?;
        d.set_item("transport_dropped", c.transport.dropped)?;
        d.set_item("malformed", c.transport.malformed)?;
        Ok(d)
    }

    /// Whether the task still runs (false after `close` or a failure).
    #[getter]
    fn is_open(&self) -> bool {
        self.task
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|t| !t.is_finished()))
            .unwrap_or(false)
    }

    /// Why the bus stopped on its own (the peer closed, a socket error), or `None`.
    #[getter]
    fn failure_reason(&self) -> Option<String> {
        self.failure()
    }

    /// The bound local address of a UDP bus (`"127.0.0.1:40000"`), else `None`.
    #[getter]
    fn local_addr(&self) -> Option<String> {
        self.local_addr.clone()
    }

    /// Stops the task and closes the socket (waits up to 5 s for pending sends). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) else {
            return Ok(());
        };
        let _ = self.commands.try_send(Command::Close);
        let rt = runtime()?;
        py.detach(|| {
            rt.block_on(async {
                let mut task = task;
                if tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err() {
                    task.abort();
                }
            })
        });
        Ok(())
    }
}

impl Drop for CanLink {
    fn drop(&mut self) {
        if let Ok(Some(task)) = self.task.get_mut().map(Option::take) {
            task.abort();
        }
    }
}
