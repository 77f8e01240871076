//! Glue between wire messages and the engine's stream items.
//!
//! A relayed frame is stored in the stream log as the MessagePack of its `CanRelayFrame` with
//! named fields — exactly the bytes it has inside a MessagePack `frames` message — with the
//! frame's own timestamp, in milliseconds, as the item's `ts_ms` (so age retention follows
//! capture time). Deliveries to MessagePack connections are spliced from the stored bytes
//! ([`encode_delivery`]), deliveries to JSON connections decoded and encoded again; stored items
//! that do not decode become a `corrupt` gap.

use std::borrow::Cow;

use bytes::Bytes;
use can_io::CanRecord;
use can_io::frame::{CanFrame, Direction, MAX_EXTENDED_ID};

use super::codec::encode;
use super::messages::{
    Encoding, FrameBatch, GapNotice, GroupState, Message, WireFrame, WireGapReason,
};
use crate::engine::{DeliverySource, GroupId, GroupStatus};
use crate::error::{Error, Result};
use crate::log::Item;

/// The stored form of one frame: its MessagePack with named fields.
pub fn encode_stored_frame(frame: &WireFrame) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(frame).map_err(|e| Error::ProtocolEncode {
        encoding: Encoding::Msgpack.as_str(),
        reason: e.to_string(),
    })
}

/// Writes the stored form of a dongle's frames for one group straight from the record: the
/// bytes of [`encode_stored_frame`]`(&WireFrame::from_record(group, record))` without the
/// intermediate [`WireFrame`] (three allocations per frame) and without serde. The map's first
/// entry (`groupId`) is the same for every frame of a stream and encoded once, in [`new`].
///
/// This is the producer's hot path (the dongle agent encodes every frame it stores); the tests
/// compare it byte for byte with the reference encoder for every kind of frame and, by
/// proptest, for arbitrary records.
///
/// [`new`]: StoredFrameEncoder::new
#[derive(Debug, Clone)]
pub struct StoredFrameEncoder {
    /// `"groupId": GROUP` as MessagePack.
    group: Vec<u8>,
}

impl StoredFrameEncoder {
    /// An encoder for the frames of group `group`.
    pub fn new(group: &str) -> Self {
        let mut out = Vec::with_capacity(group.len() + 10);
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_str(&mut out, "groupId");
        let _ = rmp::encode::write_str(&mut out, group);
        StoredFrameEncoder { group: out }
    }

    /// The stored form of `r`.
    pub fn encode(&self, r: &CanRecord) -> Vec<u8> {
        use rmp::encode::{write_bin, write_bool, write_str, write_uint};
        let f = &r.frame;
        let (can_id, is_extended) = match f.id() {
            Some(id) => (id.raw(), id.is_extended()),
            None => (f.linux_can_id() & MAX_EXTENDED_ID, false),
        };
        let (brs, esi) = match f {
            CanFrame::Fd(fd) => (fd.flags().brs, fd.flags().esi),
            _ => (false, false),
        };
        let raw_dlc = match f {
            CanFrame::Data(d) => d.raw_dlc(),
            _ => None,
        };
        let channel = (!r.channel.is_empty()).then_some(&*r.channel);
        let data = f.data();
        // The optional entries in `WireFrame`'s field order, written only when set.
        let flags = [
            ("isFd", f.is_fd()),
            ("brs", brs),
            ("esi", esi),
            ("isRemote", matches!(f, CanFrame::Remote(_))),
            ("isError", matches!(f, CanFrame::Error(_))),
        ];
        let entries = 7
            + usize::from(channel.is_some())
            + flags.iter().filter(|(_, set)| *set).count()
            + usize::from(raw_dlc.is_some());
        let mut out = Vec::with_capacity(
            self.group.len() + 80 + data.len() + channel.map_or(0, |c| c.len() + 10),
        );
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut out, entries as u32);
        out.extend_from_slice(&self.group);
        let _ = write_str(&mut out, "direction");
        let _ = write_str(
            &mut out,
            match r.direction {
                Direction::Rx => "rx",
                Direction::Tx => "tx",
                Direction::Unknown => "unknown",
            },
        );
        let _ = write_str(&mut out, "ts");
        let _ = write_uint(&mut out, r.ts_ns);
        let _ = write_str(&mut out, "canId");
        let _ = write_uint(&mut out, u64::from(can_id));
        let _ = write_str(&mut out, "isExtended");
        let _ = write_bool(&mut out, is_extended);
        let _ = write_str(&mut out, "dlc");
        let _ = write_uint(&mut out, u64::from(f.len() as u8));
        let _ = write_str(&mut out, "data");
        let _ = write_bin(&mut out, data);
        if let Some(c) = channel {
            let _ = write_str(&mut out, "channel");
            let _ = write_str(&mut out, c);
        }
        for (name, _) in flags.iter().filter(|(_, set)| *set) {
            let _ = write_str(&mut out, name);
            let _ = write_bool(&mut out, true);
        }
        if let Some(raw) = raw_dlc {
            let _ = write_str(&mut out, "rawDlc");
            let _ = write_uint(&mut out, u64::from(raw));
        }
        out
    }
}

