//! The uplink's WebSocket messages (`docs/protocols/telemetry.md`, "Uplink protocol").
//!
//! Remote → vehicle, JSON text: `welcome {version, vehicle, acked, accepts}` right after the
//! upgrade, `ack {up_to}` after each commit, `error {code, message}` before a close. Vehicle →
//! remote, binary: one batch of records per message:
//!
//! ```text
//! u8 'T'  u8 version (1)  u32 count   then count × ( u64 seq  u64 ts_ms  u32 len  len bytes )
//! ```
//!
//! little-endian, seqs strictly consecutive inside a batch, each payload one JSON object.
//!
//! Vehicle → remote, JSON text, only when the welcome's `accepts` lists its type:
//! `status {ts_ms, state, queue, dropped, records_per_s}` ([`UplinkStatus`]), on connect and
//! about every second. A remote older than `accepts` refuses any text message, so a vehicle
//! never sends one to it; a vehicle older than `status` ignores `accepts` (serde skips the
//! unknown field) and sends batches only.

use bytes::{BufMut, Bytes, BytesMut};
use relay_core::uplink::OutboxRecord;
use serde::{Deserialize, Serialize};

/// The protocol version of this implementation.
pub const PROTOCOL_VERSION: u8 = 1;
/// Most records in one batch.
pub const MAX_BATCH_RECORDS: usize = 8192;
/// Largest payload of one record, in bytes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Largest timestamp (ms), as the outbox accepts.
pub const MAX_TS_MS: u64 = (1 << 53) - 1;

const MAGIC: u8 = b'T';
const HEADER: usize = 6;
const ITEM_HEADER: usize = 20;

/// A control message from the remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RemoteMessage {
    /// The handshake: what the remote holds for this vehicle.
    Welcome {
        /// The remote's protocol version.
        version: u8,
        /// The vehicle id the credential maps to.
        vehicle: String,
        /// Highest seq held for the vehicle (0: none).
        acked: u64,
        /// The text message types the remote takes from the vehicle besides batches (today
        /// [`ACCEPTS_STATUS`]); absent (empty) from remotes that take batches only.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        accepts: Vec<String>,
    },
    /// Everything up to `up_to` is committed.
    Ack {
        /// Cumulative ack.
        up_to: u64,
    },
    /// The remote refuses; the connection closes after it.
    Error {
        /// `bad_message`, `unsupported_version`, `internal`.
        code: String,
        /// Human-readable detail.
        message: String,
    },
}

impl RemoteMessage {
    /// The JSON text.
    pub fn to_text(&self) -> String {
        // A tagged enum of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `accepts` entry of a remote that takes [`VehicleMessage::Status`].
pub const ACCEPTS_STATUS: &str = "status";
/// Largest vehicle text message, in bytes.
pub const MAX_VEHICLE_TEXT: usize = 4096;
/// Longest `state` of a status.
pub const MAX_STATE_LEN: usize = 32;

/// A text message from the vehicle (only types the remote's welcome `accepts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VehicleMessage {
    /// The vehicle's uplink as it sees it.
    Status(UplinkStatus),
}

/// The vehicle's view of its uplink, at `ts_ms` (its wall clock). Newer vehicles may add
/// fields; a remote ignores the ones it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// When the vehicle took this status (ms since the Unix epoch, its clock).
    pub ts_ms: u64,
    /// The uplink session's state: `connecting`, `connected`, `disconnected`, `error`.
    pub state: String,
    /// Records stored on the vehicle and not yet acknowledged by the remote.
    pub queue: u64,
    /// Records the vehicle lost before the remote held them, since its store was created
    /// (cap overflow, refused, abandoned), plus frames its CAN listener dropped and records its
    /// store refused since it started.
    pub dropped: u64,
    /// Records acknowledged per second, recent average.
    pub records_per_s: f64,
}

impl UplinkStatus {
    /// A status, with a non-finite or negative rate taken as 0.
    pub fn new(ts_ms: u64, state: &str, queue: u64, dropped: u64, records_per_s: f64) -> Self {
        UplinkStatus {
            ts_ms: ts_ms.min(MAX_TS_MS),
            state: state.to_owned(),
            queue,
            dropped,
            records_per_s: if records_per_s.is_finite() {
                records_per_s.max(0.0)
            } else {
                0.0
            },
        }
    }
}

