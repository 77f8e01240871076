//! The vehicle's dashboard API.
//!
//! * `GET /api/v1/telemetry/recent?seconds=N&before=SEQ&limit=L` — stored records taken in the
//!   last `N` seconds (`N` ≤ `DASHBOARD_RETENTION_S`, default all of it), newest first, `L`
//!   per page (default 100, at most 1000); `next_before` pages back.
//! * `GET /api/v1/telemetry/status` — [`super::VehicleStatus`].
//! * `GET /api/v1/telemetry/stream` — SSE `record` events of new records.
//! * `GET /metrics`, `GET /healthz`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::LiveRecord;
use super::driver::{Request, wall_ms};
use crate::http::{error, json_bytes, only_params, param};
use crate::record::push_item;

#[derive(Clone)]
pub(crate) struct VehicleApi {
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) live: broadcast::Sender<Arc<LiveRecord>>,
    pub(crate) registry: Arc<prometheus_client::registry::Registry>,
    pub(crate) retention_s: u64,
}

pub(crate) fn router(api: VehicleApi) -> Router {
    Router::new()
        .route("/api/v1/telemetry/recent", get(recent))
        .route("/api/v1/telemetry/status", get(status))
        .route("/api/v1/telemetry/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(api)
}

fn stopped() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the collector is stopping",
    )
}

async fn recent(
    State(api): State<VehicleApi>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let parsed = (|| {
        only_params(&query, &["seconds", "before", "limit"])?;
        let seconds = param(&query, "seconds", api.retention_s)?.unwrap_or(api.retention_s);
        let before = param(&query, "before", i64::MAX as u64)?;
        let limit = param(&query, "limit", 1000)?.unwrap_or(100).max(1) as usize;
        Ok::<_, Response>((seconds, before, limit))
    })();
    let (seconds, before, limit) = match parsed {
        Ok(p) => p,
        Err(response) => return response,
    };
    let (reply, answer) = oneshot::channel();
    let request = Request::Recent {
        since_ts_ms: wall_ms().saturating_sub(seconds * 1000),
        before,
        limit,
        reply,
    };
    if api.requests.send(request).await.is_err() {
        return stopped();
    }
    let page = match answer.await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
        }
        Err(_) => return stopped(),
    };
    let mut out = Vec::with_capacity(64 + page.items.len() * 256);
    out.extend_from_slice(b"{\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let extra = if item.uplinked {
            "\"uplinked\":true,"
        } else {
            "\"uplinked\":false,"
        };
        push_item(&mut out, item.seq, item.ts_ms, extra, &item.payload);
    }
    out.extend_from_slice(b"],\"next_before\":");
    match page.next_before {
        Some(seq) => out.extend_from_slice(seq.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    json_bytes(out)
}

async fn status(State(api): State<VehicleApi>) -> Response {
    let (reply, answer) = oneshot::channel();
    if api.requests.send(Request::Status { reply }).await.is_err() {
        return stopped();
    }
    match answer.await {
        Ok(status) => axum::Json(status).into_response(),
        Err(_) => stopped(),
    }
}

async fn stream(State(api): State<VehicleApi>) -> Response {
    let live = BroadcastStream::new(api.live.subscribe()).map(|r| match r {
        Ok(record) => {
            let mut data = Vec::with_capacity(record.payload.len() + 48);
            push_item(&mut data, record.seq, record.ts_ms, "", &record.payload);
            crate::http::record_event(record.seq, &data)
        }
        // A slow client is told what it missed; it can page those records with /recent.
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
            crate::http::lagged_event(n)
        }
    });
    crate::http::sse(live)
}

async fn metrics(State(api): State<VehicleApi>) -> Response {
    crate::http::metrics(&api.registry)
}
