//! Process-level: the Redis server (one this test starts on a spare port, AOF on) is restarted
//! under load. No record is lost and the agent recovers by itself.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::time::Duration;

use metering_support::*;
use tether_testkit::redis::OwnRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut server = OwnRedis::start(data.path()).await.unwrap();
    let url = server.url();

    let (cp, setup, agent) = outage_agent(&url).await;
    let p = setup.prefix.clone();
    let queue = setup.usage_queue();

    let ids: Vec<String> = (0..3000).map(|i| format!("r-{i}")).collect();
    let mut pushed = 0;
    for (round, chunk) in ids.chunks(100).enumerate() {
        // The producer retries across the restart too.
        lpush_retrying(&url, &queue, &usage_records(chunk, 1)).await;
        pushed += chunk.len();
        if round == 10 {
            // Restart mid-stream: SHUTDOWN flushes the AOF; same dir and port.
            let mut c = redis_conn(&url).await;
            let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut c).await;
            server.wait_stopped();
            tokio::time::sleep(Duration::from_millis(700)).await;
            server.restart().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pushed, ids.len());

    wait_delivered(&cp, &ids, Duration::from_secs(90), "every record delivered").await;
    let mut r = redis_conn(&url).await;
    wait_drained(&r, &p, &queue, Duration::from_secs(30), "lists empty").await;
    wait_redis_connected(
        &setup,
        Duration::from_secs(20),
        "agent reports redis connected again",
    )
    .await;
    let logs = agent_logs(&setup);
    assert!(
        logs.contains("fetch failed") || logs.contains("redis operation failed"),
        "the Redis outage should have been seen and logged"
    );

    stop_agent(agent).await;
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut r)
        .await;
    server.wait_stopped();
}
