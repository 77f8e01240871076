//! The relay engine: groups, modes, the replay scheduler.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Error, Result};
use crate::log::{AppendOutcome, Item, MAX_SEQ, ReadBatch, Seq, Trimmed};

use super::io::{
    DeliverySource, EngineConfig, GroupSnapshot, GroupStatus, RelayOutput, SideWelcome,
    StorageRequest,
};
use super::stream::{Entry, NextSource, StreamState};
use super::types::{Direction, GroupBacklog, GroupId, GroupMode, Side};

#[derive(Debug)]
struct Group {
    activated: bool,
    online: [bool; 2],
    /// Sides connected to another server instance (cluster presence, see
    /// [`RelayEngine::handle_remote_presence`]): online for the mode, never delivered to here.
    remote: [bool; 2],
    streams: [StreamState; 2],
    published: Option<(GroupMode, Vec<Side>)>,
}

impl Group {
    fn stream(&mut self, dir: Direction) -> &mut StreamState {
        &mut self.streams[dir.index()]
    }

    fn is_online(&self, side: Side) -> bool {
        self.online[side.index()]
    }

    fn status(&mut self, config: &EngineConfig) -> GroupStatus {
        let offline: Vec<Side> = [Side::A, Side::B]
            .into_iter()
            .filter(|s| !self.is_online(*s) && !self.remote[s.index()])
            .collect();
        let replaying = self.streams.iter_mut().any(|s| s.is_replaying(config));
        let mode = GroupMode::decide(self.activated, offline.is_empty(), replaying);
        let mut backlog = GroupBacklog::default();
        for dir in Direction::BOTH {
            backlog.set(dir, self.streams[dir.index()].backlog());
        }
        GroupStatus {
            mode,
            backlog,
            offline,
            replaying,
        }
    }
}

/// The sans-IO group relay engine for every group a server instance holds.
///
/// It owns no socket, clock or storage: inputs come in through `handle_*` with the current time
/// in milliseconds, and what to do comes out of [`poll_output`](Self::poll_output) (messages for
/// sides and events to publish) and [`poll_storage`](Self::poll_storage) (stream-log work whose
/// results go back in through `handle_append_result` / `handle_read_result`).
///
/// # Call order
///
/// 1. [`add_group`](Self::add_group) with what the log holds (heads, cursors, activation).
/// 2. For every event, the matching `handle_*` call.
/// 3. Drain [`poll_storage`](Self::poll_storage) and execute each request against the log,
///    feeding results back (appends of one stream in request order).
/// 4. While [`poll_timeout`](Self::poll_timeout) is at or before now, call
///    [`handle_timeout`](Self::handle_timeout) — each call is one scheduling round.
/// 5. Drain [`poll_output`](Self::poll_output) and send/publish each output, in order (a
///    `Gap` must reach the side before the `Deliver` that follows it).
///
/// # Delivery and fairness
///
/// Producers are acknowledged only after their items are durable; delivery does not wait for
/// that (*cut-through*, bounded by [`EngineConfig::cut_through`]; `0` delivers only durable
/// items). Each stream delivers from one of two sources, always in seq order: items it read
/// back from the log (*replay*, after a reconnect or when it fell behind), or items kept in
/// memory as they arrived (*live*).
/// Replay is rate-limited per stream by a token bucket ([`EngineConfig::replay_rate_per_s`],
/// burst [`EngineConfig::replay_burst`]) on the caller's clock. Every scheduling round visits
/// each stream that has work once, in rotating order, and lets it deliver at most
/// [`EngineConfig::quantum`] items (deficit round robin with unit cost). So an item that is
/// live and deliverable when a round starts is delivered in that round, however large another
/// stream's backlog is: the starvation bound is **one round**.
#[derive(Debug)]
pub struct RelayEngine {
    config: EngineConfig,
    groups: BTreeMap<GroupId, Group>,
    ready: VecDeque<(GroupId, Direction)>,
    outputs: VecDeque<RelayOutput>,
    storage: VecDeque<StorageRequest>,
    now_ms: u64,
}

