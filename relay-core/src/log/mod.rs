//! Sequenced stream logs: the [`StreamLog`] trait and its backends.
//!
//! A *stream* is one direction of one group (`group:{id}:a_to_b`), one vehicle's uplink, or one
//! command's responses. Its items carry a producer-assigned sequence number ([`Seq`]), dense and
//! starting at 1. The log is byte-level: payloads are opaque [`Bytes`]; serialization happens
//! outside, as in rustls' `StoresServerSessions`.
//!
//! # Semantics shared by every backend
//!
//! * **Dedup by sequence.** `append` stores an item only if its seq is above the highest seq
//!   ever accepted for the stream (the *head*). Anything at or below the head is a duplicate:
//!   counted in [`AppendOutcome::duplicates`], acknowledged again, not stored again. The
//!   cumulative ack is the head after the batch. A batch is processed in order and stored
//!   atomically (all of it or none of it).
//! * **Producer holes are accepted, never hidden.** Seqs should be dense, but when a producer
//!   jumps ahead (for example its server-side memory log was lost in a restart) the items are
//!   stored and the skipped seqs are reported to readers as a [`Gap`] with
//!   [`GapReason::Missing`]. Refusing would wedge the producer forever; hiding would lose data
//!   silently.
//! * **Reads never skip silently.** [`StreamLog::read`] returns at most one gap, first, then
//!   items whose seqs are dense and continue right after the gap (or after the cursor). A read
//!   stops in front of a hole, so the next read reports it. Gaps are derived from our own seqs,
//!   never from the backend (Redis `XRANGE` from a trimmed ID silently starts later).
//! * **Trims remove a prefix.** Retention by age removes the oldest items while their
//!   `ts_ms < now_ms - max_age_ms` (it stops at the first young-enough item even if a later one
//!   is older: producer clocks may step back); retention by length then keeps the newest
//!   `max_len`. Each trim reports exactly how many items it removed and which seq range is now
//!   gone ([`Trimmed`]).
//! * **Cursors** are per `(stream, consumer)` and only stored, never interpreted: the caller
//!   stores the last seq a consumer acknowledged and reads from it after a reconnect.
//!
//! # Backends
//!
//! [`MemoryStreamLog`] (fast, lost on restart), [`SqliteStreamLog`] (embedded durable default),
//! [`RedisStreamLog`] (scale-out). [`StreamLogConfig`] picks one in configuration and documents
//! the durability trade-off of each; [`AnyStreamLog`] dispatches to the chosen one.
//!
//! The on-disk and in-Redis layouts are documented in `docs/storage.md`. They are one format,
//! version [`FORMAT_VERSION`], which the durable backends stamp on their storage and check
//! when they open it.

use std::future::Future;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod any;
mod memory;
mod redis_streams;
mod sqlite;
pub mod sqlite_chunk;

/// The SQLite log's durability level under its former name (the server still uses it);
/// [`Durability`](crate::sqlite::Durability) is the one enum.
pub use crate::sqlite::Durability as SqliteSynchronous;
pub use any::{AnyStreamLog, StreamLogConfig};
pub use memory::MemoryStreamLog;
pub use redis_streams::{RedisStreamLog, RedisStreamTail, TailBatch};
pub use sqlite::SqliteStreamLog;

/// The version of the durable stream logs' storage format (`docs/storage.md`): the SQLite
/// schema, the Redis key layout, and the chunk encoding of [`sqlite_chunk`] that both hold.
/// [`SqliteStreamLog`] keeps it in `PRAGMA user_version`, [`RedisStreamLog`] in the key
/// `{prefix}#format`; each writes it when it creates the storage and refuses storage with
/// another version on open ([`Error::UnsupportedLogFormat`]).
pub const FORMAT_VERSION: u32 = 1;

/// A producer-assigned sequence number: dense per stream, starting at 1, never reused.
pub type Seq = u64;

/// The largest sequence number any backend accepts: 2^53 − 1, so that seqs survive JSON
/// numbers in browsers and Lua numbers in Redis scripts exactly.
pub const MAX_SEQ: Seq = (1 << 53) - 1;

/// Longest accepted stream name, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 200;

/// One item of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Producer sequence number, `1..=MAX_SEQ`.
    pub seq: Seq,
    /// Producer timestamp in milliseconds since the Unix epoch; used for retention by age.
    pub ts_ms: u64,
    /// Opaque payload.
    pub payload: Bytes,
}

/// What an [`StreamLog::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Items stored by this call.
    pub stored: u64,
    /// Items not stored because their seq was at or below the head (retransmissions).
    pub duplicates: u64,
    /// Cumulative acknowledgement: the head (highest seq ever accepted) after this call, 0 for a
    /// stream that never accepted anything.
    pub ack: Seq,
}

