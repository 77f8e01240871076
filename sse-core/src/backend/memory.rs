//! In-memory backend: one [`StreamBuffer`] per stream key, shared by all subscribers of this
//! process. History is lost when the process ends; IDs of the next process start at its own start
//! time, so old IDs are recognised (`earlier_process`) instead of matching by accident.
//!
//! Besides each stream's own bounds, a hub built with [`MemoryBackend::with_budget`] holds all
//! its streams to one byte budget: when a publish takes the retained total over it, the oldest
//! events across all streams are trimmed (in [`LEDGER_BUCKET_MS`] steps) until the total is back
//! under 90 % of the budget. A subscriber that loses unread events that way gets the usual
//! `lagged` reset; a resume from a trimmed ID gets `too_old`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{Clock, EventBackend, StreamConfig, StreamPosition, Subscription, validate_stream_key};
use crate::buffer::{HistoryLedger, LEDGER_BUCKET_MS, StreamBuffer, StreamCursor, StreamItem};
use crate::error::SseError;
use crate::id::EventId;

/// How many items a subscriber takes from the buffer per lock.
const READ_BATCH: usize = 16;

#[derive(Debug)]
struct StreamState {
    buffer: StreamBuffer,
    config: StreamConfig,
}

#[derive(Debug)]
struct SharedStream {
    state: Mutex<StreamState>,
    /// Bumped on every publish; subscribers wait on it when caught up.
    published: watch::Sender<u64>,
}

impl SharedStream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding the lock cannot leave the buffer half-updated in a way readers
        // could misinterpret (push is append-then-trim), so recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The in-memory hub.
#[derive(Debug)]
pub struct MemoryBackend {
    clock: Arc<dyn Clock>,
    origin_ms: u64,
    default_config: StreamConfig,
    streams: Mutex<HashMap<String, Arc<SharedStream>>>,
    budget: Option<Budget>,
}

/// A global history budget and what holding it has cost.
#[derive(Debug)]
struct Budget {
    max_bytes: u64,
    ledger: Arc<HistoryLedger>,
    /// Events trimmed to hold the budget, over all streams (also those since forgotten).
    trimmed: AtomicU64,
    /// Held while one publisher sweeps the streams; others skip the sweep meanwhile.
    sweeping: Mutex<()>,
}

/// Memory use of a hub's whole history, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryStats {
    /// Bytes retained over all streams (event type, data and bookkeeping per event).
    pub bytes: u64,
    /// Events retained over all streams.
    pub events: u64,
    /// The global budget, if the hub has one.
    pub budget_bytes: Option<u64>,
    /// Events trimmed to hold the budget so far.
    pub trimmed_by_budget: u64,
}

impl MemoryBackend {
    /// A hub whose IDs start at the clock's current reading, bounded per stream only.
    pub fn new(clock: Arc<dyn Clock>, default_config: StreamConfig) -> Self {
        let origin_ms = clock.now_ms();
        Self {
            clock,
            origin_ms,
            default_config,
            streams: Mutex::new(HashMap::new()),
            budget: None,
        }
    }

    /// A hub whose streams together retain at most about `max_bytes` (see the module docs),
    /// besides each stream's own bounds.
    pub fn with_budget(
        clock: Arc<dyn Clock>,
        default_config: StreamConfig,
        max_bytes: u64,
    ) -> Self {
        Self {
            budget: Some(Budget {
                max_bytes,
                ledger: Arc::new(HistoryLedger::new()),
                trimmed: AtomicU64::new(0),
                sweeping: Mutex::new(()),
            }),
            ..Self::new(clock, default_config)
        }
    }

    /// Bytes and events retained over all streams, and what the budget trimmed.
    pub fn history_stats(&self) -> HistoryStats {
        match &self.budget {
            Some(budget) => HistoryStats {
                bytes: budget.ledger.bytes(),
                events: budget.ledger.events(),
                budget_bytes: Some(budget.max_bytes),
                trimmed_by_budget: budget.trimmed.load(Ordering::Relaxed),
            },
            None => {
                let streams: Vec<_> = self.lock_streams().values().cloned().collect();
                let mut stats = HistoryStats::default();
                for stream in streams {
                    let st = stream.lock();
                    stats.bytes += st.buffer.retained_bytes();
                    stats.events += st.buffer.len() as u64;
                }
                stats
            }
        }
    }

