//! Shared by the `agent_dongle_*` tests: a loopback stand-in for the server's agent REST calls
//! and `/ws/data` (speaking `relay_core::protocol`, checking seqs and contents), an in-process
//! REMP dongle, and helpers to run the real `tether agent` binary.
//!
//! The stand-in stores every outbound frame by seq and records a violation whenever a
//! retransmitted seq carries a different frame or a batch leaves a hole — so a test that ends
//! with no violations and the expected stream proves nothing was lost, duplicated or renumbered.

#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message as WsMsg, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use can_io::CanRecord;
use can_io::frame::{CanFrame, CanId, Channel, DataFrame, Direction};
use can_io::wire::remp::{RempEvent, RempReceiver, RempSender};
use relay_core::engine::{GroupMode, Side};
use relay_core::protocol::{
    self, Ack, Encoding, ErrorCode, ErrorMessage, FrameBatch, Message, Welcome, WireFrame,
};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub const TOKEN: &str = "agent-token-123";
pub const GUARD: Duration = Duration::from_secs(60);

/// `(group, side)`.
pub type Key = (String, String);

#[derive(Default)]
pub struct Inner {
    /// serial → dongle id.
    pub dongles: HashMap<String, String>,
    /// dongle id → (group, side, mode).
    pub groups: HashMap<String, (String, String, String)>,
    /// Outbound frames stored per stream, index = seq − 1; `None` is a seq the agent skipped
    /// at the start of a connection (the real server reports it as `missing`).
    pub streams: HashMap<Key, Vec<Option<WireFrame>>>,
    /// Frames for the agent per stream, index = seq − 1.
    pub to_agent: HashMap<Key, Vec<WireFrame>>,
    /// The agent's cumulative ack of `to_agent`.
    pub agent_acked: HashMap<Key, u64>,
    /// Every hello received.
    pub hellos: Vec<protocol::Hello>,
    /// Broken rules.
    pub violations: Vec<String>,
    /// Frames received in `frames` messages, retransmits included.
    pub frames_received: u64,
    /// When set, frames are stored but not acknowledged.
    pub hold_acks: bool,
    /// Connections currently open.
    pub open: u64,
    /// Refuse this many more `frames` batches with `group_inactive` (a deactivation racing
    /// frames in flight).
    pub refuse_batches: u32,
}

#[derive(Clone)]
pub struct Mock {
    pub inner: Arc<Mutex<Inner>>,
    kill: Arc<watch::Sender<u64>>,
}

pub struct MockServer {
    pub addr: SocketAddr,
    pub mock: Mock,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"))
}

async fn announce(
    State(m): State<Mock>,
    h: HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let serial = body["serial"].as_str().unwrap_or_default().to_owned();
    let mut g = m.inner.lock().unwrap();
    let created = !g.dongles.contains_key(&serial);
    let id = g
        .dongles
        .entry(serial.clone())
        .or_insert_with(|| format!("d-{serial}"))
        .clone();
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        code,
        axum::Json(json!({"id": id, "serial": serial, "agent_id": "agent-1"})),
    )
        .into_response()
}

async fn dongle(State(m): State<Mock>, h: HeaderMap, AxPath(id): AxPath<String>) -> Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let g = m.inner.lock().unwrap();
    let Some(serial) = g
        .dongles
        .iter()
        .find(|(_, v)| **v == id)
        .map(|(k, _)| k.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let group = g
        .groups
        .get(&id)
        .map(|(gid, side, mode)| json!({"id": gid, "side": side, "mode": mode}));
    axum::Json(json!({"id": id, "serial": serial, "group": group})).into_response()
}

async fn ws(State(m): State<Mock>, h: HeaderMap, up: WebSocketUpgrade) -> Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    up.on_upgrade(move |s| session(m, s))
}

fn side_str(s: Side) -> &'static str {
    match s {
        Side::A => "a",
        Side::B => "b",
    }
}

