//! `tether.EventStreamParser`: sse-core's WHATWG event-stream parser, for the console
//! subscriber (`tether.console`).

use pyo3::prelude::*;
use sse_core::{EventStreamParser as Parser, ParsedItem};

/// One dispatched Server-Sent Event: `event` (`"message"` when the stream named none), `data`
/// (lines joined with LF) and `id` (the last event ID at dispatch, `""` when none).
#[pyclass(module = "tether", frozen, get_all, eq)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    event: String,
    data: String,
    id: String,
}

#[pymethods]
impl SseEvent {
    #[new]
    #[pyo3(signature = (event, data, id = String::new()))]
    fn new(event: String, data: String, id: String) -> Self {
        SseEvent { event, data, id }
    }

    fn __repr__(&self) -> String {
        format!(
            "SseEvent(event={:?}, id={:?}, data={:?})",
            self.event, self.id, self.data
        )
    }
}

/// An incremental event-stream parser following the WHATWG rules exactly (BOM, CR / LF /
/// CRLF split anywhere, comments, `retry` digits only, NUL in `id` ignored, an unfinished last
/// event dropped). Feed it chunks as they arrive.
#[pyclass(module = "tether")]
#[derive(Debug, Default)]
pub(crate) struct EventStreamParser {
    inner: Parser,
    retry_ms: Option<u64>,
}

#[pymethods]
impl EventStreamParser {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Parses one chunk; returns the events it completed, in order.
    fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut items = Vec::new();
        self.inner.feed(chunk, &mut items);
        let mut events = Vec::with_capacity(items.len());
        for item in items {
            match item {
                ParsedItem::Event(e) => events.push(SseEvent {
                    event: e.event_type,
                    data: e.data,
                    id: e.last_event_id,
                }),
                ParsedItem::Retry(ms) => self.retry_ms = Some(ms),
            }
        }
        events
    }

    /// The last event ID (what a reconnecting client sends as `Last-Event-ID`).
    #[getter]
    fn last_event_id(&self) -> &str {
        self.inner.last_event_id()
    }

    #[setter]
    fn set_last_event_id(&mut self, id: &str) {
        self.inner.set_last_event_id(id);
    }

    /// The reconnection time the stream asked for with `retry:` (ms), or `None`.
    #[getter]
    fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Starts a new connection: drops an unfinished line or event, keeps the last event ID.
    fn reconnect(&mut self) {
        self.inner.reconnect();
    }
}
