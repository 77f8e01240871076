//! # The live console: Server-Sent Event streams of dongles and groups
//!
//! Events (`presence`, `can_frame`, `log`, `group_state`) are published into one stream per
//! dongle (`dongle:<id>`) and per group (`group:<id>`) of sse-core's hub — in memory by default,
//! Redis when the server has a Redis URL — and served by [`routes`] as
//! `GET /api/v1/streams/dongles/{id}/console`, `…/groups/{id}/console` and the multiplexed
//! `GET /api/v1/streams/console?dongles=…&groups=…` (see `docs/sse.md` and `docs/api.md`).
//!
//! ## Publishing never blocks
//! [`Console::can_frame`], [`Console::log`] and the presence calls are synchronous: they decide
//! sampling, format the event and `try_send` it into a bounded queue. One publisher task drains
//! the queue in batches (for Redis, streams of a batch are written concurrently, each in order).
//! A full queue drops the event, counts it (`console_events_dropped_total{reason="queue_full"}`)
//! and the publisher later writes one `log` warning per affected stream saying how many were
//! lost, so a gap is never silent.
//!
//! ## What it does not do
//! It never touches the relay: sampling and drops affect console output only. It keeps no
//! history beyond the hub's bounds (count and age from the `console:` config section).

pub mod config;
mod events;
mod hub;
mod multiplex;
pub(crate) mod routes;
mod sampling;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use can_io::wire::relay_json::CanRelayFrame;
use chrono::Utc;
use sse_core::events::LogLevel;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

pub use config::{ConsoleConfig, ConsoleSettings};
pub use events::PresenceStatus;

use crate::error::ServerError;
use crate::group_mode::BacklogProbe;
use crate::metrics::{DropLabels, EventTypeLabels, ServerMetrics};
use crate::store::{ModeChange, Store};
use hub::Hub;
use sampling::Samplers;

/// Most events the publisher takes from the queue at once.
const PUBLISH_BATCH: usize = 512;
/// How often idle in-memory streams and idle samplers are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// Which console an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleScope {
    /// A dongle's console (`dongle:<id>`).
    Dongle(Uuid),
    /// A group's console (`group:<id>`).
    Group(Uuid),
}

impl ConsoleScope {
    /// The hub's stream key: `dongle:<uuid>` or `group:<uuid>`.
    pub fn stream_key(&self) -> String {
        match self {
            ConsoleScope::Dongle(id) => format!("dongle:{id}"),
            ConsoleScope::Group(id) => format!("group:{id}"),
        }
    }
}

/// One event waiting for the publisher.
#[derive(Debug)]
struct Job {
    scope: ConsoleScope,
    event_type: &'static str,
    data: String,
}

/// Events dropped before the publisher saw them, per stream, not yet announced on the stream.
#[derive(Debug, Default)]
struct DropLedger {
    any: AtomicBool,
    counts: Mutex<HashMap<(ConsoleScope, &'static str), u64>>,
}

impl DropLedger {
    fn add(&self, scope: ConsoleScope, reason: &'static str, n: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((scope, reason)).or_insert(0) += n;
        self.any.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<((ConsoleScope, &'static str), u64)> {
        if !self.any.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.drain().collect()
    }
}

/// The metric handles the console updates (clones of the server's families).
#[derive(Debug, Clone)]
struct ConsoleMetrics {
    subscribers: prometheus_client::metrics::gauge::Gauge,
    published: prometheus_client::metrics::family::Family<
        EventTypeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    dropped: prometheus_client::metrics::family::Family<
        DropLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    sampled_out: prometheus_client::metrics::counter::Counter,
}

impl ConsoleMetrics {
    fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }
}

#[derive(Debug)]
struct Inner {
    config: ConsoleConfig,
    hub: Arc<Hub>,
    queue: mpsc::Sender<Job>,
    samplers: Samplers,
    metrics: ConsoleMetrics,
    ledger: Arc<DropLedger>,
    /// When each dongle's last `seen` event was published.
    seen: Mutex<HashMap<Uuid, Instant>>,
    /// Groups whose state the console has published or been asked to stream: re-read after the
    /// mode-change channel lagged.
    known_groups: Mutex<HashSet<Uuid>>,
    closed: watch::Sender<bool>,
}

/// The live console: publishes events into per-dongle and per-group streams and serves them.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Console {
    /// Creates the console and starts its publisher and housekeeping tasks (needs a tokio
    /// runtime). With `redis_url` the streams live in Redis (connected on first use).
    pub fn start(
        config: ConsoleConfig,
        redis_url: Option<&str>,
        metrics: &ServerMetrics,
    ) -> Result<Console, ServerError> {
        let hub = Arc::new(
            Hub::new(&config, redis_url).map_err(|err| ServerError::RedisUrl {
                detail: err.to_string(),
            })?,
        );
        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        let metrics = ConsoleMetrics {
            subscribers: metrics.sse_subscribers.clone(),
            published: metrics.console_events_published.clone(),
            dropped: metrics.console_events_dropped.clone(),
            sampled_out: metrics.console_can_frames_sampled_out.clone(),
        };
        let (closed, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            samplers: Samplers::new(config.sampling_threshold_per_s),
            config,
            hub: Arc::clone(&hub),
            queue,
            metrics: metrics.clone(),
            ledger: Arc::new(DropLedger::default()),
            seen: Mutex::new(HashMap::new()),
            known_groups: Mutex::new(HashSet::new()),
            closed,
        });
        tokio::spawn(publish_loop(
            hub,
            jobs,
            metrics,
            Arc::clone(&inner.ledger),
            inner.closed.subscribe(),
        ));
        tokio::spawn(prune_loop(Arc::downgrade(&inner)));
        Ok(Console { inner })
    }

