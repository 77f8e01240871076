//! One conformance suite for every `UplinkInbox` backend (memory, SQLite).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod uplink_support;

use bytes::Bytes;
use relay_core::Error;
use relay_core::sqlite::Durability;
use relay_core::uplink::{MemoryInbox, OutboxRecord, SqliteInbox, UplinkInbox};
use uplink_support::seqs;

fn rec(seq: u64) -> OutboxRecord {
    OutboxRecord {
        seq,
        ts_ms: seq.wrapping_add(1000),
        payload: Bytes::from(format!("p{seq}")),
    }
}

fn recs(seqs: impl IntoIterator<Item = u64>) -> Vec<OutboxRecord> {
    seqs.into_iter().map(rec).collect()
}

fn conformance(make: &mut dyn FnMut() -> Box<dyn UplinkInbox>) {
    commit_dedups_and_acks(make().as_mut());
    sources_are_independent(make().as_mut());
    holes_are_stored_and_acked_at_the_high_water(make().as_mut());
    invalid_input_changes_nothing(make().as_mut());
    group_commits_list_sources_and_read_time_ranges(make().as_mut());
    large_batches_read_back_across_chunk_boundaries(make().as_mut());
    holes_filled_later_read_back_in_seq_order(make().as_mut());
    unordered_batches_keep_the_first_copy(make().as_mut());
}

fn large_batches_read_back_across_chunk_boundaries(i: &mut dyn UplinkInbox) {
    // More records than one SQLite chunk row holds, in two batches.
    let c = i.commit("v", &recs(1..=10_000)).unwrap();
    assert_eq!((c.stored, c.ack), (10_000, 10_000));
    let c = i.commit("v", &recs(10_001..=12_000)).unwrap();
    assert_eq!((c.stored, c.ack), (2_000, 12_000));
    assert_eq!(i.read("v", 0, 20_000).unwrap(), recs(1..=12_000));
    for after in [
        4_094, 4_095, 4_096, 4_097, 8_191, 8_192, 9_999, 10_000, 11_999,
    ] {
        assert_eq!(
            i.read("v", after, 3).unwrap(),
            recs((after + 1..=12_000).take(3))
        );
    }
    assert!(i.read("v", 12_000, 10).unwrap().is_empty());
    // ts_ms = seq + 1000.
    let between = i.read_between("v", 4_000, 6_000, 12_500, 20_000).unwrap();
    assert_eq!(between, recs(5_000..=11_499));
    // A retransmission across the boundary of the two batches: all duplicates.
    let c = i.commit("v", &recs(9_000..=11_000)).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (0, 2_001, 12_000));
    // Payloads large enough that a few fill a chunk row.
    let big: Vec<OutboxRecord> = (1..=9)
        .map(|seq| OutboxRecord {
            seq,
            ts_ms: seq,
            payload: Bytes::from(vec![b'x'; 100_000 + seq as usize]),
        })
        .collect();
    assert_eq!(i.commit("big", &big).unwrap().stored, 9);
    assert_eq!(i.read("big", 0, 100).unwrap(), big);
    assert_eq!(i.read("big", 4, 2).unwrap(), big[4..6].to_vec());
    let listed: Vec<_> = i
        .sources()
        .unwrap()
        .into_iter()
        .map(|s| (s.source, s.acked, s.records, s.last_ts_ms))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("big".into(), 9, 9, 9),
            ("v".into(), 12_000, 12_000, 13_000)
        ]
    );
}

fn holes_filled_later_read_back_in_seq_order(i: &mut dyn UplinkInbox) {
    // One batch with holes (3, 4), then one above a gap (7 ..= 9).
    i.commit("v", &recs([1, 2, 5, 6])).unwrap();
    i.commit("v", &recs(10..=12)).unwrap();
    // A record inside the first batch's range.
    let c = i.commit("v", &recs([3])).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (1, 0, 12));
    // Duplicates, a record in the gap between the batches, and new records above the ack.
    let c = i.commit("v", &recs([2, 3, 8, 11, 13, 14])).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (3, 3, 14));
    assert_eq!(
        seqs(&i.read("v", 0, 100).unwrap()),
        vec![1, 2, 3, 5, 6, 8, 10, 11, 12, 13, 14]
    );
    // Fill every hole left, in one batch out of order.
    let c = i.commit("v", &recs([9, 4, 7, 1])).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (3, 1, 14));
    assert_eq!(i.read("v", 0, 100).unwrap(), recs(1..=14));
    assert_eq!(i.read("v", 3, 4).unwrap(), recs(4..=7));
    assert_eq!(
        i.read_between("v", 0, 1006, 1010, 100).unwrap(),
        recs(6..=9)
    );
    // Below everything held.
    i.commit("w", &recs(50..=60)).unwrap();
    let c = i.commit("w", &recs([10, 20, 55])).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (2, 1, 60));
    let mut expected = vec![10, 20];
    expected.extend(50..=60);
    assert_eq!(seqs(&i.read("w", 0, 100).unwrap()), expected);
    assert_eq!(seqs(&i.read("w", 15, 2).unwrap()), vec![20, 50]);
    let sources = i.sources().unwrap();
    assert_eq!((sources[0].records, sources[1].records), (14, 13));
}

