//! The group relay end to end, with real processes: `tether server` (SQLite default), two
//! `tether agent` dongle roles and two `tether can dongle` simulated dongles replaying halves of
//! the real capture shipped in `data/captures`. What one dongle replays must arrive at the other
//! complete and in order (compared through the `--record` candump logs), also across an agent
//! outage (backlog, `degraded`, replay) and a retention trim (exactly the trimmed frames
//! reported, the rest in order).

mod support;

use std::time::Duration;

use support::{
    Api, PATIENCE, Pair, ServerOptions, ServerProc, SseReader, TestResult, Workspace,
    assert_same_frames, candump_frames, check_relayed, default_server, eventually, metric_sum,
    settle_frames, wait_frames,
};

/// Replay speed: the 64 s capture in about 6 s, slow enough that UDP on loopback never
/// overflows a socket buffer (the dongle ↔ agent hop has no retransmission by design).
const SPEED: &str = "10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_both_ways_complete_and_in_order() -> TestResult {
    let (ws, server) = default_server().await?;
    let api = server.api();
    let pair = Pair::start(&ws, &server, "alice").await?;
    let mut replay = pair.replay_both_ways_at(&ws, SPEED)?;
    let outcome = async {
        pair.wait_mode(&api, "active").await?;
        replay.check(&pair, "in one run").await?;
        pair.assert_drained(&api).await?;
        // Nothing was lost on the UDP hops.
        for agent in pair.agents() {
            let text = agent.metrics_text().await?;
            for family in [
                "tether_agent_dongle_remp_lost_datagrams",
                "tether_agent_dongle_remp_dongle_dropped",
            ] {
                assert_eq!(
                    metric_sum(&text, family, &[]),
                    0.0,
                    "{}: {family}\n{text}",
                    agent.name
                );
            }
        }
        // Both dongles are online, seen through the API.
        for id in [&pair.a.dongle_id, &pair.b.dongle_id] {
            let (_, dongle) = api
                .get(&format!("/api/v1/dongles/{id}"), &pair.user_token)
                .await?;
            assert_eq!(dongle["online"], true, "{dongle}");
            assert!(dongle["last_seen"].is_string(), "{dongle}");
        }
        TestResult::Ok(())
    }
    .await;
    replay.stop().await?;
    pair.explain(&ws, outcome).await
}

