//! Model-based property test for [`StreamLog`]: random action sequences (appends with
//! retransmissions and producer holes, reads by two consumers, acks, reconnects, trims by length
//! and by age on a virtual clock, close and reopen) run against a backend and against a simple
//! model, and every answer is compared.
//!
//! Invariants checked on every read: a consumer sees seqs strictly increasing and continuing
//! exactly where it stood (so every missing seq is covered by a gap, and each gap's count is
//! `to - from + 1`), never an item at or below its stored cursor after an ack, and the payload
//! the producer sent for that seq. At the end every consumer drains to the head.

mod log_common;

use std::collections::BTreeMap;

use log_common::{Harness, MemoryHarness, RedisHarness, SqliteHarness, item, payload};
use proptest::prelude::*;
use relay_core::log::{
    AppendOutcome, Backlog, Gap, GapReason, Item, ReadBatch, Retention, Seq, StreamLog, TrimReason,
    Trimmed,
};

const STREAM: &str = "group:model:a_to_b";
const CONSUMERS: usize = 2;

#[derive(Debug, Clone)]
enum Action {
    /// Producer sends `new` new items, preceded by `back` retransmitted ones.
    Send {
        new: u64,
        back: u64,
    },
    /// Producer skips seqs (they will never be sent).
    Skip {
        k: u64,
    },
    Read {
        c: usize,
        max: usize,
    },
    Ack {
        c: usize,
    },
    Reconnect {
        c: usize,
    },
    TrimLen {
        max_len: u64,
    },
    TrimAge {
        max_age: u64,
    },
    Tick {
        ms: u64,
    },
    Backlog {
        c: usize,
    },
    Reopen,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0u64..8, 0u64..4).prop_map(|(new, back)| Action::Send { new, back }),
        1 => (1u64..4).prop_map(|k| Action::Skip { k }),
        6 => (0..CONSUMERS, 0usize..12).prop_map(|(c, max)| Action::Read { c, max }),
        3 => (0..CONSUMERS).prop_map(|c| Action::Ack { c }),
        2 => (0..CONSUMERS).prop_map(|c| Action::Reconnect { c }),
        2 => (0u64..30).prop_map(|max_len| Action::TrimLen { max_len }),
        2 => (0u64..100).prop_map(|max_age| Action::TrimAge { max_age }),
        3 => (1u64..30).prop_map(|ms| Action::Tick { ms }),
        1 => (0..CONSUMERS).prop_map(|c| Action::Backlog { c }),
        1 => Just(Action::Reopen),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Stored,
    Trimmed(TrimReason),
    Missing,
    Beyond,
}

/// The reference: a map of stored seqs plus the head and the trim watermark.
#[derive(Debug, Default)]
struct Model {
    stored: BTreeMap<Seq, u64>,
    head: Seq,
    trimmed_through: Seq,
    last_reason: Option<TrimReason>,
    cursors: [Option<Seq>; CONSUMERS],
}

impl Model {
    fn append(&mut self, batch: &[Item]) -> AppendOutcome {
        let mut stored = 0;
        for it in batch {
            if it.seq > self.head {
                self.stored.insert(it.seq, it.ts_ms);
                self.head = it.seq;
                stored += 1;
            }
        }
        AppendOutcome {
            stored,
            duplicates: batch.len() as u64 - stored,
            ack: self.head,
        }
    }

    fn status(&self, s: Seq) -> Status {
        if self.stored.contains_key(&s) {
            Status::Stored
        } else if s <= self.trimmed_through
            && let Some(r) = self.last_reason
        {
            Status::Trimmed(r)
        } else if s <= self.head {
            Status::Missing
        } else {
            Status::Beyond
        }
    }

    /// Read by walking seq by seq: a run of one non-stored status is the gap, the run of
    /// stored seqs right after it are the items.
    fn read(&self, after: Seq, max: usize) -> ReadBatch {
        let mut s = after + 1;
        let mut gap = None;
        let first = self.status(s);
        if let Status::Trimmed(_) | Status::Missing = first {
            while self.status(s + 1) == first {
                s += 1;
            }
            let reason = match first {
                Status::Trimmed(r) => GapReason::Retention(r),
                _ => GapReason::Missing,
            };
            gap = Some(Gap {
                from: after + 1,
                to: s,
                count: s - after,
                reason,
            });
            s += 1;
        }
        let mut items = Vec::new();
        while items.len() < max && self.status(s) == Status::Stored {
            items.push(item(STREAM, s, self.stored[&s]));
            s += 1;
        }
        ReadBatch { gap, items }
    }

    fn remove_prefix(&mut self, n: usize, reason: TrimReason) -> Option<Trimmed> {
        let victims: Vec<Seq> = self.stored.keys().take(n).copied().collect();
        let first = *victims.first()?;
        for v in &victims {
            self.stored.remove(v);
        }
        let last = self.stored.keys().next().map_or(self.head, |s| s - 1);
        self.trimmed_through = last;
        self.last_reason = Some(reason);
        Some(Trimmed {
            count: victims.len() as u64,
            first,
            last,
            reason,
        })
    }

