//! End-to-end simulation of store-and-forward: a producer ([`StreamOutbox`] +
//! [`UplinkSession`]) and a consumer stepped over a virtual link with latency, on a virtual
//! clock, through outages, lost batches, refusals, overflow and producer restarts.
//!
//! Two consumers, one per protocol the session serves:
//! * `Relay` keeps the relay engine's rules: duplicates (seq at or below its head) are
//!   acknowledged again, a batch that leaves a hole after what this connection sent is refused
//!   (`seq_out_of_order` → [`Refusal::Resync`]) except the first one of a connection, and an
//!   inactive group refuses everything (`group_inactive` → [`Refusal::DropPending`]).
//! * `Inbox` is the telemetry remote's real [`UplinkInbox`] (memory or SQLite).
//!
//! Checked against the model "every record arrives once, in order, and is counted as dropped
//! exactly when it does not": the consumer's records have increasing seqs and increasing
//! record ids, each id at most once; the ids that never arrived number exactly the drops the
//! outbox counted (at most, when the remote refused records it may have stored); and nothing
//! is marked acknowledged before the consumer committed it.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod uplink_support;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    DropReason, FullJitter, MemoryInbox, NewRecord, OnAck, OutboxRecord, Refusal, RemoteAhead,
    SentBatch, SessionAction, SessionConfig, SqliteInbox, StreamConfig, StreamOutbox, UplinkInbox,
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

/// The consumer side.
enum Consumer {
    Relay {
        /// `(seq, record id)` stored, in order.
        stored: Vec<(u64, u64)>,
        head: u64,
        /// The next batch is the first of its connection.
        fresh: bool,
        /// Storing a batch of this connection failed: everything after it is refused too
        /// (it was built on it), until the producer reconnects.
        failed: bool,
        inactive: bool,
    },
    Inbox(Box<dyn UplinkInbox>),
}

impl Consumer {
    /// What the remote holds durably (its handshake's ack).
    fn acked(&mut self) -> u64 {
        match self {
            Consumer::Relay { head, .. } => *head,
            Consumer::Inbox(inbox) => inbox.acked(KEY).unwrap(),
        }
    }

    fn connected(&mut self) {
        if let Consumer::Relay { fresh, failed, .. } = self {
            *fresh = true;
            *failed = false;
        }
    }

    /// Storing the batch that just arrived failed (the relay then resets the producer).
    fn fail(&mut self) {
        if let Consumer::Relay { fresh, failed, .. } = self {
            *fresh = false;
            *failed = true;
        }
    }

    /// Commits a batch and returns the ack (sent after the commit), or a refusal.
    fn receive(&mut self, records: &[OutboxRecord]) -> Result<u64, Refusal> {
        match self {
            Consumer::Relay {
                stored,
                head,
                fresh,
                failed,
                inactive,
            } => {
                let first_of_connection = std::mem::replace(fresh, false);
                if *failed {
                    return Err(Refusal::Resync);
                }
                if *inactive {
                    return Err(Refusal::DropPending {
                        reason: DropReason::Refused,
                    });
                }
                let new: Vec<&OutboxRecord> = records.iter().filter(|r| r.seq > *head).collect();
                if let Some(first) = new.first()
                    && !first_of_connection
                    && first.seq > *head + 1
                {
                    return Err(Refusal::Resync);
                }
                for r in new {
                    stored.push((r.seq, record_id(&r.payload)));
                    *head = r.seq;
                }
                Ok(*head)
            }
            Consumer::Inbox(inbox) => Ok(inbox.commit(KEY, records).unwrap().ack),
        }
    }

    /// `(seq, record id)` of everything stored, in seq order.
    fn contents(&mut self) -> Vec<(u64, u64)> {
        match self {
            Consumer::Relay { stored, .. } => stored.clone(),
            Consumer::Inbox(inbox) => inbox
                .read(KEY, 0, usize::MAX)
                .unwrap()
                .iter()
                .map(|r| (r.seq, record_id(&r.payload)))
                .collect(),
        }
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
                        self.consumer.connected();
                        let acked = self.consumer.acked();
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
            let next = [next_up, next_down, next_timer].into_iter().flatten().min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    if next_up == Some(t) {
                        let (_, conn, records) = self.up.pop_front().unwrap();
                        if conn == self.conn && self.remote_up {
                            let answer = if std::mem::take(&mut self.lose_next) {
                                // The relay failed to store it: it resets the producer.
                                self.consumer.fail();
                                Down::Refused(Refusal::Resync)
                            } else {
                                match self.consumer.receive(&records) {
                                    Ok(ack) => Down::Ack(ack),
                                    Err(refusal) => Down::Refused(refusal),
                                }
                            };
                            self.down.push_back((self.now + LATENCY_MS, conn, answer));
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
        if let Consumer::Relay { inactive, .. } = &mut self.consumer {
            *inactive = value;
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
            Op::LoseNextBatch => sim.lose_next = matches!(sim.consumer, Consumer::Relay { .. }),
            Op::Inactive(v) => sim.set_inactive(v),
            Op::Restart => sim.restart().await,
        }
    }
    sim.settle_and_check().await;
}

fn relay() -> Consumer {
    Consumer::Relay {
        stored: Vec::new(),
        head: 0,
        fresh: true,
        failed: false,
        inactive: false,
    }
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
