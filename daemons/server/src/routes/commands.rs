//! `/api/v1/commands` (vehicle commands), their WebSocket stream `/ws/responses/{id}`, and the
//! SOVD-style resources `/api/v1/vehicles/{id}/components/{ecu}/faults` and `…/data/{did}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade, close_code,
};
use axum::extract::{FromRequestParts, OriginalUri, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use can_io::uds::CommandParamsError;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::found;
use crate::commands::bus::BusEvent;
use crate::commands::{Commands, SubmitError};
use crate::http::cors::OriginPolicy;
use crate::http::{ApiError, ApiJson, IdPath, UserAuth, user_from_header_or_param};
use crate::state::AppState;
use crate::store::{CommandQuery, CommandRecord, CommandStatus, Store, User, Vehicle};

/// Default page size of `GET /api/v1/commands`.
const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
const MAX_LIMIT: usize = 500;
/// Default `?wait=` of the SOVD resources, seconds.
const DEFAULT_WAIT_S: f64 = 10.0;
/// Largest `?wait=`, seconds.
const MAX_WAIT_S: f64 = 60.0;
/// How often a response stream re-reads the store while it waits (covers events lost to a lag
/// or published by another process).
const STREAM_POLL: Duration = Duration::from_secs(1);

/// Body of `POST /api/v1/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitCommand {
    vehicle_id: Uuid,
    command_name: String,
    #[serde(default)]
    command_params: Value,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn submit_error(err: SubmitError) -> ApiError {
    match err {
        SubmitError::Params(e @ CommandParamsError::UnknownCommand { .. }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_command",
            e.to_string(),
        ),
        SubmitError::Params(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            e.to_string(),
        ),
        SubmitError::Server(e) => e.into(),
    }
}

/// The path prefix the router is mounted under (empty at the root): the part of the original
/// path before `/api/v1` and the route's own path (`routed`, as the nested `/api/v1` router
/// sees it).
fn mount_prefix(original: &Uri, routed: &Uri) -> String {
    let before_route = original.path().strip_suffix(routed.path()).unwrap_or("");
    before_route
        .strip_suffix("/api/v1")
        .unwrap_or(before_route)
        .to_owned()
}

/// The start of a command's `stream_url` (the command id follows): `ws://HOST/ws/responses/`,
/// or `wss://` when the request came over TLS or a proxy says so (`X-Forwarded-Proto: https`).
fn stream_base(headers: &HeaderMap, original: &Uri, prefix: &str) -> String {
    let forwarded_tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let tls = forwarded_tls || original.scheme_str() == Some("https");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| original.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_owned());
    let scheme = if tls { "wss" } else { "ws" };
    format!("{scheme}://{host}{prefix}/ws/responses/")
}

/// Where a command's resources are, as the client reached this server: the mount prefix,
/// and the stream URLs' start (host and scheme of the request).
#[derive(Debug, Clone)]
pub(super) struct Urls {
    prefix: String,
    stream_base: String,
}

impl Urls {
    fn stream(&self, command_id: Uuid) -> String {
        format!("{}{command_id}", self.stream_base)
    }

    fn command(&self, command_id: Uuid) -> String {
        format!("{}/api/v1/commands/{command_id}", self.prefix)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Urls {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
        let prefix = mount_prefix(&original, &parts.uri);
        Ok(Urls {
            stream_base: stream_base(&parts.headers, &original, &prefix),
            prefix,
        })
    }
}

fn command_view(record: &CommandRecord, stream: String) -> Value {
    let mut body = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
    body["stream_url"] = json!(stream);
    body
}

async fn owned_vehicle(commands: &Commands, user: &User, id: Uuid) -> Result<Vehicle, ApiError> {
    commands
        .owned_vehicle(user.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("vehicle"))
}

pub(super) async fn submit(
    Extension(commands): Extension<Commands>,
    UserAuth(user): UserAuth,
    urls: Urls,
    ApiJson(body): ApiJson<SubmitCommand>,
) -> Result<Response, ApiError> {
    let vehicle = owned_vehicle(&commands, &user, body.vehicle_id).await?;
    let record = commands
        .submit(user.id, vehicle, &body.command_name, body.command_params)
        .await
        .map_err(submit_error)?;
    let url = urls.stream(record.command_id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "command_id": record.command_id,
            "status": record.status,
            "submitted_at": record.submitted_at,
            "stream_url": url,
        })),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&urls.command(record.command_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(super) async fn get(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    urls: Urls,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let record = found(&state, "command", move |store| {
        store.get_command(user.id, id)
    })
    .await?;
    Ok(Json(command_view(&record, urls.stream(id))))
}

/// Query of `GET /api/v1/commands`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    vehicle_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_cursor(text: &str) -> Option<(i64, Uuid)> {
    let (at, id) = text.split_once('_')?;
    Some((at.parse().ok()?, Uuid::parse_str(id).ok()?))
}

