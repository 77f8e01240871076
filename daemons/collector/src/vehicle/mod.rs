//! The vehicle role: CAN listener → durable local store → uplink manager, with the dashboard
//! API (`/api/v1/telemetry/recent`, `/status`, `/stream`) and status frames on the bus.
//!
//! The store is one `relay_core::uplink` stream (`telemetry`) in the SQLite file `DB_PATH`,
//! with [`OnAck::Keep`]: a record the remote acknowledged stays for the dashboard until it is
//! older than `DASHBOARD_RETENTION_S` or the `MAX_LOCAL_RECORDS` cap removes it (uplinked
//! records first; a pending one is counted as dropped).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use relay_core::uplink::{
    DEFAULT_MIRROR_MAX, OnAck, OutboxStoreHandle, SqliteOutboxStore, StreamConfig, StreamOutbox,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::VehicleConfig;
use crate::dbc::DbcDecoder;

mod driver;
mod http;
pub mod ingest;
mod link;
pub mod listener;
pub mod metrics;

use driver::{Driver, Request};
use ingest::Ingest;
use listener::{Listener, ListenerCounters};
use metrics::VehicleMetrics;

/// The stream key of the vehicle's records in its store.
pub const STREAM_KEY: &str = "telemetry";

/// A record as the live stream carries it.
#[derive(Debug, Clone)]
pub struct LiveRecord {
    /// Its seq.
    pub seq: u64,
    /// When it was taken (ms since the epoch).
    pub ts_ms: u64,
    /// The record JSON.
    pub payload: Bytes,
}

/// One item of `GET /api/v1/telemetry/recent`.
#[derive(Debug, Clone)]
pub struct RecentItem {
    /// Its seq.
    pub seq: u64,
    /// When it was taken.
    pub ts_ms: u64,
    /// Acknowledged by the remote.
    pub uplinked: bool,
    /// The record JSON.
    pub payload: Bytes,
}

/// A page of recent records, newest first.
#[derive(Debug, Clone)]
pub struct RecentPage {
    /// The records.
    pub items: Vec<RecentItem>,
    /// Pass as `before` for the next (older) page; `None` at the end.
    pub next_before: Option<u64>,
}

/// `GET /api/v1/telemetry/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VehicleStatus {
    /// `connecting`, `connected`, `disconnected` or `error`.
    pub state: &'static str,
    /// Records the remote has not acknowledged.
    pub queue_size: u64,
    /// Records in the local store.
    pub stored: u64,
    /// The last seq assigned.
    pub last_seq: u64,
    /// The remote's cumulative ack.
    pub acked_seq: u64,
    /// The highest seq sent on the current connection.
    pub sent_seq: u64,
    /// Records sent and not yet acknowledged.
    pub in_flight: u64,
    /// Age of the oldest pending record.
    pub oldest_pending_age_ms: Option<u64>,
    /// Latency send → ack of the last acknowledged batch.
    pub latency_last_ms: Option<u64>,
    /// Mean latency over the last 10 s.
    pub latency_mean_ms: Option<u64>,
    /// Largest latency over the last 10 s.
    pub latency_max_ms: Option<u64>,
    /// Records acknowledged per second (last 10 s).
    pub throughput_records_per_s: f64,
    /// Payload kbit acknowledged per second (last 10 s).
    pub throughput_kbit_per_s: f64,
    /// Records appended since start.
    pub records_collected: u64,
    /// Records sent since start (retransmissions included).
    pub records_sent_total: u64,
    /// Records acknowledged since start.
    pub records_acked_total: u64,
    /// Pending records dropped by `MAX_LOCAL_RECORDS` (exact, persisted).
    pub dropped_overflow: u64,
    /// Pending records dropped on the remote's refusal.
    pub dropped_refused: u64,
    /// Pending records abandoned.
    pub dropped_abandoned: u64,
    /// All pending records dropped, every reason (persisted).
    pub dropped_total: u64,
    /// Dropped records that had been sent and whose arrival is not settled yet.
    pub dropped_unsettled: u64,
    /// Frames the listener dropped because the store could not keep up (since start).
    pub dropped_listener_overflow: u64,
    /// Records the local store refused (since start).
    pub store_errors: u64,
    /// Connection attempts since start.
    pub connect_attempts: u64,
    /// Connections lost since start.
    pub disconnects: u64,
    /// Failed attempts in a row.
    pub consecutive_failures: u32,
    /// Why the uplink is in `error`.
    pub last_error: Option<String>,
    /// CAN frames received.
    pub can_frames: u64,
    /// Frames decoded with the DBC.
    pub can_signals_decoded: u64,
    /// Status frames sent on the bus.
    pub status_frames_sent: u64,
}

/// A running vehicle role.
#[derive(Debug)]
pub struct Vehicle {
    records: Ingest,
    requests: mpsc::Sender<Request>,
    live: broadcast::Sender<Arc<LiveRecord>>,
    registry: Arc<prometheus_client::registry::Registry>,
    retention_s: u64,
    can_addr: Option<SocketAddr>,
    listener: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    driver: (oneshot::Sender<()>, JoinHandle<()>),
    store: OutboxStoreHandle,
    acked: tokio::sync::watch::Receiver<u64>,
}

