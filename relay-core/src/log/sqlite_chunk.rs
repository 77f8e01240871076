//! The encoding of the items inside one row of the SQLite log's `log_chunks` table.
//!
//! [`SqliteStreamLog`](super::SqliteStreamLog) stores the items of one append as one row
//! (split into rows of at most [`MAX_ITEMS`] items and about [`TARGET_BYTES`] bytes), not one
//! row per item: a row per item made every append write ~6 WAL pages (measured; the
//! streams' insertion points are interleaved in one table, so almost every page fill split a
//! page in the middle of the tree), and SQLite's per-row work dominated the writer. The layout
//! is documented in `docs/storage.md`; this module only encodes and decodes the `items` blob.
//!
//! The blob is one format byte, then the items:
//!
//! ```text
//! 0x00  items                                   (raw)
//! 0x02  u32 LE length of the items, LZ4 block   (compressed)
//! ```
//!
//! The writer picks either (raw for small or incompressible chunks); any other first byte is
//! [`ChunkError::UnknownFormat`], a damaged chunk. (`0x01` was the first byte of the blobs of
//! unreleased builds that wrote no format byte; it is not read.)
//!
//! The items are in seq order, each as three LEB128 varints and the payload:
//!
//! ```text
//! seq_delta  varint   seq minus the previous item's seq (the first: minus first_seq - 1), >= 1
//! ts_ms      varint   <= MAX_SEQ
//! len        varint   payload length
//! payload    len bytes
//! ```
//!
//! A chunk of at least [`COMPRESS_FROM`] bytes is compressed with LZ4 (the block format,
//! `lz4_flex`) when that makes it smaller. Relay frames repeat their group id and field names,
//! so a chunk of them shrinks several times: less disk and WAL traffic for SQLite, less memory
//! for Redis. The decoder inflates at most [`MAX_INFLATED`] bytes, so a damaged length cannot
//! make it allocate more.
//!
//! The row's `first_seq`, `last_seq` and `count` columns repeat what the blob says, so that
//! range queries and counts never decode it, and so that a damaged blob is detected: the
//! decoder checks that the blob ends exactly after `count` items, the last one at `last_seq`.
//! Payloads are not copied: decoded items hold slices of the blob's [`Bytes`].

use bytes::Bytes;

use super::{Item, MAX_SEQ, Seq};

/// Most items in one chunk. An append with more becomes several chunks.
pub const MAX_ITEMS: usize = 256;

/// A chunk is closed once its blob reaches this many bytes (one larger item still makes one
/// chunk). Keeps a read that needs a few items from decoding much more than it returns.
pub const TARGET_BYTES: usize = 64 * 1024;

/// Chunks whose items take fewer bytes are stored raw: compressing them would not pay.
pub const COMPRESS_FROM: usize = 128;

/// The largest items section the decoder inflates (and the writer compresses; larger ones are
/// stored raw).
pub const MAX_INFLATED: usize = 16 << 20;

/// Format byte of a raw chunk.
const RAW: u8 = 0;
/// Format byte of an LZ4-compressed chunk.
const LZ4: u8 = 2;

/// Why a blob does not decode. Each names the byte offset in the items where decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The blob ends inside an item.
    #[error("chunk truncated at byte {offset}")]
    Truncated {
        /// Where the incomplete item starts.
        offset: usize,
    },
    /// A varint longer than 10 bytes or above `u64::MAX`.
    #[error("bad varint at byte {offset}")]
    BadVarint {
        /// Where the varint starts.
        offset: usize,
    },
    /// A seq delta of 0, or a seq above [`MAX_SEQ`] or above the row's `last_seq`.
    #[error("seq out of order or range at byte {offset}")]
    BadSeq {
        /// Where the item starts.
        offset: usize,
    },
    /// A timestamp above [`MAX_SEQ`].
    #[error("timestamp out of range at byte {offset}")]
    BadTimestamp {
        /// Where the item starts.
        offset: usize,
    },
    /// The blob is empty or starts with an unknown format byte.
    #[error("chunk of unknown format")]
    UnknownFormat,
    /// The compressed items do not inflate to their stated length (at most [`MAX_INFLATED`]).
    #[error("compressed chunk does not inflate")]
    Inflate,
    /// The blob holds a different number of items than the row says, or does not end at the
    /// row's `last_seq`.
    #[error("chunk holds other items than its row says (at byte {offset})")]
    Mismatch {
        /// Where decoding stopped.
        offset: usize,
    },
}

