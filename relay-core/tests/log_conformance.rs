//! One conformance suite for [`StreamLog`], run against every backend: memory, SQLite and
//! Redis (the Redis run needs the server at `REDIS_URL` and fails without it).
//!
//! Each case is a generic async fn over a [`Harness`]; the `conformance!` macro instantiates
//! every case for every backend so a failure names both.

mod log_common;

use log_common::{Harness, MemoryHarness, RedisHarness, SqliteHarness, item, items, payload};
use relay_core::Error;
use relay_core::log::{
    AppendOutcome, Backlog, FORMAT_VERSION, Gap, GapReason, Item, MAX_SEQ, ReadBatch,
    RedisStreamLog, Retention, StreamLog, TrimReason, Trimmed,
};

fn seqs(batch: &ReadBatch) -> Vec<u64> {
    batch.items.iter().map(|i| i.seq).collect()
}

fn gap(from: u64, to: u64, reason: GapReason) -> Option<Gap> {
    Some(Gap {
        from,
        to,
        count: to - from + 1,
        reason,
    })
}

/// What a trim reports removing: `count` items from `first` through `last`.
fn trimmed(count: u64, first: u64, last: u64, reason: TrimReason) -> Trimmed {
    Trimmed {
        count,
        first,
        last,
        reason,
    }
}

const LEN: GapReason = GapReason::Retention(TrimReason::Length);
const AGE: GapReason = GapReason::Retention(TrimReason::Age);

fn by_len(n: u64) -> Retention {
    Retention {
        max_len: Some(n),
        max_age_ms: None,
    }
}

fn by_age(ms: u64) -> Retention {
    Retention {
        max_len: None,
        max_age_ms: Some(ms),
    }
}

mod cases {
    use super::*;

    pub(crate) async fn append_then_read_in_order(h: &mut impl Harness) {
        let log = h.log();
        let out = log.append("s", &items("s", 1..=10)).await.expect("append");
        assert_eq!(
            out,
            AppendOutcome {
                stored: 10,
                duplicates: 0,
                ack: 10
            }
        );
        let all = log.read("s", 0, 100).await.expect("read");
        assert_eq!(all.gap, None);
        assert_eq!(
            all.items,
            items("s", 1..=10),
            "payloads and timestamps round-trip"
        );
        assert_eq!(
            seqs(&log.read("s", 5, 3).await.expect("read")),
            vec![6, 7, 8]
        );
        let caught_up = log.read("s", 10, 100).await.expect("read");
        assert_eq!(caught_up, ReadBatch::default());
        assert_eq!(
            log.read("never-written", 0, 10).await.expect("read"),
            ReadBatch::default()
        );
    }

