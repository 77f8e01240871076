//! The remote role: `/ws/telemetry/upload` for many vehicles at once, an inbox deduplicated
//! by `(vehicle, seq)` that acknowledges only after its commit, and the read API with a live
//! stream per vehicle.
//!
//! The vehicle's identity is what its credential maps to ([`VehicleAuth`]), never anything in
//! its messages; a bad credential is refused with 401 before the WebSocket upgrade. The inbox
//! ([`SqliteInbox`]) runs on a thread of its own and commits every batch queued by every
//! connection in one transaction (group commit), so 200 vehicles cost one sync per round,
//! not 200. Reads use a second connection to the same file (WAL: they never wait for a
//! commit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::future::BoxFuture;
use relay_core::sqlite::Durability;
use relay_core::uplink::{InboxCommit, InboxSource, OutboxRecord, SqliteInbox, UplinkInbox};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{RemoteConfig, VehicleKey};
use crate::http::same_secret;
use crate::vehicle::LiveRecord;

mod conn;
mod http;
pub mod metrics;
pub mod status;

pub use http::{read_router, upload_router};
use metrics::RemoteMetrics;

/// Batches of all connections merged into one commit, at most.
const MAX_GROUP: usize = 512;

/// Who may upload as which vehicle, and who may read.
pub trait VehicleAuth: Send + Sync + 'static {
    /// The vehicle id `bearer` uploads as; `None` refuses the upgrade.
    fn vehicle<'a>(&'a self, bearer: &'a str) -> BoxFuture<'a, Option<String>>;
    /// Whether `bearer` may use the read API: for `vehicle`'s records, or (with `None`) at
    /// all (the vehicle list then shows only the vehicles it may read).
    fn may_read<'a>(&'a self, bearer: &'a str, vehicle: Option<&'a str>) -> BoxFuture<'a, bool>;
}

/// The standalone remote's credentials: `API_KEYS` / `vehicles:` and `READ_API_KEY`.
#[derive(Debug, Clone)]
pub struct KeyAuth {
    vehicles: Vec<VehicleKey>,
    read_api_key: Option<String>,
}

impl KeyAuth {
    /// Keys → vehicles, and the read key (`None`: reads refused).
    pub fn new(vehicles: Vec<VehicleKey>, read_api_key: Option<String>) -> Self {
        KeyAuth {
            vehicles,
            read_api_key,
        }
    }
}

impl VehicleAuth for KeyAuth {
    fn vehicle<'a>(&'a self, bearer: &'a str) -> BoxFuture<'a, Option<String>> {
        // Compare against every key (constant time each) so timing says nothing about which.
        let mut found = None;
        for v in &self.vehicles {
            if same_secret(&v.api_key, bearer) {
                found = Some(v.id.clone());
            }
        }
        Box::pin(async move { found })
    }

    fn may_read<'a>(&'a self, bearer: &'a str, _vehicle: Option<&'a str>) -> BoxFuture<'a, bool> {
        let ok = self
            .read_api_key
            .as_deref()
            .is_some_and(|k| same_secret(k, bearer));
        Box::pin(async move { ok })
    }
}

type CommitReply = oneshot::Sender<Result<(InboxCommit, Vec<OutboxRecord>), String>>;

