//! The uplink's WebSocket messages (`docs/protocols/telemetry.md`, "Uplink protocol").
//!
//! Remote → vehicle, JSON text: `welcome {version, vehicle, acked}` right after the upgrade,
//! `ack {up_to}` after each commit, `error {code, message}` before a close. Vehicle → remote,
//! binary: one batch of records per message:
//!
//! ```text
//! u8 'T'  u8 version (1)  u32 count   then count × ( u64 seq  u64 ts_ms  u32 len  len bytes )
//! ```
//!
//! little-endian, seqs strictly consecutive inside a batch, each payload one JSON object.

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
        };
        assert_eq!(
            w.to_text(),
            r#"{"type":"welcome","version":1,"vehicle":"v1","acked":5}"#
        );
        let ack: RemoteMessage = serde_json::from_str(r#"{"type":"ack","up_to":9}"#)?;
        assert_eq!(ack, RemoteMessage::Ack { up_to: 9 });
        Ok(())
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_decode(&data);
        }
    }
}
