//! One diagnostics bus: the opened bus — or the tap on a dongle the `dongle` role serves — an
//! in-process fan-out so several testers share it, and the queue rules (one command at a time
//! per ECU, functional requests alone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use can_io::CanRecord;
use can_io::transport::CanBus;
use can_io::transport::open::{AnyBus, OpenOptions};
use can_io::transport::virtual_bus::{OverflowPolicy, VirtualBus, VirtualPort};
use tokio::sync::{OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, mpsc};
use tracing::{debug, warn};

use super::config::{BusSource, DiagBus};
use crate::dongle::tap::{DongleTaps, Listening, Tap};

/// Frames a tester's port holds before the bus drops (and counts) the next.
const TESTER_QUEUE: usize = 4096;
/// Frames queued towards the real bus.
const UPLINK_QUEUE: usize = 4096;

/// Counters of one bus.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Frames received from the bus.
    pub frames_in: AtomicU64,
    /// Frames put on the bus.
    pub frames_out: AtomicU64,
    /// Frames that could not be put on the bus (no dongle heard yet, socket errors).
    pub send_failed: AtomicU64,
    /// Frames a tester's full receive queue dropped.
    pub tester_dropped: AtomicU64,
    /// Bus receive errors.
    pub recv_errors: AtomicU64,
}

/// Holds a command's place in its bus's queue while it runs.
#[derive(Debug)]
pub enum Turn {
    /// A functional request: every ECU of the bus.
    All(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    /// One ECU.
    One(
        #[allow(dead_code)] OwnedRwLockReadGuard<()>,
        #[allow(dead_code)] OwnedMutexGuard<()>,
    ),
}

/// A bus shared by the commands of one dongle.
#[derive(Debug)]
pub struct DiagBusHandle {
    /// The serial it is announced under.
    pub serial: String,
    /// The bus, as configured.
    pub bus: DiagBus,
    /// The tap, on a dongle the dongle role serves.
    tap: Option<Arc<Tap>>,
    fanout: VirtualBus,
    all: Arc<RwLock<()>>,
    ecus: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Counters.
    pub counters: Arc<BusCounters>,
}

impl DiagBusHandle {
    /// Open `bus` (UDP addresses listen: the dongle sends to the agent; a `dongle:` bus takes
    /// its tap from `taps`) and start the task that moves frames between it and the testers;
    /// the task ends when `stop` flips.
    pub async fn open(
        bus: &DiagBus,
        taps: &DongleTaps,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let serial = &bus.serial;
        let (source, tap) = match &bus.source {
            BusSource::Address(address) => {
                let options = OpenOptions {
                    listen: true,
                    serial: format!("AGENT-{serial}")
                        .chars()
                        .take(can_io::wire::remp::MAX_SERIAL_LEN)
                        .collect(),
                    ..OpenOptions::default()
                };
                (
                    Source::Own(Box::new(AnyBus::open(address, &options).await?)),
                    None,
                )
            }
            BusSource::Dongle => {
                let Some((tap, frames)) = taps.take(serial) else {
                    anyhow::bail!(
                        "no dongle role runs in this process to share dongle {serial} with"
                    );
                };
                (
                    Source::Dongle {
                        tap: tap.clone(),
                        frames,
                    },
                    Some(tap),
                )
            }
        };
        let fanout = VirtualBus::new();
        let uplink = fanout.port("uplink", UPLINK_QUEUE, OverflowPolicy::Backpressure);
        let counters = Arc::new(BusCounters::default());
        tokio::spawn(pump(
            source,
            uplink,
            counters.clone(),
            bus.to_string(),
            stop,
        ));
        Ok(Arc::new(DiagBusHandle {
            serial: serial.to_owned(),
            bus: bus.clone(),
            tap,
            fanout,
            all: Arc::new(RwLock::new(())),
            ecus: Mutex::new(HashMap::new()),
            counters,
        }))
    }

