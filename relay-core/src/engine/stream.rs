//! Per-direction state: durability bookkeeping, the consumer's position, and the two sources
//! delivery draws from (replayed entries read from the log, live items kept in memory).

use std::collections::VecDeque;

use crate::log::{Gap, Item, ReadBatch, Seq};

use super::io::{DeliverySource, EngineConfig};

/// One entry to hand to the consumer, in seq order.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Gap(Gap),
    Item(Item),
}

impl Entry {
    fn last_seq(&self) -> Seq {
        match self {
            Entry::Gap(g) => g.to,
            Entry::Item(i) => i.seq,
        }
    }
}

/// Where the consumer's next seq comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextSource {
    /// From entries read from the log (rate-limited).
    Replay,
    /// From the in-memory live buffer (not rate-limited).
    Live,
    /// The next seq is durable but only in the log: a read is needed.
    NeedRead,
    /// Nothing more is durable yet.
    CaughtUp,
}

/// Token bucket in milli-items so that integer milliseconds refill it exactly.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenBucket {
    milli: u64,
    last_ms: u64,
}

impl TokenBucket {
    pub(super) fn full(config: &EngineConfig, now_ms: u64) -> Self {
        TokenBucket {
            milli: config.replay_burst.saturating_mul(1000),
            last_ms: now_ms,
        }
    }

    pub(super) fn refill(&mut self, config: &EngineConfig, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // rate items/s == rate milli-items/ms.
        let cap = config.replay_burst.saturating_mul(1000);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(config.replay_rate_per_s))
            .min(cap);
    }

    pub(super) fn whole(&self) -> u64 {
        self.milli / 1000
    }

    pub(super) fn take(&mut self, items: u64) {
        self.milli = self.milli.saturating_sub(items.saturating_mul(1000));
    }

    /// Milliseconds until one whole token is available (`None` when the rate is zero).
    pub(super) fn ms_until_one(&self, config: &EngineConfig) -> Option<u64> {
        if self.milli >= 1000 {
            return Some(0);
        }
        if config.replay_rate_per_s == 0 {
            return None;
        }
        Some((1000 - self.milli).div_ceil(config.replay_rate_per_s))
    }
}

/// State of one direction of one group.
#[derive(Debug)]
pub(super) struct StreamState {
    /// Highest durable seq (the log's cumulative ack).
    pub(super) head: Seq,
    /// Highest seq handed to the log (durable or in flight).
    pub(super) appended: Seq,
    /// The producer connected and has not sent an accepted batch yet: its first batch may
    /// start above `appended + 1` (it no longer holds those seqs, e.g. after a server-side log
    /// loss); the log reports that hole to readers as a `missing` gap.
    pub(super) producer_fresh: bool,
    /// Appends in flight.
    pub(super) appends_in_flight: usize,
    /// The consumer's cumulative ack.
    pub(super) consumer_acked: Seq,
    /// Retention removed everything up to here (as far as the engine was told).
    pub(super) trimmed_through: Seq,
    /// Whether the consumer is connected (delivery runs only then).
    pub(super) consumer_online: bool,
    /// Last seq handed to the consumer on this connection (items and gaps).
    pub(super) delivered: Seq,
    /// Entries read from the log, starting at `delivered + 1`.
    pub(super) replay: VecDeque<Entry>,
    /// Recently received items, durable or not, ascending (may start above `delivered + 1`).
    pub(super) live: VecDeque<Item>,
    /// The live items came from another instance's appends, read back from the log
    /// ([`super::RelayEngine::handle_tailed`]): they are delivered as [`DeliverySource::Log`].
    pub(super) live_at_rest: bool,
    /// A read is in flight.
    pub(super) read_in_flight: bool,
    /// The last read came back empty at this head: do not ask again until the head moves.
    pub(super) read_exhausted_at: Option<Seq>,
    /// Bumped on every consumer (re)connect; stale read results carry an older one.
    pub(super) epoch: u64,
    /// Replay rate limit.
    pub(super) bucket: TokenBucket,
    /// Items this stream may still deliver in the current round.
    pub(super) deficit: u64,
    /// Whether the stream is in the scheduler's ready queue.
    pub(super) queued: bool,
}

impl StreamState {
    pub(super) fn new(head: Seq, consumer_cursor: Seq, config: &EngineConfig, now_ms: u64) -> Self {
        StreamState {
            head,
            appended: head,
            producer_fresh: true,
            appends_in_flight: 0,
            consumer_acked: consumer_cursor.min(head),
            trimmed_through: 0,
            consumer_online: false,
            delivered: 0,
            replay: VecDeque::new(),
            live: VecDeque::new(),
            live_at_rest: false,
            read_in_flight: false,
            read_exhausted_at: None,
            epoch: 0,
            bucket: TokenBucket::full(config, now_ms),
            deficit: 0,
            queued: false,
        }
    }

    /// Stored items the consumer has not acknowledged (items trimmed away are not counted).
    pub(super) fn backlog(&self) -> u64 {
        self.head
            .saturating_sub(self.consumer_acked.max(self.trimmed_through))
    }

