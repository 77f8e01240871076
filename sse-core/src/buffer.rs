//! The sans-IO ring buffer of one stream, and the cursors subscribers read it with.
//!
//! Every event gets an absolute index (`first_index + position`). A subscriber holds only a
//! [`StreamCursor`] (the next absolute index it wants), never a copy of the events, so a stalled
//! subscriber costs a few bytes whatever happens to the stream. Trimming (by count and by each
//! event's age) moves `first_index` forward; a cursor left behind gets exactly one
//! [`StreamReset`] and continues from the oldest retained event.
//!
//! Resume never scans: IDs are strictly increasing, so finding an ID is a binary search over the
//! deque (`O(log n)`).
//!
//! Many buffers may share one [`HistoryLedger`]: it counts the bytes every attached buffer
//! retains, by publish time, so that a hub can hold all its streams to one global budget by
//! trimming the oldest events across streams first ([`StreamBuffer::trim_published_before`]).
//! Such trims follow the same reset rules as count and age trims.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::SseError;
use crate::id::EventId;

/// Default count bound of a stream buffer.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;
/// Default age bound of a stream buffer, in milliseconds.
pub const DEFAULT_MAX_AGE_MS: u64 = 60_000;

/// How much history one stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamBounds {
    /// Most events kept; older ones are trimmed first. At least 1.
    pub max_events: usize,
    /// Oldest event age kept, in ms: an event published at `t` is trimmed once `now - t > max_age_ms`.
    pub max_age_ms: u64,
}

impl Default for StreamBounds {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_MAX_EVENTS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        }
    }
}

/// One event as stored in a stream buffer and handed to subscribers (shared, never copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its ID, unique and increasing within the stream.
    pub id: EventId,
    /// The SSE event type (`can_frame`, `log`, …).
    pub event_type: String,
    /// The payload, one JSON object for console events (any text is allowed).
    pub data: String,
    /// When it was published, in ms on the hub clock; the age bound uses it.
    pub published_ms: u64,
}

/// Why a subscriber got a `stream_reset` instead of an exact resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResetReason {
    /// The requested ID was trimmed from the buffer (older than the oldest retained event).
    TooOld,
    /// The requested ID is newer than the latest event ever published on this stream.
    NewerThanLatest,
    /// The requested ID was issued by an earlier process (before this backend started).
    EarlierProcess,
    /// The requested ID is not of the form `<ms>-<n>`.
    Malformed,
    /// The requested ID lies within the retained range but was never issued.
    UnknownId,
    /// The subscriber read too slowly and the events it had not read yet were trimmed.
    Lagged,
}

/// The payload of a `stream_reset` event: `{requested, oldest, latest, reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReset {
    /// The ID the subscriber asked to resume after (or the last one it was given, for `lagged`).
    pub requested: Option<String>,
    /// The oldest retained ID (the next event the subscriber gets), if any.
    pub oldest: Option<String>,
    /// The latest ID published on the stream, if any.
    pub latest: Option<String>,
    /// Why.
    pub reason: ResetReason,
}

/// What a subscriber receives: an event from the buffer, or a `stream_reset` notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A published event (shared with every other subscriber).
    Event(Arc<StoredEvent>),
    /// The stream could not be resumed exactly; what follows starts at `oldest`.
    Reset(Box<StreamReset>),
}

/// A subscriber's position in one stream buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCursor {
    /// Absolute index of the next event to read.
    next: u64,
    /// The last ID handed out through this cursor (for `lagged` resets).
    last_seen: Option<EventId>,
}

/// Where a new subscription starts, as decided by [`StreamBuffer::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPosition {
    /// The cursor to read with.
    pub cursor: StreamCursor,
    /// The reset to deliver first, when the requested ID could not be resumed exactly.
    pub reset: Option<StreamReset>,
}

/// Counters of what trimming removed (nothing leaves silently).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimCounters {
    /// Events trimmed because the count bound was reached.
    pub by_count: u64,
    /// Events trimmed because they were older than the age bound.
    pub by_age: u64,
    /// Events trimmed to hold a [`HistoryLedger`]'s global budget.
    pub by_budget: u64,
}

impl TrimCounters {
    /// Everything trimmed, whatever the reason.
    pub fn total(&self) -> u64 {
        self.by_count + self.by_age + self.by_budget
    }
}