    fn trim(&mut self, r: &Retention, now: u64) -> Vec<Trimmed> {
        let mut out = Vec::new();
        if let Some(age) = r.max_age_ms {
            let cutoff = now.saturating_sub(age);
            let n = self.stored.values().take_while(|ts| **ts < cutoff).count();
            out.extend(self.remove_prefix(n, TrimReason::Age));
        }
        if let Some(max_len) = r.max_len {
            let n = (self.stored.len() as u64).saturating_sub(max_len) as usize;
            out.extend(self.remove_prefix(n, TrimReason::Length));
        }
        out
    }

    fn backlog(&self, after: Seq) -> Backlog {
        let mut rest = self.stored.range(after + 1..);
        let oldest = rest.next();
        Backlog {
            count: self.stored.range(after + 1..).count() as u64,
            oldest_seq: oldest.map(|(s, _)| *s),
            newest_seq: oldest.and(self.stored.keys().next_back().copied()),
            oldest_ts_ms: oldest.map(|(_, ts)| *ts),
            head: self.head,
        }
    }
}

/// What a consumer has covered so far.
#[derive(Debug, Default, Clone, Copy)]
struct Consumer {
    pos: Seq,
}

/// Checks one batch against the consumer's position and advances it.
fn deliver(c: &mut Consumer, acked: Option<Seq>, batch: &ReadBatch) {
    let mut expect = c.pos + 1;
    if let Some(g) = batch.gap {
        assert_eq!(g.from, expect, "gap starts right after the cursor");
        assert!(g.to >= g.from);
        assert_eq!(g.count, g.to - g.from + 1, "gap count is exact");
        expect = g.to + 1;
    }
    for it in &batch.items {
        assert_eq!(it.seq, expect, "seqs strictly increasing, no silent hole");
        assert!(it.seq > acked.unwrap_or(0), "no redelivery after an ack");
        assert_eq!(it.payload, payload(STREAM, it.seq));
        expect += 1;
    }
    if let Some(last) = batch.last_seq() {
        c.pos = last;
    }
}

async fn run<H: Harness>(h: &mut H, actions: &[Action]) {
    let mut model = Model::default();
    let mut consumers = [Consumer::default(); CONSUMERS];
    let mut next: Seq = 1;
    let mut clock: u64 = 1_000;
    for a in actions {
        let log = h.log();
        match *a {
            Action::Send { new, back } => {
                let start = next.saturating_sub(back).max(1);
                let batch: Vec<Item> = (start..next + new)
                    .map(|s| item(STREAM, s, clock))
                    .collect();
                let want = model.append(&batch);
                let got = log.append(STREAM, &batch).await.expect("append");
                assert_eq!(got, want, "append {start}..{}", next + new);
                next += new;
            }
            Action::Skip { k } => next += k,
            Action::Read { c, max } => {
                let got = log.read(STREAM, consumers[c].pos, max).await.expect("read");
                assert_eq!(
                    got,
                    model.read(consumers[c].pos, max),
                    "read after {}",
                    consumers[c].pos
                );
                deliver(&mut consumers[c], model.cursors[c], &got);
            }
            Action::Ack { c } => {
                let seq = consumers[c].pos;
                log.store_cursor(STREAM, &format!("c{c}"), seq)
                    .await
                    .expect("store cursor");
                model.cursors[c] = Some(seq);
            }
            Action::Reconnect { c } => {
                let got = log
                    .load_cursor(STREAM, &format!("c{c}"))
                    .await
                    .expect("load cursor");
                assert_eq!(got, model.cursors[c]);
                consumers[c].pos = got.unwrap_or(0);
            }
            Action::TrimLen { max_len } => {
                let r = Retention {
                    max_len: Some(max_len),
                    max_age_ms: None,
                };
                let got = log.trim(STREAM, &r, clock).await.expect("trim");
                assert_eq!(got, model.trim(&r, clock), "trim to {max_len} items");
            }
            Action::TrimAge { max_age } => {
                let r = Retention {
                    max_len: None,
                    max_age_ms: Some(max_age),
                };
                let got = log.trim(STREAM, &r, clock).await.expect("trim");
                assert_eq!(got, model.trim(&r, clock), "trim older than {max_age} ms");
            }
            Action::Tick { ms } => clock += ms,
            Action::Backlog { c } => {
                let got = log
                    .backlog(STREAM, consumers[c].pos)
                    .await
                    .expect("backlog");
                assert_eq!(got, model.backlog(consumers[c].pos));
            }
            Action::Reopen => {
                if h.durable() {
                    h.reopen().await;
                }
            }
        }
    }
    // Every consumer drains to the head: every seq was delivered or covered by a gap.
    for (i, c) in consumers.iter_mut().enumerate() {
        loop {
            let got = h.log().read(STREAM, c.pos, 16).await.expect("drain");
            assert_eq!(got, model.read(c.pos, 16));
            if got.last_seq().is_none() {
                break;
            }
            deliver(c, model.cursors[i], &got);
        }
        assert_eq!(c.pos, model.head, "consumer {i} drained to the head");
    }
}

fn check<H: Harness, F: Future<Output = H>>(make: impl Fn() -> F, actions: &[Action]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut h = make().await;
        run(&mut h, actions).await;
        h.cleanup().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn memory_matches_model(actions in prop::collection::vec(action(), 1..80)) {
        check(MemoryHarness::new, &actions);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn sqlite_matches_model(actions in prop::collection::vec(action(), 1..80)) {
        check(SqliteHarness::new, &actions);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn redis_matches_model(actions in prop::collection::vec(action(), 1..80)) {
        check(RedisHarness::new, &actions);
    }
}