/// Decodes and validates one stored frame: exactly one MessagePack map
/// ([`encode_stored_frame`]). Anything else, JSON included, is refused.
pub fn decode_stored_frame(bytes: &[u8]) -> std::result::Result<WireFrame, String> {
    let frame: WireFrame = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    frame.validate().map_err(|e| e.to_string())?;
    // The decoder ignores what follows the map; a stored frame is exactly one map.
    if msgpack_extent(bytes) != Some(bytes.len()) {
        return Err("bytes after the frame's MessagePack map".to_owned());
    }
    Ok(frame)
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

    /// [`to_items`](Self::to_items) for a batch that [`decode`](super::decode) read from
    /// `message` in `encoding`. From MessagePack, each item's payload is the frame's own slice
    /// of `message` — already the stored form, a map with named fields — without copying or
    /// encoding it again. Anything else (JSON, frames sent as arrays, an unexpected layout) is
    /// encoded as `to_items` does.
    pub fn to_items_from(&self, message: &Bytes, encoding: Encoding) -> Result<Vec<Item>> {
        if encoding == Encoding::Msgpack
            && let Some(ranges) = frame_ranges(message)
            && ranges.len() == self.frames.len()
            && ranges.iter().all(|r| is_msgpack_map(&message[r.clone()]))
        {
            return Ok((self.first_seq..)
                .zip(&self.frames)
                .zip(ranges)
                .map(|((seq, frame), range)| Item {
                    seq,
                    ts_ms: frame.ts / 1_000_000,
                    payload: message.slice(range),
                })
                .collect());
        }
        self.to_items()
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

/// One message of a delivery, encoded in the connection's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryMessage {
    /// A `frames` message.
    Frames(Vec<u8>),
    /// A `gap` message with reason `corrupt`: stored items that are not a valid frame. They are
    /// skipped so the stream goes on; the caller should count and log them.
    Corrupt {
        /// The encoded `gap` message.
        bytes: Vec<u8>,
        /// The skipped seqs.
        gap: GapNotice,
        /// Why the first of them was refused.
        detail: String,
    },
}

impl DeliveryMessage {
    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            DeliveryMessage::Frames(bytes) | DeliveryMessage::Corrupt { bytes, .. } => bytes,
        }
    }
}

/// `items` (dense seqs, at most [`MAX_BATCH_FRAMES`](super::MAX_BATCH_FRAMES)) as messages in
/// `encoding`: `frames` messages, and a `corrupt` gap for each run of stored items that are not
/// a valid frame (so one damaged row cannot wedge its stream).
///
/// Items read back from the log ([`DeliverySource::Log`]) are each decoded and validated; for a
/// MessagePack connection the stored bytes are then spliced into the message as they are.
/// [`DeliverySource::Live`] items are the bytes [`FrameBatch::to_items`] built from a validated
/// batch in this process: for a MessagePack connection they are spliced without decoding. For
/// a JSON connection every item is decoded and encoded again. Fails only when the items are
/// empty or not dense, or an encoder fails.
pub fn encode_delivery(
    stream: &str,
    items: &[Item],
    encoding: Encoding,
    source: DeliverySource,
) -> Result<Vec<DeliveryMessage>> {
    dense_first_seq(stream, items)?;
    let mut out = Vec::with_capacity(1);
    let mut run: Vec<Cow<'_, [u8]>> = Vec::with_capacity(items.len());
    let mut run_first = 0;
    let mut bad: Option<(u64, u64, String)> = None;
    for item in items {
        match deliverable(&item.payload, encoding, source) {
            Ok(payload) => {
                if let Some(b) = bad.take() {
                    out.push(corrupt_gap(b, encoding)?);
                }
                if run.is_empty() {
                    run_first = item.seq;
                }
                run.push(payload);
            }
            Err(detail) => {
                if !run.is_empty() {
                    out.push(DeliveryMessage::Frames(splice(run_first, &run, encoding)));
                    run.clear();
                }
                bad = Some(match bad {
                    Some((from, _, first_detail)) => (from, item.seq, first_detail),
                    None => (item.seq, item.seq, detail),
                });
            }
        }
    }
    if let Some(b) = bad {
        out.push(corrupt_gap(b, encoding)?);
    }
    if !run.is_empty() {
        out.push(DeliveryMessage::Frames(splice(run_first, &run, encoding)));
    }
    Ok(out)
}

