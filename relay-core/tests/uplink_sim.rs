//! End-to-end simulation of store-and-forward: a producer ([`StreamOutbox`] +
//! [`UplinkSession`], the decisions of the dongle agent and of the telemetry vehicle) and a
//! consumer stepped over a virtual link with latency, on a virtual clock, through outages,
//! lost batches, refusals, overflow and producer restarts.
//!
//! Two consumers, one per protocol the session serves, both the real code:
//! * `Engine` is the server side of the data plane: the [`RelayEngine`] over a memory stream
//!   log, the producer as side A of a group and side B connected, acknowledging what it is
//!   delivered. Its refusals reach the session as the server sends them (`ErrorCode::for_error`)
//!   and as the agent maps them (`Refusal::for_relay_error`); a failed append resets the
//!   producer (`internal`).
//! * `Inbox` is the telemetry remote's real [`UplinkInbox`] (memory or SQLite).
//!
//! Checked against the model "every record arrives once, in order, and is counted as dropped
//! exactly when it does not": the consumer's records have increasing seqs and increasing
//! record ids, each id at most once; the ids that never arrived number exactly the drops the
//! outbox counted (at most, when the remote refused records it may have stored); nothing
//! is marked acknowledged before the consumer committed it; and side B was delivered exactly
//! what the log holds, once and in order.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod storage_support;
mod uplink_support;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_core::engine::{
    Direction, EngineConfig, GroupId, GroupSnapshot, RelayEngine, RelayOutput, Side, StorageRequest,
};
use relay_core::log::{GapReason, Item, MemoryStreamLog, StreamLog};
use relay_core::protocol::ErrorCode;
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    FullJitter, MemoryInbox, NewRecord, OnAck, OutboxRecord, Refusal, RemoteAhead, SentBatch,
    SessionAction, SessionConfig, SqliteInbox, StreamConfig, StreamOutbox, UplinkInbox,
    UplinkSession,
};
use uplink_support::{Backend, StoreHarness, proptest_config, runtime};

const KEY: &str = "vehicle-1";
const LATENCY_MS: u64 = 15;

fn session_config() -> SessionConfig {
    SessionConfig {
        window: 24,
        batch_max: 8,
        backoff: FullJitter::new(Duration::from_millis(50), Duration::from_millis(1_000)),
        stats_window_ms: 10_000,
        remote_ahead: RemoteAhead::Renumber,
    }
}

