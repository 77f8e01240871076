//! Diagnostics on a dongle this role serves: a bus of the `diagnostics` role given as
//! `dongle: SERIAL` shares the dongle's REMP socket instead of opening one of its own (one
//! REMP dongle per vehicle is both relayed and diagnosed; `docs/agent.md`).
//!
//! * Frames the dongle sends go to its worker (the relay) as always. Those whose CAN id a
//!   running command listens on ([`Tap::listen`]: the ECUs' response ids) are also copied to
//!   the tap's queue; while no command runs, a datagram costs one atomic load and nothing is
//!   copied. A full queue drops the copy and counts it ([`Tap::dropped`]); the relay still gets
//!   the frame.
//! * Frames for the dongle — the group's other side's (the worker) and the tester's requests
//!   and flow controls (the diagnostics role) — go out through the dongle's one [`DongleLink`]:
//!   one REMP sender, so the dongle sees one numbering. The tester's frames are not relayed to
//!   the group: they are not vehicle traffic.
//!
//! The dongle role only offers frames and attaches links; it neither knows UDS nor decides what
//! a command listens to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use can_io::CanRecord;
use can_io::frame::CanFrame;
use can_io::wire::remp::RempSender;
use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Frames a tap holds for the diagnostics role before it drops (and counts) the next.
pub const TAP_QUEUE: usize = 4096;
/// A warning about tap drops at most this often (milliseconds).
const DROP_WARN_EVERY_MS: u64 = 5_000;

/// What one [`DongleLink::send`] (or a SocketCAN or cannelloni edge's send) did with the
/// records it was given: each is counted in exactly one field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkSend {
    /// Records that left (in datagrams the socket took).
    pub encoded: u64,
    /// Records the protocol cannot carry (skipped).
    pub invalid: u64,
    /// Records that did not leave: the socket refused their datagram (or there is no peer).
    pub send_errors: u64,
}

/// The way to one dongle: the role's UDP socket, the address the dongle was last heard from,
/// and the one REMP sender numbering every datagram to it.
#[derive(Debug)]
pub struct DongleLink {
    serial: String,
    socket: Arc<UdpSocket>,
    peer: Mutex<SocketAddr>,
    sender: tokio::sync::Mutex<RempSender>,
}

impl DongleLink {
    /// A link to `serial`, heard from `peer`, with a fresh REMP boot.
    pub fn new(serial: &str, socket: Arc<UdpSocket>, peer: SocketAddr) -> anyhow::Result<Self> {
        let sender = RempSender::new(serial, rand::random::<u64>(), 1000)?;
        Ok(DongleLink {
            serial: serial.to_owned(),
            socket,
            peer: Mutex::new(peer),
            sender: tokio::sync::Mutex::new(sender),
        })
    }

    /// The dongle was heard from `from`: answer there from now on.
    pub fn set_peer(&self, from: SocketAddr) {
        let mut p = self.peer.lock().unwrap_or_else(|p| p.into_inner());
        if *p != from {
            *p = from;
        }
    }

    /// The dongle's serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Sends `records` to the dongle as REMP frames datagrams. The sender stays locked until
    /// the datagrams are on the socket, so they leave in the order they are numbered. The
    /// report counts the records of a datagram the socket refused as `send_errors`.
    pub async fn send(&self, records: &[CanRecord]) -> LinkSend {
        let mut report = LinkSend::default();
        let mut sender = self.sender.lock().await;
        // Each datagram with the number of records it carries (0: a hello).
        let mut datagrams: Vec<(Vec<u8>, u64)> = Vec::new();
        for r in records {
            let before = sender.pending() as u64;
            match sender.push(r) {
                Ok(d) => {
                    // A push that sent the pending batch leaves only this record pending; its
                    // frames datagram comes last, after a hello naming a new channel.
                    let flushed = before > 0 && sender.pending() == 1;
                    let last = d.len().saturating_sub(1);
                    for (i, d) in d.into_iter().enumerate() {
                        let n = if flushed && i == last { before } else { 0 };
                        datagrams.push((d, n));
                    }
                }
                Err(e) => {
                    report.invalid += 1;
                    debug!(serial = %self.serial, error = %e, "a frame the dongle cannot carry");
                }
            }
        }
        let pending = sender.pending() as u64;
        match sender.flush() {
            Ok(d) => datagrams.extend(d.map(|d| (d, pending))),
            // Cannot happen for frames `push` accepted; never let it stall a caller.
            Err(e) => {
                report.send_errors += pending;
                warn!(serial = %self.serial, error = %e, "a REMP batch for the dongle could not be encoded")
            }
        }
        let peer = *self.peer.lock().unwrap_or_else(|p| p.into_inner());
        for (d, n) in &datagrams {
            match self.socket.send_to(d, peer).await {
                Ok(_) => report.encoded += n,
                Err(e) => {
                    report.send_errors += n;
                    debug!(serial = %self.serial, %peer, error = %e, "sending to the dongle failed");
                }
            }
        }
        report
    }
}

