//! Process-level: `kill -9` of the agent at random moments while records flow, then restart.
//! Every queued record reaches the control plane at least once, nothing else does, and the
//! queue and processing lists end empty.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metering_support::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing() {
    const RECORDS: usize = 4000;
    const KILLS: usize = 5;
    let (cp, url) = start_double().await;
    // Slow answers widen the window in which items are held when the kill lands.
    cp.delay_ms.store(5, Ordering::Relaxed);
    // Crashes must never dead-letter here: allow many deliveries.
    let (setup, mut r, p) =
        shared_redis_setup(&url, "    max_deliveries: 1000\n    batch_size: 100\n", "").await;
    let queue = setup.usage_queue();
    let produced: Vec<String> = (0..RECORDS).map(|i| format!("rec-{i}")).collect();

    let producer = {
        let mut r = r.clone();
        let queue = queue.clone();
        let produced = produced.clone();
        tokio::spawn(async move {
            for chunk in produced.chunks(100) {
                lpush(&mut r, &queue, &usage_records(chunk, 7)).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    let mut agent = spawn_agent(&setup, 0);
    for k in 1..=KILLS {
        let wait = rand::rng().random_range(150..700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kill9(&mut agent);
        agent = spawn_agent(&setup, k);
    }
    producer.await.unwrap();

    let want: HashSet<String> = produced.iter().cloned().collect();
    wait_delivered(
        &cp,
        &want,
        Duration::from_secs(120),
        "every record delivered",
    )
    .await;
    wait_drained(
        &r,
        &p,
        &queue,
        Duration::from_secs(60),
        "queue and processing lists empty",
    )
    .await;
    let seen = cp.record_ids();
    let extra: Vec<&String> = seen.keys().filter(|k| !want.contains(*k)).collect();
    assert!(
        extra.is_empty(),
        "sent records that were never queued: {extra:?}"
    );
    assert_eq!(llen(&mut r, &setup.usage_dlq()).await, 0);
    let redelivered = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} records, {redelivered} seen more than once (the control plane deduplicates them)",
        seen.len()
    );

    // The last agent may have started a moment ago (its predecessors delivered everything):
    // a SIGTERM before it installed its handlers would be the default action, not a stop.
    wait_redis_connected(&setup, Duration::from_secs(30), "the last agent up").await;
    stop_agent(agent).await;
    cleanup(&mut r, &p).await;
}
