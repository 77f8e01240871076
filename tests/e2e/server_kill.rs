//! `kill -9` of `tether server` in the middle of a two-way stream, then a restart on the same
//! data directory and port: with the SQLite default and with Redis (`REDIS_URL`), no
//! acknowledged frame is lost or duplicated. The agents keep unacknowledged frames in their
//! outboxes and resend them, the server acknowledges only durable frames and deduplicates
//! resends, and the receiving agents deduplicate by sequence number — so each dongle's record
//! must equal exactly what the other one replayed.

mod support;

use std::time::Duration;

use support::{
    Pair, ServerOptions, ServerProc, TestResult, Workspace, metric_sum, redis_url, require_redis,
};

async fn kill_mid_stream(options: ServerOptions, user: &str) -> TestResult {
    let ws = Workspace::new()?;
    let mut server = ServerProc::start(&ws, options).await?;
    let api = server.api();
    let pair = Pair::start(&ws, &server, user).await?;
    let mut replay = pair.replay_both_ways(&ws)?;
    let outcome = async {
        pair.wait_mode(&api, "active").await?;
        // Mid-stream: some frames through in both directions, most still to come.
        replay.running(300).await?;
        let at_kill = replay.received_at_b();
        server.kill9();
        // Down for a moment while the dongles keep sending into the agents' outboxes.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.restart().await?;
        replay
            .check_across(&pair, "across kill -9", at_kill)
            .await?;
        // Both agents saw the server go away (check_relayed made sure they dropped nothing
        // once they knew the group).
        for agent in pair.agents() {
            let text = agent.metrics_text().await?;
            let disconnects = metric_sum(&text, "tether_agent_dongle_disconnects_total", &[]);
            assert!(
                disconnects >= 1.0,
                "{}: no disconnect seen\n{text}",
                agent.name
            );
        }
        pair.assert_drained(&api).await?;
        TestResult::Ok(())
    }
    .await;
    replay.stop().await?;
    pair.explain(&ws, outcome).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_sqlite_loses_and_duplicates_nothing() -> TestResult {
    kill_mid_stream(ServerOptions::default(), "dave").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_redis_loses_and_duplicates_nothing() -> TestResult {
    let url = redis_url();
    require_redis(&url).await?;
    kill_mid_stream(
        ServerOptions {
            redis_url: Some(url),
            ..ServerOptions::default()
        },
        "erin",
    )
    .await
}
