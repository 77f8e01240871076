//! SQLite outbox store: the durable default, many streams in one file (WAL).
//!
//! ```sql
//! outbox_stream(id PRIMARY KEY, key UNIQUE, next_slot, removed_through, seq_offset, acked,
//!               rx_seq, unsettled BLOB, dropped_overflow, dropped_refused, dropped_abandoned)
//! outbox_chunk(id PRIMARY KEY, stream, first_slot, last_slot, count, items BLOB)
//!     UNIQUE (stream, last_slot)
//! ```
//!
//! The records of one append are stored as one row (split at 256 records or 64 KiB), encoded
//! like the stream log's chunks (`relay_core::log::sqlite_chunk`, LZ4 when it pays) with the
//! slot in the item's seq field: a row per record made SQLite's per-row work dominate. Removing
//! a prefix deletes the rows that end at or below it (a range of the unique index, so the cost
//! follows what is removed, not what is stored); a row that straddles the boundary stays until
//! its last record goes, and reads skip its removed records. Layout and durability:
//! `docs/protocols/uplink.md`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::store::{
    DropCounts, OutboxStore, StoredRecord, StoredStream, StreamId, StreamState, StreamWrite,
    Unsettled, out_of_order, validate_key,
};
use super::store_memory::{check_append, check_remove};
use crate::error::{Error, Result};
use crate::log::Item;
use crate::log::sqlite_chunk::{self, ChunkBounds, ChunkWriter};
use crate::sqlite::{Durability, open_wal, open_wal_manual_checkpoints, set_synchronous};

const STORE: &str = "outbox";

/// Maps a rusqlite error of `store` (outbox or inbox) during `action` to the crate error.
pub(super) fn store_err(
    store: &'static str,
    action: &'static str,
) -> impl Fn(rusqlite::Error) -> Error {
    move |source| Error::UplinkStore {
        store,
        action,
        source,
    }
}

fn sql_err(action: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    store_err(STORE, action)
}

/// Runs `apply` in one transaction of `conn` (begun with `behavior`) and commits it: the shape
/// of every commit of the outbox and the inbox. Nothing is kept if `apply` fails.
pub(super) fn in_transaction<T>(
    conn: &mut Connection,
    store: &'static str,
    behavior: TransactionBehavior,
    apply: impl FnOnce(&Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(behavior)
        .map_err(store_err(store, "commit"))?;
    let out = apply(&tx)?;
    tx.commit().map_err(store_err(store, "commit"))?;
    Ok(out)
}

/// Runs the (cached) statement `sql` of `store` once with each of `rows` as its parameters:
/// how a commit writes back the rows it changed.
pub(super) fn execute_each<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    store: &'static str,
    sql: &str,
    rows: impl IntoIterator<Item = P>,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(sql).map_err(store_err(store, "commit"))?;
    for row in rows {
        stmt.execute(row).map_err(store_err(store, "commit"))?;
    }
    Ok(())
}

