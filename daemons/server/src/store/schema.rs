//! Schema migrations of both backends, applied in order when the store opens.
//!
//! SQLite: each entry of [`MIGRATIONS`] moves the schema from version `i` to `i + 1`, tracked
//! with `PRAGMA user_version`. PostgreSQL: the same for [`POSTGRES_MIGRATIONS`], tracked in the
//! table `tether_schema_version` (one row per applied version), all steps in one transaction
//! under an advisory lock so that instances starting together against a fresh database apply
//! each step once. The two lists are numbered separately: PostgreSQL's version 1 is the tables
//! of SQLite's version 3, in native types. Entries are never edited once released; changes are
//! new entries in both lists. `docs/storage-server.md` describes the tables.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::ServerError;

/// Version 1: users and their tokens, agents, dongles, groups and the group audit log.
pub(super) const V1: &str = r#"
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE user_tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    lookup      TEXT NOT NULL UNIQUE,
    hash        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id),
    name          TEXT NOT NULL,
    token_lookup  TEXT NOT NULL UNIQUE,
    token_hash    BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);
CREATE INDEX agents_by_user ON agents(user_id);
CREATE TABLE dongles (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    serial      TEXT NOT NULL UNIQUE,
    agent_id    TEXT NOT NULL REFERENCES agents(id),
    online      INTEGER NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
    last_seen   INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX dongles_by_user ON dongles(user_id);
CREATE TABLE relay_groups (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    name        TEXT NOT NULL,
    dongle_a    TEXT NOT NULL REFERENCES dongles(id),
    dongle_b    TEXT NOT NULL REFERENCES dongles(id),
    activated   INTEGER NOT NULL DEFAULT 0 CHECK (activated IN (0, 1)),
    mode        TEXT NOT NULL CHECK (mode IN ('inactive', 'active', 'degraded')),
    created_at  INTEGER NOT NULL,
    CHECK (dongle_a <> dongle_b)
);
CREATE INDEX relay_groups_by_user ON relay_groups(user_id);
CREATE TABLE group_members (
    dongle_id   TEXT PRIMARY KEY REFERENCES dongles(id),
    group_id    TEXT NOT NULL REFERENCES relay_groups(id) ON DELETE CASCADE,
    side        TEXT NOT NULL CHECK (side IN ('a', 'b'))
);
CREATE INDEX group_members_by_group ON group_members(group_id);
CREATE TABLE group_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    old_mode    TEXT,
    new_mode    TEXT
);
CREATE INDEX group_audit_by_group ON group_audit(group_id, id);
"#;

/// Version 2: a dongle serial is unique per user, not across users — each account has its own
/// namespace of serials, so one account's dongle never blocks another's. The table is rebuilt
/// (SQLite cannot drop a column's UNIQUE); ids are kept, so groups and members still point at
/// the same rows ([`migrate`] runs with foreign keys off and checks them before each commit).
const V2: &str = r#"
CREATE TABLE dongles_v2 (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    serial      TEXT NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents(id),
    online      INTEGER NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
    last_seen   INTEGER,
    created_at  INTEGER NOT NULL,
    UNIQUE (user_id, serial)
);
INSERT INTO dongles_v2 (id, user_id, serial, agent_id, online, last_seen, created_at)
    SELECT id, user_id, serial, agent_id, online, last_seen, created_at FROM dongles;
DROP TABLE dongles;
ALTER TABLE dongles_v2 RENAME TO dongles;
"#;

/// Version 3: vehicles (with their ECU list), vehicle commands and their responses.
const V3: &str = r#"
CREATE TABLE vehicles (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    name        TEXT NOT NULL,
    vin         TEXT,
    dongle_id   TEXT REFERENCES dongles(id),
    ecus        TEXT NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL
);
CREATE INDEX vehicles_by_user ON vehicles(user_id, created_at, id);
CREATE UNIQUE INDEX vehicles_by_dongle ON vehicles(dongle_id) WHERE dongle_id IS NOT NULL;
CREATE TABLE commands (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id),
    vehicle_id     TEXT NOT NULL REFERENCES vehicles(id),
    command_name   TEXT NOT NULL,
    command_params TEXT NOT NULL,
    status         TEXT NOT NULL
                   CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    error_message  TEXT,
    submitted_at   INTEGER NOT NULL,
    completed_at   INTEGER,
    deadline_at    INTEGER NOT NULL
);
CREATE INDEX commands_by_user ON commands(user_id, submitted_at, id);
CREATE INDEX commands_by_vehicle ON commands(vehicle_id, submitted_at, id);
CREATE INDEX commands_open ON commands(status) WHERE status IN ('pending', 'in_progress');
CREATE TABLE command_responses (
    id                TEXT PRIMARY KEY,
    command_id        TEXT NOT NULL REFERENCES commands(id),
    sequence_number   INTEGER NOT NULL CHECK (sequence_number >= 1),
    is_final          INTEGER NOT NULL CHECK (is_final IN (0, 1)),
    response_payload  TEXT NOT NULL,
    received_at       INTEGER NOT NULL,
    UNIQUE (command_id, sequence_number)
);
"#;

