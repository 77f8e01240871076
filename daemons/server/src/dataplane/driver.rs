//! The task that owns the relay engine and executes what it asks for.
//!
//! Inputs: connection commands (bounded channel), storage results from background tasks,
//! REST mode changes (activation, deactivation), timers (engine scheduling, retention, cursor
//! flushes). After every input the driver *pumps* the engine in the documented call order:
//! storage requests → scheduling rounds due → outputs. Nothing in this task awaits I/O: storage
//! runs in [`super::storage`] tasks, records updates in [`super::sync`], and outputs go to the
//! connections' non-blocking outboxes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use relay_core::Error as RelayError;
use relay_core::engine::{
    Direction, EngineConfig, GroupId, GroupMode, GroupStatus, RelayEngine, RelayOutput, Side,
    StorageRequest,
};
use relay_core::log::{AnyStreamLog, Retention, Seq};
use relay_core::protocol::{ErrorCode, GroupState};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use super::cluster::{self, ClusterLink, PresenceAsk};
use super::outbox::{Out, Outbox, Pushed};
use super::storage::{self, AppendDone, AppendRequest, Event};
use super::sync::SyncJob;
use super::{Command, ConnId, Refusal, RelayStatusCache, ShownSeqs};
use crate::config::RelayConfig;
use crate::metrics::{CodeLabels, GroupDirectionLabels, ReasonLabels, RelayMetrics};
use crate::state::AppState;
use crate::store::ModeChange;

/// How often consumer cursors are written to the stream log.
pub(super) const CURSOR_FLUSH: Duration = Duration::from_millis(250);

/// Most commands handled before the engine is pumped.
const COMMAND_BATCH: usize = 256;

/// Most scheduling rounds per pump, so that inputs are never starved by a long replay.
const MAX_ROUNDS_PER_PUMP: usize = 256;

/// Minimum time between two `last_seen` updates of one dongle.
const SEEN_EVERY: Duration = Duration::from_secs(5);

/// Arrival times kept per stream for the delivery-delay histogram.
const MAX_ARRIVALS: usize = 4096;

/// A connected side.
#[derive(Debug)]
struct Slot {
    conn: ConnId,
    outbox: Arc<Outbox>,
}

/// A stream's append lane and its generation (see [`super::storage`]).
#[derive(Debug)]
struct Lane {
    tx: mpsc::UnboundedSender<AppendRequest>,
    task: JoinHandle<()>,
    generation: u64,
}

/// A group loaded in the engine.
#[derive(Debug)]
struct Loaded {
    uuid: Uuid,
    dongles: [Uuid; 2],
    slots: [Option<Slot>; 2],
    lanes: [Lane; 2],
    /// Per direction: (last seq of a received batch, when it arrived), ascending.
    arrivals: [VecDeque<(Seq, Instant)>; 2],
    last_seen: [Option<Instant>; 2],
    mode: GroupMode,
    trimming: [bool; 2],
    /// The status last written to the cache and the gauges (`None`: never).
    published: Option<GroupStatus>,
    /// Per side: whether the last presence round saw it connected to another instance
    /// (`None`: no round yet).
    remote: [Option<bool>; 2],
}

impl Loaded {
    fn current(&self, side: Side, conn: ConnId) -> bool {
        self.slots[side.index()]
            .as_ref()
            .is_some_and(|slot| slot.conn == conn)
    }

    fn push(&self, side: Side, out: Out) -> Pushed {
        match &self.slots[side.index()] {
            Some(slot) => slot.outbox.push(out),
            None => Pushed::Closing,
        }
    }
}

