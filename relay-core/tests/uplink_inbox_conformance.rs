//! One conformance suite for every `UplinkInbox` backend (memory, SQLite).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use bytes::Bytes;
use relay_core::Error;
use relay_core::sqlite::Durability;
use relay_core::uplink::{MemoryInbox, OutboxRecord, SqliteInbox, UplinkInbox};

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
