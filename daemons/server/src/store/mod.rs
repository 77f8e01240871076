//! The server's records: users and tokens, agents, dongles, groups, the group audit log,
//! vehicles, vehicle commands and their responses — in SQLite (the embedded default, a file in
//! the data directory) or in PostgreSQL (`--database-url`), shared by several server instances.
//!
//! Each operation is written once, in SQL both dialects accept, over the small [`sql::Sql`]
//! layer; the backend is chosen when the store is opened. SQLite: one connection behind a
//! mutex — record traffic is small (API calls, presence changes) and SQLite serialises writers
//! anyway; the file uses WAL with a busy timeout (relay-core's connection settings, checkpointed on a
//! thread of its own), so `tether server token create` can run beside
//! a live server. PostgreSQL: a pool of connections; transactions that read before they write
//! lock the rows they read (`FOR UPDATE`), and a unique-constraint race with another instance
//! is answered with the same refusal a lost race gives on SQLite.
//!
//! Methods are synchronous so the CLI can use them directly; async code goes through
//! [`Store::call`], which runs them on the blocking pool. That is required for PostgreSQL: its
//! client blocks on a runtime of its own and panics inside an async task.
//!
//! Ownership is enforced here, not only in the routes: every read or change of a user's record
//! takes the user's id and matches on it, so a caller can never reach another user's rows.
//!
//! What this module does not do: no stream logs (relay frames live in relay-core's stream log
//! backends), no HTTP, no TLS to PostgreSQL (connect over a trusted network or a local socket).

mod agents;
mod commands;
mod dongles;
mod groups;
mod pg_tls;
mod records;
mod schema;
pub(crate) mod sql;
mod users;
mod vehicles;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use r2d2_postgres::PostgresConnectionManager;
use relay_core::sqlite::{
    BackgroundCheckpoints, Durability, open_wal, open_wal_manual_checkpoints,
};
use rusqlite::{Connection, TransactionBehavior};

pub use commands::{
    CommandQuery, CommandRecord, CommandStatus, CommandWrite, CommandWritten, ResponseOutcome,
    ResponseRecord, new_row_id,
};
pub use records::{
    Actor, Agent, AgentWithToken, Announce, AuditEntry, Dongle, Group, GroupRefusal, GroupView,
    ModeChange, User, UserTokenInfo,
};
pub(crate) use schema::begin_sqlite_step;
pub use schema::{POSTGRES_SCHEMA_VERSION, SCHEMA_VERSION};
pub use sql::DbError;
pub use vehicles::{Vehicle, VehicleRefusal};

use crate::cache::TtlCache;
use crate::error::ServerError;
use sql::{DbError as E, PgSql, SqliteSql};

/// File name of the records database inside the data directory.
pub const DB_FILE: &str = "tether.db";

/// Most PostgreSQL connections one store (one server instance) holds open.
pub const POSTGRES_POOL_SIZE: u32 = 16;

/// How long a caller waits for a PostgreSQL connection (also the connect timeout at open).
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type PgPool = r2d2::Pool<PostgresConnectionManager<pg_tls::PgTls>>;

/// How long a server trusts a user token it authenticated without reading the store again:
/// the bound within which a revocation made by another process (`tether server token
/// revoke`, another instance on a shared PostgreSQL) takes effect here. A revocation through
/// this store takes effect at once.
pub const USER_TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);

/// Most user tokens remembered at once.
const USER_TOKEN_CACHE_CAPACITY: usize = 4096;

/// The records database.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
    /// Users of recently authenticated tokens, by the token's SHA-256 (see
    /// [`Store::user_token_cache`]).
    user_tokens: TtlCache<[u8; 32], User>,
    /// This process's server instance id (a fresh UUID per open): stamped on the commands
    /// it accepts or adopts (`commands.instance`, `docs/cluster.md`).
    instance: String,
}

#[derive(Debug)]
enum Backend {
    /// The embedded file: one connection, serialised by the mutex.
    Sqlite {
        conn: Mutex<Connection>,
        /// Copies the WAL into the file off the write path; told after each write.
        checkpoints: Arc<BackgroundCheckpoints>,
        path: PathBuf,
    },
    /// A PostgreSQL server shared with other instances.
    Postgres(PgHandle),
}

/// The PostgreSQL pool, dropped off the async runtime: a `postgres` client owns a runtime of
/// its own, and dropping one inside an async task panics.
#[derive(Debug)]
struct PgHandle {
    pool: Option<PgPool>,
}

impl Drop for PgHandle {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(pool));
        }
    }
}

fn user_token_cache() -> TtlCache<[u8; 32], User> {
    TtlCache::new(USER_TOKEN_CACHE_TTL, USER_TOKEN_CACHE_CAPACITY)
}