/// The engine's driver.
pub(super) struct Driver {
    engine: RelayEngine,
    state: AppState,
    log: AnyStreamLog,
    config: RelayConfig,
    metrics: RelayMetrics,
    cache: Arc<RelayStatusCache>,
    sync: mpsc::UnboundedSender<SyncJob>,
    /// The console's retransmission filter (see `Shared::shown`).
    shown: ShownSeqs,
    groups: HashMap<GroupId, Loaded>,
    /// Latest activation seen on the mode feed, for groups loaded later.
    hints: HashMap<Uuid, bool>,
    dirty: HashSet<GroupId>,
    cursors: HashMap<(GroupId, Direction), Seq>,
    flushing: bool,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: Option<mpsc::UnboundedReceiver<Event>>,
    started: Instant,
    /// Several instances on one Redis: the link and a connection for presence rounds.
    cluster: Option<(ClusterLink, redis::aio::ConnectionManager)>,
    /// The cluster tail (started with the first stream to tail).
    tails: Option<cluster::Tails>,
    presence_in_flight: bool,
    /// Groups whose shared status (another instance's) the cache shows.
    shared_shown: HashSet<Uuid>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub(super) fn new(
        state: AppState,
        log: AnyStreamLog,
        config: RelayConfig,
        metrics: RelayMetrics,
        cache: Arc<RelayStatusCache>,
        sync: mpsc::UnboundedSender<SyncJob>,
        shown: ShownSeqs,
    ) -> Driver {
        let engine = RelayEngine::new(EngineConfig {
            replay_rate_per_s: config.replay_rate_per_s,
            replay_burst: config.replay_burst,
            consumer_window: config.consumer_window,
            cut_through: config.cut_through,
            ..EngineConfig::default()
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Driver {
            engine,
            state,
            log,
            config,
            metrics,
            cache,
            sync,
            shown,
            groups: HashMap::new(),
            hints: HashMap::new(),
            dirty: HashSet::new(),
            cursors: HashMap::new(),
            flushing: false,
            events_tx,
            events_rx: Some(events_rx),
            started: Instant::now(),
            cluster: None,
            tails: None,
            presence_in_flight: false,
            shared_shown: HashSet::new(),
        }
    }

    /// Relays across instances through `link` (`docs/cluster.md`).
    pub(super) fn with_cluster(
        mut self,
        link: ClusterLink,
        conn: redis::aio::ConnectionManager,
    ) -> Driver {
        self.cluster = Some((link, conn));
        self
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// The driver loop; ends on shutdown, after closing every connection and flushing cursors.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut modes: broadcast::Receiver<ModeChange>,
        mut deletions: broadcast::Receiver<Uuid>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(mut events) = self.events_rx.take() else {
            return;
        };
        let mut trim_tick = tokio::time::interval(self.config.trim_interval);
        trim_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flush_tick = tokio::time::interval(CURSOR_FLUSH);
        flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut presence_tick = tokio::time::interval(cluster::PRESENCE_EVERY);
        presence_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let clustered = self.cluster.is_some();
        let mut modes_open = true;
        let mut deletions_open = true;
        loop {
            let deadline = self.engine.poll_timeout().map(|ms| self.instant_at(ms));
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                Some(event) = events.recv() => {
                    self.on_event(event);
                    while let Ok(event) = events.try_recv() {
                        self.on_event(event);
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.on_command(command);
                    for _ in 1..COMMAND_BATCH {
                        match commands.try_recv() {
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                }
                change = modes.recv(), if modes_open => {
                    match change {
                        Ok(change) => self.on_mode_change(&change),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "data plane lagged behind group mode changes; re-reading activations");
                            self.resync_groups();
                        }
                        Err(broadcast::error::RecvError::Closed) => modes_open = false,
                    }
                }
                deleted = deletions.recv(), if deletions_open => {
                    match deleted {
                        Ok(group) => self.remove_group(group),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "data plane lagged behind group deletions; re-reading groups");
                            self.resync_groups();
                        }
                        Err(broadcast::error::RecvError::Closed) => deletions_open = false,
                    }
                }
                _ = trim_tick.tick() => {
                    self.start_trims();
                    self.resync_groups();
                }
                _ = flush_tick.tick() => self.flush_cursors(),
                _ = presence_tick.tick(), if clustered => self.start_presence(),
                () = sleep_until_opt(deadline) => {}
            }
            self.pump();
        }
        self.tails = None;
        for loaded in self.groups.values() {
            for slot in loaded.slots.iter().flatten() {
                slot.outbox
                    .push(Out::Close("the server is shutting down".to_owned()));
            }
        }
        let cursors: Vec<_> = self.cursors.drain().collect();
        storage::store_cursors(&self.log, cursors, &self.metrics).await;
    }

