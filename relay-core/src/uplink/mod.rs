//! Store-and-forward: the producer side of every durable stream, and the telemetry remote's
//! inbox.
//!
//! Two producers use it: the dongle agent (one stream per dongle, group and side, to the
//! server's group relay) and the telemetry vehicle (one stream to the remote collector). Both
//! keep records in a local store first, send them in batches within a window, forget (or mark)
//! them only on the remote's cumulative ack, and resume from the remote's ack after any outage.
//!
//! * [`OutboxStore`] — the narrow, byte-level, rule-free store of many streams: records under
//!   slots, a few numbers per stream, atomic commits. Backends: [`SqliteOutboxStore`] (one
//!   file, records chunked per append), [`MemoryOutboxStore`].
//! * [`OutboxStoreHandle`] — a store on a thread of its own, reached from async code; it
//!   group-commits what every stream queued.
//! * [`StreamOutbox`] — one stream: dense seqs from 1, cumulative ack, the cap with counted
//!   drops, drop-all with a reason, reconcile with the remote's handshake, renumbering that
//!   never reuses a seq that may be at the remote, the inbound cursor, and the pending records
//!   mirrored in memory so that sending never reads the store.
//! * [`UplinkSession`] — the sans-IO session: connect, reconcile, send window, acks,
//!   refusals, pause, full-jitter reconnects (`tether-retry`), statistics. Transport-agnostic:
//!   the relay's data plane and the telemetry uplink both map onto it.
//! * [`UplinkInbox`] — the telemetry remote's durable store, deduplicated by `(source, seq)`,
//!   returning the ack only after commit. Backends: [`SqliteInbox`], [`MemoryInbox`].
//!
//! The rules, the message mapping of both protocols and the storage layout are specified in
//! `docs/protocols/uplink.md`. What this module does not do: no network I/O, no clock of its
//! own (callers pass `now_ms`), no serialization of payloads (they are opaque bytes), no
//! metrics registry — reports and statistics are plain values the driver publishes.

mod inbox;
mod inbox_sqlite;
mod outbox;
mod rules;
mod session;
mod store;
mod store_memory;
mod store_sqlite;
mod store_thread;

pub use inbox::{InboxCommit, MAX_SOURCE_LEN, MemoryInbox, UplinkInbox};
pub use inbox_sqlite::SqliteInbox;
pub use outbox::{
    DEFAULT_MAX_LOCAL_RECORDS, DEFAULT_MIRROR_MAX, OutboxStats, StreamConfig, StreamOutbox,
};
pub use rules::{AppendReport, DropReport, OnAck, Reconciled};
pub use session::{
    Refusal, RemoteAhead, SentBatch, SessionAction, SessionConfig, UplinkSession, UplinkState,
    UplinkStats,
};
pub use store::{
    DropCounts, DropReason, MAX_STREAM_KEY_LEN, MAX_UNSETTLED_RANGES, NewRecord, OutboxRecord,
    OutboxStore, StoredRecord, StoredStream, StreamId, StreamState, StreamWrite, Unsettled,
};
pub use store_memory::MemoryOutboxStore;
pub use store_sqlite::{SqliteOutboxStore, UplinkSync};
pub use store_thread::OutboxStoreHandle;
/// The backoff policy of [`SessionConfig::backoff`], from `tether-retry`.
pub use tether_retry::FullJitter;
