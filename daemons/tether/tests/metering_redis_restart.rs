//! Process-level: the Redis server (one this test starts on a spare port, AOF on) is restarted
//! under load. No record is lost and the agent recovers by itself.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metering_support::*;

fn start_redis(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed")
}

async fn wait_redis(url: &str) {
    eventually(Duration::from_secs(20), "redis up", || async {
        match redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut server = start_redis(port, data.path());
    wait_redis(&url).await;

    let (cp, cp_url) = start_double().await;
    let setup = agent_setup(
        &cp_url,
        &url,
        "    max_deliveries: 1000\n    batch_size: 50\n",
        "",
    );
    let p = setup.prefix.clone();
    let queue = format!("{p}queue:usage_records");
    let agent = spawn_agent(&setup, 0);
    let health_url = format!("http://127.0.0.1:{}/health", setup.health_port);
    eventually(Duration::from_secs(20), "agent healthy", || async {
        get_json(&health_url)
            .await
            .is_some_and(|h| h["redis_connected"] == true)
    })
    .await;

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
            let _ = server.wait();
            tokio::time::sleep(Duration::from_millis(700)).await;
            server = start_redis(port, data.path());
            wait_redis(&url).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pushed, ids.len());

    let want: HashSet<String> = ids.iter().cloned().collect();
    eventually(
        Duration::from_secs(90),
        "every record delivered",
        || async {
            let seen = cp.record_ids();
            want.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    let mut r = redis_conn(&url).await;
    eventually(Duration::from_secs(30), "lists empty", || {
        let mut r = r.clone();
        let (p, queue) = (p.clone(), queue.clone());
        async move { llen(&mut r, &queue).await == 0 && processing_total(&mut r, &p).await == 0 }
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "agent reports redis connected again",
        || async {
            get_json(&health_url)
                .await
                .is_some_and(|h| h["redis_connected"] == true)
        },
    )
    .await;
    let logs = agent_logs(&setup);
    assert!(
        logs.contains("fetch failed") || logs.contains("redis operation failed"),
        "the Redis outage should have been seen and logged"
    );

    sigterm(&agent);
    assert!(wait_exit(agent).await.success());
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut r)
        .await;
    let _ = server.wait();
}
