//! The `metering` role: wires metering-core's consumer to config, logs, `/health`, `/metrics`,
//! the admin DLQ endpoints, registration, heartbeats, command polling and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metering_core::backoff::RetryPolicy;
use metering_core::breaker::BreakerConfig;
use metering_core::client::{ClientConfig, ControlPlaneClient};
use metering_core::commands::KeyRing;
use metering_core::consumer::{Consumer, ConsumerConfig, Shared};
use metering_core::message::{Enrichment, QueueKind};
use metering_core::metrics::Metrics;
use metering_core::queue::{KeyLayout, QueueStore};
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{RwLock, watch};
use tracing::{info, warn};

use tether_runtime::config::secs;

use crate::config::MeteringConfig;

/// Agent version reported everywhere.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A queue store for `cfg` owned by a fresh instance id `<server id>:<uuid>`.
pub fn queue_store(cfg: &MeteringConfig, role: &str) -> anyhow::Result<QueueStore> {
    let client = redis::Client::open(cfg.redis.connection_url()).context("redis settings")?;
    let instance = format!("{}:{role}:{}", cfg.server.id, uuid::Uuid::new_v4());
    let keys = KeyLayout::new(cfg.redis.key_prefix.as_deref().unwrap_or(""), &instance);
    Ok(QueueStore::new(
        client,
        keys,
        secs("redis.socket_timeout", cfg.redis.command_timeout())?,
    )?
    .with_retry_on_timeout(cfg.redis.retry_on_timeout))
}

/// Everything the HTTP handlers and background loops share.
struct Agent {
    cfg: MeteringConfig,
    shared: Arc<Shared>,
    started: Instant,
    keys: RwLock<KeyRing>,
    cpu: std::sync::Mutex<(Instant, f64)>,
    last_key_refresh: std::sync::Mutex<Option<Instant>>,
}

/// Runs the role until `stop` completes, then stops taking items, finishes or returns the
/// in-flight ones, tells the control plane it is shutting down and returns. Errors are
/// start-up failures (settings, listeners); once running, the role retries everything itself.
///
/// It installs no signal handler and no log subscriber: the caller does (the `tether` binary
/// registers SIGTERM / Ctrl-C before calling, so a stop during start-up is a graceful stop).
pub async fn run(cfg: MeteringConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = queue_store(&cfg, "agent")?;
    let cp = &cfg.control_plane;
    let q = &cfg.queues;
    let metrics = Arc::new(Metrics::new(&cfg.server.id, &cfg.server.region));
    let client = ControlPlaneClient::new(
        &ClientConfig {
            base_url: cp.base_url.clone(),
            api_key: cp.api_key.clone(),
            connect_timeout: secs("connect_timeout", cp.connect_timeout)?,
            timeout: secs("timeout", cp.timeout)?,
            retry: RetryPolicy {
                max_retries: cp.retry_attempts,
                base: secs("retry_base", cp.retry_base)?,
                cap: secs("retry_cap", cp.retry_cap)?,
                ..RetryPolicy::default()
            },
            // Every worker of every queue may have `max_concurrent_requests` in flight, plus
            // registration, heartbeats and command polls.
            max_idle_connections: q.workers.max(1)
                * q.max_concurrent_requests.max(1)
                * QueueKind::ALL.len()
                + 4,
        },
        &format!("tether-agent/{VERSION}"),
    )?
    .with_histogram(metrics.cp_request_seconds.clone());
    let consumer_cfg = ConsumerConfig {
        workers: q.workers,
        batch_size: q.batch_size,
        block: secs("block_seconds", q.block_seconds)?,
        lease_ttl: secs("lease_ttl_seconds", q.lease_ttl_seconds)?,
        reaper_interval: secs("reaper_interval_seconds", q.reaper_interval_seconds)?,
        max_deliveries: q.max_deliveries,
        max_concurrent_requests: q.max_concurrent_requests,
        breaker: BreakerConfig {
            failure_threshold: cp.breaker_failure_threshold,
            open_for: secs("breaker_open_seconds", cp.breaker_open_seconds)?,
        },
        sample_interval: Duration::from_secs(1),
    };
    let enrichment = Enrichment {
        server_instance_id: cfg.server.id.clone(),
        api_server_region: cfg.server.region.clone(),
        agent_version: VERSION.into(),
    };
    let shared = Shared::new(store.clone(), client, metrics, enrichment, consumer_cfg);
    let agent = Arc::new(Agent {
        cfg: cfg.clone(),
        shared: shared.clone(),
        started,
        keys: RwLock::new(KeyRing::default()),
        cpu: std::sync::Mutex::new((Instant::now(), cpu_seconds())),
        last_key_refresh: std::sync::Mutex::new(None),
    });
    info!(instance = store.keys().instance(), server_id = %cfg.server.id, version = VERSION, "metering agent starting");

    // Listeners before anything slow, so /health answers at once.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let bind = cfg.monitoring.bind_address.clone();
    let health_port = cfg.monitoring.health_check_port;
    let metrics_port = cfg.monitoring.metrics_port;
    let mut ports = vec![health_port];
    if metrics_port != health_port {
        ports.push(metrics_port);
    }
    for port in ports {
        let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
            .await
            .with_context(|| format!("binding {bind}:{port}"))?;
        info!(address = %listener.local_addr()?, "listening");
        let app = router(agent.clone());
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }

    // Redis durability warnings (best effort: Redis may be down at start).
    {
        let store = store.clone();
        tokio::spawn(async move {
            match store.durability_warnings().await {
                Ok(ws) => ws
                    .iter()
                    .for_each(|w| warn!(warning = %w, "redis settings can lose queued data")),
                Err(e) => warn!(error = %e, "could not check redis durability settings"),
            }
        });
    }

    let consumer = Consumer::new(shared.clone());
    let consumer_task = {
        let rx = stop_rx.clone();
        tokio::spawn(async move { consumer.run(rx).await })
    };
    let bg = vec![
        tokio::spawn(register_then_heartbeat(agent.clone(), stop_rx.clone())),
        tokio::spawn(command_loop(agent.clone(), stop_rx.clone())),
    ];

    stop.await;
    info!("stopping: no new items; finishing or returning in-flight items");
    let _ = stop_tx.send(true);
    let _ = consumer_task.await;
    for t in bg {
        t.abort();
    }
    let path = format!("/api/v1/servers/{}/shutdown", cfg.server.id);
    let body = json!({"server_id": cfg.server.id, "status": "offline",
        "timestamp": chrono::Utc::now().to_rfc3339()});
    if let Err(e) = shared.client.call(Method::POST, &path, Some(&body)).await {
        warn!(error = %e, "shutdown notification failed");
    }
    for s in servers {
        let _ = s.await;
    }
    info!("metering agent stopped");
    Ok(())
}

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/dlq/{queue}", get(admin_list).delete(admin_purge))
        .route("/admin/dlq/{queue}/retry", post(admin_retry))
        .with_state(agent)
}

