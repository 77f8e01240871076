//! One conformance suite for every outbox backend (memory, SQLite at both sync levels), at two
//! levels: the byte-level [`OutboxStore`] trait itself, and the stream rules
//! ([`StreamOutbox`]) over each store — once with a large memory mirror and once with a mirror
//! of three records, so that the refill and direct-read paths run too.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod uplink_support;

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use relay_core::Error;
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    DropReason, MemoryOutboxStore, NewRecord, OnAck, OutboxStore, OutboxStoreHandle,
    SqliteOutboxStore, StoredRecord, StreamConfig, StreamOutbox, StreamState, StreamWrite,
    Unsettled,
};
use uplink_support::{BACKENDS, Backend, StoreHarness, payloads, rec, recs, seqs};

// ---- the store trait ---------------------------------------------------------------------

fn slots(records: &[StoredRecord]) -> Vec<u64> {
    records.iter().map(|r| r.slot).collect()
}

fn append(stream: u64, first_slot: u64, ts: std::ops::Range<u64>) -> StreamWrite {
    StreamWrite::Append {
        stream,
        first_slot,
        records: recs(ts),
    }
}

/// Runs every store check against stores made by `make` (each call returns a fresh one).
fn store_conformance(make: &mut dyn FnMut() -> Box<dyn OutboxStore>) {
    streams_are_created_once_and_independent(make().as_mut());
    append_read_and_remove(make().as_mut());
    read_newest_pages_back_and_stops_at_older_records(make().as_mut());
    a_refused_commit_changes_nothing(make().as_mut());
    large_appends_and_payloads_round_trip(make().as_mut());
    bad_keys_are_refused(make().as_mut());
}

fn streams_are_created_once_and_independent(s: &mut dyn OutboxStore) {
    let a = s.open_stream("serial-1/g/a").unwrap();
    assert_eq!((a.next_slot, a.removed_through), (1, 0));
    assert_eq!(a.state, StreamState::default());
    let b = s.open_stream("serial-1/g/b").unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(s.open_stream("serial-1/g/a").unwrap().id, a.id);
    let state = StreamState {
        seq_offset: -3,
        acked: 4,
        rx_seq: 99,
        unsettled: Unsettled::new(vec![(5, 9), (12, 12)]).unwrap(),
        dropped: relay_core::uplink::DropCounts {
            overflow: 1,
            refused: 2,
            abandoned: 3,
        },
    };
    s.commit(&[
        append(a.id, 1, 0..10),
        StreamWrite::State {
            stream: a.id,
            state: state.clone(),
        },
        append(b.id, 1, 100..102),
    ])
    .unwrap();
    let a2 = s.open_stream("serial-1/g/a").unwrap();
    assert_eq!((a2.next_slot, a2.state), (11, state));
    let b2 = s.open_stream("serial-1/g/b").unwrap();
    assert_eq!((b2.next_slot, b2.state), (3, StreamState::default()));
    assert_eq!(slots(&s.read(b.id, 0, 10).unwrap()), vec![1, 2]);
}

fn append_read_and_remove(s: &mut dyn OutboxStore) {
    let id = s.open_stream("t").unwrap().id;
    s.commit(&[append(id, 1, 0..5)]).unwrap();
    s.commit(&[append(id, 6, 5..8)]).unwrap();
    let all = s.read(id, 0, 100).unwrap();
    assert_eq!(slots(&all), (1..=8).collect::<Vec<_>>());
    assert_eq!(all[2].ts_ms, 2);
    assert_eq!(all[2].payload, Bytes::from("r2"));
    assert_eq!(slots(&s.read(id, 3, 2).unwrap()), vec![4, 5]);
    assert!(s.read(id, 8, 10).unwrap().is_empty());
    assert!(s.read(id, 0, 0).unwrap().is_empty());
    // Removal of a prefix, inside the first append's rows and then across them.
    s.commit(&[StreamWrite::RemoveThrough {
        stream: id,
        slot: 3,
    }])
    .unwrap();
    assert_eq!(slots(&s.read(id, 0, 100).unwrap()), vec![4, 5, 6, 7, 8]);
    assert_eq!(slots(&s.read(id, 1, 2).unwrap()), vec![4, 5]);
    s.commit(&[StreamWrite::RemoveThrough {
        stream: id,
        slot: 6,
    }])
    .unwrap();
    assert_eq!(slots(&s.read(id, 0, 100).unwrap()), vec![7, 8]);
    let opened = s.open_stream("t").unwrap();
    assert_eq!((opened.next_slot, opened.removed_through), (9, 6));
    // Everything removed; slots go on.
    s.commit(&[
        StreamWrite::RemoveThrough {
            stream: id,
            slot: 8,
        },
        append(id, 9, 8..9),
    ])
    .unwrap();
    assert_eq!(slots(&s.read(id, 0, 100).unwrap()), vec![9]);
}

