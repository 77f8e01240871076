//! Process-level: a control-plane outage (shortened: the breaker opens after two failed attempt
//! cycles and probes every 0.5 s). The breaker opens, consumption pauses, the DLQ stays empty,
//! and everything is delivered after recovery. Also 1-in-5 transient 503s with `Retry-After`.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use metering_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_opens_the_breaker_and_nothing_is_dead_lettered() {
    let (cp, url) = start_double().await;
    cp.down.store(true, Ordering::Relaxed);
    let (setup, mut r, p) = shared_redis_setup(
        &url,
        "    batch_size: 20\n",
        "    breaker_failure_threshold: 2\n    breaker_open_seconds: 0.5\n",
    )
    .await;
    let queue = setup.usage_queue();
    let ids: Vec<String> = (0..1000).map(|i| format!("o-{i}")).collect();
    lpush(&mut r, &queue, &usage_records(&ids, 10)).await;

    let agent = spawn_agent(&setup, 0);
    let metrics_url = format!("http://127.0.0.1:{}/metrics", setup.health_port);
    let health_url = format!("http://127.0.0.1:{}/health", setup.health_port);
    eventually(Duration::from_secs(30), "breaker open", || async {
        get_text(&metrics_url).await.is_some_and(|m| {
            m.lines()
                .any(|l| l.starts_with("circuit_breaker_state{") && l.ends_with(" 2"))
        })
    })
    .await;
    // Hold the outage for several probe periods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resp = reqwest::get(&health_url).await.unwrap();
    assert_eq!(resp.status(), 503, "/health answers 503 while degraded");
    let h: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["control_plane_connected"], false);
    // Consumption paused: most items are still queued, none dead-lettered, none accepted.
    assert!(
        llen(&mut r, &queue).await > 500,
        "consumption did not pause"
    );
    assert_eq!(llen(&mut r, &setup.usage_dlq()).await, 0);
    assert!(cp.record_ids().is_empty());
    let probes_during_outage = cp.requests_to("/usage-records").len();

    // Recovery, with flaky 503s (Retry-After: 0) on top.
    cp.fail_every.store(5, Ordering::Relaxed);
    cp.down.store(false, Ordering::Relaxed);
    wait_delivered(
        &cp,
        &ids,
        Duration::from_secs(60),
        "everything delivered after recovery",
    )
    .await;
    wait_drained(&r, &p, &queue, Duration::from_secs(30), "lists empty").await;
    assert_eq!(llen(&mut r, &setup.usage_dlq()).await, 0);
    // The outage cost a bounded number of requests (probes), not one per item.
    assert!(
        probes_during_outage < 200,
        "{probes_during_outage} requests during the outage"
    );
    let m = get_text(&metrics_url).await.unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("control_plane_retries_total{") && !l.ends_with(" 0"))
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("circuit_breaker_state{") && l.ends_with(" 0"))
    );

    stop_agent(agent).await;
    cleanup(&mut r, &p).await;
}
