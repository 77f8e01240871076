//! SQLite inbox: the durable default on the remote collector.
//!
//! ```sql
//! inbox_source(id INTEGER PRIMARY KEY, source TEXT UNIQUE, acked, records, last_ts_ms)
//! inbox_chunk(id INTEGER PRIMARY KEY, source, first_seq, last_seq, count, min_ts_ms,
//!             max_ts_ms, items BLOB)              UNIQUE (source, last_seq)
//! ```
//!
//! Records are kept in **chunks**: the new records of one committed batch become one row (split
//! at [`CHUNK_MAX_ITEMS`] records or [`CHUNK_TARGET_BYTES`] bytes), whose blob is a format byte
//! and the records in seq order, each as `u64 seq, u64 ts_ms, u32 len` (little-endian) and the
//! payload — the item layout of the telemetry wire batch — LZ4-compressed when that pays (the
//! stream log's [`sqlite_chunk`] framing). One row per record made SQLite's per-row work (a
//! B-tree insert of the primary key, the record, and its WAL pages) the remote's main cost.
//!
//! The chunks of a source have disjoint seq ranges, so `ORDER BY last_seq` is seq order. The
//! usual batch lies wholly above the source's cumulative ack (`inbox_source.acked`, the highest
//! seq held) and is appended without reading anything. A batch with seqs at or below the ack (a
//! retransmission, or a record filling a hole) reads the chunks whose ranges meet those seqs:
//! a seq found there is a duplicate; a new one is merged with the records of the chunk whose
//! range holds it, which is rewritten. `inbox_source` keeps each source's ack, record count and
//! newest `ts_ms`, so `acked` and `sources` read one row per source.
//!
//! A commit is one transaction; the ack is computed inside it and returned only after `COMMIT`
//! succeeded. The WAL is checkpointed by a thread of the inbox's own
//! ([`BackgroundCheckpoints`]), never inside a commit. What this module does not do: no pruning (the remote keeps everything), no
//! index by time (a time-range read scans the source's rows after `after`, skipping those
//! whose `min_ts_ms ..= max_ts_ms` misses the range).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::inbox::{InboxCommit, InboxSource, UplinkInbox, validate_commit};
use super::store::OutboxRecord;
use super::store_sqlite::{
    chunk_columns, execute_each, from_sql, in_transaction, open_connection, store_err, to_sql,
};
use crate::error::{Error, Result};
use crate::log::Seq;
use crate::log::sqlite_chunk::{self, ChunkBounds};
use crate::sqlite::{BackgroundCheckpoints, Durability};

const STORE: &str = "inbox";

/// Most records in one chunk row; a batch with more new records becomes several rows.
pub(super) const CHUNK_MAX_ITEMS: usize = 4096;

/// A chunk row is closed once its blob reaches this many bytes (one larger record still makes
/// one row).
pub(super) const CHUNK_TARGET_BYTES: usize = 256 * 1024;