impl RelayEngine {
    /// An engine with no groups.
    pub fn new(config: EngineConfig) -> Self {
        RelayEngine {
            config,
            groups: BTreeMap::new(),
            ready: VecDeque::new(),
            outputs: VecDeque::new(),
            storage: VecDeque::new(),
            now_ms: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Loads a group from what the log holds. Replaces an already loaded group of that id.
    /// Publishes its initial mode.
    pub fn add_group(&mut self, group: GroupId, snapshot: GroupSnapshot, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let config = self.config;
        let g = Group {
            activated: snapshot.activated,
            online: [false, false],
            remote: [false, false],
            streams: [
                StreamState::new(
                    snapshot.a_to_b.head,
                    snapshot.a_to_b.consumer_cursor,
                    &config,
                    now_ms,
                ),
                StreamState::new(
                    snapshot.b_to_a.head,
                    snapshot.b_to_a.consumer_cursor,
                    &config,
                    now_ms,
                ),
            ],
            published: None,
        };
        self.groups.insert(group.clone(), g);
        self.ready.retain(|(gid, _)| *gid != group);
        self.publish_mode(&group);
    }

    /// Forgets a group (for example when the last side left and the driver evicts it).
    pub fn remove_group(&mut self, group: &GroupId) {
        self.groups.remove(group);
        self.ready.retain(|(gid, _)| gid != group);
    }

    /// Whether a group is loaded.
    pub fn has_group(&self, group: &GroupId) -> bool {
        self.groups.contains_key(group)
    }

    /// The group's current mode, backlog and offline sides.
    pub fn group_status(&mut self, group: &GroupId) -> Option<GroupStatus> {
        let config = self.config;
        self.groups.get_mut(group).map(|g| g.status(&config))
    }

    /// Activates a group (idempotent). Returns the mode afterwards.
    pub fn handle_activate(&mut self, group: &GroupId, now_ms: u64) -> Result<GroupMode> {
        self.set_activation(group, true, now_ms)
    }

    /// Deactivates a group (idempotent): delivery stops, frames are refused, stored items stay.
    /// Returns the mode afterwards.
    pub fn handle_deactivate(&mut self, group: &GroupId, now_ms: u64) -> Result<GroupMode> {
        self.set_activation(group, false, now_ms)
    }

    fn set_activation(&mut self, group: &GroupId, on: bool, now_ms: u64) -> Result<GroupMode> {
        self.now_ms = self.now_ms.max(now_ms);
        let g = self.group_mut(group)?;
        g.activated = on;
        if on {
            for dir in Direction::BOTH {
                self.enqueue(group, dir);
            }
        }
        self.publish_mode(group);
        let config = self.config;
        Ok(self.group_mut(group)?.status(&config).mode)
    }

    /// Side `side` connected. `rx_cursor` is the last seq of its inbound stream it has processed
    /// (from its `hello`); delivery resumes right after it. A cursor more than
    /// [`EngineConfig::cut_through`] beyond the stream's durable head is refused with
    /// [`Error::CursorAhead`]. Replaces an earlier connection of the same side.
    pub fn handle_connected(
        &mut self,
        group: &GroupId,
        side: Side,
        rx_cursor: Seq,
        now_ms: u64,
    ) -> Result<SideWelcome> {
        self.now_ms = self.now_ms.max(now_ms);
        let config = self.config;
        let g = self.group_mut(group)?;
        let inbound = side.inbound();
        let head = g.stream(inbound).head;
        // With cut-through a consumer may hold items that are not durable yet (or that a
        // crashed server never stored); their producer resends them and `delivered` keeps them
        // from being delivered twice.
        let limit = head.saturating_add(config.cut_through);
        if rx_cursor > limit {
            return Err(Error::CursorAhead {
                stream: inbound.stream_key(group),
                cursor: rx_cursor,
                head: limit,
            });
        }
        g.online[side.index()] = true;
        let s = g.stream(inbound);
        s.consumer_connected(rx_cursor, &config, now_ms);
        let mut store_cursor = None;
        if rx_cursor > s.consumer_acked {
            s.consumer_acked = rx_cursor;
            store_cursor = Some(rx_cursor);
        }
        let ahead = rx_cursor.saturating_sub(s.appended);
        let out = g.stream(side.outbound());
        out.producer_fresh = true;
        let tx_acked = out.head;
        if let Some(seq) = store_cursor {
            self.storage.push_back(StorageRequest::StoreCursor {
                group: group.clone(),
                direction: inbound,
                seq,
            });
        }
        self.enqueue(group, inbound);
        self.publish_mode(group);
        let mode = self.group_mut(group)?.status(&config).mode;
        Ok(SideWelcome {
            tx_acked,
            rx_from: rx_cursor,
            mode,
            ahead_of_log: ahead,
        })
    }

    /// Side `side` disconnected. Its inbound delivery stops; appends already in flight still
    /// complete.
    pub fn handle_disconnected(&mut self, group: &GroupId, side: Side, now_ms: u64) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let g = self.group_mut(group)?;
        g.online[side.index()] = false;
        g.stream(side.inbound()).consumer_disconnected();
        self.publish_mode(group);
        Ok(())
    }

    /// Frames from side `side` (its outbound stream), with producer seqs. Retransmissions at or
    /// below what was already handed to the log are dropped here (and re-acknowledged when
    /// durable); the rest become one append request. Returns how many were dropped as
    /// retransmissions, for the caller to count. Refused, with nothing stored, when the group
    /// is not activated ([`Error::GroupInactive`]), the side is not connected, a seq is outside
    /// `1..=MAX_SEQ` ([`Error::InvalidSeq`]) or a timestamp above it
    /// ([`Error::InvalidTimestamp`]), or the batch
    /// leaves a hole after what this connection already sent ([`Error::SeqOutOfOrder`]; only
    /// the first batch after a connect may start higher — the log reports that hole as a
    /// `missing` gap). After a refusal the producer resends from its last ack.
    pub fn handle_frames(
        &mut self,
        group: &GroupId,
        side: Side,
        items: Vec<Item>,
        now_ms: u64,
    ) -> Result<u64> {
        self.now_ms = self.now_ms.max(now_ms);
        let config = self.config;
        let g = self.group_mut(group)?;
        if !g.is_online(side) {
            return Err(Error::SideNotConnected {
                group: group.to_string(),
                side: side.to_string(),
            });
        }
        // Only the very first batch of a connection may open a hole, refused or not: anything
        // after a refused batch was built on it.
        let first_of_connection =
            std::mem::replace(&mut g.stream(side.outbound()).producer_fresh, false);
        if !g.activated {
            return Err(Error::GroupInactive {
                group: group.to_string(),
            });
        }
        let dir = side.outbound();
        // Refuse what the log would refuse, before anything is queued: a failed append would
        // only reset the producer into resending the same batch.
        if let Some(bad) = items.iter().find(|i| i.seq == 0 || i.seq > MAX_SEQ) {
            return Err(Error::InvalidSeq {
                stream: dir.stream_key(group),
                seq: bad.seq,
                max: MAX_SEQ,
            });
        }
        if let Some(bad) = items.iter().find(|i| i.ts_ms > MAX_SEQ) {
            return Err(Error::InvalidTimestamp {
                stream: dir.stream_key(group),
                seq: bad.seq,
                ts_ms: bad.ts_ms,
            });
        }
        let s = g.stream(dir);
        let received = items.len() as u64;
        let mut fresh: Vec<Item> = Vec::with_capacity(items.len());
        let mut last = s.appended;
        for item in items {
            if item.seq > last {
                last = item.seq;
                fresh.push(item);
            }
        }
        let retransmitted = received - fresh.len() as u64;
        if fresh.is_empty() {
            // Pure retransmission: re-acknowledge what is durable.
            if s.appends_in_flight == 0 {
                let up_to = s.head;
                self.outputs.push_back(RelayOutput::Ack {
                    group: group.clone(),
                    to: side,
                    up_to,
                });
            }
            return Ok(retransmitted);
        }
        let expected = s.appended + 1;
        if !first_of_connection && fresh[0].seq > expected {
            return Err(Error::SeqOutOfOrder {
                stream: dir.stream_key(group),
                expected,
                got: fresh[0].seq,
            });
        }
        s.appended = last;
        s.appends_in_flight += 1;
        if s.live_at_rest {
            // Tailed copies were at rest; the producer is here now: they are read back if
            // the consumer still needs them.
            s.live.clear();
            s.live_at_rest = false;
        }
        // Live at once: delivery does not wait for the append (see `EngineConfig::cut_through`).
        s.push_live(fresh.iter().cloned(), &config);
        self.enqueue(group, dir);
        self.storage.push_back(StorageRequest::Append {
            group: group.clone(),
            direction: dir,
            items: fresh,
        });
        Ok(retransmitted)
    }

    /// The result of the oldest outstanding append of `direction`. On success the producer is
    /// acknowledged and the durable head moves; on failure the producer is reset so it resends
    /// from its last ack (items it already delivered are not delivered again).
    pub fn handle_append_result(
        &mut self,
        group: &GroupId,
        direction: Direction,
        result: std::result::Result<AppendOutcome, Error>,
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let g = self.group_mut(group)?;
        let producer = direction.producer();
        let producer_online = g.is_online(producer);
        let s = g.stream(direction);
        let Some(left) = s.appends_in_flight.checked_sub(1) else {
            return Ok(());
        };
        s.appends_in_flight = left;
        match result {
            Ok(outcome) => {
                s.head = s.head.max(outcome.ack);
                let new_head = s.head;
                s.read_exhausted_at = None;
                if producer_online {
                    self.outputs.push_back(RelayOutput::Ack {
                        group: group.clone(),
                        to: producer,
                        up_to: new_head,
                    });
                }
                self.enqueue(group, direction);
                self.publish_mode(group);
            }
            Err(_) => {
                // Everything after this append was built on it: drop it all and let the
                // producer resend from the durable head.
                s.appends_in_flight = 0;
                s.appended = s.head;
                s.forget_undurable();
                self.outputs.push_back(RelayOutput::ResetProducer {
                    group: group.clone(),
                    side: producer,
                });
            }
        }
        Ok(())
    }

    /// The consumer of `direction`'s inbound stream acknowledged everything up to `up_to`
    /// (items and gaps). An ack beyond what was delivered is refused with
    /// [`Error::CursorAhead`].
    pub fn handle_ack(
        &mut self,
        group: &GroupId,
        side: Side,
        up_to: Seq,
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let dir = side.inbound();
        let g = self.group_mut(group)?;
        let s = g.stream(dir);
        if up_to > s.delivered {
            return Err(Error::CursorAhead {
                stream: dir.stream_key(group),
                cursor: up_to,
                head: s.delivered,
            });
        }
        if up_to <= s.consumer_acked {
            return Ok(());
        }
        s.consumer_acked = up_to;
        self.storage.push_back(StorageRequest::StoreCursor {
            group: group.clone(),
            direction: dir,
            seq: up_to,
        });
        // The consumer window opened up.
        self.enqueue(group, dir);
        Ok(())
    }

    /// Items of `direction` that another server instance made durable, as a tail of the log
    /// read them (cluster relay: the producer is connected elsewhere). Items at or below what
    /// this engine already handed to the log or saw are ignored (its own appends come back
    /// too); the rest raise the durable head and are delivered like live items, as
    /// [`DeliverySource::Log`]. Items need not be dense: a hole in front of the consumer is
    /// read from the log, with its gap.
    pub fn handle_tailed(
        &mut self,
        group: &GroupId,
        direction: Direction,
        items: Vec<Item>,
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let config = self.config;
        let s = self.group_mut(group)?.stream(direction);
        let mut fresh = Vec::with_capacity(items.len());
        let mut last = s.appended;
        for item in items {
            if item.seq > last && item.seq <= MAX_SEQ {
                last = item.seq;
                fresh.push(item);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        s.appended = last;
        s.head = s.head.max(last);
        s.read_exhausted_at = None;
        if s.consumer_online {
            // Everything in the live buffer is at rest from here on.
            if !s.live_at_rest {
                s.live.clear();
            }
            s.live_at_rest = true;
        }
        s.push_live(fresh, &config);
        self.enqueue(group, direction);
        self.publish_mode(group);
        Ok(())
    }

    /// What the log says about `direction` beyond this engine's own work (cluster relay,
    /// polled): its durable `head`, and the consumer's stored cursor when the consumer is not
    /// connected here. Raises the durable head (a consumer connected here catches up by
    /// reading the log) and the consumer's acknowledged position (for the backlog); never
    /// lowers either.
    pub fn handle_remote_progress(
        &mut self,
        group: &GroupId,
        direction: Direction,
        head: Seq,
        consumer_cursor: Option<Seq>,
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let g = self.group_mut(group)?;
        let consumer_local = g.is_online(direction.consumer());
        let s = g.stream(direction);
        let head = head.min(MAX_SEQ);
        if head > s.appended {
            s.appended = head;
        }
        if head > s.head {
            s.head = head;
            s.read_exhausted_at = None;
        }
        if let Some(cursor) = consumer_cursor
            && !consumer_local
        {
            s.consumer_acked = s.consumer_acked.max(cursor.min(s.head));
        }
        self.enqueue(group, direction);
        self.publish_mode(group);
        Ok(())
    }

    /// Whether `side` is connected to another server instance (cluster presence). Such a side
    /// counts as online for the group's mode; nothing is delivered to it from here.
    pub fn handle_remote_presence(
        &mut self,
        group: &GroupId,
        side: Side,
        online: bool,
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        self.group_mut(group)?.remote[side.index()] = online;
        self.publish_mode(group);
        Ok(())
    }

    /// The highest seq of `direction` this engine handed to the log or learnt is stored there
    /// (where a tail of the log resumes), `None` for an unknown group.
    pub fn stream_position(&self, group: &GroupId, direction: Direction) -> Option<Seq> {
        self.groups
            .get(group)
            .map(|g| g.streams[direction.index()].appended)
    }

    /// The result of a [`StorageRequest::Read`]. Results carrying an old `epoch` (from before a
    /// reconnect) are ignored.
    pub fn handle_read_result(
        &mut self,
        group: &GroupId,
        direction: Direction,
        epoch: u64,
        result: std::result::Result<ReadBatch, Error>,
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let s = self.group_mut(group)?.stream(direction);
        if s.epoch != epoch || !s.read_in_flight {
            return Ok(());
        }
        match result {
            Ok(batch) => s.read_done(batch),
            // Retried at the next round.
            Err(_) => s.read_in_flight = false,
        }
        self.enqueue(group, direction);
        self.publish_mode(group);
        Ok(())
    }

    /// Retention trimmed `direction` (what `StreamLog::trim` returned). Emits a buffer-pressure
    /// event for every trim that removed items the consumer had not acknowledged; the consumer
    /// learns the exact range through a gap when it reads there.
    pub fn handle_trimmed(
        &mut self,
        group: &GroupId,
        direction: Direction,
        trims: &[Trimmed],
        now_ms: u64,
    ) -> Result<()> {
        self.now_ms = self.now_ms.max(now_ms);
        let g = self.group_mut(group)?;
        let s = g.stream(direction);
        let mut events = Vec::new();
        for t in trims {
            let acked = s.consumer_acked;
            let unacknowledged = if t.last > acked {
                (t.last - acked.max(t.first.saturating_sub(1))).min(t.count)
            } else {
                0
            };
            s.trimmed(t.last);
            if unacknowledged > 0 {
                events.push(RelayOutput::BufferPressure {
                    group: group.clone(),
                    direction,
                    trimmed: *t,
                    unacknowledged,
                });
            }
        }
        self.outputs.extend(events);
        self.enqueue(group, direction);
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next: now (the latest time the
    /// engine was given) when a stream can deliver or needs a read, the time a replaying
    /// stream gets its next token, or `None` when there is nothing to schedule.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        let config = self.config;
        let now = self.now_ms;
        let mut best: Option<u64> = None;
        for (gid, dir) in &self.ready {
            let Some(g) = self.groups.get_mut(gid) else {
                continue;
            };
            let activated = g.activated;
            let s = g.stream(*dir);
            let at = if !activated || !s.consumer_online {
                // One round takes it out of the ready queue.
                Some(now)
            } else {
                match s.next_source(&config) {
                    NextSource::Live if s.window_room(&config) > 0 => Some(now),
                    NextSource::Replay if matches!(s.replay.front(), Some(Entry::Gap(_))) => {
                        Some(now)
                    }
                    NextSource::Replay if s.window_room(&config) > 0 => {
                        let mut bucket = s.bucket;
                        bucket.refill(&config, now);
                        bucket.ms_until_one(&config).map(|ms| now + ms)
                    }
                    NextSource::NeedRead if !s.read_in_flight => Some(now),
                    _ => None,
                }
            };
            if let Some(at) = at {
                best = Some(best.map_or(at, |b| b.min(at)));
            }
        }
        best
    }

    /// One scheduling round at `now_ms`: refills replay tokens, lets every ready stream deliver
    /// up to one quantum in rotating order, and issues log reads for streams that fell behind.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let config = self.config;
        let rounds = self.ready.len();
        for _ in 0..rounds {
            let Some((gid, dir)) = self.ready.pop_front() else {
                break;
            };
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            let activated = g.activated;
            let s = g.stream(dir);
            s.queued = false;
            if !activated || !s.consumer_online {
                continue;
            }
            s.bucket.refill(&config, now_ms);
            s.deficit = config.quantum;
            let outputs = Self::serve(&gid, dir, s, &config);
            if s.wants_read(&config) {
                s.read_in_flight = true;
                self.storage.push_back(StorageRequest::Read {
                    group: gid.clone(),
                    direction: dir,
                    after: s.replay_end(),
                    max: config.read_batch,
                    epoch: s.epoch,
                });
            }
            self.outputs.extend(outputs);
            if s.has_work(&config) {
                s.queued = true;
                self.ready.push_back((gid.clone(), dir));
            }
            self.publish_mode(&gid);
        }
    }

    /// Delivers from one stream within its quantum, replay tokens and consumer window.
    fn serve(
        gid: &GroupId,
        dir: Direction,
        s: &mut StreamState,
        config: &EngineConfig,
    ) -> Vec<RelayOutput> {
        let to = dir.consumer();
        let mut outputs = Vec::new();
        // One delivery holds items of one source.
        let mut batch: (Vec<Item>, DeliverySource) = (Vec::new(), DeliverySource::Live);
        let flush = |batch: &mut (Vec<Item>, DeliverySource), outputs: &mut Vec<RelayOutput>| {
            if !batch.0.is_empty() {
                outputs.push(RelayOutput::Deliver {
                    group: gid.clone(),
                    to,
                    items: std::mem::take(&mut batch.0),
                    source: batch.1,
                });
            }
        };
        let add = |batch: &mut (Vec<Item>, DeliverySource),
                   outputs: &mut Vec<RelayOutput>,
                   item: Item,
                   source: DeliverySource| {
            if batch.1 != source {
                flush(batch, outputs);
                batch.1 = source;
            }
            batch.0.push(item);
        };
        loop {
            let source = s.next_source(config);
            match source {
                NextSource::Replay => {
                    let Some(front) = s.replay.front() else { break };
                    if let Entry::Gap(gap) = front {
                        let gap = *gap;
                        flush(&mut batch, &mut outputs);
                        outputs.push(RelayOutput::Gap {
                            group: gid.clone(),
                            to,
                            gap,
                        });
                        s.delivered = gap.to;
                        s.replay.pop_front();
                        continue;
                    }
                    if s.deficit == 0 || s.bucket.whole() == 0 || s.window_room(config) == 0 {
                        break;
                    }
                    if let Some(Entry::Item(item)) = s.replay.pop_front() {
                        s.delivered = item.seq;
                        s.bucket.take(1);
                        s.deficit -= 1;
                        add(&mut batch, &mut outputs, item, DeliverySource::Log);
                    }
                }
                NextSource::Live => {
                    if s.deficit == 0 || s.window_room(config) == 0 {
                        break;
                    }
                    let live_source = s.live_source();
                    if let Some(item) = s.live.pop_front() {
                        s.delivered = item.seq;
                        s.deficit -= 1;
                        add(&mut batch, &mut outputs, item, live_source);
                    }
                }
                NextSource::NeedRead | NextSource::CaughtUp => break,
            }
        }
        flush(&mut batch, &mut outputs);
        outputs
    }

    /// The next output to send or publish.
    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.outputs.pop_front()
    }

    /// The next stream-log request to execute.
    pub fn poll_storage(&mut self) -> Option<StorageRequest> {
        self.storage.pop_front()
    }

    fn group_mut(&mut self, group: &GroupId) -> Result<&mut Group> {
        self.groups
            .get_mut(group)
            .ok_or_else(|| Error::UnknownGroup {
                group: group.to_string(),
            })
    }

    fn enqueue(&mut self, group: &GroupId, dir: Direction) {
        if let Some(g) = self.groups.get_mut(group) {
            let s = g.stream(dir);
            if !s.queued {
                s.queued = true;
                self.ready.push_back((group.clone(), dir));
            }
        }
    }

    fn publish_mode(&mut self, group: &GroupId) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let status = g.status(&self.config);
        let key = (status.mode, status.offline.clone());
        if g.published.as_ref() != Some(&key) {
            g.published = Some(key);
            self.outputs.push_back(RelayOutput::ModeChanged {
                group: group.clone(),
                status,
            });
        }
    }
}