pub(super) async fn list(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    urls: Urls,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let vehicle_id = match q.vehicle_id.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(Uuid::parse_str(v).map_err(|_| bad_request("vehicle_id is not a UUID"))?),
    };
    let status = match q.status.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(s) => Some(CommandStatus::parse(s).ok_or_else(|| {
            bad_request("status must be pending, in_progress, completed or failed")
        })?),
    };
    let limit = ranged_param(q.limit.as_deref(), DEFAULT_LIMIT, 1..=MAX_LIMIT, || {
        format!("limit must be 1 to {MAX_LIMIT}")
    })?;
    let before = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            Some(parse_cursor(c).ok_or_else(|| bad_request("cursor is not one this server gave"))?)
        }
    };
    let query = CommandQuery {
        vehicle_id,
        status,
        before,
        limit: limit + 1,
    };
    let mut records = state
        .store
        .call(move |store| store.list_commands(user.id, &query))
        .await?;
    let more = records.len() > limit;
    records.truncate(limit);
    let next_cursor = if more {
        records
            .last()
            .map(|r| format!("{}_{}", r.submitted_at.timestamp_millis(), r.command_id))
    } else {
        None
    };
    let commands: Vec<Value> = records
        .iter()
        .map(|r| command_view(r, urls.stream(r.command_id)))
        .collect();
    Ok(Json(
        json!({ "commands": commands, "next_cursor": next_cursor }),
    ))
}

pub(super) async fn responses(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let responses = found(&state, "command", move |store| {
        if store.get_command(user.id, id)?.is_none() {
            return Ok(None);
        }
        store.responses_after(id, 0).map(Some)
    })
    .await?;
    Ok(Json(json!({ "responses": responses })))
}

/// Query of `/ws/responses/{id}`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamQuery {
    access_token: Option<String>,
}

/// `GET /ws/responses/{id}` (WebSocket): the stored responses, then live ones, each as a
/// response event; a failed command ends with a `failed` event. Closes normally after the
/// last event.
pub(super) async fn stream(
    State(state): State<AppState>,
    Extension(commands): Extension<Commands>,
    origins: Option<Extension<OriginPolicy>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
    IdPath(id): IdPath,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if let Some(Extension(origins)) = &origins {
        origins.check_websocket(&headers)?;
    }
    let user = user_from_header_or_param(&state.store, &headers, q.access_token.as_deref()).await?;
    let owned = state
        .store
        .call(move |store| store.get_command(user.id, id))
        .await?;
    if owned.is_none() {
        return Err(ApiError::not_found("command"));
    }
    let store = Arc::clone(&state.store);
    Ok(ws.on_upgrade(move |socket| stream_responses(socket, commands, store, id)))
}

