//! One diagnostics bus: the opened bus, an in-process fan-out so several testers share it, and
//! the queue rules (one command at a time per ECU, functional requests alone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use can_io::transport::CanBus;
use can_io::transport::open::{AnyBus, BusAddress, OpenOptions};
use can_io::transport::virtual_bus::{OverflowPolicy, VirtualBus, VirtualPort};
use tokio::sync::{OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tracing::{debug, warn};

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
    /// Where it is.
    pub address: BusAddress,
    fanout: VirtualBus,
    all: Arc<RwLock<()>>,
    ecus: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Counters.
    pub counters: Arc<BusCounters>,
}

impl DiagBusHandle {
    /// Open `address` (UDP addresses listen: the dongle sends to the agent) and start the task
    /// that moves frames between it and the testers; the task ends when `stop` flips.
    pub async fn open(
        serial: &str,
        address: &BusAddress,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let options = OpenOptions {
            listen: true,
            serial: format!("AGENT-{serial}")
                .chars()
                .take(can_io::wire::remp::MAX_SERIAL_LEN)
                .collect(),
            ..OpenOptions::default()
        };
        let bus = AnyBus::open(address, &options).await?;
        let fanout = VirtualBus::new();
        let uplink = fanout.port("uplink", UPLINK_QUEUE, OverflowPolicy::Backpressure);
        let counters = Arc::new(BusCounters::default());
        tokio::spawn(pump(
            bus,
            uplink,
            counters.clone(),
            address.to_string(),
            stop,
        ));
        Ok(Arc::new(DiagBusHandle {
            serial: serial.to_owned(),
            address: address.clone(),
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

/// Frames from the bus to every tester, frames from the testers to the bus, keep-alives.
async fn pump(
    mut bus: AnyBus,
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
                    let sent = match bus.send(&record).await {
                        Ok(()) => bus.flush().await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(()) => {
                            counters.frames_out.fetch_add(1, Ordering::Relaxed);
                            warned_send = false;
                        }
                        Err(e) => {
                            counters.send_failed.fetch_add(1, Ordering::Relaxed);
                            if !warned_send {
                                warned_send = true;
                                warn!(bus = %name, error = %e, "cannot put a frame on the diagnostics bus (counted)");
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
