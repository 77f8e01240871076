//! The `dongle` role: dongles ↔ the server's `/ws/data` group relay.
//!
//! The edge depends on `dongle.protocol` (`docs/agent.md`, "Protocols"): REMP dongles on a UDP
//! port, learned by serial (below), or one dongle named by `dongle.serial` behind a local
//! SocketCAN interface or a cannelloni peer ([`edge`]). Everything after the edge — the frame
//! queue, the worker, the outbox, the poller — is the same for all of them.
//!
//! * One UDP socket receives REMP from any number of dongles ([`RempReceiver`] keeps their
//!   sequence state). A dongle is learned from any valid datagram — its hello, or a keep-alive
//!   after an agent restart — and gets a [`worker::Worker`] and a [`poller`].
//! * The poller announces the dongle (`POST /api/v1/agent/dongles`) and polls its assignment.
//! * Sessions and REST calls go to the role's current server of `server_url`; a lost one
//!   moves on to the next ([`crate::servers::Failover`]).
//! * The worker keeps the dongle's frames in a durable, bounded outbox per group — a
//!   `relay_core::uplink` stream `dongle:{serial}:{group}:{side}` in the role's one store — runs
//!   the data-plane session (`docs/protocols/data-plane.md`) through `relay_core::uplink`'s
//!   sans-IO session, and sends the other side's frames to the address the dongle was last
//!   heard from. [`assignments`] remembers each dongle's last group.
//!
//! A bus of the `diagnostics` role given as `dongle: SERIAL` taps a dongle served here
//! ([`tap`]): the frames its commands listen on are copied to it, and its requests go out
//! through the dongle's [`tap::DongleLink`], the same REMP sender the worker uses.
//!
//! Every dropped frame is counted by reason (`tether_agent_dongle_frames_dropped_total`) and
//! logged at a limited rate. Storage format and guarantees: `docs/agent.md`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use can_io::transport::open::{AnyBus, BusAddress, OpenOptions};
use can_io::wire::remp::{RempEvent, RempReceiver};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

pub mod api;
pub mod assignments;
pub mod config;
pub mod edge;
pub mod metrics;
pub mod poller;
pub mod tap;
pub mod worker;

use crate::servers::Failover;
use assignments::Assignments;
use config::{DongleEdge, DongleRole};
use edge::DongleOut;
use metrics::{DongleMetrics, DropReason, MetricsHandle};
use poller::PollState;
use relay_core::uplink::{OutboxStoreHandle, SqliteOutboxStore};
use tap::{DongleLink, DongleTaps, Tap};
use worker::{FrameQueueTx, QueueRefused, Worker, WorkerCtx};

/// Datagrams of frames queued per dongle between the UDP task and its worker.
const DONGLE_QUEUE: usize = 4096;
/// Frames queued per dongle between the UDP task and its worker, at most. A worker that cannot
/// keep up sheds the newest frames here, counted (`queue_full`), before it spends any work on
/// them, instead of letting ~50 frames per queued datagram pile up in memory (seconds of
/// latency under overload, all shed later at the outbox cap anyway). About 0.3 s at 50,000
/// frames/s; the worker takes everything queued at each wake-up (`worker::Worker::run`).
pub const DONGLE_QUEUE_FRAMES: usize = 16_384;
/// Dongles tracked at most (REMP's receiver refuses more serials).
const MAX_DONGLES: usize = 4096;
/// Queue-full warnings per dongle at most this often.
const QUEUE_WARN_EVERY: Duration = Duration::from_secs(5);
/// Name of the state file inside `data_dir`.
pub const STATE_FILE: &str = "dongle-agent.sqlite";
/// Name of the lock file inside `data_dir` (held while the role runs).
pub const LOCK_FILE: &str = "dongle-agent.lock";

/// A learned dongle, as the UDP task sees it.
struct DongleEntry {
    frames: FrameQueueTx,
    link: Arc<DongleLink>,
    /// The diagnostics role's tap on this dongle, if it has one.
    tap: Option<Arc<Tap>>,
}