/// Version 4: the server instance owning an open command (`docs/cluster.md`).
const V4: &str = r#"
ALTER TABLE commands ADD COLUMN instance TEXT;
"#;

/// All migrations; index `i` upgrades from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`], one transaction per step.
///
/// The version is read inside each write transaction, so two processes opening a fresh data
/// directory at once (a `token create` beside a starting server) never apply a step twice.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), ServerError> {
    // A step may rebuild a table others refer to (SQLite's documented way: foreign keys off,
    // rebuild, check). The pragma is a no-op inside a transaction, so it is set around them.
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(ServerError::db("pausing foreign keys for migrations"))?;
    let migrated = migrate_steps(conn);
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(ServerError::db("enabling foreign keys"))?;
    migrated
}

/// Opens one step of a SQLite migration (the records' or the metering database's): a write
/// transaction (`BEGIN IMMEDIATE`, so processes opening the same file take turns) and the
/// `PRAGMA user_version` read inside it, refused when newer than `supported`. `actions` name
/// the start and the read in errors.
pub(crate) fn begin_sqlite_step<'c>(
    conn: &'c mut Connection,
    supported: i64,
    actions: (&'static str, &'static str),
) -> Result<(Transaction<'c>, i64), ServerError> {
    let (starting, reading) = actions;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ServerError::db(starting))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(ServerError::db(reading))?;
    refuse_newer(found, supported)?;
    Ok((tx, found))
}

/// Refuses a schema version `found` that a newer binary wrote.
fn refuse_newer(found: i64, supported: i64) -> Result<(), ServerError> {
    if found > supported {
        return Err(ServerError::SchemaTooNew { found, supported });
    }
    Ok(())
}

fn migrate_steps(conn: &mut Connection) -> Result<(), ServerError> {
    loop {
        let (tx, found) = begin_sqlite_step(
            conn,
            SCHEMA_VERSION,
            ("starting a migration", "reading the schema version"),
        )?;
        let Some(sql) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .map_err(ServerError::db("applying a migration"))?;
        let broken: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .map_err(ServerError::db("checking foreign keys after a migration"))?;
        if broken > 0 {
            return Err(ServerError::db("checking foreign keys after a migration")(
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!("{broken} rows would break foreign keys")),
                ),
            ));
        }
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(ServerError::db("recording the schema version"))?;
        tx.commit()
            .map_err(ServerError::db("committing a migration"))?;
    }
}

/// PostgreSQL version 1: the tables of SQLite version 3, with native types — `uuid` ids,
/// `timestamptz` times (kept to the millisecond), `boolean` flags and `json` documents (`json`
/// rather than `jsonb`: it keeps any valid JSON, `\u0000` included, as the SQLite text does).
const POSTGRES_V1: &str = r#"
CREATE TABLE users (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL
);
CREATE TABLE user_tokens (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id),
    lookup      text NOT NULL UNIQUE,
    hash        bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX user_tokens_by_user ON user_tokens(user_id);