fn read_newest_pages_back_and_stops_at_older_records(s: &mut dyn OutboxStore) {
    let id = s.open_stream("t").unwrap().id;
    // Slots 1..=600 with ts 1000..1600, in three appends (several rows each in SQLite).
    s.commit(&[append(id, 1, 1000..1200)]).unwrap();
    s.commit(&[append(id, 201, 1200..1500)]).unwrap();
    s.commit(&[append(id, 501, 1500..1600)]).unwrap();
    let newest = s.read_newest(id, 0, u64::MAX, 3).unwrap();
    assert_eq!(slots(&newest), vec![598, 599, 600]);
    let page = s.read_newest(id, 0, 300, 4).unwrap();
    assert_eq!(slots(&page), vec![296, 297, 298, 299]);
    // Since a time: only records taken at or after it.
    let since = s.read_newest(id, 1590, u64::MAX, 100).unwrap();
    assert_eq!(slots(&since), (591..=600).collect::<Vec<_>>());
    assert!(s.read_newest(id, 5000, u64::MAX, 10).unwrap().is_empty());
    assert!(s.read_newest(id, 0, 1, 10).unwrap().is_empty());
    assert!(s.read_newest(id, 0, u64::MAX, 0).unwrap().is_empty());
    // Removed records are not returned.
    s.commit(&[StreamWrite::RemoveThrough {
        stream: id,
        slot: 250,
    }])
    .unwrap();
    assert_eq!(
        slots(&s.read_newest(id, 0, 260, 100).unwrap()),
        (251..=259).collect::<Vec<_>>()
    );
    // A clock that stepped back ends the scan at the first older record.
    let id = s.open_stream("clock").unwrap().id;
    let ts = [10, 20, 5, 30, 40];
    let records: Vec<NewRecord> = ts.iter().map(|t| rec(*t)).collect();
    s.commit(&[StreamWrite::Append {
        stream: id,
        first_slot: 1,
        records,
    }])
    .unwrap();
    assert_eq!(
        slots(&s.read_newest(id, 10, u64::MAX, 10).unwrap()),
        vec![4, 5]
    );
}

fn a_refused_commit_changes_nothing(s: &mut dyn OutboxStore) {
    let id = s.open_stream("t").unwrap().id;
    s.commit(&[append(id, 1, 0..3)]).unwrap();
    let before = s.open_stream("t").unwrap();
    let state = StreamState {
        acked: 3,
        ..StreamState::default()
    };
    // Each list holds a bad write after good ones.
    let bad: Vec<Vec<StreamWrite>> = vec![
        vec![append(id, 4, 3..5), append(id, 9, 5..6)],
        vec![
            StreamWrite::State {
                stream: id,
                state: state.clone(),
            },
            StreamWrite::RemoveThrough {
                stream: id,
                slot: 7,
            },
        ],
        vec![
            StreamWrite::RemoveThrough {
                stream: id,
                slot: 2,
            },
            StreamWrite::RemoveThrough {
                stream: id,
                slot: 1,
            },
        ],
        vec![append(id, 4, 3..4), append(12345, 1, 0..1)],
        vec![StreamWrite::Append {
            stream: id,
            first_slot: 4,
            records: Vec::new(),
        }],
    ];
    for writes in bad {
        let err = s.commit(&writes).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert_eq!(s.open_stream("t").unwrap(), before, "{writes:?}");
        assert_eq!(slots(&s.read(id, 0, 10).unwrap()), vec![1, 2, 3]);
    }
}

