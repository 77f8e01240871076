//! The server's records in SQLite: users and tokens, agents, dongles, groups, the group audit
//! log, vehicles, vehicle commands and their responses.
//!
//! One connection behind a mutex: record traffic is small (API calls, presence changes) and
//! SQLite serialises writers anyway. Methods are synchronous so the CLI can use them directly;
//! async code goes through [`Store::call`], which runs them on the blocking pool. The file uses
//! WAL with a busy timeout, so `tether server token create` can run beside a live server.
//!
//! Ownership is enforced here, not only in the routes: every read or change of a user's record
//! takes the user's id and matches on it, so a caller can never reach another user's rows.
//!
//! What this module does not do: no stream logs (relay frames live in relay-core's stream log
//! backends), no HTTP.

mod agents;
mod commands;
mod dongles;
mod groups;
mod records;
mod schema;
mod users;
mod vehicles;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, Row};
use uuid::Uuid;

pub use commands::{
    CommandQuery, CommandRecord, CommandStatus, CommandWrite, CommandWritten, ResponseOutcome,
    ResponseRecord,
};
pub use records::{
    Actor, Agent, AgentWithToken, Announce, AuditEntry, Dongle, Group, GroupRefusal, GroupView,
    ModeChange, User, UserTokenInfo,
};
pub use schema::SCHEMA_VERSION;
pub use vehicles::{Vehicle, VehicleRefusal};

use crate::error::ServerError;
use crate::group_mode::GroupMode;

/// File name of the records database inside the data directory.
pub const DB_FILE: &str = "tether.db";

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The records database.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/tether.db`, creating the directory too, and
    /// migrates it to the current schema.
    pub fn open_in(data_dir: &Path) -> Result<Store, ServerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ServerError::Io {
            action: "create data directory",
            path: data_dir.to_owned(),
            source,
        })?;
        Store::open(&data_dir.join(DB_FILE))
    }

    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, ServerError> {
        let mut conn = Connection::open(path).map_err(ServerError::db("opening the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(ServerError::db("setting the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(ServerError::db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(ServerError::db("setting synchronous mode"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(ServerError::db("enabling foreign keys"))?;
        schema::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking thread pool, so SQLite I/O never stalls the async runtime.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServerError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ServerError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|err| ServerError::TaskFailed {
                task: "storage",
                detail: err.to_string(),
            })?
    }

    /// Checks that the database answers a query (for `/readyz`).
    pub fn ping(&self) -> Result<(), ServerError> {
        self.lock()
            .query_row("SELECT count(*) FROM users", [], |row| row.get::<_, i64>(0))
            .map(drop)
            .map_err(ServerError::db("checking the database"))
    }

    /// The connection. A panic while holding the lock cannot leave a half-written change
    /// (transactions roll back on drop), so a poisoned lock is safe to take over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Milliseconds since the Unix epoch, the stored form of every timestamp.
fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// Reads a UUID stored as text in column `idx`.
fn uuid_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(idx)?;
    Uuid::parse_str(&text)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(err)))
}

/// Reads a timestamp stored as Unix milliseconds in column `idx`.
fn time_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let millis: i64 = row.get(idx)?;
    millis_to_time(idx, millis)
}

/// Reads an optional timestamp stored as Unix milliseconds in column `idx`.
fn opt_time_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let millis: Option<i64> = row.get(idx)?;
    millis.map(|m| millis_to_time(idx, m)).transpose()
}

fn millis_to_time(idx: usize, millis: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Integer,
            Box::new(std::io::Error::other("timestamp out of range")),
        )
    })
}

/// Reads a group mode stored as text in column `idx`.
fn mode_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<GroupMode> {
    let text: String = row.get(idx)?;
    GroupMode::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            Box::new(std::io::Error::other(format!(
                "unknown group mode {text:?}"
            ))),
        )
    })
}

/// Reads an optional group mode stored as text in column `idx`.
fn opt_mode_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<GroupMode>> {
    let text: Option<String> = row.get(idx)?;
    match text {
        None => Ok(None),
        Some(_) => mode_at(row, idx).map(Some),
    }
}

#[cfg(test)]
mod tests;
