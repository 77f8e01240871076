//! A quinn-proto-`Pair`-style harness: the relay engine, the memory stream log as its driver,
//! and two simulated sides over a virtual link with a virtual clock.
//!
//! Each side produces frames with dense seqs, keeps every frame it has not seen acknowledged,
//! resends from the server's ack after a reconnect, and checks what it receives: every item
//! must be the next seq after its cursor, every gap must start there. Messages in flight on a
//! link are lost when that side disconnects.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

#[path = "../storage_support/mod.rs"]
mod storage_support;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use futures::executor::block_on;
use relay_core::engine::{
    Direction, EngineConfig, GroupId, GroupMode, GroupSnapshot, RelayEngine, RelayOutput, Side,
    StorageRequest, StreamSnapshot,
};
use relay_core::log::{Gap, GapReason, Item, MemoryStreamLog, Retention, Seq, StreamLog, Trimmed};
use storage_support::{Cursors, serve};

/// A message travelling from a side to the engine.
#[derive(Debug, Clone)]
pub enum Upstream {
    Frames(Vec<Item>),
    Ack(Seq),
}

/// The payload every simulated frame carries, so content is checked too.
pub fn payload(dir: Direction, seq: Seq) -> Bytes {
    Bytes::from(format!("{}:{seq}", dir.as_str()))
}

#[derive(Debug, Default)]
pub struct SimSide {
    pub connected: bool,
    /// Highest seq produced (the producer's frames are 1..=produced).
    pub produced: Seq,
    /// Highest seq sent on the current connection.
    pub sent: Seq,
    /// Highest seq the server acknowledged as durable.
    pub tx_acked: Seq,
    /// Consumer cursor: last inbound seq processed (item or gap end).
    pub rx_cursor: Seq,
    /// Last cursor sent as an ack (or announced in the hello).
    pub last_ack_sent: Seq,
    /// Inbound items received, in order.
    pub received: Vec<Seq>,
    /// Inbound gaps received, in order.
    pub gaps: Vec<Gap>,
    /// Messages on the way to this side.
    pub downlink: VecDeque<RelayOutput>,
    /// Messages on the way from this side to the engine.
    pub uplink: VecDeque<Upstream>,
    /// Protocol violations seen (must stay empty).
    pub violations: Vec<String>,
}

pub struct Sim {
    pub engine: RelayEngine,
    pub log: MemoryStreamLog,
    pub group: GroupId,
    pub now_ms: u64,
    pub sides: BTreeMap<Side, SimSide>,
    /// Every trim the log reported, per direction.
    pub trims: BTreeMap<Direction, Vec<Trimmed>>,
    pub pressure: BTreeMap<Direction, u64>,
    pub modes: Vec<GroupMode>,
    pub rounds: u64,
    pub resets: u64,
    /// Whether the group is activated (the records' copy, which survives a crash).
    pub activated: bool,
    /// Storage requests run only when [`Sim::complete_storage`] says so (slow storage).
    pub deferred: bool,
    /// Storage requests issued and not executed yet, oldest first.
    pub pending: VecDeque<StorageRequest>,
    /// The next append executed fails (nothing stored).
    pub fail_next_append: bool,
    /// Side connections accepted with a cursor above everything the log was handed.
    pub ahead_of_log: u64,
}

impl Sim {
    pub fn new(config: EngineConfig) -> Self {
        let group = GroupId::new("g1");
        let mut engine = RelayEngine::new(config);
        engine.add_group(
            group.clone(),
            GroupSnapshot {
                activated: true,
                ..Default::default()
            },
            0,
        );
        let mut sides = BTreeMap::new();
        sides.insert(Side::A, SimSide::default());
        sides.insert(Side::B, SimSide::default());
        let mut sim = Sim {
            engine,
            log: MemoryStreamLog::new(),
            group,
            now_ms: 0,
            sides,
            trims: BTreeMap::new(),
            pressure: BTreeMap::new(),
            modes: Vec::new(),
            rounds: 0,
            resets: 0,
            activated: true,
            deferred: false,
            pending: VecDeque::new(),
            fail_next_append: false,
            ahead_of_log: 0,
        };
        sim.drive();
        sim
    }