    /// Turns mode changes of `store`'s groups (from `changes`, i.e.
    /// `AppState::subscribe_mode_changes`) into `group_state` events until the console closes.
    /// After the channel lagged, every group the console knows is re-read and published.
    pub fn watch_mode_changes(
        &self,
        changes: broadcast::Receiver<ModeChange>,
        store: Arc<Store>,
        backlog: Arc<dyn BacklogProbe>,
    ) {
        tokio::spawn(watch_groups(
            Arc::downgrade(&self.inner),
            changes,
            store,
            backlog,
            self.inner.closed.subscribe(),
        ));
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ConsoleConfig {
        &self.inner.config
    }

    /// Ends every open console response and stops the publisher once it has written what is
    /// queued. Events reported afterwards are dropped and counted (`reason="closed"`).
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// A frame seen from a dongle: published as `can_frame` on the dongle's console and, when
    /// `group` is given, on the group's console, each sampled when fast. Never blocks.
    pub fn can_frame(&self, dongle: Uuid, group: Option<Uuid>, frame: &CanRelayFrame) {
        let now = now_ms();
        let inner = &self.inner;
        let on_dongle = self.sample(ConsoleScope::Dongle(dongle), now);
        let on_group = group.is_some_and(|g| self.sample(ConsoleScope::Group(g), now));
        let skipped = u64::from(!on_dongle) + u64::from(group.is_some() && !on_group);
        if skipped > 0 {
            inner.metrics.sampled_out.inc_by(skipped);
        }
        if !on_dongle && !on_group {
            return;
        }
        let data = events::can_frame(dongle, frame);
        match (on_dongle, group.filter(|_| on_group)) {
            (true, Some(g)) => {
                self.enqueue(ConsoleScope::Dongle(dongle), "can_frame", data.clone());
                self.enqueue(ConsoleScope::Group(g), "can_frame", data);
            }
            (true, None) => self.enqueue(ConsoleScope::Dongle(dongle), "can_frame", data),
            (false, Some(g)) => self.enqueue(ConsoleScope::Group(g), "can_frame", data),
            (false, None) => {}
        }
    }

    /// Samples one `can_frame` on `scope`; announces a switch with a `log` event.
    fn sample(&self, scope: ConsoleScope, now: u64) -> bool {
        let decision = self.inner.samplers.decide(scope, now);
        if let Some(switch) = decision.switch {
            tracing::info!(stream = %scope.stream_key(), ?switch, "console can_frame sampling switched");
            self.enqueue(scope, "log", self.inner.samplers.notice(switch, now));
        }
        decision.send
    }

    /// A `log` line on a dongle's or group's console (`source` `"server"`); `fields` (any JSON,
    /// left out when null) carries structured details. Never blocks.
    pub fn log(
        &self,
        scope: ConsoleScope,
        level: LogLevel,
        message: String,
        fields: serde_json::Value,
    ) {
        let data = events::log(Utc::now(), level, "server", &message, &fields);
        self.enqueue(scope, "log", data);
    }

    /// A dongle's presence: published on its console and, when it is in `group`, on the
    /// group's console. Never blocks.
    pub fn presence(&self, dongle: Uuid, group: Option<Uuid>, status: PresenceStatus) {
        let data = events::presence(Utc::now(), dongle, status);
        if let Some(group) = group {
            self.enqueue(ConsoleScope::Group(group), "presence", data.clone());
        }
        self.enqueue(ConsoleScope::Dongle(dongle), "presence", data);
    }

    /// Publishes an agent's `presence` on the streams of its dongles and of their groups (each
    /// group once).
    pub fn agent_presence(
        &self,
        agent: Uuid,
        dongles: &[(Uuid, Option<Uuid>)],
        status: PresenceStatus,
    ) {
        let data = events::agent_presence(Utc::now(), agent, status);
        let mut groups: Vec<Uuid> = dongles.iter().filter_map(|(_, g)| *g).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            self.enqueue(ConsoleScope::Group(group), "presence", data.clone());
        }
        for (dongle, _) in dongles {
            self.enqueue(ConsoleScope::Dongle(*dongle), "presence", data.clone());
        }
    }

