//! The one error type of this crate.

/// Everything that can fail in `sse-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// An `event` field value (event type) contains CR, LF or NUL, or is empty, so it cannot be
    /// written as one `event:` line; nothing was published or encoded.
    #[error("invalid event type {value:?}: must be non-empty and free of CR, LF and NUL")]
    InvalidEventType {
        /// The refused value.
        value: String,
    },
    /// An `id` field value contains CR, LF or NUL; nothing was encoded.
    #[error("invalid event id {value:?}: must not contain CR, LF or NUL")]
    InvalidEventId {
        /// The refused value.
        value: String,
    },
    /// A comment contains CR or LF and would end the comment line early; nothing was encoded.
    #[error("invalid comment {value:?}: must not contain CR or LF")]
    InvalidComment {
        /// The refused value.
        value: String,
    },
    /// A console event's type is unknown or its data does not fit the type's schema (reading
    /// an event back with `ConsoleEvent::from_parts`).
    #[error("invalid console event {event_type:?}: {detail}")]
    InvalidConsoleEvent {
        /// The event type given.
        event_type: String,
        /// What did not fit.
        detail: String,
    },
    /// A stream key is empty or contains characters we do not allow in keys.
    #[error("invalid stream key {key:?}: {reason}")]
    InvalidStreamKey {
        /// The refused key.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A Redis command failed while doing `action` on stream `stream_key`.
    #[error("redis error during {action} on stream {stream_key:?}: {source}")]
    Redis {
        /// What we were doing (for example `publish`, `subscribe`, `read`).
        action: &'static str,
        /// The stream key concerned.
        stream_key: String,
        /// The underlying client error.
        #[source]
        source: redis::RedisError,
    },
    /// A connection to Redis failed moments ago, so `action` on `stream_key` was not tried
    /// (it is tried again after the backend's reconnect pause).
    #[error(
        "redis unavailable during {action} on stream {stream_key:?}: a connection attempt failed moments ago"
    )]
    RedisUnavailable {
        /// What we were doing.
        action: &'static str,
        /// The stream key concerned.
        stream_key: String,
    },
    /// Redis returned an entry or reply we could not understand (missing field, bad ID).
    #[error("unexpected redis reply during {action} on stream {stream_key:?}: {detail}")]
    RedisReply {
        /// What we were doing.
        action: &'static str,
        /// The stream key concerned.
        stream_key: String,
        /// What was wrong with the reply.
        detail: String,
    },
}

impl SseError {
    /// Whether retrying the same call later may succeed (Redis I/O trouble), as opposed to a
    /// caller error that will fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            SseError::Redis { source, .. } => {
                source.is_io_error() || source.is_timeout() || source.is_connection_dropped()
            }
            SseError::RedisUnavailable { .. } => true,
            _ => false,
        }
    }
}