enum Job {
    Commit {
        vehicle: String,
        records: Vec<OutboxRecord>,
        reply: CommitReply,
    },
    Acked {
        vehicle: String,
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

fn inbox_thread(
    mut inbox: SqliteInbox,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<RemoteMetrics>,
) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut commits = Vec::new();
        let mut reads = Vec::new();
        for job in group {
            match job {
                Job::Commit {
                    vehicle,
                    records,
                    reply,
                } => commits.push((vehicle, records, reply)),
                Job::Acked { vehicle, reply } => reads.push((vehicle, reply)),
            }
        }
        if !commits.is_empty() {
            let batches: Vec<(&str, &[OutboxRecord])> = commits
                .iter()
                .map(|(v, r, _)| (v.as_str(), r.as_slice()))
                .collect();
            let result = inbox.commit_many(&batches);
            drop(batches);
            metrics.commit_groups.inc();
            match result {
                Ok(answers) => {
                    for ((_, records, reply), commit) in commits.into_iter().zip(answers) {
                        metrics.records_stored.inc_by(commit.stored);
                        metrics.duplicates.inc_by(commit.duplicates);
                        let _ = reply.send(Ok((commit, records)));
                    }
                }
                Err(e) => {
                    metrics.commit_errors.inc();
                    tracing::error!(error = %e, "inbox commit failed");
                    for (_, _, reply) in commits {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
        for (vehicle, reply) in reads {
            let _ = reply.send(inbox.acked(&vehicle).map_err(|e| e.to_string()));
        }
    }
}

pub(crate) struct Inner {
    jobs: mpsc::UnboundedSender<Job>,
    reader: Mutex<SqliteInbox>,
    pub(crate) auth: Arc<dyn VehicleAuth>,
    live: Mutex<HashMap<String, broadcast::Sender<Arc<LiveRecord>>>>,
    conns: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next_conn: std::sync::atomic::AtomicU64,
    /// The uplink statuses the vehicles report.
    pub(crate) statuses: status::StatusBook,
    pub(crate) metrics: Arc<RemoteMetrics>,
    pub(crate) registry: Arc<prometheus_client::registry::Registry>,
}

/// The remote collector: cheap to clone; mount its routers in any axum app.
#[derive(Clone)]
pub struct Remote {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").finish_non_exhaustive()
    }
}

impl Remote {
    /// Opens the inbox at `db_path` and starts its commit thread.
    pub fn open(
        db_path: &std::path::Path,
        durability: Durability,
        auth: Arc<dyn VehicleAuth>,
    ) -> anyhow::Result<Remote> {
        let writer = SqliteInbox::open(db_path, durability)
            .with_context(|| format!("opening the inbox {}", db_path.display()))?;
        let reader = SqliteInbox::open(db_path, durability)
            .with_context(|| format!("opening the inbox {}", db_path.display()))?;
        let metrics = Arc::new(RemoteMetrics::default());
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let (jobs, rx) = mpsc::unbounded_channel();
        let m = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("telemetry-inbox".into())
            .spawn(move || inbox_thread(writer, rx, m))
            .context("starting the inbox thread")?;
        Ok(Remote {
            inner: Arc::new(Inner {
                jobs,
                reader: Mutex::new(reader),
                auth,
                live: Mutex::new(HashMap::new()),
                conns: Mutex::new(HashMap::new()),
                next_conn: std::sync::atomic::AtomicU64::new(1),
                statuses: status::StatusBook::default(),
                metrics,
                registry: Arc::new(registry),
            }),
        })
    }

    /// The standalone router: upload, read API, `/metrics`, `/healthz`.
    pub fn router(&self) -> axum::Router {
        upload_router(self.clone())
            .merge(read_router(self.clone()))
            .merge(http::ops_router(self.clone()))
    }
}

impl Inner {
    pub(crate) async fn commit(
        &self,
        vehicle: &str,
        records: Vec<OutboxRecord>,
    ) -> Result<(InboxCommit, Vec<OutboxRecord>), String> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Commit {
                vehicle: vehicle.to_owned(),
                records,
                reply,
            })
            .map_err(|_| "the inbox stopped".to_owned())?;
        answer.await.map_err(|_| "the inbox stopped".to_owned())?
    }

    pub(crate) async fn acked(&self, vehicle: &str) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Acked {
                vehicle: vehicle.to_owned(),
                reply,
            })
            .map_err(|_| "the inbox stopped".to_owned())?;
        answer.await.map_err(|_| "the inbox stopped".to_owned())?
    }

    /// Runs `f` on the read connection, off the async workers.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut SqliteInbox) -> relay_core::error::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut reader = inner
                .reader
                .lock()
                .map_err(|_| anyhow::anyhow!("the inbox reader is poisoned"))?;
            f(&mut reader).map_err(anyhow::Error::from)
        })
        .await
        .context("the inbox reader task failed")?
    }

    pub(crate) async fn sources(self: &Arc<Self>) -> anyhow::Result<Vec<InboxSource>> {
        self.read(|r| r.sources()).await
    }

    pub(crate) fn live(&self, vehicle: &str) -> broadcast::Sender<Arc<LiveRecord>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.entry(vehicle.to_owned())
            .or_insert_with(|| broadcast::channel(4096).0)
            .clone()
    }

    pub(crate) fn publish(&self, vehicle: &str, records: &[OutboxRecord], above: u64) {
        let sender = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            match live.get(vehicle) {
                Some(s) if s.receiver_count() > 0 => s.clone(),
                _ => return,
            }
        };
        for r in records.iter().filter(|r| r.seq > above) {
            let _ = sender.send(Arc::new(LiveRecord {
                seq: r.seq,
                ts_ms: r.ts_ms,
                payload: r.payload.clone(),
            }));
        }
    }

    /// Registers a connection of `vehicle`, closing the one it replaces; returns its id and
    /// the signal that it was replaced.
    pub(crate) fn register_conn(&self, vehicle: &str) -> (u64, oneshot::Receiver<()>) {
        let id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = conns.insert(vehicle.to_owned(), (id, tx)) {
            let _ = old.send(());
        }
        (id, rx)
    }

    pub(crate) fn unregister_conn(&self, vehicle: &str, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.get(vehicle).is_some_and(|(i, _)| *i == id) {
            conns.remove(vehicle);
        }
    }

    pub(crate) fn connected(&self, vehicle: &str) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.contains_key(vehicle)
    }
}

/// Runs the standalone remote until `stop` completes.
pub async fn run(
    config: RemoteConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.vehicles.is_empty() {
        tracing::warn!("no vehicle keys (API_KEYS / vehicles:): every upload will be refused");
    }
    let auth = Arc::new(KeyAuth::new(config.vehicles, config.read_api_key));
    let remote = Remote::open(&config.db_path, config.durability, auth)?;
    crate::http::serve(remote.router(), config.listen, "telemetry remote", stop).await
}
