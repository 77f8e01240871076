//! Vehicle commands and their responses. A response row is committed before anyone is told
//! about it (the commands service publishes after these calls return); a command's final
//! response and its `completed` status are one transaction.

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Store, opt_time_at, time_at, to_millis, uuid_at};
use crate::error::ServerError;

/// Where a command is in its life: `pending → in_progress → completed | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Accepted, not started (queued behind another command, or the vehicle is offline).
    Pending,
    /// Sent to the vehicle.
    InProgress,
    /// Ended with a final response.
    Completed,
    /// Ended without one (`error_message` says why).
    Failed,
}

impl CommandStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "pending",
            CommandStatus::InProgress => "in_progress",
            CommandStatus::Completed => "completed",
            CommandStatus::Failed => "failed",
        }
    }

    /// Parses the stored / query spelling.
    pub fn parse(text: &str) -> Option<CommandStatus> {
        Some(match text {
            "pending" => CommandStatus::Pending,
            "in_progress" => CommandStatus::InProgress,
            "completed" => CommandStatus::Completed,
            "failed" => CommandStatus::Failed,
            _ => return None,
        })
    }

    /// Whether the command has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, CommandStatus::Completed | CommandStatus::Failed)
    }
}

/// A command row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRecord {
    /// Stable id.
    pub command_id: Uuid,
    /// The owner (not shown: it is always the caller).
    #[serde(skip)]
    pub user_id: Uuid,
    /// The vehicle it runs on.
    pub vehicle_id: Uuid,
    /// One of `can_io::uds::SUPPORTED_COMMANDS`.
    pub command_name: String,
    /// The params as posted.
    pub command_params: Value,
    /// Current status.
    pub status: CommandStatus,
    /// Why it failed.
    pub error_message: Option<String>,
    /// When it was accepted.
    pub submitted_at: DateTime<Utc>,
    /// When it completed or failed.
    pub completed_at: Option<DateTime<Utc>>,
    /// After this the command no longer waits for an offline vehicle or an answer.
    pub deadline_at: DateTime<Utc>,
}

/// A response row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseRecord {
    /// Stable id.
    pub response_id: Uuid,
    /// The command.
    pub command_id: Uuid,
    /// 1, 2, … per command.
    pub sequence_number: u32,
    /// Whether it is the command's last.
    pub is_final: bool,
    /// The response JSON.
    pub response_payload: Value,
    /// When the server stored it.
    pub received_at: DateTime<Utc>,
}

/// Filters and page of `GET /api/v1/commands`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandQuery {
    /// Only this vehicle's commands.
    pub vehicle_id: Option<Uuid>,
    /// Only commands in this status.
    pub status: Option<CommandStatus>,
    /// Commands submitted before this `(submitted_at ms, id)` (the previous page's last).
    pub before: Option<(i64, Uuid)>,
    /// Page size.
    pub limit: usize,
}

/// What [`Store::add_response`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseOutcome {
    /// Stored (and the command completed when it was final).
    Stored(ResponseRecord),
    /// The command had already ended; nothing was stored.
    CommandEnded(CommandStatus),
    /// A response with this sequence number is already stored; nothing changed.
    Duplicate,
    /// No such command.
    UnknownCommand,
}

/// One change of [`Store::write_commands`]: the same change as the one-at-a-time method it
/// names.
#[derive(Debug, Clone)]
pub enum CommandWrite {
    /// [`Store::insert_command`].
    Insert(CommandRecord),
    /// [`Store::start_command`].
    Start(Uuid),
    /// [`Store::add_response`]; with `start`, first [`Store::start_command`] (a response that
    /// also starts its command, in one change).
    Response {
        /// The command.
        command_id: Uuid,
        /// Start the command first.
        start: bool,
        /// 1, 2, …
        sequence_number: u32,
        /// Whether it is the last.
        is_final: bool,
        /// The response JSON.
        payload: Value,
        /// When it was received.
        at: DateTime<Utc>,
    },
    /// [`Store::fail_command`].
    Fail {
        /// The command.
        command_id: Uuid,
        /// Why.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What one [`CommandWrite`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandWritten {
    /// The command was stored.
    Inserted,
    /// Whether the command moved `pending → in_progress`.
    Started(bool),
    /// Whether the command was started by this change (with `start`), and what became of the
    /// response.
    Response(bool, ResponseOutcome),
    /// Whether the command moved to `failed`.
    Failed(bool),
}

const COMMAND_COLUMNS: &str = "id, user_id, vehicle_id, command_name, command_params, status, \
                               error_message, submitted_at, completed_at, deadline_at";

fn json_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Value> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(err)))
}

