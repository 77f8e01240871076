//! One dongle: its frames from the edge (REMP on UDP, a SocketCAN interface, a cannelloni peer)
//! into the outbox of its group, the `/ws/data` connection that carries them to the server and
//! brings the other side's frames back, and those frames to the dongle through its
//! [`DongleOut`].
//!
//! The decisions are `relay_core::uplink`'s: a [`StreamOutbox`] per (dongle, group, side) in
//! the role's one store (seqs, cumulative ack, the cap, drops, renumbering, the inbound cursor)
//! and an [`UplinkSession`] (when to connect, reconcile, send within the window, mark acked,
//! drop on a refusal, back off). This worker is the I/O around them: the WebSocket and the
//! data-plane messages (`docs/protocols/data-plane.md`, mapped onto the session as
//! `docs/protocols/uplink.md` says), frames to the dongle, the fail-over across
//! `server_url` ([`Failover`]) and the metrics.
//!
//! Order of events: the [`poller`](super::poller) publishes the assignment; with a group the
//! worker opens that stream's outbox and its session connects; `hello.resume.rx_seq` is the
//! stream's inbound cursor; `welcome.tx_acked` is reconciled with the outbox and sending
//! resumes from what the server holds. Frames read while there is no (active) group are
//! dropped and counted; while the server is unreachable they wait in the outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use can_io::CanRecord;
use can_io::frame::Channel;
use futures::{FutureExt, SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_core::engine::{DeliverySource, GroupMode, Side};
use relay_core::log::Item;
use relay_core::protocol::{
    self, Ack, DeliveryMessage, Encoding, ErrorCode, FrameBatch, GapNotice, Hello, Message,
    ResumeCursor, StoredFrameEncoder, Welcome, decode_stored_frame, encode_delivery,
};
use relay_core::uplink::{
    self as uplink, FullJitter, NewRecord, OutboxRecord, OutboxStoreHandle, Reconciled, Refusal,
    SentBatch, SessionAction, SessionConfig, StreamConfig, StreamOutbox, UplinkSession,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tracing::{debug, info, warn};

use crate::servers::Failover;

use super::assignments::{Assignments, SavedAssignment};
use super::config::DongleRole;
use super::edge::DongleOut;
use super::metrics::{DongleMetrics, DropReason, SerialMetrics};
use super::poller::PollState;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = futures::stream::SplitSink<Ws, WsMessage>;
type WsStream = futures::stream::SplitStream<Ws>;

/// How long closing a connection waits for the server's answering `Close`.
const CLOSE_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// How long a handshake or a graceful flush at shutdown may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Drop log lines per dongle and reason at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);
/// Records read per store call when the stored frames are checked at open.
const CHECK_PAGE: usize = 4096;
/// Server messages already received that are handled in one go.
const WS_BURST: usize = 64;
/// How long the inbound cursor of handled frames may wait before it is stored and acknowledged
/// (one store commit and one `ack` for every burst in that time instead of one per burst).
/// Frames are sent to the dongle at once; only the cursor waits.
const RX_FLUSH_EVERY: Duration = Duration::from_millis(20);

/// A queue of a dongle's frames from the UDP task to its worker, bounded in frames (`max`)
/// and in datagrams (`datagrams`).
pub fn frame_queue(datagrams: usize, max: usize) -> (FrameQueueTx, FrameQueue) {
    let (tx, rx) = mpsc::channel(datagrams);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        FrameQueueTx {
            tx,
            queued: Arc::clone(&queued),
            max,
        },
        FrameQueue { rx, queued },
    )
}

/// The UDP task's end of a [`frame_queue`].
#[derive(Debug)]
pub struct FrameQueueTx {
    tx: mpsc::Sender<Vec<CanRecord>>,
    queued: Arc<AtomicUsize>,
    max: usize,
}

/// Why [`FrameQueueTx::push`] refused a datagram's frames (they are the caller's to count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefused {
    /// The queue holds as many frames or datagrams as it may.
    Full,
    /// The worker stopped.
    Closed,
}

impl FrameQueueTx {
    /// Queues one datagram's records, or refuses all of them.
    pub fn push(&self, records: Vec<CanRecord>) -> Result<(), QueueRefused> {
        let n = records.len();
        if self.tx.is_closed() {
            return Err(QueueRefused::Closed);
        }
        if self.queued.load(Ordering::Acquire) + n > self.max {
            return Err(QueueRefused::Full);
        }
        self.queued.fetch_add(n, Ordering::AcqRel);
        self.tx.try_send(records).map_err(|e| {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => QueueRefused::Full,
                mpsc::error::TrySendError::Closed(_) => QueueRefused::Closed,
            }
        })
    }
}

/// The worker's end of a [`frame_queue`].
#[derive(Debug)]
pub struct FrameQueue {
    rx: mpsc::Receiver<Vec<CanRecord>>,
    queued: Arc<AtomicUsize>,
}

impl FrameQueue {
    /// Waits for frames, then takes everything queued (so the outbox cap applies to all of it
    /// at once, in one append). `None`: the UDP side is gone.
    pub(crate) async fn next(&mut self) -> Option<Vec<Vec<CanRecord>>> {
        let mut batches = Vec::new();
        let all = self.rx.max_capacity();
        if self.rx.recv_many(&mut batches, all).await == 0 {
            return None;
        }
        Some(self.taken(batches))
    }

