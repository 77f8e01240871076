//! Telemetry store-and-forward: the vehicle's outbox, the remote's inbox, and the sans-IO
//! uplink session between them.
//!
//! * [`UplinkOutbox`] — the vehicle's durable queue: append, fetch pending in order, mark
//!   uplinked only on the remote's cumulative ack, prune, `MAX_LOCAL_RECORDS` cap with counted
//!   drops, recent-records query, stats. Backends: [`SqliteOutbox`] (default), [`MemoryOutbox`].
//! * [`UplinkInbox`] — the remote's durable store, deduplicated by `(source, seq)`, returning the
//!   ack only after commit. Backends: [`SqliteInbox`] (default), [`MemoryInbox`].
//! * [`UplinkSession`] — connect / send window / ack / reconnect-with-jitter decisions; the
//!   driver owns the WebSocket, the clock and the stores.
//!
//! The message flow and storage layout are specified in `docs/protocols/uplink.md`. This module
//! does no network I/O; the stores are synchronous (SQLite is blocking), so async drivers call
//! them on a blocking thread.

mod inbox;
mod inbox_sqlite;
mod outbox;
mod outbox_memory;
mod outbox_sqlite;
mod session;

/// The uplink stores' durability level under its former name;
/// [`Durability`](crate::sqlite::Durability) is the one enum.
pub use crate::sqlite::Durability as UplinkSync;
pub use inbox::{InboxCommit, MAX_SOURCE_LEN, MemoryInbox, UplinkInbox};
pub use inbox_sqlite::SqliteInbox;
pub use outbox::{
    AppendReport, DEFAULT_MAX_LOCAL_RECORDS, NewRecord, OutboxConfig, OutboxRecord, OutboxStats,
    UplinkOutbox,
};
pub use outbox_memory::MemoryOutbox;
pub use outbox_sqlite::SqliteOutbox;
pub use session::{
    SentBatch, SessionAction, SessionConfig, UplinkSession, UplinkState, UplinkStats,
};
