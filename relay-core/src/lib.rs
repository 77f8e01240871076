//! # relay-core
//!
//! Ordered, durable, sequenced streams for the Tether data plane.
//!
//! * [`log`] — the [`log::StreamLog`] trait (append with producer sequence numbers, read from a
//!   cursor with explicit gaps, consumer cursors, retention trims) and its memory, SQLite and
//!   Redis Streams backends.
//! * [`engine`] — the sans-IO group relay engine: modes, replay scheduling, buffer pressure.
//! * [`protocol`] — the agent ↔ server data-plane wire messages.
//! * [`uplink`] — store-and-forward, the producer side of every durable stream (the agent's
//!   relay streams, the telemetry uplink): multi-stream outbox store, stream rules, sans-IO
//!   session; and the telemetry remote's inbox.
//! * [`sqlite`] — [`sqlite::open_wal`] and [`sqlite::Durability`]: how every SQLite file of
//!   Tether is opened (WAL, `synchronous`, busy timeout, foreign keys), in one function.
//!
//! What this crate does not do: no HTTP, WebSocket or socket code, and no clock of its own
//! (callers pass the current time). Daemons own the I/O.

pub mod engine;
pub mod error;
pub mod log;
pub mod protocol;
pub mod sqlite;
pub mod uplink;

pub use error::Error;
