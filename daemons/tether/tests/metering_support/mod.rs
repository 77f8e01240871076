//! Shared harness of the metering process tests: a control-plane double (a real axum server on
//! loopback that records requests and injects faults), agent processes, Redis helpers.
#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    missing_docs,
    clippy::unwrap_used
)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

pub const TEST_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAzNXGtS/pKejqAyRzvywFjYUtIOdwyPCJqHMUaqkkMDU=\n-----END PUBLIC KEY-----\n";
/// Test-only signing key (matches `TEST_PUBLIC_KEY`).
pub const TEST_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKCW1rLWKrnHkxOYuGgr8WEa5WRGEJ9SXg/eRGxB1f8Y\n-----END PRIVATE KEY-----\n";
/// A key the control plane does not publish.
pub const OTHER_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDN7nFUt3GezcLb/O/ZOM3iHNQUwQdJ/dKhO4svrHVCD\n-----END PRIVATE KEY-----\n";

pub use tether_testkit::free_tcp_port as free_port;
pub use tether_testkit::poll::wait_until as eventually;
pub use tether_testkit::process::{kill9, run_ok, sigterm, wait_exit};
pub use tether_testkit::redis::{RedisNamespace, redis_url};
pub use tether_testkit::rest::assert_fields;
pub use tether_testkit::rest::get_json_any as get_json;

/// What the double saw and how it misbehaves.
#[derive(Default)]
pub struct DoubleState {
    /// Every request: (method, path, body).
    pub requests: Mutex<Vec<(String, String, Value)>>,
    /// record_id → times received in an accepted batch.
    pub records: Mutex<HashMap<String, u32>>,
    /// Answer 503 to session endpoints while set.
    pub down: AtomicBool,
    /// Answer 503 to this many of the next public-keys requests.
    pub fail_public_keys: AtomicU32,
    /// Sessions whose usage records are refused with 400.
    pub reject_sessions: Mutex<HashSet<String>>,
    /// Command tokens served on every poll.
    pub commands: Mutex<Vec<String>>,
    /// Every 1 in N usage batches gets a 503 (0 = never).
    pub fail_every: AtomicU64,
    pub counter: AtomicU64,
    /// Artificial latency of session endpoints.
    pub delay_ms: AtomicU64,
}

impl DoubleState {
    pub fn record_ids(&self) -> HashMap<String, u32> {
        self.records.lock().unwrap().clone()
    }
    pub fn requests_to(&self, suffix: &str) -> Vec<(String, String, Value)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1.ends_with(suffix))
            .cloned()
            .collect()
    }

    /// Waits until the agent has polled for commands `n` more times than it had so far.
    pub async fn more_polls(&self, n: usize) {
        let polls = self.requests_to("/commands").len();
        eventually(Duration::from_secs(20), "more command polls", || async {
            self.requests_to("/commands").len() >= polls + n
        })
        .await;
    }
}

type S = Arc<DoubleState>;

/// Records every request to a route of the double, as (method, path, JSON body or `null`),
/// before its handler runs.
async fn record(State(s): State<S>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    s.requests
        .lock()
        .unwrap()
        .push((parts.method.to_string(), parts.uri.path().to_owned(), json));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn session_gate(s: &S) -> Option<Response> {
    let d = s.delay_ms.load(Ordering::Relaxed);
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
    if s.down.load(Ordering::Relaxed) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "down").into_response());
    }
    None
}

async fn usage(State(s): State<S>, Path(id): Path<String>, body: axum::Json<Value>) -> Response {
    if let Some(r) = session_gate(&s).await {
        return r;
    }
    let every = s.fail_every.load(Ordering::Relaxed);
    if every > 0 && s.counter.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "flaky",
        )
            .into_response();
    }
    if s.reject_sessions.lock().unwrap().contains(&id) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "session unknown"})),
        )
            .into_response();
    }
    let mut recs = s.records.lock().unwrap();
    for r in body["records"].as_array().cloned().unwrap_or_default() {
        let rid = r["record_id"].as_str().unwrap_or("").to_owned();
        *recs.entry(rid).or_default() += 1;
    }
    axum::Json(json!({"accepted": true})).into_response()
}

async fn session_event(State(s): State<S>, _body: axum::Json<Value>) -> Response {
    if let Some(r) = session_gate(&s).await {
        return r;
    }
    axum::Json(json!({"ok": true})).into_response()
}

async fn register(_body: axum::Json<Value>) -> axum::Json<Value> {
    axum::Json(json!({"registered": true}))
}

/// Heartbeats, shutdown notices and command results.
async fn ok(_body: axum::Json<Value>) -> axum::Json<Value> {
    axum::Json(json!({"ok": true}))
}

