//! Engine behaviour step by step: modes, activation, durability before acks, cut-through
//! delivery, dedup, refusals, buffer pressure, gaps, stale reads.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod storage_support;

use bytes::Bytes;
use futures::executor::block_on;
use relay_core::Error;
use relay_core::engine::{
    Direction, EngineConfig, GroupId, GroupMode, GroupSnapshot, RelayEngine, RelayOutput, Side,
    StorageRequest, StreamSnapshot,
};
use relay_core::log::{AppendOutcome, GapReason, Item, MemoryStreamLog, Retention, StreamLog};
use storage_support::{Cursors, serve};

fn items(range: std::ops::RangeInclusive<u64>) -> Vec<Item> {
    range
        .map(|seq| Item {
            seq,
            ts_ms: seq,
            payload: Bytes::from(seq.to_string()),
        })
        .collect()
}

struct H {
    engine: RelayEngine,
    log: MemoryStreamLog,
    g: GroupId,
    now: u64,
}

impl H {
    fn new(activated: bool) -> Self {
        Self::with_config(activated, EngineConfig::default())
    }

    /// An activated group with producer A connected and the outputs of that drained.
    fn producing() -> Self {
        let mut h = H::new(true);
        h.connect(Side::A, 0);
        h.drive();
        h
    }

    /// Connects `side` (at time 0), having delivered up to `acked`.
    fn connect(&mut self, side: Side, acked: u64) {
        self.engine
            .handle_connected(&self.g, side, acked, 0)
            .unwrap();
    }

    /// `side` sends frames `seqs` (at time 0).
    fn frames(&mut self, side: Side, seqs: std::ops::RangeInclusive<u64>) {
        self.engine
            .handle_frames(&self.g, side, items(seqs), 0)
            .unwrap();
    }

    /// The oldest A → B append fails; returns the outputs of `then` (which runs the engine).
    fn fail_oldest_append(&mut self, then: fn(&mut H) -> Vec<RelayOutput>) -> Vec<RelayOutput> {
        let failure = Error::WorkerGone { action: "append" };
        self.engine
            .handle_append_result(&self.g, Direction::AToB, Err(failure), 0)
            .unwrap();
        then(self)
    }

    /// After a failed append: A was reset, and reconnecting it resumes from its ack (0).
    fn reconnect_reset_producer(&mut self, outs: &[RelayOutput]) {
        assert!(outs.contains(&RelayOutput::ResetProducer {
            group: self.g.clone(),
            side: Side::A
        }));
        let welcome = self
            .engine
            .handle_connected(&self.g, Side::A, 0, 0)
            .unwrap();
        assert_eq!(welcome.tx_acked, 0);
    }

    fn with_config(activated: bool, config: EngineConfig) -> Self {
        let g = GroupId::new("g");
        let mut engine = RelayEngine::new(config);
        engine.add_group(
            g.clone(),
            GroupSnapshot {
                activated,
                ..Default::default()
            },
            0,
        );
        H {
            engine,
            log: MemoryStreamLog::new(),
            g,
            now: 0,
        }
    }

