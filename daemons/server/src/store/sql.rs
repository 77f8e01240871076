//! The SQL layer under the records store: one way to run a statement and read its rows on
//! SQLite (rusqlite) and on PostgreSQL (postgres), so each record operation is written once.
//!
//! Statements use PostgreSQL's `$1`, `$2` … placeholders; on SQLite they become `?1`, `?2` —
//! SQLite's numbered parameters, with the same meaning. Values cross as [`Value`]s in each
//! backend's native form: on SQLite uuids are text, timestamps Unix milliseconds, booleans
//! 0/1 and JSON text; on PostgreSQL they are `uuid`, `timestamptz`, `boolean` and `json`.
//! Rows are read whole into [`Row`]s whose typed getters accept either form, so both backends
//! give the same answers. Timestamps are truncated to milliseconds on the way in: that is what
//! SQLite keeps, and what the API shows.
//!
//! What it does not do: no query builder and no ORM. The SQL is written by hand and must mean
//! the same in both dialects (`TRUE`/`FALSE`, `ON CONFLICT … DO NOTHING`, no `$n IS NULL`
//! tests on untyped parameters — PostgreSQL cannot infer their type).

use std::error::Error as StdError;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use postgres::types::{IsNull, ToSql as PgToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};
use uuid::Uuid;

/// A failure of the records database, from either backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite refused or failed a statement.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed a statement, or the connection broke.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    /// No PostgreSQL connection could be had from the pool in time.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A stored value is not what its column should hold (a corrupt row or a schema mismatch).
    #[error("column {column}: {detail}")]
    Decode {
        /// Zero-based column of the row.
        column: usize,
        /// What was wrong.
        detail: String,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode a value: {0}")]
    Encode(String),
    /// The store is being dropped.
    #[error("the records store is closed")]
    Closed,
    /// A statement expected to return a row returned none.
    #[error("the statement returned no row")]
    NoRow,
}

impl DbError {
    /// Whether the statement broke a `UNIQUE` or primary-key constraint (another writer got
    /// there first): callers turn this into the same refusal on both backends.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) => matches!(
                err.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            DbError::Postgres(err) => {
                err.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    /// Whether the same operation may succeed later: a busy SQLite file, a lost or
    /// unavailable PostgreSQL connection, a deadlock or serialization failure.
    pub fn is_retryable(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            DbError::Sqlite(err) => matches!(
                err.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            DbError::Postgres(err) => {
                err.is_closed()
                    || err.code().is_some_and(|code| {
                        [
                            SqlState::T_R_SERIALIZATION_FAILURE,
                            SqlState::T_R_DEADLOCK_DETECTED,
                            SqlState::ADMIN_SHUTDOWN,
                            SqlState::CANNOT_CONNECT_NOW,
                            SqlState::TOO_MANY_CONNECTIONS,
                        ]
                        .contains(code)
                    })
            }
            DbError::Pool(_) => true,
            _ => false,
        }
    }
}

/// A statement parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A uuid.
    Uuid(Uuid),
    /// A point in time, at millisecond precision.
    Time(DateTime<Utc>),
    /// A JSON document.
    Json(serde_json::Value),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Bytes(v.to_vec())
    }
}
impl From<Uuid> for Value {
    fn from(v: Uuid) -> Value {
        Value::Uuid(v)
    }
}
/// `at` as both backends store it: truncated to the millisecond.
pub(super) fn stored_time(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Value {
        Value::Time(stored_time(v))
    }
}
impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Value {
        Value::Json(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a statement's parameter list: `args![a, b]` is `&[Value::from(a), Value::from(b)]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($v)),*]
    };
}
pub(super) use args;

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(v) => ToSqlOutput::from(*v),
            Value::Bool(v) => ToSqlOutput::from(i64::from(*v)),
            Value::Text(v) => ToSqlOutput::from(v.as_str()),
            Value::Bytes(v) => ToSqlOutput::from(v.as_slice()),
            Value::Uuid(v) => ToSqlOutput::from(v.to_string()),
            Value::Time(v) => ToSqlOutput::from(v.timestamp_millis()),
            Value::Json(v) => ToSqlOutput::from(v.to_string()),
        })
    }
}

impl PgToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        // Each arm checks the column type, so a mismatch is a clear error, not bad bytes.
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql_checked(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql_checked(ty, out),
                _ => v.to_sql_checked(ty, out),
            },
            Value::Bool(v) => v.to_sql_checked(ty, out),
            Value::Text(v) => v.to_sql_checked(ty, out),
            Value::Bytes(v) => v.to_sql_checked(ty, out),
            Value::Uuid(v) => v.to_sql_checked(ty, out),
            Value::Time(v) => v.to_sql_checked(ty, out),
            Value::Json(v) => postgres::types::Json(v).to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// One result row, read whole.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    values: Vec<Value>,
}

