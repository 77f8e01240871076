//! The producer session on a virtual clock: window, reconcile before sending, acks, refusals,
//! pause, backoff with full jitter, resume from the remote's ack, statistics. The end-to-end
//! simulation (outbox → session → virtual link → consumer) is in `uplink_sim.rs`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_core::Error;
use relay_core::uplink::{
    DropReason, FullJitter, Reconciled, Refusal, RemoteAhead, SentBatch, SessionAction,
    SessionConfig, UplinkSession, UplinkState,
};

fn config() -> SessionConfig {
    SessionConfig {
        window: 6,
        batch_max: 4,
        backoff: FullJitter::new(Duration::from_millis(100), Duration::from_millis(2_000)),
        stats_window_ms: 10_000,
        remote_ahead: RemoteAhead::Renumber,
    }
}

fn session(acked: u64, last: u64) -> UplinkSession<StdRng> {
    UplinkSession::new(config(), StdRng::seed_from_u64(7), acked, last, 0)
}

fn batch(first: u64, last: u64) -> Option<SentBatch> {
    Some(SentBatch {
        first,
        last,
        count: last - first + 1,
        bytes: (last - first + 1) * 64,
    })
}

fn reconciled(resume_after: u64, acked: u64, last_seq: u64) -> Reconciled {
    Reconciled {
        resume_after,
        acked,
        last_seq,
        ..Reconciled::default()
    }
}

/// Connects `s` to a remote holding `remote_acked`, and reconciles as an outbox with
/// `last_seq` would.
fn connect(s: &mut UplinkSession<StdRng>, remote_acked: u64, last_seq: u64, now: u64) {
    assert_eq!(s.poll_action(now), Some(SessionAction::Connect));
    s.handle_connected(remote_acked, now);
    assert_eq!(
        s.poll_action(now),
        Some(SessionAction::Reconcile { remote_acked })
    );
    s.handle_reconciled(&reconciled(remote_acked, remote_acked, last_seq), now);
}

#[test]
fn window_limits_what_is_in_flight_and_acks_mark_uplinked() {
    let mut s = session(0, 10);
    assert_eq!(s.poll_action(0), Some(SessionAction::Connect));
    assert_eq!(s.state(), UplinkState::Connecting);
    assert_eq!(s.poll_action(0), None, "one attempt at a time");
    s.handle_connected(0, 5);
    assert_eq!(s.state(), UplinkState::Connected);
    assert_eq!(
        s.poll_action(5),
        Some(SessionAction::Reconcile { remote_acked: 0 })
    );
    assert_eq!(
        s.poll_action(5),
        None,
        "nothing is sent before the reconcile"
    );
    s.handle_reconciled(&reconciled(0, 0, 10), 5);
    assert_eq!(
        s.poll_action(5),
        Some(SessionAction::Send { after: 0, max: 4 })
    );
    assert_eq!(s.poll_action(5), None, "one send outstanding");
    s.handle_sent(batch(1, 4), 10);
    assert_eq!(
        s.poll_action(10),
        Some(SessionAction::Send { after: 4, max: 2 })
    );
    s.handle_sent(batch(5, 6), 20);
    assert_eq!(s.poll_action(20), None, "window of 6 is full");
    assert_eq!(s.stats(20).in_flight, 6);

    s.handle_ack(4, 40).unwrap();
    assert_eq!(
        s.poll_action(40),
        Some(SessionAction::MarkUplinked { up_to: 4 })
    );
    assert_eq!(
        s.poll_action(40),
        Some(SessionAction::Send { after: 6, max: 4 })
    );
    let stats = s.stats(40);
    assert_eq!(stats.last_latency_ms, Some(30));
    assert_eq!(stats.records_acked_total, 4);
    assert_eq!(stats.records_sent_total, 6);
    assert_eq!(stats.in_flight, 2);
    // Duplicate and older acks change nothing; acks beyond what was sent are refused.
    s.handle_ack(3, 41).unwrap();
    assert!(matches!(
        s.handle_ack(7, 41),
        Err(Error::UplinkAckAhead { acked: 7, sent: 6 })
    ));
    assert_eq!(s.poll_action(41), None);
}