impl Vehicle {
    /// Opens the store, the bus (with `enable_can_listener`) and starts the driver.
    pub async fn start(config: VehicleConfig) -> anyhow::Result<Vehicle> {
        let dbc = match &config.dbc_path {
            Some(path) => Some(DbcDecoder::load(path)?),
            None => None,
        };
        if let Some(parent) = config
            .db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let path = config.db_path.clone();
        let durability = config.durability;
        let sqlite =
            tokio::task::spawn_blocking(move || SqliteOutboxStore::open(&path, durability))
                .await
                .context("opening the local store")?
                .with_context(|| format!("opening the local store {}", config.db_path.display()))?;
        let store = OutboxStoreHandle::spawn(sqlite)?;
        let stream = StreamConfig {
            max_records: config.max_local_records,
            on_ack: OnAck::Keep,
            mirror_max: DEFAULT_MIRROR_MAX.max(config.window as usize + config.batch_max),
        };
        let outbox = StreamOutbox::open(&store, STREAM_KEY, stream).await?;
        let (records_tx, records_rx) = ingest::channel();
        let (requests_tx, requests_rx) = mpsc::channel(64);
        let (live, _) = broadcast::channel(4096);
        let counters = Arc::new(ListenerCounters::default());
        let metrics = Arc::new(VehicleMetrics::default());
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let (status_tx, listener, can_addr) = if config.enable_can_listener {
            let bus = Listener::open(&config.can_bus, dbc).await?;
            let addr = bus.local_addr();
            let (status_tx, status_rx) = mpsc::channel(64);
            let (stop_tx, stop_rx) = oneshot::channel();
            let task = tokio::spawn(listener::supervise(
                bus,
                config.can_bus.clone(),
                records_tx.clone(),
                status_rx,
                Arc::clone(&counters),
                stop_rx,
            ));
            (Some(status_tx), Some((stop_tx, task)), addr)
        } else {
            (None, None, None)
        };
        let retention_s = config.dashboard_retention_s;
        let (acked_tx, acked) = tokio::sync::watch::channel(outbox.acked());
        let driver = Driver::new(
            config,
            outbox,
            records_rx,
            requests_rx,
            status_tx,
            live.clone(),
            counters,
            metrics,
            acked_tx,
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(driver.run(async move {
            let _ = stop_rx.await;
        }));
        Ok(Vehicle {
            records: records_tx,
            requests: requests_tx,
            live,
            registry: Arc::new(registry),
            retention_s,
            can_addr,
            listener,
            driver: (stop_tx, task),
            store,
            acked,
        })
    }

    /// The dashboard API (`/api/v1/telemetry/…`, `/metrics`, `/healthz`).
    pub fn router(&self) -> axum::Router {
        http::router(http::VehicleApi {
            requests: self.requests.clone(),
            live: self.live.clone(),
            registry: Arc::clone(&self.registry),
            retention_s: self.retention_s,
        })
    }

    /// Hands records to the store as the listener does (other record sources, benches); the
    /// queue is bounded in bytes ([`ingest::INGEST_BYTES`]).
    pub fn ingest(&self) -> Ingest {
        self.records.clone()
    }

    /// The remote's cumulative ack, as the store marked it (changes after each ack).
    pub fn acked(&self) -> tokio::sync::watch::Receiver<u64> {
        self.acked.clone()
    }

    /// The bound address of a UDP `CAN_BUS`.
    pub fn can_addr(&self) -> Option<SocketAddr> {
        self.can_addr
    }

    /// The current status.
    pub async fn status(&self) -> anyhow::Result<VehicleStatus> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Status { reply })
            .await
            .context("the vehicle driver stopped")?;
        answer.await.context("the vehicle driver stopped")
    }

    /// Stops the listener (its backlog is stored), then the driver, then closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some((stop, task)) = self.listener {
            let _ = stop.send(());
            let _ = task.await;
        }
        drop(self.records);
        let _ = self.driver.0.send(());
        self.driver.1.await.context("the vehicle driver panicked")?;
        self.store.close().await?;
        Ok(())
    }
}

/// The async runtime of the vehicle role: one thread (`current_thread`). Its async work is
/// one driver task, the socket and the dashboard API; the SQLite work runs on the store's own
/// thread (`OutboxStoreHandle`). One thread instead of a pool of workers is one stack and one
/// malloc arena fewer per worker: glibc gives each thread that allocates an arena of its own,
/// and memory freed in one is not reused by the others (`docs/benchmarks.md`, "Telemetry
/// uplink", RSS).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs the vehicle role until `stop` completes: the driver, the listener, and the dashboard
/// API on `config.listen` (if set).
pub async fn run(
    config: VehicleConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listen = config.listen;
    let vehicle = Vehicle::start(config).await?;
    if let Some(addr) = vehicle.can_addr() {
        tracing::info!(%addr, "CAN listener bound");
    }
    let served = match listen {
        Some(addr) => {
            crate::http::serve(vehicle.router(), addr, "vehicle dashboard API", stop).await
        }
        None => {
            stop.await;
            Ok(())
        }
    };
    let shut = vehicle.shutdown().await;
    served.and(shut)
}
