//! Model-based property test of [`StreamOutbox`]: random sequences of appends, sends, acks,
//! drops, reconciles, cursor updates, prunes and producer restarts, run against every store
//! and checked after each step against a naive model — records with explicit seqs in a list,
//! renumbered one by one, unsettled seqs in a set — that spells the rules out directly (no
//! slots, offsets, chunks or memory mirror).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod uplink_support;

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;
use relay_core::Error;
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    AppendReport, DropReason, NewRecord, OnAck, OutboxRecord, Reconciled, StreamConfig,
    StreamOutbox,
};
use uplink_support::{Backend, StoreHarness, proptest_config, runtime};

const KEY: &str = "model";

/// The rules, spelled out.
#[derive(Debug, Clone, Default)]
struct Model {
    cap: usize,
    keep: bool,
    /// `(seq, record id)`: uplinked then pending, in seq order.
    stored: VecDeque<(u64, u64)>,
    last_seq: u64,
    acked: u64,
    rx: u64,
    dropped: [u64; 3],
    unsettled: BTreeSet<u64>,
    // Process memory.
    sent_high: u64,
    server_acked: u64,
    carried: Option<(u64, u64)>,
    reconciled: bool,
}

fn reason_index(reason: DropReason) -> usize {
    match reason {
        DropReason::Overflow => 0,
        DropReason::Refused => 1,
        DropReason::Abandoned => 2,
    }
}

impl Model {
    fn pending(&self) -> Vec<(u64, u64)> {
        self.stored
            .iter()
            .copied()
            .filter(|(s, _)| *s > self.acked)
            .collect()
    }

    fn uplinked_stored(&self) -> bool {
        self.stored.iter().any(|(s, _)| *s <= self.acked)
    }

    fn floor(&self) -> u64 {
        self.acked.max(self.sent_high.min(self.last_seq))
    }

    fn close_hole(&mut self) -> bool {
        let floor = self.floor();
        let pending = self.pending();
        if self.uplinked_stored() {
            return false;
        }
        match pending.first() {
            Some((first, _)) if *first > floor + 1 => {
                let delta = first - floor - 1;
                for r in self.stored.iter_mut() {
                    r.0 -= delta;
                }
                self.last_seq -= delta;
                true
            }
            None if self.last_seq > floor => {
                self.last_seq = floor;
                true
            }
            _ => false,
        }
    }

    fn append(&mut self, ids: &[u64]) -> AppendReport {
        let mut report = AppendReport::default();
        if ids.is_empty() {
            return report;
        }
        for id in ids {
            self.last_seq += 1;
            self.stored.push_back((self.last_seq, *id));
        }
        while self.stored.len() > self.cap {
            let (seq, _) = self.stored.pop_front().unwrap();
            if seq <= self.acked {
                report.pruned_uplinked += 1;
            } else if seq <= self.sent_high {
                let carried = self.carried.is_some_and(|(a, b)| (a..=b).contains(&seq));
                if self.reconciled && !carried {
                    report.dropped_pending += 1;
                    self.dropped[0] += 1;
                } else {
                    report.dropped_in_flight += 1;
                    self.unsettled.insert(seq);
                }
            } else {
                report.dropped_pending += 1;
                self.dropped[0] += 1;
            }
        }
        report.renumbered = self.close_hole();
        let kept: Vec<u64> = self
            .stored
            .iter()
            .filter(|(_, id)| ids.contains(id))
            .map(|(s, _)| *s)
            .collect();
        report.first_seq = kept.first().copied().unwrap_or(self.last_seq + 1);
        report.last_seq = self.last_seq;
        report
    }

    fn ack(&mut self, up_to: u64) -> Result<u64, (u64, u64)> {
        if up_to > self.last_seq {
            return Err((up_to, self.last_seq));
        }
        self.server_acked = self.server_acked.max(up_to);
        if up_to <= self.acked {
            return Ok(0);
        }
        let newly = self.pending().iter().filter(|(s, _)| *s <= up_to).count() as u64;
        self.acked = up_to;
        self.unsettled.retain(|s| *s > up_to);
        if !self.keep {
            self.stored.retain(|(s, _)| *s > up_to);
        }
        Ok(newly)
    }

    fn settle(&mut self, held: u64) -> u64 {
        let lost = self.unsettled.iter().filter(|s| **s > held).count() as u64;
        self.unsettled.clear();
        self.dropped[0] += lost;
        lost
    }