    pub fn side(&mut self, side: Side) -> &mut SimSide {
        self.sides.get_mut(&side).expect("both sides exist")
    }

    pub fn connect(&mut self, side: Side) {
        if self.side(side).connected {
            return;
        }
        let rx = self.side(side).rx_cursor;
        let welcome = self
            .engine
            .handle_connected(&self.group, side, rx, self.now_ms)
            .expect("a side's cursor never exceeds the head by more than the cut-through");
        if welcome.ahead_of_log > 0 {
            self.ahead_of_log += 1;
        }
        let s = self.side(side);
        s.connected = true;
        s.last_ack_sent = rx;
        s.tx_acked = s.tx_acked.max(welcome.tx_acked);
        s.sent = welcome.tx_acked;
        self.drive();
    }

    pub fn disconnect(&mut self, side: Side) {
        if !self.side(side).connected {
            return;
        }
        let s = self.side(side);
        s.connected = false;
        s.downlink.clear();
        s.uplink.clear();
        self.engine
            .handle_disconnected(&self.group, side, self.now_ms)
            .expect("group is loaded");
        self.drive();
    }

    pub fn set_active(&mut self, on: bool) {
        let mode = if on {
            self.engine.handle_activate(&self.group, self.now_ms)
        } else {
            self.engine.handle_deactivate(&self.group, self.now_ms)
        }
        .expect("group is loaded");
        self.activated = on;
        assert_eq!(on, mode != GroupMode::Inactive);
        self.drive();
    }

    /// The side produces `n` new frames and, if connected, sends everything unsent.
    pub fn produce(&mut self, side: Side, n: u64) {
        let s = self.side(side);
        s.produced += n;
        self.flush_producer(side);
    }

    fn flush_producer(&mut self, side: Side) {
        let dir = side.outbound();
        let now = self.now_ms;
        let s = self.side(side);
        if !s.connected || s.sent >= s.produced {
            return;
        }
        let items: Vec<Item> = (s.sent + 1..=s.produced)
            .map(|seq| Item {
                seq,
                ts_ms: now,
                payload: payload(dir, seq),
            })
            .collect();
        s.sent = s.produced;
        s.uplink.push_back(Upstream::Frames(items));
    }

    /// Moves up to `hops` messages in each direction of each side's link, then lets the
    /// engine and its driver run.
    pub fn step(&mut self, hops: usize) {
        for side in [Side::A, Side::B] {
            for _ in 0..hops {
                let Some(msg) = self.side(side).uplink.pop_front() else {
                    break;
                };
                self.deliver_upstream(side, msg);
            }
            self.drive();
            for _ in 0..hops {
                let Some(out) = self.side(side).downlink.pop_front() else {
                    break;
                };
                self.deliver_downstream(side, out);
            }
            // The consumer acknowledges what it processed.
            let s = self.side(side);
            if s.connected && s.rx_cursor > s.last_ack_sent {
                s.last_ack_sent = s.rx_cursor;
                let rx = s.rx_cursor;
                s.uplink.push_back(Upstream::Ack(rx));
            }
            self.flush_producer(side);
        }
        self.drive();
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        self.drive();
    }

    pub fn trim(&mut self, dir: Direction, max_len: u64) {
        let key = dir.stream_key(&self.group);
        let retention = Retention {
            max_len: Some(max_len),
            max_age_ms: None,
        };
        let trims = block_on(self.log.trim(&key, &retention, self.now_ms)).expect("memory trim");
        self.trims
            .entry(dir)
            .or_default()
            .extend(trims.iter().copied());
        self.engine
            .handle_trimmed(&self.group, dir, &trims, self.now_ms)
            .expect("group is loaded");
        self.drive();
    }

    fn deliver_upstream(&mut self, side: Side, msg: Upstream) {
        let now = self.now_ms;
        match msg {
            Upstream::Frames(items) => {
                if let Err(e) = self.engine.handle_frames(&self.group, side, items, now) {
                    // Refused (group inactive, or a batch sent after a refused one): the producer
                    // resends from its ack.
                    assert!(
                        matches!(
                            e,
                            relay_core::Error::GroupInactive { .. }
                                | relay_core::Error::SeqOutOfOrder { .. }
                        ),
                        "{e}"
                    );
                    let s = self.side(side);
                    s.sent = s.tx_acked;
                }
            }
            Upstream::Ack(seq) => {
                self.engine
                    .handle_ack(&self.group, side, seq, now)
                    .expect("acks only what arrived");
            }
        }
    }

