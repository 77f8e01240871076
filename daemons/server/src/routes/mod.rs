//! The HTTP routes and the layers around them.
//!
//! Every answer that is not a success is a JSON error (see [`ApiError`]): handlers return
//! them, extractor rejections are mapped by [`crate::http::ApiJson`] and [`crate::http::IdPath`],
//! and a last layer turns any remaining non-JSON error (the body-limit layer's 413, a caught
//! panic) into one too.

mod agents;
mod commands;
mod dongles;
mod groups;
mod health;
mod vehicles;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::console::routes as console;
use crate::error::ServerError;
use crate::http::{ApiError, IdPath, UserAuth};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;
use crate::store::Store;

/// Longest accepted display name, in characters.
const MAX_NAME_CHARS: usize = 100;

/// Runs `read` on the store ([`crate::store::Store::call`]); `None` (not the caller's, or
/// unknown) is a 404 naming `what`.
async fn found<T, F>(state: &AppState, what: &'static str, read: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<Option<T>, ServerError> + Send + 'static,
{
    state
        .store
        .call(read)
        .await?
        .ok_or_else(|| ApiError::not_found(what))
}

/// `GET` of a collection of the caller's records: `{ "<key>": [records] }`, read by `read`
/// (e.g. [`Store::list_agents`]) for the user.
fn list_route<T>(
    key: &'static str,
    read: fn(&Store, Uuid) -> Result<Vec<T>, ServerError>,
) -> MethodRouter<AppState>
where
    T: Serialize + Send + 'static,
{
    get(
        move |State(state): State<AppState>, UserAuth(user): UserAuth| async move {
            let records = state.store.call(move |store| read(store, user.id)).await?;
            Ok::<_, ApiError>(Json(json!({ key: records })))
        },
    )
}

/// `GET` of one of the caller's records by id, read by `read` (e.g. [`Store::get_agent`]) for
/// the user; one that is not theirs, or unknown, is a 404 naming `what`.
fn get_route<T>(
    what: &'static str,
    read: fn(&Store, Uuid, Uuid) -> Result<Option<T>, ServerError>,
) -> MethodRouter<AppState>
where
    T: Serialize + Send + 'static,
{
    get(
        move |State(state): State<AppState>, UserAuth(user): UserAuth, IdPath(id): IdPath| async move {
            found(&state, what, move |store| read(store, user.id, id))
                .await
                .map(Json)
        },
    )
}

/// Builds the router with all routes and layers.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route(
            "/agents",
            list_route("agents", Store::list_agents).post(agents::create),
        )
        .route(
            "/agents/{id}",
            get_route("agent", Store::get_agent).delete(agents::delete),
        )
        .route("/agent/dongles", post(dongles::announce))
        .route("/agent/dongles/{id}", get(dongles::assignment))
        .route("/dongles", list_route("dongles", Store::list_dongles))
        .route("/dongles/{id}", get_route("dongle", Store::get_dongle))
        .route("/groups", post(groups::create).get(groups::list))
        .route("/groups/{id}", get(groups::get).delete(groups::delete))
        .route("/groups/{id}/activate", post(groups::set_activated::<true>))
        .route(
            "/groups/{id}/deactivate",
            post(groups::set_activated::<false>),
        )
        .route("/groups/{id}/audit", get(groups::audit))
        .route("/vehicles", post(vehicles::create).get(vehicles::list))
        .route("/vehicles/{id}", get(vehicles::get))
        .route(
            "/vehicles/{id}/components/{ecu}/faults",
            get(commands::faults).delete(commands::clear_faults),
        )
        .route(
            "/vehicles/{id}/components/{ecu}/data/{did}",
            get(commands::data),
        )
        .route("/commands", post(commands::submit).get(commands::list))
        .route("/commands/{id}", get(commands::get))
        .route("/commands/{id}/responses", get(commands::responses))
        .route("/streams/console", get(console::multiplexed))
        .route("/streams/dongles/{id}/console", get(console::dongle))
        .route("/streams/groups/{id}/console", get(console::group))
        .merge(crate::metering::router())
        .layer(middleware::from_fn(crate::http::limits::rate_limit));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/ws/data", get(crate::dataplane::ws_data))
        .route("/ws/responses/{id}", get(commands::stream))
        .nest("/api/v1", api)
        .merge(crate::ui::router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of a request: method and path only. The default span records the whole URI, and
/// the console's `?access_token=` (for browsers' `EventSource`) would end up in the logs.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    )
}

/// Trims a display name and checks it is 1–100 characters without control characters.
pub(crate) fn validate_name(field: &str, raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(name.to_owned())
}

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn wrong_method(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method {method} is not allowed on this route"),
    )
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal server error",
    )
    .into_response()
}

/// Turns any error response that is not already JSON into the JSON error shape, keeping its
/// status and headers (e.g. `Allow`) and using its text, if short, as the message.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 1024)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let error = ApiError::new(status, ApiError::code_for(status), text);
    let body = Body::from(error.body().to_string());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, body)
}

/// Counts each request by route template, method and status, and times it.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .http_request_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