    pub(crate) async fn duplicates_are_acknowledged_not_stored(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=5)).await.expect("append");
        // A retransmission overlapping the stored tail.
        let out = log.append("s", &items("s", 3..=8)).await.expect("append");
        assert_eq!(
            out,
            AppendOutcome {
                stored: 3,
                duplicates: 3,
                ack: 8
            }
        );
        let out = log.append("s", &items("s", 1..=1)).await.expect("append");
        assert_eq!(
            out,
            AppendOutcome {
                stored: 0,
                duplicates: 1,
                ack: 8
            }
        );
        // An empty batch just reports the ack.
        let out = log.append("s", &[]).await.expect("append");
        assert_eq!(out.ack, 8);
        assert_eq!(log.append("fresh", &[]).await.expect("append").ack, 0);
        // Out-of-order within a batch: a seq below an earlier one in the same batch is a dup.
        let batch = vec![item("s", 10, 1), item("s", 9, 1), item("s", 11, 1)];
        let out = log.append("s", &batch).await.expect("append");
        assert_eq!((out.stored, out.duplicates, out.ack), (2, 1, 11));
        let all = log.read("s", 0, 100).await.expect("read");
        assert_eq!(
            seqs(&all),
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            "stops at the hole at 9"
        );
        let rest = log.read("s", 8, 100).await.expect("read");
        assert_eq!(rest.gap, gap(9, 9, GapReason::Missing));
        assert_eq!(seqs(&rest), vec![10, 11]);
    }

    pub(crate) async fn invalid_input_is_refused_without_storing(h: &mut impl Harness) {
        let log = h.log();
        let bad = vec![item("s", 1, 1), item("s", 2, 1), item("s", 0, 1)];
        let err = log.append("s", &bad).await.expect_err("seq 0");
        assert!(matches!(err, Error::InvalidSeq { seq: 0, .. }), "{err}");
        assert!(!err.is_retryable());
        let err = log
            .append("s", &[item("s", MAX_SEQ + 1, 1)])
            .await
            .expect_err("seq too large");
        assert!(matches!(err, Error::InvalidSeq { .. }), "{err}");
        let err = log
            .append("s", &[item("s", 1, MAX_SEQ + 1)])
            .await
            .expect_err("ts too large");
        assert!(matches!(err, Error::InvalidTimestamp { .. }), "{err}");
        assert_eq!(
            log.backlog("s", 0).await.expect("backlog"),
            Backlog::default()
        );
        for name in ["", "a#b", "tab\there", &"x".repeat(201)] {
            let err = log.append(name, &items(name, 1..=1)).await.expect_err(name);
            assert!(matches!(err, Error::InvalidStreamName { .. }), "{err}");
            let err = log.read(name, 0, 1).await.expect_err(name);
            assert!(matches!(err, Error::InvalidStreamName { .. }), "{err}");
        }
        // The largest valid seq is accepted.
        let out = log
            .append("max", &[item("max", MAX_SEQ, 1)])
            .await
            .expect("append MAX_SEQ");
        assert_eq!(out.ack, MAX_SEQ);
        let read = log.read("max", 0, 10).await.expect("read");
        assert_eq!(read.gap, gap(1, MAX_SEQ - 1, GapReason::Missing));
        assert_eq!(seqs(&read), vec![MAX_SEQ]);
    }

    pub(crate) async fn binary_payloads_round_trip(h: &mut impl Harness) {
        let log = h.log();
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        let batch = vec![
            Item {
                seq: 1,
                ts_ms: 0,
                payload: all_bytes.into(),
            },
            Item {
                seq: 2,
                ts_ms: 5,
                payload: bytes::Bytes::new(),
            },
            Item {
                seq: 3,
                ts_ms: 6,
                payload: vec![0u8; 64 * 1024].into(),
            },
        ];
        log.append("bin", &batch).await.expect("append");
        assert_eq!(log.read("bin", 0, 10).await.expect("read").items, batch);
    }

    pub(crate) async fn length_trim_reports_exactly_what_it_removed(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=100)).await.expect("append");
        let t = log.trim("s", &by_len(30), 0).await.expect("trim");
        assert_eq!(t, vec![trimmed(70, 1, 70, TrimReason::Length)]);
        assert!(
            log.trim("s", &by_len(30), 0)
                .await
                .expect("trim")
                .is_empty()
        );
        let r = log.read("s", 0, 5).await.expect("read");
        assert_eq!(r.gap, gap(1, 70, LEN));
        assert_eq!(seqs(&r), vec![71, 72, 73, 74, 75]);
        let r = log.read("s", 50, 2).await.expect("read");
        assert_eq!(r.gap, gap(51, 70, LEN));
        assert_eq!(seqs(&r), vec![71, 72]);
        // A reader past the trimmed part sees no gap.
        let r = log.read("s", 70, 1).await.expect("read");
        assert_eq!((r.gap, seqs(&r)), (None, vec![71]));
        // max == 0 still reports the gap.
        let r = log.read("s", 10, 0).await.expect("read");
        assert_eq!((r.gap, r.items.len()), (gap(11, 70, LEN), 0));
        assert_eq!(log.backlog("s", 0).await.expect("backlog").count, 30);
    }

    pub(crate) async fn age_trim_removes_the_old_prefix(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=100)).await.expect("append"); // ts = seq * 10
        // cutoff = 1000 - 500 = 500: ts < 500 means seqs 1..=49.
        let t = log.trim("s", &by_age(500), 1000).await.expect("trim");
        assert_eq!(t, vec![trimmed(49, 1, 49, TrimReason::Age)]);
        let r = log.read("s", 0, 1).await.expect("read");
        assert_eq!((r.gap, seqs(&r)), (gap(1, 49, AGE), vec![50]));
        // A clock that stepped back: an old item after a young one stays (prefix semantics).
        let odd = vec![item("o", 1, 100), item("o", 2, 900), item("o", 3, 50)];
        log.append("o", &odd).await.expect("append");
        let t = log.trim("o", &by_age(500), 1000).await.expect("trim");
        assert_eq!(t, vec![trimmed(1, 1, 1, TrimReason::Age)]);
        assert_eq!(seqs(&log.read("o", 1, 10).await.expect("read")), vec![2, 3]);
        // Nothing old enough: nothing removed; unknown stream: nothing to do.
        assert!(
            log.trim("s", &by_age(500), 1000)
                .await
                .expect("trim")
                .is_empty()
        );
        assert!(
            log.trim("none", &by_age(1), 1000)
                .await
                .expect("trim")
                .is_empty()
        );
    }

    pub(crate) async fn both_rules_apply_age_first(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=100)).await.expect("append");
        let retention = Retention {
            max_len: Some(10),
            max_age_ms: Some(800),
        };
        // cutoff 200: seqs 1..=19 by age, then 20..=90 by length.
        let t = log.trim("s", &retention, 1000).await.expect("trim");
        assert_eq!(
            t,
            vec![
                trimmed(19, 1, 19, TrimReason::Age),
                trimmed(71, 20, 90, TrimReason::Length),
            ]
        );
        // The gap spans both trims and carries the most recent reason.
        let r = log.read("s", 5, 100).await.expect("read");
        assert_eq!(r.gap, gap(6, 90, LEN));
        assert_eq!(seqs(&r), (91..=100).collect::<Vec<_>>());
    }

    pub(crate) async fn trim_to_empty_then_continue(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=20)).await.expect("append");
        let t = log.trim("s", &by_len(0), 0).await.expect("trim");
        assert_eq!(t, vec![trimmed(20, 1, 20, TrimReason::Length)]);
        let r = log.read("s", 3, 10).await.expect("read");
        assert_eq!((r.gap, r.items.len()), (gap(4, 20, LEN), 0));
        // Retransmissions of trimmed items are still duplicates; new items continue.
        let out = log.append("s", &items("s", 15..=25)).await.expect("append");
        assert_eq!((out.stored, out.duplicates, out.ack), (5, 6, 25));
        let r = log.read("s", 20, 10).await.expect("read");
        assert_eq!((r.gap, seqs(&r)), (None, vec![21, 22, 23, 24, 25]));
        let b = log.backlog("s", 0).await.expect("backlog");
        assert_eq!(
            b,
            Backlog {
                count: 5,
                oldest_seq: Some(21),
                newest_seq: Some(25),
                oldest_ts_ms: Some(210),
                head: 25
            }
        );
    }

    pub(crate) async fn producer_holes_become_missing_gaps(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=3)).await.expect("append");
        log.append("s", &items("s", 7..=9)).await.expect("append");
        let r = log.read("s", 0, 100).await.expect("read");
        assert_eq!((r.gap, seqs(&r)), (None, vec![1, 2, 3]));
        let r = log.read("s", 3, 100).await.expect("read");
        assert_eq!(
            (r.gap, seqs(&r)),
            (gap(4, 6, GapReason::Missing), vec![7, 8, 9])
        );
        // A stream whose first item is not seq 1 (e.g. a memory log lost in a restart).
        log.append("late", &items("late", 5..=6))
            .await
            .expect("append");
        let r = log.read("late", 0, 100).await.expect("read");
        assert_eq!(
            (r.gap, seqs(&r)),
            (gap(1, 4, GapReason::Missing), vec![5, 6])
        );
        // Backlog counts stored items only, holes or not.
        let b = log.backlog("s", 0).await.expect("backlog");
        assert_eq!(
            (b.count, b.oldest_seq, b.newest_seq, b.head),
            (6, Some(1), Some(9), 9)
        );
        let b = log.backlog("s", 2).await.expect("backlog");
        assert_eq!(
            (b.count, b.oldest_seq, b.oldest_ts_ms),
            (4, Some(3), Some(30))
        );
    }

    pub(crate) async fn trims_and_holes_combine(h: &mut impl Harness) {
        let log = h.log();
        log.append("s", &items("s", 1..=5)).await.expect("append");
        let t = log.trim("s", &by_len(2), 0).await.expect("trim");
        assert_eq!(t, vec![trimmed(3, 1, 3, TrimReason::Length)]);
        log.append("s", &items("s", 8..=9)).await.expect("append");
        let r = log.read("s", 0, 100).await.expect("read");
        assert_eq!((r.gap, seqs(&r)), (gap(1, 3, LEN), vec![4, 5]));
        let r = log.read("s", 5, 100).await.expect("read");
        assert_eq!(
            (r.gap, seqs(&r)),
            (gap(6, 7, GapReason::Missing), vec![8, 9])
        );
        // A trim whose survivor lies after a hole covers the hole: `last` is survivor - 1.
        let t = log.trim("s", &by_len(1), 0).await.expect("trim");
        // 3 items trimmed, seqs 4..=8 with the hole 6..=7.
        assert_eq!(t, vec![trimmed(3, 4, 8, TrimReason::Length)]);
        let r = log.read("s", 5, 100).await.expect("read");
        assert_eq!((r.gap, seqs(&r)), (gap(6, 8, LEN), vec![9]));
    }

    pub(crate) async fn cursors_are_per_stream_and_consumer(h: &mut impl Harness) {
        let log = h.log();
        assert_eq!(log.load_cursor("s", "a").await.expect("load"), None);
        log.store_cursor("s", "a", 5).await.expect("store");
        log.store_cursor("s", "b", 7).await.expect("store");
        log.store_cursor("t", "a", 9).await.expect("store");
        assert_eq!(log.load_cursor("s", "a").await.expect("load"), Some(5));
        assert_eq!(log.load_cursor("s", "b").await.expect("load"), Some(7));
        assert_eq!(log.load_cursor("t", "a").await.expect("load"), Some(9));
        // Cursors may move backwards: the caller owns their meaning.
        log.store_cursor("s", "a", 3).await.expect("store");
        assert_eq!(log.load_cursor("s", "a").await.expect("load"), Some(3));
        // A cursor on a stream does not create items or move its head.
        assert_eq!(
            log.backlog("t", 0).await.expect("backlog"),
            Backlog::default()
        );
        assert_eq!(log.append("t", &[]).await.expect("append").ack, 0);
    }

    pub(crate) async fn backlog_follows_cursor(h: &mut impl Harness) {
        let log = h.log();
        assert_eq!(
            log.backlog("s", 0).await.expect("backlog"),
            Backlog::default()
        );
        log.append("s", &items("s", 1..=50)).await.expect("append");
        let b = log.backlog("s", 20).await.expect("backlog");
        assert_eq!(
            b,
            Backlog {
                count: 30,
                oldest_seq: Some(21),
                newest_seq: Some(50),
                oldest_ts_ms: Some(210),
                head: 50
            }
        );
        let b = log.backlog("s", 50).await.expect("backlog");
        assert_eq!(
            b,
            Backlog {
                head: 50,
                ..Backlog::default()
            }
        );
        log.trim("s", &by_len(10), 0).await.expect("trim");
        let b = log.backlog("s", 0).await.expect("backlog");
        assert_eq!(
            (b.count, b.oldest_seq, b.newest_seq),
            (10, Some(41), Some(50))
        );
    }

    pub(crate) async fn streams_are_isolated(h: &mut impl Harness) {
        let log = h.log();
        log.append("group:1:a_to_b", &items("group:1:a_to_b", 1..=3))
            .await
            .expect("append");
        log.append("group:1:b_to_a", &items("group:1:b_to_a", 1..=5))
            .await
            .expect("append");
        log.trim("group:1:b_to_a", &by_len(1), 0)
            .await
            .expect("trim");
        let a = log.read("group:1:a_to_b", 0, 10).await.expect("read");
        assert_eq!((a.gap, a.items), (None, items("group:1:a_to_b", 1..=3)));
        let b = log.read("group:1:b_to_a", 0, 10).await.expect("read");
        assert_eq!(b.gap, gap(1, 4, LEN));
        assert_eq!(b.items[0].payload, payload("group:1:b_to_a", 5));
    }

    pub(crate) async fn large_batches(h: &mut impl Harness) {
        let log = h.log();
        let out = log
            .append("big", &items("big", 1..=3000))
            .await
            .expect("append");
        assert_eq!(out.stored, 3000);
        let mut after = 0;
        let mut n = 0;
        loop {
            let r = log.read("big", after, 1024).await.expect("read");
            let Some(last) = r.last_seq() else { break };
            assert_eq!(r.gap, None);
            assert_eq!(r.items[0].seq, after + 1);
            n += r.items.len();
            after = last;
        }
        assert_eq!(n, 3000);
        let t = log.trim("big", &by_age(0), 2501 * 10).await.expect("trim");
        assert_eq!(t, vec![trimmed(2500, 1, 2500, TrimReason::Age)]);
    }

    pub(crate) async fn reopen_keeps_everything(h: &mut impl Harness) {
        if !h.durable() {
            // A memory log starts empty; a resuming producer shows up as a `missing` gap.
            h.log()
                .append("s", &items("s", 1..=5))
                .await
                .expect("append");
            h.reopen().await;
            let log = h.log();
            assert_eq!(
                log.backlog("s", 0).await.expect("backlog"),
                Backlog::default()
            );
            log.append("s", &items("s", 6..=7)).await.expect("append");
            let r = log.read("s", 0, 10).await.expect("read");
            assert_eq!(
                (r.gap, seqs(&r)),
                (gap(1, 5, GapReason::Missing), vec![6, 7])
            );
            return;
        }
        {
            let log = h.log();
            log.append("s", &items("s", 1..=40)).await.expect("append");
            log.trim("s", &by_age(0), 101).await.expect("trim"); // removes 1..=10
            log.store_cursor("s", "consumer", 17).await.expect("store");
        }
        h.reopen().await;
        let log = h.log();
        assert_eq!(
            log.load_cursor("s", "consumer").await.expect("load"),
            Some(17)
        );
        let r = log.read("s", 0, 5).await.expect("read");
        assert_eq!(
            (r.gap, seqs(&r)),
            (gap(1, 10, AGE), vec![11, 12, 13, 14, 15])
        );
        assert_eq!(r.items[0], item("s", 11, 110));
        let out = log.append("s", &items("s", 35..=45)).await.expect("append");
        assert_eq!((out.stored, out.duplicates, out.ack), (5, 6, 45));
        let b = log.backlog("s", 17).await.expect("backlog");
        assert_eq!(
            (b.count, b.oldest_seq, b.newest_seq, b.head),
            (28, Some(18), Some(45), 45)
        );
    }

    pub(crate) async fn concurrent_appends_from_tasks(h: &mut impl Harness) {
        let log = h.log();
        // Retransmitting producers racing on one stream: each seq stored exactly once.
        let batches: Vec<Vec<Item>> = (0..8).map(|_| items("race", 1..=200)).collect();
        let outs = futures::future::join_all(batches.iter().map(|b| log.append("race", b))).await;
        let stored: u64 = outs
            .iter()
            .map(|o| o.as_ref().expect("append").stored)
            .sum();
        assert_eq!(stored, 200);
        assert_eq!(log.backlog("race", 0).await.expect("backlog").count, 200);
    }

    pub(crate) async fn delete_forgets_the_stream(h: &mut impl Harness) {
        let log = h.log();
        assert_eq!(log.delete("del").await.expect("delete unknown"), 0);
        log.append("del", &items("del", 1..=10))
            .await
            .expect("append");
        log.append("del-other", &items("del-other", 1..=3))
            .await
            .expect("append");
        log.store_cursor("del", "b", 4).await.expect("cursor");
        log.trim("del", &by_len(8), 0).await.expect("trim");
        assert_eq!(log.delete("del").await.expect("delete"), 8);
        let backlog = log.backlog("del", 0).await.expect("backlog");
        assert_eq!((backlog.count, backlog.head), (0, 0));
        assert_eq!(log.load_cursor("del", "b").await.expect("cursor"), None);
        // As if new: seq 1 is accepted again, and no trim gap is left behind.
        let out = log
            .append("del", &items("del", 1..=2))
            .await
            .expect("append");
        assert_eq!((out.stored, out.ack), (2, 2));
        let batch = log.read("del", 0, 10).await.expect("read");
        assert_eq!((batch.gap, seqs(&batch)), (None, vec![1, 2]));
        // Other streams are untouched.
        assert_eq!(log.backlog("del-other", 0).await.expect("backlog").count, 3);
        assert!(log.delete("bad#name").await.is_err());
    }

    pub(crate) async fn concurrent_streams_each_in_order(h: &mut impl Harness) {
        let log = h.log();
        // Many producers of different streams at once (the SQLite log commits what is queued
        // together): each append is answered with its own ack, each stream reads back whole.
        let producers = (0..24u64).map(|p| async move {
            let stream = format!("conc-{p}");
            for batch in 0..20u64 {
                let first = batch * 10 + 1;
                let out = log
                    .append(&stream, &items(&stream, first..=first + 9))
                    .await
                    .expect("append");
                assert_eq!((out.stored, out.ack), (10, first + 9), "{stream}");
            }
            stream
        });
        for stream in futures::future::join_all(producers).await {
            let batch = log.read(&stream, 0, 1000).await.expect("read");
            assert_eq!(seqs(&batch), (1..=200).collect::<Vec<_>>(), "{stream}");
            assert!(
                batch
                    .items
                    .iter()
                    .all(|i| i.payload == payload(&stream, i.seq))
            );
        }
    }
}