pub(super) fn to_sql(value: u64) -> i64 {
    // Seqs, slots, counts and millisecond timestamps stay far below 2^63; saturate rather
    // than wrap.
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The bounds and blob of a chunk row of `store`: the columns `first_seq`, `last_seq`, `count`
/// and the blob, in that order from column `first`.
pub(super) fn chunk_columns(
    row: &rusqlite::Row<'_>,
    first: usize,
    store: &'static str,
) -> Result<(ChunkBounds, Bytes)> {
    let int = |i: usize| -> Result<u64> {
        let v: i64 = row.get(i).map_err(store_err(store, "read"))?;
        Ok(from_sql(v))
    };
    let bounds = ChunkBounds {
        first_seq: int(first)?,
        last_seq: int(first + 1)?,
        count: int(first + 2)?,
    };
    let blob: Vec<u8> = row.get(first + 3).map_err(store_err(store, "read"))?;
    Ok((bounds, Bytes::from(blob)))
}

/// Opens `path` for an uplink `store` with WAL, the given sync level and a busy timeout, and
/// runs `schema`. With `manual_checkpoints` SQLite never checkpoints inside a commit of this
/// connection ([`open_wal_manual_checkpoints`]): the caller runs a checkpointer.
pub(super) fn open_connection(
    store: &'static str,
    path: &Path,
    sync: Durability,
    schema: &str,
    manual_checkpoints: bool,
) -> Result<Connection> {
    let open_err = |source| Error::UplinkStoreOpen {
        store,
        path: path.to_path_buf(),
        source,
    };
    let conn = if manual_checkpoints {
        open_wal_manual_checkpoints(path, sync)
    } else {
        open_wal(path, sync)
    }
    .map_err(open_err)?;
    conn.execute_batch(schema).map_err(open_err)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox_stream (
    id                INTEGER PRIMARY KEY,
    key               TEXT NOT NULL UNIQUE,
    next_slot         INTEGER NOT NULL DEFAULT 1,
    removed_through   INTEGER NOT NULL DEFAULT 0,
    seq_offset        INTEGER NOT NULL DEFAULT 0,
    acked             INTEGER NOT NULL DEFAULT 0,
    rx_seq            INTEGER NOT NULL DEFAULT 0,
    unsettled         BLOB NOT NULL DEFAULT x'',
    dropped_overflow  INTEGER NOT NULL DEFAULT 0,
    dropped_refused   INTEGER NOT NULL DEFAULT 0,
    dropped_abandoned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox_chunk (
    id         INTEGER PRIMARY KEY,
    stream     INTEGER NOT NULL,
    first_slot INTEGER NOT NULL,
    last_slot  INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    items      BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_chunk_by_stream ON outbox_chunk(stream, last_slot);
";

/// An [`OutboxStore`] in a SQLite file.
#[derive(Debug)]
pub struct SqliteOutboxStore {
    conn: Connection,
    path: PathBuf,
    sync: Durability,
}

/// Slot bounds of a stream while a commit changes them.
#[derive(Debug, Clone)]
struct Bounds {
    next_slot: u64,
    removed_through: u64,
    state: Option<StreamState>,
}

impl SqliteOutboxStore {
    /// Opens (creating if needed) the store at `path` with WAL and the given sync level.
    pub fn open(path: impl AsRef<Path>, sync: Durability) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(STORE, &path, sync, SCHEMA, false)?;
        Ok(SqliteOutboxStore { conn, path, sync })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(
        conn: &Connection,
        column: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Option<StoredStream>> {
        let sql = format!(
            "SELECT id, next_slot, removed_through, seq_offset, acked, rx_seq, unsettled,
                    dropped_overflow, dropped_refused, dropped_abandoned
             FROM outbox_stream WHERE {column} = ?1"
        );
        conn.prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_row([value], |r| {
                    Ok(StoredStream {
                        id: from_sql(r.get(0)?),
                        next_slot: from_sql(r.get(1)?),
                        removed_through: from_sql(r.get(2)?),
                        state: StreamState {
                            seq_offset: r.get(3)?,
                            acked: from_sql(r.get(4)?),
                            rx_seq: from_sql(r.get(5)?),
                            unsettled: Unsettled::from_bytes(&r.get::<_, Vec<u8>>(6)?).ok_or_else(
                                || {
                                    rusqlite::Error::FromSqlConversionFailure(
                                        6,
                                        rusqlite::types::Type::Blob,
                                        "malformed unsettled ranges".into(),
                                    )
                                },
                            )?,
                            dropped: DropCounts {
                                overflow: from_sql(r.get(7)?),
                                refused: from_sql(r.get(8)?),
                                abandoned: from_sql(r.get(9)?),
                            },
                        },
                    })
                })
                .optional()
            })
            .map_err(sql_err("open stream"))
    }

    fn bounds(conn: &Connection, stream: StreamId) -> Result<Bounds> {
        let stored = Self::load(conn, "id", &to_sql(stream))?
            .ok_or_else(|| out_of_order(stream, "no such stream".to_owned()))?;
        Ok(Bounds {
            next_slot: stored.next_slot,
            removed_through: stored.removed_through,
            state: None,
        })
    }

    /// Hands the records above `floor` of each chunk row of `stream`, in `sql` order, to
    /// `keep` until it returns false; says whether it did.
    fn scan_chunks(
        &self,
        stream: StreamId,
        sql: &str,
        params: impl rusqlite::Params,
        floor: u64,
        mut keep: impl FnMut(&[Item]) -> bool,
    ) -> Result<bool> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sql_err("read"))?;
        let mut rows = stmt.query(params).map_err(sql_err("read"))?;
        while let Some(row) = rows.next().map_err(sql_err("read"))? {
            let (bounds, blob) = chunk_columns(row, 0, STORE)?;
            let items = sqlite_chunk::items_above(bounds, &blob, floor).map_err(|err| {
                out_of_order(
                    stream,
                    format!(
                        "the chunk of slots {} ..= {} does not decode: {err}",
                        bounds.first_seq, bounds.last_seq
                    ),
                )
            })?;
            if !keep(&items) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The bounds of `stream` in this commit, loaded at its first write.
fn touch<'a>(
    touched: &'a mut HashMap<StreamId, Bounds>,
    conn: &Connection,
    stream: StreamId,
) -> Result<&'a mut Bounds> {
    Ok(match touched.entry(stream) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(SqliteOutboxStore::bounds(conn, stream)?),
    })
}

fn stored(item: &Item) -> StoredRecord {
    StoredRecord {
        slot: item.seq,
        ts_ms: item.ts_ms,
        payload: item.payload.clone(),
    }
}

impl OutboxStore for SqliteOutboxStore {
    fn open_stream(&mut self, key: &str) -> Result<StoredStream> {
        validate_key(key)?;
        if let Some(found) = Self::load(&self.conn, "key", &key)? {
            return Ok(found);
        }
        self.conn
            .execute("INSERT INTO outbox_stream (key) VALUES (?1)", params![key])
            .map_err(sql_err("open stream"))?;
        Self::load(&self.conn, "key", &key)?
            .ok_or_else(|| out_of_order(0, format!("stream {key:?} vanished after its creation")))
    }

    fn read(&mut self, stream: StreamId, after_slot: u64, max: usize) -> Result<Vec<StoredRecord>> {
        let bounds = Self::bounds(&self.conn, stream)?;
        let floor = after_slot.max(bounds.removed_through);
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.scan_chunks(
            stream,
            "SELECT first_slot, last_slot, count, items FROM outbox_chunk
             WHERE stream = ?1 AND last_slot > ?2 ORDER BY last_slot",
            params![to_sql(stream), to_sql(floor)],
            floor,
            |items| {
                out.extend(items.iter().take(max - out.len()).map(stored));
                out.len() < max
            },
        )?;
        Ok(out)
    }

    fn read_newest(
        &mut self,
        stream: StreamId,
        since_ts_ms: u64,
        before_slot: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>> {
        let bounds = Self::bounds(&self.conn, stream)?;
        let floor = bounds.removed_through;
        let mut newest = Vec::new();
        if max == 0 {
            return Ok(newest);
        }
        let found = &mut newest;
        let mut done = false;
        let mut take = move |items: &[Item]| {
            for item in items.iter().rev().filter(|i| i.seq < before_slot) {
                if found.len() >= max || item.ts_ms < since_ts_ms {
                    done = true;
                    break;
                }
                found.push(stored(item));
            }
            !done
        };
        // The row holding `before_slot - 1` may also hold `before_slot` and more; every row
        // after it in the scan ends below `before_slot`.
        let stopped = self.scan_chunks(
            stream,
            "SELECT first_slot, last_slot, count, items FROM outbox_chunk
             WHERE stream = ?1 AND last_slot >= ?2 AND first_slot < ?2 AND last_slot > ?3
             ORDER BY last_slot LIMIT 1",
            params![to_sql(stream), to_sql(before_slot), to_sql(floor)],
            floor,
            &mut take,
        )?;
        if !stopped {
            self.scan_chunks(
                stream,
                "SELECT first_slot, last_slot, count, items FROM outbox_chunk
                 WHERE stream = ?1 AND last_slot < ?2 AND last_slot > ?3
                 ORDER BY last_slot DESC",
                params![to_sql(stream), to_sql(before_slot), to_sql(floor)],
                floor,
                take,
            )?;
        }
        newest.reverse();
        Ok(newest)
    }

    fn commit(&mut self, writes: &[StreamWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        if self.sync == Durability::Full && self.only_marks(writes)? {
            // Written to the WAL, not fsynced: the next synced commit (or checkpoint) makes it
            // durable with everything before it. A power cut may undo it, never a later one.
            let sync =
                |conn: &Connection, level| set_synchronous(conn, level).map_err(sql_err("commit"));
            sync(&self.conn, Durability::Normal)?;
            let committed = self.commit_synced(writes);
            sync(&self.conn, Durability::Full)?;
            return committed;
        }
        self.commit_synced(writes)
    }
}

impl SqliteOutboxStore {
    /// Whether `writes` only record what the remote acknowledged (the ack, the inbound cursor)
    /// or remove records: no append, and no change of a stream's seq offset, drop counts or
    /// unsettled ranges. Losing such a commit to a power cut loses nothing: the stream resends
    /// what the remote already holds (it deduplicates), and its handshake answer restores the
    /// ack. Every other commit is fsynced before it returns.
    fn only_marks(&self, writes: &[StreamWrite]) -> Result<bool> {
        for write in writes {
            match write {
                StreamWrite::Append { .. } => return Ok(false),
                StreamWrite::RemoveThrough { .. } => {}
                StreamWrite::State { stream, state } => {
                    let Some(stored) = Self::load(&self.conn, "id", &to_sql(*stream))? else {
                        return Ok(false);
                    };
                    let kept = &stored.state;
                    if (kept.seq_offset, &kept.unsettled, kept.dropped)
                        != (state.seq_offset, &state.unsettled, state.dropped)
                    {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Applies `writes` in one transaction, at the connection's sync level.
    fn commit_synced(&mut self, writes: &[StreamWrite]) -> Result<()> {
        in_transaction(
            &mut self.conn,
            STORE,
            TransactionBehavior::Immediate,
            |tx| Self::apply(tx, writes),
        )
    }

    fn apply(tx: &Transaction<'_>, writes: &[StreamWrite]) -> Result<()> {
        let mut touched: HashMap<StreamId, Bounds> = HashMap::new();
        for write in writes {
            match write {
                StreamWrite::Append {
                    stream,
                    first_slot,
                    records,
                } => {
                    let b = touch(&mut touched, tx, *stream)?;
                    check_append(*stream, b.next_slot, *first_slot, records.len())?;
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO outbox_chunk (stream, first_slot, last_slot, count, items)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .map_err(sql_err("append"))?;
                    let mut writer = ChunkWriter::new();
                    let mut flush = |writer: &mut ChunkWriter| {
                        let (bounds, blob) = writer.take();
                        insert
                            .execute(params![
                                to_sql(*stream),
                                to_sql(bounds.first_seq),
                                to_sql(bounds.last_seq),
                                to_sql(bounds.count),
                                blob
                            ])
                            .map(|_| ())
                            .map_err(sql_err("append"))
                    };
                    for (slot, record) in (b.next_slot..).zip(records) {
                        writer.push(&Item {
                            seq: slot,
                            ts_ms: record.ts_ms,
                            payload: record.payload.clone(),
                        });
                        if writer.is_full() {
                            flush(&mut writer)?;
                        }
                    }
                    if !writer.is_empty() {
                        flush(&mut writer)?;
                    }
                    b.next_slot += records.len() as u64;
                }
                StreamWrite::RemoveThrough { stream, slot } => {
                    let b = touch(&mut touched, tx, *stream)?;
                    check_remove(*stream, b.removed_through, b.next_slot, *slot)?;
                    tx.prepare_cached(
                        "DELETE FROM outbox_chunk WHERE stream = ?1 AND last_slot <= ?2",
                    )
                    .and_then(|mut stmt| stmt.execute(params![to_sql(*stream), to_sql(*slot)]))
                    .map_err(sql_err("remove"))?;
                    b.removed_through = *slot;
                }
                StreamWrite::State { stream, state } => {
                    let b = touch(&mut touched, tx, *stream)?;
                    b.state = Some(state.clone());
                }
            }
        }
        execute_each(
            tx,
            STORE,
            "UPDATE outbox_stream SET next_slot = ?2, removed_through = ?3 WHERE id = ?1",
            touched.iter().map(|(stream, b)| {
                (
                    to_sql(*stream),
                    to_sql(b.next_slot),
                    to_sql(b.removed_through),
                )
            }),
        )?;
        execute_each(
            tx,
            STORE,
            "UPDATE outbox_stream SET seq_offset = ?2, acked = ?3, rx_seq = ?4,
                 unsettled = ?5, dropped_overflow = ?6, dropped_refused = ?7,
                 dropped_abandoned = ?8
             WHERE id = ?1",
            touched.iter().filter_map(|(stream, b)| {
                let s = b.state.as_ref()?;
                Some((
                    to_sql(*stream),
                    s.seq_offset,
                    to_sql(s.acked),
                    to_sql(s.rx_seq),
                    s.unsettled.to_bytes(),
                    to_sql(s.dropped.overflow),
                    to_sql(s.dropped.refused),
                    to_sql(s.dropped.abandoned),
                ))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::{DropReason, NewRecord};

    fn synchronous(store: &SqliteOutboxStore) -> i64 {
        store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("pragma")
    }

    #[test]
    fn only_marking_commits_skip_their_fsync_and_the_level_comes_back() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SqliteOutboxStore::open(dir.path().join("o.db"), Durability::Full)?;
        let stream = store.open_stream("v")?;
        let append = StreamWrite::Append {
            stream: stream.id,
            first_slot: 1,
            records: vec![NewRecord {
                ts_ms: 1,
                payload: Bytes::from_static(b"{}"),
            }],
        };
        let mut state = stream.state.clone();
        assert!(!store.only_marks(std::slice::from_ref(&append))?);
        store.commit(&[append])?;
        state.acked = 1;
        let ack = StreamWrite::State {
            stream: stream.id,
            state: state.clone(),
        };
        let remove = StreamWrite::RemoveThrough {
            stream: stream.id,
            slot: 1,
        };
        assert!(store.only_marks(&[ack.clone(), remove.clone()])?);
        store.commit(&[ack, remove])?;
        assert_eq!(synchronous(&store), 2, "FULL again after a marking commit");
        assert_eq!(store.open_stream("v")?.state.acked, 1);
        // A changed drop count, offset or unsettled range is fsynced like an append.
        let changes: [fn(&mut StreamState); 3] = [
            |s| s.dropped.add(DropReason::Overflow, 1),
            |s| s.seq_offset += 1,
            |s| {
                s.unsettled.add(1, 1);
            },
        ];
        for change in changes {
            let mut changed = state.clone();
            change(&mut changed);
            let write = StreamWrite::State {
                stream: stream.id,
                state: changed,
            };
            assert!(!store.only_marks(&[write])?);
        }
        Ok(())
    }
}
