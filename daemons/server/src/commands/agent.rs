//! The agent connector: the server half of the diagnostics channel on `/ws/data`
//! (`relay_core::protocol::diag`, docs/protocols/data-plane.md).
//!
//! [`AgentHub`] serves the connections whose first message is `diag_hello`: it accepts the
//! dongles the connecting agent announced, remembers the latest connection per dongle, and
//! routes `command_status` / `command_response` / `command_failed` to the command waiting for
//! them. [`AgentConnector`] sends a command to the connection serving its vehicle's dongle —
//! waiting for one until the command's ttl when there is none — and turns the agent's answers
//! into reports. When the connection drops mid-command the command fails with
//! `interrupted: agent disconnected`, except read-only services without a stored response,
//! which are sent once more (`attempt: 2`) when the agent is back within the ttl.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, close_code};
use bytes::Bytes;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use relay_core::Error as RelayError;
use relay_core::protocol::diag::{
    CommandRequest, DiagMessage, DiagWelcome, decode_diag, encode_diag,
};
use relay_core::protocol::{ErrorCode, ErrorMessage, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use super::metrics::CommandMetrics;
use super::remote::RemoteRoute;
use super::{Connector, Job, Reporter, VEHICLE_OFFLINE};
use crate::dataplane::DiagChannel;
use crate::state::AppState;
use crate::store::{Agent, Store};

/// The error of a command whose agent connection dropped.
pub const INTERRUPTED_AGENT: &str = "interrupted: agent disconnected";

/// The least time the server waits for an agent's answer after sending a command, even when
/// the command's ttl is shorter.
const MIN_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// What the agent reported about a command (also relayed between instances as JSON,
/// `super::remote`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub(super) enum AgentEvent {
    InProgress,
    Response {
        sequence_number: u32,
        is_final: bool,
        response: Value,
    },
    Failed(String),
    Disconnected,
    /// Between instances: the hand-over was voided before anything was sent; hand the
    /// command over again (same attempt).
    Undelivered,
    /// Between instances: another instance adopted the command; this one must drop it
    /// without sending or recording anything.
    Fenced,
}

impl AgentEvent {
    /// Whether nothing follows this event for its command.
    pub(super) fn is_last(&self) -> bool {
        match self {
            AgentEvent::Response { is_final, .. } => *is_final,
            AgentEvent::Failed(_)
            | AgentEvent::Disconnected
            | AgentEvent::Undelivered
            | AgentEvent::Fenced => true,
            AgentEvent::InProgress => false,
        }
    }
}

#[derive(Debug, Clone)]
struct ConnEntry {
    conn: u64,
    out: mpsc::UnboundedSender<String>,
}

#[derive(Debug)]
struct Waiting {
    conn: u64,
    events: mpsc::UnboundedSender<AgentEvent>,
}

#[derive(Debug, Default)]
struct HubState {
    by_dongle: HashMap<Uuid, ConnEntry>,
    waiting: HashMap<Uuid, Waiting>,
}

#[derive(Debug)]
pub(super) struct HubInner {
    store: Arc<Store>,
    state: AppState,
    metrics: CommandMetrics,
    hub: Mutex<HubState>,
    changed: watch::Sender<u64>,
    next_conn: AtomicU64,
    /// With a Redis URL: commands for dongles served by other instances.
    pub(super) remote: Option<RemoteRoute>,
}

impl HubInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The dongles a connection of this instance serves.
    pub(super) fn served_dongles(&self) -> Vec<Uuid> {
        self.lock().by_dongle.keys().copied().collect()
    }

    /// Whether a connection of this instance serves `dongle`.
    pub(super) fn serves_dongle(&self, dongle: Uuid) -> bool {
        self.lock().by_dongle.contains_key(&dongle)
    }
}

/// What handing a command to an agent came to.
#[derive(Debug)]
enum Dispatch {
    /// Handed over: the agent's answers follow.
    Sent(mpsc::UnboundedReceiver<AgentEvent>),
    /// Not handed over (no connection serves the dongle, or this instance may not send now):
    /// try again later.
    NotYet,
    /// Another instance adopted the command: drop it.
    Fenced,
}

/// Sends `request` to the local connection serving its dongle and registers the command's
/// event channel, atomically with respect to that connection's end. `None`: no connection.
pub(super) fn dispatch_local(
    inner: &HubInner,
    request: &CommandRequest,
) -> Option<mpsc::UnboundedReceiver<AgentEvent>> {
    let text = encode_diag(&DiagMessage::Command(request.clone())).ok()?;
    let mut hub = inner.lock();
    let entry = hub.by_dongle.get(&request.dongle_id)?.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    if entry.out.send(text).is_err() {
        // The connection's writer is gone; its reader is about to unregister it.
        let _ = tx.send(AgentEvent::Disconnected);
    }
    hub.waiting.insert(
        request.command_id,
        Waiting {
            conn: entry.conn,
            events: tx,
        },
    );
    Some(rx)
}

