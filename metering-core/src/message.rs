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

/// The fields [`ValidMessage::enriched`] sets; a producer's own values for them are replaced.
const ENRICHMENT_FIELDS: [&str; 4] = [
    "server_instance_id",
    "api_server_region",
    "processing_timestamp",
    "agent_version",
];

/// A validated message as the consumer holds it until its request is built: the fields
/// serialised once (idempotency key filled in, producer-set enrichment fields dropped) instead
/// of a parsed tree, so a held message costs about its own size and enriching it is a copy.
/// [`CompactMessage::write_enriched`] yields the same object as [`ValidMessage::enriched`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompactMessage {
    /// Target route.
    pub route: Route,
    /// `api_session_id`, safe to put in a URL path segment.
    pub session_id: String,
    /// Idempotency key.
    pub key: String,
    /// The JSON object without its closing brace: `{"a":1,"b":"x"` (or `{` when empty). A
    /// `String`, not a `Box<str>`: shrinking the buffer to fit would only leave small holes.
    head: String,
}

impl ValidMessage {
    /// This message in compact form.
    pub fn into_compact(mut self) -> CompactMessage {
        for f in ENRICHMENT_FIELDS {
            self.body.remove(f);
        }
        let mut head = Value::Object(self.body).to_string();
        head.pop(); // the closing brace
        CompactMessage {
            route: self.route,
            session_id: self.session_id,
            key: self.key,
            head,
        }
    }
}

impl CompactMessage {
    /// Append the enriched object to `out`; `tail` is [`Enrichment::json_tail`].
    pub fn write_enriched(&self, tail: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        if self.head.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(tail.as_bytes());
    }

    /// Bytes [`Self::write_enriched`] appends.
    pub fn enriched_len(&self, tail: &str) -> usize {
        self.head.len() + 1 + tail.len()
    }

    /// Drop the serialised fields once the request body holds them (the key stays).
    pub fn clear_fields(&mut self) {
        self.head = String::new();
    }
}

impl Enrichment {
    /// The enrichment fields as the end of a JSON object, `"server_instance_id":…}`, for
    /// [`CompactMessage::write_enriched`]; built once per request.
    pub fn json_tail(&self, now: DateTime<Utc>) -> String {
        let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let values = [
            self.server_instance_id.as_str(),
            self.api_server_region.as_str(),
            ts.as_str(),
            self.agent_version.as_str(),
        ];
        let mut out = String::with_capacity(160);
        for (i, (k, v)) in ENRICHMENT_FIELDS.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(k);
            out.push_str("\":");
            out.push_str(&Value::from(v).to_string());
        }
        out.push('}');
        out
    }
}

/// Fuzzing and test entry point (the `metering_message` target): runs both validators
/// ([`validate`] then [`ValidMessage::into_compact`], and [`validate_compact`]) on `raw` from
/// queue `q`, and panics unless they agree on the verdict, the refusal reason, the route,
/// session and key, and the forwarded (enriched) object. Built only for tests and `cargo fuzz`
/// (`--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fuzz_validators_agree(q: QueueKind, raw: &[u8]) {
    let e = Enrichment {
        server_instance_id: "srv".into(),
        api_server_region: "eu".into(),
        agent_version: "1.2.3".into(),
    };
    let tail = e.json_tail(Utc::now());
    let slow = validate(q, raw).map(ValidMessage::into_compact);
    let fast = validate_compact(q, raw);
    match (slow, fast) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                (&a.route, &a.session_id, &a.key),
                (&b.route, &b.session_id, &b.key)
            );
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.write_enriched(&tail, &mut x);
            b.write_enriched(&tail, &mut y);
            let x = serde_json::from_slice::<Value>(&x).ok();
            let y = serde_json::from_slice::<Value>(&y).ok();
            assert!(x.is_some(), "not JSON: {}", String::from_utf8_lossy(raw));
            assert_eq!(x, y, "{}", String::from_utf8_lossy(raw));
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!(
            "validators disagree on {}: {a:?} vs {b:?}",
            String::from_utf8_lossy(raw)
        ),
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

/// What the checks found: where the message goes, its key, and which field carries the key
/// in the forwarded body (`None`: the key is not forwarded as a field).
struct Checked {
    route: Route,
    session_id: String,
    key: String,
    key_field: Option<&'static str>,
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
    let c = check(queue, &body, raw).map_err(bad)?;
    if let Some(f) = c.key_field {
        body.insert(f.into(), Value::String(c.key.clone()));
    }
    Ok(ValidMessage {
        route: c.route,
        session_id: c.session_id,
        key: c.key,
        body,
    })
}

