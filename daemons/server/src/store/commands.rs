//! Vehicle commands and their responses. A response row is committed before anyone is told
//! about it (the commands service publishes after these calls return); a command's final
//! response and its `completed` status are one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::Store;
use super::sql::{self, DbError, FromValue, Row, Sql, args, from_columns};
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

/// A new id for a command or response row: a UUID version 7 (RFC 9562: the Unix time in
/// milliseconds, then 74 random bits). Ids made one after another sort next to each other, so
/// the indexes on them grow at their end: a group commit of many commands then writes a few
/// index pages instead of one random page per row and index.
pub fn new_row_id() -> Uuid {
    let millis = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid()
}

const COMMAND_COLUMNS: &str = "id, user_id, vehicle_id, command_name, command_params, status, \
                               error_message, submitted_at, completed_at, deadline_at";

impl FromValue for CommandStatus {
    fn from_value(value: &sql::Value) -> Result<Self, String> {
        let text = String::from_value(value)?;
        CommandStatus::parse(&text).ok_or_else(|| format!("unknown status {text:?}"))
    }
}

fn command_row(row: &Row) -> Result<CommandRecord, DbError> {
    Ok(from_columns!(row, 0 => CommandRecord {
        command_id, user_id, vehicle_id, command_name, command_params, status, error_message, submitted_at, completed_at, deadline_at
    }))
}

fn response_row(row: &Row) -> Result<ResponseRecord, DbError> {
    Ok(from_columns!(row, 0 => ResponseRecord {
        response_id, command_id, sequence_number, is_final, response_payload, received_at
    }))
}

const RESPONSE_COLUMNS: &str =
    "id, command_id, sequence_number, is_final, response_payload, received_at";

const RESPONSE_ACTION: &str = "storing a response";
const WRITES_ACTION: &str = "storing command changes";

/// Inserts `command`, owned by `instance` (the process that queues it).
fn insert_command_on(
    sql: &mut dyn Sql,
    command: &CommandRecord,
    instance: &str,
) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO commands (id, user_id, vehicle_id, command_name, command_params,
             status, error_message, submitted_at, completed_at, deadline_at, instance)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        args![
            command.command_id,
            command.user_id,
            command.vehicle_id,
            &command.command_name,
            &command.command_params,
            command.status.as_str(),
            command.error_message.as_deref(),
            command.submitted_at,
            command.completed_at,
            command.deadline_at,
            instance,
        ],
    )
    .map(drop)
}

fn start_command_on(sql: &mut dyn Sql, command_id: Uuid) -> Result<bool, DbError> {
    sql.execute(
        "UPDATE commands SET status = 'in_progress' WHERE id = $1 AND status = 'pending'",
        args![command_id],
    )
    .map(|n| n == 1)
}

fn fail_command_on(
    sql: &mut dyn Sql,
    command_id: Uuid,
    error: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    sql.execute(
        "UPDATE commands SET status = 'failed', error_message = $2, completed_at = $3
         WHERE id = $1 AND status IN ('pending', 'in_progress')",
        args![command_id, error, now],
    )
    .map(|n| n == 1)
}