    /// Closes the queue and takes what is left.
    fn close(&mut self) -> Vec<Vec<CanRecord>> {
        self.rx.close();
        let mut batches = Vec::new();
        while let Ok(b) = self.rx.try_recv() {
            batches.push(b);
        }
        self.taken(batches)
    }

    fn taken(&self, batches: Vec<Vec<CanRecord>>) -> Vec<Vec<CanRecord>> {
        let n = batches.iter().map(Vec::len).sum();
        self.queued.fetch_sub(n, Ordering::AcqRel);
        batches
    }
}

/// Everything a worker shares with the UDP task and the process.
#[derive(Debug, Clone)]
pub struct WorkerCtx {
    /// Settings.
    pub cfg: Arc<DongleRole>,
    /// The role's current server.
    pub servers: Arc<Failover>,
    /// The outbox store of every dongle stream (`<data_dir>/dongle-agent.sqlite`).
    pub store: OutboxStoreHandle,
    /// The last assignment of every dongle.
    pub assignments: Arc<Assignments>,
    /// Counters.
    pub metrics: DongleMetrics,
    /// Process stop flag.
    pub stop: watch::Receiver<bool>,
}

/// The outbox key of a dongle's stream in one side of one group.
pub fn stream_key(serial: &str, group_id: &str, side: Side) -> String {
    format!("dongle:{serial}:{group_id}:{side}")
}

/// The session settings of the role.
pub fn session_config(cfg: &DongleRole) -> SessionConfig {
    SessionConfig {
        window: cfg.send_window_frames,
        batch_max: cfg.batch_max_frames,
        // Full jitter from `reconnect_min` (also the floor: a server that keeps refusing gets
        // no reconnect storm) up to `reconnect_max`.
        backoff: FullJitter::new(cfg.reconnect_min, cfg.reconnect_max)
            .with_floor(cfg.reconnect_min),
        ..SessionConfig::default()
    }
}

/// The stream of the dongle's current group: its outbox and the session that drains it.
struct Stream {
    group: String,
    side: Side,
    /// Writes the group's stored frames.
    encoder: StoredFrameEncoder,
    /// The channel of the last inbound frame.
    channel: Channel,
    outbox: StreamOutbox,
    session: UplinkSession<StdRng>,
    /// Highest inbound seq handled (delivered to the dongle or reported as a gap) whose cursor
    /// is not yet stored and acknowledged ([`Worker::flush_rx`]).
    rx_due: Option<u64>,
}

/// A connected session.
struct Conn {
    sink: WsSink,
    stream: WsStream,
    encoding: Encoding,
    mode: GroupMode,
}

/// Rate-limited drop logging.
#[derive(Default)]
struct DropLog {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl DropLog {
    fn note(&mut self, serial: &str, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let e = self
            .last
            .entry(reason.as_str())
            .or_insert((now - DROP_LOG_EVERY, 0));
        e.1 += n;
        if now.duration_since(e.0) >= DROP_LOG_EVERY {
            warn!(%serial, reason = reason.as_str(), frames = e.1, "frames dropped");
            *e = (now, 0);
        }
    }
}

/// The dongle's worker.
pub struct Worker {
    serial: String,
    ctx: WorkerCtx,
    frames: FrameQueue,
    /// To the dongle (a REMP link is shared with a diagnostics tap).
    link: DongleOut,
    poll: watch::Receiver<PollState>,
    repoll: Arc<Notify>,
    saved: Option<SavedAssignment>,
    /// Group, side and whether frames are relayed (`None`: no group).
    group: Option<(String, Side, bool)>,
    stream: Option<Stream>,
    conn: Option<Conn>,
    /// Index in `server_url` of the server of the last attempt.
    server: usize,
    started: Instant,
    drops: DropLog,
    /// This dongle's series of the busy counters.
    counters: SerialMetrics,
    /// When the due inbound cursor is stored and acknowledged ([`RX_FLUSH_EVERY`]); armed
    /// while a cursor is due.
    rx_flush: std::pin::Pin<Box<tokio::time::Sleep>>,
    rx_flush_armed: bool,
}

/// The server answered the handshake with a refusal: the server works, so the next attempt
/// stays there (unlike a lost connection, which moves on to the next server).
#[derive(Debug, thiserror::Error)]
#[error("refused: {code:?}: {message}")]
struct Refused {
    code: ErrorCode,
    message: String,
}

impl Worker {
    /// A worker for `serial`; `saved` is the assignment remembered from the last run.
    pub fn new(
        serial: String,
        ctx: WorkerCtx,
        frames: FrameQueue,
        link: DongleOut,
        poll: watch::Receiver<PollState>,
        repoll: Arc<Notify>,
        saved: Option<SavedAssignment>,
    ) -> anyhow::Result<Self> {
        let server = ctx.servers.current().0;
        let counters = ctx.metrics.of_serial(&serial);
        Ok(Worker {
            serial,
            ctx,
            frames,
            link,
            poll,
            repoll,
            saved,
            group: None,
            stream: None,
            conn: None,
            server,
            started: Instant::now(),
            drops: DropLog::default(),
            counters,
            rx_flush: Box::pin(tokio::time::sleep(Duration::ZERO)),
            rx_flush_armed: false,
        })
    }