fn health_json(a: &Agent) -> Value {
    let redis = a.shared.redis_ok.load(Ordering::Relaxed);
    let cp = a.shared.cp_ok.load(Ordering::Relaxed);
    json!({
        "status": if redis && cp { "healthy" } else { "degraded" },
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "version": VERSION,
        "uptime_seconds": a.started.elapsed().as_secs(),
        "redis_connected": redis,
        "control_plane_connected": cp,
    })
}

/// 200 when Redis and the control plane are reachable, else 503 with the same document: a
/// load balancer or `systemctl`-side check sees the degraded state.
async fn health(State(a): State<Arc<Agent>>) -> Response {
    let h = health_json(&a);
    let code = if h["status"] == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(h)).into_response()
}

/// The heartbeat's `status`: `online` when healthy, `degraded` when Redis or the control plane
/// is unreachable (`offline` is sent with the shutdown notice).
fn heartbeat_status(a: &Agent) -> &'static str {
    if a.shared.redis_ok.load(Ordering::Relaxed) && a.shared.cp_ok.load(Ordering::Relaxed) {
        "online"
    } else {
        "degraded"
    }
}

async fn metrics(State(a): State<Arc<Agent>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            tether_runtime::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        a.shared.metrics.render(),
    )
        .into_response()
}

fn authorized(a: &Agent, headers: &HeaderMap) -> bool {
    let Some(given) = headers.get("x-api-key").map(|v| v.as_bytes()) else {
        return false;
    };
    let want = a.cfg.control_plane.api_key.as_bytes();
    // Constant-time over the expected length.
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[derive(serde::Deserialize)]
struct AdminQuery {
    id: Option<String>,
    limit: Option<usize>,
}

fn admin_guard(a: &Agent, headers: &HeaderMap, queue: &str) -> Result<QueueKind, Box<Response>> {
    if !authorized(a, headers) {
        let r = (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "bad or missing X-API-Key"})),
        );
        return Err(Box::new(r.into_response()));
    }
    QueueKind::from_name(queue).ok_or_else(|| {
        Box::new(
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "unknown queue"})),
            )
                .into_response(),
        )
    })
}

