//! SQLite stream log: the embedded durable default.
//!
//! One database file, WAL journal. rusqlite calls block, so every call runs on tokio's blocking
//! pool (`spawn_blocking`) holding the one connection; the async runtime is never blocked.
//!
//! Appends and cursor stores are *group-committed*: concurrent ones (of any streams) queue up,
//! and one writer on the blocking pool stores everything queued in one transaction, each in its
//! own savepoint, so that one refused write does not undo the others. Every caller is answered after the commit.
//! Under load the transactions grow instead of the queue. Schema and durability:
//! `docs/storage.md`.
//!
//! The file is stamped with [`FORMAT_VERSION`] (`PRAGMA user_version`) when it is created; a
//! file with another version, or an unstamped one that already holds tables, is refused on
//! open ([`Error::UnsupportedLogFormat`]).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use bytes::Bytes;

use super::sqlite_chunk::{self, ChunkBounds, ChunkError, ChunkWriter};
use super::{
    AppendOutcome, Backlog, FORMAT_VERSION, Item, ReadBatch, Retention, Seq, StreamLog, StreamMeta,
    TrimReason, Trimmed, validate_batch, validate_stream_name,
};
use crate::error::{Error, Result};
use crate::sqlite::{BackgroundCheckpoints, Durability, open_wal, open_wal_manual_checkpoints};

const SCHEMA: &str = "
CREATE TABLE log_streams (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    head            INTEGER NOT NULL DEFAULT 0,
    len             INTEGER NOT NULL DEFAULT 0,
    trimmed_through INTEGER NOT NULL DEFAULT 0,
    trim_reason     TEXT
);
CREATE TABLE log_chunks (
    id        INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    items     BLOB NOT NULL
);
CREATE UNIQUE INDEX log_chunks_by_stream ON log_chunks(stream_id, last_seq);
CREATE TABLE log_cursors (
    stream_id INTEGER NOT NULL,
    consumer  TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (stream_id, consumer)
) WITHOUT ROWID;
";

/// A [`StreamLog`] in a SQLite database file. Cloning shares the same connection.
///
/// Dropping the last clone closes the file; opening the same path again sees everything that
/// was committed.
#[derive(Debug, Clone)]
pub struct SqliteStreamLog {
    conn: Arc<Mutex<Connection>>,
    writes: Arc<Mutex<WriteQueue>>,
    checkpoints: Arc<BackgroundCheckpoints>,
    path: Arc<PathBuf>,
}

/// Writes waiting for the group-commit writer.
#[derive(Debug, Default)]
struct WriteQueue {
    jobs: Vec<WriteJob>,
    /// Whether a writer is running (it takes the queue until it finds it empty).
    writing: bool,
}

/// One caller's write.
#[derive(Debug)]
enum WriteJob {
    Append {
        stream: String,
        items: Vec<Item>,
        done: oneshot::Sender<Result<AppendOutcome>>,
    },
    Cursor {
        stream: String,
        consumer: String,
        seq: Seq,
        done: oneshot::Sender<Result<()>>,
    },
}

/// The result of a [`WriteJob`].
enum Written {
    Append(Result<AppendOutcome>),
    Cursor(Result<()>),
}

impl Written {
    fn is_ok(&self) -> bool {
        match self {
            Written::Append(r) => r.is_ok(),
            Written::Cursor(r) => r.is_ok(),
        }
    }
}

impl WriteJob {
    /// Runs the job inside the caller's transaction or savepoint.
    fn run(&self, tx: &Connection) -> Written {
        match self {
            WriteJob::Append { stream, items, .. } => {
                Written::Append(append_items(tx, stream, items))
            }
            WriteJob::Cursor {
                stream,
                consumer,
                seq,
                ..
            } => Written::Cursor(store_cursor_in(tx, stream, consumer, *seq)),
        }
    }

    /// Runs the job in a transaction of its own.
    fn run_alone(&self, conn: &mut Connection) -> Written {
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) => return self.failed(sql("begin")(err)),
        };
        let written = self.run(&tx);
        if written.is_ok()
            && let Err(err) = tx.commit()
        {
            return self.failed(sql("commit")(err));
        }
        written
    }

    fn failed(&self, err: Error) -> Written {
        match self {
            WriteJob::Append { .. } => Written::Append(Err(err)),
            WriteJob::Cursor { .. } => Written::Cursor(Err(err)),
        }
    }

    /// Answers the caller (a mismatched result, impossible by construction, drops the
    /// channel: the caller sees [`Error::WorkerGone`]).
    fn answer(self, written: Written) {
        match (self, written) {
            (WriteJob::Append { done, .. }, Written::Append(r)) => {
                let _ = done.send(r);
            }
            (WriteJob::Cursor { done, .. }, Written::Cursor(r)) => {
                let _ = done.send(r);
            }
            _ => {}
        }
    }
}