impl VehicleMessage {
    /// The JSON text.
    pub fn to_text(&self) -> String {
        // Strings, integers and a finite float always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a vehicle text message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VehicleTextError {
    /// Longer than [`MAX_VEHICLE_TEXT`].
    #[error("text message over {MAX_VEHICLE_TEXT} bytes")]
    TooLarge,
    /// Not JSON of a known type, or a field of the wrong type.
    #[error("bad text message: {0}")]
    Json(String),
    /// A field out of range: the detail says which.
    #[error("bad status: {0}")]
    Invalid(&'static str),
}

/// Decodes a vehicle text message, checking the ranges the remote relies on.
pub fn decode_vehicle_text(text: &str) -> Result<VehicleMessage, VehicleTextError> {
    if text.len() > MAX_VEHICLE_TEXT {
        return Err(VehicleTextError::TooLarge);
    }
    let message: VehicleMessage =
        serde_json::from_str(text).map_err(|e| VehicleTextError::Json(e.to_string()))?;
    let VehicleMessage::Status(status) = &message;
    if status.ts_ms > MAX_TS_MS {
        return Err(VehicleTextError::Invalid("ts_ms out of range"));
    }
    if status.state.is_empty()
        || status.state.len() > MAX_STATE_LEN
        || !status
            .state
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(VehicleTextError::Invalid("state"));
    }
    if !status.records_per_s.is_finite() || status.records_per_s < 0.0 {
        return Err(VehicleTextError::Invalid("records_per_s"));
    }
    Ok(message)
}

/// Why a batch message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Not a batch of this protocol version.
    #[error("unsupported batch version {0}")]
    Version(u8),
    /// Malformed: the detail says where.
    #[error("bad batch: {0}")]
    Malformed(&'static str),
}

/// Encodes `records` as one batch message.
pub fn encode_batch(records: &[OutboxRecord]) -> Bytes {
    let size = HEADER
        + records
            .iter()
            .map(|r| ITEM_HEADER + r.payload.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(MAGIC);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u32_le(records.len() as u32);
    for r in records {
        out.put_u64_le(r.seq);
        out.put_u64_le(r.ts_ms);
        out.put_u32_le(r.payload.len() as u32);
        out.put_slice(&r.payload);
    }
    out.freeze()
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], BatchError> {
    if buf.len() < n {
        return Err(BatchError::Malformed("truncated"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

/// Decodes a batch message, checking everything the remote relies on: version, counts,
/// lengths, seqs ≥ 1 and consecutive, timestamps, and that each payload is a JSON object.
pub fn decode_batch(message: &Bytes) -> Result<Vec<OutboxRecord>, BatchError> {
    let mut buf: &[u8] = message;
    let head = take(&mut buf, HEADER)?;
    if head[0] != MAGIC {
        return Err(BatchError::Malformed("not a batch"));
    }
    if head[1] != PROTOCOL_VERSION {
        return Err(BatchError::Version(head[1]));
    }
    let count = le_u32(&head[2..6]) as usize;
    if count == 0 || count > MAX_BATCH_RECORDS {
        return Err(BatchError::Malformed("count out of range"));
    }
    if count > buf.len() / ITEM_HEADER {
        return Err(BatchError::Malformed("truncated"));
    }
    let mut records = Vec::with_capacity(count);
    let mut previous: Option<u64> = None;
    for _ in 0..count {
        let item = take(&mut buf, ITEM_HEADER)?;
        let seq = le_u64(&item[0..8]);
        let ts_ms = le_u64(&item[8..16]);
        let len = le_u32(&item[16..20]) as usize;
        if seq == 0 || seq > i64::MAX as u64 {
            return Err(BatchError::Malformed("seq out of range"));
        }
        if previous.is_some_and(|p| p.checked_add(1) != Some(seq)) {
            return Err(BatchError::Malformed("seqs not consecutive"));
        }
        if ts_ms > MAX_TS_MS {
            return Err(BatchError::Malformed("ts_ms out of range"));
        }
        if len > MAX_RECORD_BYTES {
            return Err(BatchError::Malformed("record too large"));
        }
        let start = message.len() - buf.len();
        take(&mut buf, len)?;
        let payload = message.slice(start..start + len);
        if !crate::record::is_json_object(&payload) {
            return Err(BatchError::Malformed("record is not a JSON object"));
        }
        previous = Some(seq);
        records.push(OutboxRecord {
            seq,
            ts_ms,
            payload,
        });
    }
    if !buf.is_empty() {
        return Err(BatchError::Malformed("trailing bytes"));
    }
    Ok(records)
}

/// Fuzzing entry point: decodes any bytes as a batch, and any text as a remote message.
#[cfg(any(test, fuzzing))]
pub fn fuzz_decode(data: &[u8]) {
    let _ = decode_batch(&Bytes::copy_from_slice(data));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<RemoteMessage>(text);
    }
}

/// Fuzzing entry point: decodes any text as a vehicle message; what decodes re-encodes to a
/// text that decodes again.
#[cfg(any(test, fuzzing))]
pub fn fuzz_decode_vehicle_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = decode_vehicle_text(text) {
        assert!(decode_vehicle_text(&message.to_text()).is_ok(), "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(seq: u64, payload: &str) -> OutboxRecord {
        OutboxRecord {
            seq,
            ts_ms: seq * 10,
            payload: Bytes::from(payload.to_owned()),
        }
    }

    #[test]
    fn batches_round_trip_and_bad_ones_are_refused() {
        let batch = vec![rec(7, "{\"a\":1}"), rec(8, "{}")];
        let bytes = encode_batch(&batch);
        assert_eq!(decode_batch(&bytes), Ok(batch));
        let holes = encode_batch(&[rec(7, "{}"), rec(9, "{}")]);
        assert_eq!(
            decode_batch(&holes),
            Err(BatchError::Malformed("seqs not consecutive"))
        );
        let not_json = encode_batch(&[rec(1, "nope")]);
        assert!(decode_batch(&not_json).is_err());
        let zero = encode_batch(&[rec(0, "{}")]);
        assert!(decode_batch(&zero).is_err());
        let mut v2 = bytes.to_vec();
        v2[1] = 2;
        assert_eq!(decode_batch(&Bytes::from(v2)), Err(BatchError::Version(2)));
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(decode_batch(&Bytes::from(long)).is_err());
        assert!(decode_batch(&bytes.slice(..bytes.len() - 1)).is_err());
    }

    #[test]
    fn control_messages_have_the_documented_shape() -> anyhow::Result<()> {
        let w = RemoteMessage::Welcome {
            version: 1,
            vehicle: "v1".into(),
            acked: 5,
            accepts: vec![ACCEPTS_STATUS.into()],
        };
        assert_eq!(
            w.to_text(),
            r#"{"type":"welcome","version":1,"vehicle":"v1","acked":5,"accepts":["status"]}"#
        );
        // The welcome of a remote without `accepts` still decodes: nothing accepted.
        let old: RemoteMessage =
            serde_json::from_str(r#"{"type":"welcome","version":1,"vehicle":"v1","acked":5}"#)?;
        assert!(matches!(old, RemoteMessage::Welcome { accepts, .. } if accepts.is_empty()));
        let ack: RemoteMessage = serde_json::from_str(r#"{"type":"ack","up_to":9}"#)?;
        assert_eq!(ack, RemoteMessage::Ack { up_to: 9 });
        Ok(())
    }

    #[test]
    fn statuses_round_trip_and_bad_ones_are_refused() -> anyhow::Result<()> {
        let status = VehicleMessage::Status(UplinkStatus::new(
            1_700_000_000_000,
            "connected",
            3000,
            2,
            f64::NAN,
        ));
        let text = status.to_text();
        assert_eq!(
            text,
            r#"{"type":"status","ts_ms":1700000000000,"state":"connected","queue":3000,"dropped":2,"records_per_s":0.0}"#
        );
        assert_eq!(decode_vehicle_text(&text), Ok(status));
        // A newer vehicle's extra field is ignored.
        let newer = r#"{"type":"status","ts_ms":1,"state":"connected","queue":1,"dropped":0,"records_per_s":2.5,"extra":[1]}"#;
        assert!(decode_vehicle_text(newer).is_ok());
        for bad in [
            r#"{"type":"hello"}"#,
            r#"{"type":"status","ts_ms":1,"state":"connected","queue":-1,"dropped":0,"records_per_s":0}"#,
            r#"{"type":"status","ts_ms":1,"state":"Connected!","queue":1,"dropped":0,"records_per_s":0}"#,
            r#"{"type":"status","ts_ms":1,"state":"","queue":1,"dropped":0,"records_per_s":0}"#,
            r#"{"type":"status","ts_ms":1,"state":"connected","queue":1,"dropped":0,"records_per_s":-1}"#,
            r#"{"type":"status","ts_ms":9007199254740992,"state":"connected","queue":1,"dropped":0,"records_per_s":0}"#,
            r#"{"type":"status","state":"connected","queue":1,"dropped":0,"records_per_s":0}"#,
            "not json",
        ] {
            assert!(decode_vehicle_text(bad).is_err(), "{bad}");
        }
        let long = format!(
            "{{\"type\":\"status\",\"pad\":\"{}\"}}",
            "x".repeat(MAX_VEHICLE_TEXT)
        );
        assert_eq!(decode_vehicle_text(&long), Err(VehicleTextError::TooLarge));
        Ok(())
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_decode(&data);
            fuzz_decode_vehicle_text(&data);
        }

        #[test]
        fn any_status_round_trips(
            ts_ms in 0..=MAX_TS_MS,
            state in "[a-z_]{1,32}",
            queue in any::<u64>(),
            dropped in any::<u64>(),
            rate in 0.0f64..1e12,
        ) {
            let sent = UplinkStatus::new(ts_ms, &state, queue, dropped, rate);
            let text = VehicleMessage::Status(sent.clone()).to_text();
            let Ok(VehicleMessage::Status(got)) = decode_vehicle_text(&text) else {
                return Err(TestCaseError::fail(text));
            };
            // serde_json's float parsing may differ from the printed value in the last bit.
            prop_assert!((got.records_per_s - rate).abs() <= rate * 1e-12);
            let rate = got.records_per_s;
            prop_assert_eq!(got, UplinkStatus { records_per_s: rate, ..sent });
        }
    }
}
