//! The byte-level store behind every producer stream: [`OutboxStore`] and the values it keeps.
//!
//! A store holds many streams (the agent keeps one per dongle, group and side; the telemetry
//! vehicle one) in one place — one SQLite file for [`super::SqliteOutboxStore`]. It knows no
//! rule: it keeps records under *slots* and a few numbers per stream, and applies the writes
//! [`super::StreamOutbox`] computes, all of one commit atomically. The rules (seqs, acks, the
//! cap, renumbering) live in one place, above it, whatever the backend.
//!
//! **Slots and seqs.** A record is stored under its slot: dense per stream, starting at 1,
//! assigned at append and never changed. Its sequence number on the wire is
//! `slot + seq_offset`, with one offset per stream. Renumbering the held records (to close a hole
//! that drops left, or to follow a remote that is ahead) is therefore one change of the offset,
//! whatever the number of records. Removal is always of a prefix (`RemoveThrough`), so the
//! stored records of a stream are always the slots `removed_through + 1 ..= next_slot - 1`.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::log::{MAX_SEQ, Seq};

/// Longest accepted stream key, in bytes.
pub const MAX_STREAM_KEY_LEN: usize = 256;

/// A stream's number inside its store (stable for the store's lifetime).
pub type StreamId = u64;

/// A record as the producer hands it to the outbox (the outbox assigns the seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// When the record was taken, in milliseconds since the Unix epoch (at most
    /// [`MAX_SEQ`]).
    pub ts_ms: u64,
    /// Opaque payload (its encoding is the producer's business).
    pub payload: Bytes,
}

/// A record with its sequence number, as sent and as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Sequence number on the wire.
    pub seq: Seq,
    /// When the record was taken, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Opaque payload.
    pub payload: Bytes,
}

impl From<&OutboxRecord> for crate::log::Item {
    /// The record as a relay stream item (the dongle agent's `frames` message, the engine's
    /// input): same seq, time and payload.
    fn from(r: &OutboxRecord) -> Self {
        crate::log::Item {
            seq: r.seq,
            ts_ms: r.ts_ms,
            payload: r.payload.clone(),
        }
    }
}

/// A record as a store keeps it: under its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's slot (its seq is `slot + seq_offset`).
    pub slot: u64,
    /// When the record was taken.
    pub ts_ms: u64,
    /// Opaque payload.
    pub payload: Bytes,
}

/// Why pending records were dropped before the remote held them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The stream held more than its cap (`MAX_LOCAL_RECORDS`, `outbox_max_frames`): the oldest
    /// went. The agent's `outbox_full`.
    Overflow,
    /// The remote refused them (the relay's `group_inactive`).
    Refused,
    /// The producer gave the stream up (the agent's `group_changed`).
    Abandoned,
}

impl DropReason {
    /// Stable lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Refused => "refused",
            DropReason::Abandoned => "abandoned",
        }
    }
}

/// Records dropped before the remote held them, by reason, since the stream was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// [`DropReason::Overflow`].
    pub overflow: u64,
    /// [`DropReason::Refused`].
    pub refused: u64,
    /// [`DropReason::Abandoned`].
    pub abandoned: u64,
}

impl DropCounts {
    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.overflow
            .saturating_add(self.refused)
            .saturating_add(self.abandoned)
    }

    /// The count for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Overflow => self.overflow,
            DropReason::Refused => self.refused,
            DropReason::Abandoned => self.abandoned,
        }
    }

    pub(crate) fn add(&mut self, reason: DropReason, n: u64) {
        let slot = match reason {
            DropReason::Overflow => &mut self.overflow,
            DropReason::Refused => &mut self.refused,
            DropReason::Abandoned => &mut self.abandoned,
        };
        *slot = slot.saturating_add(n);
    }
}

/// Most ranges [`Unsettled`] keeps; a further one counts the oldest as lost (an upper bound).
pub const MAX_UNSETTLED_RANGES: usize = 64;

/// Seqs of records that were sent, then dropped by the cap before the remote acknowledged them:
/// disjoint ranges `first ..= last` in ascending order. Usually one range; more only when
/// records known to be lost (counted at once) lie between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsettled(Vec<(Seq, Seq)>);

impl Unsettled {
    /// Ranges `first ..= last`, ascending and disjoint, at most [`MAX_UNSETTLED_RANGES`];
    /// `None` otherwise.
    pub fn new(ranges: Vec<(Seq, Seq)>) -> Option<Self> {
        let ordered = ranges.iter().all(|(a, b)| a <= b)
            && ranges.windows(2).all(|w| w[0].1 < w[1].0)
            && ranges.len() <= MAX_UNSETTLED_RANGES;
        ordered.then_some(Unsettled(ranges))
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(Seq, Seq)] {
        &self.0
    }

    /// How many seqs the ranges hold.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// Adds `first ..= last` (above every range held). Returns how many seqs had to be given up
    /// as lost to stay within [`MAX_UNSETTLED_RANGES`].
    pub(crate) fn add(&mut self, first: Seq, last: Seq) -> u64 {
        if first > last {
            return 0;
        }
        if let Some(top) = self.0.last_mut()
            && top.1 + 1 >= first
        {
            top.1 = top.1.max(last);
            return 0;
        }
        self.0.push((first, last));
        if self.0.len() > MAX_UNSETTLED_RANGES {
            let (a, b) = self.0.remove(0);
            return b - a + 1;
        }
        0
    }