    fn drop_pending(&mut self, reason: DropReason) -> (u64, u64) {
        let n = self.pending().len() as u64;
        self.stored.clear();
        self.dropped[reason_index(reason)] += n;
        let lost = if reason == DropReason::Abandoned {
            self.settle(self.acked)
        } else {
            0
        };
        self.close_hole();
        (n, lost)
    }

    fn reconcile(&mut self, remote: u64) -> Reconciled {
        let mut out = Reconciled::default();
        self.reconciled = true;
        self.carried = None;
        if remote > self.last_seq {
            out.remote_ahead = true;
            out.renumbered = true;
            let before = self.stored.len();
            self.stored.retain(|(s, _)| *s > self.acked);
            out.pruned_uplinked = (before - self.stored.len()) as u64;
            let follow = self.stored.front().map_or(self.last_seq + 1, |(s, _)| *s);
            let shift = remote + 1 - follow;
            for r in self.stored.iter_mut() {
                r.0 += shift;
            }
            self.last_seq += shift;
            self.acked = remote;
            self.unsettled.clear();
            self.server_acked = self.server_acked.max(remote);
            out.resume_after = remote;
        } else {
            out.remote_behind = remote < self.server_acked;
            out.newly_acked = self.ack(remote).unwrap();
            out.lost_in_flight = self.settle(remote.max(self.acked));
            out.renumbered = self.close_hole();
            let before_first = self.pending().first().map_or(self.last_seq, |(s, _)| s - 1);
            out.resume_after = self.acked.max(before_first.min(self.floor()));
        }
        out.acked = self.acked;
        out.last_seq = self.last_seq;
        out
    }

    fn next_batch(&mut self, after: u64, max: usize) -> Vec<(u64, u64)> {
        let batch: Vec<(u64, u64)> = self
            .pending()
            .into_iter()
            .filter(|(s, _)| *s > after)
            .take(max)
            .collect();
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            self.carried = Some(match self.carried {
                None => (first.0, last.0),
                Some((a, b)) => (a, b.max(last.0)),
            });
            self.sent_high = self.sent_high.max(last.0);
        }
        batch
    }

    fn prune(&mut self, older_than: u64, ts_of: impl Fn(u64) -> u64) -> u64 {
        let mut n = 0;
        while let Some((seq, id)) = self.stored.front() {
            if *seq > self.acked || ts_of(*id) >= older_than {
                break;
            }
            self.stored.pop_front();
            n += 1;
        }
        n
    }

    fn restart(&mut self) {
        self.sent_high = self.last_seq;
        self.server_acked = 0;
        self.carried = None;
        self.reconciled = false;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    Send(usize),
    Ack(u64),
    DropPending(u8),
    Reconcile(u64),
    SetRx(u64),
    Prune(u64),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..15).prop_map(Op::Append),
        4 => (1usize..10).prop_map(Op::Send),
        3 => (0u64..40).prop_map(Op::Ack),
        1 => (0u8..3).prop_map(Op::DropPending),
        2 => (0u64..60).prop_map(Op::Reconcile),
        1 => (0u64..1000).prop_map(Op::SetRx),
        1 => (0u64..30).prop_map(Op::Prune),
        1 => Just(Op::Restart),
    ]
}

fn reason(i: u8) -> DropReason {
    [
        DropReason::Overflow,
        DropReason::Refused,
        DropReason::Abandoned,
    ][usize::from(i) % 3]
}