    /// Whether a `seen` event for `dongle` is due (none within `seen_interval`); if so, the
    /// caller is expected to publish one now.
    pub fn seen_due(&self, dongle: Uuid) -> bool {
        let now = Instant::now();
        let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&dongle) {
            Some(last) if now.duration_since(*last) < self.inner.config.seen_interval => false,
            _ => {
                seen.insert(dongle, now);
                true
            }
        }
    }

    /// A vehicle command changed state: `command_status` on the console of the dongle it
    /// runs through. Never blocks.
    pub fn command_status(
        &self,
        dongle: Uuid,
        command: Uuid,
        status: sse_core::events::CommandState,
        error_message: Option<&str>,
    ) {
        let data = events::command_status(Utc::now(), dongle, command, status, error_message);
        self.enqueue(ConsoleScope::Dongle(dongle), "command_status", data);
    }

    /// Publishes a group's state as `group_state` on its console.
    pub fn group_state(&self, state: &crate::store::GroupState) {
        self.note_group(state.id);
        self.enqueue(
            ConsoleScope::Group(state.id),
            "group_state",
            events::group_state(Utc::now(), state),
        );
    }

    fn note_group(&self, group: Uuid) {
        self.inner
            .known_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group);
    }

    fn enqueue(&self, scope: ConsoleScope, event_type: &'static str, data: String) {
        let job = Job {
            scope,
            event_type,
            data,
        };
        match self.inner.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.inner.metrics.dropped("queue_full");
                self.inner.ledger.add(job.scope, "queue_full", 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.inner.metrics.dropped("closed"),
        }
    }

    fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn metrics(&self) -> &ConsoleMetrics {
        &self.inner.metrics
    }

    fn closed(&self) -> watch::Receiver<bool> {
        self.inner.closed.subscribe()
    }
}

/// Drains the queue into the hub until the console closes (then drains what is left) or every
/// [`Console`] is gone.
async fn publish_loop(
    hub: Arc<Hub>,
    mut jobs: mpsc::Receiver<Job>,
    metrics: ConsoleMetrics,
    ledger: Arc<DropLedger>,
    mut closed: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut failures = WarnThrottle::default();
    let mut drop_log = WarnThrottle::default();
    loop {
        let closing = tokio::select! {
            n = jobs.recv_many(&mut batch, PUBLISH_BATCH) => n == 0,
            _ = closed.wait_for(|c| *c) => true,
        };
        if closing {
            jobs.close();
            while let Ok(job) = jobs.try_recv() {
                batch.push(job);
            }
        }
        publish_batch(&hub, &mut batch, &metrics, &ledger, &mut failures).await;
        let drops = ledger.take();
        let mut hub_down = false;
        for ((scope, reason), n) in drops {
            // The drops are already counted; a notice that cannot be stored (hub still down)
            // goes back to the ledger for the next round instead of being counted again.
            if !hub_down {
                let why = match reason {
                    "queue_full" => "the console queue was full",
                    _ => "the event hub could not store them",
                };
                let message = format!("{n} console events were dropped: {why}");
                let data = events::log(
                    Utc::now(),
                    LogLevel::Warn,
                    "server",
                    &message,
                    &serde_json::json!({ "dropped": n, "reason": reason }),
                );
                match hub.publish(&scope.stream_key(), "log", &data).await {
                    Ok(_) => {
                        metrics
                            .published
                            .get_or_create(&EventTypeLabels { event_type: "log" })
                            .inc();
                        if let Some(dropped) = drop_log.add(n) {
                            tracing::warn!(
                                dropped,
                                reason,
                                "console events were dropped; their streams got a log event saying so"
                            );
                        }
                        continue;
                    }
                    Err(_) => hub_down = true,
                }
            }
            ledger.add(scope, reason, n);
        }
        if closing {
            tracing::debug!("console publisher stopped");
            return;
        }
    }
}