/// The statements of [`Store::add_response`], inside the caller's transaction. They write
/// only for [`ResponseOutcome::Stored`] (the status is read first, and a duplicate inserts
/// nothing), so any other outcome leaves no trace without a rollback. The `bool` is whether
/// the command was `pending` (the response started it: the same update moves it on).
fn add_response_on(
    sql: &mut dyn Sql,
    command_id: Uuid,
    sequence_number: u32,
    is_final: bool,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<(bool, ResponseOutcome), DbError> {
    // Locked (PostgreSQL), so a response and a failure racing on two instances end the
    // command once.
    let status = sql.query_opt_map(
        &format!(
            "SELECT status FROM commands WHERE id = $1{}",
            sql.for_update()
        ),
        args![command_id],
        |row| row.get::<CommandStatus>(0),
    )?;
    let was_pending = match status {
        None => return Ok((false, ResponseOutcome::UnknownCommand)),
        Some(s) if s.is_terminal() => return Ok((false, ResponseOutcome::CommandEnded(s))),
        Some(s) => s == CommandStatus::Pending,
    };
    let record = ResponseRecord {
        response_id: new_row_id(),
        command_id,
        sequence_number,
        is_final,
        response_payload: payload.clone(),
        received_at: sql::stored_time(now),
    };
    let inserted = sql.execute(
        "INSERT INTO command_responses
             (id, command_id, sequence_number, is_final, response_payload, received_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (command_id, sequence_number) DO NOTHING",
        args![
            record.response_id,
            command_id,
            sequence_number,
            is_final,
            payload,
            now
        ],
    )?;
    if inserted == 0 {
        return Ok((false, ResponseOutcome::Duplicate));
    }
    if is_final {
        sql.execute(
            "UPDATE commands SET status = 'completed', completed_at = $2 WHERE id = $1",
            args![command_id, now],
        )?;
    } else {
        sql.execute(
            "UPDATE commands SET status = 'in_progress' WHERE id = $1",
            args![command_id],
        )?;
    }
    Ok((was_pending, ResponseOutcome::Stored(record)))
}

fn apply_command_write(
    sql: &mut dyn Sql,
    write: &CommandWrite,
    instance: &str,
) -> Result<CommandWritten, DbError> {
    Ok(match write {
        CommandWrite::Insert(command) => {
            insert_command_on(sql, command, instance)?;
            CommandWritten::Inserted
        }
        CommandWrite::Start(id) => CommandWritten::Started(start_command_on(sql, *id)?),
        CommandWrite::Response {
            command_id,
            start,
            sequence_number,
            is_final,
            payload,
            at,
        } => {
            // The response's own status update starts a pending command (`in_progress`, or
            // `completed` at once for a final one).
            let (was_pending, outcome) =
                add_response_on(sql, *command_id, *sequence_number, *is_final, payload, *at)?;
            CommandWritten::Response(*start && was_pending, outcome)
        }
        CommandWrite::Fail {
            command_id,
            error,
            at,
        } => CommandWritten::Failed(fail_command_on(sql, *command_id, error, *at)?),
    })
}

impl Store {
    /// Stores a new command (status `pending`), owned by this process's
    /// [`instance`](Store::instance).
    pub fn insert_command(&self, command: &CommandRecord) -> Result<(), ServerError> {
        let instance = self.instance();
        self.run("storing a command", |sql| {
            insert_command_on(sql, command, instance)
        })
    }

    /// `pending → in_progress`. `false` when the command is not pending (already started or
    /// ended).
    pub fn start_command(&self, command_id: Uuid) -> Result<bool, ServerError> {
        self.run("starting a command", |sql| {
            start_command_on(sql, command_id)
        })
    }

    /// Ends a command as `failed` with `error`. `false` when it had already ended.
    pub fn fail_command(
        &self,
        command_id: Uuid,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.run("failing a command", |sql| {
            fail_command_on(sql, command_id, error, now)
        })
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
        self.transaction(RESPONSE_ACTION, |sql| {
            add_response_on(sql, command_id, sequence_number, is_final, payload, now)
                .map(|(_, outcome)| outcome)
        })
    }

    /// Applies `writes` in order in one transaction (a group commit of the commands
    /// service): each as its one-at-a-time method would, so one that fails leaves no trace
    /// and does not fail the others. The outer `Err` is a failed transaction (nothing of the
    /// batch was stored); otherwise one result per write, all committed.
    ///
    /// A change writes either all of its rows or none unless one of its statements fails
    /// (every outcome but [`ResponseOutcome::Stored`] is decided before anything is written),
    /// so the batch is first applied without savepoints. When a statement of any change
    /// fails, that transaction is rolled back and the batch applied again with each change in
    /// a savepoint of its own ([`Store::write_commands_isolated`]).
    pub fn write_commands(
        &self,
        writes: &[CommandWrite],
    ) -> Result<Vec<Result<CommandWritten, ServerError>>, ServerError> {
        let instance = self.instance();
        let together = self.transaction_or_refuse(WRITES_ACTION, |sql| {
            let mut results = Vec::with_capacity(writes.len());
            for write in writes {
                match apply_command_write(sql, write, instance) {
                    Ok(written) => results.push(Ok(written)),
                    // Rolled back: applied again change by change.
                    Err(_) => return Ok(Err(())),
                }
            }
            Ok(Ok(results))
        })?;
        match together {
            Ok(results) => Ok(results),
            Err(()) => self.write_commands_isolated(writes),
        }
    }

    /// [`Store::write_commands`] with each change in a savepoint, so a change whose
    /// statement fails is rolled back alone.
    fn write_commands_isolated(
        &self,
        writes: &[CommandWrite],
    ) -> Result<Vec<Result<CommandWritten, ServerError>>, ServerError> {
        let instance = self.instance();
        self.transaction(WRITES_ACTION, |sql| {
            let mut results = Vec::with_capacity(writes.len());
            for write in writes {
                sql.execute("SAVEPOINT command_write", &[])?;
                let result = apply_command_write(sql, write, instance);
                if result.is_err() {
                    sql.execute("ROLLBACK TO SAVEPOINT command_write", &[])?;
                }
                sql.execute("RELEASE SAVEPOINT command_write", &[])?;
                let action = match write {
                    CommandWrite::Insert(_) => "storing a command",
                    CommandWrite::Start(_) => "starting a command",
                    CommandWrite::Response { .. } => RESPONSE_ACTION,
                    CommandWrite::Fail { .. } => "failing a command",
                };
                results.push(result.map_err(ServerError::db(action)));
            }
            Ok(results)
        })
    }

    /// One of the user's commands; `None` if it is not theirs or unknown.
    pub fn get_command(
        &self,
        user_id: Uuid,
        command_id: Uuid,
    ) -> Result<Option<CommandRecord>, ServerError> {
        self.read_row(
            "reading a command",
            &format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE id = $1 AND user_id = $2"),
            args![command_id, user_id],
            command_row,
        )
    }

    /// A command by id, whoever owns it (the commands service).
    pub fn command_by_id(&self, command_id: Uuid) -> Result<Option<CommandRecord>, ServerError> {
        self.read_row(
            "reading a command",
            &format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE id = $1"),
            args![command_id],
            command_row,
        )
    }

    /// The user's commands, newest first, filtered and paged by `query`.
    pub fn list_commands(
        &self,
        user_id: Uuid,
        query: &CommandQuery,
    ) -> Result<Vec<CommandRecord>, ServerError> {
        // The filters given become conditions (PostgreSQL cannot type a `$n IS NULL` test).
        let mut args: Vec<sql::Value> = vec![user_id.into()];
        let mut filter = String::from("user_id = $1");
        if let Some(vehicle) = query.vehicle_id {
            args.push(vehicle.into());
            filter.push_str(&format!(" AND vehicle_id = ${}", args.len()));
        }
        if let Some(status) = query.status {
            args.push(status.as_str().into());
            filter.push_str(&format!(" AND status = ${}", args.len()));
        }
        if let Some((at_ms, id)) = query.before {
            let at = DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
            args.push(at.into());
            args.push(id.into());
            let (at, id) = (args.len() - 1, args.len());
            filter.push_str(&format!(
                " AND (submitted_at < ${at} OR (submitted_at = ${at} AND id < ${id}))"
            ));
        }
        args.push(i64::try_from(query.limit).unwrap_or(i64::MAX).into());
        let limit = args.len();
        self.read_rows(
            "listing commands",
            &format!(
                "SELECT {COMMAND_COLUMNS} FROM commands WHERE {filter}
                 ORDER BY submitted_at DESC, id DESC LIMIT ${limit}"
            ),
            &args,
            command_row,
        )
    }

    /// A command's responses with a sequence number above `after`, in order.
    pub fn responses_after(
        &self,
        command_id: Uuid,
        after: u32,
    ) -> Result<Vec<ResponseRecord>, ServerError> {
        self.read_rows(
            "reading responses",
            &format!(
                "SELECT {RESPONSE_COLUMNS} FROM command_responses
                 WHERE command_id = $1 AND sequence_number > $2 ORDER BY sequence_number"
            ),
            args![command_id, after],
            response_row,
        )
    }

    /// Commands still `pending` or `in_progress` (after a restart: what the previous process
    /// left open).
    pub fn open_commands(&self) -> Result<Vec<CommandRecord>, ServerError> {
        self.read_rows(
            "listing open commands",
            &format!(
                "SELECT {COMMAND_COLUMNS} FROM commands
                 WHERE status IN ('pending', 'in_progress') ORDER BY submitted_at, id"
            ),
            &[],
            command_row,
        )
    }

    /// Every open command with the instance owning it (`None`: stored before owners were
    /// recorded, or by a test), oldest first.
    pub fn open_commands_owned(&self) -> Result<Vec<(CommandRecord, Option<String>)>, ServerError> {
        self.read_rows(
            "listing open commands",
            &format!(
                "SELECT {COMMAND_COLUMNS}, instance FROM commands
                 WHERE status IN ('pending', 'in_progress') ORDER BY submitted_at, id"
            ),
            &[],
            |row| Ok((command_row(row)?, row.get(10)?)),
        )
    }

    /// Makes this process's [`instance`](Store::instance) the owner of an open command
    /// owned by `from` (an instance that is gone). `false` when the command ended or another
    /// instance adopted it first: exactly one adopter wins.
    pub fn adopt_command(&self, command_id: Uuid, from: Option<&str>) -> Result<bool, ServerError> {
        let instance = self.instance();
        self.run("adopting a command", |sql| {
            sql.execute(
                "UPDATE commands SET instance = $2
                 WHERE id = $1 AND status IN ('pending', 'in_progress')
                   AND coalesce(instance, '') = coalesce($3, '')",
                args![command_id, instance, from],
            )
            .map(|n| n == 1)
        })
    }
}