/// Clears [`WriteQueue::writing`] if the writer panics (its jobs and those still queued are
/// dropped, so that their callers get [`Error::WorkerGone`] instead of waiting, and the next
/// append starts a new writer). A writer that ends normally clears it itself, under the queue's lock.
struct WriterGuard(Arc<Mutex<WriteQueue>>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            queue.writing = false;
            // Jobs queued since the writer's last take would wait for the next append: fail
            // them now (their callers get `WorkerGone`).
            queue.jobs.clear();
        }
    }
}

/// One row of `log_streams`.
struct StreamRow {
    id: i64,
    meta: StreamMeta,
    len: u64,
}

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Sqlite { action, source }
}

fn to_i64(v: u64) -> i64 {
    // Seqs and timestamps are validated to be <= MAX_SEQ (2^53 - 1) before they get here.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(stream: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt {
        stream: stream.to_owned(),
        detail: format!("negative number {v} in SQLite"),
    })
}

impl SqliteStreamLog {
    /// Opens (creating if needed) the log in the database file at `path`
    /// ([`open_wal`](crate::sqlite::open_wal), with `durability`). Fails with
    /// [`Error::UnsupportedLogFormat`] when the file holds another format version.
    pub async fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (conn, checkpoints) = tokio::task::spawn_blocking(move || {
            // The checkpointer copies the WAL into the file, off the write path.
            let mut conn = open_wal_manual_checkpoints(&p, durability).map_err(|source| {
                Error::SqliteOpen {
                    path: p.clone(),
                    source,
                }
            })?;
            create_or_check_format(&mut conn, &p)?;
            let checkpoint_conn = open_wal(&p, durability).map_err(|source| Error::SqliteOpen {
                path: p.clone(),
                source,
            })?;
            let checkpoints = BackgroundCheckpoints::spawn(checkpoint_conn, &p).map_err(|_| {
                Error::WorkerGone {
                    action: "starting the checkpoint thread",
                }
            })?;
            Ok::<_, Error>((conn, checkpoints))
        })
        .await
        .map_err(|_| Error::WorkerGone { action: "open" })??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            writes: Arc::default(),
            checkpoints,
            path: Arc::new(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, action: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic inside a previous call rolled its transaction back (rusqlite's
            // Transaction drops with rollback), so a poisoned connection is still consistent.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|_| Error::WorkerGone { action })?
    }

    /// Queues a write for the group-commit writer, starting one if none is running.
    fn enqueue(&self, job: WriteJob) {
        let start = {
            let mut queue = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
            queue.jobs.push(job);
            !std::mem::replace(&mut queue.writing, true)
        };
        if start {
            let conn = Arc::clone(&self.conn);
            let writes = Arc::clone(&self.writes);
            let checkpoints = Arc::clone(&self.checkpoints);
            // Not awaited: the writer answers every job through its channel.
            drop(tokio::task::spawn_blocking(move || {
                write_queued(&conn, &writes, &checkpoints);
            }));
        }
    }
}

/// Creates the schema in a new file and stamps it with [`FORMAT_VERSION`] (`PRAGMA
/// user_version`), or checks the stamp of an existing one. One `IMMEDIATE` transaction that
/// reads the version first, so that two processes creating the same file do not both create it.
/// A file with version 0 that already holds tables was not written by this log (or by a build
/// before the version was stamped): it is refused, as is any other version.
fn create_or_check_format(conn: &mut Connection, path: &Path) -> Result<()> {
    let open_err = |source| Error::SqliteOpen {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    let refuse = |found: String| Error::UnsupportedLogFormat {
        location: path.display().to_string(),
        found,
        expected: FORMAT_VERSION,
    };
    if version == i64::from(FORMAT_VERSION) {
        return Ok(());
    }
    if version != 0 {
        return Err(refuse(version.to_string()));
    }
    let objects: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(open_err)?;
    if objects > 0 {
        return Err(refuse("0 (unstamped, yet it holds tables)".to_owned()));
    }
    tx.execute_batch(SCHEMA).map_err(open_err)?;
    tx.pragma_update(None, "user_version", FORMAT_VERSION)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// The group-commit writer: stores queued appends until the queue is empty.
fn write_queued(
    conn: &Mutex<Connection>,
    writes: &Arc<Mutex<WriteQueue>>,
    checkpoints: &BackgroundCheckpoints,
) {
    let _guard = WriterGuard(Arc::clone(writes));
    loop {
        let jobs = {
            let mut queue = writes.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.jobs.is_empty() {
                // Cleared under the same lock a caller checks it with: no job is stranded.
                queue.writing = false;
                return;
            }
            std::mem::take(&mut queue.jobs)
        };
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        write_group_blocking(&mut conn, jobs);
        checkpoints.after_write(&conn);
    }
}

/// Stores `jobs` in one transaction, each in its own savepoint, and answers each after the
/// commit. If the transaction itself cannot begin or commit (nothing of it is stored), each job
/// is retried alone so that it gets its own outcome or error.
fn write_group_blocking(conn: &mut Connection, jobs: Vec<WriteJob>) {
    if jobs.len() == 1 {
        for job in jobs {
            let written = job.run_alone(conn);
            job.answer(written);
        }
        return;
    }
    let grouped = (|| -> rusqlite::Result<Vec<Written>> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let sp = tx.savepoint()?;
            let written = job.run(&sp);
            if written.is_ok() {
                sp.commit()?;
            }
            // An error drops the savepoint, which rolls back this job's changes only.
            results.push(written);
        }
        tx.commit()?;
        Ok(results)
    })();
    match grouped {
        Ok(results) => {
            for (job, written) in jobs.into_iter().zip(results) {
                job.answer(written);
            }
        }
        Err(err) => {
            tracing::debug!(%err, jobs = jobs.len(), "group commit failed; writing one by one");
            for job in jobs {
                let written = job.run_alone(conn);
                job.answer(written);
            }
        }
    }
}

fn load_stream(conn: &Connection, stream: &str) -> Result<Option<StreamRow>> {
    let row = conn
        .prepare_cached(
            "SELECT id, head, len, trimmed_through, trim_reason FROM log_streams WHERE name = ?1",
        )
        .and_then(|mut st| {
            st.query_row([stream], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .optional()
        })
        .map_err(sql("load stream"))?;
    let Some((id, head, len, trimmed_through, reason)) = row else {
        return Ok(None);
    };
    let trim_reason = match reason {
        None => None,
        Some(r) => Some(TrimReason::parse(&r).ok_or_else(|| Error::Corrupt {
            stream: stream.to_owned(),
            detail: format!("unknown trim reason {r:?}"),
        })?),
    };
    Ok(Some(StreamRow {
        id,
        meta: StreamMeta {
            head: to_u64(stream, head)?,
            trimmed_through: to_u64(stream, trimmed_through)?,
            trim_reason,
        },
        len: to_u64(stream, len)?,
    }))
}

fn stream_id_or_create(conn: &Connection, stream: &str) -> Result<i64> {
    conn.prepare_cached("INSERT INTO log_streams (name) VALUES (?1) ON CONFLICT(name) DO NOTHING")
        .and_then(|mut st| st.execute([stream]))
        .map_err(sql("create stream"))?;
    conn.prepare_cached("SELECT id FROM log_streams WHERE name = ?1")
        .and_then(|mut st| st.query_row([stream], |r| r.get(0)))
        .map_err(sql("create stream"))
}

fn store_cursor_in(tx: &Connection, stream: &str, consumer: &str, seq: Seq) -> Result<()> {
    let id = stream_id_or_create(tx, stream)?;
    tx.prepare_cached(
        "INSERT INTO log_cursors (stream_id, consumer, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT(stream_id, consumer) DO UPDATE SET seq = excluded.seq",
    )
    .and_then(|mut st| st.execute(params![id, consumer, to_i64(seq)]))
    .map_err(sql("store cursor"))?;
    Ok(())
}

/// The body of an append, inside the caller's transaction or savepoint.
fn append_items(tx: &Connection, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
    let row = match load_stream(tx, stream)? {
        Some(row) => row,
        None => {
            stream_id_or_create(tx, stream)?;
            load_stream(tx, stream)?.ok_or_else(|| Error::Corrupt {
                stream: stream.to_owned(),
                detail: "stream row vanished after insert".to_owned(),
            })?
        }
    };
    let mut head = row.meta.head;
    let mut stored = 0u64;
    let mut chunk = ChunkWriter::new();
    for item in items {
        if item.seq > head {
            chunk.push(item);
            head = item.seq;
            stored += 1;
            if chunk.is_full() {
                insert_chunk(tx, row.id, &mut chunk)?;
            }
        }
    }
    if !chunk.is_empty() {
        insert_chunk(tx, row.id, &mut chunk)?;
    }
    if stored > 0 {
        tx.prepare_cached("UPDATE log_streams SET head = ?1, len = len + ?2 WHERE id = ?3")
            .and_then(|mut st| st.execute(params![to_i64(head), to_i64(stored), row.id]))
            .map_err(sql("append"))?;
    }
    Ok(AppendOutcome {
        stored,
        duplicates: items.len() as u64 - stored,
        ack: head,
    })
}

/// Stores what `chunk` holds as one `log_chunks` row and empties it.
fn insert_chunk(tx: &Connection, stream_id: i64, chunk: &mut ChunkWriter) -> Result<()> {
    let (bounds, blob) = chunk.take();
    tx.prepare_cached(
        "INSERT INTO log_chunks (stream_id, first_seq, last_seq, count, items)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            stream_id,
            to_i64(bounds.first_seq),
            to_i64(bounds.last_seq),
            to_i64(bounds.count),
            blob
        ])
    })
    .map_err(sql("append"))?;
    Ok(())
}

