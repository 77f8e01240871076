//! HTTP plumbing both roles share: JSON errors, query parameters, Bearer tokens, SSE of
//! records, `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use prometheus_client::registry::Registry;

/// `{"error": {"code", "message"}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

/// A 400 `bad_request`.
pub fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A 401 `unauthorized`.
pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid Authorization: Bearer credential is required",
    )
}

/// A JSON body already encoded.
pub fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(body),
    )
        .into_response()
}

/// The Bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Constant-time comparison of two secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// An optional unsigned query parameter, at most `max`.
pub fn param(
    query: &HashMap<String, String>,
    name: &str,
    max: u64,
) -> Result<Option<u64>, Response> {
    match query.get(name) {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(v) if v <= max => Ok(Some(v)),
            _ => Err(bad_request(format!(
                "{name} must be an integer between 0 and {max}, got {text:?}"
            ))),
        },
    }
}

/// Refuses query parameters other than `allowed`.
pub fn only_params(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Response> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad_request(format!(
            "unknown query parameter {k:?} (expected {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A `record` event: `id` = seq, data = one item JSON.
pub fn record_event(seq: u64, data: &[u8]) -> Event {
    Event::default()
        .event("record")
        .id(seq.to_string())
        .data(String::from_utf8_lossy(data))
}

/// A `lagged` event: the client was too slow and `missed` records were skipped (read them
/// with the paging API).
pub fn lagged_event(missed: u64) -> Event {
    Event::default()
        .event("lagged")
        .data(format!("{{\"missed\":{missed}}}"))
}

/// An SSE response of `events`.
pub fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Response {
    use futures::StreamExt;
    let events = events.map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// The OpenMetrics text of `registry`.
pub fn metrics(registry: &Arc<Registry>) -> Response {
    match tether_runtime::metrics::encode_text(registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                tether_runtime::metrics::OPENMETRICS_CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics encoding failed",
        ),
    }
}