CREATE TABLE agents (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users(id),
    name          text NOT NULL,
    token_lookup  text NOT NULL UNIQUE,
    token_hash    bytea NOT NULL,
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX agents_by_user ON agents(user_id);
CREATE TABLE dongles (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id),
    serial      text NOT NULL,
    agent_id    uuid NOT NULL REFERENCES agents(id),
    online      boolean NOT NULL DEFAULT false,
    last_seen   timestamptz,
    created_at  timestamptz NOT NULL,
    UNIQUE (user_id, serial)
);
CREATE INDEX dongles_by_agent ON dongles(agent_id);
CREATE INDEX dongles_online ON dongles(id) WHERE online;
CREATE TABLE relay_groups (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id),
    name        text NOT NULL,
    dongle_a    uuid NOT NULL REFERENCES dongles(id),
    dongle_b    uuid NOT NULL REFERENCES dongles(id),
    activated   boolean NOT NULL DEFAULT false,
    mode        text NOT NULL CHECK (mode IN ('inactive', 'active', 'degraded')),
    created_at  timestamptz NOT NULL,
    CHECK (dongle_a <> dongle_b)
);
CREATE INDEX relay_groups_by_user ON relay_groups(user_id);
CREATE TABLE group_members (
    dongle_id   uuid PRIMARY KEY REFERENCES dongles(id),
    group_id    uuid NOT NULL REFERENCES relay_groups(id) ON DELETE CASCADE,
    side        text NOT NULL CHECK (side IN ('a', 'b'))
);
CREATE INDEX group_members_by_group ON group_members(group_id);
CREATE TABLE group_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id    uuid NOT NULL,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    old_mode    text,
    new_mode    text
);
CREATE INDEX group_audit_by_group ON group_audit(group_id, id);
CREATE TABLE vehicles (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users(id),
    name        text NOT NULL,
    vin         text,
    dongle_id   uuid REFERENCES dongles(id),
    ecus        json NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL
);
CREATE INDEX vehicles_by_user ON vehicles(user_id, created_at, id);
CREATE UNIQUE INDEX vehicles_by_dongle ON vehicles(dongle_id) WHERE dongle_id IS NOT NULL;
CREATE TABLE commands (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users(id),
    vehicle_id     uuid NOT NULL REFERENCES vehicles(id),
    command_name   text NOT NULL,
    command_params json NOT NULL,
    status         text NOT NULL
                   CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    error_message  text,
    submitted_at   timestamptz NOT NULL,
    completed_at   timestamptz,
    deadline_at    timestamptz NOT NULL
);
CREATE INDEX commands_by_user ON commands(user_id, submitted_at, id);
CREATE INDEX commands_by_vehicle ON commands(vehicle_id, submitted_at, id);
CREATE INDEX commands_open ON commands(status) WHERE status IN ('pending', 'in_progress');
CREATE TABLE command_responses (
    id                uuid PRIMARY KEY,
    command_id        uuid NOT NULL REFERENCES commands(id),
    sequence_number   bigint NOT NULL CHECK (sequence_number >= 1),
    is_final          boolean NOT NULL,
    response_payload  json NOT NULL,
    received_at       timestamptz NOT NULL,
    UNIQUE (command_id, sequence_number)
);
"#;

/// PostgreSQL version 2 (SQLite version 4): the server instance owning an open command.
const POSTGRES_V2: &str = r#"
ALTER TABLE commands ADD COLUMN instance text;
"#;

/// All PostgreSQL migrations; index `i` upgrades from version `i` to `i + 1`.
const POSTGRES_MIGRATIONS: &[&str] = &[POSTGRES_V1, POSTGRES_V2];

/// The PostgreSQL schema version this binary writes.
pub const POSTGRES_SCHEMA_VERSION: i64 = POSTGRES_MIGRATIONS.len() as i64;

/// Reads the PostgreSQL schema version (0 before the first migration).
pub(super) const POSTGRES_VERSION_QUERY: &str =
    "SELECT coalesce(max(version), 0) FROM tether_schema_version";

/// The advisory lock migrations hold ("tether" in ASCII, then 1): instances that start together
/// wait for each other instead of racing to create the same tables.
const POSTGRES_MIGRATION_LOCK: i64 = 0x7465_7468_6572_0001;

/// Brings a PostgreSQL database up to [`POSTGRES_SCHEMA_VERSION`]: one transaction, holding a
/// transaction-scoped advisory lock, that creates the version table if needed, reads the
/// version, applies the missing steps and records them. DDL is transactional in PostgreSQL, so
/// a failure leaves the database as it was.
pub(super) fn migrate_postgres(client: &mut postgres::Client) -> Result<(), ServerError> {
    let mut tx = client
        .transaction()
        .map_err(ServerError::db("starting a migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&POSTGRES_MIGRATION_LOCK],
    )
    .map_err(ServerError::db("taking the migration lock"))?;
    // `CREATE TABLE IF NOT EXISTS` of an existing table sends a NOTICE, logged at INFO by the
    // driver on every start: not news, so not sent (this transaction only).
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .map_err(ServerError::db("quieting the migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tether_schema_version (
             version     bigint PRIMARY KEY,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(ServerError::db("creating the schema version table"))?;
    let found: i64 = tx
        .query_one(POSTGRES_VERSION_QUERY, &[])
        .and_then(|row| row.try_get(0))
        .map_err(ServerError::db("reading the schema version"))?;
    refuse_newer(found, POSTGRES_SCHEMA_VERSION)?;
    for (version, sql) in (1_i64..)
        .zip(POSTGRES_MIGRATIONS)
        .skip_while(|(v, _)| *v <= found)
    {
        tx.batch_execute(sql)
            .map_err(ServerError::db("applying a migration"))?;
        tx.execute(
            "INSERT INTO tether_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .map_err(ServerError::db("recording the schema version"))?;
    }
    tx.commit()
        .map_err(ServerError::db("committing a migration"))
}
