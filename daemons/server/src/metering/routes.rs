//! HTTP handlers of the control plane, mounted under `/api/v1` by [`crate::routes::router`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Extension, Router};
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::store::{MeteringStore, Refusal};
use super::{Metering, keys};
use crate::http::{ApiError, ApiJson, UserAuth};
use crate::state::AppState;
use crate::store::User;

/// Commands an operator may queue (the ones the agent runs).
const COMMANDS: [&str; 3] = ["refresh_public_keys", "health_check", "get_metrics"];
/// Default and longest lifetime of a command token.
const DEFAULT_TTL_SECS: i64 = 3600;
const MAX_TTL_SECS: i64 = 86_400;

/// The control plane's routes (relative to `/api/v1`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/servers/register", post(register))
        .route("/servers/{id}/heartbeat", put(heartbeat))
        .route("/servers/{id}/shutdown", post(shutdown))
        .route("/servers/{id}/public-keys", get(public_keys))
        .route("/servers/{id}/commands", get(commands).post(queue_command))
        .route("/servers/{id}/commands/{command_id}/result", post(result))
        .route("/sessions/{id}/start", lifecycle_route("start"))
        .route("/sessions/{id}/complete", lifecycle_route("complete"))
        .route("/sessions/{id}/usage-records", post(usage_records))
        .route("/sessions/{id}/refresh", post(refresh))
        .route("/metering/sessions/{id}", get(session))
        .route("/metering/customers", post(create_customer))
        .route("/metering/customers/{id}", get(customer))
        .route("/metering/servers", get(servers))
        .route("/metering/commands/{id}", get(command))
        .route("/metering/signing-keys/rotate", post(rotate_key))
}

fn store(parts_ext: &axum::http::Extensions) -> Result<Arc<MeteringStore>, ApiError> {
    parts_ext
        .get::<Metering>()
        .map(|m| Arc::clone(&m.0))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the metering control plane is not running",
            )
        })
}

/// A data-plane server authenticated by its `X-API-Key`.
#[derive(Debug, Clone)]
pub(super) struct ServerKey {
    server_id: String,
    store: Arc<MeteringStore>,
}

impl<S: Send + Sync> FromRequestParts<S> for ServerKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let store = store(&parts.extensions)?;
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing X-API-Key"))?
            .trim()
            .to_owned();
        let found = store.call(move |s| s.server_for_key(&key)).await?;
        let server_id =
            found.ok_or_else(|| ApiError::unauthorized("invalid or revoked X-API-Key"))?;
        Ok(ServerKey { server_id, store })
    }
}

impl ServerKey {
    /// Refuses a path naming another server than the key's.
    fn check(&self, id: &str) -> Result<(), ApiError> {
        if id == self.server_id {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this X-API-Key belongs to another server",
            ))
        }
    }
}

/// A user with the `operator` role.
#[derive(Debug, Clone)]
pub(super) struct Operator {
    user: User,
    store: Arc<MeteringStore>,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let store = store(&parts.extensions)?;
        let UserAuth(user) = UserAuth::from_request_parts(parts, state).await?;
        let name = user.name.clone();
        if !store.call(move |s| s.is_operator(&name)).await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the operator role is required (tether server token create --role operator)",
            ));
        }
        Ok(Operator { user, store })
    }
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::UnknownCustomer(c) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_customer",
            format!("unknown customer {c:?} (tether server metering customer create)"),
        ),
        Refusal::CustomerMismatch => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "customer_mismatch",
            "the session belongs to another customer",
        ),
    }
}

/// 1–128 characters of `[A-Za-z0-9._:-]`, as the agent sends them.
fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} must be 1-128 characters of [A-Za-z0-9._:-]"
        )))
    }
}

fn string_field<'a>(body: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    match body.get(field).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() && s.len() <= 256 => Ok(s),
        _ => Err(ApiError::invalid(format!(
            "{field} must be a non-empty string of at most 256 bytes"
        ))),
    }
}

fn seconds_field(body: &Value, field: &str) -> Result<f64, ApiError> {
    match body.get(field).and_then(Value::as_f64) {
        Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "{field} must be a non-negative number"
        ))),
    }
}