/// Stops routing a command's answers.
pub(super) fn forget_local(inner: &HubInner, command_id: Uuid) {
    inner.lock().waiting.remove(&command_id);
}

/// The diagnostics channel's connections (cheap to clone).
#[derive(Debug, Clone)]
pub struct AgentHub {
    inner: Arc<HubInner>,
}

impl AgentHub {
    /// A hub with no connection yet.
    /// With the state's Redis, it also serves commands of other instances and sends its own
    /// to them (`super::remote`; starts background tasks, so call it inside the runtime).
    pub fn new(state: AppState, metrics: CommandMetrics) -> AgentHub {
        let instance = state.store().instance().to_owned();
        let remote = state.redis.clone().map(|r| RemoteRoute::new(r, instance));
        let clustered = remote.is_some();
        let inner = Arc::new(HubInner {
            store: Arc::clone(state.store()),
            state,
            metrics,
            hub: Mutex::new(HubState::default()),
            changed: watch::channel(0).0,
            next_conn: AtomicU64::new(1),
            remote,
        });
        if clustered {
            super::remote::spawn(Arc::downgrade(&inner));
        }
        AgentHub { inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.inner.lock()
    }

    /// Whether a diagnostics connection serves `dongle`.
    pub fn serves(&self, dongle: Uuid) -> bool {
        self.inner.serves_dongle(dongle)
    }

    /// Sends `request` to the local connection serving its dongle — with Redis, only after
    /// claiming the send in the command's handover record (`super::remote`) — else hands it
    /// to the instance whose connection serves the dongle.
    async fn dispatch_anywhere(&self, request: &CommandRequest) -> Dispatch {
        let Some(route) = self.inner.remote.as_ref() else {
            return dispatch_local(&self.inner, request).map_or(Dispatch::NotYet, Dispatch::Sent);
        };
        if self.serves(request.dongle_id) {
            match route.claim(request, Uuid::new_v4(), &route.instance).await {
                Ok(super::remote::Claim::Send) => {
                    // When the connection went away since, the claim only makes an adopter
                    // treat the command as sent: never a second send.
                    return dispatch_local(&self.inner, request)
                        .map_or(Dispatch::NotYet, Dispatch::Sent);
                }
                Ok(super::remote::Claim::Fenced) => return Dispatch::Fenced,
                Ok(claim) => {
                    tracing::warn!(command = %request.command_id, ?claim, "this instance may not send commands now (its liveness key is gone); retrying");
                    return Dispatch::NotYet;
                }
                Err(err) => {
                    tracing::warn!(command = %request.command_id, %err, "claiming a command's send in Redis failed; retrying");
                    return Dispatch::NotYet;
                }
            }
        }
        match route.dispatch(request).await {
            Ok(events) => events.map_or(Dispatch::NotYet, Dispatch::Sent),
            Err(err) => {
                tracing::warn!(command = %request.command_id, %err, "sending a command to another instance failed; retrying");
                Dispatch::NotYet
            }
        }
    }

    fn forget(&self, command_id: Uuid) {
        forget_local(&self.inner, command_id);
    }

    /// Routes an agent's report to the command waiting for it on this connection.
    fn route(&self, conn: u64, command_id: Uuid, event: AgentEvent) {
        let hub = self.lock();
        match hub.waiting.get(&command_id) {
            Some(w) if w.conn == conn => {
                let _ = w.events.send(event);
            }
            _ => {
                drop(hub);
                self.inner.metrics.ignored("unknown_command");
                tracing::debug!(%command_id, "a diagnostics report for a command not waiting on this connection was ignored");
            }
        }
    }

    async fn serve_conn(self, socket: WebSocket, hello: Bytes, agent: Agent) {
        let mut revocations = self.inner.state.subscribe_agent_revocations();
        let (mut sink, mut source) = socket.split();
        let hello = match decode_diag(&hello) {
            Ok(DiagMessage::DiagHello(hello)) => hello,
            Ok(other) => {
                let message = format!(
                    "the first message must be `diag_hello`, got `{}`",
                    other.type_name()
                );
                refuse(&mut sink, ErrorCode::HandshakeRequired, message).await;
                return;
            }
            Err(RelayError::UnsupportedProtocolVersion { got, supported }) => {
                let message = format!(
                    "protocol version {got} is not supported; this server speaks {supported:?}"
                );
                refuse(&mut sink, ErrorCode::UnsupportedVersion, message).await;
                return;
            }
            Err(err) => {
                refuse(&mut sink, ErrorCode::BadMessage, err.to_string()).await;
                return;
            }
        };
        let mut announced = hello.dongles.clone();
        announced.sort_unstable();
        announced.dedup();
        let agent_id = agent.id;
        let lookup = announced.clone();
        let accepted = match self
            .inner
            .store
            .call(move |s| s.dongles_announced_by(agent_id, &lookup))
            .await
        {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::error!(%err, "checking a diag_hello's dongles failed");
                refuse(
                    &mut sink,
                    ErrorCode::Internal,
                    "the server could not check the dongles".into(),
                )
                .await;
                return;
            }
        };
        let refused: Vec<Uuid> = announced
            .iter()
            .filter(|d| !accepted.contains(d))
            .copied()
            .collect();
        let welcome = DiagMessage::DiagWelcome(DiagWelcome {
            version: PROTOCOL_VERSION,
            dongles: accepted.clone(),
            refused,
        });
        let Ok(text) = encode_diag(&welcome) else {
            return;
        };
        if sink.send(WsMessage::Text(text.into())).await.is_err() {
            return;
        }
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        {
            let mut hub = self.lock();
            for dongle in &accepted {
                hub.by_dongle.insert(
                    *dongle,
                    ConnEntry {
                        conn,
                        out: out.clone(),
                    },
                );
            }
        }
        self.inner.changed.send_modify(|n| *n += 1);
        tracing::info!(agent = %agent.id, dongles = accepted.len(), "diagnostics channel connected");
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(WsMessage::Text(text.into())).await.is_err() {
                    return;
                }
            }
            let _ = sink
                .send(WsMessage::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: "closed".into(),
                })))
                .await;
        });
        loop {
            tokio::select! {
                revoked = revocations.recv() => match revoked {
                    Ok(id) if id == agent.id => {
                        send_error(&out, ErrorCode::Unauthorized, "the agent was revoked");
                        break;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        send_error(&out, ErrorCode::Internal, "the server missed agent revocations; reconnect");
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                message = source.next() => {
                    let bytes = match message {
                        None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                        Some(Ok(WsMessage::Text(text))) => Bytes::from(text),
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.inner.metrics.ignored("binary");
                            send_error(&out, ErrorCode::BadMessage, "the diagnostics channel speaks JSON text");
                            continue;
                        }
                    };
                    self.handle(conn, &out, &bytes);
                }
            }
        }
        // Unregister, and tell the commands waiting on this connection.
        {
            let mut hub = self.lock();
            hub.by_dongle.retain(|_, e| e.conn != conn);
            hub.waiting.retain(|_, w| {
                if w.conn == conn {
                    let _ = w.events.send(AgentEvent::Disconnected);
                    false
                } else {
                    true
                }
            });
        }
        self.inner.changed.send_modify(|n| *n += 1);
        drop(out);
        if tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .is_err()
        {
            tracing::debug!("diagnostics writer did not finish in time");
        }
        tracing::info!(agent = %agent.id, "diagnostics channel disconnected");
    }

    fn handle(&self, conn: u64, out: &mpsc::UnboundedSender<String>, bytes: &[u8]) {
        match decode_diag(bytes) {
            Ok(DiagMessage::CommandStatus(s)) => {
                self.route(conn, s.command_id, AgentEvent::InProgress);
            }
            Ok(DiagMessage::CommandResponse(r)) => self.route(
                conn,
                r.command_id,
                AgentEvent::Response {
                    sequence_number: r.sequence_number,
                    is_final: r.is_final,
                    response: r.response,
                },
            ),
            Ok(DiagMessage::CommandFailed(f)) => {
                self.route(conn, f.command_id, AgentEvent::Failed(f.error));
            }
            Ok(DiagMessage::Error(e)) => {
                tracing::warn!(code = ?e.code, message = %e.message, "the agent reported an error on the diagnostics channel");
            }
            Ok(other) => {
                self.inner.metrics.ignored("unexpected");
                send_error(
                    out,
                    ErrorCode::BadMessage,
                    &format!("`{}` is not expected from an agent here", other.type_name()),
                );
            }
            Err(err) => {
                self.inner.metrics.ignored("bad_message");
                send_error(out, ErrorCode::BadMessage, &err.to_string());
            }
        }
    }
}

