//! Glue between wire messages and the engine's stream items.
//!
//! A relayed frame is stored in the stream log as the MessagePack of its `CanRelayFrame` with
//! named fields — exactly the bytes it has inside a MessagePack `frames` message — with the
//! frame's own timestamp, in milliseconds, as the item's `ts_ms` (so age retention follows
//! capture time). Logs written before that hold the frame's compact JSON instead; both are read.
//! Deliveries are spliced from the stored bytes when the stored format matches the
//! connection's encoding ([`encode_delivery`]), and decoded and re-encoded otherwise.

use bytes::Bytes;

use super::codec::encode;
use super::messages::{Encoding, FrameBatch, GroupState, Message, WireFrame};
use crate::engine::{GroupId, GroupStatus};
use crate::error::{Error, Result};
use crate::log::Item;

/// The stored form of one frame: its MessagePack with named fields.
pub fn encode_stored_frame(frame: &WireFrame) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(frame).map_err(|e| Error::ProtocolEncode {
        encoding: Encoding::Msgpack.as_str(),
        reason: e.to_string(),
    })
}

/// Decodes and validates one stored frame, MessagePack or (older logs) compact JSON.
pub fn decode_stored_frame(bytes: &[u8]) -> std::result::Result<WireFrame, String> {
    if is_json(bytes) {
        return WireFrame::decode(bytes).map_err(|e| e.to_string());
    }
    let frame: WireFrame = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    frame.validate().map_err(|e| e.to_string())?;
    Ok(frame)
}

/// A stored JSON frame (an object); MessagePack maps never start with `{`.
fn is_json(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
}

/// A stored MessagePack frame (a fixmap or map16).
fn is_msgpack_map(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(0x80..=0x8f | 0xde))
}

impl FrameBatch {
    /// The batch as stream items: seqs `first_seq ..`, payload = the frame's stored form
    /// ([`encode_stored_frame`]), `ts_ms` = the frame's `ts` (ns) in ms.
    pub fn to_items(&self) -> Result<Vec<Item>> {
        (self.first_seq..)
            .zip(&self.frames)
            .map(|(seq, frame)| {
                Ok(Item {
                    seq,
                    ts_ms: frame.ts / 1_000_000,
                    payload: Bytes::from(encode_stored_frame(frame)?),
                })
            })
            .collect()
    }

    /// A batch from items the engine delivers (dense seqs). Fails with [`Error::Corrupt`] when
    /// an item is not a valid stored `CanRelayFrame` (someone else wrote to `stream`), or the
    /// items are empty or not dense.
    pub fn from_items(stream: &str, items: &[Item]) -> Result<FrameBatch> {
        let first_seq = dense_first_seq(stream, items)?;
        let mut frames = Vec::with_capacity(items.len());
        for item in items {
            let frame = decode_stored_frame(&item.payload).map_err(|e| Error::Corrupt {
                stream: stream.to_owned(),
                detail: format!("item {} is not a CanRelayFrame: {e}", item.seq),
            })?;
            frames.push(frame);
        }
        Ok(FrameBatch { first_seq, frames })
    }
}

/// The first seq of `items`, checking they are non-empty and dense.
fn dense_first_seq(stream: &str, items: &[Item]) -> Result<u64> {
    let corrupt = |detail: String| Error::Corrupt {
        stream: stream.to_owned(),
        detail,
    };
    let first_seq = items
        .first()
        .map(|i| i.seq)
        .ok_or_else(|| corrupt("empty delivery".to_owned()))?;
    for (expected, item) in (first_seq..).zip(items) {
        if item.seq != expected {
            return Err(corrupt(format!(
                "seq {} where {expected} was expected",
                item.seq
            )));
        }
    }
    Ok(first_seq)
}

/// One `frames` message carrying `items` (dense seqs, at most
/// [`MAX_BATCH_FRAMES`](super::MAX_BATCH_FRAMES)) in `encoding`. When every stored payload is
/// already in that encoding the message is spliced from them without decoding; otherwise each
/// is decoded, validated and encoded again.
pub fn encode_delivery(stream: &str, items: &[Item], encoding: Encoding) -> Result<Vec<u8>> {
    let first_seq = dense_first_seq(stream, items)?;
    match encoding {
        Encoding::Msgpack if items.iter().all(|i| is_msgpack_map(&i.payload)) => {
            Ok(splice_msgpack(first_seq, items))
        }
        Encoding::Json if items.iter().all(|i| is_json(&i.payload)) => {
            Ok(splice_json(first_seq, items))
        }
        _ => encode(
            &Message::Frames(FrameBatch::from_items(stream, items)?),
            encoding,
        ),
    }
}

/// `{"type":"frames","first_seq":N,"frames":[...]}` as `rmp_serde::to_vec_named` writes it.
fn splice_msgpack(first_seq: u64, items: &[Item]) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.payload.len()).sum();
    let mut out = Vec::with_capacity(size + 40);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut out, 3);
    let _ = rmp::encode::write_str(&mut out, "type");
    let _ = rmp::encode::write_str(&mut out, "frames");
    let _ = rmp::encode::write_str(&mut out, "first_seq");
    let _ = rmp::encode::write_uint(&mut out, first_seq);
    let _ = rmp::encode::write_str(&mut out, "frames");
    let _ = rmp::encode::write_array_len(&mut out, u32::try_from(items.len()).unwrap_or(u32::MAX));
    for item in items {
        out.extend_from_slice(&item.payload);
    }
    out
}

/// The same message in compact JSON.
fn splice_json(first_seq: u64, items: &[Item]) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.payload.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 48);
    out.extend_from_slice(br#"{"type":"frames","first_seq":"#);
    out.extend_from_slice(first_seq.to_string().as_bytes());
    out.extend_from_slice(br#","frames":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item.payload);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Fuzzing entry point for the stored-frame decoder: never panics, and a frame it accepts is
/// stored and read back unchanged, also through a spliced delivery.
#[doc(hidden)]
pub fn fuzz_stored_frame(data: &[u8]) {
    let Ok(frame) = decode_stored_frame(data) else {
        return;
    };
    let stored = encode_stored_frame(&frame).unwrap_or_default();
    assert_eq!(decode_stored_frame(&stored).as_ref(), Ok(&frame));
    let item = Item {
        seq: 1,
        ts_ms: 0,
        payload: Bytes::from(stored),
    };
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let message = encode_delivery("fuzz", std::slice::from_ref(&item), encoding)
            .and_then(|bytes| super::codec::decode(&bytes, encoding));
        match message {
            Ok(Message::Frames(batch)) => assert_eq!(batch.frames, std::slice::from_ref(&frame)),
            other => panic!("delivery of {frame:?} decoded as {other:?}"),
        }
    }
}

impl GroupState {
    /// The `group_state` message for an engine status.
    pub fn from_status(group: &GroupId, status: &GroupStatus) -> Self {
        GroupState {
            group_id: group.as_str().to_owned(),
            mode: status.mode,
            backlog: status.backlog,
            offline: status.offline.clone(),
        }
    }
}