    /// The consumer (re)connected, having processed everything up to `rx_cursor`.
    pub(super) fn consumer_connected(
        &mut self,
        rx_cursor: Seq,
        config: &EngineConfig,
        now_ms: u64,
    ) {
        self.consumer_online = true;
        self.delivered = rx_cursor;
        self.replay.clear();
        self.live.clear();
        self.read_in_flight = false;
        self.read_exhausted_at = None;
        self.epoch += 1;
        self.bucket = TokenBucket::full(config, now_ms);
        self.deficit = 0;
    }

    /// The consumer went away: drop everything that only served delivery.
    pub(super) fn consumer_disconnected(&mut self) {
        self.consumer_online = false;
        self.replay.clear();
        self.live.clear();
        self.read_in_flight = false;
        self.epoch += 1;
        self.deficit = 0;
    }

    /// Items were accepted for the log; keep them for live delivery while the consumer is
    /// connected.
    pub(super) fn push_live(
        &mut self,
        items: impl IntoIterator<Item = Item>,
        config: &EngineConfig,
    ) {
        if !self.consumer_online {
            return;
        }
        self.live.extend(items);
        while self.live.len() > config.live_buffer {
            self.live.pop_front();
        }
    }

    /// Where the live items come from (see `live_at_rest`).
    pub(super) fn live_source(&self) -> DeliverySource {
        if self.live_at_rest {
            DeliverySource::Log
        } else {
            DeliverySource::Live
        }
    }

    /// Retention removed everything up to `last`: forget in-memory live copies of those seqs so
    /// the consumer learns about them through a gap read from the log, like any other reader.
    pub(super) fn trimmed(&mut self, last: Seq) {
        self.trimmed_through = self.trimmed_through.max(last);
        while self.live.front().is_some_and(|i| i.seq <= last) {
            self.live.pop_front();
        }
    }

    /// The last seq the replay queue covers (or `delivered` when it is empty).
    pub(super) fn replay_end(&self) -> Seq {
        self.replay.back().map_or(self.delivered, Entry::last_seq)
    }

    /// An append failed and the producer will resend everything above the durable head:
    /// forget the live copies of those seqs (the resend brings them again).
    pub(super) fn forget_undurable(&mut self) {
        while self.live.back().is_some_and(|i| i.seq > self.head) {
            self.live.pop_back();
        }
    }

    /// Where the next seq comes from. Drops stale entries on the way. A live item more than
    /// [`EngineConfig::cut_through`] above the durable head waits for the head to move.
    pub(super) fn next_source(&mut self, config: &EngineConfig) -> NextSource {
        while self
            .replay
            .front()
            .is_some_and(|e| e.last_seq() <= self.delivered)
        {
            self.replay.pop_front();
        }
        if !self.replay.is_empty() {
            return NextSource::Replay;
        }
        while self.live.front().is_some_and(|i| i.seq <= self.delivered) {
            self.live.pop_front();
        }
        if self.live.front().is_some_and(|i| {
            i.seq == self.delivered + 1 && i.seq <= self.head.saturating_add(config.cut_through)
        }) {
            return NextSource::Live;
        }
        if self.delivered < self.head {
            NextSource::NeedRead
        } else {
            NextSource::CaughtUp
        }
    }

    /// Whether a log read should be issued now: the stream is behind what is in memory and
    /// the replay queue is running low.
    pub(super) fn wants_read(&mut self, config: &EngineConfig) -> bool {
        if !self.consumer_online || self.read_in_flight || self.read_exhausted_at == Some(self.head)
        {
            return false;
        }
        match self.next_source(config) {
            NextSource::NeedRead => true,
            // Prefetch the next batch while the current one drains.
            NextSource::Replay => {
                self.replay.len() < config.read_batch / 2 && self.replay_end() < self.head
            }
            NextSource::Live | NextSource::CaughtUp => false,
        }
    }

    /// Takes a read result into the replay queue.
    pub(super) fn read_done(&mut self, batch: ReadBatch) {
        self.read_in_flight = false;
        let before = self.replay_end();
        let mut end = before;
        if let Some(gap) = batch.gap
            && gap.to > end
        {
            end = gap.to;
            self.replay.push_back(Entry::Gap(gap));
        }
        for item in batch.items {
            if item.seq > end {
                end = item.seq;
                self.replay.push_back(Entry::Item(item));
            }
        }
        self.read_exhausted_at = if end == before { Some(self.head) } else { None };
    }

    /// Whether the consumer is in replay: behind, and fed from the log rather than memory.
    pub(super) fn is_replaying(&mut self, config: &EngineConfig) -> bool {
        self.consumer_online
            && (self.read_in_flight
                || matches!(
                    self.next_source(config),
                    NextSource::Replay | NextSource::NeedRead
                ))
    }

    /// Whether the scheduler should keep visiting this stream: it can deliver (possibly after
    /// its next token) or needs a read issued.
    pub(super) fn has_work(&mut self, config: &EngineConfig) -> bool {
        if !self.consumer_online {
            return false;
        }
        match self.next_source(config) {
            NextSource::Replay => {
                matches!(self.replay.front(), Some(Entry::Gap(_))) || self.window_room(config) > 0
            }
            NextSource::Live => self.window_room(config) > 0,
            NextSource::NeedRead => !self.read_in_flight,
            NextSource::CaughtUp => false,
        }
    }

    /// How many more items the consumer may have unacknowledged.
    pub(super) fn window_room(&self, config: &EngineConfig) -> u64 {
        (self.consumer_acked + config.consumer_window).saturating_sub(self.delivered)
    }
}
