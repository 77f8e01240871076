//! Opening SQLite files: the one place where Tether's connection settings are made.
//!
//! Every SQLite store of relay-core (the stream log, the uplink outbox and inbox) opens its file
//! with [`open_wal`], so that journal mode, durability, lock waiting and foreign keys are the
//! same everywhere and are chosen with one [`Durability`] value, which configs deserialize from
//! `normal` / `full`. What each store keeps in its file (schema, format version) is its own
//! business and is documented with it (`docs/storage.md`, `docs/protocols/uplink.md`).
//!
//! [`BackgroundCheckpoints`] copies the WAL of a file opened with
//! [`open_wal_manual_checkpoints`] into the database file on a thread of its own (the stream log,
//! the uplink inbox and the server's records store use it).
//!
//! This module does not pool connections or move calls off the async runtime: rusqlite calls
//! block, and each store decides how it runs them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// How long a statement waits for another connection's lock (another process on the same file,
/// or a checkpoint) before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What an acknowledged (committed) transaction survives. Both levels use the WAL journal and
/// never corrupt the file; they differ in when a commit reaches the disk.
///
/// Measured here (`NOTES.md`, WAL): `normal` ~11 k transactions/s, ~127 k rows/s at 100 rows
/// per transaction; `full` ~3.2 k and ~95 k. Batch your transactions either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `PRAGMA synchronous = NORMAL`: a commit is written to the WAL but not fsynced (the WAL
    /// is synced at checkpoints). Survives a crash of the process (`kill -9`, a panic); an OS
    /// crash or power loss can lose the last committed transactions. The fast choice, where
    /// the producer keeps what it sent until a later ack (the relay server).
    Normal,
    /// `PRAGMA synchronous = FULL`: every commit fsyncs the WAL before it returns. Survives
    /// OS crashes and power loss too; several times slower for small transactions. For data
    /// that is acknowledged onwards and then forgotten by its sender (a vehicle that loses
    /// power without warning, a collector whose ack makes the vehicle drop its copy).
    Full,
}

impl Durability {
    /// The `PRAGMA synchronous` value.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }

    /// The config spelling, `normal` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Normal => "normal",
            Durability::Full => "full",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opens (creating if needed) the database file at `path` with every connection setting Tether
/// uses, in this order:
///
/// 1. `busy_timeout` [`BUSY_TIMEOUT`] — first, so that the steps below wait for a lock held by
///    another connection instead of failing;
/// 2. `journal_mode = WAL`, checked: SQLite answers with the mode it is in, and a file that
///    cannot use WAL (an in-memory database, a file system without shared memory) is refused
///    with `SQLITE_CANTOPEN` rather than silently running with another journal;
/// 3. `synchronous` from `durability`;
/// 4. `foreign_keys = ON` (SQLite's default is off; stores without foreign keys are unaffected).
///
/// SQLite's automatic checkpoint stays on (every 1,000 WAL pages, inside a commit); see
/// [`open_wal_manual_checkpoints`] for a store that checkpoints on its own thread.
pub fn open_wal(path: impl AsRef<Path>, durability: Durability) -> rusqlite::Result<Connection> {
    open(path.as_ref(), durability, Checkpoints::Automatic)
}

/// [`open_wal`] with SQLite's automatic checkpoint off (`wal_autocheckpoint = 0`): the caller
/// runs `PRAGMA wal_checkpoint` itself, off the write path, or the WAL grows without bound. The
/// stream log does (`docs/storage.md`, "Checkpoints").
pub fn open_wal_manual_checkpoints(
    path: impl AsRef<Path>,
    durability: Durability,
) -> rusqlite::Result<Connection> {
    open(path.as_ref(), durability, Checkpoints::Manual)
}

/// Who copies the WAL into the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoints {
    /// SQLite, inside the commit that crosses 1,000 pages.
    Automatic,
    /// The caller.
    Manual,
}

/// Opens the file and sets every connection pragma but `synchronous`, which
/// [`set_synchronous`] sets: these two functions are the only places in the tree that set one.
fn open(
    path: &Path,
    durability: Durability,
    checkpoints: Checkpoints,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "journal_mode stayed {mode:?}: WAL needs a file on a local file system"
            )),
        ));
    }
    set_synchronous(&conn, durability)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if checkpoints == Checkpoints::Manual {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    Ok(conn)
}

/// Sets `PRAGMA synchronous` of `conn` to `durability`: at open, and by a store that commits a
/// transaction which need not be fsynced at a lower level than its file's (the uplink outbox).
pub(crate) fn set_synchronous(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", durability.synchronous())
}