#[test]
fn latency_and_throughput_statistics() {
    let mut s = session(0, 100);
    connect(&mut s, 0, 100, 0);
    let mut now = 0;
    let mut sent = 0;
    while sent < 100 {
        match s.poll_action(now) {
            Some(SessionAction::Send { after, max }) => {
                let last = (after + max as u64).min(100);
                s.handle_sent(batch(after + 1, last), now);
                sent = last;
                now += 10;
                s.handle_ack(last, now).unwrap();
            }
            Some(SessionAction::MarkUplinked { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    let stats = s.stats(now);
    assert_eq!(stats.records_acked_total, 100);
    assert_eq!(
        (
            stats.mean_latency_ms,
            stats.max_latency_ms,
            stats.last_latency_ms
        ),
        (Some(10), Some(10), Some(10))
    );
    // 100 records (6,400 bytes) acknowledged within the 10 s window: 10 records/s, 640 B/s.
    assert!(
        (stats.throughput_per_s - 10.0).abs() < 1e-9,
        "{}",
        stats.throughput_per_s
    );
    assert!((stats.throughput_bytes_per_s - 640.0).abs() < 1e-9);
    // After the window passed with nothing acknowledged, throughput is 0.
    let later = s.stats(now + 20_000);
    assert_eq!(later.throughput_per_s, 0.0);
    assert_eq!(later.mean_latency_ms, None);
}

#[test]
fn reconnect_backoff_uses_full_jitter_and_grows_to_the_cap() {
    let mut worst = [0u64; 8];
    for seed in 0..200 {
        let mut s = UplinkSession::new(config(), StdRng::seed_from_u64(seed), 0, 0, 0);
        let mut now = 0;
        for (attempt, worst) in worst.iter_mut().enumerate() {
            assert_eq!(s.poll_action(now), Some(SessionAction::Connect));
            s.handle_connect_failed(now);
            assert_eq!(s.state(), UplinkState::Disconnected);
            let at = s.poll_timeout().unwrap();
            let delay = at - now;
            let ceiling = (100u64 << attempt).min(2_000);
            assert!(delay <= ceiling, "attempt {attempt}: {delay} > {ceiling}");
            *worst = (*worst).max(delay);
            if delay > 0 {
                assert_eq!(s.poll_action(at - 1), None, "no reconnect before the timer");
            }
            now = at;
        }
        assert_eq!(s.stats(now).consecutive_failures, 8);
    }
    // Over 200 seeds the draws spread over the whole range up to each ceiling.
    for (attempt, worst) in worst.iter().enumerate() {
        let ceiling = (100u64 << attempt).min(2_000);
        assert!(
            *worst * 10 >= ceiling * 9,
            "attempt {attempt}: max {worst} of {ceiling}"
        );
    }
}

#[test]
fn resume_from_the_remote_ack_after_an_outage() {
    let mut s = session(0, 10);
    connect(&mut s, 0, 10, 0);
    s.poll_action(0);
    s.handle_sent(batch(1, 4), 0);
    s.poll_action(0);
    s.handle_sent(batch(5, 6), 0);
    s.handle_ack(2, 5).unwrap();
    assert_eq!(
        s.poll_action(5),
        Some(SessionAction::MarkUplinked { up_to: 2 })
    );
    s.handle_disconnected(10);
    assert_eq!(s.state(), UplinkState::Disconnected);
    assert_eq!(s.stats(10).in_flight, 0);
    let at = s.poll_timeout().unwrap();
    assert!(at <= 110);
    // The remote committed up to 5 before the connection dropped (its acks were lost): the
    // reconcile marks them, and sending resumes after 5.
    connect(&mut s, 5, 10, at);
    assert_eq!(
        s.poll_action(at),
        Some(SessionAction::Send { after: 5, max: 4 })
    );
    let stats = s.stats(at);
    assert_eq!(
        (
            stats.consecutive_failures,
            stats.acked_through,
            stats.disconnects
        ),
        (0, 5, 1)
    );
}

#[test]
fn a_remote_ahead_of_the_outbox_is_reconciled_or_fatal_as_configured() {
    // Default: reconcile (the outbox renumbers its held records to follow the remote).
    let mut s = session(0, 3);
    connect(&mut s, 50, 53, 0);
    assert_eq!(
        s.poll_action(0),
        Some(SessionAction::Send { after: 50, max: 4 })
    );
    // `Stop`: fatal until reset.
    let stop = SessionConfig {
        remote_ahead: RemoteAhead::Stop,
        ..config()
    };
    let mut s = UplinkSession::new(stop, StdRng::seed_from_u64(1), 0, 3, 0);
    s.poll_action(0);
    s.handle_connected(50, 0);
    assert_eq!(s.state(), UplinkState::Error);
    assert!(s.stats(0).last_error.unwrap().contains("reset"));
    assert_eq!(s.poll_action(0), Some(SessionAction::Disconnect));
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.poll_action(1_000_000), None);
    s.reset(5);
    assert_eq!(s.poll_action(5), Some(SessionAction::Connect));
}

#[test]
fn empty_fetch_stops_asking_until_new_records() {
    let mut s = session(0, 5);
    connect(&mut s, 0, 5, 0);
    assert_eq!(
        s.poll_action(0),
        Some(SessionAction::Send { after: 0, max: 4 })
    );
    // The cap dropped everything pending.
    s.handle_sent(None, 0);
    assert_eq!(s.poll_action(0), None);
    s.handle_records_available(9);
    assert_eq!(
        s.poll_action(0),
        Some(SessionAction::Send { after: 0, max: 4 })
    );
}

#[test]
fn refusals_drop_resync_or_stop() {
    // `group_inactive`: drop the pending records, close, reconnect with backoff.
    let mut s = session(0, 10);
    connect(&mut s, 0, 10, 0);
    s.poll_action(0);
    s.handle_sent(batch(1, 4), 0);
    s.handle_ack(2, 1).unwrap();
    s.handle_refused(
        Refusal::DropPending {
            reason: DropReason::Refused,
        },
        2,
    );
    assert_eq!(s.state(), UplinkState::Disconnected);
    assert_eq!(
        s.poll_action(2),
        Some(SessionAction::MarkUplinked { up_to: 2 })
    );
    assert_eq!(
        s.poll_action(2),
        Some(SessionAction::DropPending {
            reason: DropReason::Refused
        })
    );
    assert_eq!(s.poll_action(2), Some(SessionAction::Disconnect));
    let at = s.poll_timeout().unwrap();
    assert!(at <= 102);
    s.handle_records_available(2);
    connect(&mut s, 2, 2, at);
    assert_eq!(s.poll_action(at), None, "nothing left to send");
    let stats = s.stats(at);
    assert_eq!((stats.refusals, stats.disconnects), (1, 1));

    // `seq_out_of_order`: close, reconnect, resend from the remote's ack.
    let mut s = session(0, 10);
    connect(&mut s, 0, 10, 0);
    s.poll_action(0);
    s.handle_sent(batch(1, 4), 0);
    s.handle_refused(Refusal::Resync, 1);
    assert_eq!(s.poll_action(1), Some(SessionAction::Disconnect));
    let at = s.poll_timeout().unwrap();
    connect(&mut s, 0, 10, at);
    assert_eq!(
        s.poll_action(at),
        Some(SessionAction::Send { after: 0, max: 4 })
    );

    // A fatal code: close and stop.
    let mut s = session(0, 10);
    connect(&mut s, 0, 10, 0);
    s.handle_refused(
        Refusal::Fatal {
            reason: "unsupported version".into(),
        },
        1,
    );
    assert_eq!(s.poll_action(1), Some(SessionAction::Disconnect));
    assert_eq!(s.state(), UplinkState::Error);
    assert_eq!(s.poll_timeout(), None);
    // Refusals outside a connection are ignored.
    s.handle_refused(Refusal::Resync, 2);
    assert_eq!(s.stats(2).refusals, 1);
}

#[test]
fn paused_sessions_send_nothing_but_take_acks() {
    let mut s = session(0, 10);
    connect(&mut s, 0, 10, 0);
    s.poll_action(0);
    s.handle_sent(batch(1, 4), 0);
    s.set_paused(true);
    assert_eq!(s.poll_action(1), None);
    s.handle_ack(4, 2).unwrap();
    assert_eq!(
        s.poll_action(2),
        Some(SessionAction::MarkUplinked { up_to: 4 })
    );
    assert_eq!(s.poll_action(2), None);
    assert!(s.stats(2).paused);
    s.set_paused(false);
    assert_eq!(
        s.poll_action(3),
        Some(SessionAction::Send { after: 4, max: 4 })
    );
}
