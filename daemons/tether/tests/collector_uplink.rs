//! `tether collector`, vehicle ↔ remote over a real WebSocket on loopback, frames from a real
//! socketcand bus: stream, ack and mark; an outage of the remote (local growth, `Disconnected`
//! status frames with a growing queue, resume from the last ack, nothing lost or twice); the
//! `MAX_LOCAL_RECORDS` cap under an outage with an exact dropped count; a bad key refused
//! before the upgrade.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod collector_support;

use std::time::Duration;

use collector_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survives_a_remote_outage_and_resumes_from_the_last_ack() {
    let mut site = Site::start().await;
    let renv = site.remote_env("car-1:key-1,car-2:key-2");
    let mut remote = site.spawn("remote", &renv);
    let vehicle = site.spawn("vehicle", &site.vehicle_env("key-1"));
    wait_status(&vehicle, "the vehicle connected", |s| {
        s["state"] == "connected"
    })
    .await;

    // Stream, ack, mark.
    site.bus.send_counters(0..300).await;
    wait_remote_records(&remote.http, "car-1", 300).await;
    let status = wait_status(&vehicle, "everything marked uplinked", |s| {
        s["acked_seq"] == 300 && s["queue_size"] == 0
    })
    .await;
    assert_eq!(status["last_seq"], 300);
    assert!(vehicle_records(&vehicle).await.iter().all(|(_, _, up)| *up));

    // The remote goes away: the vehicle keeps collecting and says so on the bus.
    remote.kill();
    wait_status(&vehicle, "the vehicle noticed", |s| {
        s["state"] != "connected"
    })
    .await;
    let bus = &mut site.bus;
    bus.status_frames(Duration::from_millis(300)).await;
    bus.send_counters(300..400).await;
    let mid = bus.status_frames(Duration::from_millis(600)).await;
    bus.send_counters(400..500).await;
    let late = bus.status_frames(Duration::from_millis(600)).await;
    let queue_of = |frames: &[(u8, u32)]| {
        frames
            .iter()
            .filter(|(state, _)| *state == 2 || *state == 0)
            .map(|(_, q)| *q)
            .max()
    };
    assert!(
        mid.iter().any(|(state, _)| *state == 2),
        "no Disconnected status frame: {mid:?}"
    );
    assert!(
        queue_of(&late) > queue_of(&mid),
        "the queue did not grow: {mid:?} {late:?}"
    );
    let status = wait_status(&vehicle, "200 records queued", |s| s["queue_size"] == 200).await;
    assert_eq!(status["acked_seq"], 300);
    let stored = vehicle_records(&vehicle).await;
    assert_eq!(stored.len(), 500);
    assert_eq!(stored.iter().filter(|(_, _, up)| !up).count(), 200);

    // The remote comes back: resume from its ack, nothing lost, nothing twice.
    let mut remote = site.spawn("remote", &renv);
    wait_status(&vehicle, "all 500 uplinked", |s| {
        s["acked_seq"] == 500 && s["queue_size"] == 0 && s["state"] == "connected"
    })
    .await;
    let held = remote_records(&remote.http, "car-1").await;
    let expected: Vec<(u64, u32)> = (1..=500).map(|s| (s, s as u32 - 1)).collect();
    assert_eq!(held, expected);
    assert!(remote_records(&remote.http, "car-2").await.is_empty());
    let vehicles = get_json(
        &format!("{}/api/v1/telemetry/vehicles", remote.http),
        Some(READ_KEY),
    )
    .await
    .unwrap();
    assert_eq!(vehicles["vehicles"][0]["id"], "car-1");
    assert_eq!(vehicles["vehicles"][0]["last_seq"], 500);
    // The read API wants its key.
    assert!(
        get_json(
            &format!("{}/api/v1/telemetry/vehicles", remote.http),
            Some("nope")
        )
        .await
        .is_none()
    );
    assert!(remote.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_under_an_outage_and_counts_exactly_what_it_dropped() {
    let mut site = Site::start().await;
    let mut env = site.vehicle_env("key-1");
    env.push(("MAX_LOCAL_RECORDS", "50".into()));
    let vehicle = site.spawn("vehicle", &env);
    wait_status(&vehicle, "the vehicle is up", |s| s["state"] != "connected").await;
    site.bus.send_counters(0..230).await;
    let status = wait_status(&vehicle, "230 frames in", |s| s["can_frames"] == 230).await;
    assert_eq!(status["stored"], 50);
    assert_eq!(status["queue_size"], 50);
    assert_eq!(status["dropped_overflow"], 180);
    assert_eq!(status["dropped_total"], 180);
    let metrics = reqwest::get(format!("{}/metrics", vehicle.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tether_telemetry_vehicle_records_dropped{reason=\"overflow\"} 180"),
        "{metrics}"
    );
    // The remote appears: it gets exactly the 50 records kept, the newest ones, in order.
    let remote = site.spawn("remote", &site.remote_env("car-1:key-1"));
    wait_status(&vehicle, "the kept records uplinked", |s| {
        s["queue_size"] == 0 && s["state"] == "connected"
    })
    .await;
    let held = remote_records(&remote.http, "car-1").await;
    let counters: Vec<u32> = held.iter().map(|(_, c)| *c).collect();
    assert_eq!(counters, (180..230).collect::<Vec<_>>());
    let seqs: Vec<u64> = held.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let status = vehicle_status(&vehicle).await.unwrap();
    assert_eq!(
        status["dropped_total"], 180,
        "a dropped count never changes afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_is_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let remote = Collector::spawn(
        dir.path(),
        "remote",
        &remote_env(&dir.path().join("remote.db"), port, "car-1:key-1"),
    );
    wait_for("the remote is up", || async {
        reqwest::get(format!("{}/healthz", remote.http))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    for key in [None, Some("wrong"), Some("key-1x")] {
        let mut req = format!("ws://127.0.0.1:{port}/ws/telemetry/upload")
            .into_client_request()
            .unwrap();
        if let Some(k) = key {
            req.headers_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{key:?}")
            }
            other => panic!("{key:?} was not refused: {other:?}"),
        }
    }
    // The right key gets a welcome naming the vehicle its key maps to.
    let mut req = format!("ws://127.0.0.1:{port}/ws/telemetry/upload")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer key-1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let welcome: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["vehicle"], "car-1");
    assert_eq!(welcome["acked"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_telemetry_role_uplinks_with_the_agent_token() {
    let mut site = Site::start().await;
    // The agent's telemetry role stands where a vehicle collector would.
    let (dir, remote_port, dashboard_port) = (site.dir.path(), site.remote_port, site.vehicle_port);
    let remote = site.spawn("remote", &site.remote_env("truck-9:ta_agent_token"));
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "server_url: http://127.0.0.1:{remote_port}\ntoken: ${{AGENT_TOKEN}}\n\
             data_dir: {}\ntelemetry:\n  can_bus: socketcand://{}/vcan0\n  \
             listen: 127.0.0.1:{dashboard_port}\n  status_interval_ms: 200\n",
            dir.join("agent").display(),
            site.bus.addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["agent", "--config"])
        .arg(&config)
        .env("AGENT_TOKEN", "ta_agent_token")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let dashboard = format!("http://127.0.0.1:{dashboard_port}/api/v1/telemetry/status");
    wait_status_at(&dashboard, "the agent's telemetry role connected", |s| {
        s["state"] == "connected"
    })
    .await;
    site.bus.send_counters(0..40).await;
    // Under the agent token's vehicle.
    wait_remote_records(&remote.http, "truck-9", 40).await;
    assert!(dir.join("agent").join("telemetry.db").exists());
    let _ = agent.kill();
    let _ = agent.wait();
}