fn status_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<CommandStatus> {
    let text: String = row.get(idx)?;
    CommandStatus::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            Box::new(std::io::Error::other(format!("unknown status {text:?}"))),
        )
    })
}

fn command_row(row: &Row<'_>) -> rusqlite::Result<CommandRecord> {
    Ok(CommandRecord {
        command_id: uuid_at(row, 0)?,
        user_id: uuid_at(row, 1)?,
        vehicle_id: uuid_at(row, 2)?,
        command_name: row.get(3)?,
        command_params: json_at(row, 4)?,
        status: status_at(row, 5)?,
        error_message: row.get(6)?,
        submitted_at: time_at(row, 7)?,
        completed_at: opt_time_at(row, 8)?,
        deadline_at: time_at(row, 9)?,
    })
}

fn response_row(row: &Row<'_>) -> rusqlite::Result<ResponseRecord> {
    Ok(ResponseRecord {
        response_id: uuid_at(row, 0)?,
        command_id: uuid_at(row, 1)?,
        sequence_number: row.get(2)?,
        is_final: row.get(3)?,
        response_payload: json_at(row, 4)?,
        received_at: time_at(row, 5)?,
    })
}

const RESPONSE_COLUMNS: &str =
    "id, command_id, sequence_number, is_final, response_payload, received_at";

const RESPONSE_ACTION: &str = "storing a response";

fn insert_command_on(conn: &Connection, command: &CommandRecord) -> Result<(), ServerError> {
    conn.prepare_cached(
        "INSERT INTO commands (id, user_id, vehicle_id, command_name, command_params,
             status, error_message, submitted_at, completed_at, deadline_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            command.command_id.to_string(),
            command.user_id.to_string(),
            command.vehicle_id.to_string(),
            command.command_name,
            command.command_params.to_string(),
            command.status.as_str(),
            command.error_message,
            to_millis(command.submitted_at),
            command.completed_at.map(to_millis),
            to_millis(command.deadline_at),
        ])
    })
    .map(drop)
    .map_err(ServerError::db("storing a command"))
}

fn start_command_on(conn: &Connection, command_id: Uuid) -> Result<bool, ServerError> {
    conn.prepare_cached(
        "UPDATE commands SET status = 'in_progress' WHERE id = ?1 AND status = 'pending'",
    )
    .and_then(|mut stmt| stmt.execute(params![command_id.to_string()]))
    .map(|n| n == 1)
    .map_err(ServerError::db("starting a command"))
}

fn fail_command_on(
    conn: &Connection,
    command_id: Uuid,
    error: &str,
    now: DateTime<Utc>,
) -> Result<bool, ServerError> {
    conn.prepare_cached(
        "UPDATE commands SET status = 'failed', error_message = ?2, completed_at = ?3
         WHERE id = ?1 AND status IN ('pending', 'in_progress')",
    )
    .and_then(|mut stmt| stmt.execute(params![command_id.to_string(), error, to_millis(now)]))
    .map(|n| n == 1)
    .map_err(ServerError::db("failing a command"))
}