/// [`validate`] straight to the compact form. A flat object (scalar values, no escaped or
/// repeated keys — what producers send) is checked on a borrowed view of the bytes and its
/// values are copied verbatim, without building a tree; anything else, and every message the
/// checks refuse, goes through [`validate`], so results and refusal reasons are the same.
pub fn validate_compact(queue: QueueKind, raw: &[u8]) -> Result<CompactMessage, MeteringError> {
    if let Some(m) = validate_flat(queue, raw) {
        return Ok(m);
    }
    validate(queue, raw).map(ValidMessage::into_compact)
}

fn validate_flat(queue: QueueKind, raw: &[u8]) -> Option<CompactMessage> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let flat: FlatObject<'_> = serde_json::from_slice(raw).ok()?;
    let c = check(queue, &flat, raw).ok()?;
    // Sized exactly (as if every field were kept, plus the key field): no shrinking later.
    let mut head = String::with_capacity(
        flat.0
            .iter()
            .map(|(k, v, _)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + c.key.len()
            + 24,
    );
    head.push('{');
    let mut key_written = false;
    for (k, v, scalar) in &flat.0 {
        if ENRICHMENT_FIELDS.contains(k) {
            continue;
        }
        if Some(*k) == c.key_field {
            // Null or absent: the derived key is written below instead.
            if !matches!(scalar, Scalar::Str(_)) {
                continue;
            }
            key_written = true;
        }
        if head.len() > 1 {
            head.push(',');
        }
        head.push('"');
        head.push_str(k);
        head.push_str("\":");
        head.push_str(v.get());
    }
    if let Some(f) = c.key_field
        && !key_written
    {
        if head.len() > 1 {
            head.push(',');
        }
        head.push_str(&Value::from(f).to_string());
        head.push(':');
        head.push_str(&Value::from(c.key.as_str()).to_string());
    }
    Some(CompactMessage {
        route: c.route,
        session_id: c.session_id,
        key: c.key,
        head,
    })
}

/// A field value as the checks see it.
enum Field<'a> {
    Null,
    Str(&'a str),
    Num(&'a serde_json::Number),
    Other,
}

/// Field lookup for the checks: a parsed object, or the borrowed view of a flat one.
trait Fields {
    fn field(&self, name: &str) -> Option<Field<'_>>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.get(name).map(|v| match v {
            Value::Null => Field::Null,
            Value::String(s) => Field::Str(s),
            Value::Number(n) => Field::Num(n),
            _ => Field::Other,
        })
    }
}

/// A scalar value of a flat object, parsed exactly as `serde_json::Value` would parse it (so
/// the same strings and numbers are refused), borrowed when it has no escapes.
enum Scalar<'a> {
    Null,
    Bool,
    Num(serde_json::Number),
    Str(std::borrow::Cow<'a, str>),
}

/// A JSON object whose keys have no escapes and occur once and whose values are scalars:
/// (key, raw value text, parsed value), in input order. Anything else fails to deserialise.
struct FlatObject<'a>(Vec<(&'a str, &'a serde_json::value::RawValue, Scalar<'a>)>);

impl Fields for FlatObject<'_> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.0
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, _, v)| match v {
                Scalar::Null => Field::Null,
                Scalar::Str(s) => Field::Str(s.as_ref()),
                Scalar::Num(n) => Field::Num(n),
                Scalar::Bool => Field::Other,
            })
    }
}

impl<'de> serde::Deserialize<'de> for FlatObject<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FlatObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a flat JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(k) = map.next_key::<&'de str>()? {
                    let v: &'de serde_json::value::RawValue = map.next_value()?;
                    if out.iter().any(|(seen, _, _)| *seen == k) {
                        return Err(A::Error::custom("repeated key"));
                    }
                    let scalar = scalar(v.get()).map_err(A::Error::custom)?;
                    out.push((k, v, scalar));
                }
                Ok(FlatObject(out))
            }
        }
        d.deserialize_map(V)
            .map_err(|e| D::Error::custom(e.to_string()))
    }
}

