//! [`StreamOutbox`]: the producer side of one durable stream — its records, acks, cap, drops,
//! renumbering and inbound cursor — with the pending records mirrored in memory so that
//! sending never reads the store.

use std::collections::VecDeque;

use super::rules::{AppendReport, Draft, DropReport, OnAck, Reconciled, SendState};
use super::store::{
    DropCounts, DropReason, NewRecord, OutboxRecord, StoredRecord, StreamId, StreamState,
    validate_key, validate_records,
};
use super::store_thread::{OutboxStoreHandle, StreamLease};
use crate::error::{Error, Result};
use crate::log::Seq;

/// Default for [`StreamConfig::max_records`] (`MAX_LOCAL_RECORDS`, `outbox_max_frames`).
pub const DEFAULT_MAX_LOCAL_RECORDS: u64 = 100_000;

/// Default for [`StreamConfig::mirror_max`].
pub const DEFAULT_MIRROR_MAX: usize = 16_384;

/// Settings of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// The most records stored, uplinked or pending (at least 1). An append beyond it removes
    /// the oldest: uplinked records first, then pending ones, counted.
    pub max_records: u64,
    /// What happens to a record the remote acknowledged.
    pub on_ack: OnAck,
    /// The most pending records kept in memory (at least 1). The oldest pending records are
    /// mirrored; when the sender gets past the mirror it is refilled from the store in one read.
    /// Should exceed the session's send window, so that resending never reads the store.
    pub mirror_max: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_records: DEFAULT_MAX_LOCAL_RECORDS,
            on_ack: OnAck::Delete,
            mirror_max: DEFAULT_MIRROR_MAX,
        }
    }
}

/// A stream's numbers for status reports and dashboards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records stored, uplinked or pending.
    pub stored: u64,
    /// Records the remote has not acknowledged (the queue size).
    pub pending: u64,
    /// Timestamp of the oldest pending record (when it is in memory).
    pub oldest_pending_ts_ms: Option<u64>,
    /// Age of the oldest pending record at `now_ms` (0 if its timestamp is in the future).
    pub oldest_pending_age_ms: Option<u64>,
    /// The last seq assigned (0 if none).
    pub last_seq: Seq,
    /// Every seq at or below this one was acknowledged by the remote.
    pub acked_through: Seq,
    /// The highest seq that may have reached the remote.
    pub sent_through: Seq,
    /// The inbound cursor.
    pub rx_seq: Seq,
    /// Sent records the cap dropped whose arrival the remote has not confirmed yet.
    pub unsettled: u64,
    /// Records dropped before the remote held them, by reason, since the stream was created.
    pub dropped: DropCounts,
    /// `dropped.total()`.
    pub dropped_pending_total: u64,
}

/// The producer side of one durable stream.
///
/// Seqs are dense per stream from 1 and assigned at append; the remote acknowledges
/// cumulatively. The rules ([`append`](Self::append), [`ack`](Self::ack),
/// [`drop_pending`](Self::drop_pending), [`reconcile`](Self::reconcile)) are specified in
/// `docs/protocols/uplink.md` ("Store-and-forward"). Every change is committed to the store
/// (through [`OutboxStoreHandle`], off the async runtime) before this value takes it, so a
/// failed call changes nothing.
///
/// Pending records are mirrored in memory, oldest first, up to
/// [`StreamConfig::mirror_max`]: [`next_batch`](Self::next_batch) serves them without reading
/// the store unless the sender is past the mirror.
///
/// One writer per stream: a second [`open`](Self::open) of the same key through the same
/// handle is refused while this one lives. The calls are not cancel-safe: a call dropped while
/// its commit is in flight leaves this value behind the store, and every later call fails with
/// [`Error::OutboxOutOfStep`] — open the stream again.
#[derive(Debug)]
pub struct StreamOutbox {
    store: OutboxStoreHandle,
    _lease: StreamLease,
    key: String,
    id: StreamId,
    config: StreamConfig,
    next_slot: u64,
    removed_through: u64,
    state: StreamState,
    send: SendState,
    /// Pending records with slots `pending_first_slot .. mirror_end`.
    mirror: VecDeque<StoredRecord>,
    mirror_end: u64,
    busy: bool,
}