/// The CAN ids running commands listen on, with a count per id (commands on different ECUs
/// overlap).
#[derive(Debug, Default)]
struct IdFilter {
    /// Ids listened on; 0 lets [`IdFilter::wants`] skip the lock.
    active: AtomicUsize,
    ids: RwLock<HashMap<u32, usize>>,
}

/// An id as the filter keys it: the raw id with bit 31 set for a 29-bit id.
fn id_key(raw: u32, extended: bool) -> u32 {
    raw | (u32::from(extended) << 31)
}

/// The key of an id as ECU lists write it: 29-bit when above `0x7FF`.
fn auto_key(raw: u32) -> u32 {
    id_key(raw, raw > 0x7FF)
}

/// Diagnostics taps of the dongle role, one per serial, made before either role starts.
#[derive(Debug, Clone, Default)]
pub struct DongleTaps {
    taps: Arc<HashMap<String, Arc<Tap>>>,
    receivers: Arc<Mutex<HashMap<String, mpsc::Receiver<CanRecord>>>>,
}

impl DongleTaps {
    /// A tap for each of `serials`.
    pub fn new<'a>(serials: impl IntoIterator<Item = &'a str>) -> Self {
        let mut taps = HashMap::new();
        let mut receivers = HashMap::new();
        for serial in serials {
            let (tx, rx) = mpsc::channel(TAP_QUEUE);
            taps.insert(
                serial.to_owned(),
                Arc::new(Tap {
                    serial: serial.to_owned(),
                    filter: IdFilter::default(),
                    frames: tx,
                    link: Mutex::new(None),
                    dropped: AtomicU64::new(0),
                    drop_counter: OnceLock::new(),
                    last_warn_ms: AtomicU64::new(0),
                }),
            );
            receivers.insert(serial.to_owned(), rx);
        }
        DongleTaps {
            taps: Arc::new(taps),
            receivers: Arc::new(Mutex::new(receivers)),
        }
    }

    /// The tap on `serial`, if there is one (the dongle role).
    pub fn get(&self, serial: &str) -> Option<Arc<Tap>> {
        self.taps.get(serial).cloned()
    }

    /// The tap on `serial` and its queue's receiving end, once (the diagnostics role).
    pub fn take(&self, serial: &str) -> Option<(Arc<Tap>, mpsc::Receiver<CanRecord>)> {
        let rx = self
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(serial)?;
        Some((self.get(serial)?, rx))
    }

    /// Whether there is no tap.
    pub fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }
}

/// The diagnostics role's view of one dongle the dongle role serves.
#[derive(Debug)]
pub struct Tap {
    serial: String,
    filter: IdFilter,
    frames: mpsc::Sender<CanRecord>,
    link: Mutex<Option<Arc<DongleLink>>>,
    dropped: AtomicU64,
    /// The dongle role's `tap_dropped_frames` counter of this serial, once it is attached.
    drop_counter: OnceLock<Counter>,
    last_warn_ms: AtomicU64,
}

impl Tap {
    /// The dongle's serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Copies the records a command listens on to the tap's queue (the dongle role, for every
    /// frames datagram of the dongle).
    pub fn offer(&self, records: &[CanRecord]) {
        if self.filter.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let ids = self.filter.ids.read().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0u64;
        for r in records {
            let id = match &r.frame {
                CanFrame::Data(f) => f.id(),
                CanFrame::Fd(f) => f.id(),
                CanFrame::Remote(_) | CanFrame::Error(_) => continue,
            };
            if !ids.contains_key(&id_key(id.raw(), id.is_extended())) {
                continue;
            }
            if self.frames.try_send(r.clone()).is_err() {
                dropped += 1;
            }
        }
        drop(ids);
        if dropped > 0 {
            self.note_dropped(dropped);
        }
    }

    fn note_dropped(&self, n: u64) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(counter) = self.drop_counter.get() {
            counter.inc_by(n);
        }
        let now = crate::dongle::worker::now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_WARN_EVERY_MS
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(serial = %self.serial, frames = n, total,
                "the diagnostics role fell behind a shared dongle: frames for it dropped (the relay still has them)");
        }
    }

    /// Counts the tap's drops in `counter` too (the dongle role's metric), from the first
    /// one on; a second counter is ignored.
    pub fn count_drops_in(&self, counter: Counter) {
        if self.drop_counter.set(counter).is_ok()
            && let Some(counter) = self.drop_counter.get()
        {
            counter.inc_by(self.dropped());
        }
    }

    /// Frames the tap's full queue dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The dongle was learned (again): requests go through `link` from now on.
    pub fn attach(&self, link: Arc<DongleLink>) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    /// The link to the dongle; `None` until the dongle role has heard from it.
    pub fn link(&self) -> Option<Arc<DongleLink>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Copies frames with the CAN ids `ids` (as ECU lists write them: 29-bit above `0x7FF`)
    /// to the tap until the guard is dropped.
    pub fn listen(self: &Arc<Self>, ids: &[u32]) -> Listening {
        let keys: Vec<u32> = ids.iter().map(|&raw| auto_key(raw)).collect();
        {
            let mut map = self.filter.ids.write().unwrap_or_else(|p| p.into_inner());
            for &k in &keys {
                *map.entry(k).or_default() += 1;
            }
            self.filter.active.store(map.len(), Ordering::Release);
        }
        Listening {
            tap: self.clone(),
            keys,
        }
    }
}

