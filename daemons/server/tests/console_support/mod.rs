//! Shared helpers of the `console_*` tests: an SSE client over reqwest that parses with
//! sse-core's WHATWG parser, and ways to make events happen.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sse_core::parser::{EventStreamParser, ParsedEvent, ParsedItem};

use crate::server_support::{TestResult, TestServer};

/// Longest wait for one event; generous, since tests must not depend on speed.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// An open event stream.
pub struct Events {
    response: reqwest::Response,
    parser: EventStreamParser,
    pending: VecDeque<ParsedEvent>,
    pub retry: Option<u64>,
}

impl Events {
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

/// Opens `path` with optional bearer token and `Last-Event-ID`; returns the status and, for a
/// 200, the stream (else the JSON error body).
pub async fn open(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> TestResult<Result<Events, (StatusCode, Value)>> {
    let mut request = server.client.get(format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await?;
    let status = response.status();
    if status != StatusCode::OK {
        let (status, body) = crate::server_support::read(response).await?;
        return Ok(Err((status, body)));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(content_type, "text/event-stream");
    Ok(Ok(Events {
        response,
        parser: EventStreamParser::new(),
        pending: VecDeque::new(),
        retry: None,
    }))
}

/// Opens a stream that must answer 200.
pub async fn subscribe(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> TestResult<Events> {
    open(server, path, token, last_event_id)
        .await?
        .map_err(|(status, body)| format!("{path}: {status} {body}").into())
}

/// [`subscribe`] to a dongle's console with a user token, from the start.
pub async fn subscribe_dongle(
    server: &TestServer,
    token: &str,
    dongle: &str,
) -> TestResult<Events> {
    let path = format!("/api/v1/streams/dongles/{dongle}/console");
    subscribe(server, &path, Some(token), None).await
}

/// [`subscribe`] to a group's console with a user token, from the start.
pub async fn subscribe_group(server: &TestServer, token: &str, group: &str) -> TestResult<Events> {
    let path = format!("/api/v1/streams/groups/{group}/console");
    subscribe(server, &path, Some(token), None).await
}

/// The data of an event as JSON.
pub fn json(event: &ParsedEvent) -> TestResult<Value> {
    Ok(serde_json::from_str(&event.data)?)
}

/// A relayed frame as the data plane would report it.
pub fn frame(can_id: u32, data_hex: &str) -> can_io::wire::relay_json::CanRelayFrame {
    let text = format!(
        r#"{{"groupId":"g","direction":"rx","ts":1700000000000000000,"canId":{can_id},"isExtended":false,"dlc":{},"dataHex":"{data_hex}","channel":"can0"}}"#,
        data_hex.len() / 2
    );
    match serde_json::from_str(&text) {
        Ok(frame) => frame,
        Err(err) => panic!("test frame {text} is invalid: {err}"),
    }
}

/// A group of the two dongles, returned as its id.
pub async fn group(server: &TestServer, token: &str, a: &str, b: &str) -> TestResult<String> {
    let (status, body) = server
        .post(
            "/api/v1/groups",
            token,
            serde_json::json!({ "name": "pair", "dongle_a": a, "dongle_b": b }),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    crate::server_support::text(&body, "id")
}

/// Polls `/metrics` until `check` accepts the text.
pub async fn eventually_metrics(
    server: &TestServer,
    check: impl Fn(&str) -> bool,
) -> TestResult<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = server
            .client
            .get(format!("{}/metrics", server.base))
            .send()
            .await?
            .text()
            .await?;
        if check(&text) {
            return Ok(text);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("metrics never matched:\n{text}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric line `name value`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
