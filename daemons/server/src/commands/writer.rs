//! The commands writer: one task that stores the commands service's changes — new commands,
//! starts, responses, failures — in group commits. Callers hand a change over and wait for
//! its outcome; while one batch is being committed the next ones queue up, and the writer
//! takes everything queued (up to [`MAX_BATCH`]) into the next transaction
//! ([`Store::write_commands`]). Under load one commit carries many commands; alone, a change
//! waits for nothing but its own commit.
//!
//! A caller gets its outcome only after the transaction holding its change committed, so
//! "stored before published" and "202 only for a stored command" hold as with one commit per
//! change. One change failing does not fail the others of its batch (each runs in its own
//! savepoint); a failed commit fails every change of the batch.
//!
//! Changes are applied in the order they were handed over ([`CommandWriter::queue`] hands
//! one over without waiting, so a command's insert and a response queued right after it can
//! share one commit).
//!
//! What it does not do: it does not retry, and it serves only the commands service (other
//! store writes keep their own transactions).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::ServerError;
use crate::store::{CommandWrite, CommandWritten, Store};

use super::metrics::CommandMetrics;

/// Most changes in one transaction.
pub const MAX_BATCH: usize = 1024;

struct Pending {
    write: CommandWrite,
    reply: oneshot::Sender<Result<CommandWritten, ServerError>>,
}

/// Hands changes to the writer task (cheap to clone). The task ends when every handle is
/// dropped, after storing what was handed over.
#[derive(Debug, Clone)]
pub struct CommandWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl CommandWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Arc<Store>, metrics: CommandMetrics) -> CommandWriter {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx, metrics));
        CommandWriter { queue }
    }

    /// Stores `write` (in the next group commit) and returns what it did.
    pub async fn write(&self, write: CommandWrite) -> Result<CommandWritten, ServerError> {
        self.queue(write).wait().await
    }

    /// Hands `write` over now and returns its outcome to await: changes handed over later
    /// are applied after it (in the same group commit or a later one). What is stored does
    /// not depend on the outcome being awaited.
    pub fn queue(&self, write: CommandWrite) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        Outcome(
            self.queue
                .send(Pending { write, reply })
                .map(|()| outcome)
                .map_err(|_| stopped()),
        )
    }
}

/// The outcome of a change handed over with [`CommandWriter::queue`]: resolves once the group
/// commit holding it ended.
#[derive(Debug)]
pub struct Outcome(Result<oneshot::Receiver<Result<CommandWritten, ServerError>>, ServerError>);

