//! # The live console: Server-Sent Event streams of dongles and groups
//!
//! Events (`presence`, `can_frame`, `log`, `group_state`) are published into one stream per
//! dongle (`dongle:<id>`) and per group (`group:<id>`) of sse-core's hub — in memory by default,
//! Redis when the server has a Redis URL — and served by [`routes`] as
//! `GET /api/v1/streams/dongles/{id}/console`, `…/groups/{id}/console` and the multiplexed
//! `GET /api/v1/streams/console?dongles=…&groups=…` (see `docs/sse.md` and `docs/api.md`).
//!
//! The rules come from sse-core, which this module only wires to the server: event payloads
//! and stream names ([`sse_core::events`]), sampling ([`sse_core::sampler::StreamSamplers`]),
//! the hub and its Redis layout ([`sse_core::EventBackend`]), and the multiplexed body with its
//! composite IDs ([`sse_core::multiplex::open_body`]).
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
pub(crate) mod routes;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use can_io::wire::relay_json::{CanRelayFrame, RelayDirection};
use chrono::Utc;
use sse_core::backend::SystemClock;
use sse_core::encoder::BodyOptions;
use sse_core::events::{
    CanFrameEvent, ConsoleEvent, Direction, GroupState, GroupView, LogEvent, LogLevel, Presence,
    timestamp,
};
use sse_core::sampler::{SamplingConfig, StreamSamplers};
use sse_core::{
    EventBackend, MemoryBackend, RedisBackend, RedisBackendConfig, SseError, StreamBounds,
    StreamConfig,
};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

pub use config::{ConsoleConfig, ConsoleSettings};
pub use sse_core::events::{ConsoleStream, PresenceStatus};

use crate::error::ServerError;
use crate::group_mode::RelayProbe;
use crate::metrics::{EventTypeLabels, ReasonLabels, ServerMetrics};
use crate::store::{ModeChange, Store};

/// Most events the publisher takes from the queue at once.
const PUBLISH_BATCH: usize = 512;
/// How often idle in-memory streams and idle samplers are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// sse-core's hub behind the consoles: in memory, or Redis (shared by server instances) when
/// the server has a Redis URL. The Redis backend connects on first use and pauses after a
/// failed attempt, so a server whose Redis is briefly unreachable still starts; `/readyz`
/// reports it meanwhile, publishes are dropped and counted, and subscribers get a stream that
/// ends at once and reconnect.
struct Hub {
    backend: Arc<dyn EventBackend>,
    /// Redis: streams of a batch are written concurrently (pipelined on one connection).
    redis: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.redis {
            "Hub::Redis"
        } else {
            "Hub::Memory"
        })
    }
}

impl Hub {
    /// A hub for `config`: Redis when `redis_url` is given (validated, not yet connected).
    fn open(config: &ConsoleConfig, redis_url: Option<&str>) -> Result<Hub, SseError> {
        let stream = StreamConfig {
            bounds: StreamBounds {
                max_events: config.history_events,
                max_age_ms: u64::try_from(config.history_max_age.as_millis()).unwrap_or(u64::MAX),
            },
        };
        let backend: Arc<dyn EventBackend> = match redis_url {
            None => Arc::new(MemoryBackend::with_budget(
                Arc::new(SystemClock),
                stream,
                config.history_budget_bytes,
            )),
            Some(url) => {
                let mut redis = RedisBackendConfig::new(url);
                redis.key_prefix.clone_from(&config.redis_key_prefix);
                redis.default_stream = stream;
                Arc::new(RedisBackend::new(redis, Arc::new(SystemClock))?)
            }
        };
        Ok(Hub {
            backend,
            redis: redis_url.is_some(),
        })
    }
}

/// One event waiting for the publisher.
#[derive(Debug)]
struct Job {
    scope: ConsoleStream,
    event_type: &'static str,
    data: String,
}

