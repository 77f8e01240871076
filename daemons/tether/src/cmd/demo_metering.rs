//! `tether demo --metering`: the metering pipeline beside the relay demo. Sets up the server's
//! control plane (a data-plane server key, a customer with credits, the demo user as operator),
//! starts a `tether agent` with the metering role against it, and pushes a few speech sessions
//! (start, usage records, a quota refresh, complete) through Redis, as a speech API server would.

use std::path::Path;

use anyhow::Context;
use chrono::Utc;
use serde_json::json;

use tether_server::metering::MeteringStore;

/// Redis key prefix of the demo's queues (the demo's keys only, on a shared Redis).
const PREFIX: &str = "tether-demo:";
/// The demo's data-plane server and customer.
const SERVER_ID: &str = "demo-speech-1";
const CUSTOMER: &str = "demo-customer";

/// What the demo prints.
pub(super) struct MeteringDemo {
    /// Port of the agent's `/health` and `/metrics`.
    pub health_port: u16,
    /// Sessions pushed.
    pub sessions: Vec<String>,
}

/// Creates the key, customer and operator role in `server_dir`, writes the agent's config and
/// returns the agent command to start with it.
pub(super) fn prepare(
    exe: &Path,
    dir: &Path,
    server_dir: &Path,
    base: &str,
    redis_url: &str,
    operator: &str,
) -> anyhow::Result<(tokio::process::Command, u16)> {
    let store = MeteringStore::open_in(server_dir)?;
    let (_, key) = store.create_server_key(SERVER_ID, Utc::now())?;
    store.upsert_customer(CUSTOMER, 1000, Utc::now())?;
    store.grant_operator(operator)?;
    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    let config = dir.join("agent-metering.yaml");
    let yaml = format!(
        "# written by `tether demo --metering`\nmetering:\n  server: {{id: {SERVER_ID}, region: demo, port: 8081}}\n  redis: {{url: \"{redis_url}\", key_prefix: \"{PREFIX}\"}}\n  control_plane: {{base_url: \"{base}\", api_key: \"${{CONTROL_PLANE_API_KEY}}\"}}\n  monitoring: {{heartbeat_interval: 5, health_check_port: {health_port}, metrics_port: {health_port}, command_poll_interval: 2}}\n"
    );
    std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = super::demo::child_command(exe, dir, "agent-metering")?;
    cmd.args(["agent", "--config"])
        .arg(&config)
        .env("CONTROL_PLANE_API_KEY", key);
    Ok((cmd, health_port))
}

/// Pushes three sessions onto the demo's queues.
pub(super) async fn push_sessions(redis_url: &str) -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(redis_url).context("redis URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {redis_url} (--redis-url)"))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut sessions = Vec::new();
    for (i, (audio, connection)) in [(95.5, 120.0), (400.0, 410.0), (1500.0, 1499.0)]
        .into_iter()
        .enumerate()
    {
        let s = format!("demo-{}-{i}", &run[..8]);
        let now = Utc::now().to_rfc3339();
        let event = |ev: &str| {
            json!({"event": ev, "api_session_id": s, "customer_id": CUSTOMER, "timestamp": now})
                .to_string()
        };
        let record = json!({
            "api_session_id": s, "customer_id": CUSTOMER, "product_code": "speech_transcription",
            "connection_duration_seconds": connection, "audio_duration_seconds": audio,
            "data_bytes_processed": 64000, "request_count": 1,
            "request_timestamp": now, "response_timestamp": now, "record_id": format!("{s}-r1")
        })
        .to_string();
        let refresh = json!({"api_session_id": s, "customer_id": CUSTOMER,
                             "transaction_id": format!("{s}-t1")})
        .to_string();
        let _: () = redis::pipe()
            .lpush(format!("{PREFIX}queue:session_lifecycle"), event("start"))
            .lpush(format!("{PREFIX}queue:usage_records"), record)
            .lpush(format!("{PREFIX}queue:quota_refresh"), refresh)
            .lpush(
                format!("{PREFIX}queue:session_lifecycle"),
                event("complete"),
            )
            .query_async(&mut conn)
            .await
            .context("pushing demo sessions")?;
        sessions.push(s);
    }
    Ok(sessions)
}

/// The lines `tether demo` prints about metering.
pub(super) fn print(m: &MeteringDemo, base: &str, token: &str) {
    println!();
    println!(
        "Metering: a metering agent ({SERVER_ID}) forwards Redis queues {PREFIX}queue:* to this server's control plane."
    );
    println!(
        "  agent     http://127.0.0.1:{}/health  /metrics",
        m.health_port
    );
    println!(
        "  customer  curl -H \"Authorization: Bearer {token}\" {base}/api/v1/metering/customers/{CUSTOMER}"
    );
    for s in &m.sessions {
        println!(
            "  session   curl -H \"Authorization: Bearer {token}\" {base}/api/v1/metering/sessions/{s}"
        );
    }
    println!(
        "  servers   curl -H \"Authorization: Bearer {token}\" {base}/api/v1/metering/servers"
    );
}