/// Shortest time between two warnings of one kind (publish failures, announced drops).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Counts events of one kind and says when a warning with the count since the last one is due
/// (at most once per [`FAILURE_LOG_INTERVAL`]).
#[derive(Debug, Default)]
struct WarnThrottle {
    last: Option<Instant>,
    count: u64,
}

impl WarnThrottle {
    /// Adds `n`; `Some(total since the last warning)` when a warning is due now.
    fn add(&mut self, n: u64) -> Option<u64> {
        self.count += n;
        if self
            .last
            .is_some_and(|at| at.elapsed() < FAILURE_LOG_INTERVAL)
        {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// Writes `batch` to the hub, keeping each stream's order, and empties it.
async fn publish_batch(
    hub: &Hub,
    batch: &mut Vec<Job>,
    metrics: &ConsoleMetrics,
    ledger: &DropLedger,
    failures: &mut WarnThrottle,
) {
    if batch.is_empty() {
        return;
    }
    let mut first_error = None;
    let mut failed = 0u64;
    let mut record = |job: &Job, result: Result<_, sse_core::SseError>| match result {
        Ok(_) => {
            metrics
                .published
                .get_or_create(&EventTypeLabels {
                    event_type: job.event_type,
                })
                .inc();
        }
        Err(err) => {
            metrics.dropped("backend_error");
            ledger.add(job.scope, "backend_error", 1);
            failed += 1;
            first_error.get_or_insert(err);
        }
    };
    match hub {
        Hub::Memory(_) => {
            for job in batch.iter() {
                let result = hub
                    .publish(&job.scope.stream_key(), job.event_type, &job.data)
                    .await;
                record(job, result);
            }
        }
        Hub::Redis(_) => {
            // One chain per stream (in order), the chains concurrently: Redis pipelines them on
            // the shared connection.
            let mut chains: Vec<(ConsoleScope, Vec<&Job>)> = Vec::new();
            let mut index: HashMap<ConsoleScope, usize> = HashMap::new();
            for job in batch.iter() {
                let i = *index.entry(job.scope).or_insert_with(|| {
                    chains.push((job.scope, Vec::new()));
                    chains.len() - 1
                });
                chains[i].1.push(job);
            }
            let results =
                futures::future::join_all(chains.into_iter().map(|(scope, jobs)| async move {
                    let key = scope.stream_key();
                    let mut out = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        let result = hub.publish(&key, job.event_type, &job.data).await;
                        out.push((job, result));
                    }
                    out
                }))
                .await;
            for (job, result) in results.into_iter().flatten() {
                record(job, result);
            }
        }
    }
    if let Some(err) = first_error
        && let Some(failed) = failures.add(failed)
    {
        tracing::warn!(
            failed,
            error = %err,
            "console events could not be published (counted in console_events_dropped_total)"
        );
    }
    batch.clear();
}

/// Forgets idle in-memory streams, samplers and seen-times every [`PRUNE_INTERVAL`].
async fn prune_loop(console: Weak<Inner>) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = console.upgrade() else {
            return;
        };
        if *inner.closed.borrow() {
            return;
        }
        let pruned = inner.hub.prune();
        let idle_ms = u64::try_from(inner.config.history_max_age.as_millis()).unwrap_or(u64::MAX);
        inner.samplers.prune(now_ms(), idle_ms.max(10_000));
        let seen_ttl = inner.config.seen_interval;
        inner
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, at| at.elapsed() < seen_ttl);
        if pruned > 0 {
            tracing::debug!(pruned, "idle console streams forgotten");
        }
    }
}

/// The `group_state` source: mode changes, and a re-read of known groups after a lag.
async fn watch_groups(
    console: Weak<Inner>,
    mut changes: broadcast::Receiver<ModeChange>,
    store: Arc<Store>,
    backlog: Arc<dyn BacklogProbe>,
    mut closed: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            r = changes.recv() => r,
            _ = closed.wait_for(|c| *c) => return,
        };
        let Some(inner) = console.upgrade() else {
            return;
        };
        let console = Console { inner };
        match received {
            Ok(change) => console.group_state(&change.state),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let groups: Vec<Uuid> = console
                    .inner
                    .known_groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .copied()
                    .collect();
                tracing::warn!(
                    missed,
                    groups = groups.len(),
                    "group mode changes lagged; re-reading known groups"
                );
                for id in groups {
                    match store.call(move |store| store.group(id)).await {
                        Ok(Some(group)) => console.group_state(&group.state(backlog.backlog(id))),
                        Ok(None) => {}
                        Err(err) => {
                            console.inner.metrics.dropped("backend_error");
                            tracing::warn!(group = %id, error = %err, "cannot re-read a group for its console");
                        }
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
