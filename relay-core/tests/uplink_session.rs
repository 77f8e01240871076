//! The uplink session state machine on a virtual clock: window, acks, backoff with full jitter,
//! resume from the remote's ack, statistics; and an end-to-end simulation (outbox → session →
//! virtual link → inbox) with random outages checked against the model "every record arrives
//! exactly once and is marked uplinked only after the inbox committed it".

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::VecDeque;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_core::Error;
use relay_core::uplink::{
    MemoryInbox, MemoryOutbox, NewRecord, OutboxConfig, OutboxRecord, SentBatch, SessionAction,
    SessionConfig, SqliteInbox, SqliteOutbox, UplinkInbox, UplinkOutbox, UplinkSession,
    UplinkState, UplinkSync,
};

fn config() -> SessionConfig {
    SessionConfig {
        window: 6,
        batch_max: 4,
        backoff_base_ms: 100,
        backoff_cap_ms: 2_000,
        stats_window_ms: 10_000,
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
    })
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
    s.poll_action(0);
    s.handle_connected(0, 0);
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
    // 100 records acknowledged within the 10 s window: 10 records/s.
    assert!(
        (stats.throughput_per_s - 10.0).abs() < 1e-9,
        "{}",
        stats.throughput_per_s
    );
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
    s.poll_action(0);
    s.handle_connected(0, 0);
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
    assert_eq!(s.poll_action(at), Some(SessionAction::Connect));
    // The remote committed up to 5 before the connection dropped (its acks were lost).
    s.handle_connected(5, at);
    assert_eq!(
        s.poll_action(at),
        Some(SessionAction::MarkUplinked { up_to: 5 })
    );
    assert_eq!(
        s.poll_action(at),
        Some(SessionAction::Send { after: 5, max: 4 })
    );
    assert_eq!(s.stats(at).consecutive_failures, 0);
}

#[test]
fn remote_ahead_of_the_outbox_is_fatal_until_reset() {
    let mut s = session(0, 3);
    s.poll_action(0);
    s.handle_connected(50, 0);
    assert_eq!(s.state(), UplinkState::Error);
    assert!(s.stats(0).last_error.unwrap().contains("reset"));
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.poll_action(1_000_000), None);
    s.reset(5);
    assert_eq!(s.poll_action(5), Some(SessionAction::Connect));
}

#[test]
fn empty_fetch_stops_asking_until_new_records() {
    let mut s = session(0, 5);
    s.poll_action(0);
    s.handle_connected(0, 0);
    assert_eq!(
        s.poll_action(0),
        Some(SessionAction::Send { after: 0, max: 4 })
    );
    // The overflow cap dropped everything pending.
    s.handle_sent(None, 0);
    assert_eq!(s.poll_action(0), None);
    s.handle_records_available(9);
    assert_eq!(
        s.poll_action(0),
        Some(SessionAction::Send { after: 0, max: 4 })
    );
}

// ---- end-to-end simulation -------------------------------------------------------------

enum ToRemote {
    Batch(Vec<OutboxRecord>),
}

struct E2e<O: UplinkOutbox, I: UplinkInbox> {
    outbox: O,
    inbox: I,
    session: UplinkSession<StdRng>,
    now: u64,
    remote_up: bool,
    connected: bool,
    up: VecDeque<(u64, ToRemote)>,
    down: VecDeque<(u64, u64)>,
    latency: u64,
    appended: u64,
}

const SOURCE: &str = "vehicle-1";

fn payload(seq: u64) -> Bytes {
    Bytes::from(format!("telemetry-{seq}"))
}

impl<O: UplinkOutbox, I: UplinkInbox> E2e<O, I> {
    fn new(mut outbox: O, inbox: I, seed: u64) -> Self {
        let stats = outbox.stats(0).unwrap();
        let session = UplinkSession::new(
            config(),
            StdRng::seed_from_u64(seed),
            stats.acked_through,
            stats.last_seq,
            0,
        );
        E2e {
            outbox,
            inbox,
            session,
            now: 0,
            remote_up: true,
            connected: false,
            up: VecDeque::new(),
            down: VecDeque::new(),
            latency: 15,
            appended: stats.last_seq,
        }
    }

    fn append(&mut self, n: u64) {
        let records: Vec<NewRecord> = (self.appended + 1..=self.appended + n)
            .map(|seq| NewRecord {
                ts_ms: self.now,
                payload: payload(seq),
            })
            .collect();
        let r = self.outbox.append(&records).unwrap();
        assert_eq!(r.first_seq, self.appended + 1);
        self.appended = r.last_seq;
        self.session.handle_records_available(r.last_seq);
        self.drive();
    }

