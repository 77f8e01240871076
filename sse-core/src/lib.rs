//! # sse-core
//!
//! Resumable Server-Sent Event streams for the live console.
//!
//! ## Design
//! - [`buffer::StreamBuffer`] is the sans-IO heart: a ring buffer of one stream, bounded by count
//!   and by each event's age, with IDs `<ms>-<n>` that increase strictly. Subscribers hold only a
//!   [`buffer::StreamCursor`] (an absolute index), so a stalled subscriber never grows memory; a
//!   cursor left behind by trimming gets one `stream_reset` (`lagged`) and continues from the
//!   oldest event. Resume by ID is a binary search (IDs are ordered), never a scan.
//! - [`backend::EventBackend`] is the hub API (`publish`, `subscribe`, `position`) with two
//!   backends: [`backend::memory::MemoryBackend`] (default, one process) and
//!   [`backend::redis::RedisBackend`] (a Redis stream per key, shared by server instances,
//!   connected on first use). One conformance suite runs against both.
//! - [`events`] is the one definition of the console events (`presence`, `can_frame`, `log`,
//!   `command_status`, `group_state`, `stream_reset`) exactly as `tether server` sends them, and
//!   of the stream names ([`events::ConsoleStream`]: `dongle:<uuid>`, `group:<uuid>`). A group's
//!   mode and backlog in `group_state` are the relay engine's types (`relay_core::engine`), the
//!   one source of the mode rule; [`events::GroupView`] is the group as the REST API shows it.
//! - [`sampler`] holds the `can_frame` sampling policy: [`sampler::CanFrameSampler`] per stream,
//!   [`sampler::StreamSamplers`] for a publisher that samples before publishing (what the server
//!   does: frames not sent are never formatted or stored), and the one `log` notice per switch.
//! - [`encoder`] writes the WHATWG event-stream format exactly and turns subscription items into
//!   a `Stream<Item = Bytes>` body with keep-alives ([`encoder::encode_body`] for any item
//!   type); [`parser`] reads it back incrementally for clients.
//! - [`multiplex`] carries several streams on one response with composite IDs (one part per
//!   stream), so a browser's `Last-Event-ID` resumes every stream exactly.
//!
//! ## What this crate does not do
//! It contains no HTTP server or routing: the daemon serves [`encoder::event_stream_body`] (or
//! [`multiplex::open_body`]) with [`encoder::RESPONSE_HEADERS`] from whatever framework it uses,
//! and reads `Last-Event-ID` itself.
//! It does not authenticate subscribers, persist history beyond the configured bounds, or relay
//! CAN traffic (sampling affects console output only, never the relay).

pub mod backend;
pub mod buffer;
pub mod encoder;
pub mod error;
pub mod events;
pub mod id;
pub mod multiplex;
pub mod parser;
pub mod sampler;

pub use backend::memory::{HistoryStats, MemoryBackend, MemorySubscription};
pub use backend::redis::{RedisBackend, RedisBackendConfig};
pub use backend::{
    Clock, EventBackend, ManualClock, StreamConfig, StreamPosition, Subscription, SystemClock,
};
pub use buffer::{ResetReason, StoredEvent, StreamBounds, StreamItem, StreamReset};
pub use error::SseError;
pub use events::{ConsoleEvent, ConsoleStream};
pub use id::EventId;
pub use parser::{EventStreamParser, ParsedEvent, ParsedItem};