impl DiagChannel for AgentHub {
    fn serve(&self, socket: WebSocket, hello: Bytes, agent: Agent) -> BoxFuture<'static, ()> {
        Box::pin(self.clone().serve_conn(socket, hello, agent))
    }
}

fn error_text(code: ErrorCode, message: &str) -> String {
    let message = crate::dataplane::clip(message.to_owned());
    encode_diag(&DiagMessage::Error(ErrorMessage { code, message })).unwrap_or_default()
}

fn send_error(out: &mpsc::UnboundedSender<String>, code: ErrorCode, message: &str) {
    let _ = out.send(error_text(code, message));
}

async fn refuse(
    sink: &mut futures::stream::SplitSink<WebSocket, WsMessage>,
    code: ErrorCode,
    message: String,
) {
    let _ = sink
        .send(WsMessage::Text(error_text(code, &message).into()))
        .await;
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code: close_code::POLICY,
            reason: "refused".into(),
        })))
        .await;
}

/// Runs commands through the vehicle's agent.
#[derive(Debug, Clone)]
pub struct AgentConnector {
    hub: AgentHub,
}

impl AgentConnector {
    /// A connector over `hub`'s connections.
    pub fn new(hub: AgentHub) -> AgentConnector {
        AgentConnector { hub }
    }
}