/// One `log_chunks` row.
struct ChunkRow {
    id: i64,
    bounds: ChunkBounds,
    /// Empty when the row's blob column is not a blob (a damaged row; it then fails to decode).
    blob: Bytes,
}

/// The columns [`ChunkRow::from_row`] reads, in order.
macro_rules! chunk_columns {
    () => {
        "id, first_seq, last_seq, count, items"
    };
}

/// A stream's chunks after a seq (`?1` stream id, `?2` seq), oldest first.
const CHUNKS_AFTER: &str = concat!(
    "SELECT ",
    chunk_columns!(),
    " FROM log_chunks WHERE stream_id = ?1 AND last_seq > ?2 ORDER BY last_seq"
);
/// The oldest of [`CHUNKS_AFTER`].
const FIRST_CHUNK_AFTER: &str = concat!(
    "SELECT ",
    chunk_columns!(),
    " FROM log_chunks WHERE stream_id = ?1 AND last_seq > ?2 ORDER BY last_seq LIMIT 1"
);
/// All of a stream's chunks (`?1` stream id), oldest first.
const CHUNKS: &str = concat!(
    "SELECT ",
    chunk_columns!(),
    " FROM log_chunks WHERE stream_id = ?1 ORDER BY last_seq"
);
/// [`CHUNKS`] without their blobs (`NULL`, read as empty).
const CHUNK_BOUNDS: &str = "SELECT id, first_seq, last_seq, count, NULL FROM log_chunks
     WHERE stream_id = ?1 ORDER BY last_seq";