/// Backlog of one direction from a group state body.
fn backlog(group: &serde_json::Value, direction: &str) -> u64 {
    group["backlog"][direction].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_outage_buffers_then_replays_in_order() -> TestResult {
    let (ws, server) = default_server().await?;
    let api = server.api();
    let mut pair = Pair::start(&ws, &server, "bob").await?;
    let console = SseReader::open(pair.group_console(&server), Some(pair.user_token.clone()));
    let from_a = ws.split_capture("a.log", |_| true)?;
    let want = candump_frames(&from_a);
    let b_rx = ws.path("b-received.log");
    let mut dongle_b = pair.b.recording_dongle(&ws, &b_rx)?;
    let mut dongle_a = pair.a.replaying_dongle(&ws, &from_a, SPEED)?;
    let outcome = async {
        pair.wait_mode(&api, "active").await?;
        wait_frames(&b_rx, 200, "B receives A's first frames").await?;

        pair.b.agent.stop().await?;
        let degraded = eventually(PATIENCE, "group degraded with side b offline", || async {
            api.group(&pair.user_token, &pair.group_id)
                .await
                .filter(|g| g["mode"] == "degraded" && g["offline_side"] == "b")
        })
        .await?;
        // The backlog grows while A keeps sending (seen through the API).
        let first = backlog(&degraded, "a_to_b");
        let grown = eventually(PATIENCE, "a_to_b backlog grows", || async {
            api.group(&pair.user_token, &pair.group_id)
                .await
                .filter(|g| backlog(g, "a_to_b") > first.max(1))
        })
        .await?;
        assert_eq!(grown["mode"], "degraded", "{grown}");
        eventually(PATIENCE, "group_state event: degraded", || async {
            console
                .of_type("group_state")
                .into_iter()
                .find(|e| e["mode"] == "degraded")
        })
        .await?;
        // Let A finish its capture while B is away: everything after the outage is backlog.
        let replayed = dongle_a.finished().await?;
        assert!(replayed.success(), "dongle A: {replayed}");
        // With B away, what B has is final: the backlog must account for every other frame.
        // B's dongle writes its log through a buffer, so its count is read again on every try.
        let skipped = pair.a.agent.leading_drops().await?;
        let seen = std::cell::Cell::new((0, 0));
        let (api_r, pair_r, b_rx_r, want_r, seen_r) = (&api, &pair, &b_rx, &want, &seen);
        let waited = eventually(PATIENCE, "backlog = sent − delivered", || async move {
            let received_before = candump_frames(b_rx_r).len();
            let expected = u64::try_from(want_r.len() - skipped - received_before).ok()?;
            let group = api_r.group(&pair_r.user_token, &pair_r.group_id).await?;
            seen_r.set((backlog(&group, "a_to_b"), expected));
            (backlog(&group, "a_to_b") == expected).then_some(())
        })
        .await;
        if let Err(e) = waited {
            let (last, expected) = seen.get();
            return Err(format!("{e}: last backlog {last} against {expected} expected").into());
        }
        let expected_backlog = seen.get().1;

        pair.b.agent.spawn()?;
        pair.b.agent.ready().await?;
        check_relayed("A → B across B's outage", &want, &pair.a.agent, &b_rx).await?;
        let active = pair.wait_mode(&api, "active").await?;
        assert_eq!(backlog(&active, "a_to_b"), 0, "{active}");
        eventually(PATIENCE, "group_state event: active again", || async {
            let states = console.of_type("group_state");
            let degraded_at = states.iter().position(|e| e["mode"] == "degraded")?;
            states[degraded_at..]
                .iter()
                .find(|e| e["mode"] == "active")
                .cloned()
        })
        .await?;
        // The console showed the backlog growing while B was away, not only the backlog at
        // the moment the group turned degraded.
        let states = console.of_type("group_state");
        let at_degraded = states
            .iter()
            .find(|e| e["mode"] == "degraded")
            .map_or(0, |e| backlog(e, "a_to_b"));
        let peak = states
            .iter()
            .map(|e| backlog(e, "a_to_b"))
            .max()
            .unwrap_or(0);
        assert!(
            peak > at_degraded.max(first),
            "group_state events never showed the a_to_b backlog growing past {} (REST showed {} \
             after the outage began and {expected_backlog} at its end): {states:?}",
            at_degraded.max(first),
            backlog(&grown, "a_to_b"),
        );
        TestResult::Ok(())
    }
    .await;
    dongle_b.stop().await?;
    pair.explain(&ws, outcome).await
}

/// The undelivered frames a buffer-pressure `log` event reports removed.
fn trimmed_in_log_event(event: &serde_json::Value) -> Option<u64> {
    (event["fields"]["event"] == "buffer_pressure")
        .then(|| event["fields"]["unacknowledged"].as_u64())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trim_reports_exactly_the_trimmed_frames() -> TestResult {
    const MAX_LEN: usize = 500;
    let ws = Workspace::new()?;
    let server = ServerProc::start(
        &ws,
        ServerOptions {
            extra_config: format!("relay:\n  max_len: {MAX_LEN}\n  trim_interval_secs: 1\n"),
            ..ServerOptions::default()
        },
    )
    .await?;
    let api: Api = server.api();
    let mut pair = Pair::start(&ws, &server, "carol").await?;
    let console = SseReader::open(pair.group_console(&server), Some(pair.user_token.clone()));
    // B is away for the whole capture: A's frames pile up beyond the retention length.
    pair.b.agent.stop().await?;
    let from_a = ws.split_capture("a.log", |i| i < 3000)?;
    let want = candump_frames(&from_a);
    let b_rx = ws.path("b-received.log");
    let mut dongle_b = pair.b.recording_dongle(&ws, &b_rx)?;
    let mut dongle_a = pair.a.replaying_dongle(&ws, &from_a, "20")?;
    let outcome = async {
        let replayed = dongle_a.finished().await?;
        assert!(replayed.success(), "dongle A: {replayed}");
        // All of A's frames reached the server (stored or already trimmed), and the trim ran.
        let reported = eventually(PATIENCE, "buffer-pressure events for the trim", || async {
            let trimmed: u64 = console
                .of_type("log")
                .iter()
                .filter_map(trimmed_in_log_event)
                .sum();
            let group = api.group(&pair.user_token, &pair.group_id).await?;
            let kept = backlog(&group, "a_to_b");
            let skipped = pair.a.agent.leading_drops().await.ok()?;
            (trimmed > 0
                && kept <= MAX_LEN as u64
                && trimmed + kept + skipped as u64 == want.len() as u64)
                .then_some(trimmed)
        })
        .await?;
        pair.b.agent.spawn()?;
        pair.b.agent.ready().await?;
        // Exactly the trimmed frames are missing: the oldest `reported` (after the few the
        // agent dropped before it knew the group), the rest in order.
        let skipped = pair.a.agent.leading_drops().await?;
        let first_kept = skipped + usize::try_from(reported)?;
        wait_frames(
            &b_rx,
            want.len() - first_kept,
            "B receives what retention kept",
        )
        .await?;
        let got = settle_frames(&b_rx, Duration::from_secs(2)).await;
        assert_same_frames("A → B after the trim", &want[first_kept..], &got)?;
        assert!(
            got.len() <= MAX_LEN,
            "retention kept {} > {MAX_LEN}",
            got.len()
        );
        // The agent was told the same count in gap notices.
        let told = eventually(PATIENCE, "agent B counts the gap notice", || async {
            let text = pair.b.agent.metrics().await?;
            let n = metric_sum(&text, "tether_agent_dongle_gap_frames_total", &[]);
            (n > 0.0).then_some(n as u64)
        })
        .await?;
        assert_eq!(told, reported, "gap notices vs pressure events");
        pair.wait_mode(&api, "active").await?;
        TestResult::Ok(())
    }
    .await;
    dongle_b.stop().await?;
    pair.explain(&ws, outcome).await
}
