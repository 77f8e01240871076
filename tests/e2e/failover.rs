//! Agents fail over (issue 16): two `tether server` instances share one Redis (their stream
//! log) and one data directory (their records); both agents list the two in `server_url`. In
//! the middle of a two-way stream the first instance gets `kill -9` and is not restarted: the
//! agents move to the second one on their own, and each dongle's record must equal exactly what
//! the other one replayed — nothing lost, nothing doubled, nothing reordered — with the group
//! active and its backlog drained on the surviving instance.

mod support;

use support::{
    Pair, ServerOptions, ServerProc, TestResult, Workspace, candump_frames, metric_sum, redis_url,
    require_redis,
};

/// The Redis database of this test (keys are per group id, so runs never share a stream).
const REDIS_DB: u32 = 11;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_first_server_fails_over_to_the_second() -> TestResult {
    let url = format!("{}/{REDIS_DB}", redis_url().trim_end_matches('/'));
    require_redis(&url).await?;
    let ws = Workspace::new()?;
    let mut first = ServerProc::start(
        &ws,
        ServerOptions {
            redis_url: Some(url),
            ..ServerOptions::default()
        },
    )
    .await?;
    let second = first.start_sibling("server-second").await?;
    let pair = Pair::start_with_servers(&ws, &[&first, &second], "frank").await?;
    let mut replay = pair.replay_both_ways(&ws)?;
    let outcome = async {
        pair.wait_mode(&first.api(), "active").await?;
        replay.running(300).await?;
        for agent in [&pair.a.agent, &pair.b.agent] {
            let text = agent.metrics().await.ok_or("agent metrics")?;
            let index = metric_sum(&text, "tether_agent_dongle_server_index", &[]);
            assert_eq!(
                index, 0.0,
                "{}: not on the first server\n{text}",
                agent.name
            );
        }
        let at_kill = candump_frames(&replay.b_rx).len();
        first.kill9();
        replay.check(&pair, "across the fail-over").await?;
        assert!(
            at_kill < replay.want_at_b.len(),
            "the kill came after the stream ended"
        );
        for agent in [&pair.a.agent, &pair.b.agent] {
            let text = agent.metrics().await.ok_or("agent metrics")?;
            let failovers = metric_sum(&text, "tether_agent_dongle_failovers_total", &[]);
            let index = metric_sum(&text, "tether_agent_dongle_server_index", &[]);
            assert!(failovers >= 1.0, "{}: no fail-over\n{text}", agent.name);
            assert_eq!(
                index, 1.0,
                "{}: not on the second server\n{text}",
                agent.name
            );
        }
        let group = pair.wait_mode(&second.api(), "active").await?;
        assert_eq!(group["backlog"]["a_to_b"], 0, "{group}");
        assert_eq!(group["backlog"]["b_to_a"], 0, "{group}");
        TestResult::Ok(())
    }
    .await;
    replay.stop().await?;
    pair.explain(&ws, outcome).await
}