    fn deliver_downstream(&mut self, side: Side, out: RelayOutput) {
        let s = self.side(side);
        match out {
            RelayOutput::Deliver { items, .. } => {
                for item in items {
                    if item.seq != s.rx_cursor + 1 {
                        s.violations.push(format!(
                            "{side}: got seq {} after {}",
                            item.seq, s.rx_cursor
                        ));
                    }
                    if item.payload != payload(side.inbound(), item.seq) {
                        s.violations
                            .push(format!("{side}: wrong payload for {}", item.seq));
                    }
                    s.rx_cursor = item.seq;
                    s.received.push(item.seq);
                }
            }
            RelayOutput::Gap { gap, .. } => {
                if gap.from != s.rx_cursor + 1 || gap.count != gap.to - gap.from + 1 {
                    s.violations
                        .push(format!("{side}: bad gap {gap:?} after {}", s.rx_cursor));
                }
                s.rx_cursor = gap.to;
                s.gaps.push(gap);
            }
            RelayOutput::Ack { up_to, .. } => {
                if up_to > s.produced {
                    s.violations.push(format!(
                        "{side}: ack {up_to} beyond produced {}",
                        s.produced
                    ));
                }
                s.tx_acked = s.tx_acked.max(up_to);
            }
            other => panic!("routed only side messages here: {other:?}"),
        }
    }

    /// Executes up to `n` of the oldest pending storage requests, then drives the engine.
    pub fn complete_storage(&mut self, n: usize) {
        for _ in 0..n {
            let Some(req) = self.pending.pop_front() else {
                break;
            };
            self.execute(req);
        }
        self.drive();
    }

    /// The server crashes: the engine and every storage request in flight are gone, the log
    /// keeps what was stored, and both sides lose their connections. A new engine is loaded
    /// from the log the way the server loads a group.
    pub fn crash(&mut self) {
        self.pending.clear();
        let config = *self.engine.config();
        let mut snapshot = GroupSnapshot {
            activated: self.activated,
            ..Default::default()
        };
        for dir in Direction::BOTH {
            let key = dir.stream_key(&self.group);
            let head = block_on(self.log.backlog(&key, 0))
                .expect("memory backlog")
                .head;
            let consumer = dir.consumer().to_string();
            let cursor = block_on(self.log.load_cursor(&key, &consumer))
                .expect("memory cursor")
                .unwrap_or(0);
            let stream = StreamSnapshot {
                head,
                consumer_cursor: cursor,
            };
            match dir {
                Direction::AToB => snapshot.a_to_b = stream,
                Direction::BToA => snapshot.b_to_a = stream,
            }
        }
        self.engine = RelayEngine::new(config);
        self.engine
            .add_group(self.group.clone(), snapshot, self.now_ms);
        for side in [Side::A, Side::B] {
            let s = self.side(side);
            s.connected = false;
            s.downlink.clear();
            s.uplink.clear();
        }
        self.drive();
    }

    /// Runs the driver until the engine has nothing left to do at the current time.
    pub fn drive(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(req) = self.engine.poll_storage() {
                progressed = true;
                if self.deferred {
                    self.pending.push_back(req);
                } else {
                    self.execute(req);
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= self.now_ms) {
                progressed = true;
                self.rounds += 1;
                self.engine.handle_timeout(self.now_ms);
            }
            while let Some(out) = self.engine.poll_output() {
                progressed = true;
                self.route(out);
            }
            if !progressed {
                break;
            }
        }
    }

    fn route(&mut self, out: RelayOutput) {
        match &out {
            RelayOutput::Deliver { to, .. }
            | RelayOutput::Gap { to, .. }
            | RelayOutput::Ack { to, .. } => {
                let to = *to;
                if self.side(to).connected {
                    self.side(to).downlink.push_back(out);
                }
            }
            RelayOutput::ModeChanged { status, .. } => self.modes.push(status.mode),
            RelayOutput::BufferPressure {
                direction,
                unacknowledged,
                ..
            } => {
                *self.pressure.entry(*direction).or_default() += unacknowledged;
            }
            RelayOutput::ResetProducer { side, .. } => {
                self.resets += 1;
                let side = *side;
                self.disconnect(side);
            }
        }
    }

