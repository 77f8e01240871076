//! The remote-side inbox: durable storage of uplinked records, deduplicated by (source, seq).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::store::OutboxRecord;
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

    /// Up to `max` stored records of `source` with seq `> after`, in seq order.
    fn read(&mut self, source: &str, after: Seq, max: usize) -> Result<Vec<OutboxRecord>>;
}

/// Checks a source id and a batch before anything is stored.
pub(crate) fn validate_commit(source: &str, records: &[OutboxRecord]) -> Result<()> {
    if source.is_empty() || source.len() > MAX_SOURCE_LEN {
        return Err(Error::InvalidUplinkInput {
            reason: format!("source id must be 1..={MAX_SOURCE_LEN} bytes"),
        });
    }
    if source.chars().any(char::is_control) {
        return Err(Error::InvalidUplinkInput {
            reason: "source id contains a control character".to_owned(),
        });
    }
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

    fn read(&mut self, source: &str, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        let Some(held) = self.sources.get(source) else {
            return Ok(Vec::new());
        };
        Ok(held
            .range(after.saturating_add(1)..)
            .take(max)
            .map(|(seq, (ts_ms, payload))| OutboxRecord {
                seq: *seq,
                ts_ms: *ts_ms,
                payload: payload.clone(),
            })
            .collect())
    }
}