macro_rules! conformance {
    ($backend:ident, $harness:ty, [$($case:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let mut h = <$harness>::new().await;
                    cases::$case(&mut h).await;
                    h.cleanup().await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident, $harness:ty) => {
        conformance!(
            $backend,
            $harness,
            [
                append_then_read_in_order,
                duplicates_are_acknowledged_not_stored,
                invalid_input_is_refused_without_storing,
                binary_payloads_round_trip,
                length_trim_reports_exactly_what_it_removed,
                age_trim_removes_the_old_prefix,
                both_rules_apply_age_first,
                trim_to_empty_then_continue,
                producer_holes_become_missing_gaps,
                trims_and_holes_combine,
                cursors_are_per_stream_and_consumer,
                backlog_follows_cursor,
                streams_are_isolated,
                large_batches,
                reopen_keeps_everything,
                concurrent_appends_from_tasks,
                concurrent_streams_each_in_order,
                delete_forgets_the_stream,
            ]
        );
    };
}

all_cases!(memory, MemoryHarness);
all_cases!(sqlite, SqliteHarness);
all_cases!(redis, RedisHarness);

/// The generic bound callers rely on: a log used inside `tokio::spawn`.
#[tokio::test]
async fn futures_are_send_for_spawn() {
    fn spawn_append<L: StreamLog + Clone + 'static>(log: L) -> tokio::task::JoinHandle<u64> {
        tokio::spawn(async move {
            let out = log.append("spawned", &items("spawned", 1..=3)).await;
            out.map(|o| o.ack).unwrap_or(0)
        })
    }
    let log = relay_core::log::StreamLogConfig::Memory
        .open()
        .await
        .expect("open memory");
    assert_eq!(spawn_append(log).await.expect("join"), 3);
}

/// The example configuration in `docs/storage.md` parses, and unknown keys are refused.
#[test]
fn config_parses_each_backend() {
    use relay_core::log::StreamLogConfig;
    use relay_core::sqlite::Durability;
    let sqlite: StreamLogConfig =
        serde_json::from_str(r#"{"type":"sqlite","path":"/var/lib/tether/streams.db"}"#)
            .expect("sqlite config");
    assert_eq!(
        sqlite,
        StreamLogConfig::Sqlite {
            path: "/var/lib/tether/streams.db".into(),
            synchronous: Durability::Normal
        }
    );
    let redis: StreamLogConfig =
        serde_json::from_str(r#"{"type":"redis","url":"redis://127.0.0.1:6379"}"#)
            .expect("redis config");
    assert_eq!(
        redis,
        StreamLogConfig::Redis {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "tether:".into()
        }
    );
    let full: StreamLogConfig =
        serde_json::from_str(r#"{"type":"sqlite","path":"x.db","synchronous":"full"}"#)
            .expect("full");
    assert!(matches!(
        full,
        StreamLogConfig::Sqlite {
            synchronous: Durability::Full,
            ..
        }
    ));
    assert!(serde_json::from_str::<StreamLogConfig>(r#"{"type":"memory"}"#).is_ok());
    assert!(
        serde_json::from_str::<StreamLogConfig>(r#"{"type":"sqlite","path":"x","pth":"y"}"#)
            .is_err()
    );
    assert!(serde_json::from_str::<StreamLogConfig>(r#"{"type":"disk"}"#).is_err());
}

/// The first connect stamps the prefix with the format version; a prefix stamped with another
/// version is refused, and left as it was.
#[tokio::test]
async fn redis_prefix_of_another_format_is_refused() {
    let h = RedisHarness::new().await;
    let key = format!("{}#format", h.log().key_prefix());
    let mut conn = tether_testkit::redis::connect(&log_common::redis_url())
        .await
        .expect("Redis connection");
    let stamp: Option<String> = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(stamp, Some(FORMAT_VERSION.to_string()));
    // A second connect checks and accepts it.
    RedisStreamLog::connect(&log_common::redis_url(), h.log().key_prefix())
        .await
        .expect("same format");
    let _: () = ::redis::cmd("SET")
        .arg(&key)
        .arg(FORMAT_VERSION + 1)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let err = RedisStreamLog::connect(&log_common::redis_url(), h.log().key_prefix())
        .await
        .expect_err("another format");
    assert!(
        matches!(&err, Error::UnsupportedLogFormat { found, expected, .. }
            if *found == (FORMAT_VERSION + 1).to_string() && *expected == FORMAT_VERSION),
        "{err}"
    );
    let stamp: Option<String> = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(stamp, Some((FORMAT_VERSION + 1).to_string()));
    h.cleanup().await;
}
