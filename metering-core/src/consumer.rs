//! The consumer: workers that take items, validate, deliver and acknowledge them; the lease
//! keeper; the reaper; the depth sampler.
//!
//! Per item: take (`LMOVE` batch, or `BLMOVE` when the queue is empty) → validate (malformed →
//! DLQ) → group (usage records per session into one `{"records": [...]}` request; lifecycle and
//! quota items one request each, in queue order per session) → attempt cycles until the control
//! plane answers → ack (accepted or duplicate) or DLQ (refused). While the breaker is open no
//! worker takes new items, and held items wait in the processing list.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use reqwest::Method;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use crate::client::{ControlPlaneClient, Delivery};
use crate::error::Result;
use crate::message::{
    CompactMessage, Enrichment, QueueKind, Route, raw_hash_key, validate_compact,
};
use crate::metrics::Metrics;
use crate::queue::{DlqEntry, QueueStore};

/// Most usage records in one request.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Workers per queue (each with its own blocking connection).
    pub workers: usize,
    /// Most items taken per fetch.
    pub batch_size: usize,
    /// `BLMOVE` block time.
    pub block: Duration,
    /// Lease lifetime; refreshed every third of it.
    pub lease_ttl: Duration,
    /// Reaper period.
    pub reaper_interval: Duration,
    /// Unacknowledged deliveries before an item is dead-lettered.
    pub max_deliveries: u32,
    /// Concurrent control-plane requests per worker.
    pub max_concurrent_requests: usize,
    /// Breaker settings.
    pub breaker: BreakerConfig,
    /// Queue-depth sampling period.
    pub sample_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            workers: 2,
            batch_size: 500,
            block: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            reaper_interval: Duration::from_secs(15),
            max_deliveries: 3,
            max_concurrent_requests: 32,
            breaker: BreakerConfig::default(),
            sample_interval: Duration::from_secs(2),
        }
    }
}

/// State shared by the consumer's tasks and read by health/heartbeat code.
#[derive(Debug)]
pub struct Shared {
    /// Redis side.
    pub store: QueueStore,
    /// Control-plane client.
    pub client: ControlPlaneClient,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fields added to forwarded messages.
    pub enrichment: Enrichment,
    /// Settings.
    pub cfg: ConsumerConfig,
    breaker: std::sync::Mutex<Breaker>,
    /// Whether Redis answered the last command.
    pub redis_ok: AtomicBool,
    /// Whether the control plane answered the last request.
    pub cp_ok: AtomicBool,
    /// Items workers hold right now, per queue (a multiset of 64-bit hashes of the raw bytes,
    /// so the bytes are not kept twice). The orphan sweep gives back items of our processing
    /// list that no worker holds: a fetch whose reply was lost (connection dropped after the
    /// script ran) leaves such items behind. A hash collision can only make the sweep skip an
    /// orphan while the colliding item is held; it is returned on a later pass.
    in_hand: [std::sync::Mutex<HashMap<u64, u32>>; 3],
}

impl Shared {
    /// Assemble.
    pub fn new(
        store: QueueStore,
        client: ControlPlaneClient,
        metrics: Arc<Metrics>,
        enrichment: Enrichment,
        cfg: ConsumerConfig,
    ) -> Arc<Self> {
        Arc::new(Shared {
            store,
            client,
            metrics,
            enrichment,
            breaker: std::sync::Mutex::new(Breaker::new(cfg.breaker)),
            cfg,
            redis_ok: AtomicBool::new(false),
            cp_ok: AtomicBool::new(false),
            in_hand: Default::default(),
        })
    }