/// Why retention removed items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrimReason {
    /// The items were older than `max_age_ms`.
    Age,
    /// The stream held more than `max_len` items.
    Length,
}

impl TrimReason {
    /// Stable lower-case name, as stored by the durable backends.
    pub fn as_str(self) -> &'static str {
        match self {
            TrimReason::Age => "age",
            TrimReason::Length => "length",
        }
    }

    /// Inverse of [`TrimReason::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "age" => Some(TrimReason::Age),
            "length" => Some(TrimReason::Length),
            _ => None,
        }
    }
}

/// Why a reader did not get some seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// Retention removed them. When the gap spans several trims, this is the reason of the most
    /// recent trim (the one that removed the gap's last seq).
    Retention(TrimReason),
    /// The log never held them: the producer skipped these seqs, or a memory log lost them in a
    /// restart.
    Missing,
}

/// Seqs a reader will never get, reported before the items that follow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First missing seq (the reader's cursor + 1).
    pub from: Seq,
    /// Last missing seq.
    pub to: Seq,
    /// Number of missing seqs, `to - from + 1`.
    pub count: u64,
    /// Why they are missing.
    pub reason: GapReason,
}

/// The answer to a [`StreamLog::read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Seqs right after the cursor that are gone, if any. Reported before `items`.
    pub gap: Option<Gap>,
    /// Items with dense seqs starting right after the gap (or after the cursor when there is no
    /// gap). Empty when the reader is caught up, or when the gap is followed by another gap.
    pub items: Vec<Item>,
}

impl ReadBatch {
    /// The seq a consumer has covered after processing this batch (the last item, else the end
    /// of the gap), or `None` when the batch is empty.
    pub fn last_seq(&self) -> Option<Seq> {
        self.items.last().map(|i| i.seq).or(self.gap.map(|g| g.to))
    }
}

/// Retention limits for one stream. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many items (the newest).
    #[serde(default)]
    pub max_len: Option<u64>,
    /// Remove items whose `ts_ms` is older than `now_ms - max_age_ms`.
    #[serde(default)]
    pub max_age_ms: Option<u64>,
}

/// What one retention rule removed, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trimmed {
    /// Number of items removed (exact, on every backend).
    pub count: u64,
    /// Lowest removed seq.
    pub first: Seq,
    /// After this trim no item at or below `last` remains: it is the seq before the first
    /// survivor, or the head when the stream was emptied. With dense seqs this is the highest
    /// removed seq and `last - first + 1 == count`.
    pub last: Seq,
    /// Which rule removed them.
    pub reason: TrimReason,
}

/// Items a consumer still has to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Stored items with a seq above the cursor (gaps not counted).
    pub count: u64,
    /// Lowest such seq.
    pub oldest_seq: Option<Seq>,
    /// Highest such seq.
    pub newest_seq: Option<Seq>,
    /// Timestamp of the oldest such item, for "oldest pending age".
    pub oldest_ts_ms: Option<u64>,
    /// The stream's head: highest seq ever accepted (0 if none).
    pub head: Seq,
}

/// A log of sequenced items per stream. See the [module docs](self) for the semantics every
/// implementation follows; the conformance suite in `tests/log_conformance.rs` checks them.
///
/// Methods return `Send` futures so generic callers can run them inside `tokio::spawn`.
/// Implementations never block the async runtime.
pub trait StreamLog: Send + Sync {
    /// Appends `items` in order. Items at or below the head are counted as duplicates and not
    /// stored. The batch is atomic: on error nothing was stored. Refuses seqs outside
    /// `1..=MAX_SEQ` ([`Error::InvalidSeq`]) and timestamps above `MAX_SEQ`
    /// ([`Error::InvalidTimestamp`]) before storing anything.
    fn append(
        &self,
        stream: &str,
        items: &[Item],
    ) -> impl Future<Output = Result<AppendOutcome>> + Send;

    /// Reads up to `max` items after seq `after`, with a [`Gap`] first when seq `after + 1` is
    /// gone. `max == 0` returns only the gap, if any. A stored item whose timestamp or payload
    /// cannot be read back (storage damage, another writer) comes out with `ts_ms` 0 or an
    /// empty payload rather than failing the read, which would stall the stream: an empty
    /// payload is refused by the caller's decoder (the relay reports it as a `corrupt` gap); a
    /// timestamp of 0 only makes the item the first to go under age retention.
    fn read(
        &self,
        stream: &str,
        after: Seq,
        max: usize,
    ) -> impl Future<Output = Result<ReadBatch>> + Send;