async fn stream_responses(socket: WebSocket, commands: Commands, store: Arc<Store>, id: Uuid) {
    let (mut sink, mut source) = socket.split();
    // Subscribe before reading the store: nothing committed later is missed.
    let mut events = commands.bus().subscribe(id);
    let mut sent = 0u32;
    let mut poll = tokio::time::interval(STREAM_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut read_store = true;
    loop {
        if read_store {
            read_store = false;
            let after = sent;
            let read = store
                .call(move |s| Ok((s.responses_after(id, after)?, s.command_by_id(id)?)))
                .await;
            let Ok((rows, record)) = read else {
                close(&mut sink, close_code::ERROR, "storage error").await;
                return;
            };
            let mut last = false;
            for row in rows {
                let event = BusEvent::Response {
                    command_id: id,
                    sequence_number: row.sequence_number,
                    is_final: row.is_final,
                    response: row.response_payload,
                };
                sent = row.sequence_number;
                last |= row.is_final;
                if sink
                    .send(WsMessage::Text(event.to_json().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(record) = record.filter(|r| r.status == CommandStatus::Failed) {
                let event = BusEvent::Failed {
                    command_id: id,
                    error_message: record.error_message.unwrap_or_default(),
                };
                let _ = sink.send(WsMessage::Text(event.to_json().into())).await;
                last = true;
            }
            if last {
                close(&mut sink, close_code::NORMAL, "command ended").await;
                return;
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if let BusEvent::Response { sequence_number, .. } = &*event {
                        if *sequence_number <= sent {
                            continue;
                        }
                        if *sequence_number != sent + 1 {
                            read_store = true;
                            continue;
                        }
                        sent = *sequence_number;
                    }
                    if sink.send(WsMessage::Text(event.to_json().into())).await.is_err() {
                        return;
                    }
                    if event.is_last() {
                        close(&mut sink, close_code::NORMAL, "command ended").await;
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => read_store = true,
                Err(RecvError::Closed) => {
                    // The last event was published before we subscribed's entry was reused;
                    // the store has it.
                    read_store = true;
                    events = commands.bus().subscribe(id);
                }
            },
            _ = poll.tick() => read_store = true,
            incoming = source.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn close(
    sink: &mut futures::stream::SplitSink<WebSocket, WsMessage>,
    code: u16,
    reason: &'static str,
) {
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Query of the SOVD resources.
#[derive(Debug, Default, Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<String>,
}

/// The query parameter `raw` as a number in `range`; `default` when absent or empty; else 400
/// with `message`.
fn ranged_param<T: std::str::FromStr + PartialOrd>(
    raw: Option<&str>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    message: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    match raw {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<T>()
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| bad_request(message())),
    }
}

fn wait_duration(q: &WaitQuery) -> Result<Duration, ApiError> {
    let secs = ranged_param(q.wait.as_deref(), DEFAULT_WAIT_S, 0.0..=MAX_WAIT_S, || {
        format!("wait must be 0 to {MAX_WAIT_S} seconds")
    })?;
    Ok(Duration::from_secs_f64(secs))
}

/// The params naming a component: an ECU of the vehicle's list by name, else a request CAN
/// id (`0x7E0`); anything else is not a component of this vehicle.
fn component_params(
    vehicle: &Vehicle,
    ecu: &str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut params = serde_json::Map::new();
    if vehicle.ecus.iter().any(|e| e.name == ecu) {
        params.insert("ecu".into(), json!(ecu));
    } else if ecu.starts_with("0x")
        || ecu.starts_with("0X")
        || ecu.bytes().all(|b| b.is_ascii_digit())
    {
        params.insert("ecuAddress".into(), json!(ecu));
    } else {
        return Err(ApiError::not_found("component"));
    }
    Ok(params)
}

/// What every SOVD resource handler takes: the caller, where its command's resources are, and
/// how long to wait for the answer (`?wait=`).
pub(super) struct Sovd {
    state: AppState,
    commands: Commands,
    user: User,
    urls: Urls,
    wait: Duration,
}

impl FromRequestParts<AppState> for Sovd {
    /// The rejection of the first extractor that refused, as that extractor answers alone.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let (Extension(commands), UserAuth(user), urls, Query(q)) =
            <(Extension<Commands>, UserAuth, Urls, Query<WaitQuery>)>::from_request_parts(
                parts, state,
            )
            .await?;
        Ok(Sovd {
            state: state.clone(),
            commands,
            user,
            urls,
            wait: wait_duration(&q).map_err(IntoResponse::into_response)?,
        })
    }
}

impl Sovd {
    /// Runs `command_name` on component `ecu` of vehicle `vehicle` (with `extra` among its
    /// params) and answers with its result, or 202 and where to follow it after the wait.
    async fn run(
        self,
        vehicle: &str,
        ecu: String,
        command_name: &'static str,
        extra: Option<(&'static str, Value)>,
    ) -> Result<Response, ApiError> {
        let Sovd {
            state,
            commands,
            user,
            urls,
            wait,
        } = self;
        let vehicle_id = vehicle_id(vehicle)?;
        let vehicle = owned_vehicle(&commands, &user, vehicle_id).await?;
        let mut params = component_params(&vehicle, &ecu)?;
        if let Some((key, value)) = extra {
            params.insert(key.into(), value);
        }
        let record = commands
            .submit(user.id, vehicle, command_name, Value::Object(params))
            .await
            .map_err(submit_error)?;
        let id = record.command_id;
        let url = urls.stream(id);
        let href = urls.command(id);
        let record = commands.wait(id, wait).await?.unwrap_or(record);
        match record.status {
            CommandStatus::Completed => {
                let responses = state.store.call(move |s| s.responses_after(id, 0)).await?;
                let items: Vec<Value> = responses.into_iter().map(|r| r.response_payload).collect();
                let response = items.last().cloned().unwrap_or(Value::Null);
                Ok(Json(json!({
                    "command_id": id,
                    "status": record.status,
                    "href": href,
                    "response": response,
                    "responses": items,
                }))
                .into_response())
            }
            CommandStatus::Failed => Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "command_failed",
                format!(
                    "command {id} failed: {}",
                    record.error_message.unwrap_or_default()
                ),
            )),
            CommandStatus::Pending | CommandStatus::InProgress => {
                let mut response = (
                    StatusCode::ACCEPTED,
                    Json(json!({
                        "command_id": id,
                        "status": record.status,
                        "href": href,
                        "stream_url": url,
                    })),
                )
                    .into_response();
                if let Ok(location) = HeaderValue::from_str(&href) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                Ok(response)
            }
        }
    }
}

fn vehicle_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("vehicle"))
}

/// `GET /api/v1/vehicles/{id}/components/{ecu}/faults`: ReadDTC on that ECU.
pub(super) async fn faults(
    sovd: Sovd,
    Path((vehicle, ecu)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    sovd.run(&vehicle, ecu, "ReadDTC", None).await
}

/// `DELETE /api/v1/vehicles/{id}/components/{ecu}/faults`: ClearDTC on that ECU.
pub(super) async fn clear_faults(
    sovd: Sovd,
    Path((vehicle, ecu)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    sovd.run(&vehicle, ecu, "ClearDTC", None).await
}

/// `GET /api/v1/vehicles/{id}/components/{ecu}/data/{did}`: ReadDataByID of one DID.
pub(super) async fn data(
    sovd: Sovd,
    Path((vehicle, ecu, did)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    sovd.run(&vehicle, ecu, "ReadDataByID", Some(("did", json!(did))))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_follow_host_and_tls() {
        let id = Uuid::nil();
        let original: Uri = "/api/v1/commands".parse().unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("cars.example:8080"));
        assert_eq!(
            stream_base(&headers, &original, ""),
            "ws://cars.example:8080/ws/responses/"
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert_eq!(
            stream_base(&headers, &original, "/tether"),
            "wss://cars.example:8080/tether/ws/responses/"
        );
        let nested: Uri = "/tether/api/v1/commands".parse().unwrap_or_default();
        let root: Uri = "/api/v1/commands".parse().unwrap_or_default();
        let routed: Uri = "/commands".parse().unwrap_or_default();
        assert_eq!(mount_prefix(&nested, &routed), "/tether");
        assert_eq!(mount_prefix(&root, &routed), "");
        assert_eq!(
            parse_cursor(&format!("1700000000000_{id}")),
            Some((1_700_000_000_000, id))
        );
        assert_eq!(parse_cursor("x_y"), None);
    }
}
