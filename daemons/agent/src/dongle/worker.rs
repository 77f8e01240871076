//! One dongle: its frames from UDP into the outbox of its group, the `/ws/data` session that
//! drains the outbox and brings the other side's frames back, and REMP datagrams to the dongle.
//!
//! Order of events: the [`poller`](super::poller) publishes the assignment; with a group the
//! worker opens that stream's outbox and connects; `hello.resume.rx_seq` is the persisted
//! inbound cursor; after `welcome` the outbox is reconciled with `tx_acked` and unacknowledged
//! frames are sent again from `tx_acked + 1`. Frames read while there is no (active) group are
//! dropped and counted; while the server is unreachable they wait in the outbox.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use can_io::CanRecord;
use can_io::frame::Channel;
use can_io::wire::remp::RempSender;
use futures::{SinkExt, StreamExt};
use relay_core::engine::{GroupMode, Side};
use relay_core::protocol::{
    self, Ack, Encoding, ErrorCode, FrameBatch, GapNotice, Hello, Message, ResumeCursor, WireFrame,
};
use tether_retry::Backoff;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tracing::{debug, info, warn};

use crate::servers::{Failover, next_delay, reconnect_backoff};

use super::config::DongleRole;
use super::metrics::{DongleMetrics, DropReason};
use super::outbox::{SharedStore, StreamOutbox, with_store};
use super::poller::PollState;
use super::store::{SavedAssignment, StreamKey};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = futures::stream::SplitSink<Ws, WsMessage>;
type WsStream = futures::stream::SplitStream<Ws>;

/// How long a handshake or a graceful flush at shutdown may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Drop log lines per dongle and reason at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);

/// Everything a worker shares with the UDP task and the process.
#[derive(Debug, Clone)]
pub struct WorkerCtx {
    /// Settings.
    pub cfg: Arc<DongleRole>,
    /// The role's current server.
    pub servers: Arc<Failover>,
    /// State file.
    pub store: SharedStore,
    /// Counters.
    pub metrics: DongleMetrics,
    /// The UDP socket (for datagrams to the dongle).
    pub socket: Arc<UdpSocket>,
    /// Process stop flag.
    pub stop: watch::Receiver<bool>,
}