async fn register(key: ServerKey, ApiJson(body): ApiJson<Value>) -> Result<Response, ApiError> {
    let id = string_field(&body, "server_id")?.to_owned();
    key.check(&id)?;
    key.store
        .call(move |s| s.register_server(&id, &body, Utc::now()))
        .await?;
    Ok(Json(json!({"registered": true, "server_id": key.server_id})).into_response())
}

async fn record_status(
    key: &ServerKey,
    id: String,
    status: &str,
    body: &Value,
) -> Result<Response, ApiError> {
    key.check(&id)?;
    let interval = body
        .get("heartbeat_interval_seconds")
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite() && *v > 0.0);
    let metrics = body.get("metrics").cloned();
    let status_owned = status.to_owned();
    let known = key
        .store
        .call(move |s| s.heartbeat(&id, &status_owned, interval, metrics.as_ref(), Utc::now()))
        .await?;
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_registered",
            "server not registered: POST /api/v1/servers/register first",
        ));
    }
    Ok(Json(json!({"ok": true, "status": status})).into_response())
}

async fn heartbeat(
    key: ServerKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let status = body.get("status").and_then(Value::as_str).unwrap_or("");
    if !["online", "offline", "degraded"].contains(&status) {
        return Err(ApiError::invalid(
            "status must be online, offline or degraded",
        ));
    }
    let status = status.to_owned();
    record_status(&key, id, &status, &body).await
}

async fn shutdown(
    key: ServerKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    record_status(&key, id, "offline", &body).await
}

async fn public_keys(key: ServerKey, Path(id): Path<String>) -> Result<Response, ApiError> {
    key.check(&id)?;
    let v = key.store.call(|s| keys::public_keys(s, Utc::now())).await?;
    Ok(Json(v).into_response())
}

/// `GET /servers/{id}/commands`: with `X-API-Key`, the server's pending command tokens; with a
/// user token, an operator's list of the server's commands and results.
async fn commands(
    State(state): State<AppState>,
    Extension(metering): Extension<Metering>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    if headers.contains_key("x-api-key") {
        let key = ServerKey::from_request_parts(&mut parts, &state).await?;
        key.check(&id)?;
        let pending = key
            .store
            .call(move |s| s.pending_commands(&id, Utc::now()))
            .await?;
        let list: Vec<Value> = pending
            .into_iter()
            .map(|(command_id, token)| json!({"command_id": command_id, "token": token}))
            .collect();
        return Ok(Json(json!({ "commands": list })).into_response());
    }
    let _operator = Operator::from_request_parts(&mut parts, &state).await?;
    let rows = metering.0.call(move |s| s.commands(&id)).await?;
    Ok(Json(json!({ "commands": rows })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueCommand {
    command: String,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

async fn queue_command(
    op: Operator,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<QueueCommand>,
) -> Result<Response, ApiError> {
    check_id("server id", &id)?;
    if !COMMANDS.contains(&body.command.as_str()) {
        return Err(ApiError::invalid(format!(
            "command must be one of {}",
            COMMANDS.join(", ")
        )));
    }
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid(format!(
            "ttl_seconds must be 1 to {MAX_TTL_SECS}"
        )));
    }
    let params = body.params.unwrap_or(json!({}));
    let command_id = format!("cmd-{}", uuid::Uuid::new_v4());
    let by = op.user.name.clone();
    let (cid, command) = (command_id.clone(), body.command.clone());
    let expires = op
        .store
        .call(move |s| {
            let now = Utc::now();
            let expires = now + Duration::seconds(ttl);
            let key = keys::current(s, now)?;
            let token = keys::sign_command(&key, &id, &cid, &command, &params, now, expires)?;
            s.queue_command(&cid, &id, &command, &params, &token, &by, now, expires)?;
            Ok(expires)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"command_id": command_id, "status": "queued", "expires_at": expires})),
    )
        .into_response())
}

