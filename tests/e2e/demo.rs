//! `tether demo` as a newcomer runs it: start it, take the token and console URL it prints,
//! watch `can_frame` events arrive over SSE, stop it with SIGINT (Ctrl-C) and check that it and
//! every process it started are gone.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use support::{PATIENCE, SseReader, TETHER, TestResult, eventually, signal, wait_child};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_streams_frames_and_stops_cleanly_on_ctrl_c() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let mut demo = Command::new(TETHER)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "4",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = demo.stdout.take().ok_or("no stdout")?;
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let outcome = async {
        // The ready-to-paste line: curl -N -H "Authorization: Bearer TOKEN" URL
        let mut printed = Vec::new();
        let curl = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines_rx.recv().await {
                printed.push(line.clone());
                if line.trim_start().starts_with("curl -N") {
                    return Some(line);
                }
            }
            None
        })
        .await?
        .ok_or("the demo ended before printing its curl line")?;
        // Then the ready ReadDTC command for the demo car.
        let command_curl = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines_rx.recv().await {
                if line.trim_start().starts_with("curl -X POST") {
                    return Some(line);
                }
            }
            None
        })
        .await?
        .ok_or("the demo ended before printing its command curl line")?;
        let token = curl
            .split("Bearer ")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| format!("no token in {curl:?}"))?
            .to_owned();
        let url = curl.split_whitespace().last().ok_or("no URL")?.to_owned();
        assert!(token.starts_with("tu_"), "{token}");
        assert!(url.contains("/api/v1/streams/groups/"), "{url}");
        let server = url.split("/api/v1/").next().ok_or("no base")?.to_owned();
        assert!(
            printed
                .iter()
                .any(|l| l.contains("/api/v1/streams/dongles/")),
            "dongle consoles are printed: {printed:?}"
        );
        // The web page's ready link signs in with the same token, and the page is served.
        let link = format!("{server}/#token={token}");
        assert!(
            printed
                .iter()
                .any(|l| l.trim_start().starts_with("web page") && l.contains(&link)),
            "the web page link is printed: {printed:?}"
        );
        let page = reqwest::get(format!("{server}/")).await?;
        assert_eq!(page.status(), reqwest::StatusCode::OK);
        assert!(page.text().await?.contains("ui/app.js"));

        // Frames show up on the group console (bearer) and on the multiplexed console
        // (`?access_token=`, as a browser's EventSource would do it).
        let console = SseReader::open(url.clone(), Some(token.clone()));
        let frames = eventually(
            PATIENCE,
            "a few can_frame events on the group console",
            || async {
                let frames = console.of_type("can_frame");
                (frames.len() >= 5).then_some(frames)
            },
        )
        .await?;
        for frame in &frames {
            assert!(
                frame["id"].as_str().is_some_and(|id| id.starts_with("0x")),
                "{frame}"
            );
            assert!(frame["data_hex"].is_string(), "{frame}");
        }
        // Those frames came from dongles that sign their datagrams to agents that refuse
        // unsigned ones: agent ↔ server relay of signed REMP traffic.
        for side in ["a", "b"] {
            let config = std::fs::read_to_string(data.join(format!("agent-{side}.yaml")))?;
            assert!(config.contains("require_auth: true"), "{config}");
            assert!(config.contains("keys:"), "{config}");
        }
        let group_id = url
            .trim_end_matches("/console")
            .rsplit('/')
            .next()
            .ok_or("no group id")?
            .to_owned();
        let browser = SseReader::open(
            format!("{server}/api/v1/streams/console?groups={group_id}&access_token={token}"),
            None,
        );
        eventually(PATIENCE, "can_frame events with ?access_token=", || async {
            (!browser.of_type("can_frame").is_empty()).then_some(())
        })
        .await?;
        let (status, group) = support::Api::new(server.clone())
            .get(&format!("/api/v1/groups/{group_id}"), &token)
            .await?;
        assert_eq!(status, reqwest::StatusCode::OK, "{group}");
        assert_ne!(group["mode"], "inactive", "{group}");
        // The printed ReadDTC runs on the demo car's simulated engine ECU through agent A's
        // diagnostics role.
        let body: Value = serde_json::from_str(
            command_curl
                .split(" -d '")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .ok_or_else(|| format!("no body in {command_curl:?}"))?,
        )?;
        let api = support::Api::new(server.clone());
        let (status, accepted) = api.post("/api/v1/commands", &token, body).await?;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{accepted}");
        let id = accepted["command_id"]
            .as_str()
            .ok_or("no command_id")?
            .to_owned();
        let done = eventually(PATIENCE, "the demo ReadDTC completes", || async {
            let (_, c) = api
                .get(&format!("/api/v1/commands/{id}"), &token)
                .await
                .ok()?;
            (c["status"] == "completed" || c["status"] == "failed").then_some(c)
        })
        .await?;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, responses) = api
            .get(&format!("/api/v1/commands/{id}/responses"), &token)
            .await?;
        let payload = &responses["responses"][0]["response_payload"];
        assert_eq!(payload["ecu"], "engine", "{responses}");
        assert_eq!(payload["dtcs"][0]["dtcCode"], "P0420", "{responses}");
        TestResult::Ok(server)
    }
    .await;

    signal(demo.id(), "INT");
    let status = wait_child(&mut demo, Duration::from_secs(60)).await?;
    let server = outcome?;
    assert!(status.success(), "demo exit status {status}");
    // Everything it started is gone: the server no longer answers.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    assert!(
        client
            .get(format!("{server}/healthz"))
            .send()
            .await
            .is_err(),
        "the demo's server still answers after the demo exited"
    );
    // The data directory is the demo's own and is wiped at the next start.
    assert!(data.join(".tether-demo").exists());
    Ok(())
}

#[tokio::test]
async fn demo_refuses_to_wipe_a_directory_it_did_not_make() -> TestResult {
    let dir = tempfile::tempdir()?;
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me")?;
    let out = Command::new(TETHER)
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("REDIS_URL")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to wipe"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious)?, "keep me");
    Ok(())
}