impl Store {
    /// Opens the configured records database: PostgreSQL when `database_url` is given,
    /// otherwise `<data_dir>/tether.db`. Either way it is migrated to the current schema.
    pub fn open_configured(
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Store, ServerError> {
        match database_url {
            Some(url) => Store::connect(url),
            None => Store::open_in(data_dir),
        }
    }

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

    /// Opens (creating if needed) the SQLite database file at `path` and migrates it.
    ///
    /// The connection settings are relay-core's ([`relay_core::sqlite::open_wal`]: WAL,
    /// `synchronous = NORMAL`, a busy timeout, foreign keys), with SQLite's automatic
    /// checkpoint off: a [`BackgroundCheckpoints`] thread with a connection of its own copies
    /// the WAL into the file, so no commit of the commands writer waits for a checkpoint and
    /// its fsync (`docs/storage-server.md`, "SQLite").
    pub fn open(path: &Path) -> Result<Store, ServerError> {
        let mut conn = open_wal_manual_checkpoints(path, Durability::Normal)
            .map_err(ServerError::db("opening the database"))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        let checkpoint_conn = open_wal(path, Durability::Normal)
            .map_err(ServerError::db("opening the database for checkpoints"))?;
        let checkpoints =
            BackgroundCheckpoints::spawn(checkpoint_conn, path).map_err(|source| {
                ServerError::Io {
                    action: "start the SQLite checkpoint thread",
                    path: path.to_owned(),
                    source,
                }
            })?;
        Ok(Store {
            backend: Backend::Sqlite {
                conn: Mutex::new(conn),
                checkpoints,
                path: path.to_owned(),
            },
            user_tokens: user_token_cache(),
            instance: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Connects to PostgreSQL at `url` (`postgres://user@host:port/database`, or the
    /// key=value form) and migrates its schema. Several instances may do this at once against
    /// one fresh database: migrations run under an advisory lock.
    ///
    /// Must not be called inside an async task (see the module docs).
    pub fn connect(url: &str) -> Result<Store, ServerError> {
        let (url, tls) = pg_tls::PgTls::for_url(url)?;
        let config: postgres::Config =
            url.parse()
                .map_err(|err: postgres::Error| ServerError::DatabaseUrl {
                    detail: err.to_string(),
                })?;
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POSTGRES_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tether-server");
        }
        // One direct connection first: its error says why (refused, unknown database, auth),
        // where the pool's would only say it timed out. It applies the migrations.
        let mut client = config
            .connect(tls.clone())
            .map_err(ServerError::db("connecting to PostgreSQL"))?;
        schema::migrate_postgres(&mut client)?;
        drop(client);
        let manager = PostgresConnectionManager::new(config, tls);
        let pool = r2d2::Pool::builder()
            .max_size(POSTGRES_POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(POSTGRES_CONNECT_TIMEOUT)
            .error_handler(Box::new(PgConnectErrors))
            .build_unchecked(manager);
        Ok(Store {
            backend: Backend::Postgres(PgHandle { pool: Some(pool) }),
            user_tokens: user_token_cache(),
            instance: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Users of recently authenticated user tokens, kept [`USER_TOKEN_CACHE_TTL`] by the
    /// request path (`http::auth`); cleared by [`Store::revoke_user_token`].
    pub fn user_token_cache(&self) -> &TtlCache<[u8; 32], User> {
        &self.user_tokens
    }

    /// This process's server instance id: a fresh UUID each time the records are opened, so
    /// stable for one run of `tether server` and never reused (`docs/cluster.md`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Where the records are, for logs and `--check-config`: the SQLite file's path, or
    /// `postgresql` (never the URL: it may hold a password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite { path, .. } => format!("sqlite {}", path.display()),
            Backend::Postgres(_) => "postgresql".to_owned(),
        }
    }

    /// The schema version the database is at (after opening: the one this binary writes for
    /// its backend, [`SCHEMA_VERSION`] or [`POSTGRES_SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> Result<i64, ServerError> {
        let query = match &self.backend {
            Backend::Sqlite { .. } => "PRAGMA user_version",
            Backend::Postgres(_) => schema::POSTGRES_VERSION_QUERY,
        };
        self.run("reading the schema version", |sql| {
            sql.query_one(query, &[])?.get(0)
        })
    }

    /// Runs `f` on the blocking thread pool, so database I/O never stalls the async runtime.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServerError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ServerError> + Send + 'static,
    {
        let store = Arc::clone(self);
        blocking("storage", move || f(&store)).await
    }

    /// Checks that the database answers a query (for `/readyz`).
    pub fn ping(&self) -> Result<(), ServerError> {
        self.run("checking the database", |sql| {
            sql.query_one("SELECT count(*) FROM users", &[]).map(drop)
        })
    }

    /// Runs `f` on a connection, outside a transaction (single statements, or reads that need
    /// no snapshot across statements).
    fn run<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&mut dyn sql::Sql) -> Result<T, E>,
    ) -> Result<T, ServerError> {
        match &self.backend {
            Backend::Sqlite {
                conn, checkpoints, ..
            } => {
                let conn = lock(conn);
                let out = f(&mut SqliteSql(&conn));
                checkpoints.after_write(&conn);
                out
            }
            Backend::Postgres(pg) => pg.client().and_then(|mut c| f(&mut PgSql(&mut *c))),
        }
        .map_err(ServerError::db(action))
    }

    /// Runs one query outside a transaction ([`Store::run`]); each row decoded by `decode`.
    fn read_rows<T>(
        &self,
        action: &'static str,
        query: &str,
        args: &[sql::Value],
        decode: impl FnMut(&sql::Row) -> Result<T, E>,
    ) -> Result<Vec<T>, ServerError> {
        self.run(action, |sql| sql.query_map(query, args, decode))
    }

    /// Runs one query outside a transaction ([`Store::run`]); its first row, if any, decoded
    /// by `decode`.
    fn read_row<T>(
        &self,
        action: &'static str,
        query: &str,
        args: &[sql::Value],
        decode: impl FnOnce(&sql::Row) -> Result<T, E>,
    ) -> Result<Option<T>, ServerError> {
        self.run(action, |sql| sql.query_opt_map(query, args, decode))
    }

    /// Runs `f` in a write transaction, committed when `f` returns `Ok` and rolled back when it
    /// fails. On SQLite it is `BEGIN IMMEDIATE` (it holds the write lock from the start).
    fn transaction<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&mut dyn sql::Sql) -> Result<T, E>,
    ) -> Result<T, ServerError> {
        self.transaction_or_refuse(action, |sql| f(sql).map(Ok::<T, std::convert::Infallible>))
            .map(|done| match done {
                Ok(value) => value,
                Err(never) => match never {},
            })
    }

    /// Like [`Store::transaction`], for changes that may be refused: `f` returning
    /// `Ok(Err(refusal))` rolls back whatever it wrote (on PostgreSQL a refusal may follow a
    /// failed statement, after which only a rollback is possible).
    fn transaction_or_refuse<T, R>(
        &self,
        action: &'static str,
        f: impl FnOnce(&mut dyn sql::Sql) -> Result<Result<T, R>, E>,
    ) -> Result<Result<T, R>, ServerError> {
        match &self.backend {
            Backend::Sqlite {
                conn, checkpoints, ..
            } => {
                let mut conn = lock(conn);
                let out = sqlite_transaction(&mut conn, f);
                checkpoints.after_write(&conn);
                out
            }
            Backend::Postgres(pg) => pg
                .client()
                .and_then(|mut client| pg_transaction(&mut client, f)),
        }
        .map_err(ServerError::db(action))
    }

    /// The SQLite connection (tests of SQLite-only behaviour).
    #[cfg(test)]
    fn sqlite(&self) -> Option<MutexGuard<'_, Connection>> {
        match &self.backend {
            Backend::Sqlite { conn, .. } => Some(lock(conn)),
            Backend::Postgres(_) => None,
        }
    }
}

