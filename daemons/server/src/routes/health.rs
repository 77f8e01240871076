//! `/healthz`, `/readyz`, `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::ApiError;
use crate::state::AppState;

/// Alive: the process answers HTTP. Checks nothing else, so an orchestrator does not restart
/// the server because a dependency is down.
pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn check_database(state: &AppState) -> Result<(), String> {
    let ping = state.store.call(|store| store.ping());
    match tokio::time::timeout(state.readiness_timeout, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("database did not answer in time".to_owned()),
    }
}

async fn check_redis(client: &redis::Client, state: &AppState) -> Result<(), String> {
    let ping = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|err| err.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|err| err.to_string())
    };
    match tokio::time::timeout(state.readiness_timeout, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err("Redis did not answer in time".to_owned()),
    }
}

/// Ready: the database answers, and Redis too when one is configured. 503 otherwise, with the
/// failing check named.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let database = check_database(&state).await;
    let redis = match &state.redis {
        None => None,
        Some(client) => Some(check_redis(client, &state).await),
    };
    let label = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unreachable" };
    let checks = json!({
        "database": label(&database),
        "redis": redis.as_ref().map_or("not_configured", label),
    });
    let failures: Vec<String> = [("database", Some(&database)), ("redis", redis.as_ref())]
        .into_iter()
        .filter_map(|(name, r)| match r {
            Some(Err(err)) => Some(format!("{name}: {err}")),
            _ => None,
        })
        .collect();
    if failures.is_empty() {
        return Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    state.metrics.readiness_failures.inc();
    tracing::warn!(failures = ?failures, "not ready");
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        failures.join("; "),
    );
    let mut body = error.body();
    body["checks"] = checks;
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Prometheus scrape endpoint (OpenMetrics text).
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state.metrics.encode().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode metrics",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            tether_runtime::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}