/// Runs the role until `stop` completes, then flushes the outboxes and returns. Errors are
/// start-up failures (state directory, lock, UDP or metrics address); once running, the role
/// retries everything itself.
///
/// It installs no signal handler and no log subscriber: the caller does (the `tether` binary
/// registers SIGTERM / Ctrl-C before calling, so a stop during start-up is a graceful stop).
pub async fn run(role: DongleRole, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_taps(role, DongleTaps::default(), stop).await
}

/// [`run`], with the diagnostics role's `taps` on some of the dongles.
pub async fn run_with_taps(
    role: DongleRole,
    taps: DongleTaps,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if !taps.is_empty() && role.protocol() != config::DongleProtocol::Remp {
        anyhow::bail!(
            "a diagnostics bus given as `dongle: SERIAL` needs dongle.protocol remp (protocol {} has no shared dongle link): give that bus its own `bus:` address",
            role.protocol().as_str()
        );
    }
    std::fs::create_dir_all(&role.data_dir)
        .with_context(|| format!("creating {}", role.data_dir.display()))?;
    // One agent per state directory: two would hand out the same seqs.
    let lock_path = role.data_dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another tether agent is using {} (locked: {})",
            role.data_dir.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    let path = role.data_dir.join(STATE_FILE);
    let store = OutboxStoreHandle::spawn(
        SqliteOutboxStore::open(&path, role.outbox_sync)
            .with_context(|| format!("opening {}", path.display()))?,
    )?;
    let assignments = Arc::new(Assignments::load(&role.data_dir));
    let edge = Edge::open(&role.edge).await?;
    let handle = MetricsHandle::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = None;
    if let Some(addr) = role.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        info!(address = %listener.local_addr()?, "metrics listening");
        let app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(handle.clone());
        let mut rx = stop_rx.clone();
        http = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    info!(protocol = role.protocol().as_str(), edge = %edge.describe(), servers = %role.servers,
        data_dir = %role.data_dir.display(), "dongle agent listening");
    let servers = Arc::new(Failover::new(role.servers.clone()));
    let role = Arc::new(role);
    let api = api::ServerApi::new(servers.clone(), &role.token)?;
    let ctx = WorkerCtx {
        cfg: role.clone(),
        servers,
        store: store.clone(),
        assignments,
        metrics: handle.metrics.clone(),
        stop: stop_rx.clone(),
    };
    let udp = match edge {
        Edge::Remp(socket) => tokio::spawn(udp_loop(ctx, api, taps, socket, stop_rx.clone())),
        Edge::Cannelloni(e, serial) => spawn_edge(*e, serial, ctx, api, stop_rx.clone()),
        Edge::Bus(e, serial) => spawn_edge(*e, serial, ctx, api, stop_rx.clone()),
    };
    if let Some(every) = role.stats_interval {
        tokio::spawn(stats_loop(handle.clone(), every, stop_rx.clone()));
    }
    stop.await;
    info!("stopping: flushing outboxes");
    let _ = stop_tx.send(true);
    match udp.await {
        Ok(workers) => {
            for w in workers {
                let _ = w.await;
            }
        }
        Err(e) => warn!(error = %e, "the edge task failed"),
    }
    if let Err(e) = store.close().await {
        warn!(error = %e, "closing the outbox store");
    }
    log_totals(&handle, "dongle agent stopped");
    drop(lock);
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(())
}

async fn metrics_text(State(h): State<MetricsHandle>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            tether_runtime::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        h.encode(),
    )
}

/// The role's edge, opened.
enum Edge {
    /// The REMP socket.
    Remp(Arc<UdpSocket>),
    /// A cannelloni socket and the dongle's serial.
    Cannelloni(Box<edge::CannelloniEdge>, String),
    /// A SocketCAN interface and the dongle's serial.
    Bus(Box<edge::BusEdge<AnyBus>>, String),
}

