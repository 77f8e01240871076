//! The real `tether agent` (dongle role) between an in-process REMP dongle and a loopback
//! stand-in for the server (`agent_dongle_support`): frames both ways in order, the outbox
//! holding frames through a server outage, and counted drops without a group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_dongle_support;

use agent_dongle_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_flow_both_ways_in_order() {
    let rig = Rig::new().await;
    let server = &rig.server;
    // Hello until the agent has a data-plane session for the dongle's group.
    let (agent, mut dongle) = rig.session("SIM-A", "g-1", "a").await;
    let hello = &server.hellos_for("g-1")[0];
    assert_eq!(hello.resume.rx_seq, 0);
    assert_eq!(hello.encodings[0], relay_core::protocol::Encoding::Msgpack);

    // Dongle → server: a real capture, complete and in order.
    let records = capture(2000);
    assert_eq!(records.len(), 2000);
    dongle.send(&records).await;
    eventually("2000 frames stored", || {
        server.stream("g-1", "a").len() >= 2000
    })
    .await;
    let stored = server.stream("g-1", "a");
    assert_eq!(stored.len(), 2000);
    for (i, (w, r)) in stored.iter().zip(&records).enumerate() {
        assert!(same_frame(w, r), "frame {i}: stored {w:?}, sent {r:?}");
        assert_eq!(w.group_id, "g-1");
    }
    let metrics = agent.dongle_metrics("SIM-A");
    metrics.wait("frames_acked_total", 2000).await;

    // Server → dongle: frames for this side reach the dongle in order, and are acknowledged.
    let inbound = synthetic("g-1", 500, 0);
    server.push_to_agent("g-1", "a", &inbound);
    dongle.receive(500).await;
    assert_eq!(dongle.received.len(), inbound.len(), "no frame twice");
    for (i, (r, w)) in dongle.received.iter().zip(&inbound).enumerate() {
        assert!(same_frame(w, r), "inbound {i}: got {r:?}, sent {w:?}");
    }
    eventually("agent acked 500", || server.agent_acked("g-1", "a") == 500).await;
    metrics.wait("frames_delivered_total", 500).await;
    server.assert_no_violations();
    let text = agent.metrics_text().await;
    let dropped: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("tether_agent_dongle_frames_dropped_total{") && !l.ends_with(" 0")
        })
        .collect();
    assert!(
        dropped.is_empty(),
        "no frame should be dropped: {dropped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_holds_frames_while_the_server_is_unreachable() {
    let mut rig = Rig::new().await;
    let (mut agent, mut dongle) = rig.session("SIM-B", "g-2", "b").await;
    let server = &mut rig.server;
    let records = capture(1500);
    dongle.send(&records[..300]).await;
    eventually("300 stored", || server.stream("g-2", "b").len() == 300).await;

    // The server goes away: frames wait in the agent's outbox.
    server.stop().await;
    dongle.send(&records[300..1200]).await;
    let metrics = agent.dongle_metrics("SIM-B");
    metrics.wait("outbox_pending", 900).await;
    assert_eq!(server.stream("g-2", "b").len(), 300);

    // It comes back: everything arrives, in order, once.
    server.restart().await;
    dongle.send(&records[1200..]).await;
    eventually("1500 stored", || server.stream("g-2", "b").len() >= 1500).await;
    let stored = server.stream("g-2", "b");
    assert_eq!(stored.len(), 1500);
    for (i, (w, r)) in stored.iter().zip(&records).enumerate() {
        assert!(same_frame(w, r), "frame {i}");
    }
    metrics.wait("outbox_pending", 0).await;
    server.assert_no_violations();
    assert!(server.hellos_for("g-2").len() >= 2, "the agent reconnected");
    // SIGTERM: a clean exit with the totals logged.
    assert!(
        agent.terminate(),
        "exit 0 on SIGTERM; log:\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("dongle agent stopped"));
}

/// The outbox cap (`outbox_max_frames`) drops the oldest unsent frames, counts exactly those
/// (`outbox_full`), and the rest still arrive in order with dense seqs once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_counted_and_the_rest_arrive() {
    let mut rig = Rig::with_dongle_config("  outbox_max_frames: 500\n").await;
    let (agent, mut dongle) = rig.session("SIM-F", "g-6", "a").await;
    let server = &mut rig.server;
    let records = capture(1500);
    dongle.send(&records[..300]).await;
    eventually("300 stored", || server.stream("g-6", "a").len() == 300).await;
    let metrics = agent.dongle_metrics("SIM-F");
    metrics.wait("outbox_pending", 0).await;

    // The server goes away: 900 frames for a 500-frame outbox.
    server.stop().await;
    dongle.send(&records[300..1200]).await;
    metrics.wait("frames_queued_total", 1200).await;
    metrics.wait("outbox_pending", 500).await;
    // Frames sent on the dying connection and then removed stay unsettled until the server's
    // next handshake: counted or unsettled, the excess is 400.
    metrics.wait_evicted(400).await;

    // Back: the 500 newest held frames arrive (renumbered to follow what the server holds, so
    // no hole it would refuse), then the next 300 — in order, once.
    server.restart().await;
    eventually("800 stored", || server.stream("g-6", "a").len() >= 800).await;
    metrics.wait("outbox_pending", 0).await;
    dongle.send(&records[1200..]).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while server.stream("g-6", "a").len() < 1100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 1100 stored; log:\n{}",
            server.stream("g-6", "a").len(),
            agent.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    metrics.wait("outbox_pending", 0).await;
    metrics.wait("outbox_unsettled", 0).await;
    let stored = server.stream("g-6", "a");
    let expected: Vec<_> = records[..300].iter().chain(&records[700..]).collect();
    assert_eq!(stored.len(), expected.len());
    for (i, (w, r)) in stored.iter().zip(&expected).enumerate() {
        assert!(same_frame(w, r), "frame {i}");
    }
    assert_eq!(
        metrics.dropped("outbox_full").await,
        Some(400),
        "exactly the excess is counted"
    );
    server.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_without_an_active_group_are_dropped_and_counted() {
    let rig = Rig::new().await;
    let server = &rig.server;
    let agent = rig.agent(1);
    let mut dongle = SimDongle::new("SIM-C", agent.udp).await;
    // Learned and announced, but in no group.
    hello_until(&agent, &mut dongle, "not announced", || {
        server.inner().dongles.contains_key("SIM-C")
    })
    .await;
    let records = capture(200);
    dongle.send(&records[..50]).await;
    let metrics = agent.dongle_metrics("SIM-C");
    metrics.wait_dropped("no_group", 50).await;

    // An inactive group: the session is up but frames are still not relayed.
    server.assign("SIM-C", "g-3", "a", "inactive");
    eventually("session", || !server.hellos_for("g-3").is_empty()).await;
    dongle.send(&records[50..80]).await;
    metrics.wait_dropped("no_group", 80).await;

    // Activated: frames flow, numbered from 1.
    server.assign("SIM-C", "g-3", "a", "active");
    // The mode change reaches the agent by group_state (and by the poll).
    metrics.wait("relaying", 1).await;
    dongle.send(&records[80..]).await;
    eventually("120 stored", || server.stream("g-3", "a").len() >= 120).await;
    let stored = server.stream("g-3", "a");
    assert_eq!(stored.len(), 120);
    for (w, r) in stored.iter().zip(&records[80..]) {
        assert!(same_frame(w, r));
    }
    server.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_dropped_counted_and_their_seqs_not_reused() {
    let rig = Rig::new().await;
    let server = &rig.server;
    let (agent, mut dongle) = rig.session("SIM-D", "g-4", "a").await;
    let records = capture(400);
    dongle.send(&records[..100]).await;
    eventually("100 stored", || server.stream("g-4", "a").len() == 100).await;

    // The group was deactivated while a batch was in flight: the server refuses it.
    server.inner().refuse_batches = 1;
    dongle.send(&records[100..150]).await;
    let metrics = agent.dongle_metrics("SIM-D");
    metrics.wait_dropped("group_inactive", 50).await;
    metrics.wait("outbox_pending", 0).await;
    metrics.wait("connected", 1).await;
    // Later frames continue above the refused ones: those were sent, and a real server may
    // have accepted (and delivered) some before the deactivation, so their seqs are never
    // reused. The new connection's first batch skips them; the server reports them `missing`.
    dongle.send(&records[150..]).await;
    eventually("350 stored", || server.stream("g-4", "a").len() >= 350).await;
    let stored = server.stream("g-4", "a");
    assert_eq!(stored.len(), 350);
    assert_eq!(server.skipped("g-4", "a"), 50);
    for (w, r) in stored
        .iter()
        .zip(records[..100].iter().chain(&records[150..]))
    {
        assert!(same_frame(w, r));
    }
    server.assert_no_violations();
}
