//! Telemetry records: the JSON payloads the vehicle stores and uplinks
//! (`docs/protocols/telemetry.md`, "Records").
//!
//! * `{"kind": "frame", "frame": {…}}` — every frame the listener hears; the frame object is
//!   exactly one line of `tether can convert --to jsonl` (`can_io::formats::jsonl`).
//! * `{"kind": "signals", "message": NAME, "id": ID, "signals": {NAME: {"value": V, "unit": U}}}`
//!   — the same frame decoded with the DBC, when `DBC_PATH` names one that knows it.

use bytes::Bytes;
use can_io::CanRecord;
use can_io::formats::jsonl;
use serde::Serialize;

use crate::dbc::DecodedMessage;

/// `{"kind": "frame", "frame": <jsonl line>}` for `record`.
pub fn frame_record(record: &CanRecord) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"kind\": \"frame\", \"frame\": ");
    jsonl::write_record(&mut out, record);
    // The jsonl writer ends its line with '\n'; the record is one JSON object.
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    out.push(b'}');
    Bytes::from(out)
}

#[derive(Serialize)]
struct SignalsRecord<'a> {
    kind: &'static str,
    message: &'a str,
    id: u32,
    signals: &'a serde_json::Map<String, serde_json::Value>,
}

/// `{"kind": "signals", …}` for a decoded message.
pub fn signals_record(decoded: &DecodedMessage) -> Bytes {
    let record = SignalsRecord {
        kind: "signals",
        message: &decoded.message,
        id: decoded.id,
        signals: &decoded.signals,
    };
    // Serializing a map of strings and numbers cannot fail.
    Bytes::from(serde_json::to_vec(&record).unwrap_or_default())
}

/// Checks that a payload received from a vehicle is one JSON object (the remote stores nothing
/// else, so its read API can embed payloads verbatim).
pub fn is_json_object(payload: &[u8]) -> bool {
    let trimmed = payload.trim_ascii_start();
    trimmed.first() == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// Appends `{"seq": S, "ts_ms": T, <extra>"record": <payload>}` to `out`; `payload` must be a
/// JSON object (checked when it was stored).
pub fn push_item(out: &mut Vec<u8>, seq: u64, ts_ms: u64, extra: &str, payload: &[u8]) {
    out.extend_from_slice(
        format!("{{\"seq\":{seq},\"ts_ms\":{ts_ms},{extra}\"record\":").as_bytes(),
    );
    out.extend_from_slice(payload);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use can_io::{CanFrame, CanId, DataFrame, Direction};

    #[test]
    fn a_frame_record_embeds_the_jsonl_line() -> anyhow::Result<()> {
        let frame = DataFrame::new(CanId::new(0x7E0, false)?, &[0x02, 0x10, 0x03])?;
        let rec = CanRecord::new(5, "can0".into(), Direction::Rx, CanFrame::Data(frame));
        let bytes = frame_record(&rec);
        let v: serde_json::Value = serde_json::from_slice(&bytes)?;
        assert_eq!(v["kind"], "frame");
        let line = serde_json::to_string(&v["frame"])?;
        let back = jsonl::parse_line(&line)?;
        assert_eq!(back, Some(rec));
        assert!(is_json_object(&bytes));
        assert!(!is_json_object(b"[1]"));
        assert!(!is_json_object(b"{\"a\":"));
        Ok(())
    }
}