    fn lock_streams(&self) -> MutexGuard<'_, HashMap<String, Arc<SharedStream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a publish: when the retained total is over the budget, trim the oldest events of
    /// every stream down to 90 % of it. One publisher sweeps at a time; the others go on.
    fn hold_budget(&self) {
        let Some(budget) = &self.budget else {
            return;
        };
        if budget.ledger.bytes() <= budget.max_bytes {
            return;
        }
        let Ok(_sweep) = budget.sweeping.try_lock() else {
            return;
        };
        let Some(cutoff) = budget
            .ledger
            .cutoff_for(budget.max_bytes - budget.max_bytes / 10)
        else {
            return;
        };
        let streams: Vec<_> = self.lock_streams().values().cloned().collect();
        let mut trimmed = 0;
        for stream in streams {
            trimmed += stream.lock().buffer.trim_published_before(cutoff);
        }
        budget.trimmed.fetch_add(trimmed, Ordering::Relaxed);
        tracing::debug!(
            trimmed,
            cutoff_ms = cutoff,
            bucket_ms = LEDGER_BUCKET_MS,
            "console history over its budget: oldest events trimmed"
        );
    }

    fn stream(&self, key: &str) -> Result<Arc<SharedStream>, SseError> {
        validate_stream_key(key)?;
        let mut streams = self.lock_streams();
        Ok(Arc::clone(
            streams
                .entry(key.to_owned())
                .or_insert_with(|| self.new_stream(self.default_config)),
        ))
    }

    fn new_stream(&self, config: StreamConfig) -> Arc<SharedStream> {
        let (published, _) = watch::channel(0);
        Arc::new(SharedStream {
            state: Mutex::new(StreamState {
                buffer: match &self.budget {
                    Some(budget) => StreamBuffer::with_ledger(
                        config.bounds,
                        self.origin_ms,
                        Arc::clone(&budget.ledger),
                    ),
                    None => StreamBuffer::new(config.bounds, self.origin_ms),
                },
                config,
            }),
            published,
        })
    }

    /// Publish without going through the async trait (it never waits).
    pub fn publish_now(
        &self,
        stream_key: &str,
        event_type: &str,
        data: &str,
    ) -> Result<EventId, SseError> {
        let stream = self.stream(stream_key)?;
        let now = self.clock.now_ms();
        let id = {
            let mut st = stream.lock();
            st.buffer.push(event_type, data, now)?.id
        };
        stream.published.send_modify(|n| *n = n.wrapping_add(1));
        self.hold_budget();
        Ok(id)
    }

    /// Subscribe without going through the async trait; the returned handle can be polled
    /// synchronously with [`MemorySubscription::try_next`] (benchmarks, tests) or awaited.
    pub fn subscribe_now(
        &self,
        stream_key: &str,
        last_event_id: Option<&str>,
    ) -> Result<MemorySubscription, SseError> {
        let stream = self.stream(stream_key)?;
        let now = self.clock.now_ms();
        let mut published = stream.published.subscribe();
        published.mark_unchanged();
        let start = {
            let mut st = stream.lock();
            st.buffer.trim(now);
            st.buffer.locate(last_event_id)
        };
        let mut pending = VecDeque::new();
        if let Some(reset) = start.reset {
            pending.push_back(StreamItem::Reset(Box::new(reset)));
        }
        Ok(MemorySubscription {
            stream,
            clock: Arc::clone(&self.clock),
            cursor: start.cursor,
            pending,
            published,
            scratch: Vec::new(),
        })
    }

    /// Forget streams that have no retained event and no subscriber, so that a daemon serving
    /// many short-lived keys does not keep one empty buffer per key forever. Call it periodically.
    /// A forgotten stream starts again with IDs from the current time (never below the old ones,
    /// since its events have all aged out). Returns how many streams were removed.
    pub fn prune_idle_streams(&self) -> usize {
        let now = self.clock.now_ms();
        let mut streams = self.lock_streams();
        let before = streams.len();
        streams.retain(|_, stream| {
            if Arc::strong_count(stream) > 1 {
                return true;
            }
            let mut st = stream.lock();
            st.buffer.trim(now);
            !st.buffer.is_empty()
        });
        before - streams.len()
    }

    /// [`EventBackend::position`] without going through the async trait.
    pub fn position_now(&self, stream_key: &str) -> Result<StreamPosition, SseError> {
        validate_stream_key(stream_key)?;
        let stream = {
            let streams = self.lock_streams();
            match streams.get(stream_key) {
                Some(stream) => Arc::clone(stream),
                None => return Ok(StreamPosition::default()),
            }
        };
        let now = self.clock.now_ms();
        let mut st = stream.lock();
        st.buffer.trim(now);
        let trimmed = st.buffer.trim_counters();
        let retained = st.buffer.len() as u64;
        Ok(StreamPosition {
            latest: st.buffer.latest(),
            published: retained + trimmed.total(),
            retained,
        })
    }

