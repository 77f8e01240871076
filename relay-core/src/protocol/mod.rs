//! The agent ↔ server data-plane wire protocol (WebSocket messages), version 1.
//!
//! Messages are the serde types in [`messages`]; [`decode`] turns bytes into a validated
//! [`Message`] and never panics (it is fuzzed by the `data_plane_message` target), [`encode`]
//! does the reverse. The normative spec with examples is `docs/protocols/data-plane.md`.
//!
//! Flow: the agent sends `hello` (version, group, side, resume cursor, accepted encodings); the
//! server answers `welcome` (or `error` + close). After that both sides send `frames` batches
//! of their outbound stream and cumulative `ack`s of the inbound one; the server also sends
//! `gap`, `group_state` and `error`.
//!
//! The diagnostics channel (vehicle commands over `/ws/data`: `diag_hello`, `command`,
//! `command_response`, …) is the sibling module [`diag`].
//!
//! This module does no I/O and keeps no connection state; the daemon's WebSocket handler owns
//! the socket and feeds decoded messages to the [`crate::engine`].

mod codec;
mod convert;
pub mod diag;
#[cfg(test)]
mod fuzz_tests;
pub mod messages;

#[cfg(any(test, fuzzing))]
pub use codec::fuzz_decode;
pub use codec::{decode, decode_hello, encode, negotiate_encoding};
#[cfg(any(test, fuzzing))]
pub use convert::fuzz_stored_frame;
pub use convert::{
    DeliveryMessage, StoredFrameEncoder, decode_stored_frame, encode_delivery, encode_stored_frame,
};
pub use messages::{
    Ack, Encoding, ErrorCode, ErrorMessage, FrameBatch, GapNotice, GroupState, Hello, Message,
    ResumeCursor, Welcome, WireFrame, WireGapReason,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Every version this crate can speak (a `hello` with another version is refused).
pub const SUPPORTED_VERSIONS: &[u16] = &[PROTOCOL_VERSION];

/// Largest frame batch accepted in one `frames` message.
pub const MAX_BATCH_FRAMES: usize = 4096;

/// Largest encoded message accepted by [`decode`], in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Longest group id accepted in `hello`.
pub const MAX_GROUP_ID_LEN: usize = 128;

/// Longest `error.message` accepted.
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;