fn mode_of(s: &str) -> GroupMode {
    match s {
        "active" => GroupMode::Active,
        "degraded" => GroupMode::Degraded,
        _ => GroupMode::Inactive,
    }
}

async fn send(sock: &mut WebSocket, m: &Message, enc: Encoding) -> bool {
    let bytes = protocol::encode(m, enc).unwrap();
    let msg = match enc {
        Encoding::Json => WsMsg::Text(String::from_utf8(bytes).unwrap().into()),
        Encoding::Msgpack => WsMsg::Binary(bytes.into()),
    };
    sock.send(msg).await.is_ok()
}

async fn session(m: Mock, mut sock: WebSocket) {
    let mut kill = m.kill.subscribe();
    let Some(Ok(WsMsg::Text(first))) = sock.recv().await else {
        return;
    };
    let hello = protocol::decode_hello(first.as_bytes()).expect("hello");
    let key: Key = (hello.group_id.clone(), side_str(hello.side).to_owned());
    let (tx_acked, mode) = {
        let mut g = m.inner.lock().unwrap();
        g.hellos.push(hello.clone());
        g.open += 1;
        let mode = g
            .groups
            .values()
            .find(|(gid, side, _)| *gid == key.0 && *side == key.1)
            .map(|(_, _, mode)| mode_of(mode));
        (g.streams.get(&key).map_or(0, |s| s.len() as u64), mode)
    };
    let Some(mut mode) = mode else {
        let e = Message::Error(ErrorMessage {
            code: ErrorCode::Unauthorized,
            message: "not your group".into(),
        });
        send(&mut sock, &e, Encoding::Json).await;
        m.inner.lock().unwrap().open -= 1;
        return;
    };
    let enc = protocol::negotiate_encoding(&hello.encodings, &[Encoding::Msgpack, Encoding::Json]);
    let welcome = Message::Welcome(Welcome {
        version: 1,
        encoding: enc,
        tx_acked,
        rx_from: hello.resume.rx_seq,
        mode,
    });
    send(&mut sock, &welcome, Encoding::Json).await;
    let mut delivered = hello.resume.rx_seq;
    let mut first_batch = true;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = kill.changed() => break,
            _ = tick.tick() => {
                // Mode changes and frames for the agent.
                let (new_mode, out) = {
                    let g = m.inner.lock().unwrap();
                    let md = g.groups.values()
                        .find(|(gid, side, _)| *gid == key.0 && *side == key.1)
                        .map(|(_, _, md)| mode_of(md)).unwrap_or(GroupMode::Inactive);
                    let all = g.to_agent.get(&key).cloned().unwrap_or_default();
                    let from = usize::try_from(delivered).unwrap();
                    let out: Vec<WireFrame> = all.iter().skip(from).take(200).cloned().collect();
                    (md, out)
                };
                if new_mode != mode {
                    mode = new_mode;
                    let s = Message::GroupState(protocol::GroupState {
                        group_id: key.0.clone(),
                        mode,
                        backlog: Default::default(),
                        offline: vec![],
                    });
                    if !send(&mut sock, &s, enc).await { break; }
                }
                if !out.is_empty() {
                    let n = out.len() as u64;
                    let b = Message::Frames(FrameBatch { first_seq: delivered + 1, frames: out });
                    if !send(&mut sock, &b, enc).await { break; }
                    delivered += n;
                }
            }
            msg = sock.recv() => {
                let bytes = match msg {
                    Some(Ok(WsMsg::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(WsMsg::Binary(b))) => b.to_vec(),
                    Some(Ok(WsMsg::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let decoded = protocol::decode(&bytes, enc);
                let msg = match decoded {
                    Ok(x) => x,
                    Err(e) => {
                        m.inner.lock().unwrap().violations.push(format!("undecodable message: {e}"));
                        break;
                    }
                };
                match msg {
                    Message::Frames(b) => {
                        let refuse = {
                            let mut g = m.inner.lock().unwrap();
                            let r = g.refuse_batches > 0;
                            g.refuse_batches = g.refuse_batches.saturating_sub(1);
                            r
                        };
                        // As on the real server, a refused batch uses up the first batch's
                        // allowance to skip seqs.
                        let first_batch = std::mem::replace(&mut first_batch, false);
                        if mode == GroupMode::Inactive || refuse {
                            let e = Message::Error(ErrorMessage {
                                code: ErrorCode::GroupInactive,
                                message: "group is not active".into(),
                            });
                            send(&mut sock, &e, enc).await;
                            continue;
                        }
                        let (ack, hold) = {
                            let mut g = m.inner.lock().unwrap();
                            g.frames_received += b.frames.len() as u64;
                            let mut violations = Vec::new();
                            let stream = g.streams.entry(key.clone()).or_default();
                            let held = stream.len() as u64;
                            if b.first_seq > held + 1 && !first_batch {
                                violations.push(format!(
                                    "{key:?}: batch at {} leaves a hole after {held}",
                                    b.first_seq
                                ));
                            } else {
                                // Only a connection's first batch may skip seqs (as on the
                                // real server).
                                stream.resize(stream.len().max(usize::try_from(b.first_seq - 1).unwrap()), None);
                                for (seq, f) in (b.first_seq..).zip(b.frames) {
                                    let held = stream.len() as u64;
                                    if seq <= held {
                                        let i = usize::try_from(seq - 1).unwrap();
                                        if stream[i].as_ref() != Some(&f) {
                                            violations.push(format!("{key:?}: seq {seq} resent with other content"));
                                        }
                                    } else {
                                        stream.push(Some(f));
                                    }
                                }
                            }
                            let ack = stream.len() as u64;
                            g.violations.extend(violations);
                            (ack, g.hold_acks)
                        };
                        if !hold && !send(&mut sock, &Message::Ack(Ack { up_to: ack }), enc).await {
                            break;
                        }
                    }
                    Message::Ack(a) => {
                        let mut g = m.inner.lock().unwrap();
                        let cur = g.agent_acked.entry(key.clone()).or_default();
                        *cur = (*cur).max(a.up_to);
                    }
                    other => {
                        m.inner.lock().unwrap().violations.push(format!("unexpected {}", other.type_name()));
                    }
                }
            }
        }
    }
    m.inner.lock().unwrap().open -= 1;
}

impl MockServer {
    pub async fn start() -> MockServer {
        let (kill, _) = watch::channel(0u64);
        let mock = Mock {
            inner: Arc::new(Mutex::new(Inner::default())),
            kill: Arc::new(kill),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = MockServer {
            addr,
            mock,
            task: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/v1/agent/dongles", post(announce))
            .route("/api/v1/agent/dongles/{id}", get(dongle))
            .route("/ws/data", get(ws))
            .with_state(self.mock.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Unreachable: stop listening and drop every WebSocket.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.mock.kill.send_modify(|g| *g += 1);
        eventually("connections closed", || self.inner().open == 0).await;
    }

    /// Listen again on the same port, with the same state.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.mock.inner.lock().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Put `serial` (once announced) in `group` as `side` with `mode`.
    pub fn assign(&self, serial: &str, group: &str, side: &str, mode: &str) {
        let mut g = self.inner();
        let id = g
            .dongles
            .entry(serial.to_owned())
            .or_insert_with(|| format!("d-{serial}"))
            .clone();
        g.groups
            .insert(id, (group.to_owned(), side.to_owned(), mode.to_owned()));
    }

    /// The frames stored for a stream, in seq order (skipped seqs left out).
    pub fn stream(&self, group: &str, side: &str) -> Vec<WireFrame> {
        self.inner()
            .streams
            .get(&(group.to_owned(), side.to_owned()))
            .map(|s| s.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Seqs the agent skipped at the start of a connection.
    pub fn skipped(&self, group: &str, side: &str) -> usize {
        self.inner()
            .streams
            .get(&(group.to_owned(), side.to_owned()))
            .map_or(0, |s| s.iter().filter(|f| f.is_none()).count())
    }

    pub fn push_to_agent(&self, group: &str, side: &str, frames: &[WireFrame]) {
        self.inner()
            .to_agent
            .entry((group.to_owned(), side.to_owned()))
            .or_default()
            .extend_from_slice(frames);
    }

    pub fn agent_acked(&self, group: &str, side: &str) -> u64 {
        self.inner()
            .agent_acked
            .get(&(group.to_owned(), side.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn hellos_for(&self, group: &str) -> Vec<protocol::Hello> {
        self.inner()
            .hellos
            .iter()
            .filter(|h| h.group_id == group)
            .cloned()
            .collect()
    }

    pub fn assert_no_violations(&self) {
        let v = self.inner().violations.clone();
        assert!(v.is_empty(), "protocol violations: {v:#?}");
    }
}

/// Poll `cond` until it holds, or panic after [`GUARD`].
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    tether_testkit::poll::wait_until_sync(GUARD, what, cond).await
}

/// Says hello from `dongle` until the agent has a data-plane session for `group` (fails with
/// the agent's log after [`GUARD`]).
pub async fn until_session(
    server: &MockServer,
    agent: &Agent,
    dongle: &mut SimDongle,
    group: &str,
) {
    hello_until(agent, dongle, "no session", || {
        !server.hellos_for(group).is_empty()
    })
    .await;
}

/// Says hello from `dongle` until `done` holds (fails with `what` and the agent's log after
/// [`GUARD`]).
pub async fn hello_until(
    agent: &Agent,
    dongle: &mut SimDongle,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; log:\n{}",
            agent.log_text()
        );
        dongle.hello().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What every test starts from: the stand-in server, a scratch directory holding the agent's
/// config, and the agent's dongle (UDP) and metrics ports.
pub struct Rig {
    pub server: MockServer,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub udp: u16,
    pub metrics: u16,
}

impl Rig {
    /// A rig with the default config ([`write_config`]).
    pub async fn new() -> Rig {
        Rig::with_dongle_config("").await
    }

    /// A rig whose config's `dongle:` section ends with `extra` (indented YAML lines).
    pub async fn with_dongle_config(extra: &str) -> Rig {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (udp, metrics) = (free_udp_port(), free_tcp_port());
        let config = write_config(dir.path(), &server.url(), udp, metrics);
        if !extra.is_empty() {
            let mut yaml = std::fs::read_to_string(&config).unwrap();
            yaml.push_str(extra);
            std::fs::write(&config, yaml).unwrap();
        }
        Rig {
            server,
            dir,
            config,
            udp,
            metrics,
        }
    }

    /// Starts `tether agent` on the rig's config; `run` numbers its log file.
    pub fn agent(&self, run: u32) -> Agent {
        Agent::start(self.dir.path(), &self.config, self.udp, self.metrics, run)
    }

    /// `serial` in `group` as `side` (active), the agent started, and the dongle saying hello
    /// until the agent has a data-plane session for the group.
    pub async fn session(&self, serial: &str, group: &str, side: &str) -> (Agent, SimDongle) {
        self.server.assign(serial, group, side, "active");
        let agent = self.agent(1);
        let mut dongle = SimDongle::new(serial, agent.udp).await;
        until_session(&self.server, &agent, &mut dongle, group).await;
        (agent, dongle)
    }
}

/// The capture shipped with the project.
pub use tether_testkit::capture_path;

/// The first `n` records of the shipped capture.
pub fn capture(n: usize) -> Vec<CanRecord> {
    let f = std::fs::File::open(capture_path()).expect("capture");
    let reader = can_io::formats::LogReader::new(
        can_io::formats::LogFormat::Candump,
        std::io::BufReader::new(f),
    );
    reader
        .filter_map(|l| match l.expect("line").entry {
            can_io::formats::Entry::Record(r) => Some(r),
            _ => None,
        })
        .take(n)
        .collect()
}

/// `n` synthetic frames for the agent (distinct ids and payloads).
pub fn synthetic(group: &str, n: u32, base: u32) -> Vec<WireFrame> {
    (0..n)
        .map(|i| {
            let k = base + i;
            let id = CanId::new(0x100 + (k % 0x600), false).unwrap();
            let data = k.to_be_bytes();
            let rec = CanRecord::new(
                1_700_000_000_000_000_000 + u64::from(k) * 1000,
                Channel::from("can0"),
                Direction::Rx,
                CanFrame::Data(DataFrame::new(id, &data).unwrap()),
            );
            WireFrame::from_record(group, &rec)
        })
        .collect()
}

/// Is the relay frame the same CAN frame as `r` (id, payload, timestamp, direction)?
pub fn same_frame(w: &WireFrame, r: &CanRecord) -> bool {
    let other = WireFrame::from_record(&w.group_id, r);
    w.can_id == other.can_id
        && w.data == other.data
        && w.ts == other.ts
        && w.direction == other.direction
        && w.is_extended == other.is_extended
}

/// An in-process REMP dongle.
pub struct SimDongle {
    pub sock: UdpSocket,
    pub agent: SocketAddr,
    pub sender: RempSender,
    pub receiver: RempReceiver,
    pub received: Vec<CanRecord>,
}

impl SimDongle {
    pub async fn new(serial: &str, agent: SocketAddr) -> SimDongle {
        SimDongle {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            agent,
            sender: RempSender::new(serial, rand::random(), 1000).unwrap(),
            receiver: RempReceiver::default(),
            received: Vec::new(),
        }
    }

    pub async fn hello(&mut self) {
        let d = self.sender.hello().unwrap();
        self.sock.send_to(&d, self.agent).await.unwrap();
    }

    pub async fn keepalive(&mut self) {
        let d = self.sender.keepalive().unwrap();
        self.sock.send_to(&d, self.agent).await.unwrap();
    }

    /// Send records, a few datagrams at a time (loopback UDP still drops when flooded).
    pub async fn send(&mut self, records: &[CanRecord]) {
        for chunk in records.chunks(60) {
            for r in chunk {
                for d in self.sender.push(r).unwrap() {
                    self.sock.send_to(&d, self.agent).await.unwrap();
                }
            }
            if let Some(d) = self.sender.flush().unwrap() {
                self.sock.send_to(&d, self.agent).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Receive until `n` frames arrived in total (or panic after the guard).
    pub async fn receive(&mut self, n: usize) {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + GUARD;
        while self.received.len() < n {
            let r = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await;
            let (len, _) = r.expect("timed out receiving from the agent").unwrap();
            if let RempEvent::Frames { records, .. } =
                self.receiver.handle_datagram(&buf[..len], 0).unwrap()
            {
                self.received.extend(records);
            }
        }
    }
}

pub use tether_testkit::{free_tcp_port, free_udp_port};

/// One dongle's series of an agent's metrics (`Agent::dongle_metrics`), named without the
/// `tether_agent_dongle_` prefix and the `serial` label.
pub struct DongleMetrics<'a> {
    agent: &'a Agent,
    serial: &'a str,
}

impl DongleMetrics<'_> {
    /// `tether_agent_dongle_{name}{serial="…"}`.
    pub fn series(&self, name: &str) -> String {
        format!("tether_agent_dongle_{name}{{serial=\"{}\"}}", self.serial)
    }

    /// `tether_agent_dongle_frames_dropped_total{serial="…",reason="…"}`.
    pub fn dropped_series(&self, reason: &str) -> String {
        let serial = self.serial;
        format!(
            "tether_agent_dongle_frames_dropped_total{{serial=\"{serial}\",reason=\"{reason}\"}}"
        )
    }

    /// Waits until the series `name` is `want` (as `Agent::wait_metric`).
    pub async fn wait(&self, name: &str, want: u64) {
        self.agent.wait_metric(&self.series(name), want).await;
    }

    /// Waits until the frames dropped for `reason` are `want`.
    pub async fn wait_dropped(&self, reason: &str, want: u64) {
        self.agent
            .wait_metric(&self.dropped_series(reason), want)
            .await;
    }

    /// The frames dropped for `reason` (`None` while the series is absent).
    pub async fn dropped(&self, reason: &str) -> Option<u64> {
        self.agent.metric(&self.dropped_series(reason)).await
    }

    /// Waits until the frames a full outbox removed are `want`: those counted as dropped
    /// (`outbox_full`) and those sent before their removal, which stay `outbox_unsettled` until
    /// the server's next handshake says whether it holds them.
    pub async fn wait_evicted(&self, want: u64) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let dropped = self.dropped("outbox_full").await;
            let unsettled = self.agent.metric(&self.series("outbox_unsettled")).await;
            if dropped.unwrap_or(0) + unsettled.unwrap_or(0) == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: outbox_full {dropped:?} + outbox_unsettled {unsettled:?}, wanted {want} in all; agent log:\n{}",
                self.serial,
                self.agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `tether agent`.
pub struct Agent {
    pub child: Child,
    pub udp: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// Write the agent's config into `dir`.
pub fn write_config(dir: &Path, server: &str, udp: u16, metrics: u16) -> PathBuf {
    let cfg = format!(
        "server_url: {server}\ntoken: ${{AGENT_TOKEN}}\ndata_dir: {}\ndongle:\n  listen: 127.0.0.1:{udp}\n  assignment_poll: 0.1\n  assignment_poll_active: 0.5\n  reconnect_min: 0.05\n  reconnect_max: 0.5\n  metrics_listen: 127.0.0.1:{metrics}\n  stats_interval: 1\n  log_level: info\n",
        dir.join("state").display()
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

impl Agent {
    pub fn start(dir: &Path, config: &Path, udp: u16, metrics: u16, run: u32) -> Agent {
        let log = dir.join(format!("agent-{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["agent", "--config"])
            .arg(config)
            .env("AGENT_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the agent");
        Agent {
            child,
            udp: ([127, 0, 0, 1], udp).into(),
            metrics: ([127, 0, 0, 1], metrics).into(),
            config: config.to_owned(),
            log,
        }
    }

    /// The Prometheus text (empty while the endpoint is not up).
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        tether_testkit::rest::get_text(&reqwest::Client::new(), &url)
            .await
            .unwrap_or_default()
    }

    /// The value of a metric line starting with `prefix` (`None` when absent, or while the
    /// endpoint is not up).
    pub async fn metric(&self, prefix: &str) -> Option<u64> {
        let text = self.metrics_text().await;
        tether_testkit::metrics::metric_with_prefix(&text, prefix).map(|v| v as u64)
    }

    /// Waits until the metric line is present with value `want` (an absent line never
    /// matches, not even `want == 0`).
    pub async fn wait_metric(&self, prefix: &str, want: u64) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let v = self.metric(prefix).await;
            if v == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{prefix} stayed at {v:?}, wanted {want}; agent log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's `tether_agent_dongle_*` series of the dongle `serial`.
    pub fn dongle_metrics<'a>(&'a self, serial: &'a str) -> DongleMetrics<'a> {
        DongleMetrics {
            agent: self,
            serial,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        tether_testkit::process::kill9(&mut self.child);
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        tether_testkit::process::terminate(&mut self.child, GUARD).success()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        tether_testkit::process::kill9(&mut self.child);
    }
}