/// Bytes before each record's payload in a chunk blob: seq, ts_ms, len.
const ITEM_HEADER: usize = 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox_source (
    id         INTEGER PRIMARY KEY,
    source     TEXT NOT NULL UNIQUE,
    acked      INTEGER NOT NULL DEFAULT 0,
    records    INTEGER NOT NULL DEFAULT 0,
    last_ts_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inbox_chunk (
    id        INTEGER PRIMARY KEY,
    source    INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    min_ts_ms INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL,
    items     BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_chunk_by_source ON inbox_chunk(source, last_seq);
";

/// An [`UplinkInbox`] in a SQLite file (WAL).
#[derive(Debug)]
pub struct SqliteInbox {
    conn: Connection,
    path: PathBuf,
    /// The checkpointer thread (it stops when the inbox is dropped).
    checkpoints: Arc<BackgroundCheckpoints>,
}

fn sql_err(action: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    store_err(STORE, action)
}

/// A source's row, as a commit changes it.
#[derive(Debug, Clone, Copy)]
struct SourceRow {
    id: i64,
    acked: Seq,
    records: u64,
    last_ts_ms: u64,
}

/// A chunk row as read back: its id, seq range and records.
struct Chunk {
    id: i64,
    first_seq: Seq,
    last_seq: Seq,
    records: Vec<OutboxRecord>,
}

fn corrupt(source: &str, detail: String) -> Error {
    Error::Corrupt {
        stream: format!("inbox source {source:?}"),
        detail,
    }
}

/// Encodes `records` (ascending seqs, at least one) as a chunk blob: the format byte and the
/// items, LZ4-compressed when that pays (the stream log's [`sqlite_chunk::seal`]).
fn encode_chunk(records: &[OutboxRecord]) -> Vec<u8> {
    let size = records
        .iter()
        .map(|r| ITEM_HEADER + r.payload.len())
        .sum::<usize>();
    let mut items = Vec::with_capacity(size);
    for r in records {
        items.put_u64_le(r.seq);
        items.put_u64_le(r.ts_ms);
        items.put_u32_le(r.payload.len() as u32);
        items.put_slice(&r.payload);
    }
    sqlite_chunk::seal(&items)
}

/// Decodes a chunk blob, checking it against its row: `count` records, strictly ascending
/// seqs from `first_seq` to `last_seq`, nothing after the last. Payloads are slices of the
/// (inflated) items.
fn decode_chunk(
    columns: ChunkBounds,
    blob: &Bytes,
) -> std::result::Result<Vec<OutboxRecord>, String> {
    let blob = &sqlite_chunk::open(blob).map_err(|e| e.to_string())?;
    let count = usize::try_from(columns.count).unwrap_or(usize::MAX);
    if count > blob.len() / ITEM_HEADER {
        return Err(format!(
            "{count} records cannot fit in {} bytes",
            blob.len()
        ));
    }
    let mut records = Vec::with_capacity(count);
    let mut pos = 0usize;
    let word = |at: usize, n: usize| -> u64 {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&blob[at..at + n]);
        u64::from_le_bytes(a)
    };
    while pos < blob.len() {
        if blob.len() - pos < ITEM_HEADER {
            return Err(format!("truncated record header at byte {pos}"));
        }
        let seq = word(pos, 8);
        let ts_ms = word(pos + 8, 8);
        let len = usize::try_from(word(pos + 16, 4)).unwrap_or(usize::MAX);
        let start = pos + ITEM_HEADER;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= blob.len())
            .ok_or_else(|| format!("truncated payload at byte {pos}"))?;
        let ascending = records
            .last()
            .map_or(seq == columns.first_seq, |p: &OutboxRecord| seq > p.seq);
        if !ascending || seq > columns.last_seq || records.len() == count {
            return Err(format!("record out of its row's bounds at byte {pos}"));
        }
        records.push(OutboxRecord {
            seq,
            ts_ms,
            payload: blob.slice(start..end),
        });
        pos = end;
    }
    if records.len() != count || records.last().map(|r| r.seq) != Some(columns.last_seq) {
        return Err(format!(
            "{} records ending at seq {:?}, the row says {count} ending at {}",
            records.len(),
            records.last().map(|r| r.seq),
            columns.last_seq
        ));
    }
    Ok(records)
}

/// Writes `records` (ascending, at least one) of source `id` as chunk rows: a row closes at
/// [`CHUNK_MAX_ITEMS`], at [`CHUNK_TARGET_BYTES`], and before a record that a kept chunk's
/// range (`kept`, ascending `(first_seq, last_seq)`, disjoint from `records`) separates from
/// the previous one.
fn insert_chunks(
    tx: &Transaction<'_>,
    id: i64,
    records: &[OutboxRecord],
    kept: &[(Seq, Seq)],
) -> Result<()> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO inbox_chunk
                 (source, first_seq, last_seq, count, min_ts_ms, max_ts_ms, items)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(sql_err("commit"))?;
    let mut rest = records;
    while !rest.is_empty() {
        let mut bytes = 0usize;
        let mut n = 0usize;
        while n < rest.len() && n < CHUNK_MAX_ITEMS && bytes < CHUNK_TARGET_BYTES {
            if n > 0 {
                let (a, b) = (rest[n - 1].seq, rest[n].seq);
                let k = kept.partition_point(|(first, _)| *first <= a);
                if kept.get(k).is_some_and(|(first, _)| *first < b) {
                    break;
                }
            }
            bytes += ITEM_HEADER + rest[n].payload.len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let min_ts = chunk.iter().map(|r| r.ts_ms).min().unwrap_or(0);
        let max_ts = chunk.iter().map(|r| r.ts_ms).max().unwrap_or(0);
        insert
            .execute(params![
                id,
                to_sql(chunk[0].seq),
                to_sql(chunk[n - 1].seq),
                n as i64,
                to_sql(min_ts),
                to_sql(max_ts),
                encode_chunk(chunk)
            ])
            .map_err(sql_err("commit"))?;
    }
    Ok(())
}

