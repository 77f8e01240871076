//! Process-level: the Redis server (one this test starts on a spare port, AOF on) is restarted
//! under load. No record is lost and the agent recovers by itself.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::collections::HashSet;
use std::time::Duration;

use metering_support::*;
use tether_testkit::redis::OwnRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut server = OwnRedis::start(data.path()).await.unwrap();
    let url = server.url();

    let (cp, cp_url) = start_double().await;
    let setup = agent_setup(
        &cp_url,
        &url,
        "    max_deliveries: 1000\n    batch_size: 50\n",
        "",
    );
    let p = setup.prefix.clone();
    let queue = setup.usage_queue();
    let agent = spawn_agent(&setup, 0);
    wait_redis_connected(&setup, Duration::from_secs(20), "agent healthy").await;

    let ids: Vec<String> = (0..3000).map(|i| format!("r-{i}")).collect();
    let mut pushed = 0;
    for (round, chunk) in ids.chunks(100).enumerate() {
        let msgs: Vec<String> = chunk.iter().map(|id| usage_record("s1", id)).collect();
        // The producer retries across the restart too.
        loop {
            if let Ok(mut c) = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                && redis::cmd("LPUSH")
                    .arg(&queue)
                    .arg(&msgs)
                    .query_async::<i64>(&mut c)
                    .await
                    .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    let want: HashSet<String> = ids.iter().cloned().collect();
    wait_delivered(
        &cp,
        &want,
        Duration::from_secs(90),
        "every record delivered",
    )
    .await;
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