    /// Stores the cursor (last acknowledged seq) of `consumer` on `stream`, replacing the old
    /// one (cursors may move backwards: the caller owns their meaning).
    fn store_cursor(
        &self,
        stream: &str,
        consumer: &str,
        seq: Seq,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Loads the cursor of `consumer` on `stream`, `None` if never stored.
    fn load_cursor(
        &self,
        stream: &str,
        consumer: &str,
    ) -> impl Future<Output = Result<Option<Seq>>> + Send;

    /// Applies `retention` at time `now_ms`: first by age, then by length. Returns one
    /// [`Trimmed`] per rule that removed something (age first), empty when nothing was removed.
    fn trim(
        &self,
        stream: &str,
        retention: &Retention,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Trimmed>>> + Send;

    /// Reports the stored items after seq `after` and the stream's head.
    fn backlog(&self, stream: &str, after: Seq) -> impl Future<Output = Result<Backlog>> + Send;

    /// Deletes the stream: its items, head, trim record and cursors. Afterwards it is as if it
    /// never existed (appends start again at any seq). Returns how many stored items were
    /// removed; deleting an unknown stream removes nothing and is not an error.
    fn delete(&self, stream: &str) -> impl Future<Output = Result<u64>> + Send;
}

/// Checks a stream name: 1..=[`MAX_STREAM_NAME_LEN`] bytes, no control characters, no `#`
/// (the Redis backend uses `#` to derive its side keys).
pub fn validate_stream_name(stream: &str) -> Result<()> {
    let reason = if stream.is_empty() {
        "empty"
    } else if stream.len() > MAX_STREAM_NAME_LEN {
        "longer than 200 bytes"
    } else if stream.contains('#') {
        "contains '#'"
    } else if stream.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidStreamName {
        stream: stream.to_owned(),
        reason,
    })
}

/// Checks every seq of a batch before anything is stored.
fn validate_batch(stream: &str, items: &[Item]) -> Result<()> {
    for item in items {
        if item.seq == 0 || item.seq > MAX_SEQ {
            return Err(Error::InvalidSeq {
                stream: stream.to_owned(),
                seq: item.seq,
                max: MAX_SEQ,
            });
        }
        if item.ts_ms > MAX_SEQ {
            return Err(Error::InvalidTimestamp {
                stream: stream.to_owned(),
                seq: item.seq,
                ts_ms: item.ts_ms,
            });
        }
    }
    Ok(())
}

/// Per-stream bookkeeping every backend keeps next to the items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamMeta {
    /// Highest seq ever accepted.
    head: Seq,
    /// No item at or below this seq remains because of retention.
    trimmed_through: Seq,
    /// Reason of the most recent trim.
    trim_reason: Option<TrimReason>,
}

impl StreamMeta {
    /// The gap a reader at `after` has to be told about, given `next`, the lowest stored seq
    /// above `after` (if any). Shared by all backends so that they agree to the seq.
    fn gap_after(&self, after: Seq, next: Option<Seq>) -> Option<Gap> {
        let from = after.checked_add(1)?;
        // Everything up to `hi` is not stored.
        let hi = match next {
            Some(n) => n - 1,
            None => self.head,
        };
        if hi < from {
            return None;
        }
        let (to, reason) = match self.trim_reason {
            Some(r) if from <= self.trimmed_through => {
                (hi.min(self.trimmed_through), GapReason::Retention(r))
            }
            _ => (hi, GapReason::Missing),
        };
        Some(Gap {
            from,
            to,
            count: to - from + 1,
            reason,
        })
    }

    /// Whether items may follow the gap in the same batch: only when the gap reaches the next
    /// stored item.
    fn items_follow(gap: Option<&Gap>, next: Option<Seq>) -> bool {
        match (gap, next) {
            (Some(g), Some(n)) => g.to + 1 == n,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

impl StreamMeta {
    /// The batch a reader at `after` gets from `items`, the lowest stored items above `after`
    /// (ascending): the gap before them, then at most `max` of them up to the first hole.
    fn batch_after(&self, after: Seq, mut items: Vec<Item>, max: usize) -> ReadBatch {
        let next = items.first().map(|i| i.seq);
        let gap = self.gap_after(after, next);
        match next {
            Some(start) if StreamMeta::items_follow(gap.as_ref(), next) => {
                items.truncate(max);
                dense_prefix(&mut items, start);
            }
            _ => items.clear(),
        }
        ReadBatch { gap, items }
    }
}

/// Cuts `items` (ascending seqs, all above the reader's position) down to the dense run that
/// starts at `start` — a read stops in front of a hole.
fn dense_prefix(items: &mut Vec<Item>, start: Seq) {
    let keep = items
        .iter()
        .enumerate()
        .take_while(|(i, it)| it.seq == start + *i as u64)
        .count();
    items.truncate(keep);
}
