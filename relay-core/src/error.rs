//! The one error type of relay-core.
//!
//! Every variant says what failed, on which resource, during which action. Callers decide what
//! to do with [`Error::is_retryable`]; nobody should match on message text.

use std::path::PathBuf;

/// Everything that can go wrong in relay-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stream name was refused before touching any backend (empty, too long, or containing a
    /// reserved character). Not retryable: the caller has to use another name.
    #[error("invalid stream name {stream:?}: {reason}")]
    InvalidStreamName {
        /// The refused name.
        stream: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An item carried a sequence number outside `1..=MAX_SEQ` (see [`crate::log::MAX_SEQ`]).
    /// The whole append batch was refused and nothing was stored.
    #[error("invalid sequence number {seq} in stream {stream:?} (valid: 1..={max})")]
    InvalidSeq {
        /// Stream the batch was appended to.
        stream: String,
        /// The offending sequence number.
        seq: u64,
        /// The largest accepted sequence number.
        max: u64,
    },

    /// An item carried a timestamp above `MAX_SEQ` milliseconds (year 287,000): refused like an
    /// invalid seq, because no backend can store it exactly.
    #[error("invalid timestamp {ts_ms} on seq {seq} in stream {stream:?}")]
    InvalidTimestamp {
        /// Stream the batch was appended to.
        stream: String,
        /// Seq of the offending item.
        seq: u64,
        /// The refused timestamp.
        ts_ms: u64,
    },

    /// Opening or creating the SQLite database file failed (including the connection settings
    /// of [`crate::sqlite::open_wal`] and the format check).
    #[error("cannot open SQLite stream log at {path}: {source}")]
    SqliteOpen {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// A stream log's storage holds another format than this build reads and writes
    /// ([`crate::log::FORMAT_VERSION`]): written by another build, or not a stream log. Nothing
    /// was changed. Not retryable: use a build that reads it, or another file or key prefix.
    #[error(
        "stream log at {location} has storage format {found}; this build reads format {expected}"
    )]
    UnsupportedLogFormat {
        /// The SQLite file, or the Redis key holding the version.
        location: String,
        /// The version found.
        found: String,
        /// The version this build reads ([`crate::log::FORMAT_VERSION`]).
        expected: u32,
    },

    /// A SQLite statement failed during `action` (for example `"append"`, `"read"`).
    #[error("SQLite stream log failed during {action}: {source}")]
    Sqlite {
        /// What the log was doing.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// A Redis command or script failed during `action` (for example `"append"`, `"trim"`).
    #[error("Redis stream log failed during {action}: {source}")]
    Redis {
        /// What the log was doing.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },

    /// Data read back from a backend did not have the shape this crate writes (a missing field,
    /// a non-numeric sequence number). Someone else wrote to our keys or tables.
    #[error("stream {stream:?} holds malformed data: {detail}")]
    Corrupt {
        /// Stream whose data is malformed.
        stream: String,
        /// What was wrong.
        detail: String,
    },

    /// A data-plane message was larger than the decoder accepts; it was not parsed.
    #[error("data-plane message of {size} bytes exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// Size of the refused message.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// A data-plane message was not valid `encoding` (JSON or MessagePack) or did not match the
    /// message grammar (unknown `type`, missing or mistyped field).
    #[error("cannot decode data-plane {encoding} message: {reason}")]
    ProtocolDecode {
        /// `json` or `msgpack`.
        encoding: &'static str,
        /// What the decoder said.
        reason: String,
    },

    /// A data-plane message could not be encoded as `encoding`.
    #[error("cannot encode data-plane {encoding} message: {reason}")]
    ProtocolEncode {
        /// `json` or `msgpack`.
        encoding: &'static str,
        /// What the encoder said.
        reason: String,
    },

    /// A data-plane message decoded but broke a protocol rule (an empty batch, a gap whose
    /// count disagrees with its range, an invalid frame, a first message that is not `hello`).
    #[error("invalid data-plane `{message_type}` message: {reason}")]
    ProtocolInvalid {
        /// The message's `type`.
        message_type: &'static str,
        /// The rule it broke.
        reason: String,
    },

    /// A peer asked for a data-plane protocol version this crate does not speak.
    #[error("unsupported data-plane protocol version {got} (supported: {supported:?})")]
    UnsupportedProtocolVersion {
        /// The version the peer asked for.
        got: u64,
        /// The versions this crate speaks.
        supported: &'static [u16],
    },

    /// The relay engine was given input for a group it does not hold (never added, or
    /// removed).
    #[error("relay group {group:?} is not loaded in the engine")]
    UnknownGroup {
        /// The group id.
        group: String,
    },

    /// Frames arrived for a group that is not activated; nothing was stored.
    #[error("relay group {group:?} is not activated; frames refused")]
    GroupInactive {
        /// The group id.
        group: String,
    },

    /// Frames or acks arrived from a side the engine does not consider connected.
    #[error("side {side} of relay group {group:?} is not connected")]
    SideNotConnected {
        /// The group id.
        group: String,
        /// The side (`a` or `b`).
        side: String,
    },

    /// A producer's frame batch left a hole after what it already sent on this connection (a
    /// batch was refused or lost before it). Nothing was stored; the producer resends from its
    /// last ack.
    #[error("frames on stream {stream:?} start at seq {got}, expected at most {expected}")]
    SeqOutOfOrder {
        /// The stream key.
        stream: String,
        /// The next seq the engine expected.
        expected: u64,
        /// The first new seq of the batch.
        got: u64,
    },

    /// A consumer claimed (in its resume cursor or an ack) to have seen seqs the stream never
    /// stored. Nothing was changed.
    #[error("cursor {cursor} on stream {stream:?} is beyond its head {head}")]
    CursorAhead {
        /// The stream key.
        stream: String,
        /// The claimed cursor.
        cursor: u64,
        /// The highest seq the stream holds or has in flight.
        head: u64,
    },

    /// Opening or creating an uplink store (outbox or inbox) SQLite file failed.
    #[error("cannot open uplink {store} at {path}: {source}")]
    UplinkStoreOpen {
        /// `outbox` or `inbox`.
        store: &'static str,
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// A SQLite statement of an uplink store failed during `action`; the transaction was
    /// rolled back.
    #[error("uplink {store} failed during {action}: {source}")]
    UplinkStore {
        /// `outbox` or `inbox`.
        store: &'static str,
        /// What the store was doing.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// An uplink record or source id was refused (empty or oversized source id, seq 0).
    #[error("invalid uplink input: {reason}")]
    InvalidUplinkInput {
        /// What was wrong.
        reason: String,
    },

    /// The remote acknowledged a seq the uplink session never sent. Nothing was marked.
    #[error("uplink ack {acked} is beyond the last sent seq {sent}")]
    UplinkAckAhead {
        /// The acknowledged seq.
        acked: u64,
        /// The highest seq sent.
        sent: u64,
    },

    /// A second writer asked for an outbox stream that is open already (two writers would hand
    /// out the same seqs). Nothing was opened.
    #[error("outbox stream {stream:?} is already open")]
    OutboxStreamBusy {
        /// The stream key.
        stream: String,
    },

    /// A call on an outbox stream was dropped (cancelled) while its commit was in flight, so
    /// this handle may be behind its store. Nothing more is done through it: open the stream
    /// again.
    #[error(
        "outbox stream {stream:?} is out of step with its store after a cancelled call; open it again"
    )]
    OutboxOutOfStep {
        /// The stream key.
        stream: String,
    },

    /// The worker thread or blocking task that runs a backend's blocking calls died (it
    /// panicked, the runtime is shutting down, or the store was closed) during `action`.
    #[error("storage worker failed during {action}")]
    WorkerGone {
        /// What the log was doing.
        action: &'static str,
    },
}

impl Error {
    /// True when the same call may succeed if repeated later unchanged: lost or refused
    /// connections, timeouts, a busy or locked database. False for invalid input, malformed
    /// data and bugs.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || matches!(
                        source.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::ClusterDown
                                | redis::ServerErrorKind::MasterDown
                        )
                    )
            }
            Error::Sqlite { source, .. }
            | Error::SqliteOpen { source, .. }
            | Error::UplinkStore { source, .. }
            | Error::UplinkStoreOpen { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Error::InvalidStreamName { .. }
            | Error::InvalidSeq { .. }
            | Error::InvalidTimestamp { .. }
            | Error::Corrupt { .. }
            | Error::UnsupportedLogFormat { .. }
            | Error::WorkerGone { .. }
            | Error::MessageTooLarge { .. }
            | Error::ProtocolDecode { .. }
            | Error::ProtocolEncode { .. }
            | Error::ProtocolInvalid { .. }
            | Error::UnsupportedProtocolVersion { .. }
            | Error::UnknownGroup { .. }
            | Error::GroupInactive { .. }
            | Error::SideNotConnected { .. }
            | Error::CursorAhead { .. }
            | Error::SeqOutOfOrder { .. }
            | Error::InvalidUplinkInput { .. }
            | Error::UplinkAckAhead { .. }
            | Error::OutboxStreamBusy { .. }
            | Error::OutboxOutOfStep { .. } => false,
        }
    }
}

/// Result alias used throughout relay-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
