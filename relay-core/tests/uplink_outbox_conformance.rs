//! One conformance suite for every `UplinkOutbox` backend (memory, SQLite), plus the SQLite
//! reopen checks.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use bytes::Bytes;
use relay_core::Error;
use relay_core::uplink::{
    MemoryOutbox, NewRecord, OutboxConfig, SqliteOutbox, UplinkOutbox, UplinkSync,
};

fn rec(ts_ms: u64) -> NewRecord {
    NewRecord {
        ts_ms,
        payload: Bytes::from(format!("r{ts_ms}")),
    }
}

fn recs(ts: std::ops::Range<u64>) -> Vec<NewRecord> {
    ts.map(rec).collect()
}

fn seqs(records: &[relay_core::uplink::OutboxRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// Runs every check against outboxes made by `make` (each call returns a fresh, empty one).
fn conformance(make: &mut dyn FnMut(OutboxConfig) -> Box<dyn UplinkOutbox>) {
    append_and_fetch_in_order(make(OutboxConfig::default()).as_mut());
    mark_is_cumulative_and_checked(make(OutboxConfig::default()).as_mut());
    prune_only_removes_old_uplinked(make(OutboxConfig::default()).as_mut());
    seqs_are_never_reused(make(OutboxConfig::default()).as_mut());
    overflow_prunes_uplinked_first_then_counts_dropped_pending(
        make(OutboxConfig {
            max_local_records: 10,
        })
        .as_mut(),
    );
    oversized_batch_keeps_newest(
        make(OutboxConfig {
            max_local_records: 3,
        })
        .as_mut(),
    );
    recent_and_stats(make(OutboxConfig::default()).as_mut());
}

fn append_and_fetch_in_order(o: &mut dyn UplinkOutbox) {
    let report = o.append(&recs(100..105)).unwrap();
    assert_eq!((report.first_seq, report.last_seq), (1, 5));
    assert_eq!((report.pruned_uplinked, report.dropped_pending), (0, 0));
    assert_eq!(
        o.append(&[]).unwrap().last_seq,
        0,
        "empty batch assigns nothing"
    );
    let r = o.append(&recs(105..108)).unwrap();
    assert_eq!((r.first_seq, r.last_seq), (6, 8));
    let first = o.fetch_pending(0, 3).unwrap();
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    assert_eq!(first[0].payload, Bytes::from("r100"));
    assert_eq!(first[2].ts_ms, 102);
    assert_eq!(seqs(&o.fetch_pending(3, 100).unwrap()), vec![4, 5, 6, 7, 8]);
    assert!(o.fetch_pending(8, 10).unwrap().is_empty());
    assert!(o.fetch_pending(0, 0).unwrap().is_empty());
}

fn mark_is_cumulative_and_checked(o: &mut dyn UplinkOutbox) {
    o.append(&recs(0..10)).unwrap();
    assert_eq!(o.mark_uplinked(4).unwrap(), 4);
    assert_eq!(
        o.mark_uplinked(2).unwrap(),
        0,
        "an older ack changes nothing"
    );
    assert_eq!(o.mark_uplinked(4).unwrap(), 0);
    // Fetch never returns uplinked records, whatever `after` says.
    assert_eq!(seqs(&o.fetch_pending(0, 3).unwrap()), vec![5, 6, 7]);
    assert!(matches!(
        o.mark_uplinked(11),
        Err(Error::UplinkAckAhead {
            acked: 11,
            sent: 10
        })
    ));
    assert_eq!(
        o.stats(0).unwrap().acked_through,
        4,
        "a refused ack changed nothing"
    );
    assert_eq!(o.mark_uplinked(10).unwrap(), 6);
    assert!(o.fetch_pending(0, 10).unwrap().is_empty());
    let stats = o.stats(0).unwrap();
    assert_eq!(
        (stats.stored, stats.pending, stats.acked_through),
        (10, 0, 10)
    );
}

fn prune_only_removes_old_uplinked(o: &mut dyn UplinkOutbox) {
    o.append(&recs(0..10)).unwrap(); // ts 0..9, seqs 1..10
    o.mark_uplinked(6).unwrap();
    // Uplinked with ts < 3: seqs 1, 2, 3.
    assert_eq!(o.prune_uplinked(3).unwrap(), 3);
    // ts < 100 but only seqs <= 6 are uplinked: 4, 5, 6.
    assert_eq!(o.prune_uplinked(100).unwrap(), 3);
    assert_eq!(o.prune_uplinked(100).unwrap(), 0);
    let stats = o.stats(0).unwrap();
    assert_eq!((stats.stored, stats.pending), (4, 4));
    assert_eq!(seqs(&o.fetch_pending(0, 10).unwrap()), vec![7, 8, 9, 10]);
}

fn seqs_are_never_reused(o: &mut dyn UplinkOutbox) {
    o.append(&recs(0..3)).unwrap();
    o.mark_uplinked(3).unwrap();
    o.prune_uplinked(u64::MAX).unwrap();
    assert_eq!(o.stats(0).unwrap().stored, 0);
    let r = o.append(&recs(3..4)).unwrap();
    assert_eq!(r.first_seq, 4);
}

fn overflow_prunes_uplinked_first_then_counts_dropped_pending(o: &mut dyn UplinkOutbox) {
    o.append(&recs(0..8)).unwrap(); // seqs 1..8
    o.mark_uplinked(3).unwrap();
    // 8 + 4 = 12 > 10: remove 2 uplinked (seqs 1, 2), nothing pending.
    let r = o.append(&recs(8..12)).unwrap();
    assert_eq!((r.pruned_uplinked, r.dropped_pending), (2, 0));
    // 10 + 5 = 15: 1 uplinked left (seq 3), then 4 pending (seqs 4..7).
    let r = o.append(&recs(12..17)).unwrap();
    assert_eq!((r.first_seq, r.last_seq), (13, 17));
    assert_eq!((r.pruned_uplinked, r.dropped_pending), (1, 4));
    let stats = o.stats(0).unwrap();
    assert_eq!(
        (stats.stored, stats.pending, stats.dropped_pending_total),
        (10, 10, 4)
    );
    assert_eq!(
        seqs(&o.fetch_pending(0, 100).unwrap()),
        (8..=17).collect::<Vec<_>>()
    );
    let r = o.append(&recs(17..18)).unwrap();
    assert_eq!(r.dropped_pending, 1);
    assert_eq!(o.stats(0).unwrap().dropped_pending_total, 5);
}

fn oversized_batch_keeps_newest(o: &mut dyn UplinkOutbox) {
    let r = o.append(&recs(0..5)).unwrap();
    assert_eq!((r.first_seq, r.last_seq, r.dropped_pending), (1, 5, 2));
    assert_eq!(seqs(&o.fetch_pending(0, 10).unwrap()), vec![3, 4, 5]);
}

fn recent_and_stats(o: &mut dyn UplinkOutbox) {
    let empty = o.stats(1000).unwrap();
    assert_eq!(
        (
            empty.stored,
            empty.pending,
            empty.oldest_pending_age_ms,
            empty.last_seq
        ),
        (0, 0, None, 0)
    );
    o.append(&recs(100..110)).unwrap(); // seqs 1..10, ts 100..109
    o.mark_uplinked(4).unwrap();
    // Recent by age includes uplinked records; newest `max`, in seq order.
    assert_eq!(
        seqs(&o.recent(103, 100).unwrap()),
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&o.recent(103, 3).unwrap()), vec![8, 9, 10]);
    assert!(o.recent(200, 10).unwrap().is_empty());
    let stats = o.stats(1_000).unwrap();
    assert_eq!(stats.pending, 6);
    assert_eq!(stats.oldest_pending_ts_ms, Some(104));
    assert_eq!(stats.oldest_pending_age_ms, Some(896));
    assert_eq!(
        o.stats(50).unwrap().oldest_pending_age_ms,
        Some(0),
        "future timestamps age 0"
    );
    assert_eq!(stats.last_seq, 10);
}

#[test]
fn memory_outbox_conforms() {
    conformance(&mut |config| Box::new(MemoryOutbox::new(config)));
}

#[test]
fn sqlite_outbox_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance(&mut |config| {
        n += 1;
        let path = dir.path().join(format!("outbox-{n}.db"));
        Box::new(SqliteOutbox::open(path, config, UplinkSync::Full).unwrap())
    });
}