async fn result(
    key: ServerKey,
    Path((id, command_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    key.check(&id)?;
    let succeeded = match body.get("status").and_then(Value::as_str) {
        Some("succeeded") => true,
        Some("failed") => false,
        _ => return Err(ApiError::invalid("status must be succeeded or failed")),
    };
    let found = key
        .store
        .call(move |s| s.command_result(&id, &command_id, succeeded, &body, Utc::now()))
        .await?;
    if !found {
        return Err(ApiError::not_found("command"));
    }
    Ok(Json(json!({"stored": true})).into_response())
}

fn idempotency_key(headers: &HeaderMap, event: &str, session: &str) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .map_or_else(|| format!("{event}:{session}"), str::to_owned)
}

async fn lifecycle(
    key: ServerKey,
    session: String,
    event: &'static str,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Response, ApiError> {
    check_id("api_session_id", &session)?;
    let customer = string_field(body, "customer_id")?.to_owned();
    let idem = idempotency_key(headers, event, &session);
    let server = key.server_id.clone();
    let out = key
        .store
        .call(move |s| s.lifecycle(&session, event, &customer, &server, &idem, Utc::now()))
        .await?;
    out.map(|v| Json(v).into_response()).map_err(refused)
}

/// `POST /sessions/{id}/<event>`: the session lifecycle `event` (`start`, `complete`).
fn lifecycle_route(event: &'static str) -> MethodRouter<AppState> {
    post(
        move |key: ServerKey,
              Path(id): Path<String>,
              headers: HeaderMap,
              ApiJson(body): ApiJson<Value>| async move {
            lifecycle(key, id, event, &headers, &body).await
        },
    )
}

async fn usage_records(
    key: ServerKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    check_id("api_session_id", &id)?;
    let list = body
        .get("records")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("records must be an array"))?;
    let mut records = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let at = |e: ApiError| ApiError::invalid(format!("records[{i}]: {}", e.message));
        if r.get("api_session_id").and_then(Value::as_str) != Some(id.as_str()) {
            return Err(ApiError::invalid(format!(
                "records[{i}]: api_session_id must be the session of the path"
            )));
        }
        records.push((
            string_field(r, "record_id").map_err(at)?.to_owned(),
            string_field(r, "customer_id").map_err(at)?.to_owned(),
            seconds_field(r, "audio_duration_seconds").map_err(at)?,
            seconds_field(r, "connection_duration_seconds").map_err(at)?,
            r.clone(),
        ));
    }
    let server = key.server_id.clone();
    let out = key
        .store
        .call(move |s| s.add_usage_records(&id, &server, &records, Utc::now()))
        .await?;
    let (accepted, duplicates) = out.map_err(refused)?;
    Ok(Json(json!({"accepted": accepted, "duplicates": duplicates})).into_response())
}

async fn refresh(
    key: ServerKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    check_id("api_session_id", &id)?;
    let customer = string_field(&body, "customer_id")?.to_owned();
    let transaction = string_field(&body, "transaction_id")?.to_owned();
    let server = key.server_id.clone();
    let out = key
        .store
        .call(move |s| s.refresh(&id, &customer, &server, &transaction, Utc::now()))
        .await?;
    out.map(|v| Json(v).into_response()).map_err(refused)
}

async fn session(op: Operator, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = op.store.call(move |s| s.session(&id)).await?;
    v.map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found("session"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCustomer {
    customer_id: String,
    credits: i64,
}

async fn create_customer(
    op: Operator,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> Result<Response, ApiError> {
    if body.customer_id.trim().is_empty() || body.customer_id.len() > 256 {
        return Err(ApiError::invalid("customer_id must be 1 to 256 bytes"));
    }
    if body.credits < 0 {
        return Err(ApiError::invalid("credits must not be negative"));
    }
    let id = body.customer_id.clone();
    let v = op
        .store
        .call(move |s| {
            s.upsert_customer(&id, body.credits, Utc::now())?;
            s.customer(&id)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn customer(op: Operator, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = op.store.call(move |s| s.customer(&id)).await?;
    v.map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found("customer"))
}

async fn servers(op: Operator) -> Result<Response, ApiError> {
    let v = op.store.call(|s| s.servers(Utc::now())).await?;
    Ok(Json(v).into_response())
}

async fn command(op: Operator, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = op.store.call(move |s| s.command(&id)).await?;
    v.map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found("command"))
}

async fn rotate_key(op: Operator) -> Result<Response, ApiError> {
    let kid = op.store.call(|s| keys::rotate(s, Utc::now())).await?;
    Ok((StatusCode::CREATED, Json(json!({"kid": kid}))).into_response())
}