/// Logs the pool's failed connection attempts (they are retried; a caller waiting for a
/// connection gets the last one as its error).
#[derive(Debug)]
struct PgConnectErrors;

impl r2d2::HandleError<postgres::Error> for PgConnectErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(%error, "cannot connect to PostgreSQL");
    }
}

impl PgHandle {
    fn client(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<pg_tls::PgTls>>, E> {
        match &self.pool {
            Some(pool) => Ok(pool.get()?),
            None => Err(E::Closed),
        }
    }
}

fn sqlite_transaction<T, R>(
    conn: &mut Connection,
    f: impl FnOnce(&mut dyn sql::Sql) -> Result<Result<T, R>, E>,
) -> Result<Result<T, R>, E> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&mut SqliteSql(&tx))?;
    if out.is_ok() {
        tx.commit()?;
    }
    Ok(out)
}

fn pg_transaction<T, R>(
    client: &mut postgres::Client,
    f: impl FnOnce(&mut dyn sql::Sql) -> Result<Result<T, R>, E>,
) -> Result<Result<T, R>, E> {
    let mut tx = client.transaction()?;
    let out = f(&mut PgSql(&mut tx))?;
    if out.is_ok() {
        tx.commit()?;
    }
    Ok(out)
}

/// The SQLite connection. A panic while holding the lock cannot leave a half-written change
/// (transactions roll back on drop), so a poisoned lock is safe to take over.
/// Runs `f` (database work) on the blocking thread pool; a task that panicked or was cancelled
/// is a [`ServerError::TaskFailed`] of `task`.
pub(crate) async fn blocking<T, F>(task: &'static str, f: F) -> Result<T, ServerError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ServerError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ServerError::task_failed(task))?
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
