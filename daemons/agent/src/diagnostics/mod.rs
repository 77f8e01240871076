//! The `diagnostics` role: runs the server's vehicle commands as UDS over ISO-TP on the
//! vehicles' CAN buses and streams the ECUs' answers back (`docs/agent.md`, the diagnostics
//! channel in `docs/protocols/data-plane.md`).
//!
//! * Each configured bus (`socketcan://can0`, `udp://…` where a REMP dongle sends, …) is
//!   opened at start and announced to the server under its serial (`POST
//!   /api/v1/agent/dongles`), which gives the dongle id vehicles name. A `dongle: SERIAL` bus
//!   is a dongle the `dongle` role of the same process serves: the role runs on its tap
//!   (`crate::dongle::tap`) — the frames its commands listen on (the ECUs' response ids) are
//!   copied to it while the relay still gets every frame, and its requests go to the dongle
//!   through the dongle role's socket and REMP sender, not to the group's other side.
//! * One `GET /ws/data` connection opens with `diag_hello` listing those dongle ids; on
//!   `diag_welcome` the role takes `command`s. It reconnects with full-jitter backoff
//!   (`tether-retry`) between `reconnect_min` and `reconnect_max`; a lost connection moves it
//!   on to the next server of `server_url` ([`crate::servers::Failover`]).
//! * Each command is parsed (`can_io::uds::DiagCommand`), waits for its ECU's turn (one command
//!   at a time per ECU, different ECUs in parallel, a functional request alone on its bus),
//!   reports `command_status: in_progress`, runs on its own tester (`can_io::uds::exec`) and
//!   streams `command_response`s (the last `is_final`) or one `command_failed`.
//! * A connection that drops ends the commands running on it; the server fails or re-sends
//!   them. Messages that could not be sent are counted (`undelivered`) and logged.
//!
//! What it does not do: keep sessions alive between commands, retry a command itself, or
//! keep a relayed group's other side from talking to the same ECUs (a shared dongle's bus is
//! the vehicle's; another tester there is the user's business).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use can_io::uds::exec::{ExecError, ExecPlan, execute};
use can_io::uds::{DiagCommand, UdsTester};
use futures::{SinkExt, StreamExt};
use relay_core::protocol::diag::{
    AgentCommandStatus, CommandFailed, CommandRequest, CommandResponse, CommandStatusUpdate,
    DiagHello, DiagMessage, decode_diag, encode_diag,
};
use tether_retry::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{info, warn};
use uuid::Uuid;

pub mod bus;
pub mod config;

use crate::dongle::tap::DongleTaps;
use crate::servers::{Failover, next_delay, reconnect_backoff};
use bus::DiagBusHandle;
use config::DiagnosticsRole;

/// Waits for the WebSocket handshake and the `diag_welcome`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Diagnostics protocol version.
const VERSION: u16 = 1;

/// Counters of the role.
#[derive(Debug, Default)]
pub struct DiagCounters {
    /// Commands received.
    pub commands: AtomicU64,
    /// Commands that ended with a final response.
    pub completed: AtomicU64,
    /// Commands that ended with `command_failed`.
    pub failed: AtomicU64,
    /// Commands cut off by a dropped connection.
    pub interrupted: AtomicU64,
    /// Messages for the server that could not be sent (connection gone).
    pub undelivered: AtomicU64,
    /// Server messages that did not decode.
    pub bad_messages: AtomicU64,
}

impl DiagCounters {
    fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} commands: {} completed, {} failed, {} interrupted; {} messages undelivered, {} bad server messages",
            g(&self.commands),
            g(&self.completed),
            g(&self.failed),
            g(&self.interrupted),
            g(&self.undelivered),
            g(&self.bad_messages)
        )
    }
}

/// Runs the role until `stop` completes. Errors are start-up failures (a bus that cannot be
/// opened); once running it retries on its own.
pub async fn run(role: DiagnosticsRole, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_counters(role, Arc::new(DiagCounters::default()), stop).await
}

/// [`run`] with the caller's counters (tests and benches read them).
pub async fn run_with_counters(
    role: DiagnosticsRole,
    counters: Arc<DiagCounters>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_taps(role, DongleTaps::default(), counters, stop).await
}