    /// Retained events and trim counters of one stream (for metrics and tests).
    pub fn stream_stats(&self, stream_key: &str) -> Option<StreamStats> {
        let streams = self.lock_streams();
        let stream = streams.get(stream_key)?;
        let st = stream.lock();
        let trimmed = st.buffer.trim_counters();
        Some(StreamStats {
            retained: st.buffer.len(),
            retained_bytes: st.buffer.retained_bytes(),
            oldest: st.buffer.oldest(),
            latest: st.buffer.latest(),
            trimmed_by_count: trimmed.by_count,
            trimmed_by_age: trimmed.by_age,
            trimmed_by_budget: trimmed.by_budget,
        })
    }
}

/// A snapshot of one in-memory stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Events in the buffer.
    pub retained: usize,
    /// Bytes they take, as the history budget counts them.
    pub retained_bytes: u64,
    /// Oldest retained ID.
    pub oldest: Option<EventId>,
    /// Latest ID issued.
    pub latest: Option<EventId>,
    /// Events trimmed by the count bound so far.
    pub trimmed_by_count: u64,
    /// Events trimmed by the age bound so far.
    pub trimmed_by_age: u64,
    /// Events trimmed to hold the hub's global budget so far.
    pub trimmed_by_budget: u64,
}

/// A subscriber of the in-memory hub: a cursor into the shared buffer plus a small batch of
/// items taken but not yet handed out. It never holds more than one batch, whatever the backlog.
#[derive(Debug)]
pub struct MemorySubscription {
    stream: Arc<SharedStream>,
    clock: Arc<dyn Clock>,
    cursor: StreamCursor,
    pending: VecDeque<StreamItem>,
    published: watch::Receiver<u64>,
    scratch: Vec<StreamItem>,
}

impl MemorySubscription {
    /// Items taken from the buffer but not handed out yet (at most one read batch plus a reset).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// The next item if one is available now, without waiting.
    pub fn try_next(&mut self) -> Option<StreamItem> {
        if let Some(item) = self.pending.pop_front() {
            return Some(item);
        }
        let now = self.clock.now_ms();
        {
            let mut st = self.stream.lock();
            // Age is enforced on reads too, so a quiet stream does not serve stale events.
            st.buffer.trim(now);
            st.buffer
                .read(&mut self.cursor, &mut self.scratch, READ_BATCH);
        }
        self.pending.extend(self.scratch.drain(..));
        self.pending.pop_front()
    }

    /// The next item, waiting for a publish when caught up. Never ends while the hub exists.
    pub async fn next(&mut self) -> StreamItem {
        loop {
            // Mark the current publish count as seen *before* reading, so a publish that lands
            // after the read wakes us (no lost wake-up).
            self.published.borrow_and_update();
            if let Some(item) = self.try_next() {
                return item;
            }
            if self.published.changed().await.is_err() {
                // The stream was dropped with the hub; wait forever like an idle stream.
                futures::future::pending::<()>().await;
            }
        }
    }

    /// Turn into a [`Subscription`] stream.
    pub fn into_subscription(self) -> Subscription {
        let stream = futures::stream::unfold(self, |mut sub| async move {
            let item = sub.next().await;
            Some((Ok(item), sub))
        });
        Subscription::new(stream.boxed())
    }
}

impl EventBackend for MemoryBackend {
    fn publish<'a>(
        &'a self,
        stream_key: &'a str,
        event_type: &'a str,
        data: &'a str,
    ) -> BoxFuture<'a, Result<EventId, SseError>> {
        futures::future::ready(self.publish_now(stream_key, event_type, data)).boxed()
    }

    fn subscribe<'a>(
        &'a self,
        stream_key: &'a str,
        last_event_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Subscription, SseError>> {
        futures::future::ready(
            self.subscribe_now(stream_key, last_event_id)
                .map(MemorySubscription::into_subscription),
        )
        .boxed()
    }

    fn position<'a>(
        &'a self,
        stream_key: &'a str,
    ) -> BoxFuture<'a, Result<StreamPosition, SseError>> {
        futures::future::ready(self.position_now(stream_key)).boxed()
    }

    fn prune_idle_streams(&self) -> usize {
        MemoryBackend::prune_idle_streams(self)
    }

    fn history_stats(&self) -> Option<HistoryStats> {
        Some(MemoryBackend::history_stats(self))
    }

    fn configure_stream(&self, stream_key: &str, config: StreamConfig) -> Result<(), SseError> {
        let stream = self.stream(stream_key)?;
        let mut st = stream.lock();
        st.buffer.set_bounds(config.bounds);
        st.config = config;
        let now = self.clock.now_ms();
        st.buffer.trim(now);
        Ok(())
    }
}