/// The statements of [`Store::add_response`], inside the caller's transaction (which the
/// caller commits only for [`ResponseOutcome::Stored`]).
fn add_response_on(
    conn: &Connection,
    command_id: Uuid,
    sequence_number: u32,
    is_final: bool,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<ResponseOutcome, ServerError> {
    let id = command_id.to_string();
    let status = conn
        .prepare_cached("SELECT status FROM commands WHERE id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![id], |row| status_at(row, 0))
                .optional()
        })
        .map_err(ServerError::db(RESPONSE_ACTION))?;
    match status {
        None => return Ok(ResponseOutcome::UnknownCommand),
        Some(s) if s.is_terminal() => return Ok(ResponseOutcome::CommandEnded(s)),
        Some(_) => {}
    }
    let record = ResponseRecord {
        response_id: Uuid::new_v4(),
        command_id,
        sequence_number,
        is_final,
        response_payload: payload.clone(),
        received_at: now,
    };
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO command_responses
                 (id, command_id, sequence_number, is_final, response_payload, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                record.response_id.to_string(),
                id,
                sequence_number,
                is_final,
                payload.to_string(),
                to_millis(now)
            ])
        })
        .map_err(ServerError::db(RESPONSE_ACTION))?;
    if inserted == 0 {
        return Ok(ResponseOutcome::Duplicate);
    }
    let status = if is_final { "completed" } else { "in_progress" };
    conn.prepare_cached(
        "UPDATE commands SET status = ?2,
             completed_at = CASE WHEN ?2 = 'completed' THEN ?3 ELSE completed_at END
         WHERE id = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![id, status, to_millis(now)]))
    .map_err(ServerError::db(RESPONSE_ACTION))?;
    Ok(ResponseOutcome::Stored(record))
}

fn apply_command_write(
    conn: &Connection,
    write: &CommandWrite,
) -> Result<CommandWritten, ServerError> {
    Ok(match write {
        CommandWrite::Insert(command) => {
            insert_command_on(conn, command)?;
            CommandWritten::Inserted
        }
        CommandWrite::Start(id) => CommandWritten::Started(start_command_on(conn, *id)?),
        CommandWrite::Response {
            command_id,
            start,
            sequence_number,
            is_final,
            payload,
            at,
        } => {
            let started = *start && start_command_on(conn, *command_id)?;
            let outcome =
                add_response_on(conn, *command_id, *sequence_number, *is_final, payload, *at)?;
            // Not stored: the savepoint rolls the start back too.
            let started = started && matches!(outcome, ResponseOutcome::Stored(_));
            CommandWritten::Response(started, outcome)
        }
        CommandWrite::Fail {
            command_id,
            error,
            at,
        } => CommandWritten::Failed(fail_command_on(conn, *command_id, error, *at)?),
    })
}

impl Store {
    /// Stores a new command (status `pending`).
    pub fn insert_command(&self, command: &CommandRecord) -> Result<(), ServerError> {
        insert_command_on(&self.lock(), command)
    }

    /// `pending → in_progress`. `false` when the command is not pending (already started or
    /// ended).
    pub fn start_command(&self, command_id: Uuid) -> Result<bool, ServerError> {
        start_command_on(&self.lock(), command_id)
    }

    /// Ends a command as `failed` with `error`. `false` when it had already ended.
    pub fn fail_command(
        &self,
        command_id: Uuid,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        fail_command_on(&self.lock(), command_id, error, now)
    }