fn large_appends_and_payloads_round_trip(s: &mut dyn OutboxStore) {
    let id = s.open_stream("big").unwrap().id;
    let records: Vec<NewRecord> = (0..1000u64)
        .map(|i| NewRecord {
            ts_ms: i,
            payload: Bytes::from(vec![(i % 251) as u8; (i as usize * 37) % 700]),
        })
        .collect();
    s.commit(&[StreamWrite::Append {
        stream: id,
        first_slot: 1,
        records: records.clone(),
    }])
    .unwrap();
    let back = s.read(id, 0, 2000).unwrap();
    assert_eq!(back.len(), 1000);
    for (i, (got, sent)) in back.iter().zip(&records).enumerate() {
        assert_eq!(got.slot, i as u64 + 1);
        assert_eq!((got.ts_ms, &got.payload), (sent.ts_ms, &sent.payload));
    }
    s.commit(&[StreamWrite::RemoveThrough {
        stream: id,
        slot: 700,
    }])
    .unwrap();
    assert_eq!(s.read(id, 0, 2000).unwrap().len(), 300);
}

fn bad_keys_are_refused(s: &mut dyn OutboxStore) {
    for key in ["", "a\nb", &"k".repeat(257)] {
        assert!(matches!(
            s.open_stream(key),
            Err(Error::InvalidUplinkInput { .. })
        ));
    }
    assert!(s.open_stream(&"k".repeat(256)).is_ok());
}

#[test]
fn memory_store_conforms() {
    store_conformance(&mut || Box::new(MemoryOutboxStore::new()));
}

#[test]
fn sqlite_store_conforms_at_both_sync_levels() {
    for sync in [Durability::Full, Durability::Normal] {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        store_conformance(&mut || {
            n += 1;
            Box::new(SqliteOutboxStore::open(dir.path().join(format!("s{n}.db")), sync).unwrap())
        });
    }
}

#[test]
fn sqlite_store_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let state = StreamState {
        seq_offset: 7,
        acked: 9,
        rx_seq: 3,
        ..StreamState::default()
    };
    let id = {
        let mut s = SqliteOutboxStore::open(&path, Durability::Full).unwrap();
        let id = s.open_stream("t").unwrap().id;
        s.commit(&[
            append(id, 1, 0..10),
            StreamWrite::RemoveThrough {
                stream: id,
                slot: 2,
            },
            StreamWrite::State {
                stream: id,
                state: state.clone(),
            },
        ])
        .unwrap();
        id
    };
    let mut s = SqliteOutboxStore::open(&path, Durability::Normal).unwrap();
    let opened = s.open_stream("t").unwrap();
    assert_eq!(opened.id, id);
    assert_eq!(
        (opened.next_slot, opened.removed_through, opened.state),
        (11, 2, state)
    );
    assert_eq!(
        slots(&s.read(id, 0, 100).unwrap()),
        (3..=10).collect::<Vec<_>>()
    );
}

#[test]
fn sqlite_store_open_failure_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("outbox.db");
    let err = SqliteOutboxStore::open(&path, Durability::Full).unwrap_err();
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

// ---- the stream rules over every store -----------------------------------------------------

fn keep(max_records: u64, mirror_max: usize) -> StreamConfig {
    StreamConfig {
        max_records,
        on_ack: OnAck::Keep,
        mirror_max,
    }
}

fn delete(max_records: u64, mirror_max: usize) -> StreamConfig {
    StreamConfig {
        max_records,
        on_ack: OnAck::Delete,
        mirror_max,
    }
}

async fn open(h: &StoreHarness, key: &str, config: StreamConfig) -> StreamOutbox {
    StreamOutbox::open(h.handle(), key, config).await.unwrap()
}

