//! Vehicle commands: accepted by `POST /api/v1/commands`, queued one at a time per ECU of a
//! vehicle (different ECUs in parallel), run by a [`Connector`], their responses stored and
//! then published (the [`bus`]: WebSocket streams of this process, Redis `response:{id}` with
//! a Redis URL), and their status changes sent as `command_status` console events on the
//! vehicle's dongle.
//!
//! Connectors (`commands.connector` in the server config):
//! * [`mock::MockConnector`] (`mock`) — canned answers after a random delay, for development;
//! * [`agent::AgentConnector`] (`agent`, the default) — the vehicle's agent runs the command
//!   as UDS on the vehicle's bus, over the diagnostics channel of `/ws/data`
//!   (`relay_core::protocol::diag`, docs/protocols/data-plane.md).
//!
//! Lifecycle: `pending` (stored, queued; also while the vehicle is offline, until the
//! command's ttl) → `in_progress` (sent) → `completed` (final response stored, in the same
//! transaction) or `failed` (`error_message`). Every command records the server instance
//! that owns it (`commands.instance`: the one that accepted it, or adopted it). Commands whose
//! owner is gone — a crashed earlier run of this process; with Redis, any instance whose
//! liveness key expired ([`remote`], `docs/cluster.md`) — are adopted by one live instance and
//! failed with `interrupted: server restarted` when they had started or their ttl ran out;
//! commands still `pending` within their ttl are queued again. Commands of live instances are
//! never touched.
//!
//! Stored first: a command's insert is handed to the [`writer`] before anything else of the
//! command, its `202`, `pending` event and every later event wait for the insert's commit, and
//! a response is published only after its own commit. The agent connector gets a command once
//! it is stored; the mock, whose answers touch nothing but the store
//! ([`Connector::runs_unstored`]), gets it at once, so that under load the insert, the
//! response and the completion of a mock command share one group commit.
//!
//! The vehicles commands are posted for are remembered for [`VEHICLE_CACHE_TTL`]
//! ([`Commands::owned_vehicle`]): a vehicle's owner, ECU list and dongle are fixed when it is
//! created, and vehicle ids are never reused, so a remembered vehicle can only be stale by
//! having been deleted elsewhere — which then shows within that ttl. Whose vehicle it is is
//! checked on every request, cached or not; another user's vehicle is never served.
//!
//! What it does not do: it keeps queues in memory only (a restart re-queues pending commands
//! from the store), and it does not spread one vehicle's commands over several servers.

pub mod agent;
pub mod bus;
pub mod metrics;
pub mod mock;
mod remote;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use can_io::uds::command::{CommandParamsError, CommandTarget};
use can_io::uds::{DiagCommand, EcuAddress};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;
use sse_core::events::CommandState;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::cache::TtlCache;
use crate::config::{CommandsConfig, ConnectorKind};
use crate::console::Console;
use crate::dataplane::DataPlane;
use crate::error::ServerError;
use crate::state::AppState;
use crate::store::{
    CommandRecord, CommandStatus, CommandWrite, CommandWritten, ResponseOutcome, Store, Vehicle,
};

use bus::{BusEvent, ResponseBus};
pub use metrics::CommandMetrics;
use writer::CommandWriter;

/// The error of a command whose process ended while it was open.
pub const INTERRUPTED_RESTART: &str = "interrupted: server restarted";
/// The error of a command whose vehicle stayed offline for its whole ttl.
pub const VEHICLE_OFFLINE: &str = "vehicle offline";
/// How long a vehicle read for a command is used without reading the store again.
pub const VEHICLE_CACHE_TTL: Duration = Duration::from_secs(2);
/// Most vehicles remembered at once.
const VEHICLE_CACHE_CAPACITY: usize = 16_384;

/// One accepted command, as connectors get it.
#[derive(Debug)]
pub struct Job {
    /// The command's id.
    pub command_id: Uuid,
    /// The vehicle.
    pub vehicle: Vehicle,
    /// The parsed command.
    pub command: DiagCommand,
    /// The params as posted.
    pub command_params: Value,
    /// The ECUs it addresses (the vehicle's whole list for a functional request; may be
    /// empty).
    pub targets: Vec<EcuAddress>,
    /// When the command stops waiting for the vehicle.
    pub deadline: DateTime<Utc>,
    lane_key: String,
    /// `Some(true)` once the command's row is committed, `Some(false)` when storing it failed
    /// (see [`Job::stored`]).
    stored: watch::Receiver<Option<bool>>,
}