impl Outcome {
    /// What the change did, once its group commit ended.
    pub async fn wait(self) -> Result<CommandWritten, ServerError> {
        self.0?.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ServerError {
    ServerError::TaskFailed {
        task: "command writer",
        detail: "the writer stopped".to_owned(),
    }
}

async fn run(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Pending>, metrics: CommandMetrics) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (writes, replies): (Vec<CommandWrite>, Vec<_>) =
            batch.drain(..).map(|p| (p.write, p.reply)).unzip();
        metrics.write_batches.inc();
        metrics.writes.inc_by(writes.len() as u64);
        match store.call(move |s| s.write_commands(&writes)).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                tracing::error!(%err, changes = replies.len(), "storing a batch of command changes failed");
                let detail = err.to_string();
                for reply in replies {
                    let _ = reply.send(Err(ServerError::TaskFailed {
                        task: "storage",
                        detail: detail.clone(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::store::{CommandRecord, CommandStatus, ResponseOutcome};

    fn command(user_id: Uuid, vehicle_id: Uuid) -> CommandRecord {
        let now = Utc::now();
        CommandRecord {
            command_id: Uuid::new_v4(),
            user_id,
            vehicle_id,
            command_name: "ReadDTC".to_owned(),
            command_params: json!({}),
            status: CommandStatus::Pending,
            error_message: None,
            submitted_at: now,
            completed_at: None,
            deadline_at: now + chrono::Duration::seconds(60),
        }
    }

    /// A store in a temporary directory with one user and one vehicle, and a writer on it.
    #[allow(clippy::type_complexity)]
    fn fixture() -> anyhow::Result<(
        tempfile::TempDir,
        Arc<Store>,
        crate::store::User,
        crate::store::Vehicle,
        CommandMetrics,
        CommandWriter,
    )> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open_in(dir.path())?);
        let user = store.ensure_user("writer", Utc::now())?;
        let vehicle = store
            .create_vehicle(user.id, "v", None, None, &[], Utc::now())?
            .map_err(|r| anyhow::anyhow!("{r:?}"))?;
        let metrics = CommandMetrics::default();
        let writer = CommandWriter::spawn(Arc::clone(&store), metrics.clone());
        Ok((dir, store, user, vehicle, metrics, writer))
    }

    /// Changes handed over together share commits; one that fails (a command of a vehicle
    /// that does not exist) fails alone; responses start and complete their commands.
    #[tokio::test]
    async fn changes_share_commits_and_fail_alone() -> anyhow::Result<()> {
        let (_dir, store, user, vehicle, metrics, writer) = fixture()?;

        let mut inserts = tokio::task::JoinSet::new();
        for i in 0..200 {
            let vehicle_id = if i == 100 { Uuid::new_v4() } else { vehicle.id };
            let record = command(user.id, vehicle_id);
            let writer = writer.clone();
            inserts.spawn(async move {
                let id = record.command_id;
                (id, i, writer.write(CommandWrite::Insert(record)).await)
            });
        }
        let mut stored = Vec::new();
        while let Some(joined) = inserts.join_next().await {
            let (id, i, result) = joined?;
            if i == 100 {
                assert!(result.is_err(), "an unknown vehicle's command was stored");
                assert_eq!(store.command_by_id(id)?, None);
            } else {
                assert_eq!(result?, CommandWritten::Inserted);
                stored.push(id);
            }
        }
        assert_eq!(stored.len(), 199);
        let batches = metrics.write_batches.get();
        assert!(batches < 20, "200 changes took {batches} commits");
        assert_eq!(metrics.writes.get(), 200);

        let mut responses = tokio::task::JoinSet::new();
        for &id in &stored {
            let writer = writer.clone();
            responses.spawn(async move {
                writer
                    .write(CommandWrite::Response {
                        command_id: id,
                        start: true,
                        sequence_number: 1,
                        is_final: true,
                        payload: json!({"dtcs": []}),
                        at: Utc::now(),
                    })
                    .await
            });
        }
        while let Some(joined) = responses.join_next().await {
            match joined?? {
                CommandWritten::Response(true, ResponseOutcome::Stored(r)) => {
                    assert_eq!(r.sequence_number, 1);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for &id in &stored {
            let row = store
                .command_by_id(id)?
                .ok_or_else(|| anyhow::anyhow!("lost"))?;
            assert_eq!(row.status, CommandStatus::Completed);
            assert_eq!(store.responses_after(id, 0)?.len(), 1);
        }

        // An ended command takes nothing more, and a start that did not happen is not
        // reported as one.
        let id = stored[0];
        let again = writer
            .write(CommandWrite::Response {
                command_id: id,
                start: true,
                sequence_number: 2,
                is_final: true,
                payload: json!({}),
                at: Utc::now(),
            })
            .await?;
        assert_eq!(
            again,
            CommandWritten::Response(
                false,
                ResponseOutcome::CommandEnded(CommandStatus::Completed)
            )
        );
        let fail = CommandWrite::Fail {
            command_id: id,
            error: "late".to_owned(),
            at: Utc::now(),
        };
        assert_eq!(writer.write(fail).await?, CommandWritten::Failed(false));
        assert_eq!(store.responses_after(id, 0)?.len(), 1);
        Ok(())
    }

    fn final_response(command_id: Uuid) -> CommandWrite {
        CommandWrite::Response {
            command_id,
            start: true,
            sequence_number: 1,
            is_final: true,
            payload: json!({"dtcs": []}),
            at: Utc::now(),
        }
    }

    /// A response handed over right behind its command's insert (before that committed) is
    /// applied after it — in the same commit when the writer takes both at once — and one
    /// behind an insert that failed stores nothing.
    #[tokio::test]
    async fn a_response_queued_behind_its_insert_is_applied_after_it() -> anyhow::Result<()> {
        let (_dir, store, user, vehicle, metrics, writer) = fixture()?;

        let mut pairs = Vec::new();
        for i in 0..50 {
            let vehicle_id = if i == 25 { Uuid::new_v4() } else { vehicle.id };
            let record = command(user.id, vehicle_id);
            let id = record.command_id;
            let insert = writer.queue(CommandWrite::Insert(record));
            let response = writer.queue(final_response(id));
            pairs.push((i, id, insert, response));
        }
        for (i, id, insert, response) in pairs {
            let (insert, response) = (insert.wait().await, response.wait().await?);
            if i == 25 {
                assert!(insert.is_err(), "an unknown vehicle's command was stored");
                assert_eq!(
                    response,
                    CommandWritten::Response(false, ResponseOutcome::UnknownCommand)
                );
                assert_eq!(store.command_by_id(id)?, None);
                assert!(store.responses_after(id, 0)?.is_empty());
                continue;
            }
            assert_eq!(insert?, CommandWritten::Inserted);
            assert!(
                matches!(
                    response,
                    CommandWritten::Response(true, ResponseOutcome::Stored(_))
                ),
                "{response:?}"
            );
            let row = store
                .command_by_id(id)?
                .ok_or_else(|| anyhow::anyhow!("lost"))?;
            assert_eq!(row.status, CommandStatus::Completed);
        }
        // 100 changes handed over without waiting: far fewer commits than changes.
        assert_eq!(metrics.writes.get(), 100);
        let batches = metrics.write_batches.get();
        assert!(batches < 10, "100 changes took {batches} commits");
        Ok(())
    }
}
