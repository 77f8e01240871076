//! The data plane: `/ws/data`, where dongle agents relay CAN frames between the two sides of a
//! group (protocol: `docs/protocols/data-plane.md`).
//!
//! Layout:
//!
//! * [`conn`] — one task per WebSocket: authorisation of the `hello`, decoding, and a writer
//!   task draining the connection's [`outbox::Outbox`]. Connection tasks never touch the engine
//!   or the stream log directly.
//! * [`driver`] — one task owning the sans-IO [`relay_core::engine::RelayEngine`]. It is fed
//!   by the connection tasks through one bounded channel ([`Command`], one message per frame
//!   *batch*, never per frame), executes the engine's storage requests against the stream log
//!   in background tasks (appends of one stream in order through its [`storage`] lane, which
//!   merges queued batches into one log append), feeds the results back, and routes the
//!   engine's outputs to the connections' outboxes without ever waiting for a socket.
//! * [`cluster`] — with a Redis stream log, the relay across server instances
//!   (`docs/cluster.md`): tails (`XREAD BLOCK`) of streams whose consumer is connected here and
//!   whose producer is not, and presence rounds that show each instance the sides connected to
//!   the others. The driver starts and stops them; the engine decides what to deliver.
//! * [`sync`] — one task applying the data plane's facts to the records, in order: presence
//!   (`AppState::set_dongle_online`), mode refreshes when the engine's mode changes
//!   (`AppState::refresh_group_mode`), throttled `last_seen`, and buffer-pressure audit entries
//!   and console events.
//!
//! Durability: the driver acknowledges a producer's frames only after the stream-log append
//! returned (SQLite: the transaction committed in WAL mode, which survives a crash of the
//! process; Redis: the append script answered). Consumer cursors are stored in the background
//! at most every [`driver::CURSOR_FLUSH`]: a lost cursor only causes re-delivery, which agents
//! deduplicate by seq.
//!
//! The rest of the server reads the engine through [`RelayStatusCache`] (its
//! [`crate::group_mode::RelayProbe`]): the engine's status of every group it holds, rewritten by
//! the driver whenever what the server shows of it changes (mode, offline sides, replay state,
//! or the backlog as users see it, [`GroupStatus::waiting`]). Mode and backlog in the REST API,
//! the audit log and `group_state` events follow from it and the engine's rule
//! ([`crate::group_mode`]).
//!
//! What it does not do: it does not evict groups (a loaded group stays in memory until it is
//! deleted; the per-group state is small), and it trims only groups loaded since the start
//! (a group is loaded when a side connects).

mod cluster;
mod conn;
mod driver;
mod outbox;
mod storage;
mod sync;
mod taps;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use relay_core::engine::{GroupSnapshot, Side, SideWelcome};
use relay_core::log::{AnyStreamLog, Item, Seq, SqliteSynchronous, StreamLogConfig};
use relay_core::protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{RelayConfig, ServerConfig};
use crate::error::ServerError;
use crate::group_mode::{GroupBacklog, GroupMode, GroupStatus, RelayProbe};
use crate::http::{AgentAuth, ApiError};
use crate::metrics::RelayMetrics;
use crate::state::AppState;

use outbox::Outbox;

/// File name of the SQLite stream log inside the data directory.
pub const STREAM_LOG_FILE: &str = "streams.db";

/// Key prefix of the Redis stream log.
pub const REDIS_KEY_PREFIX: &str = "tether:";

/// Longest error text sent to an agent, on the data plane and the diagnostics channel (the
/// protocol allows 4096 bytes).
const MAX_ERROR_TEXT: usize = 1024;