fn ids_of(records: &[OutboxRecord]) -> Vec<(u64, u64)> {
    records
        .iter()
        .map(|r| {
            (
                r.seq,
                std::str::from_utf8(&r.payload).unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Record `id` is taken at `id / 4` ms: several records per millisecond, in order.
fn ts_of(id: u64) -> u64 {
    id / 4
}

async fn check(o: &mut StreamOutbox, m: &Model, step: &str) {
    let stats = o.stats(0);
    assert_eq!(
        (stats.last_seq, stats.acked_through, stats.rx_seq),
        (m.last_seq, m.acked, m.rx),
        "{step}"
    );
    assert_eq!(
        [
            stats.dropped.overflow,
            stats.dropped.refused,
            stats.dropped.abandoned
        ],
        m.dropped,
        "{step}"
    );
    assert_eq!(stats.unsettled, m.unsettled.len() as u64, "{step}");
    assert_eq!(stats.sent_through, m.sent_high, "{step}");
    assert_eq!(
        (stats.stored, stats.pending),
        (m.stored.len() as u64, m.pending().len() as u64),
        "{step}"
    );
    let all = o.recent(0, None, usize::MAX).await.unwrap();
    assert_eq!(ids_of(&all), Vec::from(m.stored.clone()), "{step}");
    let pending = o.peek(0, usize::MAX).await.unwrap();
    assert_eq!(ids_of(&pending), m.pending(), "{step}");
    assert_eq!(
        stats.oldest_pending_ts_ms,
        m.pending().first().map(|(_, id)| ts_of(*id)),
        "{step}"
    );
}

async fn run(backend: Backend, keep: bool, cap: usize, ops: Vec<Op>) {
    let mut store = StoreHarness::new(backend);
    let config = StreamConfig {
        max_records: cap as u64,
        on_ack: if keep { OnAck::Keep } else { OnAck::Delete },
        mirror_max: 4,
    };
    let mut o = StreamOutbox::open(store.handle(), KEY, config)
        .await
        .unwrap();
    let mut m = Model {
        cap,
        keep,
        ..Model::default()
    };
    let mut next_id = 1;
    // Where the current connection's sending stands (the session's `sent`).
    let mut cursor = 0;
    for (i, op) in ops.into_iter().enumerate() {
        let step = format!("step {i}: {op:?}");
        match op {
            Op::Append(n) => {
                let ids: Vec<u64> = (next_id..next_id + n).collect();
                next_id += n;
                let records = ids
                    .iter()
                    .map(|id| NewRecord {
                        ts_ms: ts_of(*id),
                        payload: Bytes::from(id.to_string()),
                    })
                    .collect();
                let got = o.append(records).await.unwrap();
                let want = m.append(&ids);
                if n == 0 {
                    assert_eq!(got, AppendReport::default(), "{step}");
                } else {
                    assert_eq!(got, want, "{step}");
                }
            }
            Op::Send(max) => {
                let got = o.next_batch(cursor, max).await.unwrap();
                let want = m.next_batch(cursor, max);
                assert_eq!(ids_of(&got), want, "{step}");
                if let Some((seq, _)) = want.last() {
                    cursor = *seq;
                }
            }
            Op::Ack(k) => {
                let up_to = m.acked + k / 2;
                match (o.ack(up_to).await, m.ack(up_to)) {
                    (Ok(got), Ok(want)) => assert_eq!(got, want, "{step}"),
                    (Err(Error::UplinkAckAhead { acked, sent }), Err(want)) => {
                        assert_eq!((acked, sent), want, "{step}");
                    }
                    (got, want) => panic!("{step}: {got:?} vs {want:?}"),
                }
            }
            Op::DropPending(r) => {
                let got = o.drop_pending(reason(r)).await.unwrap();
                let want = m.drop_pending(reason(r));
                assert_eq!((got.dropped, got.unsettled_lost), want, "{step}");
            }
            Op::Reconcile(k) => {
                // Mostly at or below the last seq, sometimes beyond it (state lost here).
                let remote = if k < 50 {
                    m.acked + k * m.last_seq.saturating_sub(m.acked) / 50
                } else {
                    m.last_seq + k - 49
                };
                let got = o.reconcile(remote).await.unwrap();
                let want = m.reconcile(remote);
                assert_eq!(got, want, "{step}");
                cursor = got.resume_after;
            }
            Op::SetRx(rx) => {
                o.set_rx(rx).await.unwrap();
                m.rx = rx;
            }
            Op::Prune(age) => {
                let older_than = ts_of(next_id).saturating_sub(age);
                let got = o.prune_uplinked(older_than).await.unwrap();
                assert_eq!(got, m.prune(older_than, ts_of), "{step}");
            }
            Op::Restart => {
                drop(o);
                store.reopen().await;
                o = StreamOutbox::open(store.handle(), KEY, config)
                    .await
                    .unwrap();
                m.restart();
                cursor = m.acked;
            }
        }
        check(&mut o, &m, &step).await;
    }
}

proptest! {
    #![proptest_config(proptest_config(300, "proptest-regressions/uplink_outbox_model.txt"))]

    #[test]
    fn memory_outbox_follows_the_model(ops in proptest::collection::vec(op(), 1..80), keep in any::<bool>(), cap in 1usize..40) {
        runtime().block_on(run(Backend::Memory, keep, cap, ops));
    }
}

proptest! {
    #![proptest_config(proptest_config(40, "proptest-regressions/uplink_outbox_model.txt"))]

    #[test]
    fn sqlite_outbox_follows_the_model(ops in proptest::collection::vec(op(), 1..60), keep in any::<bool>(), cap in 1usize..40) {
        runtime().block_on(run(Backend::Sqlite(Durability::Normal), keep, cap, ops));
    }
}
