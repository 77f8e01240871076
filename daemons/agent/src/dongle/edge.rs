//! The role's edges other than REMP: one dongle, named by `dongle.serial`, behind a local
//! SocketCAN interface (`protocol: socketcan`) or a cannelloni peer on UDP (`protocol:
//! cannelloni`). Only the receiving and sending of frames differs from a REMP dongle: the
//! frames go into the same queue, worker, outbox and assignment poller (`super::start_dongle`).
//!
//! * [`run`] owns the edge: it starts the dongle's worker at once (so the dongle is announced
//!   before its first frame), hands received frames to the worker's queue (a full queue drops
//!   them, counted `queue_full`), and sends what the worker hands it through a [`BusLink`].
//!   A worker that failed is started again by the next frames, as a REMP dongle's is.
//! * [`CannelloniEdge`]: a UDP socket; every datagram is decoded as cannelloni v2
//!   (`can_io::wire::cannelloni`), one that does not decode is counted (`malformed_datagrams`)
//!   and skipped. Frames for the dongle go to `dongle.peer`, or else to the address the last
//!   valid datagram came from; before any was heard they are dropped (`not_sent`).
//! * [`BusEdge`]: any `CanBus` that sends frame by frame — the SocketCAN interface
//!   (`can_io::transport::open::AnyBus`), or a virtual bus in the tests.
//!
//! Every frame for the dongle that does not leave is counted `not_sent` by [`BusLink::send`]
//! (a REMP dongle's by [`DongleOut::send`]); the worker counts what did leave as
//! `frames_delivered`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use can_io::CanRecord;
use can_io::error::Error;
use can_io::frame::Channel;
use can_io::transport::{CanBus, now_ns};
use can_io::wire::cannelloni::{self, CannelloniSender};
use futures::FutureExt;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::metrics::{DongleMetrics, DropReason};
use super::tap::{DongleLink, LinkSend};
use super::worker::{FrameQueueTx, QueueRefused};

/// Most records handed to the worker's queue at once (what is ready is taken together).
const RECV_BATCH: usize = 512;
/// Batches of frames for the dongle waiting for the edge.
const OUT_QUEUE: usize = 64;
/// After a second receive error in a row, wait this long before the next receive (an
/// interface that is down fails every read at once).
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// A warning about receive or send errors at most this often.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// The channel name of frames received over cannelloni (the protocol carries none).
pub const CANNELLONI_CHANNEL: &str = "can0";

/// The way to a dongle that the worker sends the other side's frames through.
#[derive(Debug)]
pub enum DongleOut {
    /// A REMP dongle (its link is shared with a diagnostics tap) and the role's counters.
    Remp(Arc<DongleLink>, Box<DongleMetrics>),
    /// The one dongle of a SocketCAN or cannelloni edge.
    Bus(Box<BusLink>),
}

impl DongleOut {
    /// Sends `records` to the dongle; what could not be carried or sent is reported, not
    /// retried. Frames that did not leave (`send_errors`: the socket refused their datagram,
    /// the edge has no peer) are counted `not_sent` here.
    pub async fn send(&self, records: Vec<CanRecord>) -> LinkSend {
        match self {
            DongleOut::Remp(link, metrics) => {
                let sent = link.send(&records).await;
                metrics.dropped(link.serial(), DropReason::NotSent, sent.send_errors);
                sent
            }
            DongleOut::Bus(link) => link.send(records).await,
        }
    }
}

/// A batch of frames for the dongle and where to report what became of it.
#[derive(Debug)]
struct Outgoing {
    records: Vec<CanRecord>,
    done: oneshot::Sender<LinkSend>,
}

/// The worker's end of an edge: frames handed to [`run`], which sends them and reports.
#[derive(Debug)]
pub struct BusLink {
    tx: mpsc::Sender<Outgoing>,
    serial: String,
    metrics: DongleMetrics,
}

impl BusLink {
    /// Sends `records` through the edge and waits for its report. Frames that did not leave
    /// — the edge refused them or is gone — are counted `not_sent` here.
    pub async fn send(&self, records: Vec<CanRecord>) -> LinkSend {
        let n = records.len() as u64;
        if n == 0 {
            return LinkSend::default();
        }
        let (done, report) = oneshot::channel();
        let gone = LinkSend {
            send_errors: n,
            ..LinkSend::default()
        };
        let sent = match self.tx.send(Outgoing { records, done }).await {
            Ok(()) => report.await.unwrap_or(gone),
            Err(_) => gone,
        };
        self.metrics
            .dropped(&self.serial, DropReason::NotSent, sent.send_errors);
        sent
    }
}

