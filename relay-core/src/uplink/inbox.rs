//! The remote-side inbox: durable storage of uplinked records, deduplicated by (source, seq).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::store::{OutboxRecord, validate_name};
use crate::error::{Error, Result};
use crate::log::Seq;

/// Longest accepted source id (a vehicle id), in bytes.
pub const MAX_SOURCE_LEN: usize = 128;

/// What one [`UplinkInbox::commit`] did. It is returned only after the records are durable,
/// so `ack` may be sent to the vehicle as soon as the caller has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxCommit {
    /// Records stored by this call.
    pub stored: u64,
    /// Records already held (same source and seq): not stored again, acknowledged again.
    pub duplicates: u64,
    /// Cumulative acknowledgement for the source: the highest seq held for it.
    pub ack: Seq,
}

/// One source (vehicle) of an inbox, as [`UplinkInbox::sources`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSource {
    /// The source id.
    pub source: String,
    /// Its cumulative ack: the highest seq held.
    pub acked: Seq,
    /// Records held.
    pub records: u64,
    /// The newest `ts_ms` held.
    pub last_ts_ms: u64,
}

/// The remote collector's store of uplinked records.
///
/// A record is identified by `(source, seq)`; a second copy is a duplicate (a retransmission
/// after a lost ack) and is counted, not stored. The ack is cumulative: the vehicle sends in seq
/// order over an ordered connection and resumes from the last ack, so the highest seq held is
/// the point up to which the vehicle may forget. Seqs the vehicle dropped under its overflow
/// cap simply never arrive.
pub trait UplinkInbox: Send {
    /// Stores `records` of `source` atomically, skipping duplicates, and returns the ack.
    fn commit(&mut self, source: &str, records: &[OutboxRecord]) -> Result<InboxCommit>;

    /// The cumulative ack for `source` (0 if nothing was ever received): what the remote tells
    /// a reconnecting vehicle.
    fn acked(&mut self, source: &str) -> Result<Seq>;

    /// Up to `max` stored records of `source` with seq `> after`, in seq order: a
    /// [`read_between`](Self::read_between) over all time.
    fn read(&mut self, source: &str, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        self.read_between(source, after, 0, u64::MAX, max)
    }

    /// Several batches, of one source or many, in one durable commit (the remote's group
    /// commit: one sync for every connection's pending batch). Every batch is validated
    /// first; one invalid batch refuses them all and changes nothing. The answers are in the
    /// order of `batches`, each one's ack counting the batches before it. The default commits
    /// them one by one.
    fn commit_many(&mut self, batches: &[(&str, &[OutboxRecord])]) -> Result<Vec<InboxCommit>> {
        for (source, records) in batches {
            validate_commit(source, records)?;
        }
        batches
            .iter()
            .map(|(source, records)| self.commit(source, records))
            .collect()
    }

    /// Every source held, by id.
    fn sources(&mut self) -> Result<Vec<InboxSource>>;

    /// Up to `max` records of `source` with seq `> after` and `from_ts_ms <= ts_ms <
    /// to_ts_ms`, in seq order (a time-range read; it scans the source's records after
    /// `after`).
    fn read_between(
        &mut self,
        source: &str,
        after: Seq,
        from_ts_ms: u64,
        to_ts_ms: u64,
        max: usize,
    ) -> Result<Vec<OutboxRecord>>;
}

/// Checks a source id and a batch before anything is stored.
pub(crate) fn validate_commit(source: &str, records: &[OutboxRecord]) -> Result<()> {
    validate_name("source id", source, MAX_SOURCE_LEN)?;
    if records
        .iter()
        .any(|r| r.seq == 0 || i64::try_from(r.seq).is_err())
    {
        return Err(Error::InvalidUplinkInput {
            reason: "seq must be in 1..=2^63-1".to_owned(),
        });
    }
    Ok(())
}

/// An [`UplinkInbox`] in memory (tests; a remote that accepts loss on restart).
#[derive(Debug, Default)]
pub struct MemoryInbox {
    sources: HashMap<String, BTreeMap<Seq, (u64, Bytes)>>,
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }
}

impl UplinkInbox for MemoryInbox {
    fn commit(&mut self, source: &str, records: &[OutboxRecord]) -> Result<InboxCommit> {
        validate_commit(source, records)?;
        let held = self.sources.entry(source.to_owned()).or_default();
        let mut commit = InboxCommit::default();
        for record in records {
            match held.entry(record.seq) {
                Entry::Occupied(_) => commit.duplicates += 1,
                Entry::Vacant(slot) => {
                    slot.insert((record.ts_ms, record.payload.clone()));
                    commit.stored += 1;
                }
            }
        }
        commit.ack = held.last_key_value().map_or(0, |(seq, _)| *seq);
        Ok(commit)
    }

    fn acked(&mut self, source: &str) -> Result<Seq> {
        Ok(self
            .sources
            .get(source)
            .and_then(|held| held.last_key_value())
            .map_or(0, |(seq, _)| *seq))
    }

    fn sources(&mut self) -> Result<Vec<InboxSource>> {
        let mut out: Vec<InboxSource> = self
            .sources
            .iter()
            .filter_map(|(source, held)| {
                let (acked, _) = held.last_key_value()?;
                Some(InboxSource {
                    source: source.clone(),
                    acked: *acked,
                    records: held.len() as u64,
                    last_ts_ms: held.values().map(|(ts, _)| *ts).max().unwrap_or(0),
                })
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(out)
    }

    fn read_between(
        &mut self,
        source: &str,
        after: Seq,
        from_ts_ms: u64,
        to_ts_ms: u64,
        max: usize,
    ) -> Result<Vec<OutboxRecord>> {
        let Some(held) = self.sources.get(source) else {
            return Ok(Vec::new());
        };
        Ok(held
            .range(after.saturating_add(1)..)
            .filter(|(_, (ts_ms, _))| (from_ts_ms..to_ts_ms).contains(ts_ms))
            .take(max)
            .map(|(seq, (ts_ms, payload))| OutboxRecord {
                seq: *seq,
                ts_ms: *ts_ms,
                payload: payload.clone(),
            })
            .collect())
    }
}
