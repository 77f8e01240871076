//! The metering specification's configuration file, as a deployer writes it: `--check-config`
//! says which layout it read, and the agent runs from it — `redis.socket_timeout` and
//! `retry_on_timeout` accepted, `log_level: "INFO"`, file logs in `monitoring.log_dir` kept
//! `log_retention_days`, heartbeats `online`, `/health` 200.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use metering_support::*;

fn spec_yaml(health_port: u16, prefix: &str, log_dir: Option<&std::path::Path>) -> String {
    let log_dir = log_dir
        .map(|d| format!(", log_dir: \"{}\"", d.display()))
        .unwrap_or_default();
    format!(
        r#"server:        {{id: "${{SERVER_ID}}", region: "${{AWS_REGION}}", port: 8081}}
redis:         {{host: "${{REDIS_HOST}}", port: 6379, password: "${{REDIS_PASSWORD}}", db: 0,
                socket_timeout: 30, retry_on_timeout: true, key_prefix: "{prefix}"}}
control_plane: {{base_url: "${{CONTROL_PLANE_URL}}", api_key: "${{CONTROL_PLANE_API_KEY}}",
                timeout: 30, retry_attempts: 3}}
monitoring:    {{heartbeat_interval: 0.3, metrics_port: {health_port}, health_check_port: {health_port},
                log_level: "INFO", log_retention_days: 7{log_dir}}}
"#
    )
}

/// `tether agent --config path --check-config` with the environment of [`command`]: its stdout,
/// after asserting that it succeeded.
fn check_config(path: &std::path::Path, cp_url: &str, password: &str) -> String {
    run_ok(command(path, cp_url, password).arg("--check-config"))
}

fn command(config: &std::path::Path, cp_url: &str, password: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.args(["agent", "--config"])
        .arg(config)
        .env("SERVER_ID", "speech-spec-1")
        .env("AWS_REGION", "eu-west-1")
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PASSWORD", password)
        .env("CONTROL_PLANE_URL", cp_url)
        .env("CONTROL_PLANE_API_KEY", "spec-key");
    c
}

#[test]
fn check_config_names_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, spec_yaml(8081, "", None)).unwrap();
    let stdout = check_config(&spec, "http://127.0.0.1:9", "pw");
    assert!(
        stdout.contains("layout: metering specification"),
        "{stdout}"
    );
    assert!(stdout.contains("heartbeat every 0.3 s"), "{stdout}");
    assert!(
        stdout.contains("log_retention_days applies only"),
        "{stdout}"
    );

    // The deployment's file (deploy/metering.yaml) passes with its environment file's names.
    let deployed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/metering.yaml");
    let stdout = check_config(std::path::Path::new(deployed), "https://cp.example.com", "");
    assert!(
        stdout.contains("logs: /var/log/tether (daily files, kept 7 days)"),
        "{stdout}"
    );

    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/examples/metering.yaml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["agent", "--config", example, "--check-config"])
        .env("TETHER_SERVER_ID", "s")
        .env("TETHER_CONTROL_PLANE_API_KEY", "k")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("layout: role sections"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_from_the_specification_file() {
    let (cp, url) = start_double().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let port = free_port();
    let prefix = format!("mspec:{}:", uuid::Uuid::new_v4());
    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, spec_yaml(port, &prefix, Some(&logs))).unwrap();
    // The local Redis has no password; an empty one sends none.
    let mut child = command(&spec, &url, "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut r = redis_conn(&redis_url()).await;
    lpush(
        &mut r,
        &format!("{prefix}queue:usage_records"),
        &[usage_record("spec-s1", "spec-r1")],
    )
    .await;
    eventually(Duration::from_secs(20), "record delivered", || async {
        cp.record_ids().contains_key("spec-r1")
    })
    .await;
    eventually(Duration::from_secs(10), "online heartbeat", || async {
        cp.requests_to("/heartbeat")
            .iter()
            .any(|h| h.2["status"] == "online" && h.1.contains("speech-spec-1"))
    })
    .await;
    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let files: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("metering agent starting"), "{text}");
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tether-agent."),
        "{files:?}"
    );
    cleanup(&mut r, &prefix).await;
}