impl SqliteInbox {
    /// Opens (creating if needed) the inbox at `path` ([`open_wal`](crate::sqlite::open_wal)).
    /// With [`Durability::Full`] (use it on a collector) an acknowledged record survives an OS
    /// crash or power loss of the collector; with [`Durability::Normal`] only a process crash —
    /// and the vehicle forgets what was acked.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(STORE, &path, durability, SCHEMA, true)?;
        // The WAL is copied into the file on a thread of its own, not inside a commit (which
        // would hold every connection's ack behind it).
        let checkpoint_conn = open_connection(STORE, &path, durability, "", false)?;
        let checkpoints = BackgroundCheckpoints::spawn(checkpoint_conn, &path).map_err(|_| {
            Error::WorkerGone {
                action: "starting the inbox checkpoint thread",
            }
        })?;
        Ok(SqliteInbox {
            conn,
            path,
            checkpoints,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn source_row(conn: &Connection, source: &str) -> rusqlite::Result<Option<SourceRow>> {
        conn.prepare_cached(
            "SELECT id, acked, records, last_ts_ms FROM inbox_source WHERE source = ?1",
        )?
        .query_row(params![source], |r| {
            Ok(SourceRow {
                id: r.get(0)?,
                acked: from_sql(r.get(1)?),
                records: from_sql(r.get(2)?),
                last_ts_ms: from_sql(r.get(3)?),
            })
        })
        .optional()
    }

    /// Hands the chunks of `source` (id `id`) that `filter` selects, in seq order, to `keep`
    /// until it returns false. `filter` is the `WHERE` after `source = ?1`, its parameters
    /// `?2 ..` are `params`.
    fn scan(
        conn: &Connection,
        source: &str,
        filter: &str,
        params: impl rusqlite::Params,
        mut keep: impl FnMut(Chunk) -> bool,
    ) -> Result<()> {
        let sql = format!(
            "SELECT id, first_seq, last_seq, count, items FROM inbox_chunk
             WHERE {filter} ORDER BY last_seq"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(sql_err("read"))?;
        let mut rows = stmt.query(params).map_err(sql_err("read"))?;
        while let Some(row) = rows.next().map_err(sql_err("read"))? {
            let (columns, blob) = chunk_columns(row, 1, STORE)?;
            let records = decode_chunk(columns, &blob).map_err(|detail| {
                corrupt(
                    source,
                    format!(
                        "the chunk of seqs {} ..= {} does not decode: {detail}",
                        columns.first_seq, columns.last_seq
                    ),
                )
            })?;
            let chunk = Chunk {
                id: row.get(0).map_err(sql_err("read"))?,
                first_seq: columns.first_seq,
                last_seq: columns.last_seq,
                records,
            };
            if !keep(chunk) {
                break;
            }
        }
        Ok(())
    }

    /// Stores the new records of one batch of source `row` and updates `row`; returns what
    /// was stored and what was a duplicate.
    fn commit_batch(
        tx: &Transaction<'_>,
        source: &str,
        row: &mut SourceRow,
        records: &[OutboxRecord],
    ) -> Result<InboxCommit> {
        let mut commit = InboxCommit::default();
        // The records in seq order, the first copy of each seq kept (as the memory inbox
        // does): a batch from the wire is ascending already and is not copied.
        let sorted_copy;
        let mut new: &[OutboxRecord] = records;
        if !records.windows(2).all(|w| w[0].seq < w[1].seq) {
            let mut copy = records.to_vec();
            copy.sort_by_key(|r| r.seq); // stable: the first copy of a seq stays first
            copy.dedup_by_key(|r| r.seq);
            commit.duplicates += (records.len() - copy.len()) as u64;
            sorted_copy = copy;
            new = &sorted_copy;
        }
        let Some(first) = new.first() else {
            commit.ack = row.acked;
            return Ok(commit);
        };
        let (low, high) = new.split_at(new.partition_point(|r| r.seq <= row.acked));
        // The chunks read for `low`: those that a new record's seq falls inside (rewritten
        // with it), and the ranges of the others (new rows must not straddle them).
        let mut kept: Vec<(Seq, Seq)> = Vec::new();
        let mut rewritten: Vec<Chunk> = Vec::new();
        // The records of `low` that no chunk holds, ascending.
        let mut fresh: Vec<OutboxRecord> = Vec::new();
        if let Some(low_last) = low.last() {
            // Seqs the source may already hold: read the chunks whose ranges meet them.
            let mut pending = low.iter().peekable();
            Self::scan(
                tx,
                source,
                "source = ?1 AND last_seq >= ?2 AND first_seq <= ?3",
                params![row.id, to_sql(first.seq), to_sql(low_last.seq)],
                |chunk| {
                    // Records below this chunk's range are in a gap between chunks: new.
                    while let Some(r) = pending.next_if(|r| r.seq < chunk.first_seq) {
                        fresh.push(r.clone());
                    }
                    let mut inside = false;
                    while let Some(r) = pending.next_if(|r| r.seq <= chunk.last_seq) {
                        let held = chunk.records.binary_search_by_key(&r.seq, |c| c.seq);
                        if held.is_ok() {
                            commit.duplicates += 1;
                        } else {
                            fresh.push(r.clone());
                            inside = true;
                        }
                    }
                    if inside {
                        rewritten.push(chunk);
                    } else {
                        kept.push((chunk.first_seq, chunk.last_seq));
                    }
                    pending.peek().is_some()
                },
            )?;
            fresh.extend(pending.cloned());
        }
        commit.stored = (fresh.len() + high.len()) as u64;
        if commit.stored > 0 {
            let newest = fresh.iter().chain(high).map(|r| r.ts_ms);
            row.last_ts_ms = newest.fold(row.last_ts_ms, u64::max);
            row.acked = row.acked.max(high.last().map_or(0, |r| r.seq));
            row.records = row.records.saturating_add(commit.stored);
        }
        if !rewritten.is_empty() {
            // New records inside a chunk's range: the chunk is written again with them.
            let mut delete = tx
                .prepare_cached("DELETE FROM inbox_chunk WHERE id = ?1")
                .map_err(sql_err("commit"))?;
            for chunk in &rewritten {
                delete
                    .execute(params![chunk.id])
                    .map_err(sql_err("commit"))?;
            }
            fresh.extend(rewritten.into_iter().flat_map(|c| c.records));
            fresh.sort_by_key(|r| r.seq);
        }
        if !fresh.is_empty() {
            insert_chunks(tx, row.id, &fresh, &kept)?;
        }
        // Above every chunk of the source.
        if !high.is_empty() {
            insert_chunks(tx, row.id, high, &[])?;
        }
        commit.ack = row.acked;
        Ok(commit)
    }
}

impl UplinkInbox for SqliteInbox {
    fn commit(&mut self, source: &str, records: &[OutboxRecord]) -> Result<InboxCommit> {
        let mut commits = self.commit_many(&[(source, records)])?;
        commits.pop().ok_or_else(|| Error::InvalidUplinkInput {
            reason: "no batch".to_owned(),
        })
    }

    fn commit_many(&mut self, batches: &[(&str, &[OutboxRecord])]) -> Result<Vec<InboxCommit>> {
        for (source, records) in batches {
            validate_commit(source, records)?;
        }
        let commits = in_transaction(&mut self.conn, STORE, TransactionBehavior::Deferred, |tx| {
            let mut rows: HashMap<&str, SourceRow> = HashMap::new();
            let mut commits = Vec::with_capacity(batches.len());
            for (source, records) in batches {
                let row = match rows.entry(source) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        match Self::source_row(tx, source).map_err(sql_err("commit"))? {
                            Some(found) => e.insert(found),
                            None if records.is_empty() => {
                                commits.push(InboxCommit::default());
                                continue;
                            }
                            None => {
                                tx.prepare_cached("INSERT INTO inbox_source (source) VALUES (?1)")
                                    .and_then(|mut s| s.execute(params![source]))
                                    .map_err(sql_err("commit"))?;
                                e.insert(SourceRow {
                                    id: tx.last_insert_rowid(),
                                    acked: 0,
                                    records: 0,
                                    last_ts_ms: 0,
                                })
                            }
                        }
                    }
                };
                commits.push(Self::commit_batch(tx, source, row, records)?);
            }
            execute_each(
                tx,
                STORE,
                "UPDATE inbox_source SET acked = ?2, records = ?3, last_ts_ms = ?4 WHERE id = ?1",
                rows.values().map(|row| {
                    (
                        row.id,
                        to_sql(row.acked),
                        to_sql(row.records),
                        to_sql(row.last_ts_ms),
                    )
                }),
            )?;
            Ok(commits)
        })?;
        self.checkpoints.after_write(&self.conn);
        Ok(commits)
    }

    fn acked(&mut self, source: &str) -> Result<Seq> {
        let row = Self::source_row(&self.conn, source).map_err(sql_err("acked"))?;
        Ok(row.map_or(0, |r| r.acked))
    }

    fn sources(&mut self) -> Result<Vec<InboxSource>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT source, acked, records, last_ts_ms FROM inbox_source
                 WHERE records > 0 ORDER BY source",
            )
            .map_err(sql_err("sources"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(InboxSource {
                    source: row.get(0)?,
                    acked: from_sql(row.get(1)?),
                    records: from_sql(row.get(2)?),
                    last_ts_ms: from_sql(row.get(3)?),
                })
            })
            .map_err(sql_err("sources"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_err("sources"))
    }