fn record_id(payload: &Bytes) -> u64 {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

/// The relay server's side: the engine over a memory log, one group, the producer as side A.
struct Relay {
    engine: RelayEngine,
    log: MemoryStreamLog,
    group: GroupId,
    now: u64,
    /// Side B's cursor and what it was delivered, `(seq, record id)` in order.
    b_cursor: u64,
    b_received: Vec<(u64, u64)>,
    /// Seqs B was told it will never get (the producer dropped them, counted, before sending:
    /// the first batch of a connection then starts above the head, a `missing` gap).
    b_gapped: u64,
    violations: Vec<String>,
}

impl Relay {
    fn new() -> Self {
        let group = GroupId::new("g1");
        let mut engine = RelayEngine::new(EngineConfig::default());
        let snapshot = GroupSnapshot {
            activated: true,
            ..Default::default()
        };
        engine.add_group(group.clone(), snapshot, 0);
        engine.handle_connected(&group, Side::B, 0, 0).unwrap();
        let mut relay = Relay {
            engine,
            log: MemoryStreamLog::new(),
            group,
            now: 0,
            b_cursor: 0,
            b_received: Vec::new(),
            b_gapped: 0,
            violations: Vec::new(),
        };
        relay.drive(false);
        relay
    }

    fn key(&self) -> String {
        Direction::AToB.stream_key(&self.group)
    }

    /// Runs the engine and its storage; `fail_append`: the next append fails (nothing stored).
    /// Returns what went to side A.
    fn drive(&mut self, mut fail_append: bool) -> Vec<Down> {
        let mut to_a = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(req) = self.engine.poll_storage() {
                progressed = true;
                match req {
                    StorageRequest::Append {
                        group, direction, ..
                    } if std::mem::take(&mut fail_append) => {
                        let failure = Err(relay_core::Error::Corrupt {
                            stream: direction.stream_key(&group),
                            detail: "simulated storage failure".to_owned(),
                        });
                        let result = self
                            .engine
                            .handle_append_result(&group, direction, failure, self.now);
                        result.unwrap();
                    }
                    other => storage_support::serve(
                        &mut self.engine,
                        &self.log,
                        other,
                        self.now,
                        storage_support::Cursors::Store,
                    ),
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
                progressed = true;
                self.engine.handle_timeout(self.now);
            }
            while let Some(out) = self.engine.poll_output() {
                progressed = true;
                match out {
                    RelayOutput::Ack {
                        to: Side::A, up_to, ..
                    } => to_a.push(Down::Ack(up_to)),
                    RelayOutput::ResetProducer { side: Side::A, .. } => {
                        // The server closes the connection with `internal`.
                        to_a.push(Down::Refused(Refusal::for_relay_error(ErrorCode::Internal)));
                    }
                    RelayOutput::Deliver {
                        to: Side::B, items, ..
                    } => self.deliver_to_b(&items),
                    RelayOutput::Gap {
                        to: Side::B, gap, ..
                    } => {
                        if gap.from != self.b_cursor + 1 || gap.reason != GapReason::Missing {
                            self.violations
                                .push(format!("B got {gap:?} after {}", self.b_cursor));
                        }
                        self.b_cursor = gap.to;
                        self.b_gapped += gap.count;
                        let group = self.group.clone();
                        self.engine
                            .handle_ack(&group, Side::B, gap.to, self.now)
                            .unwrap();
                    }
                    RelayOutput::ModeChanged { .. } => {}
                    other => self.violations.push(format!("unexpected {other:?}")),
                }
            }
            if !progressed {
                return to_a;
            }
        }
    }

    /// Side B takes the items in order and acknowledges them.
    fn deliver_to_b(&mut self, items: &[Item]) {
        for item in items {
            if item.seq != self.b_cursor + 1 {
                self.violations
                    .push(format!("B got seq {} after {}", item.seq, self.b_cursor));
            }
            self.b_cursor = item.seq;
            self.b_received.push((item.seq, record_id(&item.payload)));
        }
        let (group, cursor) = (self.group.clone(), self.b_cursor);
        self.engine
            .handle_ack(&group, Side::B, cursor, self.now)
            .unwrap();
    }

    fn receive(&mut self, records: &[OutboxRecord], fail_append: bool) -> Vec<Down> {
        let items = records.iter().map(Item::from).collect();
        let group = self.group.clone();
        if let Err(e) = self.engine.handle_frames(&group, Side::A, items, self.now) {
            // The server answers with the error and the agent closes the connection.
            let mut downs = self.drive(false);
            downs.push(Down::Refused(Refusal::for_relay_error(
                ErrorCode::for_error(&e),
            )));
            return downs;
        }
        self.drive(fail_append)
    }
}

/// The consumer side.
enum Consumer {
    Relay(Box<Relay>),
    Inbox(Box<dyn UplinkInbox>),
}

impl Consumer {
    /// What the remote holds durably (its handshake's ack).
    fn acked(&mut self) -> u64 {
        match self {
            Consumer::Relay(relay) => block_on(relay.log.backlog(&relay.key(), 0)).unwrap().head,
            Consumer::Inbox(inbox) => inbox.acked(KEY).unwrap(),
        }
    }

    /// The producer connects; returns the handshake's ack.
    fn connect(&mut self, now: u64) -> u64 {
        let acked = self.acked();
        if let Consumer::Relay(relay) = self {
            relay.now = now;
            let group = relay.group.clone();
            let welcome = relay
                .engine
                .handle_connected(&group, Side::A, 0, now)
                .unwrap();
            assert_eq!(welcome.tx_acked, acked, "the welcome acks what is durable");
            relay.drive(false);
        }
        acked
    }

    fn disconnected(&mut self, now: u64) {
        if let Consumer::Relay(relay) = self {
            relay.now = now;
            let group = relay.group.clone();
            relay
                .engine
                .handle_disconnected(&group, Side::A, now)
                .unwrap();
            relay.drive(false);
        }
    }

    /// Whether the remote's own consumer (the relay's side B) has everything that is durable.
    fn caught_up(&mut self) -> bool {
        let acked = self.acked();
        match self {
            Consumer::Relay(relay) => relay.b_cursor >= acked,
            Consumer::Inbox(_) => true,
        }
    }

    /// The engine's next timer.
    fn poll_timeout(&mut self) -> Option<u64> {
        match self {
            Consumer::Relay(relay) => relay.engine.poll_timeout(),
            Consumer::Inbox(_) => None,
        }
    }

    /// Time `now` has come: what the remote sends meanwhile.
    fn tick(&mut self, now: u64) -> Vec<Down> {
        match self {
            Consumer::Relay(relay) => {
                relay.now = now;
                relay.drive(false)
            }
            Consumer::Inbox(_) => Vec::new(),
        }
    }

    /// Takes a batch; returns what the remote answers (acks after the commit, a refusal).
    /// `fail`: the remote fails to store it (the relay then resets the producer).
    fn receive(&mut self, records: &[OutboxRecord], now: u64, fail: bool) -> Vec<Down> {
        match self {
            Consumer::Relay(relay) => {
                relay.now = now;
                relay.receive(records, fail)
            }
            Consumer::Inbox(inbox) => vec![Down::Ack(inbox.commit(KEY, records).unwrap().ack)],
        }
    }

    /// `(seq, record id)` of everything stored, in seq order.
    fn contents(&mut self) -> Vec<(u64, u64)> {
        let records: Vec<(u64, Bytes)> = match self {
            Consumer::Relay(relay) => {
                let mut items = Vec::new();
                let mut after = 0;
                loop {
                    let batch = block_on(relay.log.read(&relay.key(), after, usize::MAX)).unwrap();
                    let Some(last) = batch.last_seq() else { break };
                    after = last;
                    items.extend(batch.items.into_iter().map(|i| (i.seq, i.payload)));
                }
                items
            }
            Consumer::Inbox(inbox) => inbox
                .read(KEY, 0, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| (r.seq, r.payload))
                .collect(),
        };
        records
            .into_iter()
            .map(|(seq, payload)| (seq, record_id(&payload)))
            .collect()
    }
}

enum Down {
    Ack(u64),
    Refused(Refusal),
}

struct Sim {
    store: StoreHarness,
    config: StreamConfig,
    outbox: Option<StreamOutbox>,
    session: UplinkSession<StdRng>,
    consumer: Consumer,
    seed: u64,
    now: u64,
    remote_up: bool,
    /// Bumped at every connection: what is in the link for an older one is gone.
    conn: u64,
    connected: bool,
    up: VecDeque<(u64, u64, Vec<OutboxRecord>)>,
    down: VecDeque<(u64, u64, Down)>,
    /// The relay fails to store the next batch that reaches it.
    lose_next: bool,
    appended: u64,
    refused_any: bool,
}

impl Sim {
    async fn new(store: StoreHarness, config: StreamConfig, consumer: Consumer, seed: u64) -> Self {
        let outbox = StreamOutbox::open(store.handle(), KEY, config)
            .await
            .unwrap();
        let session = UplinkSession::new(
            session_config(),
            StdRng::seed_from_u64(seed),
            outbox.acked(),
            outbox.last_seq(),
            0,
        );
        Sim {
            store,
            config,
            outbox: Some(outbox),
            session,
            consumer,
            seed,
            now: 0,
            remote_up: true,
            conn: 0,
            connected: false,
            up: VecDeque::new(),
            down: VecDeque::new(),
            lose_next: false,
            appended: 0,
            refused_any: false,
        }
    }

    fn outbox(&mut self) -> &mut StreamOutbox {
        self.outbox.as_mut().unwrap()
    }

    async fn append(&mut self, n: u64) {
        let records: Vec<NewRecord> = (self.appended + 1..=self.appended + n)
            .map(|id| NewRecord {
                ts_ms: self.now,
                payload: Bytes::from(id.to_string()),
            })
            .collect();
        self.outbox().append(records).await.unwrap();
        self.appended += n;
        let last = self.outbox().last_seq();
        self.session.handle_records_available(last);
        self.drive().await;
    }

    fn close_link(&mut self) {
        if self.connected {
            self.consumer.disconnected(self.now);
        }
        self.connected = false;
        self.up.clear();
        self.down.clear();
    }

    async fn drop_link(&mut self) {
        if self.connected {
            self.close_link();
            self.session.handle_disconnected(self.now);
        }
        self.drive().await;
    }

    /// The producer process restarts: its memory is gone, its store stays.
    async fn restart(&mut self) {
        self.close_link();
        self.outbox = None;
        self.store.reopen().await;
        let outbox = StreamOutbox::open(self.store.handle(), KEY, self.config)
            .await
            .unwrap();
        self.seed += 1;
        self.session = UplinkSession::new(
            session_config(),
            StdRng::seed_from_u64(self.seed),
            outbox.acked(),
            outbox.last_seq(),
            self.now,
        );
        self.outbox = Some(outbox);
        self.drive().await;
    }

    async fn drive(&mut self) {
        let now = self.now;
        while let Some(action) = self.session.poll_action(now) {
            match action {
                SessionAction::Connect => {
                    if self.remote_up {
                        self.connected = true;
                        self.conn += 1;
                        let acked = self.consumer.connect(now);
                        self.session.handle_connected(acked, now);
                    } else {
                        self.session.handle_connect_failed(now);
                    }
                }
                SessionAction::Reconcile { remote_acked } => {
                    let r = self.outbox().reconcile(remote_acked).await.unwrap();
                    self.session.handle_reconciled(&r, now);
                }
                SessionAction::Send { after, max } => {
                    let records = self.outbox().next_batch(after, max).await.unwrap();
                    let sent = match (records.first(), records.last()) {
                        (Some(f), Some(l)) => Some(SentBatch {
                            first: f.seq,
                            last: l.seq,
                            count: records.len() as u64,
                            bytes: records.iter().map(|r| r.payload.len() as u64).sum(),
                        }),
                        _ => None,
                    };
                    if sent.is_some() {
                        self.up.push_back((now + LATENCY_MS, self.conn, records));
                    }
                    self.session.handle_sent(sent, now);
                }
                SessionAction::MarkUplinked { up_to } => {
                    assert!(
                        up_to <= self.consumer.acked(),
                        "marked {up_to} before the consumer committed it"
                    );
                    self.outbox().ack(up_to).await.unwrap();
                }
                SessionAction::DropPending { reason } => {
                    self.outbox().drop_pending(reason).await.unwrap();
                    let last = self.outbox().last_seq();
                    self.session.handle_records_available(last);
                }
                SessionAction::Disconnect => self.close_link(),
            }
        }
    }

    async fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        loop {
            let next_up = self.up.front().map(|(t, _, _)| *t);
            let next_down = self.down.front().map(|(t, _, _)| *t);
            let next_timer = self.session.poll_timeout();
            let next_remote = self.consumer.poll_timeout();
            let next = [next_up, next_down, next_timer, next_remote]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    if next_up == Some(t) {
                        let (_, conn, records) = self.up.pop_front().unwrap();
                        if conn == self.conn && self.remote_up {
                            let fail = std::mem::take(&mut self.lose_next);
                            for answer in self.consumer.receive(&records, self.now, fail) {
                                self.down.push_back((self.now + LATENCY_MS, conn, answer));
                            }
                        }
                    } else if next_down == Some(t) {
                        let (_, conn, answer) = self.down.pop_front().unwrap();
                        if conn == self.conn && self.connected {
                            match answer {
                                Down::Ack(ack) => self.session.handle_ack(ack, self.now).unwrap(),
                                Down::Refused(refusal) => {
                                    if matches!(refusal, Refusal::DropPending { .. }) {
                                        self.refused_any = true;
                                    }
                                    self.session.handle_refused(refusal, self.now);
                                }
                            }
                        }
                    } else if next_remote == Some(t) {
                        for answer in self.consumer.tick(self.now) {
                            if self.connected {
                                self.down
                                    .push_back((self.now + LATENCY_MS, self.conn, answer));
                            }
                        }
                    }
                    self.drive().await;
                }
                _ => break,
            }
        }
        self.now = end;
        self.drive().await;
    }

    fn set_inactive(&mut self, value: bool) {
        if let Consumer::Relay(relay) = &mut self.consumer {
            relay.now = self.now;
            let group = relay.group.clone();
            let mode = if value {
                relay.engine.handle_deactivate(&group, self.now)
            } else {
                relay.engine.handle_activate(&group, self.now)
            };
            mode.unwrap();
            // What the engine answers A meanwhile (none expected) reaches it like any answer.
            for answer in relay.drive(false) {
                if self.connected {
                    self.down
                        .push_back((self.now + LATENCY_MS, self.conn, answer));
                }
            }
        }
    }

    async fn settle_and_check(&mut self) {
        self.remote_up = true;
        self.set_inactive(false);
        for _ in 0..10_000 {
            // Connected again (so reconciled since the last outage) with nothing in flight.
            let connected = self.session.state() == relay_core::uplink::UplinkState::Connected;
            if connected
                && self.outbox().pending() == 0
                && self.up.is_empty()
                && self.down.is_empty()
                && self.consumer.caught_up()
            {
                break;
            }
            self.advance(100).await;
        }
        let now = self.now;
        let stats = self.outbox().stats(now);
        assert_eq!(stats.pending, 0, "{stats:?}");
        let contents = self.consumer.contents();
        // In order, each record once.
        for pair in contents.windows(2) {
            assert!(pair[0].0 < pair[1].0, "seqs out of order: {pair:?}");
            assert!(
                pair[0].1 < pair[1].1,
                "records out of order or twice: {pair:?}"
            );
        }
        assert!(
            contents
                .iter()
                .all(|(_, id)| *id >= 1 && *id <= self.appended)
        );
        // What never arrived is what the outbox counted as dropped: exactly, unless the remote
        // refused records it may have stored (then the count is an upper bound).
        let missing = self.appended - contents.len() as u64;
        let dropped = stats.dropped.total();
        assert_eq!(stats.unsettled, 0);
        if self.refused_any {
            assert!(missing <= dropped, "missing {missing}, counted {dropped}");
        } else {
            assert_eq!(
                missing, dropped,
                "missing {missing}, counted {dropped}: {stats:?}"
            );
        }
        if let Consumer::Relay(relay) = &self.consumer {
            assert!(relay.violations.is_empty(), "{:?}", relay.violations);
            assert_eq!(
                relay.b_received, contents,
                "B was delivered what the log holds"
            );
            assert_eq!(
                relay.b_received.len() as u64 + relay.b_gapped,
                relay.b_cursor,
                "every seq up to B's cursor delivered or gapped once"
            );
        }
        let last_seq = contents.last().map_or(0, |(seq, _)| *seq);
        assert_eq!(self.outbox().acked(), self.consumer.acked());
        assert!(self.consumer.acked() >= last_seq);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    Advance(u64),
    DropLink,
    RemoteDown,
    RemoteUp,
    LoseNextBatch,
    Inactive(bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..20).prop_map(Op::Append),
        6 => (1u64..300).prop_map(Op::Advance),
        1 => Just(Op::DropLink),
        1 => Just(Op::RemoteDown),
        1 => Just(Op::RemoteUp),
        1 => Just(Op::LoseNextBatch),
        1 => any::<bool>().prop_map(Op::Inactive),
        1 => Just(Op::Restart),
    ]
}

