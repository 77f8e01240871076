//! Queue message validation, idempotency keys and enrichment (pure, no I/O).
//!
//! Every message is a JSON object. Validation checks types, required fields, non-negative
//! numbers and RFC 3339 timestamps, and yields a [`ValidMessage`] that knows which control-plane
//! route it goes to and which idempotency key it carries. Unknown extra fields are kept.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::MeteringError;

/// Largest message we accept; bigger ones are dead-lettered.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The only product code usage records may carry.
pub const PRODUCT_CODE: &str = "speech_transcription";

/// The three metering queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// `queue:usage_records`.
    UsageRecords,
    /// `queue:session_lifecycle`.
    SessionLifecycle,
    /// `queue:quota_refresh`.
    QuotaRefresh,
}

impl QueueKind {
    /// All queues, in the order the agent serves them.
    pub const ALL: [QueueKind; 3] = [
        QueueKind::UsageRecords,
        QueueKind::SessionLifecycle,
        QueueKind::QuotaRefresh,
    ];

    /// Short name used in keys, metrics labels and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::UsageRecords => "usage_records",
            QueueKind::SessionLifecycle => "session_lifecycle",
            QueueKind::QuotaRefresh => "quota_refresh",
        }
    }

    /// Parse a short name.
    pub fn from_name(name: &str) -> Option<Self> {
        QueueKind::ALL.into_iter().find(|q| q.name() == name)
    }
}

/// Where a valid message is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/v1/sessions/{id}/usage-records` (batched as `{"records": [...]}`).
    UsageRecords,
    /// `POST /api/v1/sessions/{id}/start`.
    SessionStart,
    /// `POST /api/v1/sessions/{id}/complete`.
    SessionComplete,
    /// `POST /api/v1/sessions/{id}/refresh`.
    QuotaRefresh,
}

/// A message that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMessage {
    /// Target route.
    pub route: Route,
    /// `api_session_id`, safe to put in a URL path segment.
    pub session_id: String,
    /// Idempotency key: `record_id` / `transaction_id` / hash of the raw bytes.
    pub key: String,
    /// The message fields (with the idempotency key filled in).
    pub body: Map<String, Value>,
}

/// Fields the agent adds to every message it forwards.
#[derive(Debug, Clone)]
pub struct Enrichment {
    /// `server_instance_id`: the configured server id.
    pub server_instance_id: String,
    /// `api_server_region`.
    pub api_server_region: String,
    /// `agent_version`.
    pub agent_version: String,
}