    fn breaker<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut b = match self.breaker.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut b);
        // Publish every transition at once, so the gauge never lags the breaker by a sample
        // period (the sampler still refreshes it for the time-driven open → half-open step).
        self.publish_breaker_state(b.state(Instant::now()));
        out
    }

    fn publish_breaker_state(&self, state: BreakerState) {
        let v = match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        self.metrics
            .breaker_state
            .get_or_create(self.metrics.server())
            .set(v);
    }

    /// Breaker state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker(|b| b.state(Instant::now()))
    }

    fn in_hand<T>(&self, q: QueueKind, f: impl FnOnce(&mut HashMap<u64, u32>) -> T) -> T {
        let i = QueueKind::ALL.iter().position(|k| *k == q).unwrap_or(0);
        let mut g = match self.in_hand[i].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    fn take_in_hand(&self, q: QueueKind, items: &[u64]) {
        self.in_hand(q, |m| {
            items.iter().for_each(|i| *m.entry(*i).or_insert(0) += 1)
        });
    }

    fn release_in_hand(&self, q: QueueKind, items: &[u64]) {
        self.in_hand(q, |m| {
            for i in items {
                if let Some(n) = m.get_mut(i) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(i);
                    }
                }
            }
        });
    }

    fn set_redis(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        self.metrics
            .redis_status
            .get_or_create(self.metrics.server())
            .set(i64::from(ok));
    }
}

/// One control-plane request built from held items.
struct Request {
    route: Route,
    session_id: String,
    /// (position in the fetched batch, raw bytes, validated message). A validated message
    /// holds its fields serialised, not parsed: a fetched batch in flight costs about twice its
    /// raw size, where parsed and enriched trees cost ten times that (`docs/benchmarks-history.md`).
    items: Vec<(usize, Vec<u8>, CompactMessage)>,
}

impl Request {
    fn path(&self) -> String {
        let tail = match self.route {
            Route::UsageRecords => "usage-records",
            Route::SessionStart => "start",
            Route::SessionComplete => "complete",
            Route::QuotaRefresh => "refresh",
        };
        format!("/api/v1/sessions/{}/{tail}", self.session_id)
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Delay between Redis retries: full jitter from 50 ms up to 2 s, at least 10 ms.
fn redis_backoff(failures: u32) -> Duration {
    crate::backoff::FullJitter::new(Duration::from_millis(50), Duration::from_secs(2))
        .with_floor(Duration::from_millis(10))
        .delay(failures, rand::rng().random::<f64>())
}

/// Run a Redis operation until it succeeds; on shutdown give up after `grace` more tries.
async fn redis_until_ok<T, F, Fut>(
    shared: &Shared,
    what: &str,
    shutdown: &watch::Receiver<bool>,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                shared.set_redis(true);
                return Some(v);
            }
            Err(e) => {
                shared.set_redis(false);
                failures += 1;
                if *shutdown.borrow() && failures > 20 {
                    warn!(error = %e, what, "giving up on Redis during shutdown; the reaper will return the items");
                    return None;
                }
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(error = %e, what, failures, "redis operation failed; retrying");
                }
                tokio::time::sleep(redis_backoff(failures)).await;
            }
        }
    }
}

/// The consumer of all three queues.
#[derive(Debug, Clone)]
pub struct Consumer {
    shared: Arc<Shared>,
}

impl Consumer {
    /// A consumer over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Consumer { shared }
    }

    /// Shared state (for health and heartbeat).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Run until `shutdown` turns true; then stop taking, finish or give back in-flight items,
    /// drop the lease and return.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let s = self.shared.clone();
        let mut tasks = tokio::task::JoinSet::new();
        // Lease first, so the reaper of another instance never mistakes us for dead.
        let _ = redis_until_ok(&s, "initial lease", &shutdown, || {
            s.store.refresh_lease(s.cfg.lease_ttl)
        })
        .await;
        tasks.spawn(lease_keeper(s.clone(), shutdown.clone()));
        tasks.spawn(reaper(s.clone(), shutdown.clone()));
        tasks.spawn(sampler(s.clone(), shutdown.clone()));
        for q in QueueKind::ALL {
            for w in 0..s.cfg.workers.max(1) {
                tasks.spawn(worker(s.clone(), q, w, shutdown.clone()));
            }
        }
        while tasks.join_next().await.is_some() {}
        // Anything a cancelled BLMOVE still moved, or a worker could not give back, goes back now.
        let sd = shutdown.clone();
        for q in QueueKind::ALL {
            let held: Option<Vec<Vec<u8>>> = redis_until_ok(&s, "list held items", &sd, || async {
                let mut c = s.store.conn();
                redis::cmd("LRANGE")
                    .arg(s.store.keys().processing(q))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| crate::MeteringError::redis("list held items", e))
            })
            .await;
            if let Some(held) = held {
                let refs: Vec<&[u8]> = held.iter().rev().map(Vec::as_slice).collect();
                let _ = redis_until_ok(&s, "give back", &sd, || s.store.give_back(q, &refs)).await;
            }
        }
        let _ = redis_until_ok(&s, "release lease", &sd, || s.store.release_lease()).await;
        info!("metering consumer stopped");
    }
}