impl ChunkRow {
    /// Reads a row selected with `chunk_columns!()`. A blob that cannot be read comes out empty
    /// (and then fails to decode, so its items are reported as damaged); bounds that cannot be
    /// read fail, as a seq that cannot be read always did.
    fn from_row(stream: &str, r: &rusqlite::Row<'_>) -> Result<Self> {
        let int = |i: usize| -> Result<u64> {
            let v: i64 = r.get(i).map_err(sql("read chunk"))?;
            to_u64(stream, v)
        };
        // A `count` that cannot be read is only a mismatch with the blob: the chunk reads as
        // damaged instead of failing every read of the stream.
        let count = match r.get_ref(3).map_err(sql("read chunk"))? {
            ValueRef::Integer(n) => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        let bounds = ChunkBounds {
            first_seq: int(1)?,
            last_seq: int(2)?,
            count,
        };
        let blob = match r.get_ref(4).map_err(sql("read chunk"))? {
            ValueRef::Blob(b) => Bytes::copy_from_slice(b),
            _ => Bytes::new(),
        };
        Ok(Self {
            id: r.get(0).map_err(sql("read chunk"))?,
            bounds,
            blob,
        })
    }

    /// The chunk's items above `after`, or why they cannot be decoded (logged).
    fn items_after(&self, stream: &str, after: Seq) -> std::result::Result<Vec<Item>, ChunkError> {
        sqlite_chunk::items_above(self.bounds, &self.blob, after).inspect_err(|err| {
            tracing::warn!(
                stream,
                chunk = self.id,
                first_seq = self.bounds.first_seq,
                last_seq = self.bounds.last_seq,
                %err,
                "damaged chunk in the SQLite stream log"
            );
        })
    }

    /// The seqs a read yields placeholders for when the chunk is damaged.
    fn damaged_after(&self, after: Seq, head: Seq) -> std::ops::RangeInclusive<Seq> {
        sqlite_chunk::damaged_range(self.bounds.first_seq, self.bounds.last_seq, after, head)
    }
}

/// Hands `visit` each chunk row that `select` finds (in its order) until `visit` breaks.
/// `select` reads the columns of `chunk_columns!()` (a blob may be left out as `NULL`);
/// `action` names the call in errors.
fn scan_chunks(
    conn: &Connection,
    stream: &str,
    action: &'static str,
    select: &str,
    params: impl rusqlite::Params,
    mut visit: impl FnMut(ChunkRow) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut st = conn.prepare_cached(select).map_err(sql(action))?;
    let mut rows = st.query(params).map_err(sql(action))?;
    while let Some(r) = rows.next().map_err(sql(action))? {
        if visit(ChunkRow::from_row(stream, r)?)?.is_break() {
            break;
        }
    }
    Ok(())
}

fn delete_blocking(conn: &mut Connection, stream: &str) -> Result<u64> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("delete"))?;
    let Some(row) = load_stream(&tx, stream)? else {
        return Ok(0);
    };
    for statement in [
        "DELETE FROM log_chunks WHERE stream_id = ?1",
        "DELETE FROM log_cursors WHERE stream_id = ?1",
        "DELETE FROM log_streams WHERE id = ?1",
    ] {
        tx.prepare_cached(statement)
            .and_then(|mut st| st.execute([row.id]))
            .map_err(sql("delete"))?;
    }
    tx.commit().map_err(sql("delete"))?;
    Ok(row.len)
}