impl StreamOutbox {
    /// Opens (creating) the stream `key` in `store`. Every seq assigned before counts as sent
    /// (this process cannot know what the previous one sent).
    pub async fn open(store: &OutboxStoreHandle, key: &str, config: StreamConfig) -> Result<Self> {
        validate_key(key)?;
        if config.max_records == 0 || config.mirror_max == 0 {
            return Err(Error::InvalidUplinkInput {
                reason: "max_records and mirror_max must be at least 1".to_owned(),
            });
        }
        let (stored, lease) = store.open_stream(key).await?;
        let mut outbox = StreamOutbox {
            store: store.clone(),
            _lease: lease,
            key: key.to_owned(),
            id: stored.id,
            config,
            next_slot: stored.next_slot.max(1),
            removed_through: stored.removed_through,
            state: stored.state.clone(),
            send: SendState::default(),
            mirror: VecDeque::new(),
            mirror_end: 0,
            busy: false,
        };
        let draft = outbox.draft();
        if draft.removed_through > draft.last_slot()
            || draft.slot_of(draft.last_seq()) != draft.last_slot() as i64
            || draft.state.acked > draft.last_seq()
        {
            return Err(Error::Corrupt {
                stream: key.to_owned(),
                detail: format!(
                    "outbox numbers do not fit together: next slot {}, removed through {}, {:?}",
                    stored.next_slot, stored.removed_through, stored.state
                ),
            });
        }
        outbox.send.sent_high = draft.last_seq();
        outbox.mirror_end = draft.pending_first_slot();
        outbox.refill().await?;
        Ok(outbox)
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stream's settings.
    pub fn config(&self) -> StreamConfig {
        self.config
    }

    /// The last seq assigned (0 if none).
    pub fn last_seq(&self) -> Seq {
        self.draft().last_seq()
    }

    /// The remote's cumulative ack.
    pub fn acked(&self) -> Seq {
        self.state.acked
    }

    /// Records the remote has not acknowledged.
    pub fn pending(&self) -> u64 {
        self.draft().pending()
    }

    /// Sent records the cap dropped whose arrival the remote has not confirmed yet
    /// ([`OutboxStats::unsettled`]): each is counted as acknowledged or as lost once the
    /// remote's ack or handshake says.
    pub fn unsettled(&self) -> u64 {
        self.state.unsettled.count()
    }

    /// The inbound cursor (the relay's `hello.resume.rx_seq`).
    pub fn rx_seq(&self) -> Seq {
        self.state.rx_seq
    }

    /// The highest seq that may have reached the remote.
    pub fn sent_high(&self) -> Seq {
        self.send.sent_high
    }

    /// The stream's numbers at `now_ms`.
    pub fn stats(&self, now_ms: u64) -> OutboxStats {
        let d = self.draft();
        let oldest = self
            .mirror
            .front()
            .filter(|_| d.pending() > 0)
            .map(|r| r.ts_ms);
        OutboxStats {
            stored: d.stored(),
            pending: d.pending(),
            oldest_pending_ts_ms: oldest,
            oldest_pending_age_ms: oldest.map(|ts| now_ms.saturating_sub(ts)),
            last_seq: d.last_seq(),
            acked_through: self.state.acked,
            sent_through: self.send.sent_high,
            rx_seq: self.state.rx_seq,
            unsettled: self.unsettled(),
            dropped: self.state.dropped,
            dropped_pending_total: self.state.dropped.total(),
        }
    }

    fn check_in_step(&self) -> Result<()> {
        if self.busy {
            return Err(Error::OutboxOutOfStep {
                stream: self.key.clone(),
            });
        }
        Ok(())
    }

    fn draft(&self) -> Draft {
        Draft::new(
            self.id,
            self.config.max_records,
            self.config.on_ack,
            self.next_slot,
            self.removed_through,
            self.state.clone(),
            self.send,
        )
    }

    /// Runs one rule on a draft, commits its writes, then takes its numbers; `appended` are
    /// the records an append stored from `first_slot`, for the mirror.
    async fn change<T>(
        &mut self,
        rule: impl FnOnce(&mut Draft) -> Result<T>,
        appended: Option<(u64, Vec<NewRecord>)>,
    ) -> Result<T> {
        self.check_in_step()?;
        let mut draft = self.draft();
        let out = rule(&mut draft)?;
        let writes = draft.finish();
        if !writes.is_empty() {
            self.busy = true;
            let committed = self.store.commit(writes).await;
            self.busy = false;
            committed?;
        }
        self.next_slot = draft.next_slot;
        self.removed_through = draft.removed_through;
        let pending = draft.pending();
        self.state = draft.state;
        self.send = draft.send;
        self.trim_mirror(appended);
        if self.mirror.is_empty() && pending > 0 {
            // Best effort: a failed read is reported by the next `next_batch`, which retries it.
            let _ = self.refill().await;
        }
        Ok(out)
    }

    /// Drops mirrored records that are no longer pending and mirrors appended ones while the
    /// mirror holds every pending record and has room.
    fn trim_mirror(&mut self, appended: Option<(u64, Vec<NewRecord>)>) {
        let first = self.draft().pending_first_slot();
        while self.mirror.front().is_some_and(|r| r.slot < first) {
            self.mirror.pop_front();
        }
        let complete_before = appended.as_ref().map(|(slot, _)| self.mirror_end == *slot);
        self.mirror_end = self.mirror_end.max(first);
        if let (Some((first_slot, records)), Some(true)) = (appended, complete_before) {
            for (slot, record) in (first_slot..).zip(records) {
                if slot < first {
                    continue;
                }
                if self.mirror.len() >= self.config.mirror_max {
                    break;
                }
                self.mirror.push_back(StoredRecord {
                    slot,
                    ts_ms: record.ts_ms,
                    payload: record.payload,
                });
                self.mirror_end = slot + 1;
            }
        }
    }

    /// Reads pending records past the mirror into it, up to its size.
    async fn refill(&mut self) -> Result<()> {
        let room = self.config.mirror_max.saturating_sub(self.mirror.len());
        if room == 0 || self.mirror_end >= self.next_slot {
            return Ok(());
        }
        let read = self
            .store
            .read(self.id, self.mirror_end.saturating_sub(1), room)
            .await?;
        for record in read {
            if record.slot != self.mirror_end {
                return Err(Error::Corrupt {
                    stream: self.key.clone(),
                    detail: format!(
                        "the store returned slot {} where {} was expected",
                        record.slot, self.mirror_end
                    ),
                });
            }
            self.mirror_end += 1;
            self.mirror.push_back(record);
        }
        Ok(())
    }

    /// Appends `records` in order, assigning them the next seqs, and applies the cap (see
    /// [`AppendReport`]). Refused whole, with [`Error::InvalidUplinkInput`], if a timestamp is
    /// above `MAX_SEQ`.
    pub async fn append(&mut self, records: Vec<NewRecord>) -> Result<AppendReport> {
        validate_records(&records)?;
        let first_slot = self.next_slot;
        let mirrored = records.clone();
        self.change(|d| Ok(d.append(records)), Some((first_slot, mirrored)))
            .await
    }

    /// The remote acknowledged (after durable storage) every seq up to `up_to`; returns how
    /// many held records that covered. An ack above the last seq is refused with
    /// [`Error::UplinkAckAhead`] and changes nothing; an older one changes nothing.
    pub async fn ack(&mut self, up_to: Seq) -> Result<u64> {
        self.change(|d| d.ack(up_to), None).await
    }

    /// Drops every pending record, counted under `reason` (see [`DropReport`]). Seqs of
    /// dropped records that were never sent are given to the next records.
    pub async fn drop_pending(&mut self, reason: DropReason) -> Result<DropReport> {
        self.change(|d| Ok(d.drop_pending(reason)), None).await
    }

    /// Reconciles with the remote's handshake: `remote_acked` is what the remote holds
    /// durably. Call it before sending on a new connection; send from
    /// [`Reconciled::resume_after`].
    pub async fn reconcile(&mut self, remote_acked: Seq) -> Result<Reconciled> {
        self.change(|d| Ok(d.reconcile(remote_acked)), None).await
    }

    /// Stores the inbound cursor.
    pub async fn set_rx(&mut self, rx_seq: Seq) -> Result<()> {
        self.change(
            |d| {
                d.set_rx(rx_seq);
                Ok(())
            },
            None,
        )
        .await
    }

    /// Removes uplinked records taken before `older_than_ts_ms`, oldest first, stopping at the
    /// first younger one; returns how many. Pending records are never removed here.
    pub async fn prune_uplinked(&mut self, older_than_ts_ms: u64) -> Result<u64> {
        let draft = self.draft();
        let last_uplinked = draft.pending_first_slot() - 1;
        let mut through = self.removed_through;
        'scan: while through < last_uplinked {
            let page = usize::try_from(last_uplinked - through)
                .unwrap_or(usize::MAX)
                .min(4096);
            let records = self.store.read(self.id, through, page).await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                if r.slot > last_uplinked || r.ts_ms >= older_than_ts_ms {
                    break 'scan;
                }
                through = r.slot;
            }
        }
        if through == self.removed_through {
            return Ok(0);
        }
        self.change(|d| Ok(d.remove_through(through).uplinked), None)
            .await
    }

    /// Up to `max` pending records with seqs above `after`, in seq order, without marking them
    /// sent.
    pub async fn peek(&mut self, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        self.check_in_step()?;
        let draft = self.draft();
        let first = draft.pending_first_slot();
        let start = u64::try_from(draft.slot_of(after).saturating_add(1))
            .unwrap_or(0)
            .max(first);
        if max == 0 || start > draft.last_slot() {
            return Ok(Vec::new());
        }
        if start >= self.mirror_end {
            self.refill().await?;
        }
        let mut records: Vec<StoredRecord> = Vec::new();
        if start < self.mirror_end {
            let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
            records.extend(self.mirror.iter().skip(skip).take(max).cloned());
        }
        let next = records.last().map_or(start, |r| r.slot + 1);
        if records.len() < max && next <= draft.last_slot() {
            // The batch goes on past the mirror (the sender is further ahead than it holds).
            let more = self
                .store
                .read(self.id, next - 1, max - records.len())
                .await?;
            records.extend(more);
        }
        Ok(with_seqs(&draft, records))
    }

    /// The next batch to send: up to `max` pending records with seqs above `after` (the first
    /// may be higher than `after + 1` when records at the head were dropped), from memory. They
    /// count as sent from now on: their seqs are never given to other records.
    pub async fn next_batch(&mut self, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        let batch = self.peek(after, max).await?;
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            self.send.sent(first.seq, last.seq);
        }
        Ok(batch)
    }

    /// The newest stored records (uplinked or pending) taken at or after `since_ts_ms` with
    /// seqs below `before` (all when `None`), at most `max`, in seq order — the dashboard's
    /// "recent data", page by page. Scanning back stops at the first older record.
    pub async fn recent(
        &self,
        since_ts_ms: u64,
        before: Option<Seq>,
        max: usize,
    ) -> Result<Vec<OutboxRecord>> {
        let draft = self.draft();
        let before_slot = before.map_or(u64::MAX, |seq| {
            u64::try_from(draft.slot_of(seq)).unwrap_or(0)
        });
        let records = self
            .store
            .read_newest(self.id, since_ts_ms, before_slot, max)
            .await?;
        Ok(with_seqs(&draft, records))
    }
}

/// `records` with their seqs.
fn with_seqs(draft: &Draft, records: Vec<StoredRecord>) -> Vec<OutboxRecord> {
    records
        .into_iter()
        .map(|r| OutboxRecord {
            seq: draft.seq_of(r.slot),
            ts_ms: r.ts_ms,
            payload: r.payload,
        })
        .collect()
}