/// Cuts an error text to [`MAX_ERROR_TEXT`] bytes at a character boundary.
pub(crate) fn clip(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Capacity of the connection → driver channel, in messages (frame batches, acks, …).
const COMMAND_CAPACITY: usize = 4096;

/// How long [`DataPlane::shutdown`] waits for the driver to close connections and flush.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The relay engine's status of every group it holds, as the rest of the server reads it:
/// written by the driver, read by the API, the store and the console. To spare a write on every
/// acknowledgement, an entry holds the backlog as users see it ([`GroupStatus::waiting`]: zero
/// while the group is `active`) and is rewritten only when something in it changed.
#[derive(Debug, Default)]
pub struct RelayStatusCache {
    map: RwLock<HashMap<Uuid, GroupStatus>>,
}

impl RelayStatusCache {
    fn set(&self, group: Uuid, status: GroupStatus) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group, status);
    }

    fn remove(&self, group: Uuid) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&group);
    }

    /// Every non-empty backlog (for the periodic `group_state` publisher).
    fn backlogs(&self) -> HashMap<Uuid, GroupBacklog> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, status)| !status.backlog.is_empty())
            .map(|(group, status)| (*group, status.backlog))
            .collect()
    }
}

impl RelayProbe for RelayStatusCache {
    fn status(&self, group: Uuid) -> Option<GroupStatus> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&group)
            .cloned()
    }
}

/// Identifies one WebSocket connection (a replaced connection's late messages are ignored).
type ConnId = u64;

/// Why the driver refused a side's connection.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

/// What a connection task tells the driver.
#[derive(Debug)]
enum Command {
    /// A side passed authorisation and wants to be welcomed.
    Connect {
        conn: ConnId,
        group: Uuid,
        side: Side,
        /// Dongle ids of sides A and B.
        dongles: [Uuid; 2],
        rx_cursor: Seq,
        /// What the log and the records held when the connection looked (used only when the
        /// group is not loaded yet).
        snapshot: GroupSnapshot,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<Result<SideWelcome, Refusal>>,
    },
    /// A decoded `frames` batch.
    Frames {
        conn: ConnId,
        group: Uuid,
        side: Side,
        items: Vec<Item>,
        received: Instant,
    },
    /// A decoded `ack`.
    Ack {
        conn: ConnId,
        group: Uuid,
        side: Side,
        up_to: Seq,
    },
    /// The connection ended (for any reason).
    Disconnected {
        conn: ConnId,
        group: Uuid,
        side: Side,
    },
}

/// See `Shared::shown`.
type ShownSeqs = Arc<Mutex<HashMap<(Uuid, Side), u64>>>;

#[derive(Debug)]
struct Shared {
    commands: mpsc::Sender<Command>,
    /// Set once the stream log is connected.
    log: Arc<OnceLock<AnyStreamLog>>,
    metrics: RelayMetrics,
    next_conn: AtomicU64,
    /// Open (welcomed) connections per agent, for the agent's `presence`.
    agents: Mutex<HashMap<Uuid, usize>>,
    /// Highest seq per (group, producing side) already shown on the console, across
    /// connections: a retransmission after a reconnect is not shown twice. The driver drops a
    /// deleted group's entries.
    shown: ShownSeqs,
    /// The sync task's queue (agent presence goes through it, in order with the rest). Weak:
    /// the task ends when the driver, which holds the strong sender, is gone.
    sync: mpsc::WeakUnboundedSender<sync::SyncJob>,
    /// Serves connections whose first message is `diag_hello` (set by the commands service).
    diag: OnceLock<Arc<dyn DiagChannel>>,
}

/// The other user of `/ws/data`: a connection whose first message is `diag_hello` (the
/// diagnostics channel, `relay_core::protocol::diag`) is handed over, with that first message,
/// to the service registered with [`DataPlane::set_diag_channel`]. The data plane counts the
/// connection in the agent's presence while it is served.
pub trait DiagChannel: Send + Sync + std::fmt::Debug + 'static {
    /// Serves one connection until it ends. `hello` is its first message (a `diag_hello`,
    /// not yet validated).
    fn serve(
        &self,
        socket: axum::extract::ws::WebSocket,
        hello: bytes::Bytes,
        agent: crate::store::Agent,
    ) -> futures::future::BoxFuture<'static, ()>;
}

