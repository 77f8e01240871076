//! Agents fail over (issue 16): two `tether server` instances share one Redis (their stream
//! log) and one data directory (their records); both agents list the two in `server_url`. In
//! the middle of a two-way stream the first instance gets `kill -9` and is not restarted: the
//! agents move to the second one on their own, and each dongle's record must equal exactly what
//! the other one replayed — nothing lost, nothing doubled, nothing reordered — with the group
//! active and its backlog drained on the surviving instance.
//!
//! With three instances (the cluster of issue 16, with real agents and REMP dongles): side A's
//! agent on instance 1 (then instance 3), side B's on instance 2; `kill -9` of instance 1
//! mid-stream, A fails over to instance 3, nothing lost or doubled, and the group's mode and
//! backlog right on every instance still up — instance 2 and 3 each holding one side.

mod support;

use support::{
    Api, Pair, ServerOptions, ServerProc, TestResult, Workspace, metric_sum, redis_url,
    require_redis,
};

/// The Redis database of this test (keys are per group id, so runs never share a stream).
const REDIS_DB: u32 = 11;

/// The first instance: on this test's Redis database, a fresh data directory (its siblings
/// share both).
async fn first_server(ws: &Workspace) -> TestResult<ServerProc> {
    let url = format!("{}/{REDIS_DB}", redis_url().trim_end_matches('/'));
    require_redis(&url).await?;
    ServerProc::start(
        ws,
        ServerOptions {
            redis_url: Some(url),
            ..ServerOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_first_server_fails_over_to_the_second() -> TestResult {
    let ws = Workspace::new()?;
    let mut first = first_server(&ws).await?;
    let second = first.start_sibling("server-second").await?;
    let pair = Pair::start_with_servers(&ws, &[&first, &second], "frank").await?;
    let mut replay = pair.replay_both_ways(&ws)?;
    let outcome = async {
        pair.wait_mode(&first.api(), "active").await?;
        replay.running(300).await?;
        for agent in pair.agents() {
            let (index, _, text) = server_index(agent).await?;
            assert_eq!(
                index, 0.0,
                "{}: not on the first server\n{text}",
                agent.name
            );
        }
        let at_kill = replay.received_at_b();
        first.kill9();
        replay
            .check_across(&pair, "across the fail-over", at_kill)
            .await?;
        for agent in pair.agents() {
            let (index, failovers, text) = server_index(agent).await?;
            assert!(failovers >= 1.0, "{}: no fail-over\n{text}", agent.name);
            assert_eq!(
                index, 1.0,
                "{}: not on the second server\n{text}",
                agent.name
            );
        }
        pair.assert_drained(&second.api()).await?;
        TestResult::Ok(())
    }
    .await;
    replay.stop().await?;
    pair.explain(&ws, outcome).await
}

/// The agent's server index (0: its first `server_url`), fail-overs so far, and its metrics
/// text (for failure messages).
async fn server_index(agent: &support::AgentProc) -> TestResult<(f64, f64, String)> {
    let text = agent.metrics_text().await?;
    Ok((
        metric_sum(&text, "tether_agent_dongle_server_index", &[]),
        metric_sum(&text, "tether_agent_dongle_failovers_total", &[]),
        text,
    ))
}

/// Waits until `api` shows the group active with no backlog.
async fn active_drained(api: &Api, pair: &Pair) -> TestResult {
    let group = pair.wait_mode(api, "active").await?;
    support::eventually(
        std::time::Duration::from_secs(20),
        "backlog drained",
        || async {
            api.group(&pair.user_token, &pair.group_id)
                .await
                .filter(|g| {
                    g["mode"] == "active"
                        && g["backlog"]["a_to_b"] == 0
                        && g["backlog"]["b_to_a"] == 0
                })
        },
    )
    .await
    .map_err(|err| format!("{err} (last seen {group})"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_side_a_instance_fails_over_to_the_third_of_three() -> TestResult {
    let ws = Workspace::new()?;
    let mut first = first_server(&ws).await?;
    let second = first.start_sibling("server-second").await?;
    let third = first.start_sibling("server-third").await?;
    let user_token = first.user_token("gwen")?;
    // A: instance 1, then 3; B: instance 2 only.
    let pair = Pair::start_with_bases(
        &ws,
        &first,
        "gwen",
        user_token,
        [
            &[first.base.as_str(), third.base.as_str()],
            &[second.base.as_str()],
        ],
    )
    .await?;
    let mut replay = pair.replay_both_ways(&ws)?;
    let outcome = async {
        for server in [&first, &second, &third] {
            pair.wait_mode(&server.api(), "active").await?;
        }
        replay.running(300).await?;
        assert_eq!(
            server_index(&pair.a.agent).await?.0,
            0.0,
            "A not on instance 1"
        );
        let at_kill = replay.received_at_b();
        first.kill9();
        let what = "across the fail-over to a third instance";
        replay.check_across(&pair, what, at_kill).await?;
        let (index, failovers, _) = server_index(&pair.a.agent).await?;
        assert_eq!(
            (index, failovers >= 1.0),
            (1.0, true),
            "A not on instance 3"
        );
        assert_eq!(
            server_index(&pair.b.agent).await?.0,
            0.0,
            "B left instance 2"
        );
        for server in [&second, &third] {
            active_drained(&server.api(), &pair).await?;
        }
        TestResult::Ok(())
    }
    .await;
    replay.stop().await?;
    pair.explain(&ws, outcome).await
}