/// A source and sink of one dongle's frames.
pub trait FrameEdge: Send {
    /// The next frames; none when a datagram did not decode (so the count of
    /// [`malformed`](Self::malformed) is published at once). `Ok(None)`: the source has ended.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<CanRecord>>, Error>> + Send;
    /// Sends `records` in order; the report counts the frames that left (`encoded`) and
    /// those that did not (`send_errors`).
    fn send(&mut self, records: &[CanRecord]) -> impl Future<Output = LinkSend> + Send;
    /// Datagrams (or bus messages) received that did not decode, so far.
    fn malformed(&self) -> u64;
    /// `protocol address` for logs.
    fn describe(&self) -> String;
}

/// A warning at most every [`WARN_EVERY`], with the count since the last one.
#[derive(Debug)]
struct RateLimited {
    last: Instant,
    count: u64,
}

impl RateLimited {
    fn new() -> Self {
        RateLimited {
            last: Instant::now() - WARN_EVERY,
            count: 0,
        }
    }

    /// Counts one; `Some(count)` when it is time to warn.
    fn note(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if now.duration_since(self.last) < WARN_EVERY {
            return None;
        }
        self.last = now;
        Some(std::mem::take(&mut self.count))
    }
}

/// cannelloni v2 on a UDP socket, one peer.
#[derive(Debug)]
pub struct CannelloniEdge {
    socket: UdpSocket,
    /// `dongle.peer`.
    peer: Option<SocketAddr>,
    /// Where the last valid datagram came from.
    last_from: Option<SocketAddr>,
    sender: CannelloniSender,
    channel: Channel,
    buf: Vec<u8>,
    malformed: u64,
}