impl Job {
    /// Whether the command's row is committed: waits for the group commit of its insert (at
    /// once for a command read back from the store). `false` when storing it failed — then
    /// nothing of the command is reported or published.
    pub async fn stored(&self) -> bool {
        let mut gate = self.stored.clone();
        matches!(
            gate.wait_for(Option::is_some).await.as_deref(),
            Ok(Some(true))
        )
    }
}

/// The [`Job::stored`] gate of a command already in the store.
fn already_stored() -> watch::Receiver<Option<bool>> {
    watch::channel(Some(true)).1
}

/// Runs commands on vehicles. Implementations report through the [`Reporter`] and return it
/// when they are done with the command; a command left open then fails.
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// `mock` or `agent`.
    fn name(&self) -> &'static str;
    /// Runs `job`, reporting its progress; hands the reporter back when done.
    fn run(&self, job: Arc<Job>, report: Reporter) -> BoxFuture<'static, Reporter>;
    /// Whether a command may be handed to [`run`](Self::run) before its row is committed
    /// ([`Job::stored`]): only for a connector whose run has no effect outside the store (the
    /// mock). Its first change then queues right behind the command's insert and can share
    /// its group commit; the [`Reporter`] still publishes and sends status events only once
    /// the command is stored. `false` (the default): a command is run once it is stored.
    fn runs_unstored(&self) -> bool {
        false
    }
}

/// What a connector reports about one command: each report is stored, then published.
#[derive(Debug)]
pub struct Reporter {
    inner: Arc<Inner>,
    job: Arc<Job>,
    next_seq: u32,
    started: bool,
    ended: bool,
}

impl Reporter {
    /// The command went out to the vehicle (`pending → in_progress`).
    pub async fn started(&mut self) {
        if self.started || self.ended {
            return;
        }
        self.started = true;
        let id = self.job.command_id;
        let written = self.inner.writer.write(CommandWrite::Start(id)).await;
        if !self.job.stored().await {
            self.ended = true;
            return;
        }
        match written {
            Ok(CommandWritten::Started(true)) => {
                self.inner
                    .status_event(&self.job, CommandState::InProgress, None)
            }
            Ok(_) => {}
            Err(err) => tracing::error!(command = %id, %err, "recording a command start failed"),
        }
    }

    /// A response: stored (completing the command when `is_final`), then published. `false`
    /// when the command had ended (nothing stored) or storing failed (the command is failed).
    /// A command not [`started`](Self::started) yet is started by the same change (one
    /// commit), and its `in_progress` status event goes out before the response.
    pub async fn response(&mut self, payload: Value, is_final: bool) -> bool {
        if self.ended {
            return false;
        }
        let start = !self.started;
        self.started = true;
        let id = self.job.command_id;
        let seq = self.next_seq;
        let outcome = self
            .inner
            .writer
            .write(CommandWrite::Response {
                command_id: id,
                start,
                sequence_number: seq,
                is_final,
                payload,
                at: Utc::now(),
            })
            .await;
        if !self.job.stored().await {
            self.ended = true;
            return false;
        }
        let outcome = match outcome {
            Ok(CommandWritten::Response(started, outcome)) => {
                if started {
                    self.inner
                        .status_event(&self.job, CommandState::InProgress, None);
                }
                Ok(outcome)
            }
            Ok(other) => Err(mismatch(other)),
            Err(err) => Err(err),
        };
        match outcome {
            Ok(ResponseOutcome::Stored(record)) => {
                self.next_seq += 1;
                self.inner.metrics.responses.inc();
                self.inner
                    .bus
                    .publish(BusEvent::Response {
                        command_id: id,
                        sequence_number: seq,
                        is_final,
                        response: record.response_payload,
                    })
                    .await;
                if is_final {
                    self.ended = true;
                    self.inner
                        .finished(&self.job, CommandState::Completed, None);
                }
                true
            }
            Ok(other) => {
                tracing::warn!(command = %id, ?other, "a response was not stored");
                self.ended = true;
                false
            }
            Err(err) => {
                tracing::error!(command = %id, %err, "storing a response failed");
                self.failed(&format!("storing a response failed: {err}"))
                    .await;
                false
            }
        }
    }

