//! Stream-log work of the driver, run in background tasks so the driver never waits for I/O.
//!
//! Appends go through one *lane* per stream: a task that stores that stream's appends in
//! request order (the engine's contract), merging the requests queued behind the appends under
//! way into one log append (one SQLite transaction, one Redis script call) — under load the
//! batches grow instead of the queue. On Redis a lane does not wait for an append's answer
//! before sending the next one (up to [`PIPELINE_DEPTH`] under way): each is conditioned on the
//! one before it having stored its items (`docs/storage.md`, pipelined appends), and one that
//! found it had not is sent again once that one is settled. Its results are reported per
//! request, in order.
//!
//! After a failed append, every request of the same *generation* still queued is skipped: they
//! were issued before the engine learnt of the failure (which resets the producer), and storing
//! them after a hole would turn the hole into a `missing` gap. The driver starts a new
//! generation when it feeds the failure to the engine.

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use relay_core::Error as RelayError;
use relay_core::engine::{Direction, GroupId};
use relay_core::log::{
    AnyStreamLog, AppendOutcome, Item, Pipelined, ReadBatch, Retention, Seq, StreamLog, Trimmed,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::metrics::{RelayMetrics, TrimLabels};

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

/// Appends one lane has under way at once on Redis.
const PIPELINE_DEPTH: usize = 4;

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
        let labels = TrimLabels {
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

/// Requests of one lane merged into one log append.
#[derive(Debug)]
struct Merged {
    /// The generation of its first request.
    generation: u64,
    /// Last seq of each request, to split the merged outcome.
    lasts: Vec<Seq>,
    /// Every request's items, in order.
    items: Vec<Item>,
}

impl Merged {
    /// Takes `first` and the requests queued behind it (up to [`MAX_MERGED_ITEMS`] items),
    /// without those of a failed generation; `None` when nothing is left.
    fn take(
        first: AppendRequest,
        requests: &mut mpsc::UnboundedReceiver<AppendRequest>,
        failed_generation: Option<u64>,
    ) -> Option<Self> {
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
        let generation = batch.first()?.generation;
        let lasts = batch
            .iter()
            .map(|r| r.items.last().map_or(0, |i| i.seq))
            .collect();
        let items = if batch.len() == 1 {
            batch.pop().map(|r| r.items).unwrap_or_default()
        } else {
            batch.into_iter().flat_map(|r| r.items).collect()
        };
        Some(Self {
            generation,
            lasts,
            items,
        })
    }

    /// The highest seq of its items.
    fn last_seq(&self) -> Seq {
        self.lasts.iter().copied().max().unwrap_or(0)
    }

    /// The outcome of each merged request, in request order, from the merged append's.
    fn split(&self, outcome: AppendOutcome) -> Vec<AppendOutcome> {
        let mut outcomes = Vec::with_capacity(self.lasts.len());
        let mut previous = 0;
        for &last in &self.lasts {
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
        outcomes
    }
}

/// One merged append under way, and what it found.
type InFlight = BoxFuture<'static, (Merged, Result<Pipelined, RelayError>)>;

/// Sends `merged`: on Redis pipelined behind the append whose last seq is `after` (0: none
/// under way), elsewhere as a plain append.
fn send(log: &AnyStreamLog, key: &str, merged: Merged, after: Seq) -> InFlight {
    let log = log.clone();
    let key = key.to_owned();
    Box::pin(async move {
        let result = match &log {
            AnyStreamLog::Redis(redis) => redis.append_after(&key, &merged.items, after).await,
            other => other.append(&key, &merged.items).await.map(Pipelined::Done),
        };
        (merged, result)
    })
}

/// The lane task: sends each merged append as soon as it is taken — on Redis up to
/// [`PIPELINE_DEPTH`] under way, each conditioned on the one before it
/// ([`relay_core::log::RedisStreamLog::append_after`]), elsewhere one at a time — and reports their results in
/// order. An append that found its predecessor not stored ([`Pipelined::Behind`]) is sent
/// again once that one is settled: the predecessor was stored by then (or failed, and then
/// the append is of the failed generation and dropped).
async fn lane(
    log: AnyStreamLog,
    group: GroupId,
    direction: Direction,
    mut requests: mpsc::UnboundedReceiver<AppendRequest>,
    events: mpsc::UnboundedSender<Event>,
    metrics: RelayMetrics,
) {
    let key = direction.stream_key(&group);
    let depth = if matches!(log, AnyStreamLog::Redis(_)) {
        PIPELINE_DEPTH
    } else {
        1
    };
    let mut failed_generation: Option<u64> = None;
    let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
    // The last seq of the newest append sent (under way while `in_flight` is not empty).
    let mut newest: Seq = 0;
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((merged, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let generation = merged.generation;
                let Some(done) =
                    settle(&log, &key, merged, result, &mut failed_generation, &metrics).await
                else {
                    continue;
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
            request = requests.recv(), if open && in_flight.len() < depth => {
                let Some(first) = request else {
                    open = false;
                    continue;
                };
                let Some(merged) = Merged::take(first, &mut requests, failed_generation) else {
                    continue;
                };
                let after = if in_flight.is_empty() { 0 } else { newest };
                newest = merged.last_seq();
                in_flight.push_back(send(&log, &key, merged, after));
            }
        }
    }
}

/// The result of one merged append, once every append before it is settled; `None` when it
/// is of a generation that already failed (the engine reset its producer: nothing to report).
async fn settle(
    log: &AnyStreamLog,
    key: &str,
    merged: Merged,
    result: Result<Pipelined, RelayError>,
    failed_generation: &mut Option<u64>,
    metrics: &RelayMetrics,
) -> Option<AppendDone> {
    if failed_generation.is_some_and(|failed| merged.generation <= failed) {
        if let Ok(Pipelined::Done(outcome)) = &result {
            metrics.frames_stored.inc_by(outcome.stored);
        }
        return None;
    }
    let result = match result {
        // The append before it is settled now, and was stored: send it again.
        Ok(Pipelined::Behind { .. }) => log.append(key, &merged.items).await,
        Ok(Pipelined::Done(outcome)) => Ok(outcome),
        Err(err) => Err(err),
    };
    Some(match result {
        Ok(outcome) => {
            metrics.frames_stored.inc_by(outcome.stored);
            AppendDone::Stored(merged.split(outcome))
        }
        Err(err) => {
            metrics.storage_errors.inc();
            tracing::error!(stream = %key, %err, items = merged.items.len(), "relay append failed");
            *failed_generation = Some(merged.generation);
            AppendDone::Failed(err.to_string())
        }
    })
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

#[cfg(test)]
mod tests {
    use relay_core::log::RedisStreamLog;
    use tether_testkit::TestResult;
    use tether_testkit::redis::RedisNamespace;

    use super::*;
    use crate::metrics::ServerMetrics;

    fn items(seqs: std::ops::RangeInclusive<Seq>) -> Vec<Item> {
        seqs.map(|seq| Item {
            seq,
            ts_ms: 1,
            payload: bytes::Bytes::from(seq.to_string()),
        })
        .collect()
    }

    /// Requests sent one by one, each while the ones before it are under way (pipelined), some
    /// partly stored already by another writer (so that their first try is refused and the
    /// ones behind them find their predecessor not stored): every request is answered in
    /// order, the acks never go down, and the stream holds every seq once.
    #[tokio::test]
    async fn a_pipelined_lane_stores_everything_once_and_answers_in_order() -> TestResult {
        let ns = RedisNamespace::new("lane-pipeline");
        let redis = RedisStreamLog::connect(&ns.url, &ns.prefix).await?;
        let group = GroupId::new("g");
        let key = Direction::AToB.stream_key(&group);
        // Another instance stored 1..=15 already.
        redis.append(&key, &items(1..=15)).await?;
        let log = AnyStreamLog::Redis(Box::new(redis.clone()));
        let metrics = RelayMetrics::register(&mut ServerMetrics::new());
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (tx, task) = spawn_lane(
            log,
            group.clone(),
            Direction::AToB,
            events_tx,
            metrics.clone(),
        );
        let requests = 40u64;
        for k in 0..requests {
            tx.send(AppendRequest {
                generation: 0,
                items: items(k * 10 + 1..=k * 10 + 10),
            })?;
            // Let the lane send it before the next one comes (no merging).
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        let mut answered = 0;
        let mut ack = 0;
        while answered < requests {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
                .await?
                .ok_or("the lane ended early")?;
            let Event::Appended {
                generation, done, ..
            } = event
            else {
                continue;
            };
            assert_eq!(generation, 0);
            let AppendDone::Stored(outcomes) = done else {
                return Err(format!("an append failed: {done:?}").into());
            };
            for outcome in outcomes {
                assert!(outcome.ack >= ack, "ack went down: {} < {ack}", outcome.ack);
                ack = outcome.ack;
                answered += 1;
            }
        }
        assert_eq!(ack, requests * 10);
        task.await?;
        assert_eq!(metrics.frames_stored.get(), requests * 10 - 15);
        let read = redis.read(&key, 0, 1000).await?;
        assert_eq!(read.gap, None);
        assert_eq!(
            read.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
            (1..=requests * 10).collect::<Vec<_>>()
        );
        Ok(())
    }
}