async fn run(sim: &mut Sim, ops: Vec<Op>) {
    for op in ops {
        match op {
            Op::Append(n) => sim.append(n).await,
            Op::Advance(ms) => sim.advance(ms).await,
            Op::DropLink => sim.drop_link().await,
            Op::RemoteDown => {
                sim.remote_up = false;
                sim.drop_link().await;
            }
            Op::RemoteUp => sim.remote_up = true,
            // The uplink's remote never fails a batch alone (a WebSocket does not lose one);
            // the relay may fail to store one and reset the producer.
            Op::LoseNextBatch => sim.lose_next = matches!(sim.consumer, Consumer::Relay(_)),
            Op::Inactive(v) => sim.set_inactive(v),
            Op::Restart => sim.restart().await,
        }
    }
    sim.settle_and_check().await;
}

fn relay() -> Consumer {
    Consumer::Relay(Box::new(Relay::new()))
}

proptest! {
    #![proptest_config(proptest_config(200, "proptest-regressions/uplink_sim.txt"))]

    /// The agent's case: the relay's rules, acked records deleted, a cap small enough that
    /// bursts overflow it while batches are in flight.
    #[test]
    fn relay_stream_loses_nothing_uncounted(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>(), cap in 10u64..80) {
        let config = StreamConfig { max_records: cap, on_ack: OnAck::Delete, mirror_max: 16 };
        runtime().block_on(async {
            let mut sim = Sim::new(StoreHarness::new(Backend::Memory), config, relay(), seed).await;
            run(&mut sim, ops).await;
        });
    }

    /// The telemetry case: the real inbox, uplinked records kept for the dashboard.
    #[test]
    fn telemetry_stream_loses_nothing_uncounted(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>(), cap in 10u64..80) {
        let config = StreamConfig { max_records: cap, on_ack: OnAck::Keep, mirror_max: 16 };
        runtime().block_on(async {
            let inbox = Consumer::Inbox(Box::new(MemoryInbox::new()));
            let mut sim = Sim::new(StoreHarness::new(Backend::Memory), config, inbox, seed).await;
            run(&mut sim, ops).await;
        });
    }
}