fn read_blocking(conn: &Connection, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
    let Some(row) = load_stream(conn, stream)? else {
        return Ok(ReadBatch::default());
    };
    // Fetch at least one item to learn the next stored seq even when max == 0.
    let want = max.max(1);
    let mut items: Vec<Item> = Vec::new();
    scan_chunks(
        conn,
        stream,
        "read",
        CHUNKS_AFTER,
        params![row.id, to_i64(after)],
        |chunk| {
            if items
                .last()
                .is_some_and(|last| chunk.bounds.first_seq > last.seq + 1)
            {
                // A hole: the read stops in front of it.
                return Ok(ControlFlow::Break(()));
            }
            let room = want - items.len();
            match chunk.items_after(stream, after) {
                Ok(found) => items.extend(found.into_iter().take(room)),
                Err(_) => items.extend(sqlite_chunk::placeholders(
                    chunk.damaged_after(after, row.meta.head),
                    room,
                )),
            }
            Ok(if items.len() < want {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            })
        },
    )?;
    Ok(row.meta.batch_after(after, items, max))
}

/// Where a retention rule cuts a stream.
#[derive(Default)]
struct Cut {
    /// The first item removed, `None` when nothing is.
    first: Option<Seq>,
    /// The first item kept, `None` when every item goes.
    survivor: Option<Seq>,
    /// Items removed.
    count: u64,
    /// The chunk the cut goes through, and its items from the survivor on.
    split: Option<(i64, Vec<Item>)>,
}

impl Cut {
    /// Removes all of `chunk`.
    fn take_whole(&mut self, chunk: &ChunkRow) {
        self.first.get_or_insert(chunk.bounds.first_seq);
        self.count += chunk.bounds.count;
    }

    /// Removes the first `k` of `items` (all of `chunk`'s, `0 < k < items.len()`) and keeps
    /// the rest.
    fn split_at(&mut self, chunk: &ChunkRow, mut items: Vec<Item>, k: usize) {
        self.first.get_or_insert(chunk.bounds.first_seq);
        self.count += k as u64;
        self.survivor = Some(items[k].seq);
        self.split = Some((chunk.id, items.split_off(k)));
    }
}

/// Removes what `cut` says and records the trim.
fn remove_prefix(
    tx: &Connection,
    row: &mut StreamRow,
    cut: Cut,
    reason: TrimReason,
) -> Result<Option<Trimmed>> {
    let Some(first) = cut.first else {
        return Ok(None);
    };
    // Chunks wholly below the survivor; the one it is in (if it is not its first item) is
    // written again with the kept items.
    let bound = cut.survivor.unwrap_or(Seq::MAX);
    tx.prepare_cached("DELETE FROM log_chunks WHERE stream_id = ?1 AND last_seq < ?2")
        .and_then(|mut st| st.execute(params![row.id, to_i64(bound)]))
        .map_err(sql("trim"))?;
    if let Some((id, kept)) = cut.split {
        let (bounds, blob) = sqlite_chunk::encode(&kept);
        tx.prepare_cached(
            "UPDATE log_chunks SET first_seq = ?1, count = ?2, items = ?3 WHERE id = ?4",
        )
        .and_then(|mut st| {
            st.execute(params![
                to_i64(bounds.first_seq),
                to_i64(bounds.count),
                blob,
                id
            ])
        })
        .map_err(sql("trim"))?;
    }
    let count = cut.count;
    let last = cut.survivor.map_or(row.meta.head, |s| s - 1);
    row.len = row.len.saturating_sub(count);
    row.meta.trimmed_through = last;
    row.meta.trim_reason = Some(reason);
    tx.prepare_cached(
        "UPDATE log_streams SET len = ?1, trimmed_through = ?2, trim_reason = ?3 WHERE id = ?4",
    )
    .and_then(|mut st| {
        st.execute(params![
            to_i64(row.len),
            to_i64(last),
            reason.as_str(),
            row.id
        ])
    })
    .map_err(sql("trim"))?;
    Ok(Some(Trimmed {
        count,
        first,
        last,
        reason,
    }))
}

/// The age rule's cut: the oldest items while `ts_ms < cutoff`, up to the first young-enough
/// one. Walks chunks from the oldest, decoding each: O(removed). A
/// damaged chunk counts as old (as a damaged timestamp did), so it cannot hold retention up.
fn age_cut(tx: &Connection, stream: &str, stream_id: i64, cutoff: u64) -> Result<Cut> {
    let mut cut = Cut::default();
    scan_chunks(tx, stream, "trim", CHUNKS, [stream_id], |chunk| {
        let Ok(items) = chunk.items_after(stream, 0) else {
            cut.take_whole(&chunk);
            return Ok(ControlFlow::Continue(()));
        };
        Ok(match items.iter().position(|i| i.ts_ms >= cutoff) {
            None => {
                cut.take_whole(&chunk);
                ControlFlow::Continue(())
            }
            Some(0) => {
                cut.survivor = Some(chunk.bounds.first_seq);
                ControlFlow::Break(())
            }
            Some(k) => {
                cut.split_at(&chunk, items, k);
                ControlFlow::Break(())
            }
        })
    })?;
    Ok(cut)
}

