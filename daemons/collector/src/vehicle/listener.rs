//! The CAN listener: frames from `CAN_BUS` become records (`frame`, and `signals` with a DBC),
//! handed to the driver in batches; status frames from the driver go out on the same bus.
//!
//! While the driver is busy committing (or the ingest queue's byte budget is spent,
//! [`super::ingest`]), frames gather here (up to [`MAX_BACKLOG`] records) and go as one batch;
//! beyond that a frame is dropped and counted (`listener_overflow`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use can_io::CanRecord;
use can_io::transport::CanBus;
use can_io::transport::open::{AnyBus, BusAddress, OpenOptions};
use relay_core::uplink::NewRecord;
use tokio::sync::mpsc;

use super::ingest::{Ingest, record_cost};
use crate::dbc::DbcDecoder;
use crate::record::{frame_record, signals_record};

/// Records held in the listener while the driver is busy, at most.
pub const MAX_BACKLOG: usize = 200_000;

/// Counters of the listener, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Frames received.
    pub frames: AtomicU64,
    /// `signals` records made.
    pub decoded: AtomicU64,
    /// Records dropped because the backlog was full.
    pub overflow: AtomicU64,
    /// Status frames sent.
    pub status_frames: AtomicU64,
    /// Status frames the bus refused.
    pub status_errors: AtomicU64,
    /// Times the bus was opened again after it ended.
    pub reopened: AtomicU64,
}

/// A bus as the listener uses it.
#[derive(Debug)]
enum Bus {
    Net(AnyBus),
    #[cfg(all(feature = "socketcan", target_os = "linux"))]
    SocketCan(can_io::transport::socketcan::SocketCan),
}

impl Bus {
    async fn recv(&mut self) -> Result<Option<CanRecord>, can_io::Error> {
        match self {
            Bus::Net(b) => b.recv().await,
            #[cfg(all(feature = "socketcan", target_os = "linux"))]
            Bus::SocketCan(b) => b.recv().await,
        }
    }

    async fn send(&mut self, r: &CanRecord) -> Result<(), can_io::Error> {
        match self {
            Bus::Net(b) => {
                b.send(r).await?;
                b.flush().await
            }
            #[cfg(all(feature = "socketcan", target_os = "linux"))]
            Bus::SocketCan(b) => {
                b.send(r).await?;
                b.flush().await
            }
        }
    }

    async fn tick(&mut self) -> Result<(), can_io::Error> {
        match self {
            Bus::Net(b) => b.tick().await,
            #[cfg(all(feature = "socketcan", target_os = "linux"))]
            Bus::SocketCan(_) => Ok(()),
        }
    }
}

/// Checks a `CAN_BUS` address without opening it.
pub fn check_bus_address(address: &str) -> anyhow::Result<()> {
    if let Some(ifname) = address.strip_prefix("socketcan://") {
        if ifname.is_empty() || ifname.contains('/') {
            bail!("socketcan://IFNAME needs one interface name, got {address:?}");
        }
        if cfg!(not(all(feature = "socketcan", target_os = "linux"))) {
            bail!("{address}: this build has no SocketCAN support (feature `socketcan`, Linux)");
        }
        return Ok(());
    }
    address
        .parse::<BusAddress>()
        .with_context(|| format!("CAN_BUS {address:?}"))?;
    Ok(())
}

async fn open_bus(address: &str) -> anyhow::Result<Bus> {
    check_bus_address(address)?;
    #[cfg(all(feature = "socketcan", target_os = "linux"))]
    if let Some(ifname) = address.strip_prefix("socketcan://") {
        let bus = can_io::transport::socketcan::SocketCan::open(ifname)
            .with_context(|| format!("opening {address}"))?;
        return Ok(Bus::SocketCan(bus));
    }
    let parsed: BusAddress = address.parse()?;
    let options = OpenOptions {
        listen: true,
        ..OpenOptions::default()
    };
    let bus = AnyBus::open(&parsed, &options)
        .await
        .with_context(|| format!("opening CAN_BUS {address}"))?;
    Ok(Bus::Net(bus))
}

fn to_records(frame: &CanRecord, dbc: Option<&DbcDecoder>, out: &mut Vec<NewRecord>) -> bool {
    let ts_ms = (frame.ts_ns / 1_000_000).min(crate::wire::MAX_TS_MS);
    out.push(NewRecord {
        ts_ms,
        payload: frame_record(frame),
    });
    if let Some(decoded) = dbc.and_then(|d| d.decode(&frame.frame)) {
        out.push(NewRecord {
            ts_ms,
            payload: signals_record(&decoded),
        });
        return true;
    }
    false
}