impl Edge {
    /// Binds the UDP socket or opens the interface `edge` names.
    async fn open(edge: &DongleEdge) -> anyhow::Result<Self> {
        Ok(match edge {
            DongleEdge::Remp { listen, .. } => Edge::Remp(Arc::new(
                UdpSocket::bind(listen)
                    .await
                    .with_context(|| format!("binding UDP {listen}"))?,
            )),
            DongleEdge::Cannelloni {
                listen,
                peer,
                serial,
            } => Edge::Cannelloni(
                Box::new(
                    edge::CannelloniEdge::bind(*listen, *peer)
                        .await
                        .with_context(|| format!("binding UDP {listen} (cannelloni)"))?,
                ),
                serial.clone(),
            ),
            DongleEdge::SocketCan { interface, serial } => {
                let address = BusAddress::SocketCan(interface.clone());
                let bus = AnyBus::open(&address, &OpenOptions::default())
                    .await
                    .with_context(|| format!("opening {address} (dongle.protocol socketcan)"))?;
                Edge::Bus(
                    Box::new(edge::BusEdge::new(bus, format!("socketcan {interface}"))),
                    serial.clone(),
                )
            }
        })
    }

    /// What the edge listens on, for the start-up log.
    fn describe(&self) -> String {
        use edge::FrameEdge;
        match self {
            Edge::Remp(socket) => match socket.local_addr() {
                Ok(a) => format!("remp udp {a}"),
                Err(_) => "remp".into(),
            },
            Edge::Cannelloni(e, _) => e.describe(),
            Edge::Bus(e, _) => e.describe(),
        }
    }
}

/// Runs a SocketCAN or cannelloni edge for its one dongle ([`edge::run`]).
fn spawn_edge<E: edge::FrameEdge + 'static>(
    e: E,
    serial: String,
    ctx: WorkerCtx,
    api: api::ServerApi,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>> {
    let metrics = ctx.metrics.clone();
    let name = serial.clone();
    let start = Box::new(move |out: DongleOut| start_dongle(&ctx, &api, &name, out));
    tokio::spawn(edge::run(e, serial, metrics, start, stop))
}