/// The columns of a chunk row that describe its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBounds {
    /// Seq of the first item.
    pub first_seq: Seq,
    /// Seq of the last item.
    pub last_seq: Seq,
    /// Number of items.
    pub count: u64,
}

/// Appends items to one chunk blob.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    blob: Vec<u8>,
    first_seq: Seq,
    last_seq: Seq,
    count: u64,
}

impl ChunkWriter {
    /// An empty chunk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the chunk is full ([`MAX_ITEMS`] items or [`TARGET_BYTES`] bytes).
    pub fn is_full(&self) -> bool {
        self.count as usize >= MAX_ITEMS || self.blob.len() >= TARGET_BYTES
    }

    /// Whether no item was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `item`, whose seq must be above the previous item's (the caller, the append,
    /// only stores items above the stream's head, so they ascend).
    pub fn push(&mut self, item: &Item) {
        debug_assert!(self.count == 0 || item.seq > self.last_seq);
        let prev = if self.count == 0 {
            self.first_seq = item.seq;
            item.seq - 1
        } else {
            self.last_seq
        };
        put_varint(&mut self.blob, item.seq - prev);
        put_varint(&mut self.blob, item.ts_ms);
        put_varint(&mut self.blob, item.payload.len() as u64);
        self.blob.extend_from_slice(&item.payload);
        self.last_seq = item.seq;
        self.count += 1;
    }

    /// The row's columns and blob (compressed if that pays); the writer is empty again
    /// afterwards.
    pub fn take(&mut self) -> (ChunkBounds, Vec<u8>) {
        let bounds = ChunkBounds {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            count: self.count,
        };
        self.count = 0;
        let items = std::mem::take(&mut self.blob);
        (bounds, seal(&items))
    }
}

/// Encodes `items` (ascending seqs, at least one) as one chunk, regardless of its size limits.
pub fn encode(items: &[Item]) -> (ChunkBounds, Vec<u8>) {
    let mut writer = ChunkWriter::new();
    for item in items {
        writer.push(item);
    }
    writer.take()
}

/// The result of decoding a blob: every item up to the first damage, and the damage.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The items that decoded, in seq order, all within the row's bounds.
    pub items: Vec<Item>,
    /// Why decoding stopped early, or `None` when the blob matched its row exactly.
    pub error: Option<ChunkError>,
}

/// Decodes the blob of a row with `bounds`. Never fails as a whole: a damaged blob yields the
/// items decoded before the damage was noticed, and the error. Those items are not
/// necessarily right (a flipped bit in a seq delta is only noticed at the end, when the last
/// seq does not match), so the logs deliver no item of a damaged chunk ([`items_above`]).
pub fn decode(bounds: ChunkBounds, blob: &Bytes) -> Decoded {
    match open(blob) {
        Ok(items) => decode_items(bounds, &items),
        Err(err) => Decoded {
            items: Vec::new(),
            error: Some(err),
        },
    }
}

/// The items of a chunk above `floor`, or why its blob is damaged. A damaged chunk yields none
/// of its items, not even those decoded before the damage was noticed ([`decode`]).
pub fn items_above(bounds: ChunkBounds, blob: &Bytes, floor: Seq) -> Result<Vec<Item>, ChunkError> {
    let decoded = decode(bounds, blob);
    if let Some(err) = decoded.error {
        return Err(err);
    }
    let mut items = decoded.items;
    items.retain(|i| i.seq > floor);
    Ok(items)
}

/// The seqs a damaged chunk from `first_seq` to `last_seq` stands for above `floor`: every seq
/// of its range (holes inside it cannot be told), and never above `head`, so that damaged
/// bounds cannot move a reader past items still to come.
pub fn damaged_range(
    first_seq: Seq,
    last_seq: Seq,
    floor: Seq,
    head: Seq,
) -> std::ops::RangeInclusive<Seq> {
    first_seq.max(floor.saturating_add(1))..=last_seq.min(head)
}

/// What a read yields for the seqs of a damaged chunk: items with an empty payload, which no
/// reader accepts (the relay reports them as a `corrupt` gap) instead of stalling. At most
/// `limit`.
pub fn placeholders(
    seqs: std::ops::RangeInclusive<Seq>,
    limit: usize,
) -> impl Iterator<Item = Item> {
    seqs.take(limit).map(|seq| Item {
        seq,
        ts_ms: 0,
        payload: Bytes::new(),
    })
}