/// Runs every stream check on fresh stores of `backend`, with a mirror of `mirror` records.
async fn stream_conformance(backend: Backend, mirror: usize) {
    let fresh = || StoreHarness::new(backend);
    append_and_peek_in_order(&fresh(), mirror).await;
    ack_is_cumulative_and_checked(&fresh(), mirror).await;
    prune_only_removes_old_uplinked(&fresh(), mirror).await;
    seqs_are_never_reused(&fresh(), mirror).await;
    overflow_prunes_uplinked_first_then_counts_dropped_pending(&fresh(), mirror).await;
    oversized_batch_keeps_newest(&fresh(), mirror).await;
    recent_and_stats(&fresh(), mirror).await;
    overflow_while_sending_counts_only_what_the_remote_missed(&fresh(), mirror).await;
    delete_mode_forgets_on_ack(&fresh(), mirror).await;
    reconcile_with_the_servers_ack(&mut fresh(), mirror).await;
    many_streams_and_cursors_survive_a_restart(&mut fresh(), mirror).await;
    one_writer_per_stream(&fresh(), mirror).await;
}

async fn append_and_peek_in_order(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", keep(100_000, mirror)).await;
    let report = o.append(recs(100..105)).await.unwrap();
    assert_eq!((report.first_seq, report.last_seq), (1, 5));
    assert_eq!((report.pruned_uplinked, report.dropped_pending), (0, 0));
    assert_eq!(
        o.append(Vec::new()).await.unwrap().last_seq,
        0,
        "empty batch assigns nothing"
    );
    let r = o.append(recs(105..108)).await.unwrap();
    assert_eq!((r.first_seq, r.last_seq), (6, 8));
    let first = o.peek(0, 3).await.unwrap();
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    assert_eq!(first[0].payload, Bytes::from("r100"));
    assert_eq!(first[2].ts_ms, 102);
    assert_eq!(seqs(&o.peek(3, 100).await.unwrap()), vec![4, 5, 6, 7, 8]);
    assert!(o.peek(8, 10).await.unwrap().is_empty());
    assert!(o.peek(0, 0).await.unwrap().is_empty());
    // Peeking does not send; `next_batch` does.
    assert_eq!(o.sent_high(), 0);
    let batch = o.next_batch(2, 4).await.unwrap();
    assert_eq!(seqs(&batch), vec![3, 4, 5, 6]);
    assert_eq!(o.sent_high(), 6);
    let bad = NewRecord {
        ts_ms: 1 << 60,
        payload: Bytes::new(),
    };
    assert!(matches!(
        o.append(vec![rec(1), bad]).await,
        Err(Error::InvalidUplinkInput { .. })
    ));
    assert_eq!(o.last_seq(), 8, "a refused batch stores nothing");
}

async fn ack_is_cumulative_and_checked(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", keep(100_000, mirror)).await;
    o.append(recs(0..10)).await.unwrap();
    assert_eq!(o.ack(4).await.unwrap(), 4);
    assert_eq!(o.ack(2).await.unwrap(), 0, "an older ack changes nothing");
    assert_eq!(o.ack(4).await.unwrap(), 0);
    // Peeking never returns uplinked records, whatever `after` says.
    assert_eq!(seqs(&o.peek(0, 3).await.unwrap()), vec![5, 6, 7]);
    assert!(matches!(
        o.ack(11).await,
        Err(Error::UplinkAckAhead {
            acked: 11,
            sent: 10
        })
    ));
    assert_eq!(o.acked(), 4, "a refused ack changed nothing");
    assert_eq!(o.ack(10).await.unwrap(), 6);
    assert!(o.peek(0, 10).await.unwrap().is_empty());
    let stats = o.stats(0);
    assert_eq!(
        (stats.stored, stats.pending, stats.acked_through),
        (10, 0, 10)
    );
}