impl Connector for AgentConnector {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn run(&self, job: Arc<Job>, report: Reporter) -> BoxFuture<'static, Reporter> {
        Box::pin(run(self.hub.clone(), job, report))
    }
}

fn until(at: chrono::DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

async fn run(hub: AgentHub, job: Arc<Job>, mut report: Reporter) -> Reporter {
    let Some(dongle) = job.vehicle.dongle_id else {
        report
            .failed("vehicle offline: the vehicle has no dongle")
            .await;
        return report;
    };
    let mut changed = hub.inner.changed.subscribe();
    let mut attempt = 1;
    'attempts: loop {
        let mut request = CommandRequest {
            command_id: job.command_id,
            dongle_id: dongle,
            command_name: job.command.name().to_owned(),
            command_params: job.command_params.clone(),
            ecus: job.vehicle.ecus.clone(),
            attempt,
            deadline_ms: 0,
        };
        // Wait for a connection serving the dongle, until the ttl.
        let (mut events, answer_deadline) = loop {
            changed.mark_unchanged();
            let answer_deadline =
                tokio::time::Instant::now() + until(job.deadline).max(MIN_ANSWER_WAIT);
            let deadline_at = Utc::now()
                + chrono::Duration::from_std(until(job.deadline).max(MIN_ANSWER_WAIT))
                    .unwrap_or_default();
            request.deadline_ms = u64::try_from(deadline_at.timestamp_millis()).unwrap_or(0);
            match hub.dispatch_anywhere(&request).await {
                Dispatch::Sent(events) => break (events, answer_deadline),
                Dispatch::Fenced => {
                    tracing::info!(command = %job.command_id, "another instance adopted the command; dropped here");
                    report.abandon();
                    return report;
                }
                Dispatch::NotYet => {}
            }
            let left = until(job.deadline);
            if left.is_zero() {
                let error = if attempt == 1 {
                    VEHICLE_OFFLINE
                } else {
                    INTERRUPTED_AGENT
                };
                report.failed(error).await;
                return report;
            }
            // Another instance's connections do not wake `changed`: look again regularly.
            let wait = if hub.inner.remote.is_some() {
                left.min(super::remote::ANNOUNCE_EVERY)
            } else {
                left
            };
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        };
        report.started().await;
        let mut expected = 1;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(AgentEvent::InProgress) => report.started().await,
                    Some(AgentEvent::Response { sequence_number, is_final, response }) => {
                        if sequence_number != expected {
                            hub.inner.metrics.ignored("out_of_order");
                            tracing::warn!(command = %job.command_id, sequence_number, expected, "a response out of sequence was ignored");
                            continue;
                        }
                        expected += 1;
                        report.response(response, is_final).await;
                        if is_final || report.is_ended() {
                            hub.forget(job.command_id);
                            return report;
                        }
                    }
                    Some(AgentEvent::Failed(error)) => {
                        hub.forget(job.command_id);
                        report.failed(&error).await;
                        return report;
                    }
                    Some(AgentEvent::Undelivered) => {
                        hub.forget(job.command_id);
                        continue 'attempts;
                    }
                    Some(AgentEvent::Fenced) => {
                        hub.forget(job.command_id);
                        tracing::info!(command = %job.command_id, "another instance adopted the command; dropped here");
                        report.abandon();
                        return report;
                    }
                    Some(AgentEvent::Disconnected) | None => {
                        hub.forget(job.command_id);
                        if job.command.is_read_only() && attempt == 1 && !report.has_responses()
                            && !until(job.deadline).is_zero()
                        {
                            attempt = 2;
                            hub.inner.metrics.retries.inc();
                            tracing::info!(command = %job.command_id, "agent disconnected mid-command; the read-only command will be sent once more");
                            continue 'attempts;
                        }
                        report.failed(INTERRUPTED_AGENT).await;
                        return report;
                    }
                },
                () = tokio::time::sleep_until(answer_deadline) => {
                    hub.forget(job.command_id);
                    report.failed("timeout").await;
                    return report;
                }
            }
        }
    }
}