    /// The command failed: stored, then published (`{"event":"failed"}`).
    pub async fn failed(&mut self, error: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        let id = self.job.command_id;
        let write = CommandWrite::Fail {
            command_id: id,
            error: error.to_owned(),
            at: Utc::now(),
        };
        let written = self.inner.writer.write(write).await;
        if !self.job.stored().await {
            return;
        }
        match written {
            Ok(CommandWritten::Failed(true)) => {
                self.inner.bus.publish_failed(id, error).await;
                self.inner
                    .finished(&self.job, CommandState::Failed, Some(error));
            }
            Ok(_) => {}
            Err(err) => tracing::error!(command = %id, %err, "recording a command failure failed"),
        }
    }

    /// Drops the command without recording anything: another instance adopted it and
    /// records its end (`docs/cluster.md`).
    pub fn abandon(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.inner.metrics.open.dec();
    }

    /// Whether a response was stored.
    pub fn has_responses(&self) -> bool {
        self.next_seq > 1
    }

    /// Whether the command has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }
}

/// Why `submit` refused a command.
#[derive(Debug)]
pub enum SubmitError {
    /// The name or params are not a command (422).
    Params(CommandParamsError),
    /// Storing failed.
    Server(ServerError),
}

/// One vehicle's queue: commands wait until no running command uses their ECU.
#[derive(Debug, Default)]
struct Lane {
    busy: Vec<String>,
    waiting: VecDeque<Arc<Job>>,
}

impl Lane {
    /// Takes every waiting command that may start now, in order: one whose ECU is not busy
    /// and not wanted by an earlier waiting command. A functional command (`*`) wants every
    /// ECU.
    fn take_runnable(&mut self) -> Vec<Arc<Job>> {
        fn conflicts(a: &str, b: &str) -> bool {
            a == "*" || b == "*" || a == b
        }
        let mut blocked: Vec<String> = Vec::new();
        let mut run = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let key = self.waiting[i].lane_key.clone();
            if self
                .busy
                .iter()
                .chain(blocked.iter())
                .any(|k| conflicts(k, &key))
            {
                blocked.push(key);
                i += 1;
            } else if let Some(job) = self.waiting.remove(i) {
                self.busy.push(key);
                run.push(job);
            }
        }
        run
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    writer: CommandWriter,
    console: Console,
    bus: ResponseBus,
    connector: Arc<dyn Connector>,
    agents: Option<agent::AgentHub>,
    plane: Option<DataPlane>,
    lanes: Mutex<HashMap<Uuid, Lane>>,
    vehicles: TtlCache<Uuid, Vehicle>,
    metrics: CommandMetrics,
    /// With a Redis URL: this instance's liveness key, and which owners of open commands are
    /// alive (`docs/cluster.md`).
    liveness: Option<remote::RemoteRoute>,
}

impl Inner {
    fn status_event(&self, job: &Job, state: CommandState, error: Option<&str>) {
        if let Some(dongle) = job.vehicle.dongle_id {
            self.console
                .command_status(dongle, job.command_id, state, error);
        }
    }

    fn finished(&self, job: &Job, state: CommandState, error: Option<&str>) {
        let status = if state == CommandState::Completed {
            "completed"
        } else {
            "failed"
        };
        self.metrics
            .finished
            .get_or_create(&metrics::OutcomeLabels { status })
            .inc();
        self.metrics.open.dec();
        self.status_event(job, state, error);
    }