    /// Run until the process stops and the frame channel is drained.
    pub async fn run(mut self) {
        if let Err(e) = self.run_inner().await {
            warn!(serial = %self.serial, error = %format!("{e:#}"), "dongle worker failed");
        }
        DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 0);
    }

    /// Milliseconds on the worker's monotonic clock (the session's `now_ms`).
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run_inner(&mut self) -> anyhow::Result<()> {
        if let Some(group) = self.saved.take().and_then(|s| s.group()) {
            // Until the server says otherwise, keep frames for the group it last named.
            self.set_group(Some((group.0, group.1, true))).await?;
        }
        let mut stop = self.ctx.stop.clone();
        let mut poll_open = true;
        loop {
            if *stop.borrow() {
                return self.shutdown().await;
            }
            self.drive().await?;
            self.publish();
            let wake = self
                .stream
                .as_ref()
                .and_then(|s| s.session.poll_timeout())
                .map(|at| self.started + Duration::from_millis(at));
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() {
                        return self.shutdown().await;
                    }
                }
                batches = self.frames.next() => {
                    let Some(batches) = batches else {
                        // The UDP side is gone: the process is stopping.
                        return self.shutdown().await;
                    };
                    self.on_frames(batches).await?;
                }
                r = self.poll.changed(), if poll_open => {
                    if r.is_ok() {
                        let state = self.poll.borrow_and_update().clone();
                        self.on_poll(state).await?;
                    } else {
                        poll_open = false;
                    }
                }
                () = sleep_until(wake) => {}
                () = &mut self.rx_flush, if self.rx_flush_armed => {
                    self.rx_flush_armed = false;
                    self.flush_rx().await?;
                }
                m = next_msg(&mut self.conn) => {
                    self.on_ws_burst(m).await?;
                    self.arm_rx_flush();
                }
            }
        }
    }

    fn publish(&self) {
        let (pending, unsettled) = self
            .stream
            .as_ref()
            .map_or((0, 0), |s| (s.outbox.pending(), s.outbox.unsettled()));
        let c = &self.counters;
        c.outbox_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        c.outbox_unsettled
            .set(i64::try_from(unsettled).unwrap_or(i64::MAX));
        c.relaying.set(i64::from(self.relaying()));
    }

    /// Does every action the session asks for. Store errors end the worker (the next datagram
    /// of the dongle starts a new one, which opens the stream again).
    async fn drive(&mut self) -> anyhow::Result<()> {
        loop {
            let now = self.now();
            let Some(action) = self
                .stream
                .as_mut()
                .and_then(|s| s.session.poll_action(now))
            else {
                return Ok(());
            };
            match action {
                SessionAction::Connect => self.connect().await?,
                SessionAction::Reconcile { remote_acked } => self.reconcile(remote_acked).await?,
                SessionAction::Send { after, max } => self.send_batch(after, max).await?,
                SessionAction::MarkUplinked { up_to } => {
                    if let Some(s) = self.stream.as_mut() {
                        let n = s.outbox.ack(up_to).await?;
                        self.counters.frames_acked.inc_by(n);
                    }
                }
                SessionAction::DropPending { reason } => {
                    let label = match reason {
                        uplink::DropReason::Abandoned => DropReason::GroupChanged,
                        uplink::DropReason::Overflow => DropReason::OutboxFull,
                        uplink::DropReason::Refused => DropReason::GroupInactive,
                    };
                    self.drop_pending(reason, label).await?;
                }
                SessionAction::Disconnect => {
                    self.flush_rx().await?;
                    if let Some(mut c) = self.conn.take() {
                        let _ = c.sink.send(WsMessage::Close(None)).await;
                    }
                }
            }
        }
    }

    /// Drops every pending frame of the stream (`reason` for the outbox, `label` for the
    /// metrics) and tells the session the new last seq.
    async fn drop_pending(
        &mut self,
        reason: uplink::DropReason,
        label: DropReason,
    ) -> anyhow::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let report = s.outbox.drop_pending(reason).await?;
        s.session.handle_records_available(s.outbox.last_seq());
        self.count_drop(label, report.dropped);
        self.count_drop(DropReason::OutboxFull, report.unsettled_lost);
        Ok(())
    }

    fn count_drop(&mut self, reason: DropReason, n: u64) {
        self.ctx.metrics.dropped(&self.serial, reason, n);
        self.drops.note(&self.serial, reason, n);
    }

    async fn set_group(&mut self, group: Option<(String, Side, bool)>) -> anyhow::Result<()> {
        let same_stream = match (&self.stream, &group) {
            (Some(s), Some((g, side, _))) => s.group == *g && s.side == *side,
            (None, None) => true,
            _ => false,
        };
        if !same_stream {
            self.flush_rx().await?;
            self.close_conn().await;
            if let Some(mut old) = self.stream.take() {
                let report = old
                    .outbox
                    .drop_pending(uplink::DropReason::Abandoned)
                    .await?;
                self.count_drop(DropReason::GroupChanged, report.dropped);
                self.count_drop(DropReason::OutboxFull, report.unsettled_lost);
            }
            if let Some((g, side, _)) = &group {
                self.stream = Some(self.open_stream(g, *side).await?);
                info!(serial = %self.serial, group = %g, %side, "dongle assigned to a group");
            } else {
                info!(serial = %self.serial, "dongle has no group");
            }
        }
        self.group = group;
        Ok(())
    }

    /// Opens the outbox of `(serial, group, side)` and a session for it. The stored frames are
    /// checked once: if one no longer decodes, the server would refuse every batch carrying
    /// it, so the frames held are dropped and counted (`invalid`).
    async fn open_stream(&mut self, group: &str, side: Side) -> anyhow::Result<Stream> {
        let key = stream_key(&self.serial, group, side);
        let config = StreamConfig {
            max_records: self.ctx.cfg.outbox_max_frames,
            ..StreamConfig::default()
        };
        let mut outbox = StreamOutbox::open(&self.ctx.store, &key, config)
            .await
            .with_context(|| format!("opening the outbox stream {key}"))?;
        let mut after = outbox.acked();
        let mut invalid = None;
        loop {
            let page = outbox.peek(after, CHECK_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            if let Some(bad) = page
                .iter()
                .find(|r| decode_stored_frame(&r.payload).is_err())
            {
                invalid = Some(bad.seq);
                break;
            }
        }
        if let Some(seq) = invalid {
            let report = outbox.drop_pending(uplink::DropReason::Abandoned).await?;
            warn!(serial = %self.serial, stream = %key, seq, dropped = report.dropped,
                "a stored frame does not decode: the frames held for this group are dropped");
            self.count_drop(DropReason::Invalid, report.dropped);
            self.count_drop(DropReason::OutboxFull, report.unsettled_lost);
        }
        let session = UplinkSession::new(
            session_config(&self.ctx.cfg),
            StdRng::from_os_rng(),
            outbox.acked(),
            outbox.last_seq(),
            self.now(),
        );
        Ok(Stream {
            group: group.to_owned(),
            side,
            encoder: StoredFrameEncoder::new(group),
            channel: Channel::from("can0"),
            outbox,
            session,
            rx_due: None,
        })
    }

    async fn on_poll(&mut self, state: PollState) -> anyhow::Result<()> {
        let PollState::Known { dongle_id, group } = state else {
            return Ok(());
        };
        let g = group
            .as_ref()
            .map(|a| (a.id.clone(), a.side, a.is_active()));
        let saved = SavedAssignment {
            dongle_id,
            group_id: g.as_ref().map(|(id, _, _)| id.clone()),
            side: g.as_ref().map(|(_, side, _)| *side),
        };
        self.ctx.assignments.save(&self.serial, saved).await?;
        let was_active = self.group.as_ref().is_some_and(|g| g.2);
        self.set_group(g).await?;
        let active = self.group.as_ref().is_some_and(|g| g.2);
        if was_active != active && self.conn.is_some() {
            // The poll saw a mode change: trust it until the data plane says more.
            self.set_mode(if active {
                GroupMode::Active
            } else {
                GroupMode::Inactive
            });
        }
        if was_active && !active && self.conn.is_none() {
            self.drop_pending(uplink::DropReason::Refused, DropReason::NoGroup)
                .await?;
        }
        Ok(())
    }

    /// The group's mode as the data plane or the poll reports it: no frames are sent while it
    /// is inactive.
    fn set_mode(&mut self, mode: GroupMode) {
        if let Some(c) = self.conn.as_mut() {
            if c.mode != mode {
                info!(serial = %self.serial, %mode, "group mode changed");
            }
            c.mode = mode;
        }
        if let Some(s) = self.stream.as_mut() {
            s.session.set_paused(mode == GroupMode::Inactive);
        }
    }

    fn relaying(&self) -> bool {
        match (&self.group, &self.conn) {
            (Some(_), Some(c)) => c.mode != GroupMode::Inactive,
            (Some((_, _, active)), None) => *active,
            (None, _) => false,
        }
    }

    async fn on_frames(&mut self, batches: Vec<Vec<CanRecord>>) -> anyhow::Result<()> {
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        self.counters.frames_in.inc_by(n);
        if !self.relaying() || self.stream.is_none() {
            self.count_drop(DropReason::NoGroup, n);
            return Ok(());
        }
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let records: Vec<NewRecord> = batches
            .iter()
            .flatten()
            .map(|r| NewRecord {
                ts_ms: r.ts_ns / 1_000_000,
                payload: s.encoder.encode(r).into(),
            })
            .collect();
        let queued = records.len() as u64;
        let report = s.outbox.append(records).await?;
        s.session.handle_records_available(s.outbox.last_seq());
        self.counters.frames_queued.inc_by(queued);
        // Dropped by the cap and never to reach the server; those that were sent are counted
        // once the server's ack or handshake tells whether it holds them.
        self.count_drop(DropReason::OutboxFull, report.dropped_pending);
        Ok(())
    }

    /// `SessionAction::Connect`: open `/ws/data` at the current server, `hello`, `welcome`.
    async fn connect(&mut self) -> anyhow::Result<()> {
        // `hello.resume.rx_seq` is the stored cursor: store what was handled first.
        self.flush_rx().await?;
        let now = self.now();
        match self.handshake().await {
            Ok((conn, welcome)) => {
                let Some(s) = self.stream.as_mut() else {
                    return Ok(());
                };
                info!(serial = %self.serial, server = %self.ctx.servers.current().1, group = %s.group,
                    tx_acked = welcome.tx_acked, rx_from = welcome.rx_from, mode = %welcome.mode,
                    encoding = welcome.encoding.as_str(), pending = s.outbox.pending(),
                    "data plane connected");
                if welcome.rx_from > s.outbox.rx_seq() {
                    warn!(serial = %self.serial, rx_from = welcome.rx_from, local = s.outbox.rx_seq(),
                        "the server resumes inbound delivery above this agent's cursor");
                }
                s.session.handle_connected(welcome.tx_acked, now);
                self.conn = Some(conn);
                self.set_mode(welcome.mode);
                DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 1);
            }
            Err(e) => {
                let lost = !e.is::<Refused>();
                if let Some(s) = self.stream.as_mut() {
                    s.session.handle_connect_failed(now);
                }
                self.ended(&format!("{e:#}"), lost);
            }
        }
        Ok(())
    }

    async fn handshake(&mut self) -> anyhow::Result<(Conn, Welcome)> {
        let Some(s) = self.stream.as_ref() else {
            bail!("no stream");
        };
        let (index, server) = self.ctx.servers.current();
        self.server = index;
        DongleMetrics::set(&self.ctx.metrics.server_index, &self.serial, index as u64);
        let url = server.ws("/ws/data");
        let ws = connect_ws(&url, &self.ctx.cfg.token, HANDSHAKE_TIMEOUT).await?;
        let (mut sink, mut stream) = ws.split();
        let hello = Message::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            group_id: s.group.clone(),
            side: s.side,
            resume: ResumeCursor {
                rx_seq: s.outbox.rx_seq(),
            },
            encodings: vec![Encoding::Msgpack, Encoding::Json],
        });
        let text = String::from_utf8(protocol::encode(&hello, Encoding::Json)?)
            .context("encoding hello")?;
        sink.send(WsMessage::text(text))
            .await
            .context("sending hello")?;
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.next())
            .await
            .context("no welcome in time")?
            .context("the server closed before welcome")?
            .context("reading welcome")?;
        let welcome = match first {
            WsMessage::Text(t) => protocol::decode(t.as_bytes(), Encoding::Json)?,
            WsMessage::Binary(b) => protocol::decode(&b, Encoding::Json)?,
            WsMessage::Close(c) => bail!("the server closed the connection: {c:?}"),
            other => bail!("unexpected first message {other:?}"),
        };
        match welcome {
            Message::Welcome(w) => Ok((
                Conn {
                    sink,
                    stream,
                    encoding: w.encoding,
                    mode: w.mode,
                },
                w,
            )),
            Message::Error(e) => {
                if matches!(e.code, ErrorCode::Unauthorized) {
                    self.repoll.notify_one();
                }
                if matches!(e.code, ErrorCode::CursorAhead) {
                    self.reset_cursor().await?;
                }
                Err(Refused {
                    code: e.code,
                    message: e.message,
                }
                .into())
            }
            other => bail!("expected welcome, got {}", other.type_name()),
        }
    }

    /// `SessionAction::Reconcile`: the outbox follows `welcome.tx_acked`; in an inactive group
    /// the held frames are dropped (the server would refuse them).
    async fn reconcile(&mut self, tx_acked: u64) -> anyhow::Result<()> {
        let now = self.now();
        let inactive = self
            .conn
            .as_ref()
            .is_some_and(|c| c.mode == GroupMode::Inactive);
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let r: Reconciled = s.outbox.reconcile(tx_acked).await?;
        if r.remote_ahead {
            warn!(serial = %self.serial, group = %s.group, server = tx_acked, local = r.last_seq,
                "the server holds seqs this agent never assigned (its state was lost): continuing above them");
        }
        if r.remote_behind {
            warn!(serial = %self.serial, server = tx_acked,
                "the server holds fewer frames than it acknowledged before");
        }
        s.session.handle_reconciled(&r, now);
        self.counters.frames_acked.inc_by(r.newly_acked);
        self.count_drop(DropReason::OutboxFull, r.lost_in_flight);
        if inactive {
            self.drop_pending(uplink::DropReason::Refused, DropReason::GroupInactive)
                .await?;
        }
        Ok(())
    }

    /// `SessionAction::Send`: the next batch from the outbox as one `frames` message.
    async fn send_batch(&mut self, after: u64, max: usize) -> anyhow::Result<()> {
        let now = self.now();
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let batch = s.outbox.next_batch(after, max).await?;
        let sent = match self.conn.as_mut() {
            Some(c) if !batch.is_empty() => match write_frames(c, s.outbox.key(), &batch).await {
                Ok(()) => Some(SentBatch {
                    first: batch.first().map_or(0, |r| r.seq),
                    last: batch.last().map_or(0, |r| r.seq),
                    count: batch.len() as u64,
                    bytes: batch.iter().map(|r| r.payload.len() as u64).sum(),
                }),
                Err(e) => {
                    s.session.handle_sent(None, now);
                    self.conn_lost(format!("sending frames: {e:#}"));
                    return Ok(());
                }
            },
            _ => None,
        };
        if let Some(b) = &sent {
            self.counters.frames_sent.inc_by(b.count);
        }
        s.session.handle_sent(sent, now);
        Ok(())
    }

    async fn reset_cursor(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stream.as_mut() {
            warn!(serial = %self.serial, rx_seq = s.outbox.rx_seq(),
                "the server never stored this agent's inbound cursor (cursor_ahead): resuming from its start");
            s.rx_due = None;
            s.outbox.set_rx(0).await?;
        }
        Ok(())
    }

    /// A connection attempt failed or a session ended (the session has scheduled the retry).
    /// `lost`: the server could not be reached or the connection broke — the next attempt goes
    /// to the next server of `server_url`; a refusal the server answered stays on it.
    fn ended(&mut self, reason: &str, lost: bool) {
        DongleMetrics::inc(&self.ctx.metrics.disconnects, &self.serial, 1);
        DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 0);
        let next = if lost {
            let (next, url) = self.ctx.servers.failed(self.server);
            if next != self.server {
                DongleMetrics::inc(&self.ctx.metrics.failovers, &self.serial, 1);
                info!(serial = %self.serial, next = %url, "moving to the next server");
            }
            next
        } else {
            self.server
        };
        let retry_in_ms = self
            .stream
            .as_ref()
            .and_then(|s| s.session.poll_timeout())
            .map_or(0, |at| at.saturating_sub(self.now()));
        warn!(serial = %self.serial, reason, next_server = next, retry_in_ms, "data plane session ended");
    }

    /// The connection broke: the session reconnects with backoff, at the next server.
    fn conn_lost(&mut self, reason: String) {
        let now = self.now();
        self.conn = None;
        if let Some(s) = self.stream.as_mut() {
            s.session.handle_disconnected(now);
        }
        self.ended(&reason, true);
    }

    /// The server refused something on the connection: the session closes it and reconnects
    /// with backoff, at the same server.
    fn refused(&mut self, refusal: Refusal, reason: &str) {
        let now = self.now();
        if let Some(s) = self.stream.as_mut() {
            s.session.handle_refused(refusal, now);
        }
        self.ended(reason, false);
    }

    /// Closes the connection of a stream the worker leaves, with the WebSocket closing
    /// handshake: the server answers our `Close` only after it has read what we sent before it
    /// (the last `ack` among it), while dropping the socket at once can reset the connection
    /// with that ack still unread — the server then keeps counting delivered frames as backlog.
    /// Messages arriving meanwhile are not handled (what they carry is sent again later).
    async fn close_conn(&mut self) {
        if let Some(mut c) = self.conn.take() {
            if c.sink.send(WsMessage::Close(None)).await.is_ok() {
                let answered = async {
                    while let Some(Ok(m)) = c.stream.next().await {
                        if matches!(m, WsMessage::Close(_)) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(CLOSE_ANSWER_WAIT, answered).await;
            }
            DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 0);
        }
    }

    /// A cursor is due: store and acknowledge it within [`RX_FLUSH_EVERY`] (at the latest).
    fn arm_rx_flush(&mut self) {
        let due = self.stream.as_ref().is_some_and(|s| s.rx_due.is_some());
        if due && !self.rx_flush_armed {
            self.rx_flush
                .as_mut()
                .reset(Instant::now() + RX_FLUSH_EVERY);
            self.rx_flush_armed = true;
        }
    }

    /// Handles `m` and the messages already received after it (at most [`WS_BURST`]). Their
    /// inbound cursor is stored and acknowledged later ([`arm_rx_flush`](Self::arm_rx_flush)),
    /// once for every burst within [`RX_FLUSH_EVERY`]: one store commit and one `ack` per
    /// interval instead of per `frames` message, so a busy inbound stream costs less than the
    /// server's delivery.
    async fn on_ws_burst(
        &mut self,
        m: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> anyhow::Result<()> {
        self.on_ws(m).await?;
        for _ in 1..WS_BURST {
            let Some(m) = next_msg(&mut self.conn).now_or_never() else {
                break;
            };
            self.on_ws(m).await?;
        }
        Ok(())
    }

    /// Handles one WebSocket message; inbound frames and gaps leave their cursor to
    /// [`flush_rx`](Self::flush_rx). Store errors end the worker; everything else is the
    /// connection's business.
    async fn on_ws(
        &mut self,
        m: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> anyhow::Result<()> {
        let Some(encoding) = self.conn.as_ref().map(|c| c.encoding) else {
            return Ok(());
        };
        let decoded = match m {
            None => Err("the server closed the connection".to_owned()),
            Some(Err(e)) => Err(format!("WebSocket error: {e}")),
            Some(Ok(WsMessage::Text(t))) => {
                protocol::decode(t.as_bytes(), encoding).map_err(|e| format!("{e:#}"))
            }
            Some(Ok(WsMessage::Binary(b))) => {
                protocol::decode(&b, encoding).map_err(|e| format!("{e:#}"))
            }
            Some(Ok(WsMessage::Close(c))) => {
                Err(format!("the server closed the connection: {c:?}"))
            }
            Some(Ok(_)) => return Ok(()),
        };
        let msg = match decoded {
            Ok(msg) => msg,
            Err(reason) => {
                self.conn_lost(reason);
                return Ok(());
            }
        };
        match msg {
            Message::Ack(Ack { up_to }) => {
                let now = self.now();
                let Some(s) = self.stream.as_mut() else {
                    return Ok(());
                };
                if let Err(e) = s.session.handle_ack(up_to, now) {
                    self.conn_lost(format!("{e}"));
                }
            }
            Message::Frames(batch) => self.on_inbound(batch).await?,
            Message::Gap(g) => self.on_gap(g).await?,
            Message::GroupState(s) => self.set_mode(s.mode),
            Message::Error(e) => {
                warn!(serial = %self.serial, code = ?e.code, message = %e.message, "data plane error");
                let reason = format!("refused: {:?}: {}", e.code, e.message);
                // What the code means for the session is relay-core's rule
                // (`Refusal::for_relay_error`): `group_inactive` drops the pending frames, every
                // other code resends from `tx_acked + 1` after the backoff, on the same server
                // (a server that keeps refusing gets no reconnect storm). Around it, the
                // agent's own side effects:
                match e.code {
                    ErrorCode::GroupInactive => {
                        self.set_mode(GroupMode::Inactive);
                        self.repoll.notify_one();
                    }
                    ErrorCode::CursorAhead => self.reset_cursor().await?,
                    ErrorCode::Unauthorized => self.repoll.notify_one(),
                    _ => {}
                }
                self.refused(Refusal::for_relay_error(e.code), &reason);
            }
            other => self.conn_lost(format!("unexpected {} from the server", other.type_name())),
        }
        Ok(())
    }

    async fn on_inbound(&mut self, batch: FrameBatch) -> anyhow::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let Some(last) = batch.last_seq() else {
            return Ok(());
        };
        let rx_seq = s.outbox.rx_seq();
        let mut dup = 0;
        let mut invalid = 0;
        let mut records = Vec::with_capacity(batch.frames.len());
        for (seq, f) in (batch.first_seq..).zip(&batch.frames) {
            if seq <= rx_seq {
                dup += 1;
                continue;
            }
            // `WireFrame::to_record`, with the channel's name shared by the frames naming it
            // (`can0` when absent) rather than allocated per frame.
            let name = f.channel.as_deref().unwrap_or("can0");
            if *s.channel != *name {
                s.channel = Channel::from(name);
            }
            match f.frame() {
                Ok(frame) => records.push(CanRecord::new(
                    f.ts,
                    s.channel.clone(),
                    f.direction.into(),
                    frame,
                )),
                Err(e) => {
                    invalid += 1;
                    debug!(serial = %self.serial, seq, error = %e, "inbound frame the dongle cannot carry");
                }
            }
        }
        let sent = self.link.send(records).await;
        let delivered = sent.encoded;
        invalid += sent.invalid;
        self.counters.frames_delivered.inc_by(delivered);
        self.counters.frames_duplicate.inc_by(dup);
        self.ctx
            .metrics
            .dropped(&self.serial, DropReason::Invalid, invalid);
        self.advance_rx(last);
        Ok(())
    }

    async fn on_gap(&mut self, g: GapNotice) -> anyhow::Result<()> {
        warn!(serial = %self.serial, from = g.from, to = g.to, count = g.count, reason = ?g.reason,
            "the server reports inbound frames that will never arrive");
        DongleMetrics::inc(&self.ctx.metrics.gap_frames, &self.serial, g.count);
        self.advance_rx(g.to);
        Ok(())
    }

    /// Inbound seqs up to `seq` are handled: their cursor is due ([`flush_rx`](Self::flush_rx)).
    fn advance_rx(&mut self, seq: u64) {
        if let Some(s) = self.stream.as_mut() {
            s.rx_due = Some(s.rx_due.map_or(seq, |due| due.max(seq)));
        }
    }

    /// Stores the due inbound cursor (if it is above the stored one), then acknowledges it to
    /// the server.
    async fn flush_rx(&mut self) -> anyhow::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let Some(seq) = s.rx_due.take() else {
            return Ok(());
        };
        if seq > s.outbox.rx_seq() {
            s.outbox.set_rx(seq).await?;
        }
        let up_to = s.outbox.rx_seq();
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        let sent = match protocol::encode(&Message::Ack(Ack { up_to }), c.encoding) {
            Ok(bytes) => write_ws(c, bytes).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = sent {
            self.conn_lost(format!("sending an ack: {e:#}"));
        }
        Ok(())
    }

    /// Stop: take what UDP already delivered into the outbox, send what the window allows,
    /// wait briefly for acks, close.
    async fn shutdown(&mut self) -> anyhow::Result<()> {
        let rest = self.frames.close();
        if !rest.is_empty() {
            self.on_frames(rest).await?;
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while self.conn.is_some() && self.stream.as_ref().is_some_and(|s| s.outbox.pending() > 0) {
            if let Err(e) = self.drive().await {
                debug!(error = %format!("{e:#}"), "flushing at shutdown");
                break;
            }
            if self.conn.is_none() {
                break;
            }
            let m = tokio::select! {
                m = next_msg(&mut self.conn) => m,
                () = tokio::time::sleep_until(deadline) => break,
            };
            self.on_ws_burst(m).await?;
        }
        self.flush_rx().await?;
        self.close_conn().await;
        self.publish();
        self.ctx
            .metrics
            .totals(&self.serial)
            .log(&self.serial, "dongle worker stopped");
        Ok(())
    }
}

/// Sends `batch` (dense seqs, as the outbox hands them out) as one `frames` message. The stored
/// payloads are the frames' MessagePack: a MessagePack connection gets them spliced as they
/// are, a JSON one re-encoded (`relay_core::protocol::encode_delivery`).
async fn write_frames(c: &mut Conn, stream: &str, batch: &[OutboxRecord]) -> anyhow::Result<()> {
    let items: Vec<Item> = batch.iter().map(Item::from).collect();
    let mut messages = encode_delivery(stream, &items, c.encoding, DeliverySource::Live)?;
    let bytes = match (messages.pop(), messages.is_empty()) {
        (Some(DeliveryMessage::Frames(bytes)), true) => bytes,
        _ => bail!("stored frames of {stream} do not decode"),
    };
    // Flush per batch: batching already happened upstream, latency matters.
    write_ws(c, bytes).await
}

/// Sends one encoded message and flushes it.
async fn write_ws(c: &mut Conn, bytes: Vec<u8>) -> anyhow::Result<()> {
    let ws = match c.encoding {
        Encoding::Json => WsMessage::text(String::from_utf8(bytes).context("JSON is UTF-8")?),
        Encoding::Msgpack => WsMessage::binary(bytes),
    };
    c.sink.send(ws).await.context("sending")
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_msg(
    conn: &mut Option<Conn>,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match conn {
        Some(c) => c.stream.next().await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Open the server's `/ws/data` (`url`) with the agent token, within `timeout`.
pub(crate) async fn connect_ws(
    url: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let mut req = url
        .into_client_request()
        .context("building the WebSocket request")?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?,
    );
    // `true`: no Nagle. Frame batches and acks are small and latency-bound; with Nagle a
    // batch waits for the previous segment's (delayed) ACK — tens of ms per hop.
    let connect = tokio_tungstenite::connect_async_with_config(
        req,
        Some(tether_runtime::ws::ws_client_config()),
        true,
    );
    let (ws, _) = tokio::time::timeout(timeout, connect)
        .await
        .context("connecting timed out")?
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use can_io::CanRecord;
    use can_io::frame::{CanFrame, CanId, DataFrame, Direction};

    use super::{QueueRefused, frame_queue};

    fn records(from: u32, n: u32) -> Vec<CanRecord> {
        (from..from + n)
            .map(|i| {
                let frame =
                    DataFrame::new(CanId::standard(0x123).unwrap(), &i.to_le_bytes()).unwrap();
                CanRecord::new(
                    u64::from(i),
                    Arc::from("can0"),
                    Direction::Rx,
                    CanFrame::Data(frame),
                )
            })
            .collect()
    }

    fn numbers(batches: &[Vec<CanRecord>]) -> Vec<u64> {
        batches.iter().flatten().map(|r| r.ts_ns).collect()
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_frames_and_the_worker_takes_all_of_it_in_order() {
        let (tx, mut rx) = frame_queue(100, 120);
        // 50 + 50 fit, the next 50 would make 150 > 120: refused whole (the caller counts
        // them), and so is every datagram until the worker takes the queue.
        tx.push(records(0, 50)).unwrap();
        tx.push(records(50, 50)).unwrap();
        assert_eq!(tx.push(records(100, 50)), Err(QueueRefused::Full));
        tx.push(records(150, 20)).unwrap();
        assert_eq!(tx.push(records(170, 1)), Err(QueueRefused::Full));
        let taken = rx.next().await.unwrap();
        let mut want: Vec<u64> = (0..100).collect();
        want.extend(150..170);
        assert_eq!(numbers(&taken), want, "everything queued, in order");
        // Taken frames free the room.
        tx.push(records(171, 120)).unwrap();
        assert_eq!(tx.push(records(291, 1)), Err(QueueRefused::Full));
        assert_eq!(
            numbers(&rx.next().await.unwrap()),
            (171..291).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn the_queue_is_also_bounded_in_datagrams_and_reports_a_stopped_worker() {
        let (tx, mut rx) = frame_queue(2, 1000);
        tx.push(records(0, 1)).unwrap();
        tx.push(records(1, 1)).unwrap();
        assert_eq!(tx.push(records(2, 1)), Err(QueueRefused::Full));
        assert_eq!(numbers(&rx.close()), vec![0, 1]);
        assert_eq!(tx.push(records(3, 1)), Err(QueueRefused::Closed));
        drop(tx);
        assert!(rx.next().await.is_none());
    }
}
