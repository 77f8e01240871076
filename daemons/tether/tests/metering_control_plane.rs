//! The metering pipeline end to end with `tether server` as the control plane: queues in Redis
//! → `tether agent` → the server's control plane, which computes the credits. Faults of the
//! transport (503s, timeouts) are the double's job (`metering_outage.rs`); here the processes
//! are real, and are killed with `kill -9`.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metering_support::*;
use rand::Rng;
use serde_json::{Value, json};

fn tether(args: &[&str], data_dir: &Path) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    run_ok(command.args(args).arg("--data-dir").arg(data_dir))
        .trim()
        .to_owned()
}

/// Starts `tether server` on `port`; returns once it listens.
fn start_server(data_dir: &Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "server did not start: {line}");
    child
}

fn spawn_agent_with_key(setup: &AgentSetup, n: usize, key: &str) -> Child {
    let log = std::fs::File::create(setup.dir.path().join(format!("agent-{n}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["agent", "--config"])
        .arg(&setup.config)
        .env("CP_KEY", key)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

struct Plane {
    http: reqwest::Client,
    dir: tempfile::TempDir,
    port: u16,
    key: String,
    operator: String,
}

impl Plane {
    fn new(credits: u32) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = tether(
            &[
                "server",
                "metering",
                "key",
                "create",
                "--server-id",
                "srv-test",
            ],
            d,
        );
        tether(
            &[
                "server",
                "metering",
                "customer",
                "create",
                "--id",
                "cust-1",
                "--credits",
                &credits.to_string(),
            ],
            d,
        );
        let operator = tether(
            &[
                "server", "token", "create", "--user", "ops", "--role", "operator",
            ],
            d,
        );
        Plane {
            http: reqwest::Client::new(),
            dir,
            port: free_port(),
            key,
            operator,
        }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url()))
            .bearer_auth(&self.operator)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn credits(audio: f64, connection: f64) -> i64 {
    (audio.max(connection) / 360.0).ceil() as i64
}

fn record(session: &str, id: &str, audio: f64, connection: f64) -> String {
    json!({
        "api_session_id": session, "customer_id": "cust-1", "product_code": "speech_transcription",
        "connection_duration_seconds": connection, "audio_duration_seconds": audio,
        "data_bytes_processed": 100, "request_count": 1,
        "request_timestamp": "2026-11-23T10:00:00Z", "response_timestamp": "2026-11-23T10:00:01Z",
        "record_id": id
    })
    .to_string()
}

fn event(session: &str, ev: &str) -> String {
    json!({"event": ev, "api_session_id": session, "customer_id": "cust-1",
           "timestamp": "2026-11-23T10:00:00Z"})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sessions_are_charged_by_the_formula() {
    const SESSIONS: usize = 1000;
    const BALANCE: u32 = 10_000_000;
    let plane = Plane::new(BALANCE);
    let mut server = start_server(plane.dir.path(), plane.port);
    let (setup, mut r, p) = shared_redis_setup(&plane.url(), "", "").await;

    let mut rng = rand::rng();
    let mut want: HashMap<String, i64> = HashMap::new();
    let (mut records, mut events) = (Vec::new(), Vec::new());
    for i in 0..SESSIONS {
        let s = format!("sess-{i}");
        let audio = rng.random_range(0.0..4000.0_f64);
        let connection = audio + rng.random_range(0.0..400.0_f64);
        want.insert(s.clone(), credits(audio, connection));
        records.push(record(&s, &format!("rec-{i}"), audio, connection));
        events.push(event(&s, "start"));
    }
    lpush(&mut r, &setup.usage_queue(), &records).await;
    lpush(&mut r, &format!("{p}queue:session_lifecycle"), &events).await;
    // The same refresh twice (a producer retry): one grant.
    let refresh = json!({"api_session_id": "sess-0", "customer_id": "cust-1",
                         "transaction_id": "tx-retried"})
    .to_string();
    lpush(
        &mut r,
        &format!("{p}queue:quota_refresh"),
        &[refresh.clone(), refresh],
    )
    .await;
    let mut agent = spawn_agent_with_key(&setup, 0, &plane.key);

    let total: i64 = want.values().sum();
    eventually(Duration::from_secs(45), "every record charged", || async {
        let (_, c) = plane.get("/api/v1/metering/customers/cust-1").await;
        c["balance"] == json!(i64::from(BALANCE) - total)
    })
    .await;
    let quota_queue = format!("{p}queue:quota_refresh");
    wait_drained(
        &r,
        &p,
        &quota_queue,
        Duration::from_secs(20),
        "lists drained",
    )
    .await;
    for (s, credits) in &want {
        let (status, v) = plane.get(&format!("/api/v1/metering/sessions/{s}")).await;
        assert_eq!(status, 200, "{s}: {v}");
        assert_eq!(v["credits_consumed"], json!(credits), "{s}: {v}");
        assert_eq!(v["usage_records"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["customer_id"], "cust-1");
    }
    let (_, s0) = plane.get("/api/v1/metering/sessions/sess-0").await;
    assert_eq!(
        s0["refreshes"], 1,
        "a retried transaction grants once: {s0}"
    );
    assert_eq!(
        s0["credits_granted"], 20,
        "initial 10 + one refresh of 10: {s0}"
    );

    // The same transaction again over HTTP answers the same and grants nothing more.
    let http = reqwest::Client::new();
    let post = |path: String, key: &str| {
        http.post(format!("{}{path}", plane.url()))
            .header("X-API-Key", key.to_owned())
            .json(&json!({"customer_id": "cust-1", "transaction_id": "tx-http"}))
    };
    let a = send_json(post("/api/v1/sessions/sess-1/refresh".into(), &plane.key)).await;
    let b = send_json(post("/api/v1/sessions/sess-1/refresh".into(), &plane.key)).await;
    assert_eq!(a, b);
    assert_eq!(a["granted"], 10);
    let (_, s1) = plane.get("/api/v1/metering/sessions/sess-1").await;
    assert_eq!(s1["refreshes"], 1);
    // A wrong key is refused, and so is a key used for another server's path.
    let bad = post("/api/v1/sessions/sess-1/refresh".into(), "tm_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let other = http
        .put(format!(
            "{}/api/v1/servers/srv-other/heartbeat",
            plane.url()
        ))
        .header("X-API-Key", &plane.key)
        .json(&json!({"status": "online"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);

    // Registration, heartbeats, a signed command and its stored result.
    let (_, servers) = plane.get("/api/v1/metering/servers").await;
    assert_eq!(servers[0]["server_id"], "srv-test", "{servers}");
    assert_eq!(servers[0]["status"], "online", "{servers}");
    let queue_command = |command: &str| {
        let url = format!("{}/api/v1/servers/srv-test/commands", plane.url());
        let body = json!({ "command": command });
        send_json(http.post(url).bearer_auth(&plane.operator).json(&body))
    };
    let queued = queue_command("health_check").await;
    let cid = queued["command_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(15), "command result stored", || async {
        let (_, c) = plane.get(&format!("/api/v1/metering/commands/{cid}")).await;
        c["status"] == "succeeded" && c["result"]["result"]["status"] == "healthy"
    })
    .await;
    // After a rotation the agent fetches the new key (unknown kid) and still runs commands.
    let rotated = http
        .post(format!(
            "{}/api/v1/metering/signing-keys/rotate",
            plane.url()
        ))
        .bearer_auth(&plane.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 201);
    let keys = send_json(
        http.get(format!(
            "{}/api/v1/servers/srv-test/public-keys",
            plane.url()
        ))
        .header("X-API-Key", &plane.key),
    )
    .await;
    assert_eq!(
        keys["keys"].as_array().unwrap().len(),
        2,
        "current and previous: {keys}"
    );
    let queued = queue_command("get_metrics").await;
    let cid = queued["command_id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(15),
        "command after rotation",
        || async {
            let (_, c) = plane.get(&format!("/api/v1/metering/commands/{cid}")).await;
            c["status"] == "succeeded"
        },
    )
    .await;
    // Operators only.
    let user = tether(
        &["server", "token", "create", "--user", "viewer"],
        plane.dir.path(),
    );
    let forbidden = http
        .get(format!("{}/api/v1/metering/servers", plane.url()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    sigterm(&agent);
    let _ = agent.wait();
    eventually(Duration::from_secs(5), "offline after shutdown", || async {
        let (_, servers) = plane.get("/api/v1/metering/servers").await;
        servers[0]["status"] == "offline"
    })
    .await;
    kill9(&mut server);
    cleanup(&mut r, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_agent_and_server_loses_nothing_and_charges_once() {
    const SESSIONS: usize = 200;
    const PER_SESSION: usize = 5;
    const BALANCE: u32 = 10_000_000;
    let plane = Plane::new(BALANCE);
    let mut server = start_server(plane.dir.path(), plane.port);
    let (setup, mut r, p) = shared_redis_setup(
        &plane.url(),
        "    batch_size: 20\n",
        "    breaker_failure_threshold: 2\n    breaker_open_seconds: 0.3\n",
    )
    .await;
    let mut rng = rand::rng();
    let mut want: HashMap<String, i64> = HashMap::new();
    let mut records = Vec::new();
    for i in 0..SESSIONS * PER_SESSION {
        let s = format!("k-sess-{}", i % SESSIONS);
        let audio = rng.random_range(0.0..2000.0_f64);
        let connection = rng.random_range(0.0..2000.0_f64);
        *want.entry(s.clone()).or_default() += credits(audio, connection);
        records.push(record(&s, &format!("k-rec-{i}"), audio, connection));
    }
    let total: i64 = want.values().sum();
    let queue = setup.usage_queue();
    // Fed in slices, so the kills land while records flow.
    let mut slices = records.chunks(records.len() / 4);
    lpush(&mut r, &queue, slices.next().unwrap()).await;
    let mut agent = spawn_agent_with_key(&setup, 0, &plane.key);
    let balance = || async {
        plane.get("/api/v1/metering/customers/cust-1").await.1["balance"]
            .as_i64()
            .unwrap_or(i64::from(BALANCE))
    };
    eventually(Duration::from_secs(20), "first records charged", || async {
        balance().await < i64::from(BALANCE)
    })
    .await;
    lpush(&mut r, &queue, slices.next().unwrap()).await;
    kill9(&mut server);
    lpush(&mut r, &queue, slices.next().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server = start_server(plane.dir.path(), plane.port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut agent);
    for rest in slices {
        lpush(&mut r, &queue, rest).await;
    }
    let mut agent = spawn_agent_with_key(&setup, 1, &plane.key);
    eventually(Duration::from_secs(45), "every record charged", || async {
        balance().await == i64::from(BALANCE) - total
    })
    .await;
    wait_drained(&r, &p, &queue, Duration::from_secs(20), "lists drained").await;
    for (s, credits) in &want {
        let (_, v) = plane.get(&format!("/api/v1/metering/sessions/{s}")).await;
        assert_eq!(v["credits_consumed"], json!(credits), "{s}: {v}");
        assert_eq!(
            v["usage_records"].as_array().unwrap().len(),
            PER_SESSION,
            "each record once: {v}"
        );
    }
    assert_eq!(
        llen(&mut r, &setup.usage_dlq()).await,
        0,
        "{}",
        agent_logs(&setup)
    );
    // Still exactly the total after everything settled (no late double charge).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(balance().await, i64::from(BALANCE) - total);
    sigterm(&agent);
    let _ = agent.wait();
    kill9(&mut server);
    cleanup(&mut r, &p).await;
}