proptest! {
    #![proptest_config(proptest_config(12, "proptest-regressions/uplink_sim.txt"))]

    /// Both durable: the SQLite outbox (reopened at each restart) and the SQLite inbox.
    #[test]
    fn sqlite_end_to_end_with_outages_and_restarts(ops in proptest::collection::vec(op(), 1..40), seed in any::<u64>()) {
        let config = StreamConfig { max_records: 50, on_ack: OnAck::Keep, mirror_max: 8 };
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let inbox = SqliteInbox::open(dir.path().join("inbox.db"), Durability::Normal).unwrap();
            let store = StoreHarness::new(Backend::Sqlite(Durability::Normal));
            let mut sim = Sim::new(store, config, Consumer::Inbox(Box::new(inbox)), seed).await;
            run(&mut sim, ops).await;
        });
    }
}

#[test]
fn sqlite_relay_stream_with_a_restart() {
    runtime().block_on(async {
        let config = StreamConfig {
            max_records: 100_000,
            on_ack: OnAck::Delete,
            mirror_max: 64,
        };
        let store = StoreHarness::new(Backend::Sqlite(Durability::Full));
        let mut sim = Sim::new(store, config, relay(), 1).await;
        for round in 0..20 {
            sim.append(7).await;
            sim.advance(20).await;
            if round % 5 == 4 {
                sim.drop_link().await;
            }
            if round == 12 {
                sim.restart().await;
            }
        }
        sim.settle_and_check().await;
        assert_eq!(
            sim.consumer.contents().len(),
            140,
            "nothing dropped, nothing lost"
        );
    });
}