async fn lease_keeper(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = s.cfg.lease_ttl / 3;
    while sleep_or_shutdown(every, &mut shutdown).await {
        match s.store.refresh_lease(s.cfg.lease_ttl).await {
            Ok(()) => s.set_redis(true),
            Err(e) => {
                s.set_redis(false);
                warn!(error = %e, "lease refresh failed");
            }
        }
    }
}

/// Hash of an item's bytes for the in-hand multiset.
fn item_hash(raw: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(raw)
}

/// Items of our processing list that no worker holds, counted by value.
async fn orphans(s: &Shared, q: QueueKind) -> Result<HashMap<Vec<u8>, u32>> {
    let mut c = s.store.conn();
    let listed: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(s.store.keys().processing(q))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .map_err(|e| crate::MeteringError::redis("list held items", e))?;
    let mut extra: HashMap<Vec<u8>, u32> = HashMap::new();
    for i in listed {
        *extra.entry(i).or_insert(0) += 1;
    }
    s.in_hand(q, |m| {
        extra.retain(|k, n| {
            *n = n.saturating_sub(m.get(&item_hash(k)).copied().unwrap_or(0));
            *n > 0
        })
    });
    Ok(extra)
}

async fn reaper(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    // Orphans seen in the previous pass; given back when still orphaned one period later (a
    // fetch reply in flight during one pass is in hand by the next).
    let mut suspects: [HashMap<Vec<u8>, u32>; 3] = Default::default();
    loop {
        for (i, q) in QueueKind::ALL.into_iter().enumerate() {
            let now = match orphans(&s, q).await {
                Ok(o) => o,
                Err(_) => continue,
            };
            let mut give: Vec<Vec<u8>> = Vec::new();
            for (item, n) in &now {
                let before = suspects[i].get(item).copied().unwrap_or(0);
                for _ in 0..(*n).min(before) {
                    give.push(item.clone());
                }
            }
            if !give.is_empty() {
                let refs: Vec<&[u8]> = give.iter().map(Vec::as_slice).collect();
                match s.store.give_back(q, &refs).await {
                    Ok(n) => warn!(
                        queue = q.name(),
                        count = n,
                        "returned orphaned items (lost fetch reply) to the queue"
                    ),
                    Err(e) => warn!(error = %e, "orphan sweep failed"),
                }
            }
            suspects[i] = now;
        }
        match s.store.reap(s.cfg.max_deliveries).await {
            Ok(r) => {
                s.metrics
                    .reaped
                    .get_or_create(s.metrics.server())
                    .inc_by(r.returned);
                if r.dead_lettered > 0 {
                    warn!(
                        count = r.dead_lettered,
                        "dead-lettered items delivered too many times"
                    );
                }
            }
            Err(e) => warn!(error = %e, "reaper pass failed"),
        }
        if !sleep_or_shutdown(s.cfg.reaper_interval, &mut shutdown).await {
            return;
        }
    }
}

async fn sampler(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        for q in QueueKind::ALL {
            let l = s.metrics.queue(q);
            match s.store.depths(q).await {
                Ok((queued, held, dlq)) => {
                    s.set_redis(true);
                    s.metrics
                        .queue_depth
                        .get_or_create(&l)
                        .set(i64::try_from(queued).unwrap_or(i64::MAX));
                    s.metrics
                        .processing_depth
                        .get_or_create(&l)
                        .set(i64::try_from(held).unwrap_or(i64::MAX));
                    s.metrics
                        .dlq_size
                        .get_or_create(&l)
                        .set(i64::try_from(dlq).unwrap_or(i64::MAX));
                }
                Err(_) => s.set_redis(false),
            }
        }
        s.breaker(|_| ());
        if !sleep_or_shutdown(s.cfg.sample_interval, &mut shutdown).await {
            return;
        }
    }
}

