//! The remote's routes.
//!
//! * `GET /ws/telemetry/upload` (upgrade; `Authorization: Bearer <credential>`).
//! * `GET /api/v1/telemetry/vehicles` — `{"vehicles": [{"id", "last_seq", "records",
//!   "last_ts_ms", "connected", "status"}]}`: every vehicle with records or a reported status;
//!   `status` is the latest uplink status the vehicle sent (`null` if none, see
//!   [`super::status`]).
//! * `GET /api/v1/telemetry/vehicles/{id}` — one vehicle's record as in the list, plus
//!   `status_history` (oldest first); 404 for a vehicle with neither records nor a status.
//! * `GET /api/v1/telemetry/vehicles/{id}/records?after_seq=&limit=&from_ts_ms=&to_ts_ms=` —
//!   `{"items": [{"seq", "ts_ms", "record"}], "next_after_seq"}` in seq order.
//! * `GET /api/v1/telemetry/vehicles/{id}/stream?after_seq=` — SSE `record` events: the stored
//!   records after `after_seq` (or `Last-Event-ID`), then live ones.
//! * `GET /metrics`, `GET /healthz` (standalone only).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use relay_core::uplink::{InboxSource, UplinkInbox as _};
use tokio::sync::broadcast;

use super::{Inner, Remote};
use crate::http::{bearer, error, json_bytes, only_params, param, unauthorized};
use crate::record::push_item;
use crate::vehicle::LiveRecord;

const MAX_LIMIT: u64 = 10_000;

/// `/ws/telemetry/upload`.
pub fn upload_router(remote: Remote) -> Router {
    Router::new()
        .route("/ws/telemetry/upload", get(upload))
        .with_state(remote)
}

/// The read API.
pub fn read_router(remote: Remote) -> Router {
    Router::new()
        .route("/api/v1/telemetry/vehicles", get(vehicles))
        .route("/api/v1/telemetry/vehicles/{id}", get(vehicle))
        .route("/api/v1/telemetry/vehicles/{id}/records", get(records))
        .route("/api/v1/telemetry/vehicles/{id}/stream", get(stream))
        .with_state(remote)
}

pub(super) fn ops_router(remote: Remote) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(r): State<Remote>| async move { crate::http::metrics(&r.inner.registry) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(remote)
}

async fn upload(
    State(remote): State<Remote>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let vehicle = match bearer(&headers) {
        Some(token) => remote.inner.auth.vehicle(token).await,
        None => None,
    };
    let Some(vehicle) = vehicle else {
        remote.inner.metrics.auth_refused.inc();
        return unauthorized();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let inner = Arc::clone(&remote.inner);
    ws.read_buffer_size(tether_runtime::ws::WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| super::conn::serve(inner, vehicle, socket))
}

async fn may_read(inner: &Inner, headers: &HeaderMap, vehicle: Option<&str>) -> bool {
    match bearer(headers) {
        Some(token) => inner.auth.may_read(token, vehicle).await,
        None => false,
    }
}

fn check_vehicle_id(id: &str) -> Result<(), crate::http::BadRequest> {
    if id.is_empty()
        || id.len() > relay_core::uplink::MAX_SOURCE_LEN
        || id.chars().any(char::is_control)
    {
        return Err(crate::http::BadRequest("bad vehicle id".into()));
    }
    Ok(())
}

fn internal(e: anyhow::Error) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("{e:#}"),
    )
}

/// One vehicle's entry of the list: what the inbox holds (`source`, if anything) and what
/// the vehicle last reported.
fn vehicle_entry(inner: &Inner, id: &str, source: Option<&InboxSource>) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "last_seq": source.map_or(0, |s| s.acked),
        "records": source.map_or(0, |s| s.records),
        "last_ts_ms": source.map(|s| s.last_ts_ms),
        "connected": inner.connected(id),
        "status": inner.statuses.latest(id),
    })
}

/// The inbox's sources and the vehicles with a status but no record yet, by id.
async fn known_vehicles(
    inner: &Arc<Inner>,
) -> anyhow::Result<BTreeMap<String, Option<InboxSource>>> {
    let mut known: BTreeMap<String, Option<InboxSource>> = inner
        .sources()
        .await?
        .into_iter()
        .map(|s| (s.source.clone(), Some(s)))
        .collect();
    for id in inner.statuses.vehicles() {
        known.entry(id).or_insert(None);
    }
    Ok(known)
}

async fn vehicles(State(remote): State<Remote>, headers: HeaderMap) -> Response {
    if !may_read(&remote.inner, &headers, None).await {
        return unauthorized();
    }
    match known_vehicles(&remote.inner).await {
        Ok(known) => {
            let mut list = Vec::with_capacity(known.len());
            for (id, source) in known {
                if may_read(&remote.inner, &headers, Some(&id)).await {
                    list.push(vehicle_entry(&remote.inner, &id, source.as_ref()));
                }
            }
            axum::Json(serde_json::json!({ "vehicles": list })).into_response()
        }
        Err(e) => internal(e),
    }
}

/// A request about one vehicle (`/api/v1/telemetry/vehicles/{id}…`) that the caller may read
/// (else 401) and whose id is well-formed (else 400).
struct VehicleRead {
    remote: Remote,
    id: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
}

