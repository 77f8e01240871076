//! Server-Sent Events clients parsing with sse-core's WHATWG parser: [`Events`] is read by
//! the test itself, [`SseReader`] in the background (reconnecting with `Last-Event-ID`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sse_core::parser::{EventStreamParser, ParsedEvent, ParsedItem};

use crate::TestResult;

/// Longest wait for one event; generous, since tests must not depend on speed.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// An open event stream.
pub struct Events {
    response: reqwest::Response,
    parser: EventStreamParser,
    pending: VecDeque<ParsedEvent>,
    /// The last `retry:` field seen.
    pub retry: Option<u64>,
}

impl Events {
    /// Opens `url` with an optional bearer token and `Last-Event-ID`; returns the stream for a
    /// 200 (asserting `text/event-stream`), else the status and the JSON error body (read
    /// by [`crate::rest::read`], which asserts its shape).
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> TestResult<Result<Events, (StatusCode, Value)>> {
        let mut request = client.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await?;
        if response.status() != StatusCode::OK {
            return Ok(Err(crate::rest::read(response).await?));
        }
        assert_eq!(crate::rest::content_type(&response), "text/event-stream");
        Ok(Ok(Events {
            response,
            parser: EventStreamParser::new(),
            pending: VecDeque::new(),
            retry: None,
        }))
    }

    /// The next event, failing after [`EVENT_TIMEOUT`] or when the stream ends.
    pub async fn next(&mut self) -> TestResult<ParsedEvent> {
        match tokio::time::timeout(EVENT_TIMEOUT, self.next_or_end()).await {
            Ok(Ok(Some(event))) => Ok(event),
            Ok(Ok(None)) => Err("the stream ended".into()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err("no event within the timeout".into()),
        }
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next_or_end(&mut self) -> TestResult<Option<ParsedEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let Some(chunk) = self.response.chunk().await? else {
                return Ok(None);
            };
            let mut items = Vec::new();
            self.parser.feed(&chunk, &mut items);
            for item in items {
                match item {
                    ParsedItem::Event(event) => self.pending.push_back(event),
                    ParsedItem::Retry(ms) => self.retry = Some(ms),
                }
            }
        }
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> TestResult<Vec<ParsedEvent>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await?);
        }
        Ok(out)
    }

    /// The next event of type `event_type`, skipping others.
    pub async fn next_of(&mut self, event_type: &str) -> TestResult<ParsedEvent> {
        loop {
            let event = self.next().await?;
            if event.event_type == event_type {
                return Ok(event);
            }
        }
    }
}

/// The data of an event as JSON.
pub fn json(event: &ParsedEvent) -> TestResult<Value> {
    Ok(serde_json::from_str(&event.data)?)
}

/// An event stream read in the background: every event lands in `events`.
pub struct SseReader {
    /// Every event received so far, in order.
    pub events: Arc<Mutex<Vec<ParsedEvent>>>,
    /// The status of the last connection attempt.
    pub status: Arc<Mutex<Option<StatusCode>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SseReader {
    /// Opens `url` with a bearer token (or none) and reads events until dropped. Reconnects
    /// with `Last-Event-ID` when the stream ends (the server restarting).
    pub fn open(url: String, token: Option<String>) -> SseReader {
        let events = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(None));
        let (ev, st) = (Arc::clone(&events), Arc::clone(&status));
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut parser = EventStreamParser::new();
            loop {
                let mut request = client.get(&url).header("Accept", "text/event-stream");
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                if !parser.last_event_id().is_empty() {
                    request = request.header("Last-Event-ID", parser.last_event_id());
                }
                if let Ok(mut response) = request.send().await {
                    *st.lock().unwrap_or_else(PoisonError::into_inner) = Some(response.status());
                    if response.status() == StatusCode::OK {
                        let mut items = Vec::new();
                        while let Ok(Some(chunk)) = response.chunk().await {
                            parser.feed(&chunk, &mut items);
                            let mut sink = ev.lock().unwrap_or_else(PoisonError::into_inner);
                            for item in items.drain(..) {
                                if let ParsedItem::Event(event) = item {
                                    sink.push(event);
                                }
                            }
                        }
                        parser.reconnect();
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        SseReader {
            events,
            status,
            task,
        }
    }

    /// The events of a type, parsed as JSON.
    pub fn of_type(&self, event_type: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| e.event_type == event_type)
            .filter_map(|e| serde_json::from_str(&e.data).ok())
            .collect()
    }

    /// The status of the last connection attempt, `None` before the first answer.
    pub fn last_status(&self) -> Option<StatusCode> {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SseReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