/// Bytes charged for one retained event besides its type and data: the shared event record,
/// its reference counts and its slot in the deque.
const EVENT_OVERHEAD_BYTES: u64 = (std::mem::size_of::<StoredEvent>() + 16 + 8) as u64;

/// Width of a ledger's time buckets: a budget trim removes every event of the oldest buckets,
/// so events published within this many ms of each other are trimmed together.
pub const LEDGER_BUCKET_MS: u64 = 100;

/// What the bytes charged for an event of `event_type` with `data` are.
pub fn event_cost(event_type: &str, data: &str) -> u64 {
    (event_type.len() + data.len()) as u64 + EVENT_OVERHEAD_BYTES
}

/// The bytes retained by a set of stream buffers, by publish time in [`LEDGER_BUCKET_MS`]
/// buckets. Buffers attached with [`StreamBuffer::with_ledger`] charge every event on push and
/// credit it when it leaves, whatever the reason (trim or drop of the buffer), so the totals are
/// exact; the hub decides when to trim ([`HistoryLedger::cutoff_for`]).
#[derive(Debug, Default)]
pub struct HistoryLedger {
    inner: Mutex<LedgerInner>,
}

#[derive(Debug, Default)]
struct LedgerInner {
    /// Bucket start (ms) → bytes of retained events published in that bucket.
    buckets: BTreeMap<u64, u64>,
    bytes: u64,
    events: u64,
}

impl HistoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        // Every update is a few integer operations that cannot panic halfway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn charge(&self, published_ms: u64, cost: u64) {
        let mut l = self.lock();
        *l.buckets
            .entry(published_ms - published_ms % LEDGER_BUCKET_MS)
            .or_default() += cost;
        l.bytes += cost;
        l.events += 1;
    }

    fn credit(&self, published_ms: u64, cost: u64) {
        let mut l = self.lock();
        let bucket = published_ms - published_ms % LEDGER_BUCKET_MS;
        if let Some(bytes) = l.buckets.get_mut(&bucket) {
            *bytes = bytes.saturating_sub(cost);
            if *bytes == 0 {
                l.buckets.remove(&bucket);
            }
        }
        l.bytes = l.bytes.saturating_sub(cost);
        l.events = l.events.saturating_sub(1);
    }

    /// Bytes retained by the attached buffers.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Events retained by the attached buffers.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// The publish time before which every event must go so that at most `target` bytes remain
    /// (rounded to whole buckets, so a little less may remain), or `None` when the attached
    /// buffers already hold no more than `target`.
    pub fn cutoff_for(&self, target: u64) -> Option<u64> {
        let l = self.lock();
        if l.bytes <= target {
            return None;
        }
        let mut remaining = l.bytes;
        for (&start, &bytes) in &l.buckets {
            remaining = remaining.saturating_sub(bytes);
            if remaining <= target {
                return Some(start + LEDGER_BUCKET_MS);
            }
        }
        l.buckets
            .keys()
            .next_back()
            .map(|start| start + LEDGER_BUCKET_MS)
    }
}

/// The bounded history of one stream. Pure data structure: the caller passes the time.
#[derive(Debug)]
pub struct StreamBuffer {
    events: VecDeque<Arc<StoredEvent>>,
    first_index: u64,
    bounds: StreamBounds,
    /// No ID issued by this buffer is below `origin_ms`; an ID below it comes from an earlier process.
    origin_ms: u64,
    last_issued: Option<EventId>,
    last_trimmed: Option<EventId>,
    trimmed: TrimCounters,
    /// Bytes retained, as [`event_cost`] counts them.
    bytes: u64,
    ledger: Option<Arc<HistoryLedger>>,
}

/// Check an event type: non-empty, no CR, LF or NUL (it goes on one `event:` line).
pub fn validate_event_type(event_type: &str) -> Result<(), SseError> {
    if event_type.is_empty() || event_type.contains(['\r', '\n', '\0']) {
        return Err(SseError::InvalidEventType {
            value: event_type.to_owned(),
        });
    }
    Ok(())
}

impl StreamBuffer {
    /// An empty buffer whose IDs start at `origin_ms` or later.
    pub fn new(bounds: StreamBounds, origin_ms: u64) -> Self {
        Self {
            events: VecDeque::new(),
            first_index: 0,
            bounds: StreamBounds {
                max_events: bounds.max_events.max(1),
                ..bounds
            },
            origin_ms,
            last_issued: None,
            last_trimmed: None,
            trimmed: TrimCounters::default(),
            bytes: 0,
            ledger: None,
        }
    }