    fn read_between(
        &mut self,
        source: &str,
        after: Seq,
        from_ts_ms: u64,
        to_ts_ms: u64,
        max: usize,
    ) -> Result<Vec<OutboxRecord>> {
        let mut out = Vec::new();
        if max == 0 || from_ts_ms >= to_ts_ms {
            return Ok(out);
        }
        let Some(row) = Self::source_row(&self.conn, source).map_err(sql_err("read"))? else {
            return Ok(out);
        };
        // The ts columns saturate at i64::MAX: the filter on them only skips chunks that hold
        // no record of the range; the records are checked exactly below.
        Self::scan(
            &self.conn,
            source,
            "source = ?1 AND last_seq > ?2 AND max_ts_ms >= ?3 AND min_ts_ms <= ?4",
            params![
                row.id,
                to_sql(after),
                to_sql(from_ts_ms),
                to_sql(to_ts_ms - 1)
            ],
            |chunk| {
                let wanted = chunk
                    .records
                    .into_iter()
                    .filter(|r| r.seq > after && (from_ts_ms..to_ts_ms).contains(&r.ts_ms));
                out.extend(wanted.take(max - out.len()));
                out.len() < max
            },
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `(seq, payload)`, each taken at `seq * 7` ms.
    fn make(items: &[(u64, &str)]) -> Vec<OutboxRecord> {
        let record = |&(seq, payload): &(u64, &str)| OutboxRecord {
            seq,
            ts_ms: seq * 7,
            payload: Bytes::from(payload.to_owned()),
        };
        items.iter().map(record).collect()
    }

    #[test]
    fn chunks_round_trip_and_damaged_ones_are_refused() {
        let records = make(&[(3, "{}"), (5, ""), (6, "{\"a\":1}")]);
        let blob = Bytes::from(encode_chunk(&records));
        let columns = ChunkBounds {
            first_seq: 3,
            last_seq: 6,
            count: 3,
        };
        assert_eq!(decode_chunk(columns, &blob).as_deref(), Ok(&records[..]));
        for bad in [
            ChunkBounds {
                count: 2,
                ..columns
            },
            ChunkBounds {
                count: 4,
                ..columns
            },
            ChunkBounds {
                last_seq: 7,
                ..columns
            },
            ChunkBounds {
                last_seq: 5,
                ..columns
            },
            ChunkBounds {
                first_seq: 2,
                ..columns
            },
        ] {
            assert!(decode_chunk(bad, &blob).is_err(), "{bad:?}");
        }
        assert!(decode_chunk(columns, &blob.slice(..blob.len() - 1)).is_err());
        assert!(decode_chunk(columns, &Bytes::new()).is_err());
        let mut descending = encode_chunk(&records[1..]);
        descending.extend_from_slice(&encode_chunk(&records[..1])[1..]);
        assert!(decode_chunk(columns, &Bytes::from(descending)).is_err());
        let mut huge = blob.to_vec();
        huge[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_chunk(columns, &Bytes::from(huge)).is_err());
        // Compressible records are stored LZ4-compressed, and read back the same.
        let seqs: Vec<_> = (1..=100).map(|seq| (seq, "{\"kind\":\"bench\"}")).collect();
        let many = make(&seqs);
        let packed = Bytes::from(encode_chunk(&many));
        assert!(
            packed.len() < many.len() * ITEM_HEADER,
            "{} bytes",
            packed.len()
        );
        let columns = ChunkBounds {
            first_seq: 1,
            last_seq: 100,
            count: 100,
        };
        assert_eq!(decode_chunk(columns, &packed), Ok(many));
    }
}