/// A running data plane (cheap to clone): what the `/ws/data` handler needs.
#[derive(Debug, Clone)]
pub struct DataPlane {
    shared: Arc<Shared>,
}

/// The data plane's background tasks, for an orderly stop.
#[derive(Debug)]
pub struct DataPlaneTasks {
    stop: watch::Sender<bool>,
    driver: JoinHandle<()>,
    sync: JoinHandle<()>,
}

impl DataPlaneTasks {
    /// Closes every data-plane connection, flushes consumer cursors and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(SHUTDOWN_WAIT, self.driver)
            .await
            .is_err()
        {
            tracing::warn!("data plane driver did not stop in time");
        }
        // The sync task ends when the driver dropped its sender; give it the same grace.
        if tokio::time::timeout(SHUTDOWN_WAIT, self.sync)
            .await
            .is_err()
        {
            tracing::warn!("data plane sync task did not stop in time");
        }
    }
}

/// Where the data plane's stream log comes from.
#[derive(Debug)]
pub enum StreamLogSource {
    /// Already open (SQLite: opened at start so that a bad data directory fails fast).
    Open(AnyStreamLog),
    /// To connect in the background, retrying (Redis: the server starts, and `/readyz` reports,
    /// while Redis is unreachable).
    Connect(StreamLogConfig),
}

/// First and longest wait between attempts to connect the stream log.
const CONNECT_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// The stream log the configuration asks for: Redis Streams when a Redis URL is configured
/// (connected in the background), else SQLite in `<data-dir>/streams.db`, opened now (WAL,
/// `synchronous=NORMAL`: an acknowledged frame survives a crash of the process).
pub async fn open_stream_log(config: &ServerConfig) -> Result<StreamLogSource, ServerError> {
    if let Some(url) = &config.redis_url {
        return Ok(StreamLogSource::Connect(StreamLogConfig::Redis {
            url: url.clone(),
            key_prefix: REDIS_KEY_PREFIX.to_owned(),
        }));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
        action: "create data directory",
        path: config.data_dir.clone(),
        source,
    })?;
    let log_config = StreamLogConfig::Sqlite {
        path: config.data_dir.join(STREAM_LOG_FILE),
        synchronous: SqliteSynchronous::Normal,
    };
    let log = log_config
        .open()
        .await
        .map_err(|err| ServerError::TaskFailed {
            task: "opening the relay stream log",
            detail: err.to_string(),
        })?;
    Ok(StreamLogSource::Open(log))
}

/// Fills the backlog cache from the stream log at start: no side is connected yet, so every
/// frame stored and not acknowledged by its consumer is a backlog, and the REST API shows it
/// before any agent connects (the driver takes over when a group is loaded).
async fn seed_backlogs(state: &AppState, log: &AnyStreamLog, cache: &RelayStatusCache) {
    let ids = match state.store().call(|store| store.all_group_ids()).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::error!(%err, "listing groups for their backlog failed; backlogs read 0 until a side connects");
            return;
        }
    };
    for id in ids {
        match conn::stored_backlog(log, id).await {
            Ok(backlog) if backlog.is_empty() => {}
            // Nobody is connected yet: both sides offline, nothing replaying (the driver
            // replaces this entry with the engine's own once the group is loaded).
            Ok(backlog) => cache.set(
                id,
                GroupStatus {
                    mode: GroupMode::Degraded,
                    backlog,
                    offline: vec![Side::A, Side::B],
                    replaying: false,
                },
            ),
            Err(err) => {
                tracing::error!(group = %id, %err, "reading a group's backlog failed; it reads 0 until a side connects");
            }
        }
    }
}