/// [`run_with_counters`] next to a dongle role that serves the role's `dongle:` buses through
/// `taps` (the same value given to [`crate::dongle::run_with_taps`]).
pub async fn run_with_taps(
    role: DiagnosticsRole,
    taps: DongleTaps,
    counters: Arc<DiagCounters>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut buses = Vec::new();
    for b in &role.buses {
        let h = DiagBusHandle::open(b, &taps, stop_rx.clone())
            .await
            .with_context(|| format!("opening diagnostics bus {b} ({})", b.serial))?;
        info!(serial = %b.serial, bus = %b, "diagnostics bus open");
        buses.push(h);
    }
    let servers = Arc::new(Failover::new(role.servers.clone()));
    let api = crate::dongle::api::ServerApi::new(servers.clone(), &role.token)?;
    tokio::select! {
        () = stop => {}
        () = session_loop(&role, &servers, &api, &buses, &counters) => {}
    }
    let _ = stop_tx.send(true);
    for b in &buses {
        let c = &b.counters;
        info!(serial = %b.serial, frames_in = c.frames_in.load(Ordering::Relaxed),
            frames_out = c.frames_out.load(Ordering::Relaxed),
            send_failed = c.send_failed.load(Ordering::Relaxed),
            tester_dropped = c.tester_dropped.load(Ordering::Relaxed),
            tap_dropped = b.tap_dropped(), "diagnostics bus totals");
    }
    info!("diagnostics role stopped: {}", counters.summary());
    Ok(())
}

/// Announce, connect, serve; again after a failure, with backoff.
async fn session_loop(
    role: &DiagnosticsRole,
    servers: &Failover,
    api: &crate::dongle::api::ServerApi,
    buses: &[Arc<DiagBusHandle>],
    counters: &Arc<DiagCounters>,
) {
    let mut backoff = reconnect_backoff(role.reconnect_min, role.reconnect_max);
    let mut by_id: HashMap<Uuid, Arc<DiagBusHandle>> = HashMap::new();
    loop {
        if by_id.len() < buses.len() {
            for b in buses {
                if by_id.values().any(|x| Arc::ptr_eq(x, b)) {
                    continue;
                }
                match api.announce(&b.serial).await {
                    Ok(id) => match Uuid::parse_str(&id) {
                        Ok(id) => {
                            info!(serial = %b.serial, dongle_id = %id, "diagnostics bus announced");
                            by_id.insert(id, b.clone());
                        }
                        Err(_) => {
                            warn!(serial = %b.serial, %id, "the server's dongle id is not a UUID")
                        }
                    },
                    Err(e) => warn!(serial = %b.serial, error = %e, "announcing the bus failed"),
                }
            }
        }
        if !by_id.is_empty() {
            let (index, server) = servers.current();
            match serve(role, server, &by_id, counters, &mut backoff).await {
                Ok(()) => info!(%server, "diagnostics connection closed by the server"),
                Err(e) => {
                    warn!(%server, error = %format!("{e:#}"), "diagnostics connection failed")
                }
            }
            let (next, url) = servers.failed(index);
            if next != index {
                info!(next = %url, "diagnostics: moving to the next server");
            }
        }
        tokio::time::sleep(next_delay(&mut backoff)).await;
    }
}