fn unordered_batches_keep_the_first_copy(i: &mut dyn UplinkInbox) {
    let first = |seq: u64, p: &str| OutboxRecord {
        seq,
        ts_ms: seq,
        payload: Bytes::from(p.to_owned()),
    };
    let batch = vec![first(5, "a"), first(3, "b"), first(5, "c"), first(4, "d")];
    let c = i.commit("v", &batch).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (3, 1, 5));
    let held = i.read("v", 0, 10).unwrap();
    assert_eq!(held, vec![first(3, "b"), first(4, "d"), first(5, "a")]);
    // A duplicate with another timestamp changes nothing, not the newest ts_ms either.
    let late = OutboxRecord {
        seq: 4,
        ts_ms: 99,
        payload: Bytes::from_static(b"e"),
    };
    let c = i.commit("v", &[late]).unwrap();
    assert_eq!((c.stored, c.duplicates), (0, 1));
    assert_eq!(i.sources().unwrap()[0].last_ts_ms, 5);
    assert_eq!(i.read("v", 0, 10).unwrap(), held);
}

fn group_commits_list_sources_and_read_time_ranges(i: &mut dyn UplinkInbox) {
    let a1 = recs(1..=3);
    let b1 = recs(1..=2);
    let a2 = recs(3..=5);
    let commits = i
        .commit_many(&[("a", &a1[..]), ("b", &b1[..]), ("a", &a2[..])])
        .unwrap();
    let got: Vec<_> = commits
        .iter()
        .map(|c| (c.stored, c.duplicates, c.ack))
        .collect();
    assert_eq!(got, vec![(3, 0, 3), (2, 0, 2), (2, 1, 5)]);
    // One invalid batch refuses the whole group.
    assert!(matches!(
        i.commit_many(&[("a", &recs(6..=6)[..]), ("", &recs(1..=1)[..])]),
        Err(Error::InvalidUplinkInput { .. })
    ));
    assert_eq!(i.acked("a").unwrap(), 5);
    let sources = i.sources().unwrap();
    let listed: Vec<_> = sources
        .iter()
        .map(|s| (s.source.as_str(), s.acked, s.records, s.last_ts_ms))
        .collect();
    assert_eq!(listed, vec![("a", 5, 5, 1005), ("b", 2, 2, 1002)]);
    // ts_ms = seq + 1000: [1002, 1004) holds seqs 2 and 3.
    assert_eq!(i.read_between("a", 0, 1002, 1004, 10).unwrap(), recs(2..=3));
    assert_eq!(i.read_between("a", 2, 1002, 1004, 10).unwrap(), recs([3]));
    assert_eq!(i.read_between("a", 0, 1002, 1004, 1).unwrap(), recs([2]));
}

fn commit_dedups_and_acks(i: &mut dyn UplinkInbox) {
    assert_eq!(i.acked("veh-1").unwrap(), 0);
    let c = i.commit("veh-1", &recs(1..=5)).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (5, 0, 5));
    // A retransmission overlapping the ack: duplicates counted, not stored.
    let c = i.commit("veh-1", &recs(4..=8)).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (3, 2, 8));
    let c = i.commit("veh-1", &recs(1..=8)).unwrap();
    assert_eq!((c.stored, c.duplicates, c.ack), (0, 8, 8));
    let c = i.commit("veh-1", &[]).unwrap();
    assert_eq!((c.stored, c.ack), (0, 8));
    let stored = i.read("veh-1", 0, 100).unwrap();
    assert_eq!(stored, recs(1..=8));
    assert_eq!(i.read("veh-1", 6, 1).unwrap(), recs([7]));
    assert_eq!(i.acked("veh-1").unwrap(), 8);
}

fn sources_are_independent(i: &mut dyn UplinkInbox) {
    i.commit("a", &recs(1..=3)).unwrap();
    let c = i.commit("b", &recs(1..=2)).unwrap();
    assert_eq!((c.stored, c.ack), (2, 2));
    assert_eq!(i.acked("a").unwrap(), 3);
    assert!(i.read("c", 0, 10).unwrap().is_empty());
}