impl ValidMessage {
    /// The body with `server_instance_id`, `api_server_region`, `processing_timestamp` and
    /// `agent_version` added.
    pub fn enriched(&self, e: &Enrichment, now: DateTime<Utc>) -> Value {
        let mut body = self.body.clone();
        body.insert(
            "server_instance_id".into(),
            Value::String(e.server_instance_id.clone()),
        );
        body.insert(
            "api_server_region".into(),
            Value::String(e.api_server_region.clone()),
        );
        body.insert(
            "processing_timestamp".into(),
            Value::String(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        body.insert(
            "agent_version".into(),
            Value::String(e.agent_version.clone()),
        );
        Value::Object(body)
    }
}

/// `sha256:<hex>` of the raw message bytes: the key of a message that carries none.
pub fn raw_hash_key(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A UUID derived from the raw bytes (first 16 bytes of SHA-256, version/variant bits set as
/// for a name-based UUID). Used as the quota-refresh `transaction_id` when the producer gave
/// none: identical on every retry, crash recovery and DLQ replay of the same queued item.
pub fn derived_transaction_id(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8 (custom, name-based)
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// Validate a raw queued message from `queue`.
pub fn validate(queue: QueueKind, raw: &[u8]) -> Result<ValidMessage, MeteringError> {
    let bad = |reason: String| MeteringError::Malformed {
        queue: queue.name(),
        reason,
    };
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(bad(format!(
            "message is {} bytes, limit {MAX_MESSAGE_BYTES}",
            raw.len()
        )));
    }
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Value::Object(mut body) = value else {
        return Err(bad("message is not a JSON object".into()));
    };
    let session_id = session_id_field(&body).map_err(bad)?;
    non_empty_string(&body, "customer_id").map_err(bad)?;
    match queue {
        QueueKind::UsageRecords => {
            let product = non_empty_string(&body, "product_code").map_err(bad)?;
            if product != PRODUCT_CODE {
                return Err(bad(format!(
                    "product_code must be {PRODUCT_CODE:?}, got {product:?}"
                )));
            }
            for f in ["connection_duration_seconds", "audio_duration_seconds"] {
                non_negative_number(&body, f).map_err(bad)?;
            }
            for f in ["data_bytes_processed", "request_count"] {
                non_negative_integer(&body, f).map_err(bad)?;
            }
            let req = timestamp(&body, "request_timestamp").map_err(bad)?;
            let resp = timestamp(&body, "response_timestamp").map_err(bad)?;
            if resp < req {
                return Err(bad("response_timestamp is before request_timestamp".into()));
            }
            let key = match body.get("record_id") {
                None | Some(Value::Null) => raw_hash_key(raw),
                Some(_) => non_empty_string(&body, "record_id")
                    .map_err(bad)?
                    .to_owned(),
            };
            body.insert("record_id".into(), Value::String(key.clone()));
            Ok(ValidMessage {
                route: Route::UsageRecords,
                session_id,
                key,
                body,
            })
        }
        QueueKind::SessionLifecycle => {
            let route = match non_empty_string(&body, "event").map_err(bad)? {
                "start" => Route::SessionStart,
                "complete" => Route::SessionComplete,
                other => {
                    return Err(bad(format!(
                        "event must be \"start\" or \"complete\", got {other:?}"
                    )));
                }
            };
            timestamp(&body, "timestamp").map_err(bad)?;
            Ok(ValidMessage {
                route,
                session_id,
                key: raw_hash_key(raw),
                body,
            })
        }
        QueueKind::QuotaRefresh => {
            if body.contains_key("timestamp") {
                timestamp(&body, "timestamp").map_err(bad)?;
            }
            let key = match body.get("transaction_id") {
                None | Some(Value::Null) => derived_transaction_id(raw),
                Some(_) => non_empty_string(&body, "transaction_id")
                    .map_err(bad)?
                    .to_owned(),
            };
            body.insert("transaction_id".into(), Value::String(key.clone()));
            Ok(ValidMessage {
                route: Route::QuotaRefresh,
                session_id,
                key,
                body,
            })
        }
    }
}

fn non_empty_string<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match body.get(field) {
        None | Some(Value::Null) => Err(format!("missing required field {field}")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("{field} is empty")),
        Some(Value::String(s)) if s.len() > 256 => Err(format!("{field} is longer than 256 bytes")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn session_id_field(body: &Map<String, Value>) -> Result<String, String> {
    let id = non_empty_string(body, "api_session_id")?;
    // The id goes into a URL path segment: allow only characters that need no escaping.
    if id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        || id == "."
        || id == ".."
    {
        return Err("api_session_id must be 1-128 characters of [A-Za-z0-9._:-]".into());
    }
    Ok(id.to_owned())
}

fn non_negative_number(body: &Map<String, Value>, field: &str) -> Result<f64, String> {
    match body.get(field) {
        None | Some(Value::Null) => Err(format!("missing required field {field}")),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!("{field} must be a non-negative number")),
        },
        Some(_) => Err(format!("{field} must be a number")),
    }
}

fn non_negative_integer(body: &Map<String, Value>, field: &str) -> Result<u64, String> {
    match body.get(field) {
        None | Some(Value::Null) => Err(format!("missing required field {field}")),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{field} must be a non-negative integer")),
        Some(_) => Err(format!("{field} must be an integer")),
    }
}

fn timestamp(body: &Map<String, Value>, field: &str) -> Result<DateTime<Utc>, String> {
    let s = non_empty_string(body, field)?;
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field} is not an RFC 3339 timestamp: {e}"))
}

#[cfg(test)]
mod tests;