    fn drop_link(&mut self) {
        if self.connected {
            self.connected = false;
            self.up.clear();
            self.down.clear();
            self.session.handle_disconnected(self.now);
        }
        self.drive();
    }

    fn drive(&mut self) {
        while let Some(action) = self.session.poll_action(self.now) {
            match action {
                SessionAction::Connect => {
                    if self.remote_up {
                        self.connected = true;
                        let acked = self.inbox.acked(SOURCE).unwrap();
                        self.session.handle_connected(acked, self.now);
                    } else {
                        self.session.handle_connect_failed(self.now);
                    }
                }
                SessionAction::Send { after, max } => {
                    let records = self.outbox.fetch_pending(after, max).unwrap();
                    let sent = match (records.first(), records.last()) {
                        (Some(f), Some(l)) => Some(SentBatch {
                            first: f.seq,
                            last: l.seq,
                            count: records.len() as u64,
                        }),
                        _ => None,
                    };
                    if sent.is_some() {
                        self.up
                            .push_back((self.now + self.latency, ToRemote::Batch(records)));
                    }
                    self.session.handle_sent(sent, self.now);
                }
                SessionAction::MarkUplinked { up_to } => {
                    // Marked only what the inbox committed.
                    assert!(up_to <= self.inbox.acked(SOURCE).unwrap());
                    self.outbox.mark_uplinked(up_to).unwrap();
                }
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        loop {
            let next_up = self.up.front().map(|(t, _)| *t);
            let next_down = self.down.front().map(|(t, _)| *t);
            let next_timer = self.session.poll_timeout();
            let next = [next_up, next_down, next_timer].into_iter().flatten().min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    if next_up == Some(t) {
                        let (_, ToRemote::Batch(records)) = self.up.pop_front().unwrap();
                        let commit = self.inbox.commit(SOURCE, &records).unwrap();
                        self.down.push_back((self.now + self.latency, commit.ack));
                    } else if next_down == Some(t) {
                        let (_, ack) = self.down.pop_front().unwrap();
                        self.session.handle_ack(ack, self.now).unwrap();
                    }
                    self.drive();
                }
                _ => break,
            }
        }
        self.now = end;
        self.drive();
    }

    fn settle_and_check(&mut self) {
        self.remote_up = true;
        for _ in 0..10_000 {
            if self.outbox.stats(self.now).unwrap().pending == 0
                && self.up.is_empty()
                && self.down.is_empty()
            {
                break;
            }
            self.advance(100);
        }
        let stats = self.outbox.stats(self.now).unwrap();
        assert_eq!((stats.pending, stats.acked_through), (0, self.appended));
        let got = self.inbox.read(SOURCE, 0, usize::MAX).unwrap();
        assert_eq!(got.len() as u64, self.appended, "every record exactly once");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.payload, payload(r.seq));
        }
        assert_eq!(self.session.stats(self.now).acked_through, self.appended);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    Advance(u64),
    DropLink,
    RemoteDown,
    RemoteUp,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..20).prop_map(Op::Append),
        4 => (1u64..300).prop_map(Op::Advance),
        1 => Just(Op::DropLink),
        1 => Just(Op::RemoteDown),
        1 => Just(Op::RemoteUp),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 150,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/uplink_session.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn outages_never_lose_or_duplicate_records(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        let mut sim = E2e::new(MemoryOutbox::new(OutboxConfig::default()), MemoryInbox::new(), seed);
        for op in ops {
            match op {
                Op::Append(n) => sim.append(n),
                Op::Advance(ms) => sim.advance(ms),
                Op::DropLink => sim.drop_link(),
                Op::RemoteDown => { sim.remote_up = false; sim.drop_link(); }
                Op::RemoteUp => sim.remote_up = true,
            }
        }
        sim.settle_and_check();
    }
}

#[test]
fn sqlite_end_to_end_with_outages_and_a_vehicle_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("outbox.db");
    let inbox = SqliteInbox::open(dir.path().join("inbox.db"), UplinkSync::Full).unwrap();
    let outbox = SqliteOutbox::open(&out_path, OutboxConfig::default(), UplinkSync::Full).unwrap();
    let mut sim = E2e::new(outbox, inbox, 1);
    for round in 0..20 {
        sim.append(7);
        sim.advance(20);
        if round % 5 == 4 {
            sim.drop_link();
        }
    }
    // The vehicle restarts: a new session over the reopened outbox resumes from the ack.
    let E2e {
        inbox, appended, ..
    } = sim;
    let outbox = SqliteOutbox::open(&out_path, OutboxConfig::default(), UplinkSync::Full).unwrap();
    let mut sim = E2e::new(outbox, inbox, 2);
    assert_eq!(sim.appended, appended);
    sim.append(3);
    sim.settle_and_check();
    assert_eq!(sim.appended, 143);
}
