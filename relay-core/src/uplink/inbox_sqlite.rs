//! SQLite inbox: the durable default on the remote collector.
//!
//! ```sql
//! inbox_record(source TEXT, seq INTEGER, ts_ms INTEGER, payload BLOB, PRIMARY KEY (source, seq))
//! ```
//!
//! A commit is one transaction of `INSERT OR IGNORE`s (the primary key is the dedup); the ack is
//! computed inside the same transaction and returned only after `COMMIT` succeeded.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::inbox::{InboxCommit, InboxSource, UplinkInbox, validate_commit};
use super::store::OutboxRecord;
use super::store_sqlite::{from_sql, open_connection, store_err, to_sql};
use crate::error::{Error, Result};
use crate::log::Seq;
use crate::sqlite::Durability;

const STORE: &str = "inbox";

/// An [`UplinkInbox`] in a SQLite file (WAL).
#[derive(Debug)]
pub struct SqliteInbox {
    conn: Connection,
    path: PathBuf,
}

fn sql_err(action: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    store_err(STORE, action)
}

impl SqliteInbox {
    /// Opens (creating if needed) the inbox at `path` ([`open_wal`](crate::sqlite::open_wal)).
    /// With [`Durability::Full`] (use it on a collector) an acknowledged record survives an OS
    /// crash or power loss of the collector; with [`Durability::Normal`] only a process crash —
    /// and the vehicle forgets what was acked.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(
            STORE,
            &path,
            durability,
            "CREATE TABLE IF NOT EXISTS inbox_record (
                 source TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
                 payload BLOB NOT NULL, PRIMARY KEY (source, seq)) WITHOUT ROWID;",
        )?;
        Ok(SqliteInbox { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn high_water(conn: &Connection, source: &str) -> rusqlite::Result<Seq> {
        let max: Option<i64> = conn.query_row(
            "SELECT max(seq) FROM inbox_record WHERE source = ?1",
            params![source],
            |row| row.get(0),
        )?;
        Ok(max.map_or(0, from_sql))
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
        let tx = self.conn.transaction().map_err(sql_err("commit"))?;
        let mut commits = Vec::with_capacity(batches.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO inbox_record (source, seq, ts_ms, payload)
                         VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql_err("commit"))?;
            for (source, records) in batches {
                let mut commit = InboxCommit::default();
                for record in *records {
                    let changed = insert
                        .execute(params![
                            source,
                            to_sql(record.seq),
                            to_sql(record.ts_ms),
                            &record.payload[..]
                        ])
                        .map_err(sql_err("commit"))?;
                    if changed == 1 {
                        commit.stored += 1;
                    } else {
                        commit.duplicates += 1;
                    }
                }
                commit.ack = Self::high_water(&tx, source).map_err(sql_err("commit"))?;
                commits.push(commit);
            }
        }
        tx.commit().map_err(sql_err("commit"))?;
        Ok(commits)
    }

    fn acked(&mut self, source: &str) -> Result<Seq> {
        Self::high_water(&self.conn, source).map_err(sql_err("acked"))
    }

    fn read(&mut self, source: &str, after: Seq, max: usize) -> Result<Vec<OutboxRecord>> {
        self.read_between(source, after, 0, u64::MAX, max)
    }

    fn sources(&mut self) -> Result<Vec<InboxSource>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT source, max(seq), count(*), max(ts_ms) FROM inbox_record
                     GROUP BY source ORDER BY source",
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
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, ts_ms, payload FROM inbox_record WHERE source = ?1 AND seq > ?2
                     AND ts_ms >= ?3 AND ts_ms < ?4 ORDER BY seq LIMIT ?5",
            )
            .map_err(sql_err("read"))?;
        let rows = stmt
            .query_map(
                params![
                    source,
                    to_sql(after),
                    to_sql(from_ts_ms),
                    to_sql(to_ts_ms),
                    to_sql(max as u64)
                ],
                |row| {
                    Ok(OutboxRecord {
                        seq: from_sql(row.get(0)?),
                        ts_ms: from_sql(row.get(1)?),
                        payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(2)?),
                    })
                },
            )
            .map_err(sql_err("read"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_err("read"))
    }
}
