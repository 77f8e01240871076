//! Process-level: good and malformed messages on all three queues, control-plane refusals,
//! registration, heartbeat, health, metrics, DLQ tools and graceful shutdown.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::time::Duration;

use metering_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_messages_flow_and_malformed_ones_are_dead_lettered() {
    let (cp, url) = start_double().await;
    cp.reject_sessions
        .lock()
        .unwrap()
        .insert("refused-session".into());
    let setup = agent_setup(&url, &redis_url(), "", "");
    let p = &setup.prefix;
    let mut r = redis_conn(&setup.redis_url).await;

    let good_usage: Vec<String> = (0..50)
        .map(|i| usage_record(&format!("s{}", i % 5), &format!("good-{i}")))
        .collect();
    let mut usage_no_id: serde_json::Value =
        serde_json::from_str(&usage_record("s0", "x")).unwrap();
    usage_no_id.as_object_mut().unwrap().remove("record_id");
    let bad_usage = vec![
        "not json".to_owned(),
        "[1,2,3]".to_owned(),
        usage_record("bad/session", "b1"),
        usage_record("", "b2"),
        usage_record("s1", "b3").replace("speech_transcription", "translation"),
        usage_record("s1", "b4").replace("\"request_count\":1", "\"request_count\":-1"),
        usage_record("s1", "b5").replace(
            "\"data_bytes_processed\":4096",
            "\"data_bytes_processed\":\"4096\"",
        ),
        usage_record("s1", "b6").replace("2026-11-23T10:00:01Z", "yesterday"),
        usage_record("s1", "b7").replace("\"customer_id\":\"cust-1\",", ""),
        usage_record("s1", "b8").replace(
            "\"audio_duration_seconds\":1.25",
            "\"audio_duration_seconds\":-0.5",
        ),
    ];
    let lifecycle_good = [
        json!({"event": "start", "api_session_id": "s1", "customer_id": "c", "timestamp": "2026-11-23T10:00:00Z"}).to_string(),
        json!({"event": "complete", "api_session_id": "s1", "customer_id": "c", "timestamp": "2026-11-23T10:05:00Z"}).to_string(),
    ];
    let lifecycle_bad = vec![
        json!({"event": "pause", "api_session_id": "s1", "customer_id": "c", "timestamp": "2026-11-23T10:00:00Z"}).to_string(),
        json!({"event": "start", "api_session_id": "s1", "customer_id": "c"}).to_string(),
    ];
    let refresh_good = [
        json!({"api_session_id": "s2", "customer_id": "c", "requested_seconds": 300}).to_string(),
    ];
    let refresh_bad = vec![
        json!({"api_session_id": 5, "customer_id": "c"}).to_string(),
        "{".to_owned(),
    ];
    let refused = vec![usage_record("refused-session", "refused-1")];

    // Interleave bad among good so good ones must flow around them.
    let mut usage_all = Vec::new();
    for (i, g) in good_usage.iter().enumerate() {
        usage_all.push(g.clone());
        if let Some(b) = bad_usage.get(i) {
            usage_all.push(b.clone());
        }
    }
    usage_all.push(usage_no_id.to_string());
    usage_all.extend(refused.clone());
    // LPUSH pushes in order; the consumer takes the oldest first.
    // One LPUSH of several values pushes them one after another, like as many LPUSHes.
    let queues = [
        ("usage_records", usage_all.clone()),
        (
            "session_lifecycle",
            [&lifecycle_good[..], &lifecycle_bad].concat(),
        ),
        ("quota_refresh", [&refresh_good[..], &refresh_bad].concat()),
    ];
    for (queue, messages) in &queues {
        lpush(&mut r, &format!("{p}queue:{queue}"), messages).await;
    }

    let agent = spawn_agent(&setup, 0);
    let health_url = format!("http://127.0.0.1:{}/health", setup.health_port);
    eventually(
        Duration::from_secs(30),
        "all good usage records delivered",
        || async {
            let seen = cp.record_ids();
            (0..50).all(|i| seen.contains_key(&format!("good-{i}")))
                && seen.keys().any(|k| k.starts_with("sha256:"))
        },
    )
    .await;
    let dlq_expected = [
        ("usage_records", bad_usage.len() + refused.len()),
        ("session_lifecycle", lifecycle_bad.len()),
        ("quota_refresh", refresh_bad.len()),
    ];
    eventually(Duration::from_secs(30), "dead-letter queues filled", || {
        let mut r = r.clone();
        let p = p.clone();
        async move {
            let mut ok = true;
            for (q, n) in dlq_expected {
                ok &= llen(&mut r, &format!("{p}metering:dlq:{q}")).await == n as u64;
            }
            ok
        }
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "lifecycle and refresh delivered",
        || async {
            !cp.requests_to("/s1/start").is_empty()
                && !cp.requests_to("/s1/complete").is_empty()
                && !cp.requests_to("/s2/refresh").is_empty()
        },
    )
    .await;

    // Nothing malformed reached the control plane; the enriched fields are there.
    let seen = cp.record_ids();
    for b in ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"] {
        assert!(!seen.contains_key(b), "malformed record {b} was forwarded");
    }
    let batches = cp.requests_to("/usage-records");
    let rec = &batches[0].2["records"][0];
    let enrichment = [
        "server_instance_id",
        "api_server_region",
        "processing_timestamp",
        "agent_version",
    ];
    assert_fields(rec, &enrichment);
    assert_eq!(rec["api_server_region"], "test-region");
    // Batching: fewer requests than good records.
    assert!(
        batches.len() < 52,
        "records were not batched per session: {} requests",
        batches.len()
    );
    let refresh = &cp.requests_to("/s2/refresh")[0].2;
    assert!(uuid::Uuid::parse_str(refresh["transaction_id"].as_str().unwrap()).is_ok());
    // start was sent before complete.
    let reqs = cp.requests.lock().unwrap().clone();
    let pos = |s: &str| reqs.iter().position(|r| r.1.ends_with(s)).unwrap();
    assert!(pos("/s1/start") < pos("/s1/complete"));

    // DLQ entries carry reasons, attempts, timestamps, the original payload; refusals the response.
    let list = run_ok(&mut setup.tether(&[
        "agent",
        "metering",
        "dlq",
        "list",
        "--queue",
        "usage_records",
    ]));
    let entries: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), bad_usage.len() + refused.len());
    for e in &entries {
        assert!(!e["reason"].as_str().unwrap().is_empty());
        assert!(e["dead_lettered_at"].is_string() && e["attempts"].as_u64().unwrap() >= 1);
        assert!(
            usage_all.contains(&e["payload"].as_str().unwrap().to_owned()),
            "payload changed: {e}"
        );
    }
    let refused_entry = entries
        .iter()
        .find(|e| e["payload"] == refused[0].as_str())
        .unwrap();
    assert_eq!(refused_entry["response_status"], 400);
    assert!(
        refused_entry["response_body"]
            .as_str()
            .unwrap()
            .contains("session unknown")
    );
    let reasons: Vec<&str> = entries
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for want in [
        "not valid JSON",
        "not a JSON object",
        "api_session_id",
        "product_code",
        "non-negative",
        "RFC 3339",
        "customer_id",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no DLQ reason mentions {want}: {reasons:?}"
        );
    }

    // Admin endpoint needs the API key; retry through it once the session is accepted.
    let http = reqwest::Client::new();
    let admin = format!(
        "http://127.0.0.1:{}/admin/dlq/usage_records",
        setup.health_port
    );
    assert_eq!(http.get(&admin).send().await.unwrap().status(), 401);
    let listed = send_json(http.get(&admin).header("X-API-Key", "test-key")).await;
    assert_eq!(listed["entries"].as_array().unwrap().len(), entries.len());
    cp.reject_sessions.lock().unwrap().clear();
    let id = refused_entry["id"].as_str().unwrap();
    let retry = format!("{admin}/retry?id={id}");
    let retried = send_json(http.post(retry).header("X-API-Key", "test-key")).await;
    assert_eq!(retried["retried"], 1);
    eventually(
        Duration::from_secs(30),
        "retried record delivered",
        || async { cp.record_ids().contains_key("refused-1") },
    )
    .await;
    // Purge through the CLI.
    let purge = run_ok(&mut setup.tether(&["agent", "metering", "dlq", "purge", "--all"]));
    let total: usize = dlq_expected.iter().map(|(_, n)| n).sum();
    assert_eq!(purge.trim(), format!("{{\"purged\": {}}}", total - 1));

    // Health, metrics, registration, heartbeat.
    let resp = reqwest::get(&health_url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["redis_connected"], true);
    let health = [
        "timestamp",
        "version",
        "uptime_seconds",
        "control_plane_connected",
    ];
    assert_fields(&h, &health);
    let m = get_text(&format!("http://127.0.0.1:{}/metrics", setup.health_port))
        .await
        .unwrap();
    for name in [
        "usage_records_processed_total",
        "redis_connection_status",
        "redis_queue_depth",
        "delivery_latency_seconds",
        "control_plane_retries_total",
        "metering_dlq_size",
        "circuit_breaker_state",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
    assert!(
        m.lines().any(|l| l.starts_with(
            "control_plane_request_seconds_count{endpoint=\"/api/v1/sessions/{id}/usage-records\",outcome=\"success\"}"
        ) && !l.ends_with(" 0")),
        "no request histogram by endpoint and outcome:\n{m}"
    );
    assert!(
        m.contains("outcome=\"client_error\""),
        "refusals are not timed as client_error"
    );
    assert!(
        m.contains("queue_name=\"usage_records\"")
            && m.contains("server_id=\"srv-test\"")
            && m.contains("region=\"test-region\"")
    );
    let reg = cp.requests_to("/servers/register");
    assert_eq!(reg[0].2["server_id"], "srv-test");
    assert_eq!(
        reg[0].2["capabilities"]["supported_products"],
        "speech_transcription"
    );
    eventually(Duration::from_secs(10), "heartbeat", || async {
        !cp.requests_to("/heartbeat").is_empty()
    })
    .await;
    let hb = &cp.requests_to("/heartbeat")[0].2;
    eventually(Duration::from_secs(10), "an online heartbeat", || async {
        cp.requests_to("/heartbeat")
            .iter()
            .any(|r| r.2["status"] == "online")
    })
    .await;
    assert!(
        cp.requests_to("/heartbeat")
            .iter()
            .all(|r| ["online", "degraded"].contains(&r.2["status"].as_str().unwrap_or(""))),
        "heartbeat status outside online/degraded"
    );
    let heartbeat_metrics = [
        "usage_records_processed",
        "control_plane_requests",
        "redis_queue_depth",
        "failed_deliveries",
        "memory_usage_mb",
        "cpu_usage_percent",
    ];
    assert_fields(&hb["metrics"], &heartbeat_metrics);

    // Graceful stop: shutdown notified, nothing left held.
    sigterm(&agent);
    let status = wait_exit(agent).await;
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        agent_logs(&setup)
    );
    assert_eq!(cp.requests_to("/shutdown").len(), 1);
    assert_eq!(cp.requests_to("/shutdown")[0].2["status"], "offline");
    assert_eq!(processing_total(&mut r, p).await, 0);
    let logs = agent_logs(&setup);
    assert!(
        logs.contains("\"correlation_id\""),
        "logs lack correlation ids"
    );
    cleanup(&mut r, p).await;
}