    fn execute(&mut self, req: StorageRequest) {
        let now = self.now_ms;
        match req {
            StorageRequest::Append {
                group, direction, ..
            } if std::mem::take(&mut self.fail_next_append) => {
                // Like the server's append lanes: appends of this stream issued before the
                // engine learns of the failure are skipped, or they would store after a hole.
                self.pending.retain(|r| {
                    !matches!(r, StorageRequest::Append { direction: d, .. } if *d == direction)
                });
                let failure = Err(relay_core::Error::Corrupt {
                    stream: direction.stream_key(&group),
                    detail: "simulated storage failure".to_owned(),
                });
                self.engine
                    .handle_append_result(&group, direction, failure, now)
                    .expect("loaded");
            }
            other => serve(&mut self.engine, &self.log, other, now, Cursors::Store),
        }
    }

    /// Reconnects everything, activates, and runs until every produced frame is acknowledged
    /// and every consumer has caught up (bounded).
    pub fn settle(&mut self) {
        self.deferred = false;
        self.fail_next_append = false;
        self.complete_storage(usize::MAX);
        self.set_active(true);
        self.connect(Side::A);
        self.connect(Side::B);
        for _ in 0..100_000 {
            if self.settled() {
                return;
            }
            self.step(64);
            self.advance(10);
        }
        let a = &self.sides[&Side::A];
        let b = &self.sides[&Side::B];
        panic!(
            "simulation did not settle: A produced {} acked {} rx {}; B produced {} acked {} rx {}; status {:?}",
            a.produced,
            a.tx_acked,
            a.rx_cursor,
            b.produced,
            b.tx_acked,
            b.rx_cursor,
            self.engine.group_status(&self.group)
        );
    }

    fn settled(&mut self) -> bool {
        [Side::A, Side::B].into_iter().all(|side| {
            let produced_by_peer = self.sides[&side.peer()].produced;
            let s = &self.sides[&side];
            s.tx_acked == s.produced
                && s.rx_cursor == produced_by_peer
                && s.uplink.is_empty()
                && s.downlink.is_empty()
        })
    }

    /// Checks the model: each consumer saw every seq of its inbound stream exactly once, either
    /// as an item or inside a gap, and only seqs retention removed are in gaps.
    pub fn check_model(&self) {
        for side in [Side::A, Side::B] {
            let s = &self.sides[&side];
            assert!(s.violations.is_empty(), "{:?}", s.violations);
            let produced = self.sides[&side.peer()].produced;
            let mut covered = vec![0u8; produced as usize + 1];
            for seq in &s.received {
                covered[*seq as usize] += 1;
            }
            let trimmed_to = self
                .trims
                .get(&side.inbound())
                .map_or(0, |t| t.iter().map(|t| t.last).max().unwrap_or(0));
            let mut gap_total = 0;
            for gap in &s.gaps {
                assert!(matches!(gap.reason, GapReason::Retention(_)), "{gap:?}");
                assert!(
                    gap.to <= trimmed_to,
                    "gap {gap:?} beyond what was trimmed ({trimmed_to})"
                );
                gap_total += gap.count;
                for seq in gap.from..=gap.to {
                    covered[seq as usize] += 1;
                }
            }
            for seq in 1..=produced {
                assert_eq!(
                    covered[seq as usize], 1,
                    "{side}: seq {seq} covered {} times",
                    covered[seq as usize]
                );
            }
            let trimmed_total: u64 = self
                .trims
                .get(&side.inbound())
                .map_or(0, |t| t.iter().map(|t| t.count).sum());
            assert!(
                gap_total <= trimmed_total,
                "gaps {gap_total} > trimmed {trimmed_total}"
            );
            let pressure = self.pressure.get(&side.inbound()).copied().unwrap_or(0);
            assert!(
                gap_total <= pressure,
                "every gapped item was announced by pressure ({gap_total} > {pressure})"
            );
        }
    }
}