/// A worker's fetch from Redis failed (`what`, with `error`): marks Redis down, logs the first
/// failure of a run, and waits out the backoff for `failures` in a row. False on shutdown.
async fn fetch_failed(
    s: &Shared,
    q: QueueKind,
    failures: &mut u32,
    what: &str,
    error: &impl std::fmt::Display,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    s.set_redis(false);
    *failures += 1;
    if *failures == 1 {
        warn!(error = %error, queue = q.name(), "{what}");
    }
    sleep_or_shutdown(redis_backoff(*failures), shutdown).await
}

/// Wait while the breaker is open. False on shutdown.
async fn wait_until_closed(s: &Shared, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        if s.breaker_state() != BreakerState::Open {
            return true;
        }
        if !sleep_or_shutdown(Duration::from_millis(100), shutdown).await {
            return false;
        }
    }
}

async fn worker(s: Arc<Shared>, q: QueueKind, index: usize, mut shutdown: watch::Receiver<bool>) {
    let mut blocking: Option<redis::aio::MultiplexedConnection> = None;
    let mut failures = 0u32;
    debug!(queue = q.name(), worker = index, "worker started");
    loop {
        if !wait_until_closed(&s, &mut shutdown).await {
            return;
        }
        let items = match s.store.fetch(q, s.cfg.batch_size).await {
            Ok(v) if !v.is_empty() => v,
            Ok(_) => {
                let conn = match &mut blocking {
                    Some(c) => c,
                    None => match s.store.blocking_connection(s.cfg.block).await {
                        Ok(c) => blocking.insert(c),
                        Err(e) => {
                            if !fetch_failed(
                                &s,
                                q,
                                &mut failures,
                                "cannot open blocking connection",
                                &e,
                                &mut shutdown,
                            )
                            .await
                            {
                                return;
                            }
                            continue;
                        }
                    },
                };
                let r = tokio::select! {
                    r = s.store.fetch_blocking(conn, q, s.cfg.block) => r,
                    _ = shutdown.changed() => return,
                };
                match r {
                    Ok(Some(item)) => vec![item],
                    Ok(None) => {
                        failures = 0;
                        s.set_redis(true);
                        continue;
                    }
                    Err(e) => {
                        blocking = None;
                        if !fetch_failed(
                            &s,
                            q,
                            &mut failures,
                            "blocking fetch failed",
                            &e,
                            &mut shutdown,
                        )
                        .await
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
            Err(e) => {
                if !fetch_failed(&s, q, &mut failures, "fetch failed", &e, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        s.set_redis(true);
        let hashes: Vec<u64> = items.iter().map(|i| item_hash(i)).collect();
        s.take_in_hand(q, &hashes);
        process_batch(&s, q, items, &shutdown).await;
        s.release_in_hand(q, &hashes);
    }
}

/// Validate, group and deliver one fetched batch. Every item ends acked, dead-lettered or
/// given back (or, if Redis stays down during shutdown, held for the reaper).
async fn process_batch(
    s: &Arc<Shared>,
    q: QueueKind,
    items: Vec<Vec<u8>>,
    shutdown: &watch::Receiver<bool>,
) {
    let taken_at = Instant::now();
    let first_attempt_at = now_rfc3339();
    // Per session, in queue order.
    let mut sessions: Vec<(String, Vec<Request>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (pos, raw) in items.into_iter().enumerate() {
        let msg = match validate_compact(q, &raw) {
            Ok(m) => m,
            Err(e) => {
                let reason = match e {
                    crate::MeteringError::Malformed { reason, .. } => reason,
                    other => other.to_string(),
                };
                warn!(correlation_id = %raw_hash_key(&raw), queue = q.name(), %reason, "malformed message dead-lettered");
                dead_letter(s, q, &raw, reason, 1, &first_attempt_at, None, shutdown).await;
                continue;
            }
        };
        // Look up before inserting: a batch has few sessions, so most records clone nothing.
        let slot = match index.get(&msg.session_id) {
            Some(slot) => *slot,
            None => {
                sessions.push((msg.session_id.clone(), Vec::new()));
                index.insert(msg.session_id.clone(), sessions.len() - 1);
                sessions.len() - 1
            }
        };
        let reqs = &mut sessions[slot].1;
        let join = msg.route == Route::UsageRecords
            && reqs.last().is_some_and(|r| {
                r.route == Route::UsageRecords && r.items.len() < MAX_RECORDS_PER_REQUEST
            });
        if join {
            if let Some(r) = reqs.last_mut() {
                r.items.push((pos, raw, msg));
            }
        } else {
            reqs.push(Request {
                route: msg.route.clone(),
                session_id: msg.session_id.clone(),
                items: vec![(pos, raw, msg)],
            });
        }
    }
    let first_attempt_at = first_attempt_at.as_str();
    // Requests whose items the control plane accepted, acknowledged together below.
    let accepted: Vec<Request> = futures::stream::iter(sessions)
        .map(|(_, reqs)| async move {
            let mut done = Vec::new();
            for r in reqs {
                if let Some(r) = deliver(s, q, r, first_attempt_at, shutdown.clone()).await {
                    done.push(r);
                }
            }
            done
        })
        .buffer_unordered(s.cfg.max_concurrent_requests.max(1))
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    ack_accepted(s, q, accepted, taken_at, shutdown).await;
}

/// Acknowledge every accepted request of one fetched batch in one script. The accepted items of
/// a batch are, unless some were refused or given back, exactly the batch, which lies side by
/// side in the processing list: one pass over the list removes them all. (Acknowledging each
/// request on its own cost one `LREM` scan of the whole processing list per record, and the
/// single-threaded Redis spent most of the benchmark doing that; see `docs/benchmarks-history.md`.) An
/// item still leaves the processing list only after the control plane accepted it; a crash
/// between acceptance and this ack redelivers it, and the control plane answers "duplicate".
async fn ack_accepted(
    s: &Shared,
    q: QueueKind,
    accepted: Vec<Request>,
    taken_at: Instant,
    shutdown: &watch::Receiver<bool>,
) {
    if accepted.is_empty() {
        return;
    }
    let mut items: Vec<(usize, &[u8])> = accepted
        .iter()
        .flat_map(|r| r.items.iter().map(|(pos, raw, _)| (*pos, raw.as_slice())))
        .collect();
    items.sort_unstable_by_key(|(pos, _)| *pos);
    let raws: Vec<&[u8]> = items.into_iter().map(|(_, raw)| raw).collect();
    if redis_until_ok(s, "ack", shutdown, || s.store.ack(q, &raws))
        .await
        .is_some()
    {
        let labels = s.metrics.queue(q);
        s.metrics
            .processed
            .get_or_create(&labels)
            .inc_by(raws.len() as u64);
        let latency = s.metrics.latency.get_or_create(&labels);
        let secs = taken_at.elapsed().as_secs_f64();
        accepted.iter().for_each(|_| latency.observe(secs));
    }
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    s: &Shared,
    q: QueueKind,
    raw: &[u8],
    reason: String,
    attempts: u32,
    first_attempt_at: &str,
    response: Option<(u16, String)>,
    shutdown: &watch::Receiver<bool>,
) {
    let entry = DlqEntry {
        id: uuid::Uuid::new_v4().to_string(),
        queue: q.name().into(),
        payload: String::from_utf8_lossy(raw).into_owned(),
        reason,
        attempts,
        first_attempt_at: Some(first_attempt_at.to_owned()),
        dead_lettered_at: now_rfc3339(),
        response_status: response.as_ref().map(|r| r.0),
        response_body: response.map(|r| r.1),
    };
    if let Some(true) = redis_until_ok(s, "dead-letter", shutdown, || {
        s.store.dead_letter(q, raw, &entry)
    })
    .await
    {
        s.metrics
            .dead_lettered
            .get_or_create(&s.metrics.queue(q))
            .inc();
    }
}

/// Deliver one request; `Some(r)` when the control plane accepted it (the caller acks it).
async fn deliver(
    s: &Shared,
    q: QueueKind,
    mut r: Request,
    first_attempt_at: &str,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Request> {
    let labels = s.metrics.queue(q);
    // The body is built once, as bytes, and shared by every retry.
    let tail = s.enrichment.json_tail(chrono::Utc::now());
    let mut body = Vec::with_capacity(
        16 + r
            .items
            .iter()
            .map(|(_, _, m)| m.enriched_len(&tail) + 1)
            .sum::<usize>(),
    );
    if r.route == Route::UsageRecords {
        body.extend_from_slice(b"{\"records\":[");
        for (i, (_, _, m)) in r.items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            m.write_enriched(&tail, &mut body);
        }
        body.extend_from_slice(b"]}");
    } else if let Some((_, _, m)) = r.items.first() {
        m.write_enriched(&tail, &mut body);
    } else {
        body.extend_from_slice(b"null");
    }
    // The fields now live in `body`; keep only the raw bytes and the keys.
    r.items.iter_mut().for_each(|(_, _, m)| m.clear_fields());
    let key = if r.items.len() == 1 {
        r.items.first().map(|(_, _, m)| m.key.clone())
    } else {
        None
    };
    let correlation: Vec<&str> = r.items.iter().map(|(_, _, m)| m.key.as_str()).collect();
    let path = r.path();
    // Built once: every try of every attempt cycle sends the same body buffer.
    let req = s
        .client
        .prepare(Method::POST, &path, Some(body), key.as_deref());
    let mut cycles = 0u32;
    loop {
        // Gate on the breaker; on shutdown, give the items back untouched.
        let probe = loop {
            let p = s.breaker(|b| b.permit(Instant::now()));
            match p {
                Permit::Allowed => break false,
                Permit::Probe => break true,
                Permit::Wait(until) => {
                    let d = until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200));
                    if !sleep_or_shutdown(d, &mut shutdown).await {
                        give_back(s, q, &r, &shutdown).await;
                        return None;
                    }
                }
            }
        };
        cycles += 1;
        s.metrics.cp_requests.get_or_create(&labels).inc();
        let d = s
            .client
            .send_prepared(&req, || {
                s.metrics.retries.get_or_create(&labels).inc();
                s.metrics.cp_requests.get_or_create(&labels).inc();
            })
            .await;
        match d {
            Delivery::Accepted { duplicate, .. } => {
                s.breaker(Breaker::on_success);
                s.cp_ok.store(true, Ordering::Relaxed);
                debug!(correlation_ids = ?correlation, %path, duplicate, "delivered");
                return Some(r);
            }
            Delivery::Rejected { status, body } => {
                s.breaker(Breaker::on_success);
                s.cp_ok.store(true, Ordering::Relaxed);
                warn!(correlation_ids = ?correlation, %path, status, "control plane refused; dead-lettering");
                for (_, raw, _) in &r.items {
                    let reason = format!("control plane refused with HTTP {status}");
                    dead_letter(
                        s,
                        q,
                        raw,
                        reason,
                        cycles,
                        first_attempt_at,
                        Some((status, body.clone())),
                        &shutdown,
                    )
                    .await;
                }
                return None;
            }
            Delivery::Unavailable {
                reason,
                retry_after,
            } => {
                s.breaker(|b| b.on_failure(Instant::now()));
                s.cp_ok.store(false, Ordering::Relaxed);
                s.metrics.failed_deliveries.get_or_create(&labels).inc();
                warn!(correlation_ids = ?correlation, %path, %reason, probe, cycles, "control plane unavailable; items stay held");
                let unit: f64 = rand::rng().random();
                let pause =
                    retry_after.unwrap_or_else(|| Duration::from_millis(100).mul_f64(1.0 + unit));
                if !sleep_or_shutdown(pause, &mut shutdown).await {
                    give_back(s, q, &r, &shutdown).await;
                    return None;
                }
            }
        }
    }
}

async fn give_back(s: &Shared, q: QueueKind, r: &Request, shutdown: &watch::Receiver<bool>) {
    let raws: Vec<&[u8]> = r.items.iter().map(|(_, raw, _)| raw.as_slice()).collect();
    let _ = redis_until_ok(s, "give back", shutdown, || s.store.give_back(q, &raws)).await;
}