async fn prune_only_removes_old_uplinked(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", keep(100_000, mirror)).await;
    o.append(recs(0..10)).await.unwrap(); // ts 0..9, seqs 1..10
    o.ack(6).await.unwrap();
    // Uplinked with ts < 3: seqs 1, 2, 3.
    assert_eq!(o.prune_uplinked(3).await.unwrap(), 3);
    // ts < 100 but only seqs <= 6 are uplinked: 4, 5, 6.
    assert_eq!(o.prune_uplinked(100).await.unwrap(), 3);
    assert_eq!(o.prune_uplinked(100).await.unwrap(), 0);
    let stats = o.stats(0);
    assert_eq!((stats.stored, stats.pending), (4, 4));
    assert_eq!(seqs(&o.peek(0, 10).await.unwrap()), vec![7, 8, 9, 10]);
}

async fn seqs_are_never_reused(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", keep(100_000, mirror)).await;
    o.append(recs(0..3)).await.unwrap();
    o.ack(3).await.unwrap();
    o.prune_uplinked(u64::MAX).await.unwrap();
    assert_eq!(o.stats(0).stored, 0);
    let r = o.append(recs(3..4)).await.unwrap();
    assert_eq!(r.first_seq, 4);
}

async fn overflow_prunes_uplinked_first_then_counts_dropped_pending(
    h: &StoreHarness,
    mirror: usize,
) {
    let mut o = open(h, "t", keep(10, mirror)).await;
    o.append(recs(0..8)).await.unwrap(); // seqs 1..8
    o.ack(3).await.unwrap();
    // 8 + 4 = 12 > 10: remove 2 uplinked (seqs 1, 2), nothing pending.
    let r = o.append(recs(8..12)).await.unwrap();
    assert_eq!((r.pruned_uplinked, r.dropped_pending), (2, 0));
    assert!(!r.renumbered);
    // 10 + 5 = 15: 1 uplinked left (seq 3), then 4 pending (seqs 4..7, never sent). Their seqs
    // are given to the records that follow, so the stream stays dense: the records taken at
    // ts 7..16 now have seqs 4..13, this batch 9..13.
    let r = o.append(recs(12..17)).await.unwrap();
    assert_eq!(
        (r.pruned_uplinked, r.dropped_pending, r.dropped_in_flight),
        (1, 4, 0)
    );
    assert!(r.renumbered);
    assert_eq!((r.first_seq, r.last_seq), (9, 13));
    let stats = o.stats(0);
    assert_eq!(
        (stats.stored, stats.pending, stats.dropped_pending_total),
        (10, 10, 4)
    );
    assert_eq!(stats.dropped.overflow, 4);
    let pending = o.peek(0, 100).await.unwrap();
    assert_eq!(seqs(&pending), (4..=13).collect::<Vec<_>>());
    assert_eq!(payloads(&pending)[0], "r7");
    assert_eq!(payloads(&pending)[9], "r16");
    let r = o.append(recs(17..18)).await.unwrap();
    assert_eq!(r.dropped_pending, 1);
    assert_eq!(o.stats(0).dropped_pending_total, 5);
    assert_eq!(o.stats(0).last_seq, 13);
}

async fn oversized_batch_keeps_newest(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", keep(3, mirror)).await;
    let r = o.append(recs(0..5)).await.unwrap();
    assert_eq!((r.first_seq, r.last_seq, r.dropped_pending), (1, 3, 2));
    let kept = o.peek(0, 10).await.unwrap();
    assert_eq!(seqs(&kept), vec![1, 2, 3]);
    assert_eq!(payloads(&kept), vec!["r2", "r3", "r4"]);
}

async fn recent_and_stats(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", keep(100_000, mirror)).await;
    let empty = o.stats(1000);
    assert_eq!(
        (
            empty.stored,
            empty.pending,
            empty.oldest_pending_age_ms,
            empty.last_seq
        ),
        (0, 0, None, 0)
    );
    o.append(recs(100..110)).await.unwrap(); // seqs 1..10, ts 100..109
    o.ack(4).await.unwrap();
    // Recent by age includes uplinked records; newest `max`, in seq order.
    assert_eq!(
        seqs(&o.recent(103, None, 100).await.unwrap()),
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&o.recent(103, None, 3).await.unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(&o.recent(0, Some(8), 3).await.unwrap()), vec![5, 6, 7]);
    assert!(o.recent(200, None, 10).await.unwrap().is_empty());
    let stats = o.stats(1_000);
    assert_eq!(stats.pending, 6);
    assert_eq!(stats.oldest_pending_ts_ms, Some(104));
    assert_eq!(stats.oldest_pending_age_ms, Some(896));
    assert_eq!(
        o.stats(50).oldest_pending_age_ms,
        Some(0),
        "future timestamps age 0"
    );
    assert_eq!(stats.last_seq, 10);
}