/// A stored payload as it goes into a message in `encoding`, or why it cannot.
fn deliverable(
    payload: &[u8],
    encoding: Encoding,
    source: DeliverySource,
) -> std::result::Result<Cow<'_, [u8]>, String> {
    if source == DeliverySource::Live && encoding == Encoding::Msgpack && is_msgpack_map(payload) {
        return Ok(Cow::Borrowed(payload));
    }
    // A row from the log is decoded and validated: damage inside a value (a flipped bit in a
    // key, a hex digit, an identifier) keeps the MessagePack structure intact but would make
    // the agent refuse the whole message, again on every redelivery.
    let frame = decode_stored_frame(payload)?;
    if encoding == Encoding::Msgpack && is_msgpack_map(payload) {
        return Ok(Cow::Borrowed(payload));
    }
    match encoding {
        Encoding::Msgpack => encode_stored_frame(&frame).map_err(|e| e.to_string()),
        Encoding::Json => Ok(frame.encode().into_bytes()),
    }
    .map(Cow::Owned)
}

fn corrupt_gap(
    (from, to, detail): (u64, u64, String),
    encoding: Encoding,
) -> Result<DeliveryMessage> {
    let gap = GapNotice {
        from,
        to,
        count: to - from + 1,
        reason: WireGapReason::Corrupt,
    };
    Ok(DeliveryMessage::Corrupt {
        bytes: encode(&Message::Gap(gap), encoding)?,
        gap,
        detail,
    })
}

fn splice(first_seq: u64, payloads: &[Cow<'_, [u8]>], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Msgpack => splice_msgpack(first_seq, payloads),
        Encoding::Json => splice_json(first_seq, payloads),
    }
}

/// `{"type":"frames","first_seq":N,"frames":[...]}` as `rmp_serde::to_vec_named` writes it.
fn splice_msgpack(first_seq: u64, payloads: &[Cow<'_, [u8]>]) -> Vec<u8> {
    let size: usize = payloads.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(size + 40);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut out, 3);
    let _ = rmp::encode::write_str(&mut out, "type");
    let _ = rmp::encode::write_str(&mut out, "frames");
    let _ = rmp::encode::write_str(&mut out, "first_seq");
    let _ = rmp::encode::write_uint(&mut out, first_seq);
    let _ = rmp::encode::write_str(&mut out, "frames");
    let _ =
        rmp::encode::write_array_len(&mut out, u32::try_from(payloads.len()).unwrap_or(u32::MAX));
    for p in payloads {
        out.extend_from_slice(p);
    }
    out
}