fn holes_are_stored_and_acked_at_the_high_water(i: &mut dyn UplinkInbox) {
    // The vehicle dropped 3..=4 under its overflow cap; they never arrive.
    let c = i.commit("v", &recs([1, 2, 5, 6])).unwrap();
    assert_eq!((c.stored, c.ack), (4, 6));
    assert_eq!(i.read("v", 2, 10).unwrap(), recs([5, 6]));
}

fn invalid_input_changes_nothing(i: &mut dyn UplinkInbox) {
    for source in ["", "bad\nsource", &"x".repeat(129)] {
        assert!(
            matches!(
                i.commit(source, &recs(1..=1)),
                Err(Error::InvalidUplinkInput { .. })
            ),
            "{source:?}"
        );
    }
    assert!(matches!(
        i.commit("v", &recs([1, 0])),
        Err(Error::InvalidUplinkInput { .. })
    ));
    assert!(matches!(
        i.commit("v", &recs([1, u64::MAX])),
        Err(Error::InvalidUplinkInput { .. })
    ));
    assert_eq!(i.acked("v").unwrap(), 0, "refused batches store nothing");
}

#[test]
fn memory_inbox_conforms() {
    conformance(&mut || Box::new(MemoryInbox::new()));
}

#[test]
fn sqlite_inbox_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance(&mut || {
        n += 1;
        Box::new(
            SqliteInbox::open(dir.path().join(format!("inbox-{n}.db")), Durability::Full).unwrap(),
        )
    });
}

#[test]
fn sqlite_inbox_keeps_acked_records_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbox.db");
    {
        let mut i = SqliteInbox::open(&path, Durability::Full).unwrap();
        assert_eq!(i.commit("veh", &recs(1..=100)).unwrap().ack, 100);
    }
    let mut i = SqliteInbox::open(&path, Durability::Normal).unwrap();
    assert_eq!(i.acked("veh").unwrap(), 100);
    assert_eq!(i.read("veh", 0, 1000).unwrap(), recs(1..=100));
    assert_eq!(i.commit("veh", &recs(95..=101)).unwrap().duplicates, 6);
}

/// A batch of a random-walk test: `(source, seqs)`.
type Step = (u8, Vec<u64>);

fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    use proptest::prelude::*;
    // Short runs of ascending seqs (the wire's shape) and scattered ones (holes, refills,
    // retransmissions, disorder), over a small range so that they collide.
    let run = (1u64..120, 1usize..40).prop_map(|(first, n)| (first..first + n as u64).collect());
    let scattered = proptest::collection::vec(1u64..160, 0..12);
    let batch = prop_oneof![run, scattered];
    proptest::collection::vec((0u8..2, batch), 1..14)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The SQLite inbox answers every commit, read and listing as the memory inbox does, for
    /// any sequence of batches (one or two per group commit), across a reopen.
    #[test]
    fn sqlite_inbox_matches_memory(steps in steps(), group in proptest::bool::ANY) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.db");
        let mut sqlite = SqliteInbox::open(&path, Durability::Normal).unwrap();
        let mut memory = MemoryInbox::new();
        let name = |s: u8| if s == 0 { "a" } else { "b" };
        let batches: Vec<(&str, Vec<OutboxRecord>)> =
            steps.iter().map(|(s, seqs)| (name(*s), recs(seqs.iter().copied()))).collect();
        let size = if group { 2 } else { 1 };
        for part in batches.chunks(size) {
            let part: Vec<(&str, &[OutboxRecord])> =
                part.iter().map(|(s, r)| (*s, &r[..])).collect();
            let got = sqlite.commit_many(&part).unwrap();
            let want = memory.commit_many(&part).unwrap();
            proptest::prop_assert_eq!(got, want);
        }
        let mut sqlite = SqliteInbox::open(&path, Durability::Normal).unwrap();
        proptest::prop_assert_eq!(sqlite.sources().unwrap(), memory.sources().unwrap());
        for source in ["a", "b"] {
            proptest::prop_assert_eq!(sqlite.acked(source).unwrap(), memory.acked(source).unwrap());
            for after in [0, 1, 37, 100, 159] {
                for max in [1, 5, 1000] {
                    proptest::prop_assert_eq!(
                        sqlite.read(source, after, max).unwrap(),
                        memory.read(source, after, max).unwrap()
                    );
                }
                proptest::prop_assert_eq!(
                    sqlite.read_between(source, after, 1040, 1090, 20).unwrap(),
                    memory.read_between(source, after, 1040, 1090, 20).unwrap()
                );
            }
        }
    }
}
