//! Benchmark helper: a control-plane double answering every session request after 2 ms, with
//! 1 % of usage batches answered 503. Counts distinct accepted record ids and duplicates.
//! `GET /stats` → `{"unique": N, "duplicates": D, "requests": R, "failed": F}`;
//! `POST /reset` zeroes them (between runs).
//! Usage: bench_control_plane PORT
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Default)]
struct Stats {
    ids: Mutex<HashSet<String>>,
    duplicates: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
}

async fn usage(State(s): State<Arc<Stats>>, Json(body): Json<Value>) -> Response {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    if n % 100 == 99 {
        s.failed.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
    }
    let mut ids = match s.ids.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    for r in body["records"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if !ids.insert(r["record_id"].as_str().unwrap_or_default().to_owned()) {
            s.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
    Json(json!({"accepted": true})).into_response()
}

async fn ok() -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    Json(json!({"ok": true, "keys": [], "commands": []}))
}

async fn reset(State(s): State<Arc<Stats>>) -> StatusCode {
    match s.ids.lock() {
        Ok(mut g) => g.clear(),
        Err(p) => p.into_inner().clear(),
    }
    s.duplicates.store(0, Ordering::Relaxed);
    s.requests.store(0, Ordering::Relaxed);
    s.failed.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn stats(State(s): State<Arc<Stats>>) -> Json<Value> {
    let unique = s.ids.lock().map(|g| g.len()).unwrap_or(0);
    Json(
        json!({"unique": unique, "duplicates": s.duplicates.load(Ordering::Relaxed),
        "requests": s.requests.load(Ordering::Relaxed), "failed": s.failed.load(Ordering::Relaxed)}),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(18_080);
    let state = Arc::new(Stats::default());
    let app = Router::new()
        .route("/api/v1/sessions/{id}/usage-records", post(usage))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .fallback(any(ok))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