/// How often the background checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL frames (pages) after which the WAL is restarted from its start once the checkpointer
/// caught up: 16 MiB at 4 KiB pages. Restarting costs the writer a checkpoint of the frames
/// committed since the checkpointer's pass, with its two fsyncs (~8 ms seen here), so it is
/// done once per this many frames rather than after every pass (at 2 pairs x 500 frames/s that
/// took the relay's p99 from 0.59 to 1.10 ms).
const RESTART_FRAMES: i64 = 4096;

/// The checkpointer thread of a file whose writer connection was opened with
/// [`open_wal_manual_checkpoints`]: its own connection runs a `PASSIVE` checkpoint every
/// [`CHECKPOINT_EVERY`]; it stops when the last clone of the `Arc` that [`spawn`](Self::spawn)
/// returned is dropped. SQLite's automatic checkpoint would run inside a commit, holding the
/// writer (and every write queued behind it) for the page copies and the fsyncs: the slowest
/// tenth of the stream log's group commits took 12–30 ms under the relay bench, against ~2 ms
/// without; the telemetry inbox spent 40 % of its thread in them.
#[derive(Debug, Default)]
pub struct BackgroundCheckpoints {
    /// The checkpointer copied every WAL frame that existed when it started, and the WAL holds
    /// at least [`RESTART_FRAMES`]: a checkpoint by the writer now copies only what was
    /// committed since, and lets the next write restart the WAL from its beginning (which a
    /// checkpoint racing with commits never allows).
    caught_up: AtomicBool,
}

impl BackgroundCheckpoints {
    /// Starts the checkpointer on `conn` (a connection of its own to the file at `path`, which
    /// only names it in logs).
    pub fn spawn(conn: Connection, path: &Path) -> std::io::Result<Arc<Self>> {
        let state = Arc::new(BackgroundCheckpoints::default());
        let weak: Weak<Self> = Arc::downgrade(&state);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("tether-sqlite-checkpoint".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    let Some(state) = weak.upgrade() else {
                        return;
                    };
                    // (busy, frames in the WAL, frames copied)
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    });
                    match result {
                        Ok((0, frames, copied))
                            if frames >= RESTART_FRAMES && copied >= frames =>
                        {
                            state.caught_up.store(true, Ordering::Release);
                        }
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(path = %path.display(), %err, "SQLite checkpoint failed");
                        }
                    }
                }
            })?;
        Ok(state)
    }

    /// To be called by the writer after a commit, on its connection: when the checkpointer has
    /// caught up, copies the frames committed since its pass (cheap), so that the next write
    /// can restart the WAL. Busy or failed: the next pass tries again.
    pub fn after_write(&self, conn: &Connection) {
        if self.caught_up.swap(false, Ordering::AcqRel) {
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma<T: rusqlite::types::FromSql>(conn: &Connection, name: &str) -> T {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .expect("pragma")
    }

    #[test]
    fn every_setting_is_made_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (durability, synchronous) in [(Durability::Normal, 1), (Durability::Full, 2)] {
            let conn = open_wal(dir.path().join("a.db"), durability).expect("open");
            assert_eq!(pragma::<String>(&conn, "journal_mode"), "wal");
            assert_eq!(pragma::<i64>(&conn, "synchronous"), synchronous);
            assert_eq!(pragma::<i64>(&conn, "foreign_keys"), 1);
            assert_eq!(pragma::<i64>(&conn, "busy_timeout"), 5_000);
            assert_eq!(pragma::<i64>(&conn, "wal_autocheckpoint"), 1_000);
        }
        let conn =
            open_wal_manual_checkpoints(dir.path().join("a.db"), Durability::Normal).expect("open");
        assert_eq!(pragma::<i64>(&conn, "wal_autocheckpoint"), 0);
        assert_eq!(pragma::<String>(&conn, "journal_mode"), "wal");
    }

    #[test]
    fn a_database_that_cannot_use_wal_is_refused() {
        let err = open_wal(":memory:", Durability::Normal).expect_err("in-memory has no WAL");
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::CannotOpen)
        );
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn durability_reads_from_config_words() {
        for (word, want) in [("normal", Durability::Normal), ("full", Durability::Full)] {
            let got: Durability =
                serde_json::from_str(&format!("\"{word}\"")).expect("deserialize");
            assert_eq!(got, want);
            assert_eq!(want.to_string(), word);
            assert_eq!(
                serde_json::to_string(&want).expect("serialize"),
                format!("\"{word}\"")
            );
        }
        assert!(serde_json::from_str::<Durability>("\"FULL\"").is_err());
        assert!(serde_json::from_str::<Durability>("\"off\"").is_err());
    }
}
