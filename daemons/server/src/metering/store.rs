//! The control plane's records in `<data-dir>/metering.db` (SQLite, WAL, its own schema
//! version): data-plane servers and their API keys, customers and their balances, sessions,
//! usage records (one row per idempotency key), quota refreshes (one row per `transaction_id`),
//! lifecycle events (one row per `Idempotency-Key`), signed commands and their results, the
//! signing keys, and operator roles.
//!
//! Every change of one request is one transaction, so a crash (`kill -9`) leaves either all of
//! it or none, and a retried request finds its idempotency row and is answered the same.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use relay_core::sqlite::{Durability, open_wal};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::credits_for;
use crate::error::ServerError;
use crate::store::begin_sqlite_step;
use crate::token;

/// File name of the control plane's database inside the data directory.
pub const DB_FILE: &str = "metering.db";

/// Credits reserved for a session when it starts (at most the customer's available balance).
pub const INITIAL_GRANT: i64 = 10;
/// Credits a quota refresh grants (at most the customer's available balance).
pub const REFRESH_GRANT: i64 = 10;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS server_keys (
    id          TEXT PRIMARY KEY,
    server_id   TEXT NOT NULL,
    lookup      TEXT NOT NULL UNIQUE,
    hash        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE IF NOT EXISTS servers (
    server_id          TEXT PRIMARY KEY,
    registration       TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('online', 'offline', 'degraded')),
    live_sessions      INTEGER NOT NULL DEFAULT 0,
    heartbeat_interval REAL NOT NULL DEFAULT 60,
    registered_at      INTEGER NOT NULL,
    last_heartbeat_at  INTEGER,
    last_metrics       TEXT
);
CREATE TABLE IF NOT EXISTS customers (
    customer_id  TEXT PRIMARY KEY,
    balance      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id        TEXT PRIMARY KEY,
    customer_id       TEXT NOT NULL REFERENCES customers(customer_id),
    server_id         TEXT,
    status            TEXT NOT NULL CHECK (status IN ('active', 'completed')),
    credits_granted   INTEGER NOT NULL DEFAULT 0,
    credits_consumed  INTEGER NOT NULL DEFAULT 0,
    refreshes         INTEGER NOT NULL DEFAULT 0,
    started_at        INTEGER,
    completed_at      INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_by_customer ON sessions(customer_id, status);
CREATE TABLE IF NOT EXISTS usage_records (
    record_id                    TEXT PRIMARY KEY,
    session_id                   TEXT NOT NULL,
    audio_duration_seconds       REAL NOT NULL,
    connection_duration_seconds  REAL NOT NULL,
    credits                      INTEGER NOT NULL,
    record                       TEXT NOT NULL,
    received_at                  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_session ON usage_records(session_id);
CREATE TABLE IF NOT EXISTS refreshes (
    transaction_id  TEXT PRIMARY KEY,
    session_id      TEXT NOT NULL,
    granted         INTEGER NOT NULL,
    response        TEXT NOT NULL,
    at              INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lifecycle_events (
    idempotency_key  TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL,
    event            TEXT NOT NULL,
    response         TEXT NOT NULL,
    at               INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    command_id    TEXT PRIMARY KEY,
    server_id     TEXT NOT NULL,
    command       TEXT NOT NULL,
    params        TEXT NOT NULL,
    token         TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'succeeded', 'failed')),
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    completed_at  INTEGER,
    result        TEXT
);
CREATE INDEX IF NOT EXISTS commands_by_server ON commands(server_id, status);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid          TEXT PRIMARY KEY,
    private_der  BLOB NOT NULL,
    public_pem   TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_roles (
    user_name  TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('operator'))
);
"#;

/// The schema version of `metering.db` this binary writes.
pub const METERING_SCHEMA_VERSION: i64 = 1;

/// A refusal the routes answer as a 4xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such customer (422: the request cannot succeed by retrying).
    UnknownCustomer(String),
    /// A session already belongs to another customer.
    CustomerMismatch,
}

/// What a store operation gives back: a value or a refusal.
pub type Outcome<T> = Result<Result<T, Refusal>, ServerError>;

/// A signing key as stored.
#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    /// Key id (`kid` header).
    pub kid: String,
    /// PKCS#8 DER of the private key.
    pub private_der: Vec<u8>,
    /// SPKI PEM of the public key.
    pub public_pem: String,
}

