//! `tether.validate_message`: metering-core's validation of a queued message.

use metering_core::message::{QueueKind, Route, validate};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error;

/// Validates a message as `tether agent` does before forwarding it from `queue`
/// (`"usage_records"`, `"session_lifecycle"` or `"quota_refresh"`). `raw` is the JSON as it
/// would be pushed (`bytes` or `str`). Returns a dict: `route` (`"usage_records"`,
/// `"session_start"`, `"session_complete"` or `"quota_refresh"`), `session_id`, `key` (the
/// idempotency key the control plane deduplicates on) and `body` (the message with the key
/// filled in). Raises `InvalidMessageError` with the reason the agent would dead-letter it.
#[pyfunction]
pub(crate) fn validate_message<'py>(
    py: Python<'py>,
    queue: &str,
    raw: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let queue = QueueKind::from_name(queue).ok_or_else(|| {
        PyValueError::new_err(format!(
            "queue must be \"usage_records\", \"session_lifecycle\" or \"quota_refresh\", not {queue:?}"
        ))
    })?;
    let (raw, _) = crate::bytes_or_str(raw, "raw")?;
    let valid = validate(queue, &raw).map_err(error::metering)?;
    let route = match valid.route {
        Route::UsageRecords => "usage_records",
        Route::SessionStart => "session_start",
        Route::SessionComplete => "session_complete",
        Route::QuotaRefresh => "quota_refresh",
    };
    let out = PyDict::new(py);
    out.set_item("route", route)?;
    out.set_item("session_id", valid.session_id)?;
    out.set_item("key", valid.key)?;
    out.set_item(
        "body",
        pythonize::pythonize(py, &serde_json::Value::Object(valid.body))?,
    )?;
    Ok(out)
}
