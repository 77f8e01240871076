//! `tether.encode_message` / `tether.decode_message`: the `/ws/data` protocol of relay-core.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use relay_core::protocol::{self, Encoding};

use crate::error;

fn encoding_by_name(name: &str) -> PyResult<Encoding> {
    match name {
        "json" => Ok(Encoding::Json),
        "msgpack" => Ok(Encoding::Msgpack),
        other => Err(PyValueError::new_err(format!(
            "encoding must be \"json\" or \"msgpack\", not {other:?}"
        ))),
    }
}

/// Encodes a data-plane message (a dict as in docs/protocols/data-plane.md, with its `type`)
/// in `encoding` (`"json"`, for text WebSocket messages and the handshake, or `"msgpack"`, for
/// binary ones). The message is checked as a receiver would check it: a message the server
/// would refuse raises `ProtocolError` instead of being encoded.
#[pyfunction]
#[pyo3(signature = (message, encoding = "json"))]
pub(crate) fn encode_message<'py>(
    py: Python<'py>,
    message: &Bound<'py, PyAny>,
    encoding: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let encoding = encoding_by_name(encoding)?;
    let json = to_json(message)?;
    // Through the receivers' decoder: the same checks, the same error texts.
    let message = protocol::decode(&json, Encoding::Json).map_err(error::relay)?;
    let bytes = protocol::encode(&message, encoding).map_err(error::relay)?;
    Ok(PyBytes::new(py, &bytes))
}

/// `value` as JSON bytes, by Python's `json` module (which bounds nesting with a
/// `RecursionError`, where a native walk of a deeply nested dict would overflow the stack).
pub(crate) fn to_json(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let text = value
        .py()
        .import("json")?
        .call_method1("dumps", (value,))?
        .extract::<String>()?;
    Ok(text.into_bytes())
}

/// Decodes and checks one data-plane message into a dict. `data` is a `str` (a text
/// WebSocket message: JSON) or `bytes` (binary: MessagePack), unless `encoding` says otherwise.
/// Raises `ProtocolError` for anything the protocol refuses (unknown `type`, wrong field
/// types, frames that CAN cannot carry, too large).
#[pyfunction]
#[pyo3(signature = (data, encoding = None))]
pub(crate) fn decode_message<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    encoding: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let (bytes, text) = crate::bytes_or_str(data, "data")?;
    let default = if text {
        Encoding::Json
    } else {
        Encoding::Msgpack
    };
    let encoding = encoding.map_or(Ok(default), encoding_by_name)?;
    let message = protocol::decode(&bytes, encoding).map_err(error::relay)?;
    Ok(pythonize::pythonize(py, &message)?)
}