/// One connection: hello, welcome, then commands until it ends.
async fn serve(
    role: &DiagnosticsRole,
    server: &crate::servers::ServerUrl,
    by_id: &HashMap<Uuid, Arc<DiagBusHandle>>,
    counters: &Arc<DiagCounters>,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let ws =
        crate::dongle::worker::connect_ws(&server.ws("/ws/data"), &role.token, HANDSHAKE_TIMEOUT)
            .await?;
    let (mut sink, mut stream) = ws.split();
    let mut dongles: Vec<Uuid> = by_id.keys().copied().collect();
    dongles.sort_unstable();
    let hello = DiagMessage::DiagHello(DiagHello {
        version: VERSION,
        dongles,
    });
    sink.send(WsMessage::text(encode_diag(&hello)?))
        .await
        .context("sending diag_hello")?;
    let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    return decode_diag(t.as_bytes()).map_err(anyhow::Error::from);
                }
                Some(Ok(WsMessage::Close(f))) => bail!("closed before diag_welcome: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before diag_welcome"),
            }
        }
    })
    .await
    .context("no diag_welcome in time")??;
    match welcome {
        DiagMessage::DiagWelcome(w) => {
            for id in &w.refused {
                let serial = by_id.get(id).map(|b| b.serial.as_str()).unwrap_or("?");
                warn!(dongle_id = %id, %serial, "the server refused this bus (not announced by this agent's token)");
            }
            if w.dongles.is_empty() {
                bail!("the server accepted none of the buses");
            }
            info!(
                accepted = w.dongles.len(),
                refused = w.refused.len(),
                "diagnostics channel open"
            );
        }
        DiagMessage::Error(e) => bail!(
            "the server refused diag_hello: {} ({:?})",
            e.message,
            e.code
        ),
        other => bail!("expected diag_welcome, got {}", other.type_name()),
    }
    backoff.reset();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<DiagMessage>();
    let mut tasks: JoinSet<Uuid> = JoinSet::new();
    let mut running: HashSet<Uuid> = HashSet::new();
    let result = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Text(t))) => match decode_diag(t.as_bytes()) {
                    Ok(DiagMessage::Command(c)) => {
                        counters.commands.fetch_add(1, Ordering::Relaxed);
                        if !running.insert(c.command_id) {
                            warn!(command_id = %c.command_id, "command already running: ignored");
                            continue;
                        }
                        let bus = by_id.get(&c.dongle_id).cloned();
                        let out = out_tx.clone();
                        let counters = counters.clone();
                        let timing = role.timing;
                        tasks.spawn(async move {
                            let id = c.command_id;
                            run_command(c, bus, timing, &out, &counters).await;
                            id
                        });
                    }
                    Ok(DiagMessage::Error(e)) => warn!(code = ?e.code, message = %e.message, "server error"),
                    Ok(other) => {
                        counters.bad_messages.fetch_add(1, Ordering::Relaxed);
                        warn!(kind = other.type_name(), "unexpected message on the diagnostics channel");
                    }
                    Err(e) => {
                        counters.bad_messages.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "undecodable message on the diagnostics channel");
                    }
                },
                Some(Ok(WsMessage::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading")),
            },
            Some(m) = out_rx.recv() => {
                let text = encode_diag(&m)?;
                if let Err(e) = sink.send(WsMessage::text(text)).await {
                    counters.undelivered.fetch_add(1, Ordering::Relaxed);
                    break Err(anyhow::Error::from(e).context("sending"));
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done {
                    running.remove(&id);
                }
            }
        }
    };
    // The commands still running lose their connection: the server fails or re-sends them.
    let cut = tasks.len() as u64;
    tasks.abort_all();
    counters.interrupted.fetch_add(cut, Ordering::Relaxed);
    drop(out_tx);
    let mut lost = 0u64;
    while out_rx.try_recv().is_ok() {
        lost += 1;
    }
    if lost > 0 || cut > 0 {
        counters.undelivered.fetch_add(lost, Ordering::Relaxed);
        warn!(
            commands = cut,
            messages = lost,
            "diagnostics connection ended: running commands interrupted, messages undelivered"
        );
    }
    result
}