/// A command row for operators.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRow {
    /// Id.
    pub command_id: String,
    /// Target server.
    pub server_id: String,
    /// Command name.
    pub command: String,
    /// `queued`, `succeeded` or `failed`.
    pub status: String,
    /// Operator who queued it.
    pub created_by: String,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When its token expires.
    pub expires_at: DateTime<Utc>,
    /// When the result came back.
    pub completed_at: Option<DateTime<Utc>>,
    /// The result document the agent posted.
    pub result: Option<Value>,
}

/// The control plane's database.
#[derive(Debug)]
pub struct MeteringStore {
    conn: Mutex<Connection>,
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl MeteringStore {
    /// Opens (creating if needed) `<data_dir>/metering.db`.
    pub fn open_in(data_dir: &Path) -> Result<MeteringStore, ServerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ServerError::Io {
            action: "create data directory",
            path: data_dir.to_owned(),
            source,
        })?;
        let mut conn = open_wal(data_dir.join(DB_FILE), Durability::Normal)
            .map_err(ServerError::db("opening metering.db"))?;
        let (tx, _) = begin_sqlite_step(
            &mut conn,
            METERING_SCHEMA_VERSION,
            (
                "starting the metering migration",
                "reading the metering schema version",
            ),
        )?;
        tx.execute_batch(SCHEMA)
            .map_err(ServerError::db("creating the metering tables"))?;
        tx.pragma_update(None, "user_version", METERING_SCHEMA_VERSION)
            .map_err(ServerError::db("recording the metering schema version"))?;
        tx.commit()
            .map_err(ServerError::db("committing the metering migration"))?;
        Ok(MeteringStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the blocking pool.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServerError>
    where
        T: Send + 'static,
        F: FnOnce(&MeteringStore) -> Result<T, ServerError> + Send + 'static,
    {
        let store = Arc::clone(self);
        crate::store::blocking("metering storage", move || f(&store)).await
    }

    fn write<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, ServerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db(action))?;
        let out = f(&tx).map_err(ServerError::db(action))?;
        tx.commit().map_err(ServerError::db(action))?;
        Ok(out)
    }

    // ---- API keys and roles ----

    /// Issues a new `X-API-Key` for `server_id`; the secret is returned once, its hash stored.
    pub fn create_server_key(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, String), ServerError> {
        let issued = token::issue(token::TokenKind::Agent);
        // A key of its own kind: `tm_` + the same 64 hex digits.
        let secret = format!("tm_{}", &issued.secret[3..]);
        let id = uuid::Uuid::new_v4().to_string();
        let hash = token::hash(&secret);
        self.write("storing a server key", |tx| {
            tx.execute(
                "INSERT INTO server_keys (id, server_id, lookup, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, server_id, issued.lookup, hash.as_slice(), ms(now)],
            )
        })?;
        Ok((id, secret))
    }

    /// The server id a presented `X-API-Key` belongs to (`None`: unknown, revoked, malformed).
    pub fn server_for_key(&self, key: &str) -> Result<Option<String>, ServerError> {
        let Some(rest) = key.strip_prefix("tm_") else {
            return Ok(None);
        };
        if rest.len() != 64 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let row: Option<(String, Vec<u8>)> = self
            .lock()
            .query_row(
                "SELECT server_id, hash FROM server_keys WHERE lookup = ?1 AND revoked_at IS NULL",
                params![&rest[..16]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(ServerError::db("reading a server key"))?;
        Ok(row.and_then(|(server, hash)| token::matches(key, &hash).then_some(server)))
    }

    /// Gives `user_name` the operator role.
    pub fn grant_operator(&self, user_name: &str) -> Result<(), ServerError> {
        self.write("granting a role", |tx| {
            tx.execute(
                "INSERT INTO user_roles (user_name, role) VALUES (?1, 'operator')
                 ON CONFLICT (user_name) DO UPDATE SET role = excluded.role",
                params![user_name],
            )
        })
        .map(drop)
    }

    /// Whether `user_name` is an operator.
    pub fn is_operator(&self, user_name: &str) -> Result<bool, ServerError> {
        self.lock()
            .query_row(
                "SELECT 1 FROM user_roles WHERE user_name = ?1 AND role = 'operator'",
                params![user_name],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(ServerError::db("reading a role"))
    }

    // ---- customers ----

    /// Creates a customer with `credits`, or sets the balance of an existing one. Returns
    /// whether it was created.
    pub fn upsert_customer(
        &self,
        customer_id: &str,
        credits: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.write("storing a customer", |tx| {
            let existed = customer_exists(tx, customer_id)?;
            tx.execute(
                "INSERT INTO customers (customer_id, balance, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (customer_id) DO UPDATE SET balance = excluded.balance",
                params![customer_id, credits, ms(now)],
            )?;
            Ok(!existed)
        })
    }

    /// `{"customer_id", "balance", "reserved"}`; `None` for an unknown customer.
    pub fn customer(&self, customer_id: &str) -> Result<Option<Value>, ServerError> {
        let conn = self.lock();
        let Some(balance) = customer_balance(&conn, customer_id)? else {
            return Ok(None);
        };
        let reserved =
            reserved_of(&conn, customer_id).map_err(ServerError::db("reading reservations"))?;
        Ok(Some(json!({
            "customer_id": customer_id,
            "balance": balance,
            "reserved": reserved,
        })))
    }

    // ---- servers ----

    /// Upserts a server's registration; its live session count starts again at 0.
    pub fn register_server(
        &self,
        server_id: &str,
        registration: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), ServerError> {
        self.write("registering a server", |tx| {
            tx.execute(
                "INSERT INTO servers (server_id, registration, status, live_sessions, registered_at, last_heartbeat_at)
                 VALUES (?1, ?2, 'online', 0, ?3, ?3)
                 ON CONFLICT (server_id) DO UPDATE SET registration = excluded.registration,
                    status = 'online', live_sessions = 0, registered_at = excluded.registered_at,
                    last_heartbeat_at = excluded.last_heartbeat_at",
                params![server_id, registration.to_string(), ms(now)],
            )
        })
        .map(drop)
    }

    /// Records a heartbeat (or, with `status` `offline`, a shutdown). `false`: the server
    /// never registered.
    pub fn heartbeat(
        &self,
        server_id: &str,
        status: &str,
        interval: Option<f64>,
        metrics: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.write("recording a heartbeat", |tx| {
            let n = tx.execute(
                "UPDATE servers SET status = ?2, last_heartbeat_at = ?3,
                    heartbeat_interval = coalesce(?4, heartbeat_interval),
                    last_metrics = coalesce(?5, last_metrics)
                 WHERE server_id = ?1",
                params![
                    server_id,
                    status,
                    ms(now),
                    interval,
                    metrics.map(Value::to_string)
                ],
            )?;
            Ok(n == 1)
        })
    }

    /// `[{"server_id", "status", "last_heartbeat_at", "live_sessions", "registration",
    /// "metrics"}]`; `offline` once three heartbeat intervals passed without one.
    pub fn servers(&self, now: DateTime<Utc>) -> Result<Vec<Value>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT server_id, status, last_heartbeat_at, heartbeat_interval, live_sessions,
                        registration, last_metrics
                 FROM servers ORDER BY server_id",
            )
            .map_err(ServerError::db("listing servers"))?;
        let rows = stmt
            .query_map([], |r| {
                let last: Option<i64> = r.get(2)?;
                let interval: f64 = r.get(3)?;
                let mut status: String = r.get(1)?;
                let stale =
                    last.is_none_or(|l| (ms(now) - l) as f64 > 3.0 * interval.max(0.001) * 1000.0);
                if stale {
                    status = "offline".into();
                }
                Ok(json!({
                    "server_id": r.get::<_, String>(0)?,
                    "status": status,
                    "last_heartbeat_at": last.map(time),
                    "live_sessions": r.get::<_, i64>(4)?,
                    "registration": parse_json(r.get(5)?),
                    "metrics": parse_json(r.get(6)?),
                }))
            })
            .map_err(ServerError::db("listing servers"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(ServerError::db("listing servers"))
    }

    // ---- sessions ----

    /// `POST /sessions/{id}/start` and `/complete`: once per idempotency key; a replay answers
    /// the stored response.
    pub fn lifecycle(
        &self,
        session_id: &str,
        event: &str,
        customer_id: &str,
        server_id: &str,
        idempotency_key: &str,
        now: DateTime<Utc>,
    ) -> Outcome<Value> {
        self.write("recording a session event", |tx| {
            let sql = "SELECT response FROM lifecycle_events WHERE idempotency_key = ?1";
            if let Some(mut v) = stored_response(tx, sql, idempotency_key)? {
                v["duplicate"] = Value::Bool(true);
                return Ok(Ok(v));
            }
            let session = match touch_session(tx, session_id, customer_id, server_id)? {
                Ok(s) => s,
                Err(r) => return Ok(Err(r)),
            };
            let response = if event == "start" {
                let mut granted = 0;
                if session.started_at.is_none() {
                    let available = available_of(tx, customer_id)?;
                    granted = INITIAL_GRANT.min(available.max(0));
                    tx.execute(
                        "UPDATE sessions SET started_at = ?2, credits_granted = credits_granted + ?3
                         WHERE session_id = ?1",
                        params![session_id, ms(now), granted],
                    )?;
                    tx.execute(
                        "UPDATE servers SET live_sessions = live_sessions + 1 WHERE server_id = ?1",
                        params![server_id],
                    )?;
                }
                json!({"session_id": session_id, "status": "active", "granted": granted,
                       "credits_granted": session.granted + granted})
            } else {
                let was_active = session.status == "active";
                let released = (session.granted - session.consumed).max(0);
                tx.execute(
                    "UPDATE sessions SET status = 'completed', completed_at = ?2 WHERE session_id = ?1",
                    params![session_id, ms(now)],
                )?;
                if was_active && session.started_at.is_some() {
                    tx.execute(
                        "UPDATE servers SET live_sessions = max(0, live_sessions - 1) WHERE server_id = ?1",
                        params![server_id],
                    )?;
                }
                json!({"session_id": session_id, "status": "completed",
                       "credits_consumed": session.consumed,
                       "credits_granted": session.granted,
                       "released": if was_active { released } else { 0 }})
            };
            tx.execute(
                "INSERT INTO lifecycle_events (idempotency_key, session_id, event, response, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![idempotency_key, session_id, event, response.to_string(), ms(now)],
            )?;
            Ok(Ok(response))
        })
    }

    /// `POST /sessions/{id}/usage-records`: each record once per `record_id`; credits computed
    /// here. Returns `(accepted, duplicates)`.
    pub fn add_usage_records(
        &self,
        session_id: &str,
        server_id: &str,
        records: &[(String, String, f64, f64, Value)],
        now: DateTime<Utc>,
    ) -> Outcome<(u64, u64)> {
        self.write("recording usage", |tx| {
            let (mut accepted, mut duplicates) = (0u64, 0u64);
            for (record_id, customer_id, audio, connection, record) in records {
                if let Err(r) = touch_session(tx, session_id, customer_id, server_id)? {
                    return Ok(Err(r));
                }
                let credits = credits_for(*audio, *connection);
                let n = tx.execute(
                    "INSERT INTO usage_records (record_id, session_id, audio_duration_seconds,
                        connection_duration_seconds, credits, record, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (record_id) DO NOTHING",
                    params![record_id, session_id, audio, connection, credits, record.to_string(), ms(now)],
                )?;
                if n == 0 {
                    duplicates += 1;
                    continue;
                }
                accepted += 1;
                tx.execute(
                    "UPDATE sessions SET credits_consumed = credits_consumed + ?2 WHERE session_id = ?1",
                    params![session_id, credits],
                )?;
                tx.execute(
                    "UPDATE customers SET balance = balance - ?2 WHERE customer_id = ?1",
                    params![customer_id, credits],
                )?;
            }
            Ok(Ok((accepted, duplicates)))
        })
    }

    /// `POST /sessions/{id}/refresh`: grants once per `transaction_id`; a replay answers the
    /// stored response.
    pub fn refresh(
        &self,
        session_id: &str,
        customer_id: &str,
        server_id: &str,
        transaction_id: &str,
        now: DateTime<Utc>,
    ) -> Outcome<Value> {
        self.write("refreshing a quota", |tx| {
            let sql = "SELECT response FROM refreshes WHERE transaction_id = ?1";
            if let Some(v) = stored_response(tx, sql, transaction_id)? {
                return Ok(Ok(v));
            }
            let session = match touch_session(tx, session_id, customer_id, server_id)? {
                Ok(s) => s,
                Err(r) => return Ok(Err(r)),
            };
            let granted = if session.status == "active" {
                REFRESH_GRANT.min(available_of(tx, customer_id)?.max(0))
            } else {
                0
            };
            tx.execute(
                "UPDATE sessions SET credits_granted = credits_granted + ?2, refreshes = refreshes + 1
                 WHERE session_id = ?1",
                params![session_id, granted],
            )?;
            let response = json!({
                "transaction_id": transaction_id,
                "session_id": session_id,
                "granted": granted,
                "credits_granted": session.granted + granted,
                "quota_exhausted": granted == 0,
            });
            tx.execute(
                "INSERT INTO refreshes (transaction_id, session_id, granted, response, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![transaction_id, session_id, granted, response.to_string(), ms(now)],
            )?;
            Ok(Ok(response))
        })
    }

    /// The operator view of a session.
    pub fn session(&self, session_id: &str) -> Result<Option<Value>, ServerError> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT customer_id, status, credits_consumed, credits_granted, refreshes, server_id
                 FROM sessions WHERE session_id = ?1",
                params![session_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(ServerError::db("reading a session"))?;
        let Some((customer, status, consumed, granted, refreshes, server)) = row else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare(
                "SELECT record_id, audio_duration_seconds, connection_duration_seconds, credits, received_at
                 FROM usage_records WHERE session_id = ?1 ORDER BY received_at, record_id",
            )
            .map_err(ServerError::db("reading usage records"))?;
        let records = stmt
            .query_map(params![session_id], |r| {
                Ok(json!({
                    "record_id": r.get::<_, String>(0)?,
                    "audio_duration_seconds": r.get::<_, f64>(1)?,
                    "connection_duration_seconds": r.get::<_, f64>(2)?,
                    "credits": r.get::<_, i64>(3)?,
                    "received_at": time(r.get(4)?),
                }))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(ServerError::db("reading usage records"))?;
        Ok(Some(json!({
            "session_id": session_id,
            "customer_id": customer,
            "server_id": server,
            "status": status,
            "credits_consumed": consumed,
            "credits_granted": granted,
            "refreshes": refreshes,
            "usage_records": records,
        })))
    }

    // ---- commands and signing keys ----

    /// Stores a queued command with its signed token.
    #[allow(clippy::too_many_arguments)]
    pub fn queue_command(
        &self,
        command_id: &str,
        server_id: &str,
        command: &str,
        params_json: &Value,
        token: &str,
        created_by: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), ServerError> {
        self.write("queueing a command", |tx| {
            tx.execute(
                "INSERT INTO commands (command_id, server_id, command, params, token, status,
                    created_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8)",
                params![
                    command_id,
                    server_id,
                    command,
                    params_json.to_string(),
                    token,
                    created_by,
                    ms(now),
                    ms(expires_at)
                ],
            )
        })
        .map(drop)
    }

    /// Tokens of `server_id`'s queued, unexpired commands, oldest first.
    pub fn pending_commands(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT command_id, token FROM commands
                 WHERE server_id = ?1 AND status = 'queued' AND expires_at > ?2
                 ORDER BY created_at, command_id",
            )
            .map_err(ServerError::db("listing commands"))?;
        stmt.query_map(params![server_id, ms(now)], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(ServerError::db("listing commands"))
    }

    /// Stores a command's result. `false`: no such command for that server.
    pub fn command_result(
        &self,
        server_id: &str,
        command_id: &str,
        succeeded: bool,
        result: &Value,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.write("storing a command result", |tx| {
            let n = tx.execute(
                "UPDATE commands SET status = ?3, result = ?4, completed_at = ?5
                 WHERE server_id = ?1 AND command_id = ?2",
                params![
                    server_id,
                    command_id,
                    if succeeded { "succeeded" } else { "failed" },
                    result.to_string(),
                    ms(now)
                ],
            )?;
            Ok(n == 1)
        })
    }

    /// Commands of a server, newest first (for operators).
    pub fn commands(&self, server_id: &str) -> Result<Vec<CommandRow>, ServerError> {
        self.command_rows(
            "WHERE server_id = ?1 ORDER BY created_at DESC, command_id",
            server_id,
        )
    }

    /// One command (for operators).
    pub fn command(&self, command_id: &str) -> Result<Option<CommandRow>, ServerError> {
        Ok(self
            .command_rows("WHERE command_id = ?1", command_id)?
            .into_iter()
            .next())
    }

    fn command_rows(&self, clause: &str, arg: &str) -> Result<Vec<CommandRow>, ServerError> {
        let conn = self.lock();
        let sql = format!(
            "SELECT command_id, server_id, command, status, created_by, created_at, expires_at,
                    completed_at, result FROM commands {clause}"
        );
        let mut stmt = conn
            .prepare(&sql)
            .map_err(ServerError::db("reading commands"))?;
        stmt.query_map(params![arg], |r| {
            Ok(CommandRow {
                command_id: r.get(0)?,
                server_id: r.get(1)?,
                command: r.get(2)?,
                status: r.get(3)?,
                created_by: r.get(4)?,
                created_at: time(r.get(5)?),
                expires_at: time(r.get(6)?),
                completed_at: r.get::<_, Option<i64>>(7)?.map(time),
                result: parse_json(r.get(8)?),
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(ServerError::db("reading commands"))
    }

    /// The two newest signing keys, newest first (current, previous).
    pub fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT kid, private_der, public_pem FROM signing_keys
                 ORDER BY created_at DESC, kid DESC LIMIT 2",
            )
            .map_err(ServerError::db("reading signing keys"))?;
        stmt.query_map([], |r| {
            Ok(SigningKeyRow {
                kid: r.get(0)?,
                private_der: r.get(1)?,
                public_pem: r.get(2)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(ServerError::db("reading signing keys"))
    }

    /// Adds a signing key; it becomes the current one.
    pub fn add_signing_key(
        &self,
        key: &SigningKeyRow,
        now: DateTime<Utc>,
    ) -> Result<(), ServerError> {
        self.write("storing a signing key", |tx| {
            tx.execute(
                "INSERT INTO signing_keys (kid, private_der, public_pem, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![key.kid, key.private_der, key.public_pem, ms(now)],
            )
        })
        .map(drop)
    }
}

struct SessionRow {
    status: String,
    granted: i64,
    consumed: i64,
    started_at: Option<i64>,
}

fn customer_balance(conn: &Connection, customer_id: &str) -> Result<Option<i64>, ServerError> {
    conn.query_row(
        "SELECT balance FROM customers WHERE customer_id = ?1",
        params![customer_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(ServerError::db("reading a customer"))
}

/// Credits granted to the customer's active sessions and not yet consumed.
fn reserved_of(conn: &Connection, customer_id: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce(sum(max(0, credits_granted - credits_consumed)), 0) FROM sessions
         WHERE customer_id = ?1 AND status = 'active'",
        params![customer_id],
        |r| r.get(0),
    )
}

/// Balance minus reservations: what new grants may take.
fn available_of(conn: &Connection, customer_id: &str) -> rusqlite::Result<i64> {
    let balance: i64 = conn.query_row(
        "SELECT balance FROM customers WHERE customer_id = ?1",
        params![customer_id],
        |r| r.get(0),
    )?;
    Ok(balance - reserved_of(conn, customer_id)?)
}

fn customer_exists(tx: &Transaction<'_>, customer_id: &str) -> rusqlite::Result<bool> {
    let found = tx
        .query_row(
            "SELECT 1 FROM customers WHERE customer_id = ?1",
            params![customer_id],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

/// The response stored for an idempotent request under `key` (`sql` selects it), if it was
/// answered before: a replay answers it again.
fn stored_response(tx: &Transaction<'_>, sql: &str, key: &str) -> rusqlite::Result<Option<Value>> {
    let stored = tx
        .query_row(sql, params![key], |r| r.get::<_, String>(0))
        .optional()?;
    Ok(stored.map(|s| serde_json::from_str(&s).unwrap_or(Value::Null)))
}

/// The session, created (active) on first sight by any of its messages: the three queues are
/// independent, so a usage record or a refresh may arrive before its session's start.
fn touch_session(
    tx: &Transaction<'_>,
    session_id: &str,
    customer_id: &str,
    server_id: &str,
) -> rusqlite::Result<Result<SessionRow, Refusal>> {
    let exists = customer_exists(tx, customer_id)?;
    if !exists {
        return Ok(Err(Refusal::UnknownCustomer(customer_id.to_owned())));
    }
    tx.execute(
        "INSERT INTO sessions (session_id, customer_id, server_id, status) VALUES (?1, ?2, ?3, 'active')
         ON CONFLICT (session_id) DO NOTHING",
        params![session_id, customer_id, server_id],
    )?;
    let (owner, row) = tx.query_row(
        "SELECT customer_id, status, credits_granted, credits_consumed, started_at FROM sessions
         WHERE session_id = ?1",
        params![session_id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                SessionRow {
                    status: r.get(1)?,
                    granted: r.get(2)?,
                    consumed: r.get(3)?,
                    started_at: r.get(4)?,
                },
            ))
        },
    )?;
    if owner != customer_id {
        return Ok(Err(Refusal::CustomerMismatch));
    }
    Ok(Ok(row))
}