    /// An empty buffer that charges what it retains to `ledger`.
    pub fn with_ledger(bounds: StreamBounds, origin_ms: u64, ledger: Arc<HistoryLedger>) -> Self {
        let mut buffer = Self::new(bounds, origin_ms);
        buffer.ledger = Some(ledger);
        buffer
    }

    /// Change the bounds; they apply from the next trim.
    pub fn set_bounds(&mut self, bounds: StreamBounds) {
        self.bounds = StreamBounds {
            max_events: bounds.max_events.max(1),
            ..bounds
        };
    }

    /// The current bounds.
    pub fn bounds(&self) -> StreamBounds {
        self.bounds
    }

    /// Append an event at `now_ms`, give it the next ID, trim, and return it.
    pub fn push(
        &mut self,
        event_type: &str,
        data: &str,
        now_ms: u64,
    ) -> Result<Arc<StoredEvent>, SseError> {
        validate_event_type(event_type)?;
        let id = EventId::next_after(self.last_issued, self.origin_ms, now_ms);
        let event = Arc::new(StoredEvent {
            id,
            event_type: event_type.to_owned(),
            data: data.to_owned(),
            published_ms: now_ms,
        });
        self.last_issued = Some(id);
        let cost = event_cost(event_type, data);
        self.bytes += cost;
        if let Some(ledger) = &self.ledger {
            ledger.charge(now_ms, cost);
        }
        self.events.push_back(Arc::clone(&event));
        self.trim(now_ms);
        Ok(event)
    }

    /// Drop events beyond the count bound and every event older than the age bound.
    pub fn trim(&mut self, now_ms: u64) {
        while self.events.len() > self.bounds.max_events {
            self.pop_front();
            self.trimmed.by_count += 1;
        }
        while let Some(front) = self.events.front() {
            if now_ms.saturating_sub(front.published_ms) <= self.bounds.max_age_ms {
                break;
            }
            self.pop_front();
            self.trimmed.by_age += 1;
        }
    }

    /// Drop every event published before `cutoff_ms` (a global budget's trim, see
    /// [`HistoryLedger::cutoff_for`]). Returns how many were dropped.
    pub fn trim_published_before(&mut self, cutoff_ms: u64) -> u64 {
        let mut dropped = 0;
        while self
            .events
            .front()
            .is_some_and(|front| front.published_ms < cutoff_ms)
        {
            self.pop_front();
            dropped += 1;
        }
        self.trimmed.by_budget += dropped;
        dropped
    }

    fn pop_front(&mut self) {
        if let Some(ev) = self.events.pop_front() {
            self.last_trimmed = Some(ev.id);
            self.first_index += 1;
            let cost = event_cost(&ev.event_type, &ev.data);
            self.bytes -= cost;
            if let Some(ledger) = &self.ledger {
                ledger.credit(ev.published_ms, cost);
            }
        }
    }

    /// Bytes retained, as [`event_cost`] counts them.
    pub fn retained_bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of retained events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Absolute index one past the newest event.
    pub fn end_index(&self) -> u64 {
        self.first_index + self.events.len() as u64
    }

    /// The oldest retained ID.
    pub fn oldest(&self) -> Option<EventId> {
        self.events.front().map(|e| e.id)
    }

    /// The latest ID ever issued (it may have been trimmed since).
    pub fn latest(&self) -> Option<EventId> {
        self.last_issued
    }

    /// What trimming removed so far.
    pub fn trim_counters(&self) -> TrimCounters {
        self.trimmed
    }

    /// Decide where a subscription that last saw `requested` starts. `None` means live only.
    /// Binary search over the ordered IDs: no scan, whatever the depth.
    pub fn locate(&self, requested: Option<&str>) -> StartPosition {
        let Some(raw) = requested else {
            return self.exact(self.end_index(), self.last_issued);
        };
        let Ok(id) = raw.parse::<EventId>() else {
            return self.reset_start(raw, ResetReason::Malformed);
        };
        if Some(id) == self.last_issued {
            return self.exact(self.end_index(), Some(id));
        }
        if Some(id) == self.last_trimmed {
            return self.exact(self.first_index, Some(id));
        }
        match self.events.binary_search_by(|e| e.id.cmp(&id)) {
            Ok(pos) => self.exact(self.first_index + pos as u64 + 1, Some(id)),
            Err(_) => {
                let reason = if id.ms < self.origin_ms {
                    ResetReason::EarlierProcess
                } else if self.last_issued.is_none_or(|latest| id > latest) {
                    ResetReason::NewerThanLatest
                } else if self.oldest().is_none_or(|oldest| id < oldest) {
                    ResetReason::TooOld
                } else {
                    ResetReason::UnknownId
                };
                self.reset_start(raw, reason)
            }
        }
    }