#[test]
fn sqlite_outbox_conforms_with_normal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance(&mut |config| {
        n += 1;
        let path = dir.path().join(format!("outbox-{n}.db"));
        Box::new(SqliteOutbox::open(path, config, UplinkSync::Normal).unwrap())
    });
}

#[test]
fn sqlite_outbox_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let config = OutboxConfig {
        max_local_records: 5,
    };
    {
        let mut o = SqliteOutbox::open(&path, config, UplinkSync::Full).unwrap();
        o.append(&recs(0..7)).unwrap(); // drops 2 pending
        o.mark_uplinked(4).unwrap();
    }
    let mut o = SqliteOutbox::open(&path, config, UplinkSync::Full).unwrap();
    let stats = o.stats(0).unwrap();
    assert_eq!(
        (
            stats.last_seq,
            stats.acked_through,
            stats.stored,
            stats.pending
        ),
        (7, 4, 5, 3)
    );
    assert_eq!(stats.dropped_pending_total, 2);
    assert_eq!(seqs(&o.fetch_pending(0, 10).unwrap()), vec![5, 6, 7]);
    assert_eq!(o.append(&recs(7..8)).unwrap().first_seq, 8);
}

#[test]
fn sqlite_outbox_open_failure_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("outbox.db");
    let err = SqliteOutbox::open(&path, OutboxConfig::default(), UplinkSync::Full).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UplinkStoreOpen {
                store: "outbox",
                ..
            }
        ),
        "{err}"
    );
}