/// The length rule's cut: the oldest `excess` items. Walks chunk counts from the oldest and
/// decodes only the chunk the cut goes through (one that is damaged goes whole).
fn length_cut(tx: &Connection, stream: &str, stream_id: i64, excess: u64) -> Result<Cut> {
    let mut cut = Cut::default();
    scan_chunks(
        tx,
        stream,
        "trim",
        // Without the blobs: only the chunk the cut goes through is read whole.
        CHUNK_BOUNDS,
        [stream_id],
        |mut chunk| {
            if cut.count >= excess {
                cut.survivor = Some(chunk.bounds.first_seq);
                return Ok(ControlFlow::Break(()));
            }
            let need = excess - cut.count;
            if chunk.bounds.count <= need {
                cut.take_whole(&chunk);
                return Ok(ControlFlow::Continue(()));
            }
            chunk.blob = tx
                .prepare_cached("SELECT items FROM log_chunks WHERE id = ?1")
                .and_then(|mut st| {
                    st.query_row([chunk.id], |r| {
                        Ok(match r.get_ref(0)? {
                            ValueRef::Blob(b) => Bytes::copy_from_slice(b),
                            _ => Bytes::new(),
                        })
                    })
                })
                .map_err(sql("trim"))?;
            Ok(match chunk.items_after(stream, 0) {
                // `need < count`, which is then the number of items.
                Ok(items) if (need as usize) < items.len() => {
                    cut.split_at(&chunk, items, need as usize);
                    ControlFlow::Break(())
                }
                _ => {
                    cut.take_whole(&chunk);
                    ControlFlow::Continue(())
                }
            })
        },
    )?;
    Ok(cut)
}

fn trim_blocking(
    conn: &mut Connection,
    stream: &str,
    retention: &Retention,
    now_ms: u64,
) -> Result<Vec<Trimmed>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("trim"))?;
    let Some(mut row) = load_stream(&tx, stream)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if let Some(max_age) = retention.max_age_ms {
        let cut = age_cut(&tx, stream, row.id, now_ms.saturating_sub(max_age))?;
        out.extend(remove_prefix(&tx, &mut row, cut, TrimReason::Age)?);
    }
    if let Some(max_len) = retention.max_len
        && row.len > max_len
    {
        let cut = length_cut(&tx, stream, row.id, row.len - max_len)?;
        out.extend(remove_prefix(&tx, &mut row, cut, TrimReason::Length)?);
    }
    tx.commit().map_err(sql("trim"))?;
    Ok(out)
}

fn backlog_blocking(conn: &Connection, stream: &str, after: Seq) -> Result<Backlog> {
    let Some(row) = load_stream(conn, stream)? else {
        return Ok(Backlog::default());
    };
    let (count, newest): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(count), 0), MAX(last_seq) FROM log_chunks
             WHERE stream_id = ?1 AND last_seq > ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![row.id, to_i64(after)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .map_err(sql("backlog"))?;
    let mut count = to_u64(stream, count)?;
    // The oldest chunk may hold items at or below `after`, and holds the oldest timestamp.
    let mut oldest_chunk = None;
    scan_chunks(
        conn,
        stream,
        "backlog",
        FIRST_CHUNK_AFTER,
        params![row.id, to_i64(after)],
        |chunk| {
            oldest_chunk = Some(chunk);
            Ok(ControlFlow::Break(()))
        },
    )?;
    let (oldest_seq, oldest_ts_ms) = match oldest_chunk {
        None => (None, None),
        Some(chunk) => {
            let (above, oldest) = match chunk.items_after(stream, after) {
                Ok(items) => (
                    items.len() as u64,
                    items.first().map(|i| (Some(i.seq), Some(i.ts_ms))),
                ),
                // As many as a read yields for it (placeholders), with no timestamp.
                Err(_) => {
                    let seqs = chunk.damaged_after(after, row.meta.head);
                    let above = (seqs.end() + 1).saturating_sub(*seqs.start());
                    (above, (above > 0).then_some((Some(*seqs.start()), None)))
                }
            };
            count = count.saturating_sub(chunk.bounds.count) + above;
            oldest.unwrap_or((None, None))
        }
    };
    Ok(Backlog {
        count,
        oldest_seq,
        newest_seq: newest.map(|s| to_u64(stream, s)).transpose()?,
        oldest_ts_ms,
        head: row.meta.head,
    })
}

impl StreamLog for SqliteStreamLog {
    async fn append(&self, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
        validate_stream_name(stream)?;
        validate_batch(stream, items)?;
        if items.is_empty() {
            let head = self.backlog(stream, Seq::MAX).await?.head;
            return Ok(AppendOutcome {
                stored: 0,
                duplicates: 0,
                ack: head,
            });
        }
        let (done, outcome) = oneshot::channel();
        self.enqueue(WriteJob::Append {
            stream: stream.to_owned(),
            items: items.to_vec(),
            done,
        });
        outcome
            .await
            .map_err(|_| Error::WorkerGone { action: "append" })?
    }

    async fn read(&self, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
        validate_stream_name(stream)?;
        let stream = stream.to_owned();
        self.with_conn("read", move |c| read_blocking(c, &stream, after, max))
            .await
    }

