//! The vehicle-side outbox: records waiting to be uplinked, behind one small trait.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::log::Seq;

/// Default for [`OutboxConfig::max_local_records`] (`MAX_LOCAL_RECORDS`).
pub const DEFAULT_MAX_LOCAL_RECORDS: u64 = 100_000;

/// A record as the collector hands it to the outbox (the outbox assigns the seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// When the record was taken, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Opaque payload (the telemetry encoding is the collector's business).
    pub payload: Bytes,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Sequence number assigned by the outbox: dense at append, starting at 1, never reused
    /// (not even after every record was pruned).
    pub seq: Seq,
    /// When the record was taken, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Opaque payload.
    pub payload: Bytes,
}

/// Outbox settings shared by every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// `MAX_LOCAL_RECORDS`: the most records kept locally, uplinked or not. See
    /// [`UplinkOutbox::append`] for the overflow policy.
    pub max_local_records: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_local_records: DEFAULT_MAX_LOCAL_RECORDS,
        }
    }
}

/// What one [`UplinkOutbox::append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Seq of the first appended record (0 when the batch was empty).
    pub first_seq: Seq,
    /// Seq of the last appended record (0 when the batch was empty).
    pub last_seq: Seq,
    /// Already-uplinked records removed to make room (no data lost: the remote has them).
    pub pruned_uplinked: u64,
    /// Not-yet-uplinked records dropped to stay under the cap: data the remote will never get.
    pub dropped_pending: u64,
}

/// Queue statistics for the uplink status report and the local dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records stored, uplinked or not.
    pub stored: u64,
    /// Records not yet acknowledged by the remote (the queue size).
    pub pending: u64,
    /// Timestamp of the oldest (lowest-seq) pending record.
    pub oldest_pending_ts_ms: Option<u64>,
    /// Age of the oldest (lowest-seq) pending record at `now_ms` (0 if its timestamp is in the
    /// future).
    pub oldest_pending_age_ms: Option<u64>,
    /// Highest seq ever assigned (0 if none).
    pub last_seq: Seq,
    /// Every seq at or below this one was acknowledged by the remote.
    pub acked_through: Seq,
    /// Pending records dropped by the overflow policy since the outbox was created.
    pub dropped_pending_total: u64,
}

/// The vehicle's durable queue of telemetry records.
///
/// Records get dense seqs at append. A record is *pending* until the remote acknowledged it
/// (cumulatively, by seq: [`UplinkOutbox::mark_uplinked`]), then *uplinked*; uplinked records stay
/// for the local dashboard until pruned.
///
/// **Overflow policy** (`MAX_LOCAL_RECORDS`): when an append would leave more than
/// `max_local_records` stored, the outbox first removes the oldest uplinked records, then the
/// oldest pending records. Both are counted in the [`AppendReport`]; dropped pending records
/// are also added to [`OutboxStats::dropped_pending_total`] (persisted). A batch larger than the
/// cap keeps only its newest records.
///
/// The trait is synchronous (SQLite is a blocking library); async callers run it on a blocking
/// thread. Every method is atomic: on error nothing changed.
pub trait UplinkOutbox: Send {
    /// Appends records in order, assigning them the next seqs, and applies the overflow policy.
    fn append(&mut self, records: &[NewRecord]) -> Result<AppendReport>;

    /// Up to `max` pending records with seq `> after`, in seq order.
    fn fetch_pending(&mut self, after: Seq, max: usize) -> Result<Vec<OutboxRecord>>;

    /// Marks every record with seq `<= up_to` uplinked (the remote acknowledged durable storage).
    /// Returns how many stored records became uplinked. An ack below the current one changes
    /// nothing; an ack above the last assigned seq is refused with [`Error::UplinkAckAhead`].
    fn mark_uplinked(&mut self, up_to: Seq) -> Result<u64>;

    /// Removes uplinked records taken before `older_than_ts_ms`; returns how many. Pending records
    /// are never removed here.
    fn prune_uplinked(&mut self, older_than_ts_ms: u64) -> Result<u64>;

    /// The newest records (uplinked or not) taken at or after `since_ts_ms`, at most `max`, in
    /// seq order — the local dashboard's "recent data" query.
    fn recent(&mut self, since_ts_ms: u64, max: usize) -> Result<Vec<OutboxRecord>>;

    /// Queue statistics at `now_ms`.
    fn stats(&mut self, now_ms: u64) -> Result<OutboxStats>;
}

pub(crate) fn check_ack(up_to: Seq, last_seq: Seq) -> Result<()> {
    if up_to > last_seq {
        Err(Error::UplinkAckAhead {
            acked: up_to,
            sent: last_seq,
        })
    } else {
        Ok(())
    }
}