/// Decodes a row into a struct whose fields are its columns in order, from column `first`:
/// `from_columns!(row, 2 => User { id, name })` is
/// `User { id: row.get(2)?, name: row.get(3)? }`. The fields must be listed in the order of the
/// query's columns (the `*_COLUMNS` constants).
macro_rules! from_columns {
    ($row:expr, $first:expr => $ty:ident { $($field:ident),+ $(,)? }) => {{
        let mut columns = $row.columns($first);
        $ty { $($field: columns.next()?),+ }
    }};
}
pub(super) use from_columns;

/// The columns of a [`Row`], read one after the other ([`from_columns`]).
pub(super) struct Columns<'a> {
    row: &'a Row,
    next: usize,
}

impl Columns<'_> {
    /// The next column as a `T`.
    pub(super) fn next<T: FromValue>(&mut self) -> Result<T, DbError> {
        let value = self.row.get(self.next);
        self.next += 1;
        value
    }
}

impl Row {
    /// The columns from `first` on, to read in order.
    pub(super) fn columns(&self, first: usize) -> Columns<'_> {
        Columns {
            row: self,
            next: first,
        }
    }

    /// Column `idx` as a `T`.
    pub(super) fn get<T: FromValue>(&self, idx: usize) -> Result<T, DbError> {
        let value = self.values.get(idx).ok_or_else(|| DbError::Decode {
            column: idx,
            detail: format!("the row has only {} columns", self.values.len()),
        })?;
        T::from_value(value).map_err(|detail| DbError::Decode {
            column: idx,
            detail,
        })
    }

    fn from_sqlite(row: &rusqlite::Row<'_>) -> Result<Row, DbError> {
        let count = row.as_ref().column_count();
        let mut values = Vec::with_capacity(count);
        for idx in 0..count {
            values.push(match row.get_ref(idx)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Text(v) => {
                    Value::Text(
                        String::from_utf8(v.to_vec()).map_err(|err| DbError::Decode {
                            column: idx,
                            detail: err.to_string(),
                        })?,
                    )
                }
                ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
                ValueRef::Real(v) => {
                    return Err(DbError::Decode {
                        column: idx,
                        detail: format!("unexpected real number {v}"),
                    });
                }
            });
        }
        Ok(Row { values })
    }

    fn from_postgres(row: &postgres::Row) -> Result<Row, DbError> {
        fn opt<T>(v: Option<T>, wrap: impl FnOnce(T) -> Value) -> Value {
            v.map_or(Value::Null, wrap)
        }
        let mut values = Vec::with_capacity(row.len());
        for (idx, column) in row.columns().iter().enumerate() {
            values.push(match *column.type_() {
                Type::UUID => opt(row.try_get(idx)?, Value::Uuid),
                Type::TIMESTAMPTZ => opt(row.try_get(idx)?, Value::Time),
                Type::BOOL => opt(row.try_get(idx)?, Value::Bool),
                Type::INT8 => opt(row.try_get(idx)?, Value::Int),
                Type::INT4 => opt(row.try_get::<_, Option<i32>>(idx)?, |v| {
                    Value::Int(i64::from(v))
                }),
                Type::INT2 => opt(row.try_get::<_, Option<i16>>(idx)?, |v| {
                    Value::Int(i64::from(v))
                }),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    opt(row.try_get(idx)?, Value::Text)
                }
                Type::BYTEA => opt(row.try_get(idx)?, Value::Bytes),
                Type::JSON | Type::JSONB => opt(row.try_get(idx)?, Value::Json),
                ref other => {
                    return Err(DbError::Decode {
                        column: idx,
                        detail: format!("unsupported column type {other}"),
                    });
                }
            });
        }
        Ok(Row { values })
    }
}

/// A column type the store reads. Each backend's stored form is accepted (see the module
/// docs); `Option<T>` reads `NULL` as `None`.
pub(super) trait FromValue: Sized {
    /// Converts, or says why not.
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn unexpected<T>(want: &str, got: &Value) -> Result<T, String> {
    Err(format!("expected {want}, found {got:?}"))
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}
impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(v) => Ok(*v),
            other => unexpected("an integer", other),
        }
    }
}
impl FromValue for u32 {
    fn from_value(value: &Value) -> Result<Self, String> {
        let v = i64::from_value(value)?;
        u32::try_from(v).map_err(|_| format!("{v} is out of range"))
    }
}
impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(v) => Ok(*v),
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => unexpected("a boolean", other),
        }
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(v) => Ok(v.clone()),
            other => unexpected("text", other),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bytes(v) => Ok(v.clone()),
            other => unexpected("bytes", other),
        }
    }
}
impl FromValue for Uuid {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Uuid(v) => Ok(*v),
            Value::Text(v) => Uuid::parse_str(v).map_err(|err| format!("{v:?}: {err}")),
            other => unexpected("a uuid", other),
        }
    }
}
impl FromValue for DateTime<Utc> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Time(v) => Ok(*v),
            Value::Int(ms) => DateTime::from_timestamp_millis(*ms)
                .ok_or_else(|| format!("timestamp {ms} ms is out of range")),
            other => unexpected("a timestamp", other),
        }
    }
}
impl FromValue for serde_json::Value {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Json(v) => Ok(v.clone()),
            Value::Text(v) => serde_json::from_str(v).map_err(|err| err.to_string()),
            other => unexpected("JSON", other),
        }
    }
}

