//! Stream-log work of the driver, run in background tasks so the driver never waits for I/O.
//!
//! Appends go through one *lane* per stream: a task that executes that stream's appends one
//! after the other, in request order (the engine's contract), merging the requests queued
//! behind a running append into one log append (one SQLite transaction, one Redis pipeline) —
//! under load the batches grow instead of the queue. Its results are reported per request, in
//! order.
//!
//! After a failed append, every request of the same *generation* still queued is skipped: they
//! were issued before the engine learnt of the failure (which resets the producer), and storing
//! them after a hole would turn the hole into a `missing` gap. The driver starts a new
//! generation when it feeds the failure to the engine.

use relay_core::Error as RelayError;
use relay_core::engine::{Direction, GroupId};
use relay_core::log::{
    AnyStreamLog, AppendOutcome, Item, ReadBatch, Retention, Seq, StreamLog, Trimmed,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::metrics::{ReasonLabels, RelayMetrics};

/// A storage result or a records fact, reported to the driver by the background tasks it
/// starts (here and in the driver). Defined with the storage tasks, which produce most of them,
/// so that this module needs nothing from the driver.
#[derive(Debug)]
pub(super) enum Event {
    /// An append lane finished one (merged) append.
    Appended {
        group: GroupId,
        direction: Direction,
        generation: u64,
        done: AppendDone,
    },
    /// A read finished.
    Read {
        group: GroupId,
        direction: Direction,
        epoch: u64,
        result: Result<ReadBatch, RelayError>,
    },
    /// A retention trim finished.
    Trimmed {
        group: GroupId,
        direction: Direction,
        result: Result<Vec<Trimmed>, RelayError>,
    },
    /// The records say the group is (de)activated (re-read after a lagging mode feed).
    Activation { group: Uuid, activated: bool },
    /// The group no longer exists in the records.
    GroupGone { group: Uuid },
    /// A background cursor flush finished.
    CursorsFlushed,
    /// The cluster tail read items another instance appended (`super::cluster`): per stream
    /// that had new ones, its group, direction and items.
    Tailed {
        batches: Vec<(GroupId, Direction, Vec<Item>)>,
    },
    /// A cluster presence round finished (`None`: it failed).
    Presence {
        round: Option<super::cluster::PresenceRound>,
    },
}

/// Most items merged into one log append.
const MAX_MERGED_ITEMS: usize = 8192;

/// One append request of the engine.
#[derive(Debug)]
pub(super) struct AppendRequest {
    /// The driver's generation for this stream when the request was issued.
    pub(super) generation: u64,
    /// Items (ascending seqs).
    pub(super) items: Vec<Item>,
}

/// The result of one lane run: one outcome per merged request, or the failure.
#[derive(Debug)]
pub(super) enum AppendDone {
    /// Every merged request's outcome, in request order.
    Stored(Vec<AppendOutcome>),
    /// The append failed; nothing of it was stored.
    Failed(String),
}

/// Starts the append lane of one stream. The task ends once the sender is dropped and the
/// queued appends are done.
pub(super) fn spawn_lane(
    log: AnyStreamLog,
    group: GroupId,
    direction: Direction,
    events: mpsc::UnboundedSender<Event>,
    metrics: RelayMetrics,
) -> (mpsc::UnboundedSender<AppendRequest>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(lane(log, group, direction, rx, events, metrics));
    (tx, task)
}

/// Deletes the streams of a deleted group once its append lanes have finished (so that no
/// append in flight re-creates them), counting the frames discarded with it: `undelivered`
/// (per direction, the engine's backlog at deletion) and everything stored.
pub(super) fn spawn_delete_group(
    log: AnyStreamLog,
    group: GroupId,
    lanes: Vec<JoinHandle<()>>,
    undelivered: u64,
    metrics: RelayMetrics,
) {
    tokio::spawn(async move {
        for lane in lanes {
            let _ = lane.await;
        }
        let mut removed = 0;
        for direction in Direction::BOTH {
            let key = direction.stream_key(&group);
            match log.delete(&key).await {
                Ok(n) => removed += n,
                Err(err) => {
                    metrics.storage_errors.inc();
                    tracing::warn!(stream = %key, %err, "deleting the stream of a deleted group failed");
                }
            }
        }
        let labels = ReasonLabels {
            reason: "group_deleted",
        };
        metrics
            .frames_trimmed
            .get_or_create(&labels)
            .inc_by(removed);
        metrics
            .frames_trimmed_undelivered
            .get_or_create(&labels)
            .inc_by(undelivered);
        tracing::info!(%group, removed, undelivered, "deleted the relay streams of a deleted group");
    });
}

async fn lane(
    log: AnyStreamLog,
    group: GroupId,
    direction: Direction,
    mut requests: mpsc::UnboundedReceiver<AppendRequest>,
    events: mpsc::UnboundedSender<Event>,
    metrics: RelayMetrics,
) {
    let key = direction.stream_key(&group);
    let mut failed_generation: Option<u64> = None;
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        let mut total = batch[0].items.len();
        while total < MAX_MERGED_ITEMS {
            match requests.try_recv() {
                Ok(next) => {
                    total += next.items.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        batch.retain(|r| failed_generation.is_none_or(|failed| r.generation > failed));
        let Some(generation) = batch.first().map(|r| r.generation) else {
            continue;
        };
        // Last seq of each request, to split the merged outcome.
        let lasts: Vec<Seq> = batch
            .iter()
            .map(|r| r.items.last().map_or(0, |i| i.seq))
            .collect();
        let items: Vec<Item> = if batch.len() == 1 {
            batch.pop().map(|r| r.items).unwrap_or_default()
        } else {
            batch.into_iter().flat_map(|r| r.items).collect()
        };
        let done = match log.append(&key, &items).await {
            Ok(outcome) => {
                metrics.frames_stored.inc_by(outcome.stored);
                metrics.frames_duplicate.inc_by(outcome.duplicates);
                let mut outcomes = Vec::with_capacity(lasts.len());
                let mut previous = 0;
                for last in lasts {
                    let ack = outcome.ack.min(last).max(previous);
                    previous = ack;
                    outcomes.push(AppendOutcome {
                        stored: 0,
                        duplicates: 0,
                        ack,
                    });
                }
                // The merged append acknowledged everything up to its head: the last request
                // carries it whole.
                if let Some(last) = outcomes.last_mut() {
                    last.ack = outcome.ack;
                    last.stored = outcome.stored;
                    last.duplicates = outcome.duplicates;
                }
                AppendDone::Stored(outcomes)
            }
            Err(err) => {
                metrics.storage_errors.inc();
                tracing::error!(stream = %key, %err, items = items.len(), "relay append failed");
                failed_generation = Some(generation);
                AppendDone::Failed(err.to_string())
            }
        };
        let event = Event::Appended {
            group: group.clone(),
            direction,
            generation,
            done,
        };
        if events.send(event).is_err() {
            // The driver is gone (shutdown): nothing left to report to.
            return;
        }
    }
}

/// Reads after `after` in the background and reports it as [`Event::Read`].
pub(super) fn spawn_read(
    log: AnyStreamLog,
    group: GroupId,
    direction: Direction,
    after: Seq,
    max: usize,
    epoch: u64,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let key = direction.stream_key(&group);
        let result = log.read(&key, after, max).await;
        let _ = events.send(Event::Read {
            group,
            direction,
            epoch,
            result,
        });
    });
}

/// Applies retention to one stream in the background and reports it as [`Event::Trimmed`].
pub(super) fn spawn_trim(
    log: AnyStreamLog,
    group: GroupId,
    direction: Direction,
    retention: Retention,
    now_ms: u64,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let key = direction.stream_key(&group);
        let result = log.trim(&key, &retention, now_ms).await;
        let _ = events.send(Event::Trimmed {
            group,
            direction,
            result,
        });
    });
}

/// Stores consumer cursors, all at once (SQLite commits them in one transaction, Redis
/// pipelines them). Failures are logged and counted: a lost cursor only causes re-delivery,
/// which agents deduplicate.
pub(super) async fn store_cursors(
    log: &AnyStreamLog,
    cursors: Vec<((GroupId, Direction), Seq)>,
    metrics: &RelayMetrics,
) {
    let stores = cursors
        .into_iter()
        .map(|((group, direction), seq)| async move {
            let key = direction.stream_key(&group);
            let consumer = direction.consumer().to_string();
            if let Err(err) = log.store_cursor(&key, &consumer, seq).await {
                metrics.storage_errors.inc();
                tracing::warn!(stream = %key, %err, seq, "storing a consumer cursor failed");
            }
        });
    futures::future::join_all(stores).await;
}