    fn enqueue(self: &Arc<Self>, job: Arc<Job>) {
        let runnable = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let lane = lanes.entry(job.vehicle.id).or_default();
            lane.waiting.push_back(job);
            lane.take_runnable()
        };
        for job in runnable {
            self.spawn_run(job);
        }
    }

    fn reporter(self: &Arc<Self>, job: &Arc<Job>) -> Reporter {
        Reporter {
            inner: Arc::clone(self),
            job: Arc::clone(job),
            next_seq: 1,
            started: false,
            ended: false,
        }
    }

    fn spawn_run(self: &Arc<Self>, job: Arc<Job>) {
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let _release = LaneRelease {
                inner: Arc::clone(&inner),
                vehicle: job.vehicle.id,
                key: job.lane_key.clone(),
            };
            if !inner.connector.runs_unstored() && !job.stored().await {
                return;
            }
            let run = inner.connector.run(Arc::clone(&job), inner.reporter(&job));
            // Its own task, so that a panicking connector still frees the ECU and fails the
            // command.
            match tokio::spawn(run).await {
                Ok(mut report) => {
                    if !report.ended {
                        report
                            .failed("internal: the connector ended without a final response")
                            .await;
                    }
                }
                Err(err) => {
                    tracing::error!(command = %job.command_id, %err, "the command connector failed");
                    let mut report = inner.reporter(&job);
                    report.started = true;
                    report.failed("internal: the connector failed").await;
                }
            }
        });
    }

    fn release(self: &Arc<Self>, vehicle: Uuid, key: &str) {
        let runnable = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(lane) = lanes.get_mut(&vehicle) else {
                return;
            };
            if let Some(pos) = lane.busy.iter().position(|k| k == key) {
                lane.busy.swap_remove(pos);
            }
            let runnable = lane.take_runnable();
            if lane.busy.is_empty() && lane.waiting.is_empty() {
                lanes.remove(&vehicle);
            }
            runnable
        };
        for job in runnable {
            self.spawn_run(job);
        }
    }
}

/// Frees a command's ECU when its run ends, however it ends.
struct LaneRelease {
    inner: Arc<Inner>,
    vehicle: Uuid,
    key: String,
}

impl Drop for LaneRelease {
    fn drop(&mut self) {
        self.inner.release(self.vehicle, &self.key);
    }
}

/// The commands service (cheap to clone).
#[derive(Debug, Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