    async fn store_cursor(&self, stream: &str, consumer: &str, seq: Seq) -> Result<()> {
        validate_stream_name(stream)?;
        let (done, stored) = oneshot::channel();
        self.enqueue(WriteJob::Cursor {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            seq,
            done,
        });
        stored.await.map_err(|_| Error::WorkerGone {
            action: "store cursor",
        })?
    }

    async fn load_cursor(&self, stream: &str, consumer: &str) -> Result<Option<Seq>> {
        validate_stream_name(stream)?;
        let stream = stream.to_owned();
        let consumer = consumer.to_owned();
        self.with_conn("load cursor", move |c| {
            let seq: Option<i64> = c
                .prepare_cached(
                    "SELECT c.seq FROM log_cursors c JOIN log_streams s ON s.id = c.stream_id
                     WHERE s.name = ?1 AND c.consumer = ?2",
                )
                .and_then(|mut st| {
                    st.query_row(params![stream, consumer], |r| r.get(0))
                        .optional()
                })
                .map_err(sql("load cursor"))?;
            seq.map(|s| to_u64(&stream, s)).transpose()
        })
        .await
    }

    async fn trim(&self, stream: &str, retention: &Retention, now_ms: u64) -> Result<Vec<Trimmed>> {
        validate_stream_name(stream)?;
        let stream = stream.to_owned();
        let retention = *retention;
        self.with_conn("trim", move |c| {
            trim_blocking(c, &stream, &retention, now_ms)
        })
        .await
    }

    async fn backlog(&self, stream: &str, after: Seq) -> Result<Backlog> {
        validate_stream_name(stream)?;
        let stream = stream.to_owned();
        self.with_conn("backlog", move |c| backlog_blocking(c, &stream, after))
            .await
    }

    async fn delete(&self, stream: &str) -> Result<u64> {
        validate_stream_name(stream)?;
        let stream = stream.to_owned();
        self.with_conn("delete", move |c| delete_blocking(c, &stream))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    #[tokio::test]
    async fn the_background_checkpointer_moves_the_wal_into_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("streams.db");
        let log = SqliteStreamLog::open(&path, Durability::Normal)
            .await
            .expect("open");
        let empty = std::fs::metadata(&path).expect("db file").len();
        // Payloads that do not compress (chunks are LZ4-compressed when that pays).
        let noise: Vec<u8> = (0..8_000_000u64)
            .scan(0x9E37_79B9_7F4A_7C15u64, |x, _| {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                Some(*x as u8)
            })
            .collect();
        let noise = Bytes::from(noise);
        for batch in 0..40u64 {
            let items: Vec<Item> = (1..=500)
                .map(|i| {
                    let at = ((batch * 500 + i) * 200) as usize % (noise.len() - 200);
                    Item {
                        seq: batch * 500 + i,
                        ts_ms: 0,
                        payload: noise.slice(at..at + 200),
                    }
                })
                .collect();
            log.append("ckpt", &items).await.expect("append");
        }
        // ~4 MB were committed to the WAL; the automatic checkpoint is off, so only the
        // checkpointer thread can have copied them into the database file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let len = std::fs::metadata(&path).expect("db file").len();
            if len > empty + 2_000_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "database file still {len} bytes (empty: {empty})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(log.backlog("ckpt", 0).await.expect("backlog").count, 20_000);
    }

    fn items(seqs: std::ops::RangeInclusive<u64>) -> Vec<Item> {
        seqs.map(|seq| Item {
            seq,
            ts_ms: 1_000 + seq,
            payload: Bytes::from(vec![seq as u8; 4]),
        })
        .collect()
    }

    async fn open(dir: &tempfile::TempDir) -> (SqliteStreamLog, Connection) {
        let path = dir.path().join("streams.db");
        let log = SqliteStreamLog::open(&path, Durability::Normal)
            .await
            .expect("open");
        let db = Connection::open(&path).expect("second connection");
        db.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        (log, db)
    }

