//! `kill -9` of the real `tether agent` (dongle role) mid-stream and a restart on the same data
//! directory: no frame the server acknowledged is lost or duplicated, frames it stored without
//! acknowledging are not stored twice, the inbound cursor survives, and the dongle is learned
//! again from its keep-alives alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_dongle_support;

use std::time::Duration;

use agent_dongle_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_and_duplicates_nothing() {
    let rig = Rig::new().await;
    let server = &rig.server;
    let (mut agent, mut dongle) = rig.session("SIM-K", "g-k", "a").await;
    let records = capture(900);

    // Phase 1: 300 frames stored and acknowledged; 300 inbound frames delivered and acked.
    dongle.send(&records[..300]).await;
    eventually("300 stored", || server.stream("g-k", "a").len() == 300).await;
    let inbound = synthetic("g-k", 500, 0);
    server.push_to_agent("g-k", "a", &inbound[..300]);
    dongle.receive(300).await;
    eventually("inbound acked", || server.agent_acked("g-k", "a") == 300).await;
    let metrics = agent.dongle_metrics("SIM-K");
    metrics.wait("outbox_pending", 0).await;

    // Phase 2: the server stores 300 more but its acks are lost; the agent is killed.
    server.inner().hold_acks = true;
    dongle.send(&records[300..600]).await;
    eventually("600 stored", || server.stream("g-k", "a").len() == 600).await;
    metrics.wait("outbox_pending", 300).await;
    agent.kill9();
    server.inner().hold_acks = false;

    // Restart on the same state. The dongle only sends keep-alives (no new hello).
    let agent = rig.agent(2);
    let deadline = tokio::time::Instant::now() + GUARD;
    while server.hellos_for("g-k").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new session; log:\n{}",
            agent.log_text()
        );
        dongle.keepalive().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second agent on the same state directory is refused.
    let mut second = Agent::start(
        rig.dir.path(),
        &rig.config,
        free_udp_port(),
        free_tcp_port(),
        3,
    );
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    assert!(
        second.log_text().contains("another tether agent is using"),
        "{}",
        second.log_text()
    );
    let hello = server.hellos_for("g-k")[1].clone();
    assert_eq!(
        hello.resume.rx_seq, 300,
        "the inbound cursor survived kill -9"
    );
    agent
        .dongle_metrics("SIM-K")
        .wait("outbox_pending", 0)
        .await;

    // Phase 3: more frames both ways continue the same streams.
    dongle.send(&records[600..]).await;
    server.push_to_agent("g-k", "a", &inbound[300..]);
    eventually("900 stored", || server.stream("g-k", "a").len() >= 900).await;
    dongle.receive(500).await;
    eventually("inbound acked", || server.agent_acked("g-k", "a") == 500).await;

    let stored = server.stream("g-k", "a");
    assert_eq!(stored.len(), 900, "nothing lost, nothing stored twice");
    for (i, (w, r)) in stored.iter().zip(&records).enumerate() {
        assert!(same_frame(w, r), "frame {i}");
    }
    assert_eq!(
        dongle.received.len(),
        500,
        "no inbound frame delivered twice"
    );
    for (i, (r, w)) in dongle.received.iter().zip(&inbound).enumerate() {
        assert!(same_frame(w, r), "inbound {i}");
    }
    server.assert_no_violations();
    // The 300 unacknowledged frames were resent from welcome.tx_acked + 1 = 601: none at all.
    assert_eq!(server.inner().frames_received, 900);
}