impl Commands {
    /// Starts the service with the configured connector; with the agent connector it serves
    /// the diagnostics channel of `plane`. Then recovers what a previous process left open.
    pub async fn start(
        config: &CommandsConfig,
        state: &AppState,
        metrics: CommandMetrics,
        plane: Option<DataPlane>,
    ) -> Result<Commands, ServerError> {
        let store = Arc::clone(state.store());
        let console = state.console().clone();
        let redis = state.redis.clone();
        let bus = ResponseBus::new(redis, metrics.clone());
        let (connector, agents): (Arc<dyn Connector>, _) = match config.connector {
            ConnectorKind::Mock => (Arc::new(mock::MockConnector::new(config.mock_delay)), None),
            ConnectorKind::Agent => {
                let hub = agent::AgentHub::new(state.clone(), metrics.clone());
                if let Some(plane) = &plane {
                    plane.set_diag_channel(Arc::new(hub.clone()));
                }
                (Arc::new(agent::AgentConnector::new(hub.clone())), Some(hub))
            }
        };
        let writer = CommandWriter::spawn(Arc::clone(&store), metrics.clone());
        let liveness = state
            .redis
            .clone()
            .map(|client| remote::RemoteRoute::new(client, store.instance().to_owned()));
        let commands = Commands {
            inner: Arc::new(Inner {
                store,
                writer,
                console,
                bus,
                connector,
                agents,
                plane,
                lanes: Mutex::new(HashMap::new()),
                vehicles: TtlCache::new(VEHICLE_CACHE_TTL, VEHICLE_CACHE_CAPACITY),
                metrics,
                liveness,
            }),
        };
        if let Some(liveness) = &commands.inner.liveness {
            // Alive before anything is owned, so no other instance adopts what this one queues.
            match tokio::time::timeout(remote::LIVENESS_TTL, liveness.refresh()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%err, "setting this instance's liveness key failed; retrying")
                }
                Err(_) => {
                    tracing::warn!("setting this instance's liveness key timed out; retrying")
                }
            }
            tokio::spawn(keep_alive(Arc::downgrade(&commands.inner)));
        }
        commands.recover().await?;
        Ok(commands)
    }

    /// The response bus.
    pub fn bus(&self) -> &ResponseBus {
        &self.inner.bus
    }

    /// The connector's name.
    pub fn connector(&self) -> &'static str {
        self.inner.connector.name()
    }

    /// The vehicle `vehicle_id` when it is `user_id`'s: remembered for
    /// [`VEHICLE_CACHE_TTL`] after a store read, and owner-checked either way. `None` for
    /// another user's vehicle and an unknown one (never remembered).
    pub async fn owned_vehicle(
        &self,
        user_id: Uuid,
        vehicle_id: Uuid,
    ) -> Result<Option<Vehicle>, ServerError> {
        let cache = &self.inner.vehicles;
        if let Some(vehicle) = cache.get(&vehicle_id) {
            return Ok((vehicle.user_id == user_id).then_some(vehicle));
        }
        let generation = cache.generation();
        let vehicle = self
            .inner
            .store
            .call(move |s| s.get_vehicle(user_id, vehicle_id))
            .await?;
        if let Some(vehicle) = &vehicle {
            cache.insert(vehicle_id, vehicle.clone(), generation);
        }
        Ok(vehicle)
    }

    /// Whether the vehicle's agent is connected: a diagnostics channel serves its dongle, or
    /// the agent that announced the dongle has a `/ws/data` connection open.
    pub async fn vehicle_online(&self, vehicle: &Vehicle) -> Result<bool, ServerError> {
        let Some(dongle) = vehicle.dongle_id else {
            return Ok(false);
        };
        if self
            .inner
            .agents
            .as_ref()
            .is_some_and(|hub| hub.serves(dongle))
        {
            return Ok(true);
        }
        let Some(plane) = &self.inner.plane else {
            return Ok(false);
        };
        let agent = self
            .inner
            .store
            .call(move |s| s.agent_of_dongle(dongle))
            .await?;
        Ok(agent.is_some_and(|a| plane.agent_connected(a)))
    }

    /// Accepts a command for `vehicle` (already checked to be the user's): parses and
    /// resolves it, stores it `pending`, queues it, and returns the stored row.
    pub async fn submit(
        &self,
        user_id: Uuid,
        vehicle: Vehicle,
        command_name: &str,
        command_params: Value,
    ) -> Result<CommandRecord, SubmitError> {
        let command =
            DiagCommand::parse(command_name, &command_params).map_err(SubmitError::Params)?;
        let targets = command
            .target
            .resolve(&vehicle.ecus)
            .map_err(SubmitError::Params)?;
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(command.ttl).unwrap_or(chrono::Duration::MAX);
        let record = CommandRecord {
            command_id: crate::store::new_row_id(),
            user_id,
            vehicle_id: vehicle.id,
            command_name: command.name().to_owned(),
            command_params: command_params.clone(),
            status: CommandStatus::Pending,
            error_message: None,
            submitted_at: now,
            completed_at: None,
            deadline_at: now + ttl,
        };
        // Handed to the writer first, so that every change of the command's run is applied
        // after it; queued at once, so that a connector that may run unstored commands
        // (`Connector::runs_unstored`) shares the insert's commit with its first change.
        let insert = self
            .inner
            .writer
            .queue(CommandWrite::Insert(record.clone()));
        let (gate, stored) = watch::channel(None);
        let job = Arc::new(Job {
            command_id: record.command_id,
            lane_key: lane_key(&command.target, &targets),
            vehicle,
            command,
            command_params,
            targets,
            deadline: record.deadline_at,
            stored,
        });
        self.inner.enqueue(Arc::clone(&job));
        // The insert's outcome is handled on a task of its own, so that the command is
        // reported (or dropped) even when the caller stops waiting for it.
        let inner = Arc::clone(&self.inner);
        let (done, accepted) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = insert.wait().await;
            if outcome.is_ok() {
                inner.metrics.submitted.inc();
                inner.metrics.open.inc();
                inner.status_event(&job, CommandState::Pending, None);
            }
            let _ = gate.send(Some(outcome.is_ok()));
            let _ = done.send(outcome);
        });
        match accepted.await {
            Ok(Ok(_)) => Ok(record),
            Ok(Err(err)) => Err(SubmitError::Server(err)),
            Err(_) => Err(SubmitError::Server(ServerError::TaskFailed {
                task: "command writer",
                detail: "the insert's outcome was lost".to_owned(),
            })),
        }
    }

    /// Waits up to `wait` for the command to end; returns its row then (or as it is when the
    /// wait runs out).
    pub async fn wait(
        &self,
        command_id: Uuid,
        wait: Duration,
    ) -> Result<Option<CommandRecord>, ServerError> {
        let mut events = self.inner.bus.subscribe(command_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let record = self
                .inner
                .store
                .call(move |s| s.command_by_id(command_id))
                .await?;
            match &record {
                Some(r) if !r.status.is_terminal() => {}
                _ => return Ok(record),
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Ok(record),
                Ok(Ok(event)) if !event.is_last() => continue,
                Ok(_) => {}
            }
            // The last event (or a lag): the row is final now, or the next read shows it.
            if tokio::time::Instant::now() >= deadline {
                return self
                    .inner
                    .store
                    .call(move |s| s.command_by_id(command_id))
                    .await;
            }
        }
    }

    /// Takes over the open commands whose owner is gone — a previous run of this process, or
    /// (with Redis) an instance whose liveness key expired; without Redis every owner but this
    /// process is gone. Each is adopted first (one instance wins), then failed with
    /// `interrupted: server restarted` when it had started or its ttl ran out, or queued again
    /// when it is still pending within it. Commands of live instances are left alone. When the
    /// liveness of the owners cannot be read, nothing is taken over this time.
    async fn recover(&self) -> Result<(), ServerError> {
        let open = self.inner.store.call(|s| s.open_commands_owned()).await?;
        let me = self.inner.store.instance();
        let mut owners: Vec<String> = open
            .iter()
            .filter_map(|(_, owner)| owner.clone())
            .filter(|owner| owner != me)
            .collect();
        owners.sort();
        owners.dedup();
        let alive = match &self.inner.liveness {
            None => Default::default(),
            Some(liveness) => match liveness.alive(&owners).await {
                Ok(alive) => alive,
                Err(err) => {
                    tracing::warn!(%err, "reading which instances are alive failed; open commands are checked again later");
                    return Ok(());
                }
            },
        };
        for (record, owner) in open {
            let gone = match owner.as_deref() {
                Some(owner) => owner != me && !alive.contains(owner),
                None => true,
            };
            if !gone {
                continue;
            }
            let id = record.command_id;
            let from = owner.clone();
            let adopted = self
                .inner
                .store
                .call(move |s| s.adopt_command(id, from.as_deref()))
                .await?;
            if adopted {
                self.take_over(record, owner.as_deref()).await?;
            }
        }
        Ok(())
    }

    /// Queues an adopted command again, or fails it (see [`Commands::recover`]). With Redis,
    /// the command's handover record is closed first (`remote::RemoteRoute::close`): from
    /// then on the previous owner can no longer send it, and a command that it had already
    /// sent — or whose record this instance may not take — is failed, never run again.
    async fn take_over(
        &self,
        record: CommandRecord,
        previous: Option<&str>,
    ) -> Result<(), ServerError> {
        let now = Utc::now();
        let id = record.command_id;
        let may_run = match &self.inner.liveness {
            None => true,
            Some(route) => {
                let deadline_ms = u64::try_from(record.deadline_at.timestamp_millis()).unwrap_or(0);
                match route.close(id, previous, deadline_ms).await {
                    Ok(remote::Closed::Unsent) => true,
                    Ok(closed) => {
                        tracing::info!(command = %id, ?closed, "an adopted command may have been sent already; it is not run again");
                        false
                    }
                    Err(err) => {
                        tracing::warn!(command = %id, %err, "closing an adopted command's handover record failed; it is not run again");
                        false
                    }
                }
            }
        };
        let vehicle_id = record.vehicle_id;
        let vehicle = self
            .inner
            .store
            .call(move |s| s.vehicle_by_id(vehicle_id))
            .await?;
        let requeue = match (&vehicle, record.status) {
            (Some(vehicle), CommandStatus::Pending) if may_run && record.deadline_at > now => {
                DiagCommand::parse(&record.command_name, &record.command_params)
                    .ok()
                    .and_then(|command| {
                        let targets = command.target.resolve(&vehicle.ecus).ok()?;
                        Some((command, targets))
                    })
            }
            _ => None,
        };
        match (vehicle, requeue) {
            (Some(vehicle), Some((command, targets))) => {
                self.inner.metrics.open.inc();
                let job = Arc::new(Job {
                    command_id: id,
                    lane_key: lane_key(&command.target, &targets),
                    vehicle,
                    command,
                    command_params: record.command_params,
                    targets,
                    deadline: record.deadline_at,
                    stored: already_stored(),
                });
                self.inner.enqueue(job);
                tracing::info!(command = %id, "pending command of an instance that is gone queued again");
            }
            (vehicle, _) => {
                let failed = self
                    .inner
                    .store
                    .call(move |s| s.fail_command(id, INTERRUPTED_RESTART, Utc::now()))
                    .await?;
                if failed {
                    self.inner.bus.publish_failed(id, INTERRUPTED_RESTART).await;
                    if let Some(dongle) = vehicle.and_then(|v| v.dongle_id) {
                        self.inner.console.command_status(
                            dongle,
                            id,
                            CommandState::Failed,
                            Some(INTERRUPTED_RESTART),
                        );
                    }
                }
                tracing::info!(command = %id, "command left open by an instance that is gone failed as interrupted");
            }
        }
        Ok(())
    }
}