/// The blob with its format byte in front: compressed when the items are at least
/// [`COMPRESS_FROM`] (and at most [`MAX_INFLATED`]) bytes and that makes them smaller.
pub(crate) fn seal(items: &[u8]) -> Vec<u8> {
    if (COMPRESS_FROM..=MAX_INFLATED).contains(&items.len()) {
        let packed = lz4_flex::block::compress(items);
        if packed.len() + 4 < items.len() {
            let mut blob = Vec::with_capacity(5 + packed.len());
            blob.push(LZ4);
            blob.extend_from_slice(&(items.len() as u32).to_le_bytes());
            blob.extend_from_slice(&packed);
            return blob;
        }
    }
    let mut blob = Vec::with_capacity(1 + items.len());
    blob.push(RAW);
    blob.extend_from_slice(items);
    blob
}

/// The items section of a blob: a slice of it, or inflated.
pub(crate) fn open(blob: &Bytes) -> Result<Bytes, ChunkError> {
    match blob.first() {
        Some(&RAW) => Ok(blob.slice(1..)),
        Some(&LZ4) => {
            let Some((len, packed)) = blob[1..].split_first_chunk::<4>() else {
                return Err(ChunkError::Inflate);
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_INFLATED {
                return Err(ChunkError::Inflate);
            }
            match lz4_flex::block::decompress(packed, len) {
                Ok(items) if items.len() == len => Ok(Bytes::from(items)),
                _ => Err(ChunkError::Inflate),
            }
        }
        _ => Err(ChunkError::UnknownFormat),
    }
}

/// Decodes the items section of a blob.
fn decode_items(bounds: ChunkBounds, blob: &Bytes) -> Decoded {
    let mut items = Vec::with_capacity(bounds.count.min(MAX_ITEMS as u64) as usize);
    let mut pos = 0usize;
    let mut prev = bounds.first_seq.saturating_sub(1);
    let error = loop {
        if pos == blob.len() {
            let complete = items.len() as u64 == bounds.count
                && items.last().map(|i: &Item| i.seq) == Some(bounds.last_seq)
                && items.first().map(|i: &Item| i.seq) == Some(bounds.first_seq);
            break (!complete).then_some(ChunkError::Mismatch { offset: pos });
        }
        let start = pos;
        let delta = match get_varint(blob, &mut pos) {
            Ok(v) => v,
            Err(e) => break Some(e),
        };
        let seq = match prev.checked_add(delta) {
            Some(seq) if delta > 0 && seq <= MAX_SEQ && seq <= bounds.last_seq => seq,
            _ => break Some(ChunkError::BadSeq { offset: start }),
        };
        let ts_ms = match get_varint(blob, &mut pos) {
            Ok(ts) if ts <= MAX_SEQ => ts,
            Ok(_) => break Some(ChunkError::BadTimestamp { offset: start }),
            Err(e) => break Some(e),
        };
        let len = match get_varint(blob, &mut pos) {
            Ok(len) => len,
            Err(e) => break Some(e),
        };
        let end = match usize::try_from(len).ok().and_then(|l| pos.checked_add(l)) {
            Some(end) if end <= blob.len() => end,
            _ => break Some(ChunkError::Truncated { offset: start }),
        };
        if items.len() as u64 == bounds.count {
            break Some(ChunkError::Mismatch { offset: start });
        }
        let payload = blob.slice(pos..end);
        items.push(Item {
            seq,
            ts_ms,
            payload,
        });
        pos = end;
        prev = seq;
    };
    Decoded { items, error }
}

/// Fuzz entry point (`fuzz/fuzz_targets/sqlite_chunk.rs`): the first 12 bytes are a row's
/// `first_seq` (4), seq span (4) and `count` (4), the rest its blob. Decoding never panics,
/// yields ascending items within the row's bounds, and a clean decode re-encodes to the same
/// items and bounds. Built only for tests and `cargo fuzz` (`--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fuzz_chunk(data: &[u8]) {
    let Some((head, blob)) = data.split_first_chunk::<12>() else {
        return;
    };
    let word = |i: usize| {
        u64::from(u32::from_le_bytes([
            head[i],
            head[i + 1],
            head[i + 2],
            head[i + 3],
        ]))
    };
    let first_seq = word(0);
    let bounds = ChunkBounds {
        first_seq,
        last_seq: first_seq + word(4),
        count: word(8),
    };
    let blob = Bytes::copy_from_slice(blob);
    let decoded = decode(bounds, &blob);
    let mut prev = bounds.first_seq.saturating_sub(1);
    for item in &decoded.items {
        assert!(item.seq > prev && item.seq <= bounds.last_seq && item.ts_ms <= MAX_SEQ);
        prev = item.seq;
    }
    assert!(decoded.items.len() as u64 <= bounds.count);
    if decoded.error.is_none() {
        let (again, encoded) = encode(&decoded.items);
        assert_eq!(again, bounds);
        let round = decode(again, &Bytes::from(encoded));
        assert_eq!((round.items, round.error), (decoded.items, None));
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ChunkError> {
    let start = *pos;
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(start + i) else {
            return Err(ChunkError::Truncated { offset: start });
        };
        let bits = u64::from(byte & 0x7F);
        // The tenth byte may carry only the top bit of a u64.
        if i == 9 && bits > 1 {
            return Err(ChunkError::BadVarint { offset: start });
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *pos = start + i + 1;
            return Ok(value);
        }
    }
    Err(ChunkError::BadVarint { offset: start })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: Seq, ts_ms: u64, payload: &[u8]) -> Item {
        Item {
            seq,
            ts_ms,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn round_trips_items_with_holes_and_empty_payloads() {
        let items = vec![
            item(7, 1_700_000_000_000, b"abc"),
            item(8, 0, b""),
            item(300, MAX_SEQ, &[0xFF; 200]),
        ];
        let (bounds, blob) = encode(&items);
        assert_eq!(
            bounds,
            ChunkBounds {
                first_seq: 7,
                last_seq: 300,
                count: 3
            }
        );
        // 200 equal bytes: compressed.
        assert_eq!(blob[0], LZ4);
        assert!(blob.len() < 100, "{}", blob.len());
        let decoded = decode(bounds, &Bytes::from(blob));
        assert_eq!(decoded.error, None);
        assert_eq!(decoded.items, items);
        // Too small to compress.
        let (bounds, blob) = encode(&items[..2]);
        assert_eq!(blob[0], RAW);
        assert_eq!(decode(bounds, &Bytes::from(blob)).items, items[..2]);
    }

    #[test]
    fn a_compressed_blob_that_does_not_inflate_is_damaged() {
        let items: Vec<Item> = (1..=20).map(|s| item(s, s, &[7; 40])).collect();
        let (bounds, blob) = encode(&items);
        assert_eq!(blob[0], LZ4);
        let decode_err = |blob: Vec<u8>| decode(bounds, &Bytes::from(blob)).error;
        // Cut short, a length one too large, a length over the limit, no length at all.
        assert_eq!(
            decode_err(blob[..blob.len() - 3].to_vec()),
            Some(ChunkError::Inflate)
        );
        let mut longer = blob.clone();
        longer[1] = longer[1].wrapping_add(1);
        assert_eq!(decode_err(longer), Some(ChunkError::Inflate));
        let mut huge = blob.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_err(huge), Some(ChunkError::Inflate));
        assert_eq!(decode_err(vec![LZ4, 1, 0]), Some(ChunkError::Inflate));
        assert_eq!(decode_err(vec![]), Some(ChunkError::UnknownFormat));
        assert_eq!(
            decode_err(vec![3, 1, 0, 0]),
            Some(ChunkError::UnknownFormat)
        );
    }

    #[test]
    fn reads_a_block_compressed_by_the_reference_lz4() {
        // fuzz/corpus/sqlite_chunk/twenty-items-lz4: 20 items compressed with the C library
        // (python-lz4 `lz4.block.compress(store_size=False)`), after the fuzz input's 12-byte
        // row header.
        let seed = include_bytes!("../../../fuzz/corpus/sqlite_chunk/twenty-items-lz4");
        let (_, blob) = seed.split_at(12);
        assert_eq!(blob[0], LZ4);
        let bounds = ChunkBounds {
            first_seq: 100,
            last_seq: 119,
            count: 20,
        };
        let decoded = decode(bounds, &Bytes::copy_from_slice(blob));
        assert_eq!(decoded.error, None);
        assert_eq!(decoded.items.len(), 20);
        assert!(
            decoded
                .items
                .iter()
                .all(|i| i.payload.ends_with(&[i.seq as u8; 8]))
        );
        fuzz_chunk(seed);
    }

    #[test]
    fn a_blob_without_a_format_byte_is_of_unknown_format() {
        let items: Vec<Item> = (5..=7).map(|s| item(s, s, &[s as u8; 3])).collect();
        let (bounds, blob) = encode(&items);
        assert_eq!(blob[0], RAW);
        // The items alone start with the first seq delta, 1: not a format byte.
        let untagged = Bytes::copy_from_slice(&blob[1..]);
        assert_eq!(untagged[0], 1);
        let decoded = decode(bounds, &untagged);
        assert!(decoded.items.is_empty());
        assert_eq!(decoded.error, Some(ChunkError::UnknownFormat));
        assert_eq!(
            items_above(bounds, &untagged, 0),
            Err(ChunkError::UnknownFormat)
        );
    }

    #[test]
    fn a_damaged_blob_keeps_the_items_before_the_damage() {
        let items: Vec<Item> = (1..=3).map(|s| item(s, s, &[s as u8; 5])).collect();
        let (bounds, blob) = encode(&items);
        // Truncated inside the third item.
        let cut = Bytes::copy_from_slice(&blob[..blob.len() - 2]);
        let decoded = decode(bounds, &cut);
        assert_eq!(decoded.items, items[..2]);
        assert!(matches!(decoded.error, Some(ChunkError::Truncated { .. })));
        // A row that claims more items than the blob holds.
        let more = ChunkBounds {
            count: 4,
            last_seq: 4,
            ..bounds
        };
        let decoded = decode(more, &Bytes::from(blob.clone()));
        assert_eq!(decoded.items, items);
        assert!(matches!(decoded.error, Some(ChunkError::Mismatch { .. })));
        // A row that claims fewer.
        let fewer = ChunkBounds {
            count: 2,
            last_seq: 3,
            ..bounds
        };
        let decoded = decode(fewer, &Bytes::from(blob));
        assert_eq!(decoded.items, items[..2]);
        assert!(matches!(decoded.error, Some(ChunkError::Mismatch { .. })));
    }

    #[test]
    fn refuses_zero_deltas_overlong_varints_and_seqs_past_the_row() {
        let bounds = ChunkBounds {
            first_seq: 1,
            last_seq: 5,
            count: 1,
        };
        for (blob, want) in [
            (vec![0u8, 0, 0], ChunkError::BadSeq { offset: 0 }),
            (vec![9u8, 0, 0], ChunkError::BadSeq { offset: 0 }),
            (vec![0xFFu8; 11], ChunkError::BadVarint { offset: 0 }),
            (
                [&[1u8][..], &[0xFF; 9], &[0x02]].concat(),
                ChunkError::BadVarint { offset: 1 },
            ),
            (vec![1u8, 0, 5, 1], ChunkError::Truncated { offset: 0 }),
        ] {
            let raw = [&[RAW][..], &blob].concat();
            let decoded = decode(bounds, &Bytes::from(raw));
            assert!(decoded.items.is_empty(), "{blob:?}");
            assert_eq!(decoded.error, Some(want), "{blob:?}");
        }
    }

    #[test]
    fn the_fuzz_property_holds_for_raw_and_compressed_chunks() {
        for n in [1u64, 3, 40] {
            let items: Vec<Item> = (1..=n).map(|s| item(s + 9, s, &[s as u8; 30])).collect();
            let (bounds, blob) = encode(&items);
            let span = (bounds.last_seq - bounds.first_seq) as u32;
            let head = [
                (bounds.first_seq as u32).to_le_bytes(),
                span.to_le_bytes(),
                (bounds.count as u32).to_le_bytes(),
            ]
            .concat();
            fuzz_chunk(&[&head[..], &blob].concat());
            // And every truncation of it.
            for cut in 0..blob.len() {
                fuzz_chunk(&[&head[..], &blob[..cut]].concat());
            }
        }
    }

    #[test]
    fn the_writer_reports_full_at_either_limit() {
        let mut writer = ChunkWriter::new();
        for seq in 1..=MAX_ITEMS as u64 {
            assert!(!writer.is_full());
            writer.push(&item(seq, 0, b"x"));
        }
        assert!(writer.is_full());
        let (bounds, _) = writer.take();
        assert_eq!(bounds.count, MAX_ITEMS as u64);
        assert!(writer.is_empty());
        writer.push(&item(1_000, 0, &vec![0u8; TARGET_BYTES]));
        assert!(writer.is_full());
    }
}