async fn overflow_while_sending_counts_only_what_the_remote_missed(
    h: &StoreHarness,
    mirror: usize,
) {
    let mut o = open(h, "t", delete(10, mirror)).await;
    o.append(recs(0..10)).await.unwrap();
    assert_eq!(seqs(&o.next_batch(0, 4).await.unwrap()), vec![1, 2, 3, 4]);
    // 6 more: the 6 oldest go — 1..4 are in flight (they may arrive), 5 and 6 were never sent
    // (lost). The held records close the hole above what was sent: 7..16 become 5..14, so the
    // connection's next batch follows 4 without a gap.
    let r = o.append(recs(10..16)).await.unwrap();
    assert_eq!((r.dropped_pending, r.dropped_in_flight), (2, 4));
    assert!(r.renumbered);
    let stats = o.stats(0);
    assert_eq!(
        (stats.dropped.overflow, stats.unsettled, stats.last_seq),
        (2, 4, 14)
    );
    let next = o.next_batch(4, 2).await.unwrap();
    assert_eq!(seqs(&next), vec![5, 6]);
    assert_eq!(payloads(&next), vec!["r6", "r7"]);
    // The remote acknowledges 1..3 and 5..6 never come: its ack stays at 3.
    assert_eq!(o.ack(3).await.unwrap(), 0, "1..3 were dropped here already");
    assert_eq!(o.stats(0).unsettled, 1);
    // Reconnect: the remote holds 1..3, so 4 is lost; 5 and 6 are still held and resent.
    let rec = o.reconcile(3).await.unwrap();
    assert_eq!(
        (rec.lost_in_flight, rec.newly_acked, rec.renumbered),
        (1, 0, false)
    );
    assert_eq!(rec.resume_after, 4);
    let stats = o.stats(0);
    assert_eq!((stats.dropped.overflow, stats.unsettled), (3, 0));
    assert_eq!(
        seqs(&o.next_batch(rec.resume_after, 100).await.unwrap()),
        (5..=14).collect::<Vec<_>>()
    );
}

async fn delete_mode_forgets_on_ack(h: &StoreHarness, mirror: usize) {
    let mut o = open(h, "t", delete(100, mirror)).await;
    o.append(recs(0..10)).await.unwrap();
    o.next_batch(0, 10).await.unwrap();
    assert_eq!(o.ack(7).await.unwrap(), 7);
    let stats = o.stats(0);
    assert_eq!(
        (stats.stored, stats.pending, stats.acked_through),
        (3, 3, 7)
    );
    assert!(o.recent(0, None, 100).await.unwrap().len() == 3);
    let d = o.drop_pending(DropReason::Refused).await.unwrap();
    assert_eq!((d.dropped, d.unsettled_lost), (3, 0));
    let stats = o.stats(0);
    assert_eq!(
        (stats.stored, stats.dropped.refused, stats.last_seq),
        (0, 3, 10)
    );
}