    fn exact(&self, next: u64, last_seen: Option<EventId>) -> StartPosition {
        StartPosition {
            cursor: StreamCursor { next, last_seen },
            reset: None,
        }
    }

    fn reset_start(&self, requested: &str, reason: ResetReason) -> StartPosition {
        StartPosition {
            cursor: StreamCursor {
                next: self.first_index,
                last_seen: None,
            },
            reset: Some(self.reset(Some(requested.to_owned()), reason)),
        }
    }

    fn reset(&self, requested: Option<String>, reason: ResetReason) -> StreamReset {
        StreamReset {
            requested,
            oldest: self.oldest().map(|id| id.to_string()),
            latest: self.last_issued.map(|id| id.to_string()),
            reason,
        }
    }

    /// Read up to `max` items after `cursor` into `out` and advance it. A cursor that fell
    /// behind the buffer yields one `lagged` reset and moves to the oldest event. Returns how many
    /// buffer positions the cursor advanced, so callers can tell "nothing new" (0) apart.
    pub fn read(&self, cursor: &mut StreamCursor, out: &mut Vec<StreamItem>, max: usize) -> usize {
        let mut advanced = 0;
        if cursor.next < self.first_index {
            let requested = cursor.last_seen.map(|id| id.to_string());
            out.push(StreamItem::Reset(Box::new(
                self.reset(requested, ResetReason::Lagged),
            )));
            advanced += (self.first_index - cursor.next) as usize;
            cursor.next = self.first_index;
        }
        let start = (cursor.next - self.first_index) as usize;
        for ev in self.events.range(start.min(self.events.len())..).take(max) {
            cursor.next += 1;
            cursor.last_seen = Some(ev.id);
            advanced += 1;
            out.push(StreamItem::Event(Arc::clone(ev)));
        }
        advanced
    }

    /// Whether `cursor` has read everything currently in the buffer.
    pub fn is_caught_up(&self, cursor: &StreamCursor) -> bool {
        cursor.next >= self.end_index()
    }
}

impl Drop for StreamBuffer {
    fn drop(&mut self) {
        if let Some(ledger) = &self.ledger {
            for ev in &self.events {
                ledger.credit(ev.published_ms, event_cost(&ev.event_type, &ev.data));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[StreamItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                StreamItem::Event(e) => e.id.to_string(),
                StreamItem::Reset(r) => format!("reset:{:?}", r.reason),
            })
            .collect()
    }

    #[test]
    fn resume_from_middle_is_exact() {
        let mut b = StreamBuffer::new(StreamBounds::default(), 1000);
        let evs: Vec<_> = (0..5)
            .map(|i| b.push("log", &i.to_string(), 1000).expect("push"))
            .collect();
        let mut start = b.locate(Some(&evs[1].id.to_string()));
        assert!(start.reset.is_none());
        let mut out = Vec::new();
        b.read(&mut start.cursor, &mut out, 100);
        assert_eq!(ids(&out), ["1000-2", "1000-3", "1000-4"]);
    }

    #[test]
    fn classifies_reset_reasons() {
        let mut b = StreamBuffer::new(
            StreamBounds {
                max_events: 3,
                max_age_ms: 60_000,
            },
            1000,
        );
        for t in 0..6 {
            b.push("log", "x", 1000 + t * 10).expect("push");
        }
        let reason = |s: &str| b.locate(Some(s)).reset.map(|r| r.reason);
        assert_eq!(reason("junk"), Some(ResetReason::Malformed));
        assert_eq!(reason("999-0"), Some(ResetReason::EarlierProcess));
        assert_eq!(reason("1000-0"), Some(ResetReason::TooOld));
        assert_eq!(
            reason("1020-0"),
            None,
            "the last trimmed id resumes exactly"
        );
        assert_eq!(reason("1035-0"), Some(ResetReason::UnknownId));
        assert_eq!(reason("1050-1"), Some(ResetReason::NewerThanLatest));
        assert_eq!(reason("1050-0"), None);
    }
}