    /// A log in a new directory with one append (so one chunk, up to the chunk limits) of
    /// each of `batches` to stream `s`.
    async fn appended(
        batches: &[std::ops::RangeInclusive<u64>],
    ) -> (tempfile::TempDir, SqliteStreamLog, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, db) = open(&dir).await;
        for batch in batches {
            log.append("s", &items(batch.clone()))
                .await
                .expect("append");
        }
        (dir, log, db)
    }

    /// Trims with `max_len` / `max_age_ms` at `now_ms`, as `(first, last, count)` per rule.
    async fn trim(
        log: &SqliteStreamLog,
        max_len: Option<u64>,
        max_age_ms: Option<u64>,
        now_ms: u64,
    ) -> Vec<(Seq, Seq, u64)> {
        let retention = crate::log::Retention {
            max_len,
            max_age_ms,
        };
        let trimmed = log.trim("s", &retention, now_ms).await.expect("trim");
        trimmed.iter().map(|t| (t.first, t.last, t.count)).collect()
    }

    /// `(first_seq, last_seq, count)` of every chunk row.
    fn chunk_rows(db: &Connection) -> Vec<(i64, i64, i64)> {
        db.prepare("SELECT first_seq, last_seq, count FROM log_chunks ORDER BY last_seq")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("chunks")
    }

    #[tokio::test]
    async fn an_append_is_one_chunk_row_up_to_the_chunk_limits() {
        let (_dir, log, db) = appended(&[1..=3, 4..=600]).await;
        let rows = chunk_rows(&db);
        assert_eq!(
            rows,
            [(1, 3, 3), (4, 259, 256), (260, 515, 256), (516, 600, 85)]
        );
        let read = log.read("s", 2, 300).await.expect("read");
        assert_eq!(read.items, items(3..=302));
    }

    #[tokio::test]
    async fn a_damaged_chunk_reads_as_empty_items_instead_of_failing_the_read() {
        let (_dir, log, db) = appended(&[1..=3, 4..=5]).await;
        // The blob of the first chunk cut short, then not a blob at all.
        for damage in [
            "UPDATE log_chunks SET items = substr(items, 1, 9) WHERE first_seq = 1",
            "UPDATE log_chunks SET items = 7 WHERE first_seq = 1",
        ] {
            db.execute(damage, []).expect("damage");
            let read = log.read("s", 1, 10).await.expect("read");
            let got: Vec<(u64, u64, &[u8])> = read
                .items
                .iter()
                .map(|i| (i.seq, i.ts_ms, i.payload.as_ref()))
                .collect();
            assert_eq!(
                got,
                [
                    (2, 0, &[][..]),
                    (3, 0, &[][..]),
                    (4, 1_004, &[4u8; 4][..]),
                    (5, 1_005, &[5u8; 4][..])
                ],
                "{damage}"
            );
            let backlog = log.backlog("s", 1).await.expect("backlog");
            assert_eq!(
                (backlog.count, backlog.oldest_seq, backlog.oldest_ts_ms),
                (4, Some(2), None)
            );
        }
        // A damaged chunk counts as old for age retention instead of holding every trim up.
        assert_eq!(trim(&log, None, Some(500), 1_505).await, [(1, 4, 4)]);
        let left = log.read("s", 0, 10).await.expect("read");
        assert_eq!(left.items, items(5..=5));
        // Damaged bounds never take a reader past the head (5).
        db.execute(
            "UPDATE log_chunks SET last_seq = 99, items = x'00' WHERE first_seq = 5",
            [],
        )
        .expect("damage");
        let read = log.read("s", 4, 10).await.expect("read");
        let got: Vec<(u64, usize)> = read
            .items
            .iter()
            .map(|i| (i.seq, i.payload.len()))
            .collect();
        assert_eq!(got, [(5, 0)]);
        assert_eq!(log.backlog("s", 4).await.expect("backlog").count, 1);
    }

    #[tokio::test]
    async fn trims_split_the_chunk_the_cut_goes_through() {
        let (_dir, log, db) = appended(&[1..=10, 11..=20]).await;
        assert_eq!(trim(&log, Some(13), None, 0).await, [(1, 7, 7)]);
        // Items 8..=11 are older than 1_012 - 1_000.
        assert_eq!(trim(&log, None, Some(1_000), 2_012).await, [(8, 11, 4)]);
        let rows = chunk_rows(&db);
        assert_eq!(rows, [(12, 20, 9)]);
        assert_eq!(
            log.read("s", 0, 100).await.expect("read").items,
            items(12..=20)
        );
        assert_eq!(log.backlog("s", 0).await.expect("backlog").count, 9);
    }

    #[tokio::test]
    async fn a_new_file_is_stamped_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, db) = open(&dir).await;
        let version: i64 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, i64::from(FORMAT_VERSION));
        log.append("s", &items(1..=3)).await.expect("append");
        drop(log);
        // Opening again checks the stamp and keeps everything.
        let (log, _) = open(&dir).await;
        assert_eq!(log.backlog("s", 0).await.expect("backlog").count, 3);
        drop(log);
        // Another version (a later build's file) is refused, and left as it was.
        db.pragma_update(None, "user_version", 2).expect("stamp");
        let path = dir.path().join("streams.db");
        let err = SqliteStreamLog::open(&path, Durability::Normal)
            .await
            .expect_err("version 2");
        assert!(
            matches!(&err, Error::UnsupportedLogFormat { found, expected: 1, .. } if found == "2"),
            "{err}"
        );
        assert!(!err.is_retryable());
        let version: i64 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, 2);
        // A file that holds tables but no stamp: the one-row-per-item layout of builds before
        // chunks, or another store's file.
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .and_then(|c| {
                c.execute_batch(
                    "CREATE TABLE log_items (stream_id INTEGER, seq INTEGER, ts_ms INTEGER,
                         payload BLOB, PRIMARY KEY (stream_id, seq)) WITHOUT ROWID;",
                )
            })
            .expect("unstamped file");
        let err = SqliteStreamLog::open(&other, Durability::Normal)
            .await
            .expect_err("unstamped with tables");
        assert!(
            matches!(&err, Error::UnsupportedLogFormat { found, .. } if found.starts_with('0')),
            "{err}"
        );
    }
}