/// Receive REMP until stopped; returns the workers to wait for.
async fn udp_loop(
    ctx: WorkerCtx,
    api: api::ServerApi,
    taps: DongleTaps,
    socket: Arc<UdpSocket>,
    mut stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let DongleEdge::Remp {
        keys, require_auth, ..
    } = &ctx.cfg.edge
    else {
        return Vec::new();
    };
    let mut receiver = RempReceiver::new(MAX_DONGLES);
    for (serial, keys) in keys {
        receiver.set_keys(serial, keys.clone());
    }
    receiver.set_require_auth(*require_auth);
    let mut dongles: HashMap<String, DongleEntry> = HashMap::new();
    let mut workers = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    let mut warned: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut auth_refused_seen = 0;
    let mut auth_warned = tokio::time::Instant::now() - QUEUE_WARN_EVERY;
    loop {
        let (n, from) = tokio::select! {
            _ = stop.changed() => break,
            _ = gauges.tick() => {
                for (serial, s, _) in receiver.dongles() {
                    DongleMetrics::set(&ctx.metrics.remp_lost, serial, s.lost);
                    DongleMetrics::set(&ctx.metrics.remp_dongle_dropped, serial, u64::from(s.dongle_dropped));
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; the socket stays usable.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        let event = match receiver.handle_datagram(&buf[..n], worker::now_ms() * 1_000_000) {
            Ok(ev) => ev,
            Err(e) => {
                let refused = receiver.auth_refused().total();
                if refused > auth_refused_seen {
                    auth_refused_seen = refused;
                    ctx.metrics.unauthenticated_datagrams.inc();
                    let now = tokio::time::Instant::now();
                    if now.duration_since(auth_warned) >= QUEUE_WARN_EVERY {
                        auth_warned = now;
                        warn!(%from, error = %e, total = refused,
                            "dropping REMP datagrams that fail authentication");
                    }
                } else {
                    ctx.metrics.malformed_datagrams.inc();
                    tracing::debug!(%from, error = %e, "skipping a datagram that is not valid REMP");
                }
                continue;
            }
        };
        let (serial, records) = match event {
            RempEvent::Hello {
                serial, restarted, ..
            } => {
                if restarted {
                    info!(%serial, "dongle restarted");
                }
                (serial, None)
            }
            RempEvent::Keepalive { serial } => (serial, None),
            RempEvent::Frames { serial, records } => (serial, Some(records)),
            RempEvent::Dropped { .. } => continue,
        };
        if !dongles.contains_key(&serial) {
            match learn(&ctx, &api, &taps, &socket, &serial, from) {
                Ok((entry, handle)) => {
                    dongles.insert(serial.clone(), entry);
                    workers.push(handle);
                }
                Err(e) => {
                    warn!(%serial, error = %format!("{e:#}"), "cannot start a worker for this dongle");
                    continue;
                }
            }
        }
        let Some(entry) = dongles.get(&serial) else {
            continue;
        };
        entry.link.set_peer(from);
        if let Some(records) = records {
            if let Some(tap) = &entry.tap {
                tap.offer(&records);
            }
            let n = records.len() as u64;
            match entry.frames.push(records) {
                Ok(()) => {}
                Err(e) => {
                    ctx.metrics.dropped(&serial, DropReason::QueueFull, n);
                    let closed = e == QueueRefused::Closed;
                    let now = tokio::time::Instant::now();
                    let last = warned
                        .entry(serial.clone())
                        .or_insert(now - QUEUE_WARN_EVERY);
                    if now.duration_since(*last) >= QUEUE_WARN_EVERY {
                        *last = now;
                        warn!(%serial, frames = n, worker_stopped = closed,
                            "the dongle's queue is full or its worker stopped: frames dropped");
                    }
                    if closed {
                        // Its worker failed: the next datagram starts a new one.
                        dongles.remove(&serial);
                    }
                }
            }
        }
    }
    // Dropping the senders lets each worker drain its queue and stop.
    drop(dongles);
    workers
}

/// Starts the worker of a REMP dongle first heard from `from`, with its link and tap.
fn learn(
    ctx: &WorkerCtx,
    api: &api::ServerApi,
    taps: &DongleTaps,
    socket: &Arc<UdpSocket>,
    serial: &str,
    from: SocketAddr,
) -> anyhow::Result<(DongleEntry, tokio::task::JoinHandle<()>)> {
    info!(%serial, %from, "new dongle");
    let link = Arc::new(DongleLink::new(serial, socket.clone(), from)?);
    let tap = taps.get(serial);
    if let Some(tap) = &tap {
        tap.attach(link.clone());
        tap.count_drops_in(ctx.metrics.tap_dropped_counter(serial));
    }
    let (frames, handle) = start_dongle(
        ctx,
        api,
        serial,
        DongleOut::Remp(link.clone(), Box::new(ctx.metrics.clone())),
    )?;
    Ok((DongleEntry { frames, link, tap }, handle))
}

/// Starts a dongle's worker (sending to the dongle through `out`) and its poller; returns the
/// worker's frame queue and task.
fn start_dongle(
    ctx: &WorkerCtx,
    api: &api::ServerApi,
    serial: &str,
    out: DongleOut,
) -> anyhow::Result<(FrameQueueTx, tokio::task::JoinHandle<()>)> {
    ctx.metrics.note_serial(serial);
    let saved = ctx.assignments.get(serial);
    let (tx, rx) = worker::frame_queue(DONGLE_QUEUE, DONGLE_QUEUE_FRAMES);
    let (poll_tx, poll_rx) = watch::channel(PollState::Unknown);
    let repoll = Arc::new(Notify::new());
    let w = Worker::new(
        serial.to_owned(),
        ctx.clone(),
        rx,
        out,
        poll_rx,
        repoll.clone(),
        saved.clone(),
    )?;
    tokio::spawn(poller::run(
        serial.to_owned(),
        ctx.cfg.clone(),
        api.clone(),
        saved.map(|s| s.dongle_id),
        poll_tx,
        repoll,
        ctx.stop.clone(),
    ));
    Ok((tx, tokio::spawn(w.run())))
}

async fn stats_loop(h: MetricsHandle, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut t = tokio::time::interval(every);
    t.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = t.tick() => log_totals(&h, "dongle agent totals"),
        }
    }
}

fn log_totals(h: &MetricsHandle, what: &str) {
    for serial in h.metrics.serials() {
        h.metrics.totals(&serial).log(&serial, what);
    }
}