    /// Runs the engine until it has nothing due: storage requests, scheduling rounds, outputs.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(request) = self.engine.poll_storage() {
                self.execute(request);
                progressed = true;
            }
            let now = self.now_ms();
            let mut rounds = 0;
            while rounds < MAX_ROUNDS_PER_PUMP
                && self.engine.poll_timeout().is_some_and(|at| at <= now)
            {
                self.engine.handle_timeout(now);
                rounds += 1;
                progressed = true;
            }
            while let Some(output) = self.engine.poll_output() {
                self.route(output);
                progressed = true;
            }
            if !progressed || rounds >= MAX_ROUNDS_PER_PUMP {
                break;
            }
        }
        self.refresh_cache();
    }

    fn send_sync(&mut self, job: SyncJob) {
        // The probe must show the engine's current backlog before the job reads it.
        self.refresh_cache();
        if self.sync.send(job).is_err() {
            tracing::error!("data plane sync task is gone; records no longer follow the relay");
        }
    }

    /// Publishes the backlog of every group touched since the last call, if it changed.
    fn refresh_cache(&mut self) {
        for gid in std::mem::take(&mut self.dirty) {
            let Some(loaded) = self.groups.get_mut(&gid) else {
                continue;
            };
            let uuid = loaded.uuid;
            let Some(mut status) = self.engine.group_status(&gid) else {
                continue;
            };
            // Groups turn dirty on every ack: publish only what changed (the cache's write
            // lock and two label allocations per group otherwise ran on each pump), with the
            // backlog as users see it.
            status.backlog = status.waiting();
            if loaded.published.as_ref() == Some(&status) {
                continue;
            }
            let backlog = status.backlog;
            loaded.published = Some(status.clone());
            self.cache.set(uuid, status);
            for (direction, value) in [
                (Direction::AToB, backlog.a_to_b),
                (Direction::BToA, backlog.b_to_a),
            ] {
                self.metrics
                    .backlog
                    .get_or_create(&GroupDirectionLabels {
                        group: uuid.to_string(),
                        direction: direction.as_str(),
                    })
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    fn lane_for(&self, gid: &GroupId, direction: Direction) -> Lane {
        let (tx, task) = storage::spawn_lane(
            self.log.clone(),
            gid.clone(),
            direction,
            self.events_tx.clone(),
            self.metrics.clone(),
        );
        Lane {
            tx,
            task,
            generation: 0,
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now_ms();
        match command {
            Command::Connect {
                conn,
                group,
                side,
                dongles,
                rx_cursor,
                mut snapshot,
                outbox,
                reply,
            } => {
                let gid = GroupId::new(group.to_string());
                if self.engine.has_group(&gid) && self.cluster.is_some() {
                    // Other instances may have stored more since the group was loaded here:
                    // the welcome's `tx_acked` must be the log's head, not this engine's.
                    for (direction, stream) in [
                        (Direction::AToB, snapshot.a_to_b),
                        (Direction::BToA, snapshot.b_to_a),
                    ] {
                        let cursor = Some(stream.consumer_cursor);
                        if let Err(err) = self.engine.handle_remote_progress(
                            &gid,
                            direction,
                            stream.head,
                            cursor,
                            now,
                        ) {
                            tracing::error!(group = %gid, %err, "engine refused the log's progress");
                        }
                    }
                }
                if !self.engine.has_group(&gid) {
                    if let Some(&activated) = self.hints.get(&group) {
                        snapshot.activated = activated;
                    }
                    self.engine.add_group(gid.clone(), snapshot, now);
                    let lanes = [
                        self.lane_for(&gid, Direction::AToB),
                        self.lane_for(&gid, Direction::BToA),
                    ];
                    self.groups.insert(
                        gid.clone(),
                        Loaded {
                            uuid: group,
                            dongles,
                            slots: [None, None],
                            lanes,
                            arrivals: [VecDeque::new(), VecDeque::new()],
                            last_seen: [None, None],
                            mode: GroupMode::Inactive,
                            trimming: [false, false],
                            published: None,
                            remote: [None, None],
                        },
                    );
                }
                self.dirty.insert(gid.clone());
                match self.engine.handle_connected(&gid, side, rx_cursor, now) {
                    Ok(welcome) => {
                        if welcome.ahead_of_log > 0 {
                            // Not a loss: the side already has these frames, and their producer
                            // still holds them (never acknowledged) and resends them.
                            tracing::info!(group = %gid, %side, rx_cursor,
                                ahead = welcome.ahead_of_log,
                                "side resumes above the stored stream: frames it received before they were durable were not stored (a failed append or a server crash); their resend is not delivered again");
                        }
                        if reply.send(Ok(welcome)).is_err() {
                            // The connection ended while waiting: it never became current.
                            // Leave the engine as it was for a side that is not connected.
                            self.side_gone(&gid, side);
                            return;
                        }
                        let Some(loaded) = self.groups.get_mut(&gid) else {
                            return;
                        };
                        let old = loaded.slots[side.index()].replace(Slot { conn, outbox });
                        if let Some(old) = old {
                            old.outbox.push(Out::Close(
                                "replaced by a newer connection of the same side".to_owned(),
                            ));
                        }
                        let dongle = loaded.dongles[side.index()];
                        loaded.last_seen[side.index()] = Some(Instant::now());
                        self.update_tails(&gid);
                        self.send_sync(SyncJob::Online {
                            dongle,
                            online: true,
                        });
                    }
                    Err(err) => {
                        let code = ErrorCode::for_error(&err);
                        let _ = reply.send(Err(Refusal {
                            code,
                            message: err.to_string(),
                        }));
                    }
                }
            }
            Command::Frames {
                conn,
                group,
                side,
                items,
                received,
            } => {
                let gid = GroupId::new(group.to_string());
                let Some(loaded) = self.groups.get_mut(&gid) else {
                    return;
                };
                if !loaded.current(side, conn) {
                    // A replaced connection: it is being closed and its frames were never
                    // acknowledged, so the agent resends them on its new connection.
                    return;
                }
                let count = items.len() as u64;
                let last = items.last().map_or(0, |i| i.seq);
                match self.engine.handle_frames(&gid, side, items, now) {
                    Ok(retransmitted) => {
                        self.metrics.frames_duplicate.inc_by(retransmitted);
                        let arrivals = &mut loaded.arrivals[side.outbound().index()];
                        if arrivals.back().is_none_or(|(seq, _)| *seq < last) {
                            arrivals.push_back((last, received));
                            if arrivals.len() > MAX_ARRIVALS {
                                arrivals.pop_front();
                            }
                        }
                        self.seen(&gid, side);
                    }
                    Err(err) => {
                        let code = ErrorCode::for_error(&err);
                        self.metrics
                            .frames_refused
                            .get_or_create(&CodeLabels {
                                code: code.as_str(),
                            })
                            .inc_by(count);
                        self.refuse(&gid, side, code, err.to_string());
                    }
                }
            }
            Command::Ack {
                conn,
                group,
                side,
                up_to,
            } => {
                let gid = GroupId::new(group.to_string());
                if !self
                    .groups
                    .get(&gid)
                    .is_some_and(|loaded| loaded.current(side, conn))
                {
                    return;
                }
                match self.engine.handle_ack(&gid, side, up_to, now) {
                    Ok(()) => self.seen(&gid, side),
                    Err(err) => {
                        let code = ErrorCode::for_error(&err);
                        self.refuse(&gid, side, code, err.to_string());
                    }
                }
                self.dirty.insert(gid);
            }
            Command::Disconnected { conn, group, side } => {
                let gid = GroupId::new(group.to_string());
                if self
                    .groups
                    .get(&gid)
                    .is_some_and(|loaded| loaded.current(side, conn))
                {
                    self.side_gone(&gid, side);
                }
            }
        }
    }

    /// Traffic from a side: records `last_seen` at most every [`SEEN_EVERY`] per dongle.
    fn seen(&mut self, gid: &GroupId, side: Side) {
        let Some(loaded) = self.groups.get_mut(gid) else {
            return;
        };
        let last = &mut loaded.last_seen[side.index()];
        if last.is_none_or(|at| at.elapsed() >= SEEN_EVERY) {
            *last = Some(Instant::now());
            let dongle = loaded.dongles[side.index()];
            self.send_sync(SyncJob::Seen { dongle });
        }
    }

    /// Sends a refusal; a fatal one also disconnects the side.
    fn refuse(&mut self, gid: &GroupId, side: Side, code: ErrorCode, message: String) {
        self.metrics
            .errors
            .get_or_create(&CodeLabels {
                code: code.as_str(),
            })
            .inc();
        let Some(loaded) = self.groups.get(gid) else {
            return;
        };
        if code.is_fatal() {
            loaded.push(side, Out::Fatal(code, message));
            self.side_gone(gid, side);
        } else {
            loaded.push(side, Out::Error(code, message));
        }
    }

    /// The side's connection is no longer current: engine, slot and presence follow.
    fn side_gone(&mut self, gid: &GroupId, side: Side) {
        let now = self.now_ms();
        let Some(loaded) = self.groups.get_mut(gid) else {
            return;
        };
        let slot = loaded.slots[side.index()].take();
        let had_slot = slot.is_some();
        if let Some(slot) = slot {
            // Already closing in every normal path; this closes a connection that lost its slot
            // otherwise (a newer connection of the side vanished during its handshake).
            slot.outbox
                .push(Out::Close("the connection is no longer current".to_owned()));
        }
        let dongle = loaded.dongles[side.index()];
        if let Err(err) = self.engine.handle_disconnected(gid, side, now) {
            tracing::error!(group = %gid, %side, %err, "engine refused a disconnect");
        }
        self.dirty.insert(gid.clone());
        self.update_tails(gid);
        if had_slot {
            self.send_sync(SyncJob::Online {
                dongle,
                online: false,
            });
        }
    }

    fn execute(&mut self, request: StorageRequest) {
        match request {
            StorageRequest::Append {
                group,
                direction,
                items,
            } => {
                let Some(loaded) = self.groups.get(&group) else {
                    return;
                };
                let lane = &loaded.lanes[direction.index()];
                let sent = lane.tx.send(AppendRequest {
                    generation: lane.generation,
                    items,
                });
                if sent.is_err() {
                    // The lane task is gone (only at shutdown): report the append as failed
                    // so that the producer resends after reconnecting.
                    let now = self.now_ms();
                    let _ = self.engine.handle_append_result(
                        &group,
                        direction,
                        Err(RelayError::WorkerGone { action: "append" }),
                        now,
                    );
                }
            }
            StorageRequest::Read {
                group,
                direction,
                after,
                max,
                epoch,
            } => storage::spawn_read(
                self.log.clone(),
                group,
                direction,
                after,
                max,
                epoch,
                self.events_tx.clone(),
            ),
            StorageRequest::StoreCursor {
                group,
                direction,
                seq,
            } => {
                self.cursors.insert((group, direction), seq);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = self.now_ms();
        match event {
            Event::Appended {
                group,
                direction,
                generation,
                done,
            } => {
                let Some(loaded) = self.groups.get_mut(&group) else {
                    return;
                };
                let lane = &mut loaded.lanes[direction.index()];
                if lane.generation != generation {
                    return;
                }
                match done {
                    AppendDone::Stored(outcomes) => {
                        let stored: u64 = outcomes.iter().map(|o| o.stored).sum();
                        let consumer_online = loaded.slots[direction.consumer().index()].is_some();
                        if stored > 0 && (!consumer_online || loaded.mode != GroupMode::Active) {
                            self.metrics.frames_buffered.inc_by(stored);
                        }
                        for outcome in outcomes {
                            if let Err(err) = self.engine.handle_append_result(
                                &group,
                                direction,
                                Ok(outcome),
                                now,
                            ) {
                                tracing::error!(%group, %err, "engine refused an append result");
                            }
                        }
                    }
                    AppendDone::Failed(detail) => {
                        lane.generation += 1;
                        tracing::warn!(%group, direction = direction.as_str(), %detail, "resetting the producer after a failed append");
                        let _ = self.engine.handle_append_result(
                            &group,
                            direction,
                            Err(RelayError::WorkerGone { action: "append" }),
                            now,
                        );
                    }
                }
                self.dirty.insert(group);
            }
            Event::Read {
                group,
                direction,
                epoch,
                result,
            } => {
                if let Err(err) = &result {
                    self.metrics.storage_errors.inc();
                    tracing::warn!(%group, direction = direction.as_str(), %err, "relay read failed; retrying");
                }
                if self.engine.has_group(&group) {
                    let _ = self
                        .engine
                        .handle_read_result(&group, direction, epoch, result, now);
                    self.dirty.insert(group);
                }
            }
            Event::Trimmed {
                group,
                direction,
                result,
            } => {
                let Some(loaded) = self.groups.get_mut(&group) else {
                    return;
                };
                loaded.trimming[direction.index()] = false;
                match result {
                    Ok(trims) => {
                        for trim in &trims {
                            self.metrics
                                .frames_trimmed
                                .get_or_create(&ReasonLabels {
                                    reason: trim.reason.as_str(),
                                })
                                .inc_by(trim.count);
                        }
                        if !trims.is_empty() {
                            let _ = self.engine.handle_trimmed(&group, direction, &trims, now);
                            self.dirty.insert(group);
                        }
                    }
                    Err(err) => {
                        self.metrics.storage_errors.inc();
                        tracing::warn!(%group, direction = direction.as_str(), %err, "relay retention trim failed");
                    }
                }
            }
            Event::Activation { group, activated } => self.set_activation(group, activated),
            Event::GroupGone { group } => self.remove_group(group),
            Event::CursorsFlushed => self.flushing = false,
            Event::Tailed { batches } => {
                for (group, direction, items) in batches {
                    if self.engine.has_group(&group) {
                        if let Err(err) = self.engine.handle_tailed(&group, direction, items, now) {
                            tracing::error!(%group, %err, "engine refused tailed items");
                        }
                        self.dirty.insert(group);
                    }
                }
            }
            Event::Presence { round } => {
                self.presence_in_flight = false;
                let round = round.unwrap_or_default();
                for (group, facts) in &round.facts {
                    self.on_presence(group, facts);
                }
                self.on_shared_status(round.shared);
            }
        }
    }

    /// Starts or stops the cluster tails of a group: a direction is tailed while its consumer
    /// is connected here and its producer is not.
    fn update_tails(&mut self, gid: &GroupId) {
        let Some((link, _)) = &self.cluster else {
            return;
        };
        let Some(loaded) = self.groups.get(gid) else {
            return;
        };
        let events = &self.events_tx;
        let tails = self
            .tails
            .get_or_insert_with(|| cluster::Tails::spawn(link, events.clone()));
        for direction in Direction::BOTH {
            let want = loaded.slots[direction.consumer().index()].is_some()
                && loaded.slots[direction.producer().index()].is_none();
            if want && !tails.is_tailing(gid, direction) {
                let after = self.engine.stream_position(gid, direction).unwrap_or(0);
                tails.start(gid, direction, after);
            } else if !want {
                tails.stop(gid, direction);
            }
        }
    }

    /// Starts a cluster presence round unless one is running.
    fn start_presence(&mut self) {
        let Some((link, conn)) = &self.cluster else {
            return;
        };
        if self.presence_in_flight {
            return;
        }
        let asks = self
            .groups
            .iter()
            .map(|(gid, loaded)| {
                let local = [loaded.slots[0].is_some(), loaded.slots[1].is_some()];
                let status = (local[0] || local[1])
                    .then(|| self.engine.group_status(gid))
                    .flatten()
                    .map(|status| cluster::encode_status(&status));
                PresenceAsk {
                    group: gid.clone(),
                    local,
                    status,
                }
            })
            .collect();
        self.presence_in_flight = true;
        cluster::spawn_presence(link.clone(), conn.clone(), asks, self.events_tx.clone());
    }

    /// Applies what a presence round found for a group: remote sides count as online for the
    /// mode (and a change is mirrored into the records), and the log's heads and remote
    /// consumers' cursors move the engine's view.
    fn on_presence(&mut self, gid: &GroupId, facts: &cluster::GroupFacts) {
        let now = self.now_ms();
        let Some((link, _)) = &self.cluster else {
            return;
        };
        let Some(loaded) = self.groups.get_mut(gid) else {
            return;
        };
        let mut jobs = Vec::new();
        for index in 0..2 {
            let side = cluster::side_at(index);
            let local = loaded.slots[index].is_some();
            let remote = !local
                && facts.holders[index]
                    .as_deref()
                    .is_some_and(|holder| holder != link.instance);
            let before = loaded.remote[index].replace(remote);
            if before == Some(remote) {
                continue;
            }
            if let Err(err) = self.engine.handle_remote_presence(gid, side, remote, now) {
                tracing::error!(group = %gid, %err, "engine refused a presence change");
            }
            // The instance a side joins or leaves writes its presence; a side whose instance
            // died is written offline by those that saw its key expire.
            if before.is_some() && !local {
                jobs.push(SyncJob::Online {
                    dongle: loaded.dongles[index],
                    online: remote,
                });
            }
        }
        for direction in Direction::BOTH {
            let index = direction.index();
            let consumer_local = loaded.slots[direction.consumer().index()].is_some();
            let cursor = if consumer_local {
                None
            } else {
                facts.cursors[index]
            };
            if let Err(err) =
                self.engine
                    .handle_remote_progress(gid, direction, facts.heads[index], cursor, now)
            {
                tracing::error!(group = %gid, %err, "engine refused the log's progress");
            }
        }
        self.dirty.insert(gid.clone());
        for job in jobs {
            self.send_sync(job);
        }
    }

    /// Shows the shared status of the groups this engine holds nothing of (no side was
    /// connected here since the start): the status an instance holding a side wrote, so every
    /// instance answers the same mode and backlog (`docs/cluster.md`). Groups no longer in
    /// the shared status (deleted) are dropped from the cache.
    fn on_shared_status(&mut self, shared: Vec<(Uuid, GroupStatus)>) {
        let mut seen = HashSet::with_capacity(shared.len());
        for (group, mut status) in shared {
            seen.insert(group);
            if self.groups.contains_key(&GroupId::new(group.to_string())) {
                continue;
            }
            status.backlog = status.waiting();
            self.cache.set(group, status);
        }
        for group in std::mem::replace(&mut self.shared_shown, seen.clone()) {
            if !seen.contains(&group) && !self.groups.contains_key(&GroupId::new(group.to_string()))
            {
                self.cache.remove(group);
            }
        }
    }

    fn on_mode_change(&mut self, change: &ModeChange) {
        let activated = change.state.mode != GroupMode::Inactive;
        self.set_activation(change.state.id, activated);
    }

    fn set_activation(&mut self, group: Uuid, activated: bool) {
        self.hints.insert(group, activated);
        let gid = GroupId::new(group.to_string());
        if !self.engine.has_group(&gid) {
            return;
        }
        let now = self.now_ms();
        let result = if activated {
            self.engine.handle_activate(&gid, now)
        } else {
            self.engine.handle_deactivate(&gid, now)
        };
        if let Err(err) = result {
            tracing::error!(%group, %err, "engine refused an activation change");
        }
        self.dirty.insert(gid);
    }

    /// Re-reads activation and existence of every loaded group from the records (after the
    /// mode feed or the deletion feed lagged, and periodically as a backstop).
    fn resync_groups(&self) {
        let ids: Vec<Uuid> = self.groups.values().map(|l| l.uuid).collect();
        if ids.is_empty() {
            return;
        }
        let store = Arc::clone(self.state.store());
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let result = store
                .call(move |store| {
                    ids.into_iter()
                        .map(|id| store.group(id).map(|g| (id, g.map(|g| g.activated))))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
            match result {
                Ok(groups) => {
                    for (group, activated) in groups {
                        let event = match activated {
                            Some(activated) => Event::Activation { group, activated },
                            None => Event::GroupGone { group },
                        };
                        let _ = events.send(event);
                    }
                }
                Err(err) => tracing::warn!(%err, "re-reading relay groups failed"),
            }
        });
    }

    /// Unloads a deleted group: its connections are closed, its gauges removed.
    fn remove_group(&mut self, group: Uuid) {
        // Also for a group never loaded here: the mode feed left a hint for it, and its
        // sides may have sent frames that the console showed.
        self.hints.remove(&group);
        {
            let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
            shown.remove(&(group, Side::A));
            shown.remove(&(group, Side::B));
        }
        let gid = GroupId::new(group.to_string());
        if let Some((link, conn)) = &self.cluster {
            cluster::spawn_forget_status(link, conn.clone(), group);
        }
        let Some(loaded) = self.groups.remove(&gid) else {
            return;
        };
        tracing::info!(%group, "relay group deleted; closing its connections");
        if let Some(tails) = &mut self.tails {
            for direction in Direction::BOTH {
                tails.stop(&gid, direction);
            }
        }
        for (index, slot) in loaded.slots.iter().enumerate() {
            if let Some(slot) = slot {
                slot.outbox.push(Out::Fatal(
                    ErrorCode::Unauthorized,
                    "the group was deleted".to_owned(),
                ));
                self.send_sync(SyncJob::Online {
                    dongle: loaded.dongles[index],
                    online: false,
                });
            }
        }
        let undelivered = self
            .engine
            .group_status(&gid)
            .map_or(0, |status| status.backlog.a_to_b + status.backlog.b_to_a);
        self.engine.remove_group(&gid);
        // Dropping the senders lets the lanes finish what is queued; then the streams go.
        let lanes = loaded.lanes.into_iter().map(|lane| lane.task).collect();
        storage::spawn_delete_group(
            self.log.clone(),
            gid.clone(),
            lanes,
            undelivered,
            self.metrics.clone(),
        );
        self.cursors.retain(|(g, _), _| *g != gid);
        self.dirty.remove(&gid);
        self.cache.remove(group);
        for direction in Direction::BOTH {
            self.metrics.backlog.remove(&GroupDirectionLabels {
                group: group.to_string(),
                direction: direction.as_str(),
            });
        }
    }

    fn start_trims(&mut self) {
        let retention = Retention {
            max_len: self.config.max_len,
            max_age_ms: self
                .config
                .max_age
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        };
        if retention.max_len.is_none() && retention.max_age_ms.is_none() {
            return;
        }
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        for (gid, loaded) in &mut self.groups {
            for direction in Direction::BOTH {
                let index = direction.index();
                if loaded.trimming[index] {
                    continue;
                }
                loaded.trimming[index] = true;
                storage::spawn_trim(
                    self.log.clone(),
                    gid.clone(),
                    direction,
                    retention,
                    now_ms,
                    self.events_tx.clone(),
                );
            }
        }
    }

    fn flush_cursors(&mut self) {
        if self.flushing || self.cursors.is_empty() {
            return;
        }
        self.flushing = true;
        let cursors: Vec<_> = self.cursors.drain().collect();
        let log = self.log.clone();
        let metrics = self.metrics.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            storage::store_cursors(&log, cursors, &metrics).await;
            let _ = events.send(Event::CursorsFlushed);
        });
    }

    fn route(&mut self, output: RelayOutput) {
        match output {
            RelayOutput::Deliver {
                group,
                to,
                items,
                source,
            } => {
                let Some(loaded) = self.groups.get_mut(&group) else {
                    return;
                };
                let count = items.len() as u64;
                self.metrics.frames_relayed.inc_by(count);
                let last = items.last().map_or(0, |i| i.seq);
                let arrivals = &mut loaded.arrivals[to.inbound().index()];
                let mut arrived = None;
                while let Some(&(seq, at)) = arrivals.front() {
                    if seq > last {
                        break;
                    }
                    arrived = Some(at);
                    arrivals.pop_front();
                }
                if arrived.is_none() {
                    arrived = arrivals.front().map(|&(_, at)| at);
                }
                if let Some(at) = arrived {
                    self.metrics
                        .delivery_delay
                        .observe(at.elapsed().as_secs_f64());
                }
                if loaded.push(to, Out::Frames(items, source)) == Pushed::Overflow {
                    self.metrics
                        .errors
                        .get_or_create(&CodeLabels {
                            code: "slow_consumer",
                        })
                        .inc();
                }
                self.dirty.insert(group);
            }
            RelayOutput::Ack { group, to, up_to } => {
                if let Some(loaded) = self.groups.get(&group) {
                    loaded.push(to, Out::Ack(up_to));
                }
            }
            RelayOutput::Gap { group, to, gap } => {
                if let Some(loaded) = self.groups.get(&group) {
                    loaded.push(to, Out::Gap(gap.into()));
                }
            }
            RelayOutput::ModeChanged { group, status } => {
                let Some(loaded) = self.groups.get_mut(&group) else {
                    return;
                };
                loaded.mode = status.mode;
                let message = GroupState::from_status(&group, &status);
                for side in [Side::A, Side::B] {
                    loaded.push(side, Out::GroupState(message.clone()));
                }
                let uuid = loaded.uuid;
                self.dirty.insert(group);
                self.send_sync(SyncJob::Refresh { group: uuid });
            }
            RelayOutput::BufferPressure {
                group,
                direction,
                trimmed,
                unacknowledged,
            } => {
                self.metrics
                    .frames_trimmed_undelivered
                    .get_or_create(&ReasonLabels {
                        reason: trimmed.reason.as_str(),
                    })
                    .inc_by(unacknowledged);
                let Some(uuid) = self.groups.get(&group).map(|l| l.uuid) else {
                    return;
                };
                self.send_sync(SyncJob::Pressure {
                    group: uuid,
                    direction,
                    trimmed,
                    unacknowledged,
                });
            }
            RelayOutput::ResetProducer { group, side } => {
                if let Some(loaded) = self.groups.get(&group) {
                    loaded.push(
                        side,
                        Out::Fatal(
                            ErrorCode::Internal,
                            "storing frames failed; reconnect and resend from the last ack"
                                .to_owned(),
                        ),
                    );
                }
                self.metrics
                    .errors
                    .get_or_create(&CodeLabels { code: "internal" })
                    .inc();
                self.side_gone(&group, side);
            }
        }
    }
}