impl CannelloniEdge {
    /// Binds `listen`; frames for the dongle go to `peer`, or else to the address last heard
    /// from.
    pub async fn bind(listen: SocketAddr, peer: Option<SocketAddr>) -> std::io::Result<Self> {
        Ok(CannelloniEdge {
            socket: UdpSocket::bind(listen).await?,
            peer,
            last_from: None,
            sender: CannelloniSender::new(),
            channel: Channel::from(CANNELLONI_CHANNEL),
            buf: vec![0; 65536],
            malformed: 0,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    async fn send_datagram(&self, peer: SocketAddr, datagram: &[u8]) -> bool {
        match self.socket.send_to(datagram, peer).await {
            Ok(_) => true,
            Err(e) => {
                debug!(%peer, error = %e, "sending a cannelloni datagram failed");
                false
            }
        }
    }
}

impl FrameEdge for CannelloniEdge {
    async fn recv(&mut self) -> Result<Option<Vec<CanRecord>>, Error> {
        let (n, from) = self
            .socket
            .recv_from(&mut self.buf)
            .await
            .map_err(|source| Error::Io {
                action: "receiving a cannelloni datagram",
                source,
            })?;
        match cannelloni::decode_datagram(&self.buf[..n]) {
            Ok(d) => {
                self.last_from = Some(from);
                Ok(Some(d.into_records(now_ns(), &self.channel).collect()))
            }
            Err(e) => {
                self.malformed += 1;
                debug!(%from, error = %e, "skipping a datagram that is not cannelloni");
                Ok(Some(Vec::new()))
            }
        }
    }

    async fn send(&mut self, records: &[CanRecord]) -> LinkSend {
        let n = records.len() as u64;
        let Some(peer) = self.peer.or(self.last_from) else {
            return LinkSend {
                send_errors: n,
                ..LinkSend::default()
            };
        };
        let mut report = LinkSend::default();
        // Frames in the sender's pending datagram: a datagram leaves with all of them or none.
        let mut pending = 0u64;
        for r in records {
            let full = match self.sender.push(r.frame) {
                Ok(full) => full,
                // Cannot happen: a single frame always fits a datagram.
                Err(e) => {
                    report.invalid += 1;
                    debug!(error = %e, "a frame cannelloni cannot carry");
                    continue;
                }
            };
            if let Some(d) = full {
                tally(&mut report, pending, self.send_datagram(peer, &d).await);
                pending = 0;
            }
            pending += 1;
        }
        match self.sender.flush() {
            Ok(Some(d)) => tally(&mut report, pending, self.send_datagram(peer, &d).await),
            Ok(None) => {}
            Err(e) => {
                report.send_errors += pending;
                debug!(error = %e, "a cannelloni datagram could not be encoded");
            }
        }
        report
    }

    fn malformed(&self) -> u64 {
        self.malformed
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(a) => format!("cannelloni udp {a}"),
            Err(_) => "cannelloni".into(),
        }
    }
}

/// `n` frames of one datagram left (`sent`) or did not.
fn tally(report: &mut LinkSend, n: u64, sent: bool) {
    if sent {
        report.encoded += n;
    } else {
        report.send_errors += n;
    }
}

/// A `CanBus` that sends each frame at once (SocketCAN; a virtual bus in tests).
#[derive(Debug)]
pub struct BusEdge<B> {
    bus: B,
    name: String,
    errors: RateLimited,
}

impl<B: CanBus> BusEdge<B> {
    /// `bus`, named `name` in logs (`socketcan can0`).
    pub fn new(bus: B, name: impl Into<String>) -> Self {
        BusEdge {
            bus,
            name: name.into(),
            errors: RateLimited::new(),
        }
    }
}

impl<B: CanBus> FrameEdge for BusEdge<B> {
    async fn recv(&mut self) -> Result<Option<Vec<CanRecord>>, Error> {
        let Some(first) = self.bus.recv().await? else {
            return Ok(None);
        };
        let mut records = vec![first];
        // What is ready goes to the worker together.
        while records.len() < RECV_BATCH {
            match self.bus.recv().now_or_never() {
                Some(Ok(Some(r))) => records.push(r),
                _ => break,
            }
        }
        Ok(Some(records))
    }

    async fn send(&mut self, records: &[CanRecord]) -> LinkSend {
        let mut report = LinkSend::default();
        for r in records {
            match self.bus.send(r).await {
                Ok(()) => report.encoded += 1,
                Err(e) => {
                    report.send_errors += 1;
                    if let Some(n) = self.errors.note() {
                        warn!(bus = %self.name, error = %e, failures = n,
                            "frames for the dongle could not be sent");
                    }
                }
            }
        }
        if let Err(e) = self.bus.flush().await {
            debug!(bus = %self.name, error = %e, "flushing");
        }
        report
    }

    fn malformed(&self) -> u64 {
        self.bus.stats().malformed
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Starts (again) the dongle's worker and poller with the link to hand to the worker; returns
/// the worker's frame queue and task.
pub type StartDongle =
    dyn Fn(DongleOut) -> anyhow::Result<(FrameQueueTx, tokio::task::JoinHandle<()>)> + Send + Sync;

/// The dongle as the edge sees it: its worker's queue and the frames the worker hands back.
struct Current {
    frames: FrameQueueTx,
    out: mpsc::Receiver<Outgoing>,
}

/// Runs `edge` for the dongle `serial` until `stop`; returns the workers to wait for.
///
/// At stop the edge stops receiving and drops the worker's queue (the worker drains it into
/// the outbox and flushes), but keeps sending the frames the worker still hands it until the
/// worker is done.
pub async fn run<E: FrameEdge>(
    mut edge: E,
    serial: String,
    metrics: DongleMetrics,
    start: Box<StartDongle>,
    mut stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut workers = Vec::new();
    let restart = |workers: &mut Vec<tokio::task::JoinHandle<()>>| {
        let (tx, out) = mpsc::channel(OUT_QUEUE);
        let link = BusLink {
            tx,
            serial: serial.clone(),
            metrics: metrics.clone(),
        };
        match start(DongleOut::Bus(Box::new(link))) {
            Ok((frames, handle)) => {
                workers.push(handle);
                Some(Current { frames, out })
            }
            Err(e) => {
                warn!(%serial, error = %format!("{e:#}"), "cannot start a worker for this dongle");
                None
            }
        }
    };
    let mut current = restart(&mut workers);
    let mut seen_malformed = edge.malformed();
    let mut failures = 0u32;
    let mut recv_errors = RateLimited::new();
    let mut queue_warn = RateLimited::new();
    let mut ended = false;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = edge.recv(), if !ended => match r {
                Ok(Some(records)) if records.is_empty() => failures = 0,
                Ok(Some(records)) => {
                    failures = 0;
                    if current.is_none() {
                        current = restart(&mut workers);
                    }
                    let n = records.len() as u64;
                    let refused = match &current {
                        Some(c) => c.frames.push(records).err(),
                        None => Some(QueueRefused::Closed),
                    };
                    if let Some(why) = refused {
                        metrics.dropped(&serial, DropReason::QueueFull, n);
                        let closed = why == QueueRefused::Closed;
                        if let Some(total) = queue_warn.note() {
                            warn!(%serial, frames = n, datagrams = total, worker_stopped = closed,
                                "the dongle's queue is full or its worker stopped: frames dropped");
                        }
                        if closed {
                            // Its worker failed: the next frames start a new one.
                            current = None;
                        }
                    }
                }
                Ok(None) => {
                    warn!(%serial, edge = %edge.describe(), "the dongle's bus ended: no more frames from it");
                    ended = true;
                }
                Err(e) => {
                    failures += 1;
                    if let Some(n) = recv_errors.note() {
                        warn!(%serial, edge = %edge.describe(), error = %e, errors = n, "receiving from the dongle failed");
                    }
                    if failures > 1 {
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            },
            o = next_out(&mut current) => match o {
                Some(o) => {
                    let report = edge.send(&o.records).await;
                    let _ = o.done.send(report);
                }
                // The worker is gone; the next frames start a new one.
                None => current = None,
            },
        }
        let malformed = edge.malformed();
        metrics
            .malformed_datagrams
            .inc_by(malformed.saturating_sub(seen_malformed));
        seen_malformed = malformed;
    }
    // Stopping: the worker drains its queue; serve its sends until it is done.
    if let Some(Current { frames, mut out }) = current {
        drop(frames);
        while let Some(o) = out.recv().await {
            let report = edge.send(&o.records).await;
            let _ = o.done.send(report);
        }
    }
    workers
}

/// The next batch the current worker hands the edge; `None` when that worker is gone; never
/// while there is no worker.
async fn next_out(current: &mut Option<Current>) -> Option<Outgoing> {
    match current {
        Some(c) => c.out.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use can_io::frame::{CanFrame, CanId, DataFrame, Direction};
    use can_io::transport::virtual_bus::{OverflowPolicy, VirtualBus};

    use super::*;
    use crate::dongle::worker::{FrameQueue, frame_queue};

    const SERIAL: &str = "VEH-1";

    fn frame(i: u16) -> CanFrame {
        CanFrame::Data(DataFrame::new(CanId::standard(0x100).unwrap(), &i.to_be_bytes()).unwrap())
    }

    fn record(i: u16) -> CanRecord {
        CanRecord::new(0, Channel::from("can0"), Direction::Tx, frame(i))
    }

    fn numbers<'a>(frames: impl IntoIterator<Item = &'a CanFrame>) -> Vec<u16> {
        frames
            .into_iter()
            .map(|f| u16::from_be_bytes([f.data()[0], f.data()[1]]))
            .collect()
    }

    /// What the edge started in place of a worker: its queue's receiving end and its link.
    type Started = Arc<Mutex<Vec<(FrameQueue, DongleOut)>>>;

    /// A start function that hands the queue (of `max` frames) and the link to the test.
    fn starter(started: &Started, max: usize) -> Box<StartDongle> {
        let started = started.clone();
        Box::new(move |out| {
            let (tx, rx) = frame_queue(64, max);
            started.lock().unwrap().push((rx, out));
            Ok((tx, tokio::spawn(async {})))
        })
    }

    async fn take_started(started: &Started) -> (FrameQueue, DongleOut) {
        for _ in 0..500 {
            if let Some(s) = started.lock().unwrap().pop() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the edge did not start the dongle's worker");
    }

    /// An edge running through [`run`] for `SERIAL`, and what the test drives it with.
    struct Running {
        metrics: DongleMetrics,
        stop_tx: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
        queue: FrameQueue,
        out: DongleOut,
    }

    /// Runs `edge` with a worker queue of `max` frames, once it started the worker.
    async fn start<E: FrameEdge + Send + 'static>(edge: E, max: usize) -> Running {
        let metrics = DongleMetrics::default();
        let started = Started::default();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            edge,
            SERIAL.into(),
            metrics.clone(),
            starter(&started, max),
            stop,
        ));
        let (queue, out) = take_started(&started).await;
        Running {
            metrics,
            stop_tx,
            task,
            queue,
            out,
        }
    }

    /// Takes frames from the queue until `n` arrived.
    async fn queued(queue: &mut FrameQueue, n: usize) -> Vec<CanRecord> {
        let mut got = Vec::new();
        while got.len() < n {
            let batches = tokio::time::timeout(Duration::from_secs(5), queue.next())
                .await
                .expect("frames in time")
                .expect("queue open");
            got.extend(batches.into_iter().flatten());
        }
        got
    }

    fn dropped(metrics: &DongleMetrics, reason: DropReason) -> u64 {
        metrics
            .totals(SERIAL)
            .dropped
            .iter()
            .find(|(r, _)| *r == reason.as_str())
            .map_or(0, |(_, n)| *n)
    }

    /// The SocketCAN path (`BusEdge` over a `CanBus` that sends frame by frame) on a virtual
    /// bus: the vehicle's frames reach the worker's queue in order, a full queue drops and
    /// counts, the worker's frames reach the bus in order, also while the role stops.
    #[tokio::test]
    async fn a_bus_edge_relays_both_ways_in_order_and_counts_a_full_queue() {
        let bus = VirtualBus::new();
        let mut car = bus.port("car", 4096, OverflowPolicy::Backpressure);
        let edge = BusEdge::new(
            bus.port("agent", 4096, OverflowPolicy::Backpressure),
            "virtual",
        );
        let Running {
            metrics,
            stop_tx,
            task,
            mut queue,
            out,
        } = start(edge, 256).await;

        for i in 0..100 {
            car.send(&record(i)).await.unwrap();
        }
        let got = queued(&mut queue, 100).await;
        assert_eq!(
            numbers(got.iter().map(|r| &r.frame)),
            (0..100).collect::<Vec<_>>()
        );

        // 1000 frames while the worker takes none: the queue holds 256, the rest is counted.
        for i in 0..1000 {
            car.send(&record(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let kept = queue
            .next()
            .now_or_never()
            .flatten()
            .map_or(0, |b| b.iter().map(Vec::len).sum::<usize>()) as u64;
        let shed = dropped(&metrics, DropReason::QueueFull);
        assert!(kept <= 256 && shed >= 1000 - 256, "{kept} {shed}");
        assert_eq!(kept + shed, 1000);

        let sent = out.send((0..50).map(record).collect()).await;
        assert_eq!((sent.encoded, sent.send_errors), (50, 0));
        let mut back = Vec::new();
        while let Some(r) = car.try_recv() {
            back.push(r.frame);
        }
        assert_eq!(numbers(&back), (0..50).collect::<Vec<_>>());

        // Stopping: the edge keeps sending for the worker until the worker lets go.
        stop_tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        let sent = out.send(vec![record(7)]).await;
        assert_eq!(sent.encoded, 1);
        assert_eq!(numbers([&car.recv().await.unwrap().unwrap().frame]), [7]);
        drop(out);
        let workers = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(workers.len(), 1);
        assert!(
            queue.next().await.is_none(),
            "the queue was closed at the stop"
        );
        assert_eq!(dropped(&metrics, DropReason::NotSent), 0);
    }

    /// cannelloni through [`run`]: frames for the dongle before it was heard are counted
    /// `not_sent`; datagrams that do not decode are counted; frames go back, in order, as
    /// datagrams to the address last heard from.
    #[tokio::test]
    async fn a_cannelloni_edge_answers_the_last_peer_and_counts_what_it_drops() {
        let edge = CannelloniEdge::bind("127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap();
        let agent = edge.local_addr().unwrap();
        let dongle = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let Running {
            metrics,
            stop_tx: _stop_tx,
            mut queue,
            out,
            ..
        } = start(edge, 4096).await;

        let early = out.send(vec![record(1), record(2)]).await;
        assert_eq!((early.encoded, early.send_errors), (0, 2));
        assert_eq!(dropped(&metrics, DropReason::NotSent), 2);

        dongle.send_to(b"not cannelloni", agent).await.unwrap();
        let frames: Vec<CanFrame> = (0..3).map(frame).collect();
        let d = cannelloni::encode_datagram(0, &frames).unwrap();
        dongle.send_to(&d, agent).await.unwrap();
        let got = queued(&mut queue, 3).await;
        assert_eq!(numbers(got.iter().map(|r| &r.frame)), [0, 1, 2]);
        assert!(got.iter().all(|r| &*r.channel == CANNELLONI_CHANNEL));
        assert_eq!(metrics.malformed_datagrams.get(), 1);

        // 300 frames: more than one datagram (at most 1472 bytes each), in order.
        let sent = out.send((0..300).map(record).collect()).await;
        assert_eq!((sent.encoded, sent.send_errors), (300, 0));
        let mut back = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut datagrams = 0;
        while back.len() < 300 {
            let n = tokio::time::timeout(Duration::from_secs(5), dongle.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let d = cannelloni::decode_datagram(&buf[..n]).unwrap();
            assert!(n <= cannelloni::MAX_DATAGRAM);
            assert_eq!(d.seq, datagrams);
            datagrams += 1;
            back.extend(d.frames);
        }
        assert!(datagrams > 1);
        assert_eq!(numbers(&back), (0..300).collect::<Vec<_>>());
        assert_eq!(dropped(&metrics, DropReason::NotSent), 2);
    }

    /// A REMP dongle's frames in datagrams the socket refuses are counted `not_sent`, frame by
    /// frame, and not as sent; once the socket takes them again they count as sent.
    #[tokio::test]
    async fn frames_in_remp_datagrams_the_socket_refuses_are_counted_not_sent() {
        let agent = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        // An IPv4 socket cannot send to an IPv6 address: every send_to fails.
        let link = Arc::new(DongleLink::new(SERIAL, agent, "[::1]:9".parse().unwrap()).unwrap());
        let metrics = DongleMetrics::default();
        let out = DongleOut::Remp(link.clone(), Box::new(metrics.clone()));
        // 300 frames: several datagrams, all refused.
        let sent = out.send((0..300).map(record).collect()).await;
        assert_eq!(
            sent,
            LinkSend {
                encoded: 0,
                invalid: 0,
                send_errors: 300
            }
        );
        assert_eq!(dropped(&metrics, DropReason::NotSent), 300);

        let dongle = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        link.set_peer(dongle.local_addr().unwrap());
        let sent = out.send((0..300).map(record).collect()).await;
        assert_eq!((sent.encoded, sent.send_errors), (300, 0));
        assert_eq!(dropped(&metrics, DropReason::NotSent), 300);
        let mut buf = vec![0u8; 2048];
        let mut frames = 0;
        let mut datagrams = 0;
        while frames < 300 {
            let n = tokio::time::timeout(Duration::from_secs(5), dongle.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if let can_io::wire::remp::RempBody::Frames(f) =
                can_io::wire::remp::decode(&buf[..n]).unwrap().body
            {
                frames += f.len();
                datagrams += 1;
            }
        }
        assert_eq!(frames, 300);
        assert!(datagrams > 1, "the frames filled more than one datagram");
    }

    /// With `dongle.peer`, frames go there, whoever was heard from.
    #[tokio::test]
    async fn a_configured_peer_gets_the_frames() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut edge = CannelloniEdge::bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(peer.local_addr().unwrap()),
        )
        .await
        .unwrap();
        let agent = edge.local_addr().unwrap();
        // Before anything was heard.
        assert_eq!(edge.send(&[record(1)]).await.encoded, 1);
        let d = cannelloni::encode_datagram(0, &[frame(9)]).unwrap();
        other.send_to(&d, agent).await.unwrap();
        let got = edge.recv().await.unwrap().unwrap();
        assert_eq!(numbers(got.iter().map(|r| &r.frame)), [9]);
        assert_eq!(edge.send(&[record(2)]).await.encoded, 1);
        let mut buf = vec![0u8; 2048];
        for want in [1, 2] {
            let n = peer.recv(&mut buf).await.unwrap();
            let d = cannelloni::decode_datagram(&buf[..n]).unwrap();
            assert_eq!(numbers(&d.frames), [want]);
        }
        assert!(other.try_recv(&mut buf).is_err(), "nothing to the sender");
    }
}