    /// Wait for the turn of a command with queue key `key` (`*`: functional, else an ECU).
    /// Fair: first come, first served, per ECU and between functional and physical commands.
    pub async fn turn(&self, key: &str) -> Turn {
        if key == "*" {
            return Turn::All(self.all.clone().write_owned().await);
        }
        let shared = self.all.clone().read_owned().await;
        let ecu = {
            let mut map = self.ecus.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        Turn::One(shared, ecu.lock_owned().await)
    }

    /// On a shared dongle, copies the frames with CAN ids `response_ids` (the ECUs' answers
    /// and flow controls) to this bus until the guard is dropped; `None` (nothing to do) on a
    /// bus of its own, which hears everything.
    pub fn listen(&self, response_ids: &[u32]) -> Option<Listening> {
        self.tap.as_ref().map(|t| t.listen(response_ids))
    }

    /// Why no request can go out on this bus now: on a shared dongle, the dongle role has not
    /// heard from the dongle since the agent started (it knows no address to send to). `None`
    /// on a bus of its own, and once the dongle was heard.
    pub fn unreachable(&self) -> Option<String> {
        let tap = self.tap.as_ref()?;
        tap.link().is_none().then(|| {
            format!(
                "bus_error: dongle {} not connected (the dongle role has not heard from it since the agent started)",
                tap.serial()
            )
        })
    }

    /// Frames the shared dongle's tap dropped so far (0 on a bus of its own).
    pub fn tap_dropped(&self) -> u64 {
        self.tap.as_ref().map_or(0, |t| t.dropped())
    }

    /// A port on the bus for one command's tester.
    pub fn port(&self) -> TesterPort {
        TesterPort {
            port: self
                .fanout
                .port("tester", TESTER_QUEUE, OverflowPolicy::DropNewest),
            counters: self.counters.clone(),
        }
    }
}

/// A tester's port; what its queue dropped is counted on the bus when it goes.
#[derive(Debug)]
pub struct TesterPort {
    port: VirtualPort,
    counters: Arc<BusCounters>,
}

impl Drop for TesterPort {
    fn drop(&mut self) {
        let dropped = self.port.dropped();
        if dropped > 0 {
            self.counters
                .tester_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            warn!(
                frames = dropped,
                "a command's tester fell behind the bus: frames dropped"
            );
        }
    }
}

impl CanBus for TesterPort {
    async fn send(&mut self, record: &can_io::CanRecord) -> Result<(), can_io::Error> {
        self.port.send(record).await
    }
    async fn flush(&mut self) -> Result<(), can_io::Error> {
        Ok(())
    }
    async fn recv(&mut self) -> Result<Option<can_io::CanRecord>, can_io::Error> {
        self.port.recv().await
    }
    fn stats(&self) -> can_io::transport::BusStats {
        self.port.stats()
    }
}

/// Where the pump's frames come from and go to.
enum Source {
    /// A bus of the role's own (boxed: it is large, and there is one per bus).
    Own(Box<AnyBus>),
    /// A dongle the dongle role serves: its tap's frames in, its REMP link out.
    Dongle {
        tap: Arc<Tap>,
        frames: mpsc::Receiver<CanRecord>,
    },
}

impl Source {
    async fn recv(&mut self) -> Result<Option<CanRecord>, can_io::Error> {
        match self {
            Source::Own(bus) => bus.recv().await,
            Source::Dongle { frames, .. } => Ok(frames.recv().await),
        }
    }

    async fn send(&mut self, record: &CanRecord) -> anyhow::Result<()> {
        match self {
            Source::Own(bus) => {
                bus.send(record).await?;
                bus.flush().await?;
            }
            Source::Dongle { tap, .. } => {
                let Some(link) = tap.link() else {
                    anyhow::bail!(
                        "the dongle role has not heard from dongle {} yet",
                        tap.serial()
                    );
                };
                let sent = link.send(std::slice::from_ref(record)).await;
                if sent.invalid > 0 {
                    anyhow::bail!("REMP cannot carry this frame");
                }
                if sent.send_errors > 0 {
                    anyhow::bail!("the dongle role's UDP socket refused the datagram");
                }
            }
        }
        Ok(())
    }

    fn needs_ticks(&self) -> bool {
        match self {
            Source::Own(bus) => bus.needs_ticks(),
            // The dongle role's socket: the dongle's own keep-alives keep it learned.
            Source::Dongle { .. } => false,
        }
    }

    async fn tick(&mut self) -> Result<(), can_io::Error> {
        match self {
            Source::Own(bus) => bus.tick().await,
            Source::Dongle { .. } => Ok(()),
        }
    }
}

/// Frames from the bus to every tester, frames from the testers to the bus, keep-alives.
async fn pump(
    mut bus: Source,
    mut uplink: VirtualPort,
    counters: Arc<BusCounters>,
    name: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_send = false;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = bus.recv() => match r {
                Ok(Some(record)) => {
                    counters.frames_in.fetch_add(1, Ordering::Relaxed);
                    // Tester ports drop rather than push back, so this never waits long.
                    if uplink.send(&record).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    warn!(bus = %name, "the diagnostics bus ended");
                    return;
                }
                Err(e) => {
                    counters.recv_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(bus = %name, error = %e, "diagnostics bus receive error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            r = uplink.recv() => match r {
                Ok(Some(record)) => {
                    match bus.send(&record).await {
                        Ok(()) => {
                            counters.frames_out.fetch_add(1, Ordering::Relaxed);
                            warned_send = false;
                        }
                        Err(e) => {
                            counters.send_failed.fetch_add(1, Ordering::Relaxed);
                            if !warned_send {
                                warned_send = true;
                                warn!(bus = %name, error = %format!("{e:#}"), "cannot put a frame on the diagnostics bus (counted)");
                            }
                        }
                    }
                }
                _ => return,
            },
            _ = tick.tick(), if bus.needs_ticks() => {
                if let Err(e) = bus.tick().await {
                    debug!(bus = %name, error = %e, "keep-alive failed");
                }
            }
        }
    }
}