    /// Stores a response of a running command and, when it is final, completes the command,
    /// in one transaction.
    pub fn add_response(
        &self,
        command_id: Uuid,
        sequence_number: u32,
        is_final: bool,
        payload: &Value,
        now: DateTime<Utc>,
    ) -> Result<ResponseOutcome, ServerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db(RESPONSE_ACTION))?;
        let outcome = add_response_on(&tx, command_id, sequence_number, is_final, payload, now)?;
        if matches!(outcome, ResponseOutcome::Stored(_)) {
            tx.commit().map_err(ServerError::db(RESPONSE_ACTION))?;
        }
        Ok(outcome)
    }

    /// Applies `writes` in order in one transaction (a group commit of the commands
    /// service): each as its one-at-a-time method would, inside a savepoint, so one that
    /// fails leaves no trace and does not fail the others. The outer `Err` is a failed
    /// transaction (nothing of the batch was stored); otherwise one result per write, all
    /// committed.
    pub fn write_commands(
        &self,
        writes: &[CommandWrite],
    ) -> Result<Vec<Result<CommandWritten, ServerError>>, ServerError> {
        const ACTION: &str = "storing command changes";
        let mut conn = self.lock();
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db(ACTION))?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            let savepoint = tx.savepoint().map_err(ServerError::db(ACTION))?;
            let result = apply_command_write(&savepoint, write);
            // A write that stored nothing (or failed) is rolled back with its savepoint.
            let keep = matches!(
                &result,
                Ok(CommandWritten::Inserted
                    | CommandWritten::Started(_)
                    | CommandWritten::Failed(_)
                    | CommandWritten::Response(_, ResponseOutcome::Stored(_)))
            );
            if keep {
                savepoint.commit().map_err(ServerError::db(ACTION))?;
            }
            results.push(result);
        }
        tx.commit().map_err(ServerError::db(ACTION))?;
        Ok(results)
    }

    /// One of the user's commands; `None` if it is not theirs or unknown.
    pub fn get_command(
        &self,
        user_id: Uuid,
        command_id: Uuid,
    ) -> Result<Option<CommandRecord>, ServerError> {
        self.lock()
            .prepare_cached(&format!(
                "SELECT {COMMAND_COLUMNS} FROM commands WHERE id = ?1 AND user_id = ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![command_id.to_string(), user_id.to_string()],
                    command_row,
                )
                .optional()
            })
            .map_err(ServerError::db("reading a command"))
    }

    /// A command by id, whoever owns it (the commands service).
    pub fn command_by_id(&self, command_id: Uuid) -> Result<Option<CommandRecord>, ServerError> {
        self.lock()
            .prepare_cached(&format!(
                "SELECT {COMMAND_COLUMNS} FROM commands WHERE id = ?1"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![command_id.to_string()], command_row)
                    .optional()
            })
            .map_err(ServerError::db("reading a command"))
    }

    /// The user's commands, newest first, filtered and paged by `query`.
    pub fn list_commands(
        &self,
        user_id: Uuid,
        query: &CommandQuery,
    ) -> Result<Vec<CommandRecord>, ServerError> {
        const ACTION: &str = "listing commands";
        let (before_at, before_id) = match query.before {
            Some((at, id)) => (Some(at), Some(id.to_string())),
            None => (None, None),
        };
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COMMAND_COLUMNS} FROM commands
                 WHERE user_id = ?1
                   AND (?2 IS NULL OR vehicle_id = ?2)
                   AND (?3 IS NULL OR status = ?3)
                   AND (?4 IS NULL OR submitted_at < ?4 OR (submitted_at = ?4 AND id < ?5))
                 ORDER BY submitted_at DESC, id DESC
                 LIMIT ?6"
            ))
            .map_err(ServerError::db(ACTION))?;
        let rows = stmt
            .query_map(
                params![
                    user_id.to_string(),
                    query.vehicle_id.map(|v| v.to_string()),
                    query.status.map(CommandStatus::as_str),
                    before_at,
                    before_id,
                    i64::try_from(query.limit).unwrap_or(i64::MAX),
                ],
                command_row,
            )
            .map_err(ServerError::db(ACTION))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db(ACTION))
    }

    /// A command's responses with a sequence number above `after`, in order.
    pub fn responses_after(
        &self,
        command_id: Uuid,
        after: u32,
    ) -> Result<Vec<ResponseRecord>, ServerError> {
        const ACTION: &str = "reading responses";
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RESPONSE_COLUMNS} FROM command_responses
                 WHERE command_id = ?1 AND sequence_number > ?2 ORDER BY sequence_number"
            ))
            .map_err(ServerError::db(ACTION))?;
        let rows = stmt
            .query_map(params![command_id.to_string(), after], response_row)
            .map_err(ServerError::db(ACTION))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db(ACTION))
    }

    /// Commands still `pending` or `in_progress` (after a restart: what the previous process
    /// left open).
    pub fn open_commands(&self) -> Result<Vec<CommandRecord>, ServerError> {
        const ACTION: &str = "listing open commands";
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COMMAND_COLUMNS} FROM commands
                 WHERE status IN ('pending', 'in_progress') ORDER BY submitted_at, id"
            ))
            .map_err(ServerError::db(ACTION))?;
        let rows = stmt
            .query_map([], command_row)
            .map_err(ServerError::db(ACTION))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db(ACTION))
    }
}