fn redis_failure(e: metering_core::MeteringError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

/// An admin request on the dead-letter queue named in the path, with a good `X-API-Key`.
struct DlqAdmin {
    agent: Arc<Agent>,
    queue: String,
    kind: QueueKind,
    query: AdminQuery,
}

impl FromRequestParts<Arc<Agent>> for DlqAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, agent: &Arc<Agent>) -> Result<Self, Response> {
        let (Path(queue), Query(query)) =
            <(Path<String>, Query<AdminQuery>)>::from_request_parts(parts, agent).await?;
        let kind = admin_guard(agent, &parts.headers, &queue).map_err(|r| *r)?;
        Ok(DlqAdmin {
            agent: Arc::clone(agent),
            queue,
            kind,
            query,
        })
    }
}

/// `body` of what an admin request did, or 503 when Redis failed.
fn dlq_answer<T>(
    done: Result<T, metering_core::MeteringError>,
    body: impl FnOnce(T) -> Value,
) -> Response {
    match done {
        Ok(v) => axum::Json(body(v)).into_response(),
        Err(e) => redis_failure(e),
    }
}

impl DlqAdmin {
    fn store(&self) -> &QueueStore {
        &self.agent.shared.store
    }

    /// `?id=`: one entry, else all.
    fn id(&self) -> Option<&str> {
        self.query.id.as_deref()
    }
}

async fn admin_list(r: DlqAdmin) -> Response {
    let listed = r
        .store()
        .dlq_list(r.kind, r.query.limit.unwrap_or(100))
        .await;
    dlq_answer(
        listed,
        |entries| json!({"queue": r.queue, "entries": entries}),
    )
}

async fn admin_retry(r: DlqAdmin) -> Response {
    let retried = r.store().dlq_retry(r.kind, r.id()).await;
    dlq_answer(retried, |n| json!({"retried": n}))
}

async fn admin_purge(r: DlqAdmin) -> Response {
    let purged = r.store().dlq_purge(r.kind, r.id()).await;
    dlq_answer(purged, |n| json!({"purged": n}))
}

/// Resident memory in MiB (Linux `/proc/self/statm`), 0 when unknown.
fn memory_mb() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// CPU seconds used by this process (user + system), 0 when unknown.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn agent_metrics(a: &Agent) -> Value {
    let m = &a.shared.metrics;
    let cpu_percent = {
        let mut g = match a.cpu.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = (Instant::now(), cpu_seconds());
        let wall = now.0.duration_since(g.0).as_secs_f64();
        let pct = if wall > 0.0 {
            (now.1 - g.1) / wall * 100.0
        } else {
            0.0
        };
        *g = now;
        pct.max(0.0)
    };
    json!({
        "usage_records_processed": m.total(&m.processed),
        "control_plane_requests": m.total(&m.cp_requests),
        "redis_queue_depth": m.total_gauge(&m.queue_depth),
        "failed_deliveries": m.total(&m.failed_deliveries),
        "dead_lettered": m.total(&m.dead_lettered),
        "memory_usage_mb": (memory_mb() * 10.0).round() / 10.0,
        "cpu_usage_percent": (cpu_percent * 10.0).round() / 10.0,
    })
}

/// A registration or heartbeat was accepted: the control plane is reachable, unless the
/// deliveries' circuit breaker is open (session endpoints failing while the server endpoints
/// answer is still an outage for metering).
fn control_plane_answered(a: &Agent) {
    let m = &a.shared.metrics;
    if m.breaker_state.get_or_create(m.server()).get() == 0 {
        a.shared.cp_ok.store(true, Ordering::Relaxed);
    }
}

async fn register_then_heartbeat(a: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let s = &a.cfg.server;
    let body = json!({
        "server_id": s.id,
        "region": s.region,
        "ip_address": s.ip_address,
        "port": s.port,
        "version": VERSION,
        "capabilities": s.capabilities,
    });
    let mut wait = Duration::from_millis(200);
    loop {
        match a
            .shared
            .client
            .call(Method::POST, "/api/v1/servers/register", Some(&body))
            .await
        {
            Ok(_) => {
                control_plane_answered(&a);
                info!("registered with the control plane");
                break;
            }
            Err(e) => {
                a.shared.cp_ok.store(false, Ordering::Relaxed);
                warn!(error = %e, "registration failed; retrying");
            }
        }
        let d = wait.mul_f64(rand::rng().random::<f64>());
        wait = (wait * 2).min(Duration::from_secs(10));
        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => return }
    }
    let every = Duration::from_secs_f64(a.cfg.monitoring.heartbeat_interval);
    let path = format!("/api/v1/servers/{}/heartbeat", s.id);
    loop {
        let body = json!({
            "server_id": s.id,
            "status": heartbeat_status(&a),
            "heartbeat_interval_seconds": a.cfg.monitoring.heartbeat_interval,
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "metrics": agent_metrics(&a),
        });
        match a.shared.client.call(Method::PUT, &path, Some(&body)).await {
            Ok(_) => control_plane_answered(&a),
            Err(e) => {
                a.shared.cp_ok.store(false, Ordering::Relaxed);
                warn!(error = %e, "heartbeat failed");
            }
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = stop.changed() => return }
    }
}