/// The opened listener, ready to run.
#[derive(Debug)]
pub struct Listener {
    bus: Bus,
    dbc: Option<DbcDecoder>,
}

impl Listener {
    /// Opens `address` (listening side for UDP addresses) and loads the DBC.
    pub async fn open(address: &str, dbc: Option<DbcDecoder>) -> anyhow::Result<Self> {
        Ok(Listener {
            bus: open_bus(address).await?,
            dbc,
        })
    }

    /// The bound address of a UDP bus.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.bus {
            Bus::Net(b) => b.local_addr(),
            #[cfg(all(feature = "socketcan", target_os = "linux"))]
            Bus::SocketCan(_) => None,
        }
    }

    /// Runs until the bus ends, `records` closes or `stop` fires: frames → records →
    /// `records`, status frames from `status` → the bus. What it holds is handed over before
    /// it returns.
    async fn run(
        &mut self,
        records: &Ingest,
        status: &mut mpsc::Receiver<Vec<CanRecord>>,
        counters: &ListenerCounters,
        stop: &mut tokio::sync::oneshot::Receiver<()>,
    ) -> Ended {
        let mut ended = Ended::Closed;
        let mut errors = 0u32;
        let mut backlog: Vec<NewRecord> = Vec::new();
        // The backlog's cost in the ingest budget (`ingest::record_cost`), kept as it grows.
        let mut backlog_bytes = 0usize;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut status_open = true;
        loop {
            tokio::select! {
                _ = &mut *stop => {
                    ended = Ended::Stopped;
                    break;
                }
                received = self.bus.recv() => match received {
                    Ok(Some(frame)) => {
                        errors = 0;
                        counters.frames.fetch_add(1, Ordering::Relaxed);
                        if backlog.len() >= MAX_BACKLOG {
                            counters.overflow.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let before = backlog.len();
                        if to_records(&frame, self.dbc.as_ref(), &mut backlog) {
                            counters.decoded.fetch_add(1, Ordering::Relaxed);
                        }
                        backlog_bytes += backlog[before..].iter().map(record_cost).sum::<usize>();
                    }
                    Ok(None) => {
                        tracing::warn!("the CAN bus ended");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "CAN bus receive error");
                        errors += 1;
                        if errors >= 10 {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                // Room in the ingest budget for what has gathered (a frame arriving meanwhile
                // asks again, for the grown backlog).
                permit = records.reserve(backlog_bytes), if !backlog.is_empty() => {
                    let sent = permit.map(|p| {
                        backlog_bytes = 0;
                        records.send_reserved(std::mem::take(&mut backlog), p)
                    });
                    if !matches!(sent, Some(Ok(()))) {
                        ended = Ended::Stopped;
                        break;
                    }
                }
                frames = status.recv(), if status_open => match frames {
                    Some(frames) => {
                        for f in &frames {
                            match self.bus.send(f).await {
                                Ok(()) => counters.status_frames.fetch_add(1, Ordering::Relaxed),
                                Err(e) => {
                                    tracing::debug!(error = %e, "status frame not sent");
                                    counters.status_errors.fetch_add(1, Ordering::Relaxed)
                                }
                            };
                        }
                    }
                    None => status_open = false,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.bus.tick().await {
                        tracing::debug!(error = %e, "bus keep-alive failed");
                    }
                }
            }
        }
        if !backlog.is_empty() {
            let _ = records.send(backlog).await;
        }
        ended
    }
}

enum Ended {
    Stopped,
    Closed,
}

/// Runs `listener` until `stop` fires; when its bus ends or fails (a socketcand server went
/// away) it is opened again, with full-jitter backoff (0.2 s … 10 s).
pub(crate) async fn supervise(
    listener: Listener,
    address: String,
    records: Ingest,
    mut status: mpsc::Receiver<Vec<CanRecord>>,
    counters: Arc<ListenerCounters>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use rand::Rng;
    let policy = tether_retry::FullJitter::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(10),
    );
    let mut backoff = tether_retry::Backoff::new(policy);
    let dbc = listener.dbc.clone();
    let mut listener = Some(listener);
    loop {
        if let Some(mut l) = listener.take()
            && let Ended::Stopped = l.run(&records, &mut status, &counters, &mut stop).await
        {
            return;
        }
        // The old bus is closed (dropped) before the address is bound again.
        loop {
            let delay = backoff.next_delay(rand::rng().random::<f64>());
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match Listener::open(&address, dbc.clone()).await {
                Ok(l) => {
                    tracing::info!(bus = %address, "CAN bus reopened");
                    counters.reopened.fetch_add(1, Ordering::Relaxed);
                    listener = Some(l);
                    backoff.reset();
                    break;
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "reopening the CAN bus failed"),
            }
        }
    }
}