/// The dongle agent's reconcile rules (its `reconcile_with_the_servers_ack`), step by step. The
/// agent closed holes at the next reconnect; the outbox closes them when the drop happens, so
/// two intermediate observations moved to the drop (marked below); every reconcile result and
/// every final numbering is the agent's.
async fn reconcile_with_the_servers_ack(h: &mut StoreHarness, mirror: usize) {
    let config = delete(100, mirror);
    let mut o = open(h, "D/g/a", config).await;
    o.append(recs(0..10)).await.unwrap();
    // Acks lost in a crash: the server holds 1..=6.
    assert_eq!(o.reconcile(6).await.unwrap().resume_after, 6);
    assert_eq!((o.pending(), o.acked()), (4, 6));
    let b = o.peek(6, 3).await.unwrap();
    assert_eq!((b[0].seq, b.len()), (7, 3));
    // Reopened from the file: the same state.
    drop(o);
    h.reopen().await;
    let mut o = open(h, "D/g/a", config).await;
    assert_eq!((o.pending(), o.acked(), o.last_seq()), (4, 6, 10));
    // The server holds more than this store ever assigned (the state was lost).
    let r = o.reconcile(50).await.unwrap();
    assert_eq!(
        (r.resume_after, r.remote_ahead, r.renumbered),
        (50, true, true)
    );
    assert_eq!(
        (o.last_seq(), o.peek(50, 10).await.unwrap()[0].seq),
        (54, 51)
    );
    // Everything held was dropped and never sent: the seqs are reused.
    o.drop_pending(DropReason::Refused).await.unwrap();
    assert_eq!(o.reconcile(50).await.unwrap().resume_after, 50);
    assert_eq!(o.last_seq(), 50);
    o.append(recs(0..1)).await.unwrap();
    assert_eq!(o.peek(50, 10).await.unwrap()[0].seq, 51);
    // The cap drops the oldest held frames. Those were never sent, so the held frames follow
    // the server's ack densely (the agent: at the next reconnect; here: at once).
    o.append(recs(1..151)).await.unwrap();
    assert_eq!(o.pending(), 100);
    assert_eq!(o.peek(0, 1).await.unwrap()[0].seq, 51); // the agent: 102 until reconnect
    assert_eq!(o.reconcile(50).await.unwrap().resume_after, 50);
    assert_eq!((o.pending(), o.last_seq()), (100, 150));
    assert_eq!(o.peek(50, 1).await.unwrap()[0].seq, 51);
    // 51..=80 were sent, then the cap drops 51..=90 unacknowledged: the server may have
    // delivered 51..=80 already (cut-through), so those seqs are not reused; the held frames
    // close only the hole of the unsent ones and keep their place above 80.
    assert_eq!(o.next_batch(50, 30).await.unwrap().len(), 30);
    o.append(recs(151..191)).await.unwrap();
    assert_eq!(o.peek(0, 1).await.unwrap()[0].seq, 81); // the agent: 91 until reconnect
    assert_eq!(o.reconcile(50).await.unwrap().resume_after, 80);
    assert_eq!(o.peek(80, 1).await.unwrap()[0].seq, 81);
    assert_eq!((o.pending(), o.last_seq()), (100, 180));
    // The group was deactivated while 81..=180 were sent: the server refused some of them,
    // but may have accepted the first batches (appends in flight, not yet in `tx_acked`).
    // None of those seqs is reused; only the unsent 181..=190 are.
    assert_eq!(o.next_batch(80, 100).await.unwrap().len(), 100);
    o.append(recs(191..201)).await.unwrap();
    assert_eq!(o.last_seq(), 190);
    o.drop_pending(DropReason::Refused).await.unwrap();
    assert_eq!(o.reconcile(80).await.unwrap().resume_after, 180);
    assert_eq!(o.last_seq(), 180);
    o.append(recs(201..202)).await.unwrap();
    assert_eq!(o.peek(180, 10).await.unwrap()[0].seq, 181);
    // Every drop was counted once: overflow 51 + 10 unsent, plus the sent 51..=80 and 81..=90
    // (dropped by the cap when 181..=190 came) that the server did not hold at the reconciles;
    // refused 4 + 100.
    let dropped = o.stats(0).dropped;
    assert_eq!((dropped.overflow, dropped.refused), (101, 104));
}

