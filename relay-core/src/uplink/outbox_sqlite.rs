//! SQLite outbox: the durable default on the vehicle.
//!
//! One file, WAL journal. Layout (documented in `docs/protocols/uplink.md`):
//!
//! ```sql
//! outbox_record(seq INTEGER PRIMARY KEY, ts_ms INTEGER, payload BLOB)
//! outbox_meta(id = 1, last_seq, acked_through, dropped_pending_total, stored)
//! ```
//!
//! "Uplinked" is not a per-row flag: the remote acknowledges cumulatively, so a record is
//! uplinked exactly when `seq <= acked_through`, and marking is one row update.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::outbox::{
    AppendReport, NewRecord, OutboxConfig, OutboxRecord, OutboxStats, UplinkOutbox, check_ack,
};
use crate::error::{Error, Result};
use crate::log::Seq;
use crate::sqlite::{Durability, open_wal};

const STORE: &str = "outbox";

/// An [`UplinkOutbox`] in a SQLite file.
#[derive(Debug)]
pub struct SqliteOutbox {
    conn: Connection,
    config: OutboxConfig,
    path: PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    last_seq: Seq,
    acked_through: Seq,
    dropped_pending_total: u64,
    stored: u64,
}

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

pub(super) fn to_sql(value: u64) -> i64 {
    // Seqs, counts and millisecond timestamps stay far below 2^63; saturate rather than wrap.
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl SqliteOutbox {
    /// Opens (creating if needed) the outbox at `path` ([`open_wal`](crate::sqlite::open_wal)).
    /// Use [`Durability::Full`] on a vehicle: an appended record then survives a power loss or
    /// OS crash too, not only a process crash. Batch appends (`full` is ~3× slower per
    /// transaction).
    pub fn open(
        path: impl AsRef<Path>,
        config: OutboxConfig,
        durability: Durability,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| Error::UplinkStoreOpen {
            store: STORE,
            path: path.clone(),
            source,
        };
        let conn = open_wal(&path, durability).map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox_record (
                 seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, payload BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS outbox_record_ts ON outbox_record(ts_ms);
             CREATE TABLE IF NOT EXISTS outbox_meta (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 last_seq INTEGER NOT NULL, acked_through INTEGER NOT NULL,
                 dropped_pending_total INTEGER NOT NULL, stored INTEGER NOT NULL);
             INSERT OR IGNORE INTO outbox_meta VALUES (1, 0, 0, 0, 0);",
        )
        .map_err(open_err)?;
        Ok(SqliteOutbox { conn, config, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(tx: &Connection) -> rusqlite::Result<Meta> {
        tx.query_row(
            "SELECT last_seq, acked_through, dropped_pending_total, stored FROM outbox_meta",
            [],
            |row| {
                Ok(Meta {
                    last_seq: from_sql(row.get(0)?),
                    acked_through: from_sql(row.get(1)?),
                    dropped_pending_total: from_sql(row.get(2)?),
                    stored: from_sql(row.get(3)?),
                })
            },
        )
    }

    fn write_meta(tx: &Transaction<'_>, meta: &Meta) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE outbox_meta SET last_seq = ?1, acked_through = ?2,
                 dropped_pending_total = ?3, stored = ?4 WHERE id = 1",
            params![
                to_sql(meta.last_seq),
                to_sql(meta.acked_through),
                to_sql(meta.dropped_pending_total),
                to_sql(meta.stored)
            ],
        )?;
        Ok(())
    }

    fn query_records(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        action: &'static str,
    ) -> Result<Vec<OutboxRecord>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sql_err(action))?;
        let rows = stmt
            .query_map(params, |row| {
                Ok(OutboxRecord {
                    seq: from_sql(row.get(0)?),
                    ts_ms: from_sql(row.get(1)?),
                    payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(2)?),
                })
            })
            .map_err(sql_err(action))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_err(action))
    }
}