/// Frames of some ids are copied to a tap while this lives ([`Tap::listen`]).
#[derive(Debug)]
pub struct Listening {
    tap: Arc<Tap>,
    keys: Vec<u32>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let filter = &self.tap.filter;
        let mut map = filter.ids.write().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
        filter.active.store(map.len(), Ordering::Release);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use can_io::CanId;
    use can_io::frame::{Channel, DataFrame, Direction};

    fn record(id: CanId, byte: u8) -> CanRecord {
        CanRecord::new(
            0,
            Channel::from("can0"),
            Direction::Rx,
            CanFrame::Data(DataFrame::new(id, &[byte]).unwrap()),
        )
    }

    #[test]
    fn copies_only_the_ids_a_command_listens_on_and_counts_a_full_queue() {
        let taps = DongleTaps::new(["VEH-1"]);
        assert!(taps.get("VEH-2").is_none());
        let (tap, mut rx) = taps.take("VEH-1").unwrap();
        assert!(
            taps.take("VEH-1").is_none(),
            "the receiver is handed out once"
        );
        let engine = CanId::standard(0x7E8).unwrap();
        let other = CanId::standard(0x123).unwrap();
        let ext = CanId::extended(0x18DA_F110).unwrap();
        // Nobody listens: nothing is copied.
        tap.offer(&[record(engine, 1)]);
        assert!(rx.try_recv().is_err());

        let a = tap.listen(&[0x7E8, 0x18DA_F110]);
        let b = tap.listen(&[0x7E8]);
        tap.offer(&[record(other, 2), record(engine, 3), record(ext, 4)]);
        // An 11-bit frame with the 29-bit id's low bits is another id.
        tap.offer(&[record(CanId::standard(0x110).unwrap(), 5)]);
        let got: Vec<u8> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.frame.data()[0])
            .collect();
        assert_eq!(got, [3, 4]);
        drop(a);
        tap.offer(&[record(ext, 6), record(engine, 7)]);
        assert_eq!(
            rx.try_recv().unwrap().frame.data()[0],
            7,
            "0x7E8 is still listened on by b"
        );
        assert!(rx.try_recv().is_err());
        drop(b);
        tap.offer(&[record(engine, 8)]);
        assert!(rx.try_recv().is_err());

        let _c = tap.listen(&[0x7E8]);
        let flood: Vec<CanRecord> = (0..TAP_QUEUE + 10)
            .map(|i| record(engine, i as u8))
            .collect();
        tap.offer(&flood);
        assert_eq!(tap.dropped(), 10);

        // The dongle role's metric counts the drops from before it was attached and after,
        // and the metrics endpoint's text shows it.
        let handle = crate::dongle::metrics::MetricsHandle::new();
        tap.count_drops_in(handle.metrics.tap_dropped_counter("VEH-1"));
        tap.offer(&[record(engine, 1), record(other, 2), record(engine, 3)]);
        assert_eq!(tap.dropped(), 12);
        let text = handle.encode();
        assert!(
            text.contains("tether_agent_dongle_tap_dropped_frames_total{serial=\"VEH-1\"} 12"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_link_numbers_every_datagram_to_the_dongle_in_one_sequence() {
        let dongle = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let agent = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let link = DongleLink::new("VEH-1", agent, dongle.local_addr().unwrap()).unwrap();
        let id = CanId::standard(0x7E0).unwrap();
        let first = link.send(&[record(id, 1)]).await;
        assert_eq!(
            first,
            LinkSend {
                encoded: 1,
                invalid: 0,
                send_errors: 0
            }
        );
        link.send(&[record(id, 2)]).await;
        let mut buf = vec![0u8; 2048];
        let mut seen = Vec::new();
        for _ in 0..2 {
            let n = dongle.recv(&mut buf).await.unwrap();
            let d = can_io::wire::remp::decode(&buf[..n]).unwrap();
            assert_eq!(d.serial, "VEH-1");
            seen.push(d.seq);
        }
        assert_eq!(seen, [0, 1]);
    }
}
