//! Group relay load driver for `scripts/bench-relay.sh`.
//!
//! `bench_relay relay --server URL --token TU …` sets up N groups through the REST API of a
//! running `tether server` (two agents — one owns every side-A dongle, the other every side-B
//! dongle — 2·N announced dongles, N activated groups), then opens one `/ws/data` connection per
//! side and behaves like a dongle agent: `hello` with MessagePack, frame batches at a fixed
//! rate per direction, cumulative acks of the inbound stream. Each frame carries its send time
//! (`ts`, ns since the epoch); the receiving side records `now − ts` as the added latency.
//!
//! `bench_relay echo …` is the ceiling of the same stack: an in-process plain WebSocket relay
//! (tokio-tungstenite, no storage, no protocol logic) that forwards each binary message to the
//! paired connection, driven by the same clients with the same MessagePack batches.
//!
//! Output: one line, `key=value` pairs (frames sent, delivered, lost, duplicated, rates,
//! latency percentiles). `lost` counts frames that will never arrive (announced in `gap`
//! notices, or sequence numbers skipped); it must be 0. `undelivered_at_end` counts frames
//! still on their way when the drain timeout ended (0 when `drained=true`). Latency covers
//! every delivered frame, including those delivered during the drain.
#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use can_io::wire::relay_json::{CanRelayFrame, RelayDirection};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use relay_core::engine::Side;
use relay_core::protocol::{
    self, Ack, Encoding, FrameBatch, Hello, Message, PROTOCOL_VERSION, ResumeCursor,
};
use serde_json::{Value, json};
use support::ErrorLog;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[path = "support/mod.rs"]
mod support;

#[derive(Debug, Parser)]
#[command(about = "Group relay load driver (scripts/bench-relay.sh)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Through a running `tether server` (`/ws/data`).
    Relay {
        #[command(flatten)]
        target: support::ServerArgs,
        /// Another instance of the same cluster: every group's side B connects there, side A
        /// to `--server` (`docs/cluster.md`).
        #[arg(long)]
        server_b: Option<String>,
        #[command(flatten)]
        load: Load,
    },
    /// Through an in-process plain WebSocket relay (the stack's ceiling).
    Echo {
        #[command(flatten)]
        load: Load,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Load {
    /// Group pairs (two connections each).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Frames per second per direction.
    #[arg(long, default_value_t = 4500)]
    rate: u64,
    #[command(flatten)]
    pace: support::Pace,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Counters shared by every connection.
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    duplicated: AtomicU64,
    gapped: AtomicU64,
    out_of_order: AtomicU64,
    errors: ErrorLog,
    latency_us: Mutex<Histogram<u64>>,
    stop_sending: AtomicBool,
}

impl Totals {
    fn new() -> anyhow::Result<Totals> {
        Ok(Totals {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            gapped: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            errors: ErrorLog::default(),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            stop_sending: AtomicBool::new(false),
        })
    }
}

/// One simulated agent connection (one side of one group).
struct Conn {
    group: String,
    side: Side,
    /// Frames sent by this side (read by the peer to know when it has everything).
    sent: Arc<AtomicU64>,
    /// Frames of the peer this side received.
    received: Arc<AtomicU64>,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a `/ws/data` connection and completes the handshake; returns the socket and encoding.
async fn connect_relay(
    ws_base: &str,
    agent_token: &str,
    group: &str,
    side: Side,
) -> anyhow::Result<(WsStream, Encoding)> {
    let mut request = format!("{ws_base}/ws/data").into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {agent_token}").parse()?);
    let config = Some(tether_runtime::ws::ws_client_config());
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, config, true)
        .await
        .context("connecting to /ws/data")?;
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        group_id: group.to_owned(),
        side,
        resume: ResumeCursor { rx_seq: 0 },
        encodings: vec![Encoding::Msgpack, Encoding::Json],
    });
    let text = String::from_utf8(protocol::encode(&hello, Encoding::Json)?)?;
    socket.send(WsMessage::text(text)).await?;
    loop {
        let Some(message) = socket.next().await else {
            bail!("closed before welcome")
        };
        if let WsMessage::Text(text) = message? {
            match protocol::decode(text.as_bytes(), Encoding::Json)? {
                Message::Welcome(welcome) => return Ok((socket, welcome.encoding)),
                Message::Error(error) => bail!("refused: {:?} {}", error.code, error.message),
                _ => {}
            }
        }
    }
}