    /// The remote acknowledged every seq up to `up_to` on the connection that carried these:
    /// they were delivered.
    pub(crate) fn delivered_through(&mut self, up_to: Seq) {
        self.0.retain_mut(|(a, b)| {
            *a = (*a).max(up_to.saturating_add(1));
            *a <= *b
        });
    }

    /// The remote holds (durably) everything up to `held_through` and nothing above: returns
    /// how many unsettled seqs are above it — lost — and forgets them all.
    pub(crate) fn settle(&mut self, held_through: Seq) -> u64 {
        self.delivered_through(held_through);
        let lost = self.count();
        self.0.clear();
        lost
    }

    /// The ranges as bytes (16 per range: first and last seq, little-endian), as the SQLite
    /// store keeps them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes()))
            .collect()
    }

    /// The inverse of [`to_bytes`](Self::to_bytes); `None` for bytes it did not write.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        let word = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
        let ranges = bytes
            .chunks_exact(16)
            .map(|c| Some((word(&c[..8])?, word(&c[8..])?)))
            .collect::<Option<Vec<_>>>()?;
        Self::new(ranges)
    }
}

/// The numbers of a stream that the rules maintain and the store only keeps
/// ([`StreamWrite::State`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// A record's seq is its slot plus this.
    pub seq_offset: i64,
    /// The remote's cumulative ack (raised by renumbering: seqs at or below it are never sent
    /// again).
    pub acked: Seq,
    /// The inbound cursor: the last seq of the other direction the producer fully processed
    /// (the relay's `hello.resume.rx_seq`). Kept, never interpreted.
    pub rx_seq: Seq,
    /// Records that had been sent and were then dropped by the cap, that may or may not have
    /// reached the remote. An ack covering them settles them as delivered; the remote's next
    /// handshake settles the rest as lost (counted then).
    pub unsettled: Unsettled,
    /// Records dropped before the remote held them.
    pub dropped: DropCounts,
}

/// A stream as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    /// The stream's number in this store.
    pub id: StreamId,
    /// The slot the next appended record gets (1 for a new stream).
    pub next_slot: u64,
    /// Every slot at or below this one was removed.
    pub removed_through: u64,
    /// The rules' numbers.
    pub state: StreamState,
}

/// One change to a store. [`OutboxStore::commit`] applies a list of them atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamWrite {
    /// Store `records` under the slots `first_slot ..`; `first_slot` must be the stream's
    /// `next_slot`, which moves past them.
    Append {
        /// The stream.
        stream: StreamId,
        /// Slot of the first record.
        first_slot: u64,
        /// The records, in order (at least one).
        records: Vec<NewRecord>,
    },
    /// Remove every record with a slot at or below `slot` (a prefix; never below what was
    /// already removed, never above the last slot).
    RemoveThrough {
        /// The stream.
        stream: StreamId,
        /// Last slot removed.
        slot: u64,
    },
    /// Replace the stream's [`StreamState`].
    State {
        /// The stream.
        stream: StreamId,
        /// The new numbers.
        state: StreamState,
    },
}

/// A durable (or in-memory) home for many producer streams.
///
/// Byte-level and rule-free: it stores what it is told, under slots, and answers reads.
/// Methods are synchronous (SQLite blocks); async code reaches a store through
/// [`super::OutboxStoreHandle`], which runs it on a thread of its own. Every method is atomic:
/// on error nothing changed.
pub trait OutboxStore: Send {
    /// Opens the stream named `key`, creating it empty (next slot 1, all numbers 0) if the store
    /// does not hold it.
    fn open_stream(&mut self, key: &str) -> Result<StoredStream>;

    /// Up to `max` stored records of `stream` with a slot above `after_slot`, in slot order.
    fn read(&mut self, stream: StreamId, after_slot: u64, max: usize) -> Result<Vec<StoredRecord>>;

    /// The newest stored records of `stream` below `before_slot` taken at or after
    /// `since_ts_ms`, at most `max`, in slot order. Scanning goes back from `before_slot` and
    /// stops at the first record taken before `since_ts_ms` (records are taken in order; a clock
    /// that stepped back ends the scan early rather than making it read everything).
    fn read_newest(
        &mut self,
        stream: StreamId,
        since_ts_ms: u64,
        before_slot: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>>;

    /// Applies `writes` in order, all or none.
    fn commit(&mut self, writes: &[StreamWrite]) -> Result<()>;
}

/// Checks a stream key before any store sees it.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    validate_name("outbox stream key", key, MAX_STREAM_KEY_LEN)
}

/// Checks a name a store keys rows by (`what` says which, for the error): 1 to `max` bytes,
/// no control character.
pub(crate) fn validate_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(Error::InvalidUplinkInput {
            reason: format!("{what} must be 1..={max} bytes"),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidUplinkInput {
            reason: format!("{what} contains a control character"),
        });
    }
    Ok(())
}

/// Checks the records of an append before anything is stored.
pub(crate) fn validate_records(records: &[NewRecord]) -> Result<()> {
    if let Some(bad) = records.iter().find(|r| r.ts_ms > MAX_SEQ) {
        return Err(Error::InvalidUplinkInput {
            reason: format!("record timestamp {} is above {MAX_SEQ}", bad.ts_ms),
        });
    }
    Ok(())
}

/// The error a store returns for a write that does not fit the stream (the caller broke the
/// one-writer-per-stream rule, or the store was changed behind its back).
pub(crate) fn out_of_order(stream: StreamId, detail: String) -> Error {
    Error::Corrupt {
        stream: format!("outbox stream #{stream}"),
        detail,
    }
}