impl UplinkOutbox for SqliteOutbox {
    fn append(&mut self, records: &[NewRecord]) -> Result<AppendReport> {
        let mut report = AppendReport::default();
        if records.is_empty() {
            return Ok(report);
        }
        let cap = self.config.max_local_records;
        let tx = self.conn.transaction().map_err(sql_err("append"))?;
        let mut meta = Self::meta(&tx).map_err(sql_err("append"))?;
        report.first_seq = meta.last_seq + 1;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbox_record (seq, ts_ms, payload) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql_err("append"))?;
            for record in records {
                meta.last_seq += 1;
                insert
                    .execute(params![
                        to_sql(meta.last_seq),
                        to_sql(record.ts_ms),
                        &record.payload[..]
                    ])
                    .map_err(sql_err("append"))?;
            }
        }
        report.last_seq = meta.last_seq;
        meta.stored += records.len() as u64;
        if meta.stored > cap {
            // Overflow policy: oldest uplinked first, then oldest pending.
            let excess = meta.stored - cap;
            report.pruned_uplinked = tx
                .execute(
                    "DELETE FROM outbox_record WHERE seq IN (SELECT seq FROM outbox_record
                         WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
                    params![to_sql(meta.acked_through), to_sql(excess)],
                )
                .map_err(sql_err("append"))? as u64;
            let still = excess - report.pruned_uplinked;
            if still > 0 {
                report.dropped_pending = tx
                    .execute(
                        "DELETE FROM outbox_record WHERE seq IN (SELECT seq FROM outbox_record
                             WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
                        params![to_sql(meta.acked_through), to_sql(still)],
                    )
                    .map_err(sql_err("append"))? as u64;
            }
            meta.stored -= report.pruned_uplinked + report.dropped_pending;
            meta.dropped_pending_total += report.dropped_pending;
        }
        Self::write_meta(&tx, &meta).map_err(sql_err("append"))?;
        tx.commit().map_err(sql_err("append"))?;
        Ok(report)
    }

    fn fetch_pending(&mut self, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        let meta = Self::meta(&self.conn).map_err(sql_err("fetch"))?;
        let after = after.max(meta.acked_through);
        self.query_records(
            "SELECT seq, ts_ms, payload FROM outbox_record WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            params![to_sql(after), to_sql(max as u64)],
            "fetch",
        )
    }

    fn mark_uplinked(&mut self, up_to: Seq) -> Result<u64> {
        let tx = self.conn.transaction().map_err(sql_err("mark"))?;
        let mut meta = Self::meta(&tx).map_err(sql_err("mark"))?;
        check_ack(up_to, meta.last_seq)?;
        if up_to <= meta.acked_through {
            return Ok(0);
        }
        let newly: i64 = tx
            .query_row(
                "SELECT count(*) FROM outbox_record WHERE seq > ?1 AND seq <= ?2",
                params![to_sql(meta.acked_through), to_sql(up_to)],
                |row| row.get(0),
            )
            .map_err(sql_err("mark"))?;
        meta.acked_through = up_to;
        Self::write_meta(&tx, &meta).map_err(sql_err("mark"))?;
        tx.commit().map_err(sql_err("mark"))?;
        Ok(from_sql(newly))
    }

    fn prune_uplinked(&mut self, older_than_ts_ms: u64) -> Result<u64> {
        let tx = self.conn.transaction().map_err(sql_err("prune"))?;
        let mut meta = Self::meta(&tx).map_err(sql_err("prune"))?;
        let removed = tx
            .execute(
                "DELETE FROM outbox_record WHERE seq <= ?1 AND ts_ms < ?2",
                params![to_sql(meta.acked_through), to_sql(older_than_ts_ms)],
            )
            .map_err(sql_err("prune"))? as u64;
        meta.stored = meta.stored.saturating_sub(removed);
        Self::write_meta(&tx, &meta).map_err(sql_err("prune"))?;
        tx.commit().map_err(sql_err("prune"))?;
        Ok(removed)
    }

    fn recent(&mut self, since_ts_ms: u64, max: usize) -> Result<Vec<OutboxRecord>> {
        let mut newest = self.query_records(
            "SELECT seq, ts_ms, payload FROM outbox_record WHERE ts_ms >= ?1
                 ORDER BY seq DESC LIMIT ?2",
            params![to_sql(since_ts_ms), to_sql(max as u64)],
            "recent",
        )?;
        newest.reverse();
        Ok(newest)
    }

    fn stats(&mut self, now_ms: u64) -> Result<OutboxStats> {
        let meta = Self::meta(&self.conn).map_err(sql_err("stats"))?;
        let pending: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM outbox_record WHERE seq > ?1",
                params![to_sql(meta.acked_through)],
                |row| row.get(0),
            )
            .map_err(sql_err("stats"))?;
        let oldest_pending_ts_ms: Option<i64> = self
            .conn
            .query_row(
                "SELECT ts_ms FROM outbox_record WHERE seq > ?1 ORDER BY seq LIMIT 1",
                params![to_sql(meta.acked_through)],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql_err("stats"))?;
        let oldest_pending_ts_ms = oldest_pending_ts_ms.map(from_sql);
        Ok(OutboxStats {
            stored: meta.stored,
            pending: from_sql(pending),
            oldest_pending_ts_ms,
            oldest_pending_age_ms: oldest_pending_ts_ms.map(|ts| now_ms.saturating_sub(ts)),
            last_seq: meta.last_seq,
            acked_through: meta.acked_through,
            dropped_pending_total: meta.dropped_pending_total,
        })
    }
}
