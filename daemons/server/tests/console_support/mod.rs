//! Shared helpers of the `console_*` tests: the console streams through the test kit's SSE
//! client (sse-core's WHATWG parser), and ways to make events happen.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sse_core::events::LogLevel;
use tether_server::console::ConsoleStream;
pub use tether_testkit::metrics::metric;
pub use tether_testkit::sse::{EVENT_TIMEOUT, Events, json};

use crate::server_support::{TestResult, TestServer};

/// Opens `path` with optional bearer token and `Last-Event-ID`; returns the status and, for a
/// 200, the stream (else the JSON error body).
pub async fn open(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> TestResult<Result<Events, (StatusCode, Value)>> {
    Events::open(&server.client, &server.url(path), token, last_event_id).await
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

/// Publishes an `info` log line without fields on the server's console stream `scope`.
pub fn log_info(server: &TestServer, scope: ConsoleStream, message: impl Into<String>) {
    server
        .server
        .state()
        .console()
        .log(scope, LogLevel::Info, message.into(), Value::Null);
}

/// A group "pair" of the two dongles, returned as its id.
pub async fn group(server: &TestServer, token: &str, a: &str, b: &str) -> TestResult<String> {
    server.create_group(token, "pair", a, b).await
}

/// Polls `/metrics` until `check` accepts the text.
pub async fn eventually_metrics(
    server: &TestServer,
    check: impl Fn(&str) -> bool,
) -> TestResult<String> {
    let last = std::cell::RefCell::new(String::new());
    let outcome = tether_testkit::eventually(Duration::from_secs(20), "metrics", || async {
        let text = server.api.metrics().await.unwrap_or_default();
        let matched = check(&text);
        *last.borrow_mut() = text.clone();
        matched.then_some(text)
    })
    .await;
    outcome.map_err(|_| format!("metrics never matched:\n{}", last.borrow()).into())
}
