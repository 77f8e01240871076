//! The engine's configuration, outputs and storage requests.

use crate::log::{Gap, Item, Seq, Trimmed};

use super::types::{Direction, GroupBacklog, GroupId, GroupMode, Side};

/// Engine settings. Defaults suit a server relaying a few thousand frames/s per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Items a stream may deliver per scheduling round (the deficit-round-robin quantum).
    pub quantum: u64,
    /// Replay rate limit per stream, items per second (token bucket refill). Live items (served
    /// from memory as they arrive) are not limited.
    pub replay_rate_per_s: u64,
    /// Token bucket capacity: the largest replay burst, in items.
    pub replay_burst: u64,
    /// Items asked for per storage read.
    pub read_batch: usize,
    /// Items kept in memory per stream for live delivery; older ones are re-read from the log
    /// once durable.
    pub live_buffer: usize,
    /// Most items delivered to a consumer and not yet acknowledged by it (flow control).
    pub consumer_window: u64,
    /// Most items a stream delivers ahead of its durable head (*cut-through*): a live item is
    /// handed to the consumer as soon as it arrives if its seq is at most `head + this`, so
    /// the log's commit latency is not added to delivery. `0` delivers only durable items.
    /// Producers are still acknowledged only after durability. After a server crash a consumer
    /// may hold items the log never stored; its cursor is accepted up to `head + this` and the
    /// producer's resend of those seqs is not delivered again. This relies on producers never
    /// sending other content under a seq they sent before.
    pub cut_through: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            quantum: 64,
            replay_rate_per_s: 50_000,
            replay_burst: 5_000,
            read_batch: 512,
            live_buffer: 4096,
            consumer_window: 4096,
            cut_through: 4096,
        }
    }
}

/// What the stream log holds for one direction when a group is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// The stream's head (highest durable seq), from `StreamLog::backlog`.
    pub head: Seq,
    /// The consumer's stored cursor, from `StreamLog::load_cursor`.
    pub consumer_cursor: Seq,
}

/// What the driver loads for a group before handing it to the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// Whether the group is activated (persisted by the driver).
    pub activated: bool,
    /// The `a_to_b` stream.
    pub a_to_b: StreamSnapshot,
    /// The `b_to_a` stream.
    pub b_to_a: StreamSnapshot,
}

/// A group's published state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// Current mode.
    pub mode: GroupMode,
    /// Stored items not yet acknowledged by the receiving side, per direction.
    pub backlog: GroupBacklog,
    /// Sides that are offline.
    pub offline: Vec<Side>,
    /// Whether a stream's consumer is online and fed from the log (replaying its backlog).
    pub replaying: bool,
}

impl GroupStatus {
    /// The backlog as users see it: the stored, unacknowledged items while the group is not
    /// `active` (a side offline or replaying), and none while it is `active` — items in flight
    /// to a live consumer are not a backlog.
    pub fn waiting(&self) -> GroupBacklog {
        if self.mode == GroupMode::Active {
            GroupBacklog::default()
        } else {
            self.backlog
        }
    }
}

/// What the driver tells a side that just connected (the data-plane `welcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideWelcome {
    /// Highest durable seq of the side's outbound stream: it resends from `tx_acked + 1`.
    pub tx_acked: Seq,
    /// Delivery of the inbound stream starts after this seq.
    pub rx_from: Seq,
    /// The group's mode after the connect.
    pub mode: GroupMode,
    /// How far the side's cursor is above every seq its producer handed to the log. Non-zero
    /// only when the side received items (by cut-through) that the log did not store — a
    /// failed append, or a server crash that lost appends in flight: the producer resends them,
    /// and they are not delivered again.
    pub ahead_of_log: Seq,
}

/// Where the items of a delivery come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliverySource {
    /// Accepted from the producer in this process and handed over from memory (cut-through or
    /// live): the payloads are the bytes the caller built from a validated batch.
    Live,
    /// Read back from the stream log (a replay, or a consumer catching up): the payloads have
    /// been at rest and may be damaged, so the caller should check them before use.
    Log,
}

/// Something the driver has to send or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutput {
    /// Send these items (dense seqs, ascending) to side `to`.
    Deliver {
        /// The group.
        group: GroupId,
        /// The receiving side.
        to: Side,
        /// The items.
        items: Vec<Item>,
        /// Where all of them come from.
        source: DeliverySource,
    },
    /// Tell side `to` that its outbound stream is durable up to `up_to`.
    Ack {
        /// The group.
        group: GroupId,
        /// The producing side.
        to: Side,
        /// Cumulative ack.
        up_to: Seq,
    },
    /// Tell side `to` that it will never get the seqs of `gap` (sent in order with deliveries).
    Gap {
        /// The group.
        group: GroupId,
        /// The receiving side.
        to: Side,
        /// The missing range.
        gap: Gap,
    },
    /// The group's mode or offline set changed: persist and publish a `group_state` event.
    ModeChanged {
        /// The group.
        group: GroupId,
        /// The new state.
        status: GroupStatus,
    },
    /// Retention removed items the consumer had not acknowledged.
    BufferPressure {
        /// The group.
        group: GroupId,
        /// The trimmed direction.
        direction: Direction,
        /// What the trim removed.
        trimmed: Trimmed,
        /// How many of the removed items the consumer had not acknowledged.
        unacknowledged: u64,
    },
    /// Appending the side's frames failed: close its connection with an `internal` error so it
    /// reconnects and resends from its last ack.
    ResetProducer {
        /// The group.
        group: GroupId,
        /// The producing side.
        side: Side,
    },
}

/// Stream-log work the driver executes, reporting results back to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageRequest {
    /// `StreamLog::append(direction.stream_key(group), items)`, then
    /// [`super::RelayEngine::handle_append_result`]. Appends of one stream must be executed
    /// and reported in the order they were requested.
    Append {
        /// The group.
        group: GroupId,
        /// The stream.
        direction: Direction,
        /// Items to append.
        items: Vec<Item>,
    },
    /// `StreamLog::read(key, after, max)`, then [`super::RelayEngine::handle_read_result`]
    /// with the same `epoch`.
    Read {
        /// The group.
        group: GroupId,
        /// The stream.
        direction: Direction,
        /// Read after this seq.
        after: Seq,
        /// At most this many items.
        max: usize,
        /// Echoed back so that results from before a reconnect are ignored.
        epoch: u64,
    },
    /// `StreamLog::store_cursor(key, consumer side name, seq)`. Fire and forget: a lost cursor
    /// update only causes re-delivery, which consumers deduplicate by seq.
    StoreCursor {
        /// The group.
        group: GroupId,
        /// The stream.
        direction: Direction,
        /// The consumer's new cursor.
        seq: Seq,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_the_backlog_unless_active() {
        let backlog = GroupBacklog {
            a_to_b: 3,
            b_to_a: 0,
        };
        let status = |mode| GroupStatus {
            mode,
            backlog,
            offline: Vec::new(),
            replaying: false,
        };
        assert_eq!(status(GroupMode::Degraded).waiting(), backlog);
        assert_eq!(status(GroupMode::Inactive).waiting(), backlog);
        assert!(status(GroupMode::Active).waiting().is_empty());
    }
}