async fn many_streams_and_cursors_survive_a_restart(h: &mut StoreHarness, mirror: usize) {
    let config = delete(1000, mirror);
    let keys: Vec<String> = (0..5).map(|i| format!("SIM-{i}/group/a")).collect();
    let mut streams = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut o = open(h, key, config).await;
        o.append(recs(0..(i as u64 + 1) * 3)).await.unwrap();
        o.set_rx(100 + i as u64).await.unwrap();
        o.ack(i as u64).await.unwrap();
        streams.push(o);
    }
    drop(streams);
    h.reopen().await;
    for (i, key) in keys.iter().enumerate() {
        let mut o = open(h, key, config).await;
        let i = i as u64;
        assert_eq!(
            (o.last_seq(), o.acked(), o.rx_seq()),
            ((i + 1) * 3, i, 100 + i)
        );
        // After a restart every assigned seq counts as sent.
        assert_eq!(o.sent_high(), (i + 1) * 3);
        let pending = o.peek(0, 100).await.unwrap();
        assert_eq!(seqs(&pending), (i + 1..=(i + 1) * 3).collect::<Vec<_>>());
        o.set_rx(0).await.unwrap();
        assert_eq!(o.rx_seq(), 0);
    }
}

async fn one_writer_per_stream(h: &StoreHarness, mirror: usize) {
    let o = open(h, "t", delete(10, mirror)).await;
    assert!(matches!(
        StreamOutbox::open(h.handle(), "t", delete(10, mirror)).await,
        Err(Error::OutboxStreamBusy { .. })
    ));
    drop(o);
    let _again = open(h, "t", delete(10, mirror)).await;
    assert!(matches!(
        StreamOutbox::open(h.handle(), "u", delete(0, mirror)).await,
        Err(Error::InvalidUplinkInput { .. })
    ));
}

#[tokio::test]
async fn every_store_conforms_to_the_stream_rules() {
    for backend in BACKENDS {
        for mirror in [16_384, 3] {
            stream_conformance(backend, mirror).await;
        }
    }
}

/// A store whose commits take a while, so that a call can be cancelled mid-commit.
struct SlowStore(MemoryOutboxStore);

impl OutboxStore for SlowStore {
    fn open_stream(
        &mut self,
        key: &str,
    ) -> relay_core::error::Result<relay_core::uplink::StoredStream> {
        self.0.open_stream(key)
    }
    fn read(
        &mut self,
        stream: u64,
        after: u64,
        max: usize,
    ) -> relay_core::error::Result<Vec<StoredRecord>> {
        self.0.read(stream, after, max)
    }
    fn read_newest(
        &mut self,
        stream: u64,
        since: u64,
        before: u64,
        max: usize,
    ) -> relay_core::error::Result<Vec<StoredRecord>> {
        self.0.read_newest(stream, since, before, max)
    }
    fn commit(&mut self, writes: &[StreamWrite]) -> relay_core::error::Result<()> {
        std::thread::sleep(Duration::from_millis(50));
        self.0.commit(writes)
    }
}

#[tokio::test]
async fn a_cancelled_call_puts_the_stream_out_of_step() {
    let store = OutboxStoreHandle::spawn(SlowStore(MemoryOutboxStore::new())).unwrap();
    let mut o = StreamOutbox::open(&store, "t", StreamConfig::default())
        .await
        .unwrap();
    assert!(
        o.append(recs(0..3)).now_or_never().is_none(),
        "the commit takes 50 ms"
    );
    assert!(matches!(o.ack(1).await, Err(Error::OutboxOutOfStep { .. })));
    assert!(matches!(
        o.next_batch(0, 1).await,
        Err(Error::OutboxOutOfStep { .. })
    ));
    drop(o);
    // Opened again, it sees what the store committed.
    let o = StreamOutbox::open(&store, "t", StreamConfig::default())
        .await
        .unwrap();
    assert_eq!(o.last_seq(), 3);
}

#[tokio::test]
async fn a_closed_store_answers_worker_gone() {
    let store = OutboxStoreHandle::spawn(MemoryOutboxStore::new()).unwrap();
    let other = store.clone();
    store.close().await.unwrap();
    assert!(matches!(
        StreamOutbox::open(&other, "t", StreamConfig::default()).await,
        Err(Error::WorkerGone { .. })
    ));
}
