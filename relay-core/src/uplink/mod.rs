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
//! A driver owns the transport, the clock and the loop. Here the "remote" is an inbox in the same
//! process and every batch is acknowledged at once; a real driver (the agent's `/ws/data`
//! worker, the telemetry uplink) sends `Send` batches over its socket and feeds the answers back
//! the same way:
//!
//! ```
//! use rand::SeedableRng;
//! use relay_core::uplink::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> relay_core::error::Result<()> {
//! let store = OutboxStoreHandle::spawn(MemoryOutboxStore::new())?;
//! let mut outbox = StreamOutbox::open(&store, "vehicle-1", StreamConfig::default()).await?;
//! let rng = rand::rngs::StdRng::seed_from_u64(1);
//! let mut session =
//!     UplinkSession::new(SessionConfig::default(), rng, outbox.acked(), outbox.last_seq(), 0);
//! let mut remote = MemoryInbox::new();
//!
//! let records = (0..1000).map(|i| NewRecord { ts_ms: i, payload: "telemetry".into() });
//! outbox.append(records.collect()).await?;
//! session.handle_records_available(outbox.last_seq());
//!
//! let now = 0; // a virtual clock: nothing here waits
//! let mut acks = Vec::new();
//! while let Some(action) = session.poll_action(now) {
//!     match action {
//!         SessionAction::Connect => session.handle_connected(remote.acked("vehicle-1")?, now),
//!         SessionAction::Reconcile { remote_acked } => {
//!             let reconciled = outbox.reconcile(remote_acked).await?;
//!             session.handle_reconciled(&reconciled, now);
//!         }
//!         SessionAction::Send { after, max } => {
//!             let batch = outbox.next_batch(after, max).await?;
//!             let sent = batch.first().zip(batch.last()).map(|(f, l)| SentBatch {
//!                 first: f.seq,
//!                 last: l.seq,
//!                 count: batch.len() as u64,
//!                 bytes: batch.iter().map(|r| r.payload.len() as u64).sum(),
//!             });
//!             acks.push(remote.commit("vehicle-1", &batch)?.ack); // over the wire
//!             session.handle_sent(sent, now);
//!         }
//!         SessionAction::MarkUplinked { up_to } => {
//!             outbox.ack(up_to).await?;
//!         }
//!         SessionAction::DropPending { reason } => {
//!             outbox.drop_pending(reason).await?;
//!             session.handle_records_available(outbox.last_seq());
//!         }
//!         SessionAction::Disconnect => {} // close the socket
//!     }
//!     for ack in acks.drain(..) {
//!         session.handle_ack(ack, now)?;
//!     }
//! }
//! assert_eq!((outbox.pending(), remote.acked("vehicle-1")?), (0, 1000));
//! assert_eq!(session.stats(now).records_acked_total, 1000);
//! # Ok(())
//! # }
//! ```
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

pub use inbox::{InboxCommit, InboxSource, MAX_SOURCE_LEN, MemoryInbox, UplinkInbox};
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
pub use store_sqlite::SqliteOutboxStore;
pub use store_thread::OutboxStoreHandle;
/// The backoff policy of [`SessionConfig::backoff`], from `tether-retry`.
pub use tether_retry::FullJitter;
