//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in metering-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeteringError {
    /// A queued message failed validation; it belongs in the dead-letter queue with `reason`.
    #[error("malformed message on {queue}: {reason}")]
    Malformed {
        /// Short queue name (`usage_records`, …).
        queue: &'static str,
        /// Human-readable reason stored in the DLQ entry.
        reason: String,
    },
    /// A Redis command failed (connection lost, server restarting, script error, …).
    #[error("redis error during {action}: {source}")]
    Redis {
        /// What we were doing, e.g. `fetch from queue:usage_records`.
        action: String,
        /// The client error.
        #[source]
        source: redis::RedisError,
    },
    /// The control-plane HTTP client could not be built or a request could not be formed.
    #[error("control-plane client error during {action}: {source}")]
    Http {
        /// What we were doing.
        action: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The control plane answered a request with a status we do not retry.
    #[error("control plane refused {action}: HTTP {status}: {body}")]
    Refused {
        /// What we asked for.
        action: String,
        /// HTTP status.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// The control plane stayed unreachable or kept answering with retryable errors.
    #[error("control plane unavailable during {action}: {reason}")]
    Unavailable {
        /// What we asked for.
        action: String,
        /// Last failure seen.
        reason: String,
        /// `Retry-After` the server asked for, if any.
        retry_after: Option<Duration>,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A command token failed verification (signature, audience, expiry, unknown key, …).
    #[error("command refused: {0}")]
    CommandRefused(String),
    /// A response or stored value could not be decoded.
    #[error("could not decode {what}: {reason}")]
    Decode {
        /// What we were decoding.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

impl MeteringError {
    /// Whether the failed operation may succeed when retried later (network, Redis, 5xx).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MeteringError::Redis { .. }
                | MeteringError::Unavailable { .. }
                | MeteringError::Http { .. }
        )
    }

    pub(crate) fn redis(action: impl Into<String>, source: redis::RedisError) -> Self {
        MeteringError::Redis {
            action: action.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = MeteringError> = std::result::Result<T, E>;