/// Connects the stream log, retrying with backoff; `None` when asked to stop first.
async fn connect_log(
    source: StreamLogSource,
    stop: &mut watch::Receiver<bool>,
) -> Option<AnyStreamLog> {
    let config = match source {
        StreamLogSource::Open(log) => return Some(log),
        StreamLogSource::Connect(config) => config,
    };
    let mut wait = CONNECT_RETRY.0;
    loop {
        tokio::select! {
            opened = config.open() => match opened {
                Ok(log) => {
                    tracing::info!("relay stream log connected");
                    return Some(log);
                }
                Err(err) => tracing::warn!(%err, retry_in_ms = wait.as_millis() as u64, "relay stream log unreachable; data plane waiting"),
            },
            _ = stop.changed() => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return None,
        }
        wait = (wait * 2).min(CONNECT_RETRY.1);
    }
}

/// Opens the connection of the cluster presence rounds, retrying with backoff; `None` when
/// asked to stop first.
async fn connect_cluster(
    link: &cluster::ClusterLink,
    stop: &mut watch::Receiver<bool>,
) -> Option<redis::aio::ConnectionManager> {
    let mut wait = CONNECT_RETRY.0;
    loop {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let opened = match redis::Client::open(link.url.as_str()) {
            Ok(client) => client.get_connection_manager_with_config(config).await,
            Err(err) => Err(err),
        };
        match opened {
            Ok(conn) => return Some(conn),
            Err(err) => {
                tracing::warn!(%err, retry_in_ms = wait.as_millis() as u64, "cluster presence connection failed; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return None,
        }
        wait = (wait * 2).min(CONNECT_RETRY.1);
    }
}

/// Marks offline the dongles whose presence in the records is stale when the data plane
/// starts. Alone (no Redis stream log): every dongle — an earlier process recorded them and
/// nothing is connected yet. In a cluster, only those no live instance holds
/// ([`cluster::spawn_presence_reset`], in the background: it waits for Redis and checks twice).
pub async fn reset_presence(state: &AppState, log: &StreamLogSource) -> Result<(), ServerError> {
    if let StreamLogSource::Connect(StreamLogConfig::Redis { url, key_prefix }) = log {
        cluster::spawn_presence_reset(state.clone(), url.clone(), key_prefix.clone());
        return Ok(());
    }
    let changes = state
        .store()
        .call(|store| store.reset_presence(chrono::Utc::now()))
        .await?;
    state.publish_mode_changes(changes);
    Ok(())
}

impl DataPlane {
    /// Starts the driver and sync tasks. Subscribes to mode changes before returning, so no
    /// activation made after this call is missed. Until the stream log is connected,
    /// `/ws/data` refuses sides with an `internal` error (agents retry with backoff).
    pub fn start(
        state: AppState,
        log: StreamLogSource,
        config: RelayConfig,
        metrics: RelayMetrics,
        cache: Arc<RelayStatusCache>,
    ) -> (DataPlane, DataPlaneTasks) {
        let cluster = match &log {
            StreamLogSource::Connect(StreamLogConfig::Redis { url, key_prefix }) => {
                Some(cluster::ClusterLink {
                    url: url.clone(),
                    prefix: key_prefix.clone(),
                    instance: state.store().instance().to_owned(),
                })
            }
            _ => None,
        };
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let sync = tokio::spawn(sync::run(state.clone(), sync_rx));
        let weak_sync = sync_tx.downgrade();
        tokio::spawn(sync::publish_backlogs(
            state.clone(),
            Arc::clone(&cache),
            stop_rx.clone(),
        ));
        let cell = Arc::new(OnceLock::new());
        let mode_changes = state.subscribe_mode_changes();
        let deletions = state.subscribe_group_deletions();
        let shown = ShownSeqs::default();
        let driver = {
            let cell = Arc::clone(&cell);
            let metrics = metrics.clone();
            let shown = Arc::clone(&shown);
            tokio::spawn(async move {
                let Some(log) = connect_log(log, &mut stop_rx).await else {
                    return;
                };
                seed_backlogs(&state, &log, &cache).await;
                let _ = cell.set(log.clone());
                let mut driver =
                    driver::Driver::new(state, log, config, metrics, cache, sync_tx, shown);
                if let Some(link) = cluster {
                    let Some(conn) = connect_cluster(&link, &mut stop_rx).await else {
                        return;
                    };
                    driver = driver.with_cluster(link, conn);
                }
                driver
                    .run(commands_rx, mode_changes, deletions, stop_rx)
                    .await;
            })
        };
        let plane = DataPlane {
            shared: Arc::new(Shared {
                commands: commands_tx,
                log: cell,
                metrics,
                next_conn: AtomicU64::new(1),
                agents: Mutex::default(),
                shown,
                sync: weak_sync,
                diag: OnceLock::new(),
            }),
        };
        let tasks = DataPlaneTasks {
            stop: stop_tx,
            driver,
            sync,
        };
        (plane, tasks)
    }

    fn next_conn_id(&self) -> ConnId {
        self.shared.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// How many leading frames of a batch starting at `first_seq` the console has already shown
    /// (retransmissions); records the batch's last seq as shown.
    fn already_shown(&self, group: Uuid, side: Side, first_seq: u64, len: usize) -> usize {
        let last = first_seq.saturating_add(len as u64).saturating_sub(1);
        let mut shown = self
            .shared
            .shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let high = shown.entry((group, side)).or_default();
        let skip = usize::try_from(high.saturating_sub(first_seq.saturating_sub(1)))
            .unwrap_or(usize::MAX)
            .min(len);
        *high = (*high).max(last);
        skip
    }

    /// Registers the service of the diagnostics channel (once; later calls are ignored).
    pub fn set_diag_channel(&self, channel: Arc<dyn DiagChannel>) {
        let _ = self.shared.diag.set(channel);
    }

    /// Whether `agent` has a `/ws/data` connection open (relay or diagnostics).
    pub fn agent_connected(&self, agent: Uuid) -> bool {
        self.shared
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&agent)
            .is_some_and(|n| *n > 0)
    }

    /// Counts an agent's connection in (`opened`) or out; its first opening and its last
    /// closing are published as the agent's presence.
    fn agent_connection(&self, agent: Uuid, opened: bool) {
        let changed = {
            let mut agents = self
                .shared
                .agents
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = agents.entry(agent).or_default();
            if opened {
                *count += 1;
                *count == 1
            } else {
                *count = count.saturating_sub(1);
                let last = *count == 0;
                if last {
                    agents.remove(&agent);
                }
                last
            }
        };
        if changed {
            // Gone only after shutdown, when presence no longer matters.
            if let Some(sync) = self.shared.sync.upgrade() {
                let _ = sync.send(sync::SyncJob::AgentOnline {
                    agent,
                    online: opened,
                });
            }
        }
    }
}

/// `GET /ws/data`: authenticates the agent (401 JSON error before any upgrade) and hands the
/// upgraded socket to a connection task.
pub async fn ws_data(
    State(state): State<AppState>,
    plane: Option<Extension<DataPlane>>,
    limits: Option<Extension<crate::http::limits::Limits>>,
    AgentAuth(agent): AgentAuth,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(Extension(plane)) = plane else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the data plane is not running in this server",
        )
        .into_response();
    };
    // The agent's place under its cap of concurrent connections, held as long as the socket.
    let permit = match limits.map(|Extension(l)| l.ws_data_connection(agent.id)) {
        Some(Err(refused)) => return refused.into_response(),
        Some(Ok(permit)) => Some(permit),
        None => None,
    };
    // The protocol's limit plus room for the WebSocket framing.
    let max = relay_core::protocol::MAX_MESSAGE_BYTES + 1024;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(tether_runtime::ws::WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            conn::run(socket, plane, state, agent).await;
            drop(permit);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let clipped = clip(long);
        assert!(clipped.len() <= MAX_ERROR_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
