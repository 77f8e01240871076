//! The vehicle's driver: one task that owns the local store's stream ([`StreamOutbox`]) and
//! the uplink session ([`UplinkSession`]), and feeds them everything — new records, the
//! connection's events, timers, dashboard queries. The decisions are the session's and the
//! outbox's (`relay_core::uplink`); this is the I/O around them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use can_io::CanRecord;
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_core::uplink::{
    AppendReport, NewRecord, OutboxRecord, Refusal, SentBatch, SessionAction, SessionConfig,
    StreamOutbox, UplinkSession, UplinkState,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::ingest::Admitted;
use super::link::{LinkEvent, spawn_connect};
use super::listener::ListenerCounters;
use super::metrics::VehicleMetrics;
use super::{LiveRecord, RecentItem, RecentPage, VehicleStatus};
use crate::config::VehicleConfig;
use crate::status::{self, StatusReport};
use crate::wire::{RemoteMessage, UplinkStatus, encode_batch};

/// Records appended in one commit, at most (more wait for the next). Each append holds its
/// records twice for a moment (the commit and the send mirror): 16,384 keeps that to a few
/// MB while one `synchronous=FULL` commit still carries enough records to amortise its sync.
const MAX_APPEND: usize = 16_384;
/// How often uplinked records past the dashboard window are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// How often the uplink status goes to the remote (when it accepts it).
const UPLINK_STATUS_EVERY: Duration = Duration::from_secs(1);
/// How long the session stays in `error` before it tries again.
const ERROR_RETRY_MS: u64 = 30_000;

/// A query from the HTTP side.
#[derive(Debug)]
pub(crate) enum Request {
    Recent {
        since_ts_ms: u64,
        before: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<anyhow::Result<RecentPage>>,
    },
    Status {
        reply: oneshot::Sender<VehicleStatus>,
    },
}

pub(crate) struct Driver {
    pub(crate) config: VehicleConfig,
    pub(crate) outbox: StreamOutbox,
    pub(crate) session: UplinkSession<StdRng>,
    pub(crate) records: mpsc::UnboundedReceiver<Admitted>,
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) status_frames: Option<mpsc::Sender<Vec<CanRecord>>>,
    pub(crate) live: broadcast::Sender<Arc<LiveRecord>>,
    pub(crate) listener: Arc<ListenerCounters>,
    pub(crate) metrics: Arc<VehicleMetrics>,
    pub(crate) acked: tokio::sync::watch::Sender<u64>,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    link: Option<mpsc::Sender<Bytes>>,
    /// The latest uplink status, for the connection to send to the remote.
    uplink_status: tokio::sync::watch::Sender<Option<UplinkStatus>>,
    generation: u64,
    /// Index of the current endpoint in `REMOTE_ENDPOINT_URL`.
    endpoint: usize,
    /// The last connection failed or was lost: the next one goes to the next endpoint.
    endpoint_lost: bool,
    started: Instant,
    reported_state: Option<UplinkState>,
    error_since: Option<u64>,
    collected: u64,
    store_errors: u64,
}

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn session_config(config: &VehicleConfig) -> SessionConfig {
    SessionConfig {
        window: config.window,
        batch_max: config.batch_max,
        ..SessionConfig::default()
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: VehicleConfig,
        outbox: StreamOutbox,
        records: mpsc::UnboundedReceiver<Admitted>,
        requests: mpsc::Receiver<Request>,
        status_frames: Option<mpsc::Sender<Vec<CanRecord>>>,
        live: broadcast::Sender<Arc<LiveRecord>>,
        listener: Arc<ListenerCounters>,
        metrics: Arc<VehicleMetrics>,
        acked: tokio::sync::watch::Sender<u64>,
    ) -> Self {
        let session = UplinkSession::new(
            session_config(&config),
            StdRng::from_os_rng(),
            outbox.acked(),
            outbox.last_seq(),
            0,
        );
        let (events_tx, events) = mpsc::unbounded_channel();
        Driver {
            config,
            outbox,
            session,
            records,
            requests,
            status_frames,
            live,
            listener,
            metrics,
            acked,
            events_tx,
            events,
            link: None,
            uplink_status: tokio::sync::watch::channel(None).0,
            generation: 0,
            endpoint: 0,
            endpoint_lost: false,
            started: Instant::now(),
            reported_state: None,
            error_since: None,
            collected: 0,
            store_errors: 0,
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs until `stop` completes; then appends what the listener still hands over.
    pub(crate) async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let status_every = Duration::from_millis(self.config.status_interval_ms.max(1));
        let mut status_tick = tokio::time::interval(status_every);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut uplink_status_tick = tokio::time::interval(UPLINK_STATUS_EVERY);
        let mut records_open = true;
        loop {
            if let Err(e) = self.drive().await {
                tracing::error!(error = %e, "uplink driver step failed; reopening the connection");
                self.link = None;
                self.session.handle_disconnected(self.now());
            }
            self.report_state_change().await;
            let timeout = self
                .session
                .poll_timeout()
                .map(|at| tokio::time::Instant::from_std(self.started + Duration::from_millis(at)));
            let wake = async {
                match timeout {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                event = self.events.recv() => {
                    if let Some(event) = event {
                        self.on_link_event(event).await;
                    }
                }
                batch = self.records.recv(), if records_open => match batch {
                    Some(batch) => self.append(batch).await,
                    None => records_open = false,
                },
                request = self.requests.recv() => {
                    if let Some(request) = request {
                        self.answer(request).await;
                    }
                }
                _ = wake => {}
                _ = prune.tick() => self.prune().await,
                _ = uplink_status_tick.tick() => self.publish_uplink_status(),
                _ = status_tick.tick(), if self.config.status_interval_ms > 0 => {
                    self.send_status().await;
                }
            }
        }
        self.link = None;
        while let Ok(batch) = self.records.try_recv() {
            self.append(batch).await;
        }
        self.refresh_metrics();
    }

    /// Does every action the session asks for.
    async fn drive(&mut self) -> anyhow::Result<()> {
        if self.session.state() == UplinkState::Error
            && let Some(since) = self.error_since
            && self.now() >= since + ERROR_RETRY_MS
        {
            self.error_since = None;
            self.session.reset(self.now());
        }
        while let Some(action) = self.session.poll_action(self.now()) {
            self.act(action).await?;
        }
        Ok(())
    }

    /// Does one action of the session.
    async fn act(&mut self, action: SessionAction) -> anyhow::Result<()> {
        match action {
            SessionAction::Connect => match self.next_endpoint() {
                Some(url) if self.config.enable_uplink_manager => {
                    self.generation += 1;
                    spawn_connect(
                        self.generation,
                        url,
                        self.config.api_key.clone(),
                        self.events_tx.clone(),
                        self.uplink_status.subscribe(),
                    );
                }
                _ => {
                    self.session
                        .handle_fatal("the uplink manager is disabled".into(), self.now());
                }
            },
            SessionAction::Reconcile { remote_acked } => {
                let reconciled = self.outbox.reconcile(remote_acked).await?;
                if reconciled.remote_ahead {
                    tracing::warn!(
                        remote_acked,
                        "the remote holds seqs this store never assigned: renumbered"
                    );
                }
                self.session.handle_reconciled(&reconciled, self.now());
                self.acked.send_replace(self.outbox.acked());
            }
            SessionAction::Send { after, max } => {
                let batch = self.outbox.next_batch(after, max).await?;
                let sent = self.send(&batch).await;
                self.session.handle_sent(sent, self.now());
            }
            SessionAction::MarkUplinked { up_to } => {
                let n = self.outbox.ack(up_to).await?;
                self.metrics.uplinked.inc_by(n);
                self.acked.send_replace(self.outbox.acked());
            }
            SessionAction::DropPending { reason } => {
                self.outbox.drop_pending(reason).await?;
                self.session
                    .handle_records_available(self.outbox.last_seq());
            }
            SessionAction::Disconnect => self.link = None,
        }
        Ok(())
    }

    /// The endpoint of the next connection: the one of the last connection, or the next one
    /// of `REMOTE_ENDPOINT_URL` after that connection failed or was lost.
    fn next_endpoint(&mut self) -> Option<String> {
        let urls = self.config.remote_endpoints();
        if urls.is_empty() {
            return None;
        }
        if std::mem::take(&mut self.endpoint_lost) {
            self.endpoint = (self.endpoint + 1) % urls.len();
            if urls.len() > 1 {
                tracing::info!(
                    next = urls[self.endpoint],
                    "uplink: moving to the next endpoint"
                );
            }
        }
        urls.get(self.endpoint).map(|u| (*u).to_owned())
    }

    async fn send(&mut self, batch: &[OutboxRecord]) -> Option<SentBatch> {
        send_on(self.link.as_ref(), batch).await
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        let now = self.now();
        match event {
            LinkEvent::Connected {
                generation,
                tx,
                acked,
            } if generation == self.generation => {
                tracing::info!(remote_acked = acked, "uplink connected");
                self.link = Some(tx);
                self.session.handle_connected(acked, now);
            }
            LinkEvent::ConnectFailed {
                generation,
                reason,
                fatal,
            } if generation == self.generation => {
                tracing::warn!(%reason, fatal, "uplink connection failed");
                self.endpoint_lost = true;
                if fatal {
                    self.session.handle_fatal(reason, now);
                    self.error_since = Some(now);
                } else {
                    self.session.handle_connect_failed(now);
                }
            }
            LinkEvent::Message {
                generation,
                message,
            } if generation == self.generation => match message {
                RemoteMessage::Ack { up_to } => {
                    if let Err(e) = self.session.handle_ack(up_to, now) {
                        tracing::warn!(error = %e, "the remote acknowledged unsent records");
                        self.session.handle_refused(Refusal::Resync, now);
                    }
                }
                RemoteMessage::Error { code, message } => {
                    tracing::warn!(%code, %message, "the remote refused the uplink");
                    let refusal = match code.as_str() {
                        "internal" => Refusal::Resync,
                        _ => Refusal::Fatal {
                            reason: format!("{code}: {message}"),
                        },
                    };
                    if matches!(refusal, Refusal::Fatal { .. }) {
                        self.error_since = Some(now);
                    }
                    self.session.handle_refused(refusal, now);
                }
                RemoteMessage::Welcome { .. } => {
                    self.session.handle_refused(Refusal::Resync, now);
                }
            },
            LinkEvent::Closed { generation, reason } if generation == self.generation => {
                tracing::info!(%reason, "uplink disconnected");
                self.endpoint_lost = true;
                self.link = None;
                self.session.handle_disconnected(now);
            }
            _ => {}
        }
    }

    /// Appends `first` and what else is queued, up to [`MAX_APPEND`] records; their room in
    /// the ingest budget comes back when the commit is done.
    async fn append(&mut self, first: Admitted) {
        let Admitted {
            records: mut batch,
            mut permit,
        } = first;
        while batch.len() < MAX_APPEND {
            match self.records.try_recv() {
                Ok(more) => {
                    batch.extend(more.records);
                    permit.merge(more.permit);
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let live = (self.live.receiver_count() > 0).then(|| batch.clone());
        match self.commit_append(batch).await {
            Ok(report) => {
                self.collected += n;
                self.metrics.collected.inc_by(n);
                if report.dropped_pending + report.dropped_in_flight > 0 {
                    tracing::warn!(
                        dropped = report.dropped_pending,
                        in_flight = report.dropped_in_flight,
                        cap = self.config.max_local_records,
                        "MAX_LOCAL_RECORDS reached: oldest pending records dropped"
                    );
                }
                self.session.handle_records_available(report.last_seq);
                if let Some(records) = live {
                    for (i, r) in records.into_iter().enumerate() {
                        let _ = self.live.send(Arc::new(LiveRecord {
                            seq: report.first_seq + i as u64,
                            ts_ms: r.ts_ms,
                            payload: r.payload,
                        }));
                    }
                }
            }
            Err(e) => {
                // Lost: counted and reported (`store_errors`), never silent.
                self.store_errors += n;
                self.metrics.store_errors.inc_by(n);
                tracing::error!(error = %e, records = n, "the local store refused records");
                if matches!(e, relay_core::error::Error::OutboxOutOfStep { .. }) {
                    tracing::error!(
                        "the stream is out of step with its store; restart the collector"
                    );
                }
            }
        }
        // Committed (or counted as lost): the room goes back to the producers.
        drop(permit);
    }

    /// Commits `batch` to the store. While the commit (and its fsync) runs, the uplink goes on
    /// from memory when it safely can: records committed *before* this append and not sent yet
    /// are sent from a copy taken beforehand, and the remote's acks are taken by the session
    /// (marking them in the store waits for the commit). The appended records themselves are
    /// only sent after their commit returned, as before, so the remote never holds — let alone
    /// acknowledges — a record the vehicle could lose in a crash. Taken only when the append
    /// cannot drop pending records (the cap), so the records sent meanwhile keep their seqs.
    async fn commit_append(
        &mut self,
        batch: Vec<NewRecord>,
    ) -> relay_core::error::Result<AppendReport> {
        let n = batch.len() as u64;
        let connected = self.link.is_some() && self.session.state() == UplinkState::Connected;
        if !connected || self.outbox.pending() + n > self.config.max_local_records.max(1) {
            return self.outbox.append(batch).await;
        }
        // What the session may send next: committed, unsent records, as many as the outbox
        // mirrors (the window and a batch at least), so a commit drains at most that.
        let after = self.session.stats(self.now()).sent_through;
        let ahead_max = self.outbox.config().mirror_max;
        let ahead = match self.outbox.peek(after, ahead_max).await {
            Ok(ahead) => ahead,
            Err(_) => return self.outbox.append(batch).await,
        };
        let mut ahead = std::collections::VecDeque::from(ahead);
        let mut cursor = after;
        // What waits for the commit: an action not done from memory (done first, in order),
        // the highest ack to mark, an event not handled meanwhile.
        let mut deferred: Option<SessionAction> = None;
        let mut mark: Option<u64> = None;
        let mut stashed: Option<LinkEvent> = None;
        let mut served = 0usize;
        let result = {
            let Driver {
                outbox,
                session,
                events,
                link,
                generation,
                started,
                ..
            } = self;
            let now = || started.elapsed().as_millis() as u64;
            let commit = outbox.append(batch);
            tokio::pin!(commit);
            loop {
                while deferred.is_none() {
                    match session.poll_action(now()) {
                        None => break,
                        Some(SessionAction::MarkUplinked { up_to }) => {
                            mark = Some(mark.map_or(up_to, |m| m.max(up_to)));
                        }
                        Some(SessionAction::Send { after, max }) if after == cursor => {
                            let take = max.min(ahead.len());
                            if take == 0 {
                                deferred = Some(SessionAction::Send { after, max });
                                break;
                            }
                            let part: Vec<OutboxRecord> = ahead.drain(..take).collect();
                            let sent = send_on(link.as_ref(), &part).await;
                            if let Some(b) = &sent {
                                cursor = b.last;
                                served += part.len();
                            }
                            session.handle_sent(sent, now());
                        }
                        Some(other) => deferred = Some(other),
                    }
                }
                tokio::select! {
                    biased;
                    committed = &mut commit => break committed,
                    event = events.recv(), if stashed.is_none() => match event {
                        Some(LinkEvent::Message {
                            generation: g,
                            message: RemoteMessage::Ack { up_to },
                        }) if g == *generation && session.handle_ack(up_to, now()).is_ok() => {}
                        other => stashed = other,
                    },
                }
            }
        };
        // The records sent meanwhile count as sent in the outbox too (from its mirror).
        if served > 0 {
            let marked = self.outbox.next_batch(after, served).await;
            if let Err(e) = marked {
                tracing::warn!(error = %e, "could not mark records sent during an append");
            }
        }
        if let Some(up_to) = mark {
            match self.outbox.ack(up_to).await {
                Ok(n) => {
                    self.metrics.uplinked.inc_by(n);
                    self.acked.send_replace(self.outbox.acked());
                }
                Err(e) => tracing::error!(error = %e, "marking acknowledged records failed"),
            }
        }
        if let Some(action) = deferred
            && let Err(e) = self.act(action).await
        {
            tracing::error!(error = %e, "uplink driver step failed; reopening the connection");
            self.link = None;
            self.session.handle_disconnected(self.now());
        }
        if let Some(event) = stashed {
            self.on_link_event(event).await;
        }
        result
    }

    async fn prune(&mut self) {
        let older_than = wall_ms().saturating_sub(self.config.dashboard_retention_s * 1000);
        match self.outbox.prune_uplinked(older_than).await {
            Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned uplinked records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
    }

    async fn answer(&mut self, request: Request) {
        match request {
            Request::Recent {
                since_ts_ms,
                before,
                limit,
                reply,
            } => {
                let acked = self.outbox.acked();
                let page = self
                    .outbox
                    .recent(since_ts_ms, before, limit)
                    .await
                    .map(|records| {
                        let mut items: Vec<RecentItem> = records
                            .into_iter()
                            .map(|r| RecentItem {
                                uplinked: r.seq <= acked,
                                seq: r.seq,
                                ts_ms: r.ts_ms,
                                payload: r.payload,
                            })
                            .collect();
                        items.reverse();
                        let next_before = (items.len() == limit)
                            .then(|| items.last().map(|i| i.seq))
                            .flatten();
                        RecentPage { items, next_before }
                    })
                    .map_err(anyhow::Error::from);
                let _ = reply.send(page);
            }
            Request::Status { reply } => {
                let status = self.status();
                self.metrics.refresh(&status);
                let _ = reply.send(status);
            }
        }
    }

    fn status(&mut self) -> VehicleStatus {
        let now = self.now();
        let s = self.session.stats(now);
        let o = self.outbox.stats(wall_ms());
        VehicleStatus {
            state: s.state.as_str(),
            queue_size: o.pending,
            stored: o.stored,
            last_seq: o.last_seq,
            acked_seq: o.acked_through,
            sent_seq: s.sent_through.max(o.acked_through),
            in_flight: s.in_flight,
            oldest_pending_age_ms: o.oldest_pending_age_ms,
            latency_last_ms: s.last_latency_ms,
            latency_mean_ms: s.mean_latency_ms,
            latency_max_ms: s.max_latency_ms,
            throughput_records_per_s: s.throughput_per_s,
            throughput_kbit_per_s: s.throughput_bytes_per_s * 8.0 / 1000.0,
            records_collected: self.collected,
            records_sent_total: s.records_sent_total,
            records_acked_total: s.records_acked_total,
            dropped_overflow: o.dropped.overflow,
            dropped_refused: o.dropped.refused,
            dropped_abandoned: o.dropped.abandoned,
            dropped_total: o.dropped_pending_total,
            dropped_unsettled: o.unsettled,
            dropped_listener_overflow: self.listener.overflow.load(Ordering::Relaxed),
            store_errors: self.store_errors,
            connect_attempts: s.connect_attempts,
            disconnects: s.disconnects,
            consecutive_failures: s.consecutive_failures,
            last_error: s.last_error,
            can_frames: self.listener.frames.load(Ordering::Relaxed),
            can_signals_decoded: self.listener.decoded.load(Ordering::Relaxed),
            status_frames_sent: self.listener.status_frames.load(Ordering::Relaxed),
        }
    }

    fn refresh_metrics(&mut self) {
        let status = self.status();
        self.metrics.refresh(&status);
    }

    async fn report_state_change(&mut self) {
        let state = self.session.state();
        if self.reported_state != Some(state) {
            self.reported_state = Some(state);
            tracing::info!(state = state.as_str(), "uplink state");
            self.publish_uplink_status();
            self.send_status().await;
        }
    }

    /// Hands the connection the current uplink status (`wire::UplinkStatus`).
    fn publish_uplink_status(&mut self) {
        let s = self.session.stats(self.now());
        let o = self.outbox.stats(wall_ms());
        let dropped = o.dropped_pending_total
            + self.listener.overflow.load(Ordering::Relaxed)
            + self.store_errors;
        self.uplink_status.send_replace(Some(UplinkStatus::new(
            wall_ms(),
            s.state.as_str(),
            o.pending,
            dropped,
            s.throughput_per_s,
        )));
    }

    async fn send_status(&mut self) {
        self.refresh_metrics();
        let Some(tx) = &self.status_frames else {
            return;
        };
        let now = self.now();
        let s = self.session.stats(now);
        let o = self.outbox.stats(wall_ms());
        let report = StatusReport {
            state: s.state,
            consecutive_failures: s.consecutive_failures,
            dropped: o.dropped_pending_total + self.listener.overflow.load(Ordering::Relaxed),
            queue: o.pending,
            stored: o.stored,
            mean_latency_ms: s.mean_latency_ms,
            max_latency_ms: s.max_latency_ms,
            bytes_per_s: s.throughput_bytes_per_s,
            records_per_s: s.throughput_per_s,
        };
        let frames = status::frames(&report, &"can0".into(), can_io::transport::now_ns());
        // The listener may be busy; a status report is replaced by the next one, not queued.
        let _ = tx.try_send(frames);
    }
}

/// Sends `batch` as one upload message on `link`; what was sent, or `None` when there is no
/// link, the batch is empty, or the writer is gone (the reader reports the close).
async fn send_on(link: Option<&mpsc::Sender<Bytes>>, batch: &[OutboxRecord]) -> Option<SentBatch> {
    let (first, last) = (batch.first()?, batch.last()?);
    let link = link?;
    if link.send(encode_batch(batch)).await.is_err() {
        return None;
    }
    Some(SentBatch {
        first: first.seq,
        last: last.seq,
        count: batch.len() as u64,
        bytes: batch.iter().map(|r| r.payload.len() as u64).sum(),
    })
}