async fn refresh_keys(a: &Agent) -> anyhow::Result<usize> {
    let path = format!("/api/v1/servers/{}/public-keys", a.cfg.server.id);
    let v = a.shared.client.call(Method::GET, &path, None).await?;
    let ring = KeyRing::from_response(&v)?;
    let n = ring.len();
    *a.keys.write().await = ring;
    info!(keys = n, "control-plane public keys refreshed");
    Ok(n)
}

async fn command_loop(a: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    if let Err(e) = refresh_keys(&a).await {
        warn!(error = %e, "could not fetch control-plane public keys; will retry when a command arrives");
    }
    let every = a.cfg.monitoring.command_poll_interval;
    loop {
        let d = Duration::from_secs_f64(every * rand::rng().random_range(0.9..1.1));
        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => return }
        if let Err(e) = poll_commands(&a).await {
            warn!(error = %e, "command poll failed");
        }
    }
}

async fn poll_commands(a: &Agent) -> anyhow::Result<()> {
    let path = format!("/api/v1/servers/{}/commands", a.cfg.server.id);
    let v = a.shared.client.call(Method::GET, &path, None).await?;
    let tokens: Vec<String> = v
        .get("commands")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    c.as_str()
                        .or_else(|| c.get("token").and_then(Value::as_str))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    for token in tokens {
        handle_command(a, &token).await;
    }
    Ok(())
}

async fn handle_command(a: &Agent, token: &str) {
    let server_id = &a.cfg.server.id;
    let mut verified = a.keys.read().await.verify(token, server_id);
    if let Err(metering_core::MeteringError::CommandRefused(reason)) = &verified
        && reason.starts_with("no public key")
    {
        // Unknown key id: the control plane may have rotated its keys. Refresh, but at most
        // once per 10 s, so a stream of junk tokens cannot hammer the key endpoint.
        let due = {
            let mut last = match a.last_key_refresh.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due && refresh_keys(a).await.is_ok() {
            verified = a.keys.read().await.verify(token, server_id);
        }
    }
    let claims = match verified {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "command refused: not run");
            return;
        }
    };
    if claims.command_id.is_empty()
        || claims.command_id.len() > 128
        || !claims
            .command_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        warn!(command_id = %claims.command_id, "command refused: command_id must be 1-128 characters of [A-Za-z0-9._:-]");
        return;
    }
    let now = chrono::Utc::now().timestamp();
    match a
        .shared
        .store
        .command_executed(&claims.command_id, now)
        .await
    {
        Ok(true) => {
            info!(correlation_id = %claims.command_id, command = %claims.command, "command already executed; skipped");
            return;
        }
        Ok(false) => {}
        Err(e) => {
            warn!(error = %e, correlation_id = %claims.command_id, "cannot check executed commands; will retry");
            return;
        }
    }
    let outcome: anyhow::Result<Value> = match claims.command.as_str() {
        "refresh_public_keys" => refresh_keys(a).await.map(|n| json!({"keys": n})),
        "health_check" => Ok(health_json(a)),
        "get_metrics" => Ok(agent_metrics(a)),
        other => Err(anyhow::anyhow!("unknown command {other}")),
    };
    let ok = outcome.is_ok();
    let body = match &outcome {
        Ok(result) => json!({"command_id": claims.command_id, "command": claims.command,
            "status": "succeeded", "result": result, "completed_at": chrono::Utc::now().to_rfc3339()}),
        Err(e) => json!({"command_id": claims.command_id, "command": claims.command,
            "status": "failed", "error": format!("{e:#}"), "completed_at": chrono::Utc::now().to_rfc3339()}),
    };
    let path = format!(
        "/api/v1/servers/{server_id}/commands/{}/result",
        claims.command_id
    );
    let reported = a.shared.client.call(Method::POST, &path, Some(&body)).await;
    if let Err(e) = &reported {
        warn!(error = %e, correlation_id = %claims.command_id, "reporting command result failed");
    }
    if ok && reported.is_ok() {
        if let Err(e) = a
            .shared
            .store
            .mark_command_executed(&claims.command_id, now)
            .await
        {
            warn!(error = %e, correlation_id = %claims.command_id, "could not record executed command");
        }
        info!(correlation_id = %claims.command_id, command = %claims.command, "command executed");
    } else {
        warn!(correlation_id = %claims.command_id, command = %claims.command, "command failed; will run again when resent");
    }
}
