//! The server library's error type: what failed, on which resource, during which action.

use std::path::PathBuf;

/// Everything that can go wrong in the server outside a single HTTP request's validation.
///
/// Request-level refusals (bad input, unknown ids, conflicts) are not errors of this type: they
/// are answered as JSON errors by [`crate::http::ApiError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A statement of the records database (SQLite or PostgreSQL) failed.
    #[error("database error while {action}: {source}")]
    Database {
        /// What the store was doing, e.g. "creating an agent".
        action: &'static str,
        /// The backend's error.
        #[source]
        source: crate::store::DbError,
    },
    /// The configured PostgreSQL URL (`database_url`) cannot be parsed.
    #[error("invalid database URL: {detail}")]
    DatabaseUrl {
        /// Why the URL was refused (the URL itself is not repeated: it may hold a password).
        detail: String,
    },
    /// The database was migrated by a newer version of the server.
    #[error("database schema version {found} is newer than this binary supports ({supported})")]
    SchemaTooNew {
        /// The version found (`PRAGMA user_version` of the SQLite file, or the highest row of
        /// PostgreSQL's `tether_schema_version`).
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// A file-system operation on the data directory or config file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was attempted, e.g. "create data directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML or does not match the schema.
    #[error("invalid configuration in {origin}: {detail}")]
    ConfigInvalid {
        /// Where the configuration came from (file path or "command line").
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// A value of the configuration file at a known key (and line) is not acceptable.
    #[error("invalid configuration: {0}")]
    ConfigAt(tether_runtime::config::ConfigError),
    /// The configuration references `${NAME}` but `NAME` is not set in the environment.
    #[error(
        "configuration in {origin} uses ${{{name}}} but environment variable {name} is not set"
    )]
    ConfigEnvUnset {
        /// Where the configuration came from.
        origin: String,
        /// The variable name.
        name: String,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configured Redis URL cannot be parsed.
    #[error("invalid Redis URL: {detail}")]
    RedisUrl {
        /// Why the URL was refused (the URL itself is not repeated: it may hold a password).
        detail: String,
    },
    /// A user named on the command line does not exist.
    #[error("no user named {name:?}")]
    UnknownUser {
        /// The name asked for.
        name: String,
    },
    /// A token id named on the command line does not exist.
    #[error("no token with id {id}")]
    UnknownToken {
        /// The id asked for.
        id: String,
    },
    /// A background task could not finish (it panicked or the runtime is shutting down).
    #[error("{task} task failed: {detail}")]
    TaskFailed {
        /// Which task: `storage` (a blocking database call) or `server` (the HTTP server).
        task: &'static str,
        /// The join error, as text.
        detail: String,
    },
}

impl ServerError {
    /// Wraps a database error with the action that failed; used as `.map_err(db("…"))`.
    pub(crate) fn db<E: Into<crate::store::DbError>>(
        action: &'static str,
    ) -> impl FnOnce(E) -> ServerError {
        move |source| ServerError::Database {
            action,
            source: source.into(),
        }
    }

    /// A [`ServerError::TaskFailed`] of `task`; used as `.map_err(task_failed("…"))`.
    pub(crate) fn task_failed<E: std::fmt::Display>(
        task: &'static str,
    ) -> impl FnOnce(E) -> ServerError {
        move |err| ServerError::TaskFailed {
            task,
            detail: err.to_string(),
        }
    }

    /// Whether retrying the same operation later may succeed (a busy or unavailable resource)
    /// rather than failing again the same way (bad config, corrupt data).
    pub fn is_retryable(&self) -> bool {
        match self {
            ServerError::Database { source, .. } => source.is_retryable(),
            ServerError::TaskFailed { .. } => true,
            _ => false,
        }
    }
}
