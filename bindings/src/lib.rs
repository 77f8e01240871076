//! # tether (Python)
//!
//! The native module `tether._tether` of the Python package `tether` (bindings/python/tether/,
//! which re-exports it and adds the python-can interface and the server clients in Python),
//! for Python services and tools around the Tether data plane. It exposes the codecs of the
//! Rust crates, with the same validation:
//!
//! * [`Frame`](frame::Frame) — one timestamped CAN, CAN FD or remote frame (can-io's
//!   `CanRecord`), range-checked on construction.
//! * `parse_log` / `format_log` — candump, Vector ASC and JSON-lines logs (can-io `formats`).
//! * `read_log` / `iter_log` / `write_log` and [`FrameTable`](table::FrameTable) — logs as
//!   NumPy columns built without the GIL and without a Python object per frame ([`table`]).
//! * `RempSender` / `RempReceiver` — the REMP datagrams simulated dongles and `tether agent`
//!   exchange (can-io `wire::remp`), so a Python program can act as a dongle or listen to one.
//! * `encode_message` / `decode_message`, `Frame.to_relay` / `Frame.from_relay` — the
//!   `/ws/data` protocol of relay-core (docs/protocols/data-plane.md), checked as the server
//!   checks it, so a Python program can be a data-plane agent.
//! * `validate_message` — metering-core's validation of a queued usage record, session event
//!   or quota request, as `tether agent` applies it before forwarding (so a producer can check
//!   a message before pushing it).
//! * `EventStreamParser` — sse-core's WHATWG event-stream parser, for the console subscriber.
//! * `IsoTpEndpoint` / `UdsTester` and the UDS decoders ([`diag`]) — can-io's sans-IO ISO-TP
//!   and UDS tester, driven over any python-can bus by `tether.isotp` and `tether.uds`.
//! * [`CanLink`](bus::CanLink) — one network CAN bus (can-io's `AnyBus`) on a background
//!   thread, under `tether.can_bus.TetherBus` (python-can's `tether` interface).
//!
//! Errors in input are Python exceptions under `tether.TetherError`, one per kind of failure
//! ([`error`]); I/O errors are Python's `OSError` family. Only `CanLink` holds threads and
//! sockets (one shared I/O thread for all links) and the log functions files; nothing here
//! relays or buffers durably, and nothing talks to Redis or the control plane.

mod bus;
mod diag;
mod error;
mod frame;
mod logs;
mod metering;
mod protocol;
mod remp;
mod sse;
mod table;

use pyo3::prelude::*;

/// A `bytes` or `str` argument named `name`: its bytes, and whether it was text.
pub(crate) fn bytes_or_str<'a>(
    arg: &'a Bound<'_, PyAny>,
    name: &str,
) -> PyResult<(std::borrow::Cow<'a, [u8]>, bool)> {
    if let Ok(b) = arg.cast::<pyo3::types::PyBytes>() {
        Ok((std::borrow::Cow::Borrowed(b.as_bytes()), false))
    } else if let Ok(s) = arg.extract::<String>() {
        Ok((std::borrow::Cow::Owned(s.into_bytes()), true))
    } else {
        Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{name} must be bytes or str"
        )))
    }
}

/// The native module `tether._tether`; the package `tether` (bindings/python/tether/)
/// re-exports it.
#[pymodule]
mod _tether {
    #[pymodule_export]
    use crate::{
        bus::CanLink,
        diag::{
            IsoTpEndpoint, IsoTpEventInfo, UdsEventInfo, UdsTester, decode_did_response,
            decode_dtc_response, nrc_name,
        },
        error::{
            InvalidFrameError, InvalidMessageError, IsoTpTransferError, LogFormatError,
            MalformedError, ProtocolError, TetherError, TruncatedError, UdsProtocolError,
            UnsupportedError,
        },
        frame::Frame,
        logs::{ParsedLog, format_log, parse_log},
        metering::validate_message,
        protocol::{decode_message, encode_message},
        remp::{RempReceiver, RempSender},
        sse::{EventStreamParser, SseEvent},
        table::FrameTable,
        table::io::{LogBatches, iter_log, read_log, write_log},
    };
    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