async fn public_keys(State(s): State<S>) -> Response {
    if s.fail_public_keys.load(Ordering::Relaxed) > 0 {
        s.fail_public_keys.fetch_sub(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "keys unavailable").into_response();
    }
    axum::Json(json!({"keys": [{"kid": "k1", "alg": "EdDSA", "public_key_pem": TEST_PUBLIC_KEY}]}))
        .into_response()
}

async fn commands(State(s): State<S>) -> axum::Json<Value> {
    let list: Vec<Value> = s
        .commands
        .lock()
        .unwrap()
        .iter()
        .map(|t| json!({"token": t}))
        .collect();
    axum::Json(json!({"commands": list}))
}

/// Start the double; returns its state and base URL.
pub async fn start_double() -> (S, String) {
    let state: S = Arc::new(DoubleState::default());
    let app = Router::new()
        .route("/api/v1/sessions/{id}/usage-records", post(usage))
        .route("/api/v1/sessions/{id}/{action}", post(session_event))
        .route("/api/v1/servers/register", post(register))
        .route("/api/v1/servers/{id}/heartbeat", put(ok))
        .route("/api/v1/servers/{id}/shutdown", post(ok))
        .route("/api/v1/servers/{id}/public-keys", get(public_keys))
        .route("/api/v1/servers/{id}/commands", get(commands))
        .route("/api/v1/servers/{id}/commands/{cid}/result", post(ok))
        .route_layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (state, format!("http://{addr}"))
}

/// Test settings for one agent.
pub struct AgentSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub health_port: u16,
    pub prefix: String,
    pub redis_url: String,
    /// The agent's Redis keys (`prefix`), deleted when the setup is dropped.
    pub namespace: RedisNamespace,
}

/// Write a config with short timings. `extra` is appended under `metering:` sections via
/// overrides in `queues`/`control_plane` (YAML text with two-space indent inside `metering:`).
pub fn agent_setup(cp_url: &str, redis_url: &str, queues: &str, control_plane: &str) -> AgentSetup {
    let dir = tempfile::tempdir().unwrap();
    let namespace = RedisNamespace::on(redis_url, "metering");
    let prefix = namespace.prefix.clone();
    let health_port = free_port();
    let yaml = format!(
        "metering:\n  server: {{id: srv-test, region: test-region, port: 8080}}\n  redis: {{url: \"{redis_url}\", key_prefix: \"{prefix}\"}}\n  control_plane:\n    base_url: \"{cp_url}\"\n    api_key: \"${{CP_KEY}}\"\n    timeout: 5\n    retry_base: 0.01\n    retry_cap: 0.1\n{control_plane}  queues:\n    block_seconds: 0.2\n    lease_ttl_seconds: 1\n    reaper_interval_seconds: 0.3\n{queues}  monitoring:\n    heartbeat_interval: 0.5\n    health_check_port: {health_port}\n    metrics_port: {health_port}\n    command_poll_interval: 0.3\n    log_level: info\n"
    );
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, yaml).unwrap();
    AgentSetup {
        dir,
        config,
        health_port,
        prefix,
        redis_url: redis_url.into(),
        namespace,
    }
}

impl AgentSetup {
    /// `tether <args…> --config <the setup's config>`, with the control plane's key in the
    /// environment the config names.
    pub fn tether(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("CP_KEY", "test-key");
        command
    }

    /// The key of the usage-record queue the agent consumes.
    pub fn usage_queue(&self) -> String {
        format!("{}queue:usage_records", self.prefix)
    }

    /// The key of the usage-record dead-letter list.
    pub fn usage_dlq(&self) -> String {
        format!("{}metering:dlq:usage_records", self.prefix)
    }
}

/// [`agent_setup`] on the shared Redis (`REDIS_URL`), with a connection to it:
/// `(setup, connection, key prefix)`.
pub async fn shared_redis_setup(
    cp_url: &str,
    queues: &str,
    control_plane: &str,
) -> (AgentSetup, redis::aio::MultiplexedConnection, String) {
    let setup = agent_setup(cp_url, &redis_url(), queues, control_plane);
    let r = redis_conn(&setup.redis_url).await;
    let prefix = setup.prefix.clone();
    (setup, r, prefix)
}

/// The settings of a Redis-outage test: a crash or an outage never dead-letters
/// (`max_deliveries: 1000`), batches of 50.
pub const OUTAGE_QUEUES: &str = "    max_deliveries: 1000\n    batch_size: 50\n";

/// A control-plane double and a healthy agent (log 0) on `redis_url` with [`OUTAGE_QUEUES`]:
/// what a test that takes Redis away starts from.
pub async fn outage_agent(redis_url: &str) -> (S, AgentSetup, Child) {
    let (cp, cp_url) = start_double().await;
    let setup = agent_setup(&cp_url, redis_url, OUTAGE_QUEUES, "");
    let agent = spawn_agent(&setup, 0);
    wait_redis_connected(&setup, Duration::from_secs(20), "agent healthy").await;
    (cp, setup, agent)
}