/// With Redis: refreshes this instance's liveness key every [`remote::LIVENESS_EVERY`] and,
/// every [`remote::LIVENESS_TTL`], takes over the open commands of instances that are gone
/// ([`Commands::recover`]) — so a command of an instance that died is ended (or run) by a live
/// one even when no instance restarts. Ends with the service.
async fn keep_alive(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(remote::LIVENESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweep_every = remote::LIVENESS_TTL.as_millis() / remote::LIVENESS_EVERY.as_millis().max(1);
    let mut ticks: u128 = 0;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Some(liveness) = &inner.liveness
            && let Err(err) = liveness.refresh().await
        {
            tracing::warn!(%err, "refreshing this instance's liveness key failed");
        }
        ticks += 1;
        if ticks.is_multiple_of(sweep_every.max(1))
            && let Err(err) = (Commands { inner }).recover().await
        {
            tracing::warn!(%err, "taking over the commands of instances that are gone failed");
        }
    }
}

/// A [`CommandWritten`] of another kind than the write asked for (a bug of the writer):
/// handled as a failed store.
fn mismatch(written: CommandWritten) -> ServerError {
    ServerError::TaskFailed {
        task: "command writer",
        detail: format!("a response was answered with {written:?}"),
    }
}

/// The queue key of a command: the request id of its one ECU, or `*` for a functional request.
fn lane_key(target: &CommandTarget, targets: &[EcuAddress]) -> String {
    match (target, targets) {
        (CommandTarget::Functional, _) => "*".to_owned(),
        (_, [one]) => format!("0x{:X}", one.request_id),
        _ => target.queue_key(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_run_one_command_per_ecu_in_order() {
        let vehicle = Vehicle {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            name: "v".into(),
            vin: None,
            dongle_id: None,
            ecus: vec![],
            created_at: Utc::now(),
        };
        let job = |key: &str| {
            Arc::new(Job {
                command_id: Uuid::new_v4(),
                vehicle: vehicle.clone(),
                command: DiagCommand::parse("TesterPresent", &Value::Null)
                    .unwrap_or_else(|e| panic!("{e}")),
                command_params: Value::Null,
                targets: vec![],
                deadline: Utc::now(),
                lane_key: key.to_owned(),
                stored: already_stored(),
            })
        };
        let mut lane = Lane::default();
        for key in ["0x7E0", "0x7E0", "0x7E1", "*", "0x7E2"] {
            lane.waiting.push_back(job(key));
        }
        let keys = |jobs: Vec<Arc<Job>>| -> Vec<String> {
            jobs.iter().map(|j| j.lane_key.clone()).collect()
        };
        // The second 0x7E0 waits for the first; the functional one waits for all; 0x7E2 may
        // not overtake the functional request it conflicts with.
        assert_eq!(keys(lane.take_runnable()), ["0x7E0", "0x7E1"]);
        assert!(lane.take_runnable().is_empty());
        lane.busy.retain(|k| k != "0x7E0");
        assert_eq!(keys(lane.take_runnable()), ["0x7E0"]);
        lane.busy.clear();
        assert_eq!(keys(lane.take_runnable()), ["*"]);
        lane.busy.clear();
        assert_eq!(keys(lane.take_runnable()), ["0x7E2"]);
    }
}