/// Opens a connection to the echo relay and registers it as `group`/`side`.
async fn connect_echo(addr: SocketAddr, group: &str, side: Side) -> anyhow::Result<WsStream> {
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/"),
        Some(tether_runtime::ws::ws_client_config()),
        true,
    )
    .await?;
    let side = if side == Side::A { "a" } else { "b" };
    socket
        .send(WsMessage::text(
            json!({"group": group, "side": side}).to_string(),
        ))
        .await?;
    Ok(socket)
}

fn frame(group: &str, pair: u32, ts: u64, n: u64) -> CanRelayFrame {
    CanRelayFrame {
        group_id: group.to_owned(),
        direction: RelayDirection::Rx,
        ts,
        can_id: 0x100 + (pair & 0x3FF),
        is_extended: false,
        dlc: 8,
        data: n.to_be_bytes().to_vec(),
        channel: None,
        is_fd: false,
        brs: false,
        esi: false,
        is_remote: false,
        is_error: false,
        raw_dlc: None,
    }
}

/// Drives one connection: sends batches at the rate until told to stop, receives and acks the
/// peer's frames, checks their order and records their latency.
async fn drive(
    socket: WsStream,
    encoding: Encoding,
    conn: Conn,
    peer_sent: Arc<AtomicU64>,
    pair: u32,
    load: Load,
    totals: Arc<Totals>,
) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<WsMessage>(1024);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let wrap = move |bytes: Vec<u8>| -> WsMessage {
        match encoding {
            Encoding::Msgpack => WsMessage::binary(bytes),
            Encoding::Json => WsMessage::text(String::from_utf8_lossy(&bytes).into_owned()),
        }
    };
    // Sender.
    let sender = {
        let totals = Arc::clone(&totals);
        let out_tx = out_tx.clone();
        let sent = Arc::clone(&conn.sent);
        let group = conn.group.clone();
        let load = load.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut next_seq = 1u64;
            let mut tick = tokio::time::interval(Duration::from_millis(load.pace.batch_ms.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                if totals.stop_sending.load(Ordering::Relaxed) {
                    break;
                }
                let due =
                    u64::try_from(start.elapsed().as_micros() * u128::from(load.rate) / 1_000_000)
                        .unwrap_or(u64::MAX);
                let count = due.saturating_sub(next_seq - 1).min(4096);
                if count == 0 {
                    continue;
                }
                let ts = now_ns();
                let frames = (0..count)
                    .map(|i| frame(&group, pair, ts, next_seq + i))
                    .collect();
                let batch = Message::Frames(FrameBatch {
                    first_seq: next_seq,
                    frames,
                });
                let Ok(bytes) = protocol::encode(&batch, encoding) else {
                    totals.errors.push("encode failed".into());
                    break;
                };
                if out_tx.send(wrap(bytes)).await.is_err() {
                    break;
                }
                next_seq += count;
                sent.fetch_add(count, Ordering::Relaxed);
                totals.sent.fetch_add(count, Ordering::Relaxed);
            }
        })
    };
    // Receiver.
    let mut expected = 1u64;
    let mut last_acked_by_server = 0u64;
    loop {
        if totals.stop_sending.load(Ordering::Relaxed)
            && sender.is_finished()
            && conn.received.load(Ordering::Relaxed) >= peer_sent.load(Ordering::Relaxed)
            && last_acked_by_server >= conn.sent.load(Ordering::Relaxed)
        {
            break;
        }
        let message = tokio::select! {
            message = stream.next() => message,
            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        let bytes = match message {
            Some(Ok(WsMessage::Binary(b))) => b.to_vec(),
            Some(Ok(WsMessage::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(WsMessage::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let decoded = protocol::decode(&bytes, encoding);
        match decoded {
            Ok(Message::Frames(batch)) => {
                let now = now_ns();
                let mut fresh = 0u64;
                {
                    let mut latencies = totals.latency_us.lock().ok();
                    for (i, f) in batch.frames.iter().enumerate() {
                        let seq = batch.first_seq + i as u64;
                        if seq < expected {
                            totals.duplicated.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if seq > expected {
                            totals
                                .out_of_order
                                .fetch_add(seq - expected, Ordering::Relaxed);
                        }
                        expected = seq + 1;
                        fresh += 1;
                        if let Some(h) = latencies.as_mut() {
                            let _ = h.record((now.saturating_sub(f.ts) / 1000).max(1));
                        }
                    }
                }
                conn.received.fetch_add(fresh, Ordering::Relaxed);
                totals.received.fetch_add(fresh, Ordering::Relaxed);
                let ack = Message::Ack(Ack {
                    up_to: expected - 1,
                });
                if let Ok(bytes) = protocol::encode(&ack, encoding) {
                    let _ = out_tx.send(wrap(bytes)).await;
                }
            }
            Ok(Message::Ack(ack)) => {
                if ack.up_to > last_acked_by_server {
                    totals
                        .acked
                        .fetch_add(ack.up_to - last_acked_by_server, Ordering::Relaxed);
                    last_acked_by_server = ack.up_to;
                }
            }
            Ok(Message::Gap(gap)) => {
                totals.gapped.fetch_add(gap.count, Ordering::Relaxed);
                expected = expected.max(gap.to + 1);
            }
            Ok(Message::Error(error)) => {
                totals.errors.push(format!(
                    "{}/{:?}: {:?} {}",
                    conn.group, conn.side, error.code, error.message
                ));
            }
            Ok(_) => {}
            Err(err) => totals.errors.push(format!("decode: {err}")),
        }
    }
    let _ = sender.await;
    // Let the last ack go out before the socket closes.
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// The plain WebSocket relay: the first text message names group and side, every later
/// message goes to the other side of the same group.
async fn start_echo() -> anyhow::Result<SocketAddr> {
    type Peers = Arc<Mutex<HashMap<(String, String), mpsc::UnboundedSender<WsMessage>>>>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let peers: Peers = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let peers = Arc::clone(&peers);
            tokio::spawn(async move {
                // The same read buffer as the relay server's.
                let config = Some(tether_runtime::ws::ws_client_config());
                let Ok(socket) = tokio_tungstenite::accept_async_with_config(tcp, config).await
                else {
                    return;
                };
                let (mut sink, mut stream) = socket.split();
                let Some(Ok(WsMessage::Text(first))) = stream.next().await else {
                    return;
                };
                let who: Value = serde_json::from_str(&first).unwrap_or(Value::Null);
                let group = who["group"].as_str().unwrap_or("").to_owned();
                let side = who["side"].as_str().unwrap_or("").to_owned();
                let other = if side == "a" { "b" } else { "a" }.to_owned();
                let (tx, mut rx) = mpsc::unbounded_channel::<WsMessage>();
                if let Ok(mut map) = peers.lock() {
                    map.insert((group.clone(), side), tx);
                }
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        if sink.send(m).await.is_err() {
                            break;
                        }
                    }
                });
                let mut partner: Option<mpsc::UnboundedSender<WsMessage>> = None;
                while let Some(Ok(message)) = stream.next().await {
                    if !matches!(message, WsMessage::Binary(_) | WsMessage::Text(_)) {
                        continue;
                    }
                    if partner.is_none() {
                        partner = peers
                            .lock()
                            .ok()
                            .and_then(|map| map.get(&(group.clone(), other.clone())).cloned());
                    }
                    if let Some(p) = &partner {
                        let _ = p.send(message);
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (load, target) = match &cli.mode {
        Mode::Relay { load, .. } => (load.clone(), "relay"),
        Mode::Echo { load } => (load.clone(), "ws-echo"),
    };
    let totals = Arc::new(Totals::new()?);
    let mut sockets = Vec::new();
    match &cli.mode {
        Mode::Relay {
            target, server_b, ..
        } => {
            let (server, token) = (target.base(), &target.token);
            let run = std::process::id();
            let serial = |i: usize, side: &str| format!("BENCH-{run}-{i}-{side}");
            let groups =
                support::setup_groups(server, token, load.pairs, &format!("bench-{run}"), serial)
                    .await?;
            let [agent_a, agent_b] = groups.agent_tokens;
            let ws_base = server.replacen("http", "ws", 1);
            let ws_base_b = server_b.as_deref().map_or_else(
                || ws_base.clone(),
                |b| b.trim_end_matches('/').replacen("http", "ws", 1),
            );
            for group in groups.ids {
                let (a, enc_a) = connect_relay(&ws_base, &agent_a, &group, Side::A).await?;
                let (b, enc_b) = connect_relay(&ws_base_b, &agent_b, &group, Side::B).await?;
                sockets.push((group, a, enc_a, b, enc_b));
            }
        }
        Mode::Echo { .. } => {
            let addr = start_echo().await?;
            for i in 0..load.pairs {
                let group = format!("echo-{i}");
                let a = connect_echo(addr, &group, Side::A).await?;
                let b = connect_echo(addr, &group, Side::B).await?;
                sockets.push((group, a, Encoding::Msgpack, b, Encoding::Msgpack));
            }
            // Let both registrations land before traffic flows.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let encoding = sockets.first().map(|s| s.2.as_str()).unwrap_or("none");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (pair, (group, a, enc_a, b, enc_b)) in sockets.into_iter().enumerate() {
        let sent_a = Arc::new(AtomicU64::new(0));
        let sent_b = Arc::new(AtomicU64::new(0));
        let pair = u32::try_from(pair)?;
        for (socket, enc, side, own, peer) in [
            (a, enc_a, Side::A, Arc::clone(&sent_a), Arc::clone(&sent_b)),
            (b, enc_b, Side::B, Arc::clone(&sent_b), Arc::clone(&sent_a)),
        ] {
            let conn = Conn {
                group: group.clone(),
                side,
                sent: own,
                received: Arc::new(AtomicU64::new(0)),
            };
            tasks.push(tokio::spawn(drive(
                socket,
                enc,
                conn,
                peer,
                pair,
                load.clone(),
                Arc::clone(&totals),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(load.pace.seconds)).await;
    totals.stop_sending.store(true, Ordering::Relaxed);
    let received_at_stop = totals.received.load(Ordering::Relaxed);
    let stopped = Instant::now();
    let drained = tokio::time::timeout(Duration::from_secs(load.pace.drain_seconds), async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await
    .is_ok();
    let drain = stopped.elapsed();
    let sent = totals.sent.load(Ordering::Relaxed);
    let received = totals.received.load(Ordering::Relaxed);
    let gapped = totals.gapped.load(Ordering::Relaxed);
    // Lost: frames that will never arrive (reported in gap notices, or skipped seqs). Frames
    // still on their way when the drain timeout ended are `undelivered`, not lost.
    let lost = gapped + totals.out_of_order.load(Ordering::Relaxed);
    let undelivered = sent.saturating_sub(received);
    let offered = load.rate * 2 * u64::try_from(load.pairs)?;
    let hist = totals
        .latency_us
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
        .clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "target={target} label={} pairs={} rate_per_direction={} seconds={} encoding={encoding} offered_fps={offered} sent={sent} delivered={received} delivered_fps_during_run={:.0} delivered_fps_overall={:.0} lost={lost} undelivered_at_end={undelivered} gap_frames={gapped} duplicated={} out_of_order={} acked_by_server={} drained={drained} drain_s={:.2} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_p999={:.2} latency_ms_max={:.2}",
        load.pace.label,
        load.pairs,
        load.rate,
        load.pace.seconds,
        received_at_stop as f64 / load.pace.seconds as f64,
        received as f64 / start.elapsed().as_secs_f64(),
        totals.duplicated.load(Ordering::Relaxed),
        totals.out_of_order.load(Ordering::Relaxed),
        totals.acked.load(Ordering::Relaxed),
        drain.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0,
    );
    totals.errors.print();
    Ok(())
}

fn main() -> std::process::ExitCode {
    support::main_with(run(Cli::parse()))
}