/// Events dropped before the publisher saw them, per stream, not yet announced on the stream.
#[derive(Debug, Default)]
struct DropLedger {
    any: AtomicBool,
    counts: Mutex<HashMap<(ConsoleStream, &'static str), u64>>,
    /// Wakes the publisher for drops that come with nothing queued (an invalid frame).
    wake: tokio::sync::Notify,
}

impl DropLedger {
    fn add(&self, scope: ConsoleStream, reason: &'static str, n: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((scope, reason)).or_insert(0) += n;
        self.any.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<((ConsoleStream, &'static str), u64)> {
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
        ReasonLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    sampled_out: prometheus_client::metrics::counter::Counter,
    history_bytes: prometheus_client::metrics::gauge::Gauge,
    history_events: prometheus_client::metrics::gauge::Gauge,
    history_trimmed: prometheus_client::metrics::counter::Counter,
}

impl ConsoleMetrics {
    fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Copies the in-memory hub's history totals into the gauges (nothing with Redis).
    fn observe_history(&self, hub: &Hub) {
        let Some(stats) = hub.backend.history_stats() else {
            return;
        };
        self.history_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        self.history_events
            .set(i64::try_from(stats.events).unwrap_or(i64::MAX));
        let seen = self.history_trimmed.get();
        self.history_trimmed
            .inc_by(stats.trimmed_by_budget.saturating_sub(seen));
    }
}

#[derive(Debug)]
struct Inner {
    config: ConsoleConfig,
    hub: Arc<Hub>,
    queue: mpsc::Sender<Job>,
    samplers: StreamSamplers<ConsoleStream>,
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
        let redis = redis_url.is_some();
        let hub = Arc::new(
            Hub::open(&config, redis_url).map_err(|err| ServerError::RedisUrl {
                detail: err.to_string(),
            })?,
        );
        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        if !redis {
            metrics
                .console_history_budget_bytes
                .set(i64::try_from(config.history_budget_bytes).unwrap_or(i64::MAX));
        }
        let metrics = ConsoleMetrics {
            subscribers: metrics.sse_subscribers.clone(),
            published: metrics.console_events_published.clone(),
            dropped: metrics.console_events_dropped.clone(),
            sampled_out: metrics.console_can_frames_sampled_out.clone(),
            history_bytes: metrics.console_history_bytes.clone(),
            history_events: metrics.console_history_events.clone(),
            history_trimmed: metrics.console_history_trimmed_by_budget.clone(),
        };
        let (closed, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            samplers: StreamSamplers::new(SamplingConfig {
                threshold_per_s: config.sampling_threshold_per_s,
            }),
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
        relay: Arc<dyn RelayProbe>,
    ) {
        tokio::spawn(watch_groups(
            Arc::downgrade(&self.inner),
            changes,
            store,
            relay,
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
        let on_dongle = Some(ConsoleStream::Dongle(dongle)).filter(|d| self.sample(*d, now));
        let on_group = group
            .map(ConsoleStream::Group)
            .filter(|g| self.sample(*g, now));
        let skipped =
            u64::from(on_dongle.is_none()) + u64::from(group.is_some() && on_group.is_none());
        if skipped > 0 {
            self.inner.metrics.sampled_out.inc_by(skipped);
        }
        let streams = on_dongle.into_iter().chain(on_group);
        let event = ConsoleEvent::from(can_frame_event(dongle, frame));
        let data = event.to_data();
        for stream in streams {
            self.enqueue_data(stream, event.event_type(), data.clone());
        }
    }

    /// Samples one `can_frame` on `stream`; announces a switch with a `log` event.
    fn sample(&self, stream: ConsoleStream, now: u64) -> bool {
        let decision = self.inner.samplers.decide(&stream, now);
        if let Some(switch) = decision.switch {
            tracing::info!(%stream, ?switch, "console can_frame sampling switched");
            self.enqueue(stream, &self.inner.samplers.notice(switch, now).into());
        }
        decision.send
    }

    /// A `log` line on a dongle's or group's console (`source` `"server"`); `fields` (any JSON,
    /// left out when null) carries structured details. Never blocks.
    pub fn log(
        &self,
        scope: ConsoleStream,
        level: LogLevel,
        message: String,
        fields: serde_json::Value,
    ) {
        let event = LogEvent::new(Utc::now(), level, SERVER_SOURCE, &message).with_fields(fields);
        self.enqueue(scope, &event.into());
    }

    /// A dongle's presence: published on its console and, when it is in `group`, on the
    /// group's console. Never blocks.
    pub fn presence(&self, dongle: Uuid, group: Option<Uuid>, status: PresenceStatus) {
        let event = ConsoleEvent::from(Presence::dongle(Utc::now(), dongle, status));
        if let Some(group) = group {
            self.enqueue(ConsoleStream::Group(group), &event);
        }
        self.enqueue(ConsoleStream::Dongle(dongle), &event);
    }

    /// Publishes an agent's `presence` on the streams of its dongles and of their groups (each
    /// group once).
    pub fn agent_presence(
        &self,
        agent: Uuid,
        dongles: &[(Uuid, Option<Uuid>)],
        status: PresenceStatus,
    ) {
        let event = ConsoleEvent::from(Presence::agent(Utc::now(), agent, status));
        let mut groups: Vec<Uuid> = dongles.iter().filter_map(|(_, g)| *g).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            self.enqueue(ConsoleStream::Group(group), &event);
        }
        for (dongle, _) in dongles {
            self.enqueue(ConsoleStream::Dongle(*dongle), &event);
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
        let event = ConsoleEvent::CommandStatus(sse_core::events::CommandStatus {
            ts: sse_core::events::timestamp(Utc::now()),
            command_id: command,
            dongle_id: dongle,
            status,
            error_message: error_message.map(str::to_owned),
        });
        self.enqueue(ConsoleStream::Dongle(dongle), &event);
    }

    /// Publishes a group's state as `group_state` on its console.
    pub fn group_state(&self, state: &GroupView) {
        self.note_group(state.id);
        self.enqueue(
            ConsoleStream::Group(state.id),
            &GroupState {
                ts: timestamp(Utc::now()),
                group: state.clone(),
            }
            .into(),
        );
    }

    fn note_group(&self, group: Uuid) {
        self.inner
            .known_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group);
    }

    fn enqueue(&self, stream: ConsoleStream, event: &ConsoleEvent) {
        self.enqueue_data(stream, event.event_type(), event.to_data());
    }

    fn enqueue_data(&self, scope: ConsoleStream, event_type: &'static str, data: String) {
        let job = Job {
            scope,
            event_type,
            data,
        };
        match self.inner.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => self.drop_event(job.scope, "queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.inner.metrics.dropped("closed"),
        }
    }

    /// Counts an event dropped before the publisher, to be announced on its stream.
    fn drop_event(&self, stream: ConsoleStream, reason: &'static str) {
        self.inner.metrics.dropped(reason);
        self.inner.ledger.add(stream, reason, 1);
        self.inner.ledger.wake.notify_one();
    }

    fn hub(&self) -> &dyn EventBackend {
        &*self.inner.hub.backend
    }

    /// Keep-alive and `retry:` of every console response.
    fn body_options(&self) -> BodyOptions {
        BodyOptions {
            keep_alive: self.inner.config.keep_alive,
            retry_ms: Some(self.inner.config.retry_ms),
        }
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
            // Queued events first: a drop notice follows the events queued before the drop.
            biased;
            n = jobs.recv_many(&mut batch, PUBLISH_BATCH) => n == 0,
            () = ledger.wake.notified() => false,
            _ = closed.wait_for(|c| *c) => true,
        };
        if closing {
            jobs.close();
            while let Ok(job) = jobs.try_recv() {
                batch.push(job);
            }
        }
        publish_batch(&hub, &mut batch, &metrics, &ledger, &mut failures).await;
        metrics.observe_history(&hub);
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
                let notice = LogEvent::new(Utc::now(), LogLevel::Warn, SERVER_SOURCE, &message)
                    .with_fields(serde_json::json!({ "dropped": n, "reason": reason }));
                let data = ConsoleEvent::from(notice).to_data();
                match hub.backend.publish(&scope.key(), "log", &data).await {
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
    match hub.redis {
        false => {
            for job in batch.iter() {
                let result = hub
                    .backend
                    .publish(&job.scope.key(), job.event_type, &job.data)
                    .await;
                record(job, result);
            }
        }
        true => {
            // One chain per stream (in order), the chains concurrently: Redis pipelines them on
            // the shared connection.
            let mut chains: Vec<(ConsoleStream, Vec<&Job>)> = Vec::new();
            let mut index: HashMap<ConsoleStream, usize> = HashMap::new();
            for job in batch.iter() {
                let i = *index.entry(job.scope).or_insert_with(|| {
                    chains.push((job.scope, Vec::new()));
                    chains.len() - 1
                });
                chains[i].1.push(job);
            }
            let results =
                futures::future::join_all(chains.into_iter().map(|(scope, jobs)| async move {
                    let key = scope.key();
                    let mut out = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        let result = hub.backend.publish(&key, job.event_type, &job.data).await;
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
        let pruned = inner.hub.backend.prune_idle_streams();
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
    relay: Arc<dyn RelayProbe>,
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
                        Ok(Some(group)) => {
                            console.group_state(&group.state(relay.status(id).as_ref()))
                        }
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

/// The `source` of the server's own `log` lines.
const SERVER_SOURCE: &str = "server";

/// `can_frame` of a relayed frame, in the console's canonical spelling (`0x7E8`,
/// `"02 10 03"`).
fn can_frame_event(dongle: Uuid, frame: &CanRelayFrame) -> CanFrameEvent {
    let direction = match frame.direction {
        RelayDirection::Rx => Direction::Rx,
        RelayDirection::Tx => Direction::Tx,
        RelayDirection::Unknown => Direction::Unknown,
    };
    let mut event = CanFrameEvent::new(
        frame.ts,
        dongle,
        direction,
        frame.channel.as_deref().unwrap_or(""),
        frame.can_id,
        frame.is_extended,
        &frame.data,
    );
    event.dlc = frame.dlc;
    event.is_fd = frame.is_fd;
    event.is_remote = frame.is_remote;
    event.is_error = frame.is_error;
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_frame(json: &str) -> CanRelayFrame {
        serde_json::from_str(json).expect("valid relay frame")
    }

    #[test]
    fn relayed_frames_become_canonical_can_frame_events() {
        let frame = relay_frame(
            r#"{"groupId":"g","direction":"rx","ts":1600000000123456789,"canId":2024,
                "isExtended":false,"dlc":3,"dataHex":"0a10ff","channel":"can1"}"#,
        );
        let event = can_frame_event(Uuid::nil(), &frame);
        assert_eq!(
            ConsoleEvent::from(event).to_data(),
            r#"{"ts":"2020-09-13T12:26:40.123456Z","dongle_id":"00000000-0000-0000-0000-000000000000","direction":"rx","bus":"can1","id":"0x7E8","is_extended":false,"dlc":3,"data_hex":"0A 10 FF"}"#
        );
        let remote = relay_frame(
            r#"{"groupId":"g","direction":"tx","ts":0,"canId":419098896,"isExtended":true,
                "dlc":8,"dataHex":"","isRemote":true}"#,
        );
        let json = ConsoleEvent::from(can_frame_event(Uuid::nil(), &remote)).to_data();
        assert!(
            json.ends_with(
                r#""direction":"tx","bus":"","id":"0x18FAF110","is_extended":true,"dlc":8,"data_hex":"","is_remote":true}"#
            ),
            "{json}"
        );
        // A payload that is not hex never becomes a frame.
        assert!(
            serde_json::from_str::<CanRelayFrame>(
                r#"{"groupId":"g","direction":"rx","ts":0,"canId":1,"isExtended":false,
                    "dlc":1,"dataHex":"zz"}"#
            )
            .is_err()
        );
    }
}