/// The CAN ids a tester of `plan` hears answers on: its ECUs' response ids, or the OBD
/// layout's `0x7E8..=0x7EF` for a functional request to a vehicle without an ECU list (the
/// tester core `ExecPlan::tester_core` builds).
fn response_ids(plan: &ExecPlan) -> Vec<u32> {
    if plan.functional && plan.ecus.is_empty() {
        (0x7E8..=0x7EF).collect()
    } else {
        plan.ecus.iter().map(|e| e.response_id).collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run one command and report it on `out`.
async fn run_command(
    c: CommandRequest,
    bus: Option<Arc<DiagBusHandle>>,
    timing: can_io::uds::UdsTiming,
    out: &mpsc::UnboundedSender<DiagMessage>,
    counters: &DiagCounters,
) {
    let id = c.command_id;
    let fail = |error: String| {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        let _ = out.send(DiagMessage::CommandFailed(CommandFailed {
            command_id: id,
            error,
        }));
    };
    let Some(bus) = bus else {
        return fail(format!(
            "bus_error: this agent has no bus for dongle {}",
            c.dongle_id
        ));
    };
    let command = match DiagCommand::parse(&c.command_name, &c.command_params) {
        Ok(cmd) => cmd,
        Err(e) => return fail(format!("invalid_command: {e}")),
    };
    let plan = match ExecPlan::new(&command, &c.ecus) {
        Ok(p) => p,
        Err(e) => return fail(e.reason()),
    };
    // A shared dongle not heard from yet: nothing could reach it, so no waiting out the
    // deadline.
    if let Some(reason) = bus.unreachable() {
        return fail(reason);
    }
    let left = c.deadline_ms.saturating_sub(now_ms());
    if left == 0 {
        return fail("timeout".into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(left);
    let Ok(_turn) = tokio::time::timeout_at(deadline, bus.turn(&plan.queue_key())).await else {
        return fail("timeout".into());
    };
    let _ = out.send(DiagMessage::CommandStatus(CommandStatusUpdate {
        command_id: id,
        status: AgentCommandStatus::InProgress,
    }));
    let core = match plan.tester_core(timing) {
        Ok(c) => c,
        Err(e) => return fail(e.reason()),
    };
    // On a shared dongle, the ECUs' answers are copied to this bus while the command runs.
    let _listening = bus.listen(&response_ids(&plan));
    let mut tester = UdsTester::new(bus.port(), core);
    let mut seq = 0u32;
    let mut emit = |response: serde_json::Value, is_final: bool| {
        seq += 1;
        let _ = out.send(DiagMessage::CommandResponse(CommandResponse {
            command_id: id,
            sequence_number: seq,
            is_final,
            response,
        }));
    };
    let result =
        tokio::time::timeout_at(deadline, execute(&mut tester, &plan, &command, &mut emit))
            .await
            .unwrap_or(Err(ExecError::Timeout));
    match result {
        Ok(_) => {
            counters.completed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => fail(e.reason()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::diagnostics::config::{BusSource, DiagBus};
    use crate::dongle::tap::DongleLink;

    /// A command on a shared dongle the dongle role has not heard from fails at once with the
    /// reason, not with `timeout` at its deadline; once the dongle is heard it is sendable.
    #[tokio::test]
    async fn a_shared_dongle_not_heard_yet_fails_at_once() {
        let taps = DongleTaps::new(["VEH-1"]);
        let (_stop, stop_rx) = watch::channel(false);
        let bus = DiagBusHandle::open(
            &DiagBus {
                serial: "VEH-1".to_owned(),
                source: BusSource::Dongle,
            },
            &taps,
            stop_rx,
        )
        .await
        .unwrap();
        let (out, mut sent) = mpsc::unbounded_channel();
        let counters = DiagCounters::default();
        let command_id = Uuid::new_v4();
        let request = CommandRequest {
            command_id,
            dongle_id: Uuid::new_v4(),
            command_name: "ReadDTC".to_owned(),
            command_params: serde_json::json!({}),
            ecus: vec![],
            attempt: 1,
            deadline_ms: now_ms() + 60_000,
        };
        let started = std::time::Instant::now();
        run_command(
            request,
            Some(Arc::clone(&bus)),
            can_io::uds::UdsTiming::default(),
            &out,
            &counters,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(5), "it waited");
        match sent.try_recv() {
            Ok(DiagMessage::CommandFailed(f)) => {
                assert_eq!(f.command_id, command_id);
                assert!(
                    f.error.starts_with("bus_error: dongle VEH-1 not connected"),
                    "{}",
                    f.error
                );
            }
            other => panic!("expected command_failed, got {other:?}"),
        }
        assert!(sent.try_recv().is_err(), "nothing else is sent");
        assert_eq!(counters.failed.load(Ordering::Relaxed), 1);

        // The dongle role hears the dongle: requests can go out.
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let peer = socket.local_addr().unwrap();
        let link = DongleLink::new("VEH-1", socket, peer).unwrap();
        taps.get("VEH-1").unwrap().attach(Arc::new(link));
        assert_eq!(bus.unreachable(), None);
    }
}