/// `LPUSH queue msgs` on `redis_url`, retried every 100 ms until Redis takes it (a producer
/// that outlives a Redis outage); panics with the last error after 60 s, and at once on a URL
/// that does not parse.
pub async fn lpush_retrying(redis_url: &str, queue: &str, msgs: &[String]) {
    let client = redis::Client::open(redis_url).expect("a Redis URL");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pushed = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("LPUSH")
                .arg(queue)
                .arg(msgs)
                .query_async::<i64>(&mut c)
                .await
        };
        match pushed.await {
            Ok(_) => return,
            Err(err) if Instant::now() >= deadline => {
                panic!("LPUSH {queue}: Redis did not take it within 60 s: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// SIGTERM to `agent`, then asserts that it exits cleanly.
pub async fn stop_agent(agent: Child) {
    sigterm(&agent);
    assert!(wait_exit(agent).await.success());
}

/// Start `tether agent --config …`; logs go to `<dir>/agent-N.log`.
pub fn spawn_agent(setup: &AgentSetup, n: usize) -> Child {
    let log = std::fs::File::create(setup.dir.path().join(format!("agent-{n}.log"))).unwrap();
    setup
        .tether(&["agent"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn agent_logs(setup: &AgentSetup) -> String {
    let mut out = String::new();
    for n in 0..20 {
        if let Ok(s) = std::fs::read_to_string(setup.dir.path().join(format!("agent-{n}.log"))) {
            out.push_str(&s);
        }
    }
    out
}

pub async fn get_text(url: &str) -> Option<String> {
    tether_testkit::rest::get_text(&reqwest::Client::new(), url).await
}

/// Sends `request` and reads its answer as JSON; panics when either fails.
pub async fn send_json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    tether_testkit::redis::connect(url).await.unwrap()
}

pub async fn lpush(conn: &mut redis::aio::MultiplexedConnection, key: &str, items: &[String]) {
    let _: () = redis::cmd("LPUSH")
        .arg(key)
        .arg(items)
        .query_async(conn)
        .await
        .unwrap();
}

pub async fn llen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap()
}

/// Sum of the lengths of every processing list under `prefix`.
pub async fn processing_total(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> u64 {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}metering:processing:*"))
        .query_async(conn)
        .await
        .unwrap();
    let mut n = 0;
    for k in keys {
        n += llen(conn, &k).await;
    }
    n
}

/// Waits until the double has received every record id in `want`.
pub async fn wait_delivered<'a>(
    cp: &DoubleState,
    want: impl IntoIterator<Item = &'a String> + Copy,
    limit: Duration,
    what: &str,
) {
    eventually(limit, what, || async {
        let seen = cp.record_ids();
        want.into_iter().all(|id| seen.contains_key(id))
    })
    .await;
}

/// Waits until the agent's health check reports Redis connected.
pub async fn wait_redis_connected(setup: &AgentSetup, limit: Duration, what: &str) {
    let health_url = format!("http://127.0.0.1:{}/health", setup.health_port);
    eventually(limit, what, || async {
        get_json(&health_url)
            .await
            .is_some_and(|h| h["redis_connected"] == true)
    })
    .await;
}

/// Waits until `queue` and every processing list under `prefix` are empty.
pub async fn wait_drained(
    r: &redis::aio::MultiplexedConnection,
    prefix: &str,
    queue: &str,
    limit: Duration,
    what: &str,
) {
    eventually(limit, what, || {
        let mut r = r.clone();
        async move { llen(&mut r, queue).await == 0 && processing_total(&mut r, prefix).await == 0 }
    })
    .await;
}

/// Deletes every key under `prefix` now (an [`AgentSetup`] also does on drop).
pub async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    tether_testkit::redis::delete_prefix(conn, prefix)
        .await
        .unwrap();
}

/// Usage records with ids `ids`, spread round-robin over sessions `s0` … `s{sessions - 1}`.
pub fn usage_records(ids: &[String], sessions: usize) -> Vec<String> {
    let session = |i: usize| format!("s{}", i % sessions);
    let records = ids.iter().enumerate();
    records
        .map(|(i, id)| usage_record(&session(i), id))
        .collect()
}

pub fn usage_record(session: &str, record_id: &str) -> String {
    json!({
        "api_session_id": session, "customer_id": "cust-1", "product_code": "speech_transcription",
        "connection_duration_seconds": 1.5, "data_bytes_processed": 4096,
        "audio_duration_seconds": 1.25, "request_count": 1,
        "request_timestamp": "2026-11-23T10:00:00Z", "response_timestamp": "2026-11-23T10:00:01Z",
        "record_id": record_id
    })
    .to_string()
}