impl FromRequestParts<Remote> for VehicleRead {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, remote: &Remote) -> Result<Self, Response> {
        let (Path(id), Query(query)) =
            <(Path<String>, Query<HashMap<String, String>>)>::from_request_parts(parts, remote)
                .await?;
        if !may_read(&remote.inner, &parts.headers, Some(&id)).await {
            return Err(unauthorized());
        }
        check_vehicle_id(&id).map_err(IntoResponse::into_response)?;
        Ok(VehicleRead {
            remote: remote.clone(),
            id,
            query,
            headers: parts.headers.clone(),
        })
    }
}

async fn vehicle(VehicleRead { remote, id, .. }: VehicleRead) -> Response {
    let mut known = match known_vehicles(&remote.inner).await {
        Ok(known) => known,
        Err(e) => return internal(e),
    };
    let Some(source) = known.remove(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such vehicle");
    };
    let mut entry = vehicle_entry(&remote.inner, &id, source.as_ref());
    entry["status_history"] = serde_json::json!(remote.inner.statuses.history(&id));
    axum::Json(entry).into_response()
}

async fn records(
    VehicleRead {
        remote, id, query, ..
    }: VehicleRead,
) -> Response {
    let parsed = (|| {
        only_params(&query, &["after_seq", "limit", "from_ts_ms", "to_ts_ms"])?;
        let after = param(&query, "after_seq", i64::MAX as u64)?.unwrap_or(0);
        let limit = param(&query, "limit", MAX_LIMIT)?.unwrap_or(1000).max(1) as usize;
        let from = param(&query, "from_ts_ms", i64::MAX as u64)?.unwrap_or(0);
        let to = param(&query, "to_ts_ms", i64::MAX as u64)?.unwrap_or(u64::MAX);
        Ok::<_, crate::http::BadRequest>((after, limit, from, to))
    })();
    let (after, limit, from, to) = match parsed {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    let source = id.clone();
    let items = match remote
        .inner
        .read(move |r| r.read_between(&source, after, from, to, limit))
        .await
    {
        Ok(items) => items,
        Err(e) => return internal(e),
    };
    let mut out = Vec::with_capacity(64 + items.len() * 200);
    out.extend_from_slice(b"{\"items\":[");
    for (i, r) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_item(&mut out, r.seq, r.ts_ms, "", &r.payload);
    }
    out.extend_from_slice(b"],\"next_after_seq\":");
    match items.last().filter(|_| items.len() == limit) {
        Some(last) => out.extend_from_slice(last.seq.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    json_bytes(out)
}

struct Tail {
    inner: Arc<Inner>,
    vehicle: String,
    cursor: u64,
    live: broadcast::Receiver<Arc<LiveRecord>>,
    history_done: bool,
    buffered: VecDeque<axum::response::sse::Event>,
}

fn item_event(seq: u64, ts_ms: u64, payload: &[u8]) -> axum::response::sse::Event {
    let mut data = Vec::with_capacity(payload.len() + 48);
    push_item(&mut data, seq, ts_ms, "", payload);
    crate::http::record_event(seq, &data)
}

async fn next_event(mut t: Tail) -> Option<(axum::response::sse::Event, Tail)> {
    loop {
        if let Some(event) = t.buffered.pop_front() {
            return Some((event, t));
        }
        if !t.history_done {
            let (vehicle, after) = (t.vehicle.clone(), t.cursor);
            let page = t
                .inner
                .read(move |r| r.read(&vehicle, after, 1000))
                .await
                .ok()?;
            if page.is_empty() {
                t.history_done = true;
            }
            for r in page {
                t.cursor = r.seq;
                t.buffered.push_back(item_event(r.seq, r.ts_ms, &r.payload));
            }
            continue;
        }
        match t.live.recv().await {
            Ok(r) if r.seq > t.cursor => {
                t.cursor = r.seq;
                return Some((item_event(r.seq, r.ts_ms, &r.payload), t));
            }
            Ok(_) => {}
            // Too slow for the live stream: read the missed records from the store.
            Err(broadcast::error::RecvError::Lagged(_)) => t.history_done = false,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn stream(
    VehicleRead {
        remote,
        id,
        query,
        headers,
    }: VehicleRead,
) -> Response {
    let parsed = (|| {
        only_params(&query, &["after_seq"])?;
        let after = param(&query, "after_seq", i64::MAX as u64)?;
        let last_event = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok::<_, crate::http::BadRequest>(last_event.or(after))
    })();
    let after = match parsed {
        Ok(a) => a,
        Err(bad) => return bad.into_response(),
    };
    // Subscribe before reading history, so nothing committed meanwhile is missed.
    let live = remote.inner.live(&id).subscribe();
    let cursor = match after {
        Some(a) => a,
        // Without a cursor: only new records.
        None => match remote.inner.acked(&id).await {
            Ok(a) => a,
            Err(e) => return internal(anyhow::anyhow!(e)),
        },
    };
    let tail = Tail {
        inner: Arc::clone(&remote.inner),
        vehicle: id,
        cursor,
        live,
        history_done: false,
        buffered: VecDeque::new(),
    };
    crate::http::sse(futures::stream::unfold(tail, next_event))
}