fn scalar(text: &str) -> Result<Scalar<'_>, String> {
    struct S;
    impl<'de> serde::de::Visitor<'de> for S {
        type Value = std::borrow::Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Owned(v.to_owned()))
        }
    }
    match text.as_bytes().first() {
        Some(b'"') => {
            use serde::Deserializer as _;
            let mut de = serde_json::Deserializer::from_str(text);
            let s = de.deserialize_str(S).map_err(|e| e.to_string())?;
            de.end().map_err(|e| e.to_string())?;
            Ok(Scalar::Str(s))
        }
        Some(b'n') => Ok(Scalar::Null),
        Some(b't' | b'f') => Ok(Scalar::Bool),
        Some(b'-' | b'0'..=b'9') => serde_json::from_str(text)
            .map(Scalar::Num)
            .map_err(|e| e.to_string()),
        _ => Err("not a scalar".into()),
    }
}

/// The field checks shared by both validators.
fn check(queue: QueueKind, body: &impl Fields, raw: &[u8]) -> Result<Checked, String> {
    let session_id = session_id_field(body)?;
    non_empty_string(body, "customer_id")?;
    let (route, key, key_field) = match queue {
        QueueKind::UsageRecords => {
            let product = non_empty_string(body, "product_code")?;
            if product != PRODUCT_CODE {
                return Err(format!(
                    "product_code must be {PRODUCT_CODE:?}, got {product:?}"
                ));
            }
            for f in ["connection_duration_seconds", "audio_duration_seconds"] {
                non_negative_number(body, f)?;
            }
            for f in ["data_bytes_processed", "request_count"] {
                non_negative_integer(body, f)?;
            }
            let req = timestamp(body, "request_timestamp")?;
            let resp = timestamp(body, "response_timestamp")?;
            if resp < req {
                return Err("response_timestamp is before request_timestamp".into());
            }
            let key = key_or_derived(body, "record_id", raw, raw_hash_key)?;
            (Route::UsageRecords, key, Some("record_id"))
        }
        QueueKind::SessionLifecycle => {
            let route = match non_empty_string(body, "event")? {
                "start" => Route::SessionStart,
                "complete" => Route::SessionComplete,
                other => {
                    return Err(format!(
                        "event must be \"start\" or \"complete\", got {other:?}"
                    ));
                }
            };
            timestamp(body, "timestamp")?;
            (route, raw_hash_key(raw), None)
        }
        QueueKind::QuotaRefresh => {
            if body.field("timestamp").is_some() {
                timestamp(body, "timestamp")?;
            }
            let key = key_or_derived(body, "transaction_id", raw, derived_transaction_id)?;
            (Route::QuotaRefresh, key, Some("transaction_id"))
        }
    };
    Ok(Checked {
        route,
        session_id,
        key,
        key_field,
    })
}

/// The idempotency key: `derive(raw)` when the body has no `field` (absent or null); otherwise
/// `field`, which must be a non-empty string.
fn key_or_derived(
    body: &impl Fields,
    field: &str,
    raw: &[u8],
    derive: fn(&[u8]) -> String,
) -> Result<String, String> {
    match body.field(field) {
        None | Some(Field::Null) => Ok(derive(raw)),
        Some(_) => Ok(non_empty_string(body, field)?.to_owned()),
    }
}

fn non_empty_string<'a>(body: &'a impl Fields, field: &str) -> Result<&'a str, String> {
    match body.field(field) {
        None | Some(Field::Null) => Err(format!("missing required field {field}")),
        Some(Field::Str(s)) if s.trim().is_empty() => Err(format!("{field} is empty")),
        Some(Field::Str(s)) if s.len() > 256 => Err(format!("{field} is longer than 256 bytes")),
        Some(Field::Str(s)) => Ok(s),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn session_id_field(body: &impl Fields) -> Result<String, String> {
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

fn non_negative_number(body: &impl Fields, field: &str) -> Result<f64, String> {
    match body.field(field) {
        None | Some(Field::Null) => Err(format!("missing required field {field}")),
        Some(Field::Num(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!("{field} must be a non-negative number")),
        },
        Some(_) => Err(format!("{field} must be a number")),
    }
}

fn non_negative_integer(body: &impl Fields, field: &str) -> Result<u64, String> {
    match body.field(field) {
        None | Some(Field::Null) => Err(format!("missing required field {field}")),
        Some(Field::Num(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{field} must be a non-negative integer")),
        Some(_) => Err(format!("{field} must be an integer")),
    }
}

fn timestamp(body: &impl Fields, field: &str) -> Result<DateTime<Utc>, String> {
    let s = non_empty_string(body, field)?;
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field} is not an RFC 3339 timestamp: {e}"))
}

#[cfg(test)]
mod tests;