/// A connection or an open transaction of either backend.
pub(super) trait Sql {
    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError>;

    /// Runs a query; returns all its rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError>;

    /// The clause that locks the rows a `SELECT` reads until the transaction ends:
    /// `FOR UPDATE` on PostgreSQL, where instances write concurrently; empty on SQLite, whose
    /// write transactions (`BEGIN IMMEDIATE`) already exclude each other.
    fn for_update(&self) -> &'static str;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always returns one.
    fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, args)?.ok_or(DbError::NoRow)
    }
}

impl dyn Sql + '_ {
    /// A query's rows, each decoded by `decode`.
    pub(super) fn query_map<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        decode: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.query(sql, args)?.iter().map(decode).collect()
    }

    /// The first row of a query, if any, decoded by `decode`.
    pub(super) fn query_opt_map<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        decode: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        self.query_opt(sql, args)?.as_ref().map(decode).transpose()
    }
}

/// SQLite through rusqlite (a connection or a transaction, which derefs to one).
pub(super) struct SqliteSql<'a>(pub(super) &'a rusqlite::Connection);

/// `$1` → `?1`: PostgreSQL placeholders as SQLite's numbered parameters.
/// Copies the text between placeholders in runs (it runs for every statement of every
/// change).
fn sqlite_placeholders(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            // `$` is ASCII, so `i` and `i + 1` are character boundaries.
            out.push_str(&sql[copied..i]);
            out.push('?');
            copied = i + 1;
        }
    }
    out.push_str(&sql[copied..]);
    out
}

impl Sql for SqliteSql<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let changed = stmt.execute(rusqlite::params_from_iter(args))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Row::from_sqlite(row)?);
        }
        Ok(out)
    }

    fn for_update(&self) -> &'static str {
        ""
    }
}

/// PostgreSQL through the `postgres` crate (a client or a transaction).
pub(super) struct PgSql<'a, C: postgres::GenericClient>(pub(super) &'a mut C);

fn pg_params(args: &[Value]) -> Vec<&(dyn PgToSql + Sync)> {
    args.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

impl<C: postgres::GenericClient> Sql for PgSql<'_, C> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        Ok(self.0.execute(sql, &pg_params(args))?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        self.0
            .query(sql, &pg_params(args))?
            .iter()
            .map(Row::from_postgres)
            .collect()
    }

    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_sqlite_numbered_parameters() {
        assert_eq!(
            sqlite_placeholders("SELECT $1, '$' || $12 FROM t WHERE a = $2"),
            "SELECT ?1, '$' || ?12 FROM t WHERE a = ?2"
        );
    }

    #[test]
    fn both_stored_forms_read_the_same() {
        let id = Uuid::new_v4();
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap_or_default();
        let sqlite = Row {
            values: vec![
                Value::Text(id.to_string()),
                Value::Int(at.timestamp_millis()),
                Value::Int(1),
                Value::Text("{\"a\":1}".into()),
                Value::Null,
            ],
        };
        let postgres = Row {
            values: vec![
                Value::Uuid(id),
                Value::Time(at),
                Value::Bool(true),
                Value::Json(serde_json::json!({"a": 1})),
                Value::Null,
            ],
        };
        for row in [sqlite, postgres] {
            assert_eq!(row.get::<Uuid>(0).ok(), Some(id));
            assert_eq!(row.get::<DateTime<Utc>>(1).ok(), Some(at));
            assert_eq!(row.get::<bool>(2).ok(), Some(true));
            assert_eq!(
                row.get::<serde_json::Value>(3).ok(),
                Some(serde_json::json!({"a": 1}))
            );
            assert_eq!(row.get::<Option<Uuid>>(4).ok(), Some(None));
            assert!(row.get::<Uuid>(4).is_err());
            assert!(row.get::<Uuid>(9).is_err());
        }
    }

    #[test]
    fn timestamps_are_kept_to_the_millisecond() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap_or_default();
        let Value::Time(stored) = Value::from(at) else {
            panic!("not a time");
        };
        assert_eq!(stored.timestamp_subsec_nanos(), 123_000_000);
    }
}