/// The same message in compact JSON.
fn splice_json(first_seq: u64, payloads: &[Cow<'_, [u8]>]) -> Vec<u8> {
    let size: usize = payloads.iter().map(|p| p.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 48);
    out.extend_from_slice(br#"{"type":"frames","first_seq":"#);
    out.extend_from_slice(first_seq.to_string().as_bytes());
    out.extend_from_slice(br#","frames":["#);
    for (i, p) in payloads.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Where the elements of the `frames` array of a MessagePack message (a map) are, walking its
/// structure; `None` when it is not laid out so.
fn frame_ranges(message: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut rest = message;
    let entries = rmp::decode::read_map_len(&mut rest).ok()?;
    let mut pos = message.len() - rest.len();
    for _ in 0..entries {
        let (key, after) = rmp::decode::read_str_from_slice(message.get(pos..)?).ok()?;
        pos = message.len() - after.len();
        if key == "frames" {
            let mut rest = &message[pos..];
            let n = rmp::decode::read_array_len(&mut rest).ok()?;
            pos = message.len() - rest.len();
            let mut ranges = Vec::with_capacity(usize::try_from(n).ok()?.min(rest.len()));
            for _ in 0..n {
                let len = msgpack_extent(&message[pos..])?;
                ranges.push(pos..pos + len);
                pos += len;
            }
            return Some(ranges);
        }
        pos += msgpack_extent(&message[pos..])?;
    }
    None
}

/// The length of the one MessagePack value at the start of `buf`, walking its structure without
/// decoding it; `None` when `buf` ends inside it or holds the never-used marker `0xc1`.
fn msgpack_extent(buf: &[u8]) -> Option<usize> {
    fn be(bytes: &[u8]) -> usize {
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    }
    let mut pos = 0usize;
    // Values still to walk; each takes at least one byte, so more than the bytes left is
    // already truncated (this also bounds the count).
    let mut open = 1usize;
    while open > 0 {
        open -= 1;
        let marker = *buf.get(pos)?;
        pos += 1;
        // The markers a frame is made of, first.
        match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => continue,
            0xa0..=0xbf => {
                pos += usize::from(marker & 0x1f);
                if pos > buf.len() {
                    return None;
                }
                continue;
            }
            _ => {}
        }
        // (bytes of a length field, fixed bytes after it, values inside)
        let (len_bytes, fixed, values): (usize, usize, usize) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0, 0),
            0x80..=0x8f => (0, 0, 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, 0, usize::from(marker & 0x0f)),
            0xa0..=0xbf => (0, usize::from(marker & 0x1f), 0),
            0xc1 => return None,
            0xc4 | 0xd9 => (1, 0, 0),
            0xc5 | 0xda => (2, 0, 0),
            0xc6 | 0xdb => (4, 0, 0),
            0xc7 => (1, 1, 0),
            0xc8 => (2, 1, 0),
            0xc9 => (4, 1, 0),
            0xca => (0, 4, 0),
            0xcb => (0, 8, 0),
            0xcc | 0xd0 => (0, 1, 0),
            0xcd | 0xd1 => (0, 2, 0),
            0xce | 0xd2 => (0, 4, 0),
            0xcf | 0xd3 => (0, 8, 0),
            0xd4 => (0, 2, 0),
            0xd5 => (0, 3, 0),
            0xd6 => (0, 5, 0),
            0xd7 => (0, 9, 0),
            0xd8 => (0, 17, 0),
            0xdc => (2, 0, 0),
            0xdd => (4, 0, 0),
            0xde => (2, 0, 0),
            0xdf => (4, 0, 0),
        };
        let n = be(buf.get(pos..pos.checked_add(len_bytes)?)?);
        pos += len_bytes;
        let (data, inner) = match marker {
            0xdc | 0xdd => (0, n),
            0xde | 0xdf => (0, n.checked_mul(2)?),
            _ if len_bytes > 0 => (n, 0),
            _ => (0, values),
        };
        pos = pos.checked_add(fixed)?.checked_add(data)?;
        if pos > buf.len() {
            return None;
        }
        open = open.checked_add(inner)?;
        if open > buf.len() - pos {
            return None;
        }
    }
    Some(pos)
}

/// Fuzzing entry point for the stored-frame decoder and the delivery built from stored bytes:
/// never panics; any bytes read back from a log become one `frames` message that decodes to
/// the frame the decoder accepts, or one `corrupt` gap; an accepted frame is stored and read
/// back unchanged, and delivered the same from memory as from the log. Built only for tests and
/// `cargo fuzz` (`--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fuzz_stored_frame(data: &[u8]) {
    let one = |item: &Item, encoding: Encoding, source: DeliverySource| {
        let messages = encode_delivery("fuzz", std::slice::from_ref(item), encoding, source)
            .unwrap_or_else(|e| panic!("one dense item: {e}"));
        match <[DeliveryMessage; 1]>::try_from(messages) {
            Ok([message]) => message,
            Err(m) => panic!("one item, {} messages", m.len()),
        }
    };
    let raw = Item {
        seq: 7,
        ts_ms: 0,
        payload: Bytes::copy_from_slice(data),
    };
    let decoded = decode_stored_frame(data);
    for encoding in [Encoding::Msgpack, Encoding::Json] {
        let (bytes, expected) = match (one(&raw, encoding, DeliverySource::Log), &decoded) {
            (DeliveryMessage::Corrupt { bytes, gap, .. }, Err(_)) => {
                assert_eq!((gap.from, gap.to, gap.count), (7, 7, 1));
                (bytes, Message::Gap(gap))
            }
            (DeliveryMessage::Frames(bytes), Ok(frame)) => {
                let expected = FrameBatch {
                    first_seq: 7,
                    frames: vec![frame.clone()],
                };
                (bytes, Message::Frames(expected))
            }
            (message, decoded) => panic!("{message:?} from a row that decodes as {decoded:?}"),
        };
        let back = super::codec::decode(&bytes, encoding).map_err(|e| e.to_string());
        assert_eq!(back, Ok(expected));
    }
    let Ok(frame) = decoded else {
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
        let live = one(&item, encoding, DeliverySource::Live).into_bytes();
        assert_eq!(one(&item, encoding, DeliverySource::Log).into_bytes(), live);
        match super::codec::decode(&live, encoding) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use can_io::ErrorFrame;
    use can_io::frame::{CanId, DataFrame, FdFlags, FdFrame, RemoteFrame};

    use super::*;

    #[test]
    fn msgpack_extent_walks_every_marker() {
        let value = serde_json::json!({
            "s": "x".repeat(40), "long": "y".repeat(300), "n": [0, -1, -200, 70000, u64::MAX, i64::MIN],
            "f": 1.5, "b": true, "nil": null, "m": {"inner": [[], {}, [1, [2, [3]]]]},
            "arr": (0..20).collect::<Vec<u32>>(),
        });
        let mut bytes = rmp_serde::to_vec_named(&value).unwrap();
        rmp::encode::write_bin(&mut bytes, &[1, 2, 3]).unwrap();
        let whole = bytes.len();
        // The map alone, then the bin after it.
        let map = msgpack_extent(&bytes).unwrap();
        assert_eq!(msgpack_extent(&bytes[map..]), Some(whole - map));
        // Every truncation of the map is found.
        for cut in 0..map {
            assert_eq!(msgpack_extent(&bytes[..cut]), None, "cut at {cut}");
        }
        for (marker, len) in [
            (vec![0xc7, 1, 9, 0], 4),
            (vec![0xd4, 1, 2], 3),
            (vec![0xd8; 18], 18),
            (vec![0xcb, 0, 0, 0, 0, 0, 0, 0, 0], 9),
            (vec![0xdd, 0, 0, 0, 1, 0xc0], 6),
            (vec![0xdf, 0, 0, 0, 1, 0xc0, 0xc2], 7),
        ] {
            assert_eq!(msgpack_extent(&marker), Some(len), "{marker:x?}");
        }
        assert_eq!(msgpack_extent(&[0xc1]), None);
        // A count far beyond the bytes left is refused at once.
        assert_eq!(msgpack_extent(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]), None);
    }

    /// [`StoredFrameEncoder`] writes what the reference encoder writes, byte for byte, for every
    /// kind of frame, direction, channel and group id length (fixstr, str8), and for integers
    /// at each MessagePack width.
    #[test]
    fn stored_frames_are_written_as_the_reference_encoder_writes_them() {
        let std_id = CanId::standard(0x7ff).unwrap();
        let ext_id = CanId::extended(0x1fff_fffe).unwrap();
        let fd = |data: &[u8], brs, esi| {
            CanFrame::Fd(FdFrame::new(ext_id, data, FdFlags { brs, esi }).unwrap())
        };
        let frames = [
            CanFrame::Data(DataFrame::new(CanId::standard(0x12).unwrap(), &[]).unwrap()),
            CanFrame::Data(DataFrame::new(std_id, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap()),
            CanFrame::Data(
                DataFrame::new(ext_id, &[0xff; 8])
                    .unwrap()
                    .with_raw_dlc(15)
                    .unwrap(),
            ),
            CanFrame::Data(DataFrame::new(CanId::standard(0x80).unwrap(), &[9]).unwrap()),
            CanFrame::Data(DataFrame::new(CanId::standard(0x100).unwrap(), &[9]).unwrap()),
            CanFrame::Data(DataFrame::new(CanId::extended(0x1_0000).unwrap(), &[9]).unwrap()),
            fd(&[7; 64], true, false),
            fd(&[7; 12], false, true),
            fd(&[], true, true),
            CanFrame::Remote(RemoteFrame::new(std_id, 8).unwrap()),
            CanFrame::Remote(RemoteFrame::new(ext_id, 0).unwrap()),
            CanFrame::Error(ErrorFrame::new(0x0000_0004, &[0, 4, 0, 0, 0, 0, 0, 0]).unwrap()),
        ];
        let group31 = "g".repeat(31);
        let group128 = "0123456789abcdef".repeat(8);
        let groups = [
            "7b0c9f1e-2a4d-4e8b-9c3f-5d6e7f8a9b0c",
            "g",
            &group31,
            &group128,
        ];
        let stamps = [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_296,
            u64::MAX,
        ];
        let channels = ["can0", "", "a-rather-long-channel-name-of-40-bytes!!"];
        let directions = [Direction::Rx, Direction::Tx, Direction::Unknown];
        let mut checked = 0;
        for group in groups {
            let encoder = StoredFrameEncoder::new(group);
            for (i, frame) in frames.iter().enumerate() {
                for (k, &ts) in stamps.iter().enumerate() {
                    let record = CanRecord::new(
                        ts,
                        Arc::from(channels[(i + k) % channels.len()]),
                        directions[(i + k) % directions.len()],
                        *frame,
                    );
                    let want =
                        encode_stored_frame(&WireFrame::from_record(group, &record)).unwrap();
                    assert_eq!(encoder.encode(&record), want, "{group} {record:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 4 * frames.len() * stamps.len());
    }

    proptest::proptest! {
        /// [`StoredFrameEncoder`] writes what the reference encoder writes for any record: any
        /// frame kind, id, payload, time stamp, direction, channel and group id (lengths across
        /// the fixstr / str8 / str16 boundaries).
        #[test]
        fn stored_frame_encoder_matches_the_reference_for_any_record(
            kind in 0u8..4,
            extended in proptest::bool::ANY,
            raw_id in proptest::num::u32::ANY,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..=64),
            flag_bits in 0u8..4,
            raw_dlc in 9u8..=15,
            ts in proptest::num::u64::ANY,
            channel in "[a-z0-9]{0,40}",
            direction in 0u8..3,
            group in "[a-z0-9-]{0,300}",
        ) {
            let id = if extended {
                CanId::extended(raw_id & MAX_EXTENDED_ID).unwrap()
            } else {
                CanId::standard(raw_id & 0x7ff).unwrap()
            };
            const FD_LENS: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];
            let fd_len = FD_LENS.iter().rev().find(|&&n| n <= data.len()).copied().unwrap_or(0);
            let classic = &data[..data.len().min(8)];
            let frame = match kind {
                0 if classic.len() == 8 && flag_bits & 1 == 1 => CanFrame::Data(
                    DataFrame::new(id, classic).unwrap().with_raw_dlc(raw_dlc).unwrap(),
                ),
                0 => CanFrame::Data(DataFrame::new(id, classic).unwrap()),
                1 => CanFrame::Fd(
                    FdFrame::new(
                        id,
                        &data[..fd_len],
                        FdFlags { brs: flag_bits & 1 == 1, esi: flag_bits & 2 == 2 },
                    )
                    .unwrap(),
                ),
                2 => CanFrame::Remote(RemoteFrame::new(id, classic.len()).unwrap()),
                _ => {
                    let mut payload = [0u8; 8];
                    payload[..classic.len()].copy_from_slice(classic);
                    CanFrame::Error(ErrorFrame::new(raw_id & 0x1fff_ffff, &payload).unwrap())
                }
            };
            let direction = [Direction::Rx, Direction::Tx, Direction::Unknown][usize::from(direction)];
            let record = CanRecord::new(ts, Arc::from(channel.as_str()), direction, frame);
            let want = encode_stored_frame(&WireFrame::from_record(&group, &record)).unwrap();
            proptest::prop_assert_eq!(StoredFrameEncoder::new(&group).encode(&record), want);
        }
    }
}