    /// Executes storage requests, runs rounds until idle, returns the outputs.
    fn drive(&mut self) -> Vec<RelayOutput> {
        let mut outs = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(req) = self.engine.poll_storage() {
                progressed = true;
                serve(&mut self.engine, &self.log, req, self.now, Cursors::Store);
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
                progressed = true;
                self.engine.handle_timeout(self.now);
            }
            while let Some(o) = self.engine.poll_output() {
                progressed = true;
                outs.push(o);
            }
            if !progressed {
                return outs;
            }
        }
    }

    fn modes(outs: &[RelayOutput]) -> Vec<GroupMode> {
        outs.iter()
            .filter_map(|o| match o {
                RelayOutput::ModeChanged { status, .. } => Some(status.mode),
                _ => None,
            })
            .collect()
    }

    fn delivered(outs: &[RelayOutput], side: Side) -> Vec<u64> {
        outs.iter()
            .flat_map(|o| match o {
                RelayOutput::Deliver { to, items, .. } if *to == side => {
                    items.iter().map(|i| i.seq).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }
}

#[test]
fn activation_is_idempotent_and_returns_the_mode() {
    let mut h = H::new(false);
    assert_eq!(H::modes(&h.drive()), vec![GroupMode::Inactive]);
    assert_eq!(
        h.engine.handle_deactivate(&h.g, 0).unwrap(),
        GroupMode::Inactive
    );
    assert_eq!(
        h.engine.handle_activate(&h.g, 0).unwrap(),
        GroupMode::Degraded
    );
    assert_eq!(
        h.engine.handle_activate(&h.g, 0).unwrap(),
        GroupMode::Degraded
    );
    // Only one mode change for two activations.
    assert_eq!(H::modes(&h.drive()), vec![GroupMode::Degraded]);
    assert!(matches!(
        h.engine.handle_activate(&GroupId::new("nope"), 0),
        Err(Error::UnknownGroup { .. })
    ));
}

#[test]
fn modes_follow_presence_and_backlog() {
    let mut h = H::new(true);
    h.drive();
    h.connect(Side::A, 0);
    let status = h.engine.group_status(&h.g).unwrap();
    assert_eq!(
        (status.mode, status.offline.clone()),
        (GroupMode::Degraded, vec![Side::B])
    );
    h.frames(Side::A, 1..=10);
    h.drive();
    assert_eq!(h.engine.group_status(&h.g).unwrap().backlog.a_to_b, 10);

    // B connects with a backlog: degraded until it drained, then active.
    h.connect(Side::B, 0);
    let outs = h.drive();
    assert_eq!(H::delivered(&outs, Side::B), (1..=10).collect::<Vec<_>>());
    assert_eq!(H::modes(&outs).last(), Some(&GroupMode::Active));
    assert_eq!(
        h.engine.group_status(&h.g).unwrap().backlog.a_to_b,
        10,
        "not acked yet"
    );
    h.engine.handle_ack(&h.g, Side::B, 10, 0).unwrap();
    assert_eq!(h.engine.group_status(&h.g).unwrap().backlog.a_to_b, 0);
    assert_eq!(
        block_on(h.log.load_cursor(&Direction::AToB.stream_key(&h.g), "b")).unwrap(),
        None
    );
    h.drive();
    assert_eq!(
        block_on(h.log.load_cursor(&Direction::AToB.stream_key(&h.g), "b")).unwrap(),
        Some(10)
    );

    h.engine.handle_disconnected(&h.g, Side::A, 0).unwrap();
    let outs = h.drive();
    assert_eq!(H::modes(&outs), vec![GroupMode::Degraded]);
    assert_eq!(
        h.engine.handle_deactivate(&h.g, 0).unwrap(),
        GroupMode::Inactive
    );
}

#[test]
fn acks_only_after_durable_append_and_duplicates_are_reacked() {
    let mut h = H::producing();
    h.frames(Side::A, 1..=5);
    // No ack before the append result.
    let req = h.engine.poll_storage().unwrap();
    assert!(matches!(&req, StorageRequest::Append { items, .. } if items.len() == 5));
    while let Some(o) = h.engine.poll_output() {
        assert!(
            !matches!(o, RelayOutput::Ack { .. }),
            "ack before durability: {o:?}"
        );
    }
    let outcome = AppendOutcome {
        stored: 5,
        duplicates: 0,
        ack: 5,
    };
    h.engine
        .handle_append_result(&h.g, Direction::AToB, Ok(outcome), 0)
        .unwrap();
    let outs = h.drive();
    assert!(outs.contains(&RelayOutput::Ack {
        group: h.g.clone(),
        to: Side::A,
        up_to: 5
    }));

    // A retransmission of 3..=5 is not appended again, just re-acknowledged (and reported,
    // for the caller to count).
    let retransmitted = h.engine.handle_frames(&h.g, Side::A, items(3..=5), 0);
    assert_eq!(retransmitted.unwrap(), 3);
    assert_eq!(h.engine.poll_storage(), None);
    assert_eq!(
        h.engine.poll_output(),
        Some(RelayOutput::Ack {
            group: h.g.clone(),
            to: Side::A,
            up_to: 5
        })
    );
}

#[test]
fn refusals_change_nothing() {
    let mut h = H::new(false);
    assert!(matches!(
        h.engine.handle_frames(&h.g, Side::A, items(1..=1), 0),
        Err(Error::SideNotConnected { .. })
    ));
    h.connect(Side::A, 0);
    assert!(matches!(
        h.engine.handle_frames(&h.g, Side::A, items(1..=1), 0),
        Err(Error::GroupInactive { .. })
    ));
    h.engine.handle_activate(&h.g, 0).unwrap();
    let too_big = vec![Item {
        seq: relay_core::log::MAX_SEQ + 1,
        ts_ms: 0,
        payload: Bytes::new(),
    }];
    assert!(matches!(
        h.engine.handle_frames(&h.g, Side::A, too_big, 0),
        Err(Error::InvalidSeq { .. })
    ));
    assert_eq!(h.engine.poll_storage(), None);
    // After the first batch of a connection, a hole is refused.
    h.frames(Side::A, 1..=2);
    assert!(matches!(
        h.engine.handle_frames(&h.g, Side::A, items(5..=6), 0),
        Err(Error::SeqOutOfOrder {
            expected: 3,
            got: 5,
            ..
        })
    ));
    h.drive();
    // A consumer cursor beyond the head plus the cut-through is refused at connect, one
    // beyond what was delivered in acks.
    let limit = 2 + EngineConfig::default().cut_through;
    assert!(matches!(
        h.engine.handle_connected(&h.g, Side::B, limit + 1, 0),
        Err(Error::CursorAhead { .. })
    ));
    h.connect(Side::B, 0);
    h.drive();
    assert!(matches!(
        h.engine.handle_ack(&h.g, Side::B, 9, 0),
        Err(Error::CursorAhead { .. })
    ));
    assert_eq!(h.engine.group_status(&h.g).unwrap().backlog.a_to_b, 2);
}

#[test]
fn failed_append_resets_the_producer_which_resends() {
    let mut h = H::producing();
    h.frames(Side::A, 1..=3);
    h.frames(Side::A, 4..=6);
    assert!(h.engine.poll_storage().is_some());
    let outs = h.fail_oldest_append(H::drive);
    // The producer reconnects and resends from its ack (0).
    h.reconnect_reset_producer(&outs);
    h.frames(Side::A, 1..=6);
    let outs = h.drive();
    assert!(outs.contains(&RelayOutput::Ack {
        group: h.g.clone(),
        to: Side::A,
        up_to: 6
    }));
}

#[test]
fn trim_reports_pressure_for_unacknowledged_items_and_a_gap_first() {
    let mut h = H::new(true);
    h.connect(Side::A, 0);
    h.connect(Side::B, 0);
    h.frames(Side::A, 1..=10);
    h.drive();
    h.engine.handle_ack(&h.g, Side::B, 10, 0).unwrap();
    h.engine.handle_disconnected(&h.g, Side::B, 0).unwrap();
    h.frames(Side::A, 11..=40);
    h.drive();
    let key = Direction::AToB.stream_key(&h.g);
    let trims = block_on(h.log.trim(
        &key,
        &Retention {
            max_len: Some(5),
            max_age_ms: None,
        },
        0,
    ))
    .unwrap();
    assert_eq!(trims.len(), 1);
    h.engine
        .handle_trimmed(&h.g, Direction::AToB, &trims, 0)
        .unwrap();
    let outs = h.drive();
    // 35 items removed, 10 of them acknowledged: pressure counts the other 25.
    let pressure: Vec<u64> = outs
        .iter()
        .filter_map(|o| match o {
            RelayOutput::BufferPressure {
                unacknowledged,
                trimmed,
                ..
            } => {
                assert_eq!((trimmed.first, trimmed.last, trimmed.count), (1, 35, 35));
                Some(*unacknowledged)
            }
            _ => None,
        })
        .collect();
    assert_eq!(pressure, vec![25]);
    assert_eq!(h.engine.group_status(&h.g).unwrap().backlog.a_to_b, 5);

    h.connect(Side::B, 10);
    let outs = h.drive();
    let to_b: Vec<&RelayOutput> = outs
        .iter()
        .filter(|o| matches!(o, RelayOutput::Gap { .. } | RelayOutput::Deliver { .. }))
        .collect();
    match to_b.first() {
        Some(RelayOutput::Gap { gap, to, .. }) => {
            assert_eq!(*to, Side::B);
            assert_eq!((gap.from, gap.to, gap.count), (11, 35, 25));
            assert!(matches!(gap.reason, GapReason::Retention(_)));
        }
        other => panic!("expected a gap first, got {other:?}"),
    }
    assert_eq!(H::delivered(&outs, Side::B), (36..=40).collect::<Vec<_>>());
}

#[test]
fn stale_read_results_after_a_reconnect_are_ignored() {
    let mut h = H::new(true);
    let key = Direction::AToB.stream_key(&h.g);
    block_on(h.log.append(&key, &items(1..=20))).unwrap();
    let snap = GroupSnapshot {
        activated: true,
        a_to_b: StreamSnapshot {
            head: 20,
            consumer_cursor: 0,
        },
        b_to_a: StreamSnapshot::default(),
    };
    h.engine.add_group(h.g.clone(), snap, 0);
    h.connect(Side::B, 0);
    h.engine.handle_timeout(0);
    let Some(StorageRequest::Read {
        epoch, after: 0, ..
    }) = h.engine.poll_storage()
    else {
        panic!("expected a read");
    };
    // B reconnects having processed 15 before the old read comes back.
    h.engine.handle_disconnected(&h.g, Side::B, 0).unwrap();
    h.connect(Side::B, 15);
    let stale = block_on(h.log.read(&key, 0, 512));
    h.engine
        .handle_read_result(&h.g, Direction::AToB, epoch, stale, 0)
        .unwrap();
    let outs = h.drive();
    assert_eq!(H::delivered(&outs, Side::B), (16..=20).collect::<Vec<_>>());
}

#[test]
fn first_batch_hole_becomes_a_missing_gap_for_the_consumer() {
    let mut h = H::new(true);
    h.connect(Side::B, 0);
    h.connect(Side::A, 0);
    // A lost its frames 1..=4 (the server told it 0 was acked, but it only holds 5..).
    h.frames(Side::A, 5..=7);
    let outs = h.drive();
    let gap = outs.iter().find_map(|o| match o {
        RelayOutput::Gap { gap, .. } => Some(*gap),
        _ => None,
    });
    let gap = gap.expect("a gap");
    assert_eq!(
        (gap.from, gap.to, gap.count, gap.reason),
        (1, 4, 4, GapReason::Missing)
    );
    assert_eq!(H::delivered(&outs, Side::B), vec![5, 6, 7]);
}

/// Runs scheduling rounds at `now` without executing storage; returns the outputs.
fn rounds_only(engine: &mut RelayEngine, now: u64) -> Vec<RelayOutput> {
    while engine.poll_timeout().is_some_and(|t| t <= now) {
        engine.handle_timeout(now);
    }
    std::iter::from_fn(|| engine.poll_output()).collect()
}

fn delivered_to(outs: &[RelayOutput], side: Side) -> Vec<u64> {
    outs.iter()
        .filter_map(|o| match o {
            RelayOutput::Deliver { to, items, .. } if *to == side => {
                Some(items.iter().map(|i| i.seq).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// Both sides online, A sends 1..=3: the append request, not yet executed.
fn three_frames_appending(config: EngineConfig) -> (H, StorageRequest) {
    let mut h = H::with_config(true, config);
    h.connect(Side::A, 0);
    h.connect(Side::B, 0);
    h.drive();
    h.frames(Side::A, 1..=3);
    let append = h.engine.poll_storage().unwrap();
    (h, append)
}

#[test]
fn cut_through_delivers_before_durability_and_never_twice() {
    // Delivered while the append is still in flight; the producer is not acknowledged yet.
    let (mut h, append) = three_frames_appending(EngineConfig::default());
    assert!(matches!(append, StorageRequest::Append { .. }));
    let outs = rounds_only(&mut h.engine, 0);
    assert_eq!(delivered_to(&outs, Side::B), vec![1, 2, 3]);
    assert!(!outs.iter().any(|o| matches!(o, RelayOutput::Ack { .. })));

    // The append fails: the producer is reset and resends; B does not get 1..=3 again.
    let outs = h.fail_oldest_append(|h| rounds_only(&mut h.engine, 0));
    h.reconnect_reset_producer(&outs);
    h.frames(Side::A, 1..=4);
    let outs = h.drive();
    assert_eq!(delivered_to(&outs, Side::B), vec![4]);
    assert!(outs.contains(&RelayOutput::Ack {
        group: h.g.clone(),
        to: Side::A,
        up_to: 4
    }));
    h.engine.handle_ack(&h.g, Side::B, 4, 0).unwrap();

    // After a crash B may hold seqs the log never stored: its cursor is accepted up to the
    // head plus the cut-through, and the producer's resend of those seqs is not delivered.
    let welcome = h.engine.handle_connected(&h.g, Side::B, 6, 0).unwrap();
    assert_eq!((welcome.rx_from, welcome.ahead_of_log), (6, 2));
    h.frames(Side::A, 5..=7);
    let outs = h.drive();
    assert_eq!(delivered_to(&outs, Side::B), vec![7]);
}

#[test]
fn without_cut_through_only_durable_items_are_delivered() {
    let config = EngineConfig {
        cut_through: 0,
        ..EngineConfig::default()
    };
    let (mut h, append) = three_frames_appending(config);
    assert!(delivered_to(&rounds_only(&mut h.engine, 0), Side::B).is_empty());
    let StorageRequest::Append {
        direction, items, ..
    } = append
    else {
        panic!("expected an append, got {append:?}");
    };
    let outcome = block_on(h.log.append(&direction.stream_key(&h.g), &items));
    h.engine
        .handle_append_result(&h.g, direction, outcome, 0)
        .unwrap();
    assert_eq!(delivered_to(&h.drive(), Side::B), vec![1, 2, 3]);
    // And a cursor above the durable head is refused.
    assert!(matches!(
        h.engine.handle_connected(&h.g, Side::B, 4, 0),
        Err(Error::CursorAhead { .. })
    ));
}
