//! # tether (Python)
//!
//! The PyO3 module `tether`, for Python services and tools around the Tether data plane. It
//! exposes the pure codecs of the Rust crates, with the same validation:
//!
//! * [`Frame`](frame::Frame) — one timestamped CAN, CAN FD or remote frame (can-io's
//!   `CanRecord`), range-checked on construction.
//! * `parse_log` / `format_log` — candump, Vector ASC and JSON-lines logs (can-io `formats`).
//! * `RempSender` / `RempReceiver` — the REMP datagrams simulated dongles and `tether agent`
//!   exchange (can-io `wire::remp`), so a Python program can act as a dongle or listen to one.
//! * `encode_message` / `decode_message`, `Frame.to_relay` / `Frame.from_relay` — the
//!   `/ws/data` protocol of relay-core (docs/protocols/data-plane.md), checked as the server
//!   checks it, so a Python program can be a data-plane agent.
//! * `validate_message` — metering-core's validation of a queued usage record, session event
//!   or quota request, as `tether agent` applies it before forwarding (so a producer can check
//!   a message before pushing it).
//!
//! Errors are Python exceptions under `tether.TetherError`, one per kind of failure
//! ([`error`]). The module holds no threads, sockets or files: it does not relay, buffer or
//! send anything, and it does not talk to Redis or the control plane.

mod bus;
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
fn _tether(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    error::register(m)?;
    m.add_class::<frame::Frame>()?;
    m.add_class::<logs::ParsedLog>()?;
    m.add_function(wrap_pyfunction!(logs::parse_log, m)?)?;
    m.add_function(wrap_pyfunction!(logs::format_log, m)?)?;
    m.add_class::<table::FrameTable>()?;
    m.add_class::<table::io::LogBatches>()?;
    m.add_function(wrap_pyfunction!(table::io::read_log, m)?)?;
    m.add_function(wrap_pyfunction!(table::io::iter_log, m)?)?;
    m.add_function(wrap_pyfunction!(table::io::write_log, m)?)?;
    m.add_class::<remp::RempSender>()?;
    m.add_class::<remp::RempReceiver>()?;
    m.add_function(wrap_pyfunction!(protocol::encode_message, m)?)?;
    m.add_function(wrap_pyfunction!(protocol::decode_message, m)?)?;
    m.add_function(wrap_pyfunction!(metering::validate_message, m)?)?;
    m.add_class::<bus::CanLink>()?;
    m.add_class::<sse::EventStreamParser>()?;
    m.add_class::<sse::SseEvent>()?;
    Ok(())
}