/// A connected session.
struct Conn {
    sink: WsSink,
    stream: WsStream,
    encoding: Encoding,
    /// Highest seq sent on this connection (or the resend base).
    sent_up_to: u64,
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
    frames: mpsc::Receiver<Vec<CanRecord>>,
    peer: Arc<Mutex<SocketAddr>>,
    poll: watch::Receiver<PollState>,
    repoll: Arc<Notify>,
    to_dongle: RempSender,
    dongle_id: Option<String>,
    /// Group, side and whether frames are relayed (`None`: no group).
    group: Option<(String, Side, bool)>,
    outbox: Option<StreamOutbox>,
    conn: Option<Conn>,
    backoff: Backoff,
    next_connect: Instant,
    /// Index in `server_url` of the server of the last attempt.
    server: usize,
    drops: DropLog,
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
        frames: mpsc::Receiver<Vec<CanRecord>>,
        peer: Arc<Mutex<SocketAddr>>,
        poll: watch::Receiver<PollState>,
        repoll: Arc<Notify>,
        saved: Option<SavedAssignment>,
    ) -> anyhow::Result<Self> {
        let boot_id = rand::random::<u64>();
        let to_dongle = RempSender::new(&serial, boot_id, 1000)?;
        let backoff = reconnect_backoff(ctx.cfg.reconnect_min, ctx.cfg.reconnect_max);
        let server = ctx.servers.current().0;
        let mut w = Worker {
            serial,
            ctx,
            frames,
            peer,
            poll,
            repoll,
            to_dongle,
            dongle_id: None,
            group: None,
            outbox: None,
            conn: None,
            backoff,
            next_connect: Instant::now(),
            server,
            drops: DropLog::default(),
        };
        if let Some(s) = saved {
            w.dongle_id = Some(s.dongle_id);
            if let Some((g, side)) = s.group
                && let Some(side) = parse_side(&side)
            {
                // Until the server says otherwise, keep frames for the group it last named.
                w.set_group(Some((g, side, true)))?;
            }
        }
        Ok(w)
    }

    /// Run until the process stops and the frame channel is drained.
    pub async fn run(mut self) {
        if let Err(e) = self.run_inner().await {
            warn!(serial = %self.serial, error = %format!("{e:#}"), "dongle worker failed");
        }
        DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 0);
    }

    async fn run_inner(&mut self) -> anyhow::Result<()> {
        let mut stop = self.ctx.stop.clone();
        let batch_max = self.ctx.cfg.batch_max_frames;
        let mut poll_open = true;
        loop {
            if *stop.borrow() {
                return self.shutdown().await;
            }
            let want_connect = self.conn.is_none() && self.group.is_some();
            let connect_at = self.next_connect;
            let mut buf = Vec::new();
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() {
                        return self.shutdown().await;
                    }
                }
                n = self.frames.recv_many(&mut buf, batch_max) => {
                    if n == 0 {
                        // The UDP side is gone: the process is stopping.
                        return self.shutdown().await;
                    }
                    self.on_frames(buf)?;
                }
                r = self.poll.changed(), if poll_open => {
                    if r.is_ok() {
                        let state = self.poll.borrow_and_update().clone();
                        self.on_poll(state)?;
                    } else {
                        poll_open = false;
                    }
                }
                () = tokio::time::sleep_until(connect_at), if want_connect => {
                    match self.connect().await {
                        Ok(()) => {}
                        Err(e) => {
                            let lost = !e.is::<Refused>();
                            self.fail(&format!("{e:#}"), lost);
                        }
                    }
                }
                m = next_msg(&mut self.conn) => {
                    match self.on_ws(m).await {
                        Ok(false) => {}
                        Ok(true) => self.end_conn(None).await,
                        Err(e) => self.end_conn(Some(format!("{e:#}"))).await,
                    }
                }
            }
            if let Err(e) = self.pump().await {
                self.end_conn(Some(format!("sending: {e:#}"))).await;
            }
            DongleMetrics::set(
                &self.ctx.metrics.relaying,
                &self.serial,
                u64::from(self.relaying()),
            );
        }
    }

    fn set_group(&mut self, group: Option<(String, Side, bool)>) -> anyhow::Result<()> {
        let same_stream = match (&self.group, &group) {
            (Some((g0, s0, _)), Some((g1, s1, _))) => g0 == g1 && s0 == s1,
            (None, None) => true,
            _ => false,
        };
        if !same_stream {
            if let Some(mut old) = self.outbox.take() {
                let n = old.drop_pending(DropReason::GroupChanged)?;
                self.drops.note(&self.serial, DropReason::GroupChanged, n);
            }
            self.conn = None;
            DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 0);
            if let Some((g, side, _)) = &group {
                let key = StreamKey {
                    serial: self.serial.clone(),
                    group_id: g.clone(),
                    side: side_str(*side).to_owned(),
                };
                self.outbox = Some(StreamOutbox::open(
                    self.ctx.store.clone(),
                    key,
                    self.ctx.cfg.outbox_max_frames,
                    self.ctx.metrics.clone(),
                )?);
                info!(serial = %self.serial, group = %g, side = side_str(*side), "dongle assigned to a group");
            } else {
                info!(serial = %self.serial, "dongle has no group");
            }
            self.next_connect = Instant::now();
            self.backoff.reset();
        }
        self.group = group;
        Ok(())
    }

    fn on_poll(&mut self, state: PollState) -> anyhow::Result<()> {
        let PollState::Known { dongle_id, group } = state else {
            return Ok(());
        };
        let g = group
            .as_ref()
            .and_then(|a| parse_side(&a.side).map(|side| (a.id.clone(), side, a.is_active())));
        let saved = SavedAssignment {
            dongle_id: dongle_id.clone(),
            group: g
                .as_ref()
                .map(|(id, side, _)| (id.clone(), side_str(*side).to_owned())),
        };
        let serial = self.serial.clone();
        with_store(&self.ctx.store, |s| {
            s.save_assignment(&serial, &saved, now_ms())
        })?;
        self.dongle_id = Some(dongle_id);
        let was_active = self.group.as_ref().is_some_and(|g| g.2);
        self.set_group(g)?;
        let active = self.group.as_ref().is_some_and(|g| g.2);
        if was_active != active
            && let Some(c) = self.conn.as_mut()
        {
            // The poll saw a mode change: trust it until the data plane says more.
            c.mode = if active {
                GroupMode::Active
            } else {
                GroupMode::Inactive
            };
        }
        if was_active && !active && self.conn.is_none() {
            self.drop_outbox(DropReason::NoGroup)?;
        }
        Ok(())
    }

    fn relaying(&self) -> bool {
        match (&self.group, &self.conn) {
            (Some(_), Some(c)) => c.mode != GroupMode::Inactive,
            (Some((_, _, active)), None) => *active,
            (None, _) => false,
        }
    }

    fn on_frames(&mut self, batches: Vec<Vec<CanRecord>>) -> anyhow::Result<()> {
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        DongleMetrics::inc(&self.ctx.metrics.frames_in, &self.serial, n);
        if !self.relaying() || self.outbox.is_none() {
            self.ctx
                .metrics
                .dropped(&self.serial, DropReason::NoGroup, n);
            self.drops.note(&self.serial, DropReason::NoGroup, n);
            return Ok(());
        }
        let Some(outbox) = self.outbox.as_mut() else {
            return Ok(());
        };
        let group = outbox.key.group_id.clone();
        let frames: Vec<WireFrame> = batches
            .iter()
            .flatten()
            .map(|r| WireFrame::from_record(&group, r))
            .collect();
        let dropped = outbox.append(frames)?;
        self.drops
            .note(&self.serial, DropReason::OutboxFull, dropped);
        Ok(())
    }

    fn drop_outbox(&mut self, reason: DropReason) -> anyhow::Result<()> {
        if let Some(o) = self.outbox.as_mut() {
            let n = o.drop_pending(reason)?;
            self.drops.note(&self.serial, reason, n);
        }
        Ok(())
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let (Some((group, side, _)), Some(outbox)) = (&self.group, &self.outbox) else {
            return Ok(());
        };
        let (index, server) = self.ctx.servers.current();
        self.server = index;
        DongleMetrics::set(&self.ctx.metrics.server_index, &self.serial, index as u64);
        let url = server.ws("/ws/data");
        let ws = connect_ws(&url, &self.ctx.cfg.token, HANDSHAKE_TIMEOUT).await?;
        let (mut sink, mut stream) = ws.split();
        let hello = Message::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            group_id: group.clone(),
            side: *side,
            resume: ResumeCursor {
                rx_seq: outbox.rx_seq,
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
        let welcome = match welcome {
            Message::Welcome(w) => w,
            Message::Error(e) => {
                if matches!(e.code, ErrorCode::Unauthorized) {
                    self.repoll.notify_one();
                }
                if matches!(e.code, ErrorCode::CursorAhead) {
                    self.reset_cursor()?;
                }
                return Err(Refused {
                    code: e.code,
                    message: e.message,
                }
                .into());
            }
            other => bail!("expected welcome, got {}", other.type_name()),
        };
        let Some(outbox) = self.outbox.as_mut() else {
            return Ok(());
        };
        let base = outbox.reconcile(welcome.tx_acked)?;
        if welcome.rx_from > outbox.rx_seq {
            warn!(serial = %self.serial, rx_from = welcome.rx_from, local = outbox.rx_seq,
                "the server resumes inbound delivery above this agent's cursor");
        }
        let mut conn = Conn {
            sink,
            stream,
            encoding: welcome.encoding,
            sent_up_to: base,
            mode: welcome.mode,
        };
        if welcome.mode == GroupMode::Inactive {
            self.drop_outbox(DropReason::GroupInactive)?;
            if let Some(o) = self.outbox.as_mut() {
                conn.sent_up_to = o.reconcile(welcome.tx_acked)?;
            }
        }
        info!(serial = %self.serial, server = %url, group = %group_of(&self.group), tx_acked = welcome.tx_acked,
            rx_from = welcome.rx_from, mode = %welcome.mode, encoding = welcome.encoding.as_str(),
            pending = self.outbox.as_ref().map_or(0, StreamOutbox::pending), "data plane connected");
        self.conn = Some(conn);
        self.backoff.reset();
        DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 1);
        Ok(())
    }

    fn reset_cursor(&mut self) -> anyhow::Result<()> {
        if let Some(o) = self.outbox.as_mut() {
            warn!(serial = %self.serial, rx_seq = o.rx_seq,
                "the server never stored this agent's inbound cursor (cursor_ahead): resuming from its start");
            o.set_rx(0)?;
        }
        Ok(())
    }

    /// A session failed or ended: retry after the next backoff delay (at least
    /// `reconnect_min`). `lost`: the server could not be reached or the connection broke —
    /// the next attempt goes to the next server of `server_url`; a refusal or a reset after a
    /// protocol error stays on the same server.
    fn fail(&mut self, reason: &str, lost: bool) {
        DongleMetrics::inc(&self.ctx.metrics.disconnects, &self.serial, 1);
        DongleMetrics::set(&self.ctx.metrics.connected, &self.serial, 0);
        let delay = next_delay(&mut self.backoff);
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
        warn!(serial = %self.serial, reason, next_server = next,
            retry_in_ms = delay.as_millis() as u64, "data plane session ended");
        self.next_connect = Instant::now() + delay;
    }

    /// Closes the session; `reason`: why it broke (`None`: the agent resets it after a
    /// protocol error the server sent, and stays on that server).
    async fn end_conn(&mut self, reason: Option<String>) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.sink.send(WsMessage::Close(None)).await;
        }
        let lost = reason.is_some();
        let reason = reason.unwrap_or_else(|| "reset by the agent".into());
        self.fail(&reason, lost);
    }

    /// Handle one WebSocket message; `true` ends the session.
    async fn on_ws(
        &mut self,
        m: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> anyhow::Result<bool> {
        let Some(encoding) = self.conn.as_ref().map(|c| c.encoding) else {
            return Ok(false);
        };
        let msg = match m {
            None => bail!("the server closed the connection"),
            Some(Err(e)) => bail!("WebSocket error: {e}"),
            Some(Ok(WsMessage::Text(t))) => protocol::decode(t.as_bytes(), encoding)?,
            Some(Ok(WsMessage::Binary(b))) => protocol::decode(&b, encoding)?,
            Some(Ok(WsMessage::Close(c))) => bail!("the server closed the connection: {c:?}"),
            Some(Ok(_)) => return Ok(false),
        };
        match msg {
            Message::Ack(Ack { up_to }) => {
                let Some(o) = self.outbox.as_mut() else {
                    return Ok(false);
                };
                if up_to > o.last_seq {
                    bail!(
                        "the server acknowledged seq {up_to}, above the last sent {}",
                        o.last_seq
                    );
                }
                let n = o.ack(up_to)?;
                DongleMetrics::inc(&self.ctx.metrics.frames_acked, &self.serial, n);
            }
            Message::Frames(batch) => self.on_inbound(batch).await?,
            Message::Gap(g) => self.on_gap(g).await?,
            Message::GroupState(s) => {
                if let Some(c) = self.conn.as_mut() {
                    if c.mode != s.mode {
                        info!(serial = %self.serial, mode = %s.mode, "group mode changed");
                    }
                    c.mode = s.mode;
                }
            }
            Message::Error(e) => {
                warn!(serial = %self.serial, code = ?e.code, message = %e.message, "data plane error");
                match e.code {
                    ErrorCode::GroupInactive => {
                        if let Some(c) = self.conn.as_mut() {
                            c.mode = GroupMode::Inactive;
                        }
                        self.drop_outbox(DropReason::GroupInactive)?;
                        self.repoll.notify_one();
                    }
                    ErrorCode::CursorAhead => self.reset_cursor()?,
                    ErrorCode::Unauthorized => self.repoll.notify_one(),
                    // `seq_out_of_order`: the new session resends from `tx_acked + 1`. The
                    // first retry comes after `reconnect_min`, so a server that keeps refusing
                    // gets no reconnect storm. Other codes are fatal or `internal`.
                    _ => {}
                }
                return Ok(true);
            }
            other => bail!("unexpected {} from the server", other.type_name()),
        }
        Ok(false)
    }

    async fn on_inbound(&mut self, batch: FrameBatch) -> anyhow::Result<()> {
        let Some(o) = self.outbox.as_mut() else {
            return Ok(());
        };
        let Some(last) = batch.last_seq() else {
            return Ok(());
        };
        let mut dup = 0;
        let mut invalid = 0;
        let mut delivered = 0;
        let default_channel = Channel::from("can0");
        let mut datagrams = Vec::new();
        for (seq, f) in (batch.first_seq..).zip(&batch.frames) {
            if seq <= o.rx_seq {
                dup += 1;
                continue;
            }
            match f
                .to_record(&default_channel)
                .and_then(|r| self.to_dongle.push(&r))
            {
                Ok(d) => {
                    datagrams.extend(d);
                    delivered += 1;
                }
                Err(e) => {
                    invalid += 1;
                    debug!(serial = %self.serial, seq, error = %e, "inbound frame the dongle cannot carry");
                }
            }
        }
        match self.to_dongle.flush() {
            Ok(d) => datagrams.extend(d),
            Err(e) => {
                // Cannot happen for frames `push` accepted; never let it stall the stream.
                warn!(serial = %self.serial, error = %e, "a REMP batch for the dongle could not be encoded");
            }
        }
        let peer = *self
            .peer
            .lock()
            .map_err(|_| anyhow::anyhow!("peer lock poisoned"))?;
        for d in &datagrams {
            if let Err(e) = self.ctx.socket.send_to(d, peer).await {
                debug!(serial = %self.serial, %peer, error = %e, "sending to the dongle failed");
            }
        }
        let m = &self.ctx.metrics;
        DongleMetrics::inc(&m.frames_delivered, &self.serial, delivered);
        DongleMetrics::inc(&m.frames_duplicate, &self.serial, dup);
        m.dropped(&self.serial, DropReason::Invalid, invalid);
        if last > o.rx_seq {
            o.set_rx(last)?;
        }
        let up_to = o.rx_seq;
        self.send(&Message::Ack(Ack { up_to })).await
    }

    async fn on_gap(&mut self, g: GapNotice) -> anyhow::Result<()> {
        let Some(o) = self.outbox.as_mut() else {
            return Ok(());
        };
        warn!(serial = %self.serial, from = g.from, to = g.to, count = g.count, reason = ?g.reason,
            "the server reports inbound frames that will never arrive");
        DongleMetrics::inc(&self.ctx.metrics.gap_frames, &self.serial, g.count);
        if g.to > o.rx_seq {
            o.set_rx(g.to)?;
        }
        let up_to = o.rx_seq;
        self.send(&Message::Ack(Ack { up_to })).await
    }

    async fn send(&mut self, m: &Message) -> anyhow::Result<()> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        let bytes = protocol::encode(m, c.encoding)?;
        let ws = match c.encoding {
            Encoding::Json => WsMessage::text(String::from_utf8(bytes).context("JSON is UTF-8")?),
            Encoding::Msgpack => WsMessage::binary(bytes),
        };
        c.sink.send(ws).await.context("sending")?;
        Ok(())
    }

    /// Send outbox frames while the window allows.
    async fn pump(&mut self) -> anyhow::Result<()> {
        let window = self.ctx.cfg.send_window_frames;
        let max = self.ctx.cfg.batch_max_frames;
        loop {
            let (Some(c), Some(o)) = (self.conn.as_mut(), self.outbox.as_mut()) else {
                return Ok(());
            };
            if c.mode == GroupMode::Inactive {
                return Ok(());
            }
            let inflight = c.sent_up_to.saturating_sub(o.acked);
            if inflight >= window {
                return Ok(());
            }
            let room = usize::try_from(window - inflight).unwrap_or(max).min(max);
            let Some(batch) = o.batch_after(c.sent_up_to, room) else {
                return Ok(());
            };
            let n = batch.frames.len() as u64;
            let last = batch.last_seq().unwrap_or(c.sent_up_to);
            // Before the send: a seq that may have reached the server is never reused.
            o.note_sent(last);
            let bytes = protocol::encode(&Message::Frames(batch), c.encoding)?;
            let ws = match c.encoding {
                Encoding::Json => {
                    WsMessage::text(String::from_utf8(bytes).context("JSON is UTF-8")?)
                }
                Encoding::Msgpack => WsMessage::binary(bytes),
            };
            c.sink.feed(ws).await.context("sending frames")?;
            c.sent_up_to = last;
            DongleMetrics::inc(&self.ctx.metrics.frames_sent, &self.serial, n);
            // Flush per batch: batching already happened upstream, latency matters.
            c.sink.flush().await.context("sending frames")?;
        }
    }

    /// Stop: take what UDP already delivered into the outbox, send what the window allows,
    /// wait briefly for acks, close.
    async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.frames.close();
        let mut rest = Vec::new();
        while let Ok(b) = self.frames.try_recv() {
            rest.push(b);
        }
        if !rest.is_empty() {
            self.on_frames(rest)?;
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while self.conn.is_some() && self.outbox.as_ref().is_some_and(|o| o.pending() > 0) {
            if let Err(e) = self.pump().await {
                debug!(error = %format!("{e:#}"), "flushing at shutdown");
                break;
            }
            let m = tokio::select! {
                m = next_msg(&mut self.conn) => m,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match self.on_ws(m).await {
                Ok(false) => {}
                _ => break,
            }
        }
        if let Some(mut c) = self.conn.take() {
            let _ = c.sink.send(WsMessage::Close(None)).await;
        }
        let t = self.ctx.metrics.totals(&self.serial);
        info!(serial = %self.serial, frames_in = t.frames_in, acked = t.acked, delivered = t.delivered,
            pending = t.pending, dropped = ?t.dropped, gap_frames = t.gaps, "dongle worker stopped");
        Ok(())
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

fn parse_side(s: &str) -> Option<Side> {
    match s {
        "a" => Some(Side::A),
        "b" => Some(Side::B),
        _ => None,
    }
}

fn side_str(s: Side) -> &'static str {
    match s {
        Side::A => "a",
        Side::B => "b",
    }
}

fn group_of(g: &Option<(String, Side, bool)>) -> &str {
    g.as_ref().map_or("-", |(id, _, _)| id.as_str())
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
