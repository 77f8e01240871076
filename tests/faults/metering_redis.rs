//! Redis killed (SIGKILL) and restarted in the middle of metering: a `tether agent` with the
//! metering role takes usage records from Redis queues (reliable-queue pattern) and delivers
//! them to a control-plane double, while a producer keeps pushing (and retries its pushes
//! across the outage). Redis runs with its append-only file fsynced at every write, so every
//! push it acknowledged survives the kill. Every record must reach the control plane; a record
//! whose delivery was not yet settled in Redis when it died may be delivered again with the same
//! `record_id` (the idempotency key the control plane deduplicates on), and those repeats are
//! bounded by what was in flight.

use std::time::Duration;

use crate::metering_support::{
    kill9, lpush_retrying, outage_agent, sigterm, usage_records, wait_delivered, wait_exit,
    wait_redis_connected,
};
use crate::support::{TestResult, Workspace};
use tether_testkit::redis::OwnRedis;

const RECORDS: usize = 2000;
const CHUNK: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_metering_loses_nothing() -> TestResult {
    let ws = Workspace::new()?;
    let mut redis = OwnRedis::start(&ws.path("redis")).await?;
    let url = redis.url();
    let (cp, setup, agent) = outage_agent(&url).await;
    let queue = setup.usage_queue();
    let ids: Vec<String> = (0..RECORDS).map(|i| format!("k-{i}")).collect();
    for (round, chunk) in ids.chunks(CHUNK).enumerate() {
        lpush_retrying(&url, &queue, &usage_records(chunk, 1)).await;
        if round == 5 {
            redis.kill9();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            if let Err(err) = redis.restart().await {
                let mut agent = agent;
                kill9(&mut agent);
                let _ = agent.wait();
                return Err(err);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_delivered(&cp, &ids, Duration::from_secs(90), "every record delivered").await;
    let seen = cp.record_ids();
    let repeats: u32 = seen.values().map(|n| n - 1).sum();
    // Only what was in flight at the kill can come again: one batch per delivery slot at most.
    assert!(
        repeats as usize <= 4 * CHUNK,
        "{repeats} repeated deliveries for one Redis kill"
    );
    assert!(
        seen.keys().all(|id| ids.contains(id)),
        "unknown records delivered"
    );
    wait_redis_connected(
        &setup,
        Duration::from_secs(20),
        "agent reconnected to Redis",
    )
    .await;
    sigterm(&agent);
    assert!(wait_exit(agent).await.success());
    Ok(())
}
