//! Load driver of `scripts/bench-relay.sh agents`: frames from simulated REMP dongles through two
//! real `tether agent` processes (dongle role) and a running `tether server`.
//!
//! It sets up, through the REST API, two agents (A and B) and N groups (dongle `i-A` owned by
//! agent A, `i-B` by agent B, activated), writes each agent a config file, starts both agents
//! (`--tether BIN agent --config …`), then runs 2·N UDP dongles: each sends its hello, waits until
//! its agent relays, then sends `--rate` frames/s (`0`: `--burst` frames per batch) in batches every
//! `--batch-ms`. One task on one timer sends for every dongle, one task per dongle receives a
//! datagram at a time: the driver's own cost per frame stays small next to the agents'. Each frame's 8 data bytes carry the dongle's frame number (u32)
//! and its send time (µs since the driver started, u32); the peer dongle records the added
//! latency (same clock) and checks the numbers: a number that arrives twice is `duplicated`,
//! numbers that never arrive are `lost` unless the agent counted them as dropped (its
//! `tether_agent_dongle_frames_dropped_total` by reason, read from its `/metrics`).
//!
//! Output: one `key=value` line, plus `deliv_per_s=` the frames delivered in each second of the
//! run (all dongles), which shows whether an overloaded agent keeps its rate. Agent resident
//! memory (`VmRSS` at the end, `VmHWM` peak) is read from /proc, and so is the CPU time (user +
//! system) from the start of sending to the end of the drain: each agent's
//! (`agent_cpu_s`, A/B) and per frame it handled (`agent_cpu_us_per_frame`: frames read from
//! its dongles plus frames sent to them), the driver's (`driver_cpu_us_per_frame`: per frame
//! sent or received). CPU per frame stays comparable across runs on a busy machine, where the
//! rates and latencies do not: the dongles, agents and server share it.
#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use can_io::frame::{CanFrame, CanId, CanRecord, Channel, DataFrame, Direction};
use can_io::wire::remp::{RempEvent, RempReceiver, RempSender};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::net::UdpSocket;

#[path = "support/mod.rs"]
mod support;

use support::ErrorLog;

#[derive(Debug, Parser)]
#[command(about = "Dongle → agent → server → agent → dongle load driver")]
struct Cli {
    #[command(flatten)]
    target: support::ServerArgs,
    /// The `tether` binary that runs the agents.
    #[arg(long)]
    tether: PathBuf,
    /// Directory for the agents' configs, data and logs.
    #[arg(long)]
    work: PathBuf,
    /// Dongles per agent (= groups).
    #[arg(long, default_value_t = 10)]
    dongles: usize,
    /// Frames per second each dongle sends; 0 = `--burst` frames per batch.
    #[arg(long, default_value_t = 4500)]
    rate: u64,
    /// With `--rate 0`: frames each dongle sends per batch (1024 every 5 ms: ~200,000/s per
    /// dongle, more than an agent takes).
    #[arg(long, default_value_t = 1024)]
    burst: u64,
    /// `dongle.outbox_max_frames` of both agents (their default when not given).
    #[arg(long)]
    outbox_max_frames: Option<u64>,
    #[command(flatten)]
    pace: support::Pace,
}

/// Counters shared by every dongle.
struct Totals {
    sent: AtomicU64,
    received: AtomicU64,
    duplicated: AtomicU64,
    stop: AtomicBool,
    /// Both agents' counters, summed, once a second from the start of sending: frames read
    /// from UDP (`frames_in`), acknowledged by the server (`frames_acked`), sent to the
    /// dongles (`frames_delivered`), dropped (any reason). Their differences show where a
    /// backlog sits: in front of the agents, in the server, or behind it.
    stages: Mutex<Vec<[u64; 4]>>,
    errors: ErrorLog,
}

fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The agent's `/metrics` as (name{labels}, value) pairs summed by `name{reason}` for drops.
async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// Sum of a metric family's samples, optionally only those whose labels contain `label`.
fn sum(text: &str, family: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Agent {
    child: Child,
    udp: SocketAddr,
    metrics: SocketAddr,
}

fn start_agent(cli: &Cli, server: &str, name: &str, token: &str) -> anyhow::Result<Agent> {
    let udp = free_udp()?;
    let metrics = free_tcp()?;
    let dir = cli.work.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut config = format!(
        "server_url: {server}\ntoken: {token}\ndata_dir: {}\ndongle:\n  listen: {udp}\n  metrics_listen: {metrics}\n  stats_interval: 0\n  log_level: warn\n",
        dir.join("data").display()
    );
    if let Some(max) = cli.outbox_max_frames {
        config.push_str(&format!("  outbox_max_frames: {max}\n"));
    }
    let path = dir.join("agent.yaml");
    std::fs::write(&path, config)?;
    let child = Command::new(&cli.tether)
        .arg("agent")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.err"))?)
        .spawn()
        .with_context(|| format!("starting {}", cli.tether.display()))?;
    Ok(Agent {
        child,
        udp,
        metrics,
    })
}

/// One simulated dongle's sending end: its own UDP socket (connected to its agent) and REMP
/// sender.
struct DongleTx {
    socket: Arc<UdpSocket>,
    sender: RempSender,
    channel: Channel,
    id: CanId,
    /// The next frame number.
    n: u32,
}

impl DongleTx {
    /// Encodes frames `n..due` (each stamped with its number and the send time) and sends the
    /// datagrams they fill; returns how many frames were sent.
    async fn send_due(&mut self, due: u64, start: Instant, errors: &ErrorLog) -> u64 {
        let mut sent = 0;
        while u64::from(self.n) < due {
            let us = start.elapsed().as_micros() as u32;
            let mut data = [0u8; 8];
            data[..4].copy_from_slice(&self.n.to_le_bytes());
            data[4..].copy_from_slice(&us.to_le_bytes());
            let frame = match DataFrame::new(self.id, &data) {
                Ok(f) => CanFrame::Data(f),
                Err(e) => {
                    errors.push(e.to_string());
                    return sent;
                }
            };
            let r = CanRecord::new(0, self.channel.clone(), Direction::Rx, frame);
            match self.sender.push(&r) {
                Ok(datagrams) => {
                    for d in datagrams {
                        self.send(&d, errors).await;
                    }
                }
                Err(e) => {
                    errors.push(format!("encode: {e}"));
                    return sent;
                }
            }
            self.n += 1;
            sent += 1;
        }
        match self.sender.flush() {
            Ok(Some(d)) => self.send(&d, errors).await,
            Ok(None) => {}
            Err(e) => errors.push(format!("encode: {e}")),
        }
        sent
    }

    async fn send(&self, datagram: &[u8], errors: &ErrorLog) {
        if let Err(e) = self.socket.send(datagram).await {
            errors.push(format!("send: {e}"));
        }
    }

    async fn keepalive(&mut self, errors: &ErrorLog) {
        match self.sender.keepalive() {
            Ok(d) => self.send(&d, errors).await,
            Err(e) => errors.push(format!("keepalive: {e}")),
        }
    }
}

/// A simulated dongle: its sending end and its socket to receive on.
async fn open_dongle(agent: SocketAddr, serial: &str, pair: u32) -> anyhow::Result<DongleTx> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(agent).await?;
    let mut d = DongleTx {
        socket: Arc::new(socket),
        sender: RempSender::new(serial, rand_boot(serial), 1000)?,
        channel: Channel::from("can0"),
        id: CanId::standard(pair & 0x7ff)?,
        n: 0,
    };
    let hello = d.sender.hello()?;
    d.socket.send(&hello).await?;
    Ok(d)
}

/// A boot id that differs from run to run.
fn rand_boot(serial: &str) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    serial
        .bytes()
        .fold(t, |h, b| h.rotate_left(5) ^ u64::from(b))
}

/// Sends every dongle's frames, all from one task on one timer: at each `batch_ms` tick each
/// dongle sends the frames due by its rate (`0`: `burst` more per tick), one REMP datagram per
/// ~50 frames; a keep-alive per dongle every second. Until `totals.stop`.
async fn send_all(
    mut dongles: Vec<DongleTx>,
    rate: u64,
    burst: u64,
    batch_ms: u64,
    start: Instant,
    go: Arc<AtomicBool>,
    totals: Arc<Totals>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(batch_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_keepalive = Instant::now();
    let mut begun: Option<Instant> = None;
    while !totals.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if last_keepalive.elapsed() >= Duration::from_secs(1) {
            last_keepalive = Instant::now();
            for d in &mut dongles {
                d.keepalive(&totals.errors).await;
            }
        }
        if !go.load(Ordering::Relaxed) {
            continue;
        }
        let begun = *begun.get_or_insert_with(Instant::now);
        let due = (begun.elapsed().as_micros() as u64 * rate / 1_000_000).max(1);
        for d in &mut dongles {
            let due = if rate == 0 {
                u64::from(d.n) + burst
            } else {
                due
            };
            let sent = d.send_due(due, start, &totals.errors).await;
            totals.sent.fetch_add(sent, Ordering::Relaxed);
        }
    }
}

/// What one receiving dongle measured.
struct Received {
    latency_us: Histogram<u64>,
    /// Frames received per second since the driver started.
    per_second: Vec<u64>,
}

/// One dongle's receiving end: checks each frame's number (duplicates) and records its added
/// latency, a datagram at a time, until `finish`.
async fn receive(
    socket: Arc<UdpSocket>,
    start: Instant,
    totals: Arc<Totals>,
    mut finish: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Received> {
    let mut out = Received {
        latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        per_second: Vec::new(),
    };
    let mut receiver = RempReceiver::new(4);
    let mut seen: Vec<u64> = Vec::new(); // bitmap of received numbers
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = finish.wait_for(|f| *f) => break,
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                // An ICMP error of an earlier send (the agent was not up yet).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => { totals.errors.push(format!("recv: {e}")); break; }
            },
        };
        let records = match receiver.handle_datagram(&buf[..n], 0) {
            Ok(RempEvent::Frames { records, .. }) => records,
            Ok(_) => continue,
            Err(e) => {
                totals.errors.push(format!("decode: {e}"));
                continue;
            }
        };
        let now = start.elapsed();
        let now_us = now.as_micros() as u32;
        let second = now.as_secs() as usize;
        let mut fresh = 0;
        for rec in &records {
            let d = rec.frame.data();
            if d.len() != 8 {
                continue;
            }
            let num = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
            let us = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            if seen.len() <= num / 64 {
                seen.resize(num / 64 + 1, 0);
            }
            let bit = 1u64 << (num % 64);
            if seen[num / 64] & bit != 0 {
                totals.duplicated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            seen[num / 64] |= bit;
            fresh += 1;
            let _ = out
                .latency_us
                .record(u64::from(now_us.wrapping_sub(us).max(1)));
        }
        if out.per_second.len() <= second {
            out.per_second.resize(second + 1, 0);
        }
        out.per_second[second] += fresh;
        totals.received.fetch_add(fresh, Ordering::Relaxed);
    }
    Ok(out)
}

/// User + system CPU time of process `pid` (`self` for this one) so far, in clock ticks
/// (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The fields after the command name (which is in parentheses): state is field 3.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |k: usize| {
        f.get(k - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Context switches (voluntary and not) of every thread of process `pid` so far (`/proc`):
/// each is a thread that slept and was woken, the agent's main cost per batch.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails).
fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU ticks, frames handled (read from UDP + sent to the dongles) and context switches of
/// each agent, and the driver's own CPU ticks, at one moment.
struct CpuMark {
    agents: Vec<(u64, u64, u64)>,
    driver: u64,
}

async fn cpu_mark(agents: &[Agent]) -> CpuMark {
    let mut marks = Vec::new();
    for a in agents {
        let text = metrics(a.metrics).await.unwrap_or_default();
        let frames = sum(&text, "tether_agent_dongle_frames_in_total", "")
            + sum(&text, "tether_agent_dongle_frames_delivered_total", "");
        marks.push((
            cpu_ticks(&a.child.id().to_string()),
            frames,
            context_switches(a.child.id()),
        ));
    }
    CpuMark {
        agents: marks,
        driver: cpu_ticks("self"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = cli.target.base().to_owned();
    let runid = std::process::id();
    let serial = |i: usize, side: &str| format!("AB{runid}-{i}-{side}");
    let groups = support::setup_groups(
        &server,
        &cli.target.token,
        cli.dongles,
        &format!("agentbench-{runid}"),
        &serial,
    )
    .await?;
    let tokens = groups.agent_tokens;
    let mut agents = vec![
        start_agent(&cli, &server, "agent-a", &tokens[0])?,
        start_agent(&cli, &server, "agent-b", &tokens[1])?,
    ];
    let result = measure(&cli, &mut agents, serial).await;
    for a in &mut agents {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(a.child.id().to_string())
            .status();
    }
    for a in &mut agents {
        let _ = a.child.wait();
    }
    result
}

async fn measure(
    cli: &Cli,
    agents: &mut [Agent],
    serial: impl Fn(usize, &str) -> String,
) -> anyhow::Result<()> {
    let totals = Arc::new(Totals {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stages: Mutex::new(Vec::new()),
        errors: ErrorLog::default(),
    });
    // Agents listening?
    for a in agents.iter() {
        let mut ok = false;
        for _ in 0..100 {
            if metrics(a.metrics).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ok {
            bail!(
                "an agent did not start (see {}/agent-*/agent.err)",
                cli.work.display()
            );
        }
    }
    let start = Instant::now();
    let go = Arc::new(AtomicBool::new(false));
    let (finish_tx, finish) = tokio::sync::watch::channel(false);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..cli.dongles {
        for (k, side) in ["A", "B"].iter().enumerate() {
            let d = open_dongle(agents[k].udp, &serial(i, side), u32::try_from(i)?).await?;
            receivers.push(tokio::spawn(receive(
                Arc::clone(&d.socket),
                start,
                Arc::clone(&totals),
                finish.clone(),
            )));
            senders.push(d);
        }
    }
    let sending = tokio::spawn(send_all(
        senders,
        cli.rate,
        cli.burst,
        cli.pace.batch_ms,
        start,
        Arc::clone(&go),
        Arc::clone(&totals),
    ));
    // Wait until every dongle's worker relays.
    let want = cli.dongles as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ready = true;
        for a in agents.iter() {
            let text = metrics(a.metrics).await.unwrap_or_default();
            if sum(&text, "tether_agent_dongle_relaying", "") < want {
                ready = false;
            }
        }
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agents did not relay every dongle within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let setup_s = start.elapsed().as_secs();
    let cpu_before = cpu_mark(agents).await;
    go.store(true, Ordering::Relaxed);
    let sampler = tokio::spawn(sample_stages(
        agents.iter().map(|a| a.metrics).collect(),
        Arc::clone(&totals),
    ));
    tokio::time::sleep(Duration::from_secs(cli.pace.seconds)).await;
    totals.stop.store(true, Ordering::Relaxed);
    let received_at_stop = totals.received.load(Ordering::Relaxed);
    // Let a batch that was being sent at the stop finish before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent_total = totals.sent.load(Ordering::Relaxed);
    // Drain: until received + counted drops = sent, or timeout.
    let stopped = Instant::now();
    let mut dropped: HashMap<&str, u64> = HashMap::new();
    let reasons = [
        "outbox_full",
        "queue_full",
        "no_group",
        "group_inactive",
        "group_changed",
        "invalid",
        "not_sent",
    ];
    let mut last_progress = (0, Instant::now());
    loop {
        dropped.clear();
        for a in agents.iter() {
            let text = metrics(a.metrics).await.unwrap_or_default();
            for r in reasons {
                *dropped.entry(r).or_default() += sum(
                    &text,
                    "tether_agent_dongle_frames_dropped_total",
                    &format!("reason=\"{r}\""),
                );
            }
        }
        let counted: u64 = dropped.values().sum();
        let received = totals.received.load(Ordering::Relaxed);
        // Done when everything is accounted for, or nothing moved for 3 s (frames the kernel
        // dropped between dongle and agent are counted by the agent in datagrams,
        // `remp_lost_datagrams`, not frames), or at the timeout.
        if received + counted != last_progress.0 {
            last_progress = (received + counted, Instant::now());
        }
        if received + counted >= sent_total
            || last_progress.1.elapsed() >= Duration::from_secs(3)
            || stopped.elapsed().as_secs() >= cli.pace.drain_seconds
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain_s = stopped.elapsed().as_secs_f64();
    let cpu_after = cpu_mark(agents).await;
    let mut rss = Vec::new();
    for a in agents.iter() {
        let text = metrics(a.metrics).await.unwrap_or_default();
        let remp_lost = sum(&text, "tether_agent_dongle_remp_lost_datagrams", "");
        rss.push(format!(
            "{}/{}/remp_lost_datagrams={remp_lost}",
            proc_kib(a.child.id(), "VmRSS:") / 1024,
            proc_kib(a.child.id(), "VmHWM:") / 1024
        ));
    }
    sampler.abort();
    let _ = finish_tx.send(true);
    let _ = sending.await;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut per_second: Vec<u64> = Vec::new();
    for r in receivers {
        let got = r.await??;
        hist.add(&got.latency_us)?;
        if per_second.len() < got.per_second.len() {
            per_second.resize(got.per_second.len(), 0);
        }
        for (total, n) in per_second.iter_mut().zip(&got.per_second) {
            *total += n;
        }
    }
    let stages = totals.stages.lock().map(|s| s.clone()).unwrap_or_default();
    let per_s = |k: usize| {
        stages
            .windows(2)
            .map(|w| (w[1][k] - w[0][k].min(w[1][k])).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let received = totals.received.load(Ordering::Relaxed);
    let counted: u64 = dropped.values().sum();
    let uncounted = sent_total.saturating_sub(received + counted);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per_second = per_second
        .iter()
        .skip(usize::try_from(setup_s).unwrap_or(0))
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // CPU from the start of sending to the end of the drain: each agent's per frame it
    // handled (read from UDP + sent to a dongle), the driver's per frame sent or received.
    let tck = clock_ticks_per_s();
    let cpu_s = |ticks: u64| ticks as f64 / tck;
    let mut agent_cpu = Vec::new();
    let mut agent_us = Vec::new();
    let mut agent_switches = Vec::new();
    for (before, after) in cpu_before.agents.iter().zip(&cpu_after.agents) {
        let s = cpu_s(after.0.saturating_sub(before.0));
        let frames = after.1.saturating_sub(before.1);
        agent_cpu.push(format!("{s:.2}"));
        agent_switches.push(format!(
            "{:.3}",
            after.2.saturating_sub(before.2) as f64 / frames.max(1) as f64
        ));
        agent_us.push(if frames > 0 {
            format!("{:.2}", s * 1e6 / frames as f64)
        } else {
            "-".to_owned()
        });
    }
    let driver_s = cpu_s(cpu_after.driver.saturating_sub(cpu_before.driver));
    let driver_us = driver_s * 1e6 / (sent_total + received).max(1) as f64;
    let run_s = cli.pace.seconds as f64;
    println!(
        "target=agents label={} dongles_per_agent={} rate_per_dongle={} seconds={} sent={sent_total} offered_fps={:.0} delivered={received} delivered_fps_during_run={:.0} dropped_outbox_full={} dropped_queue_full={} dropped_other={} not_delivered_not_dropped={uncounted} duplicated={} drain_s={drain_s:.2} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2} agent_rss_mib_now/peak={} agent_cpu_s={} agent_cpu_us_per_frame={} agent_switches_per_frame={} driver_cpu_s={driver_s:.2} driver_cpu_us_per_frame={driver_us:.2} deliv_per_s={per_second} agents_in_per_s={} agents_acked_per_s={} agents_delivered_per_s={} agents_dropped_per_s={}",
        cli.pace.label,
        cli.dongles,
        cli.rate,
        cli.pace.seconds,
        sent_total as f64 / run_s,
        received_at_stop as f64 / run_s,
        dropped["outbox_full"],
        dropped["queue_full"],
        counted - dropped["outbox_full"] - dropped["queue_full"],
        totals.duplicated.load(Ordering::Relaxed),
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0,
        rss.join(","),
        agent_cpu.join("/"),
        agent_us.join("/"),
        agent_switches.join("/"),
        per_s(0),
        per_s(1),
        per_s(2),
        per_s(3),
    );
    totals.errors.print();
    Ok(())
}

/// Samples both agents' stage counters once a second into `totals.stages` until aborted.
async fn sample_stages(agents: Vec<SocketAddr>, totals: Arc<Totals>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut row = [0u64; 4];
        for a in &agents {
            let text = metrics(*a).await.unwrap_or_default();
            for (k, family) in [
                "tether_agent_dongle_frames_in_total",
                "tether_agent_dongle_frames_acked_total",
                "tether_agent_dongle_frames_delivered_total",
                "tether_agent_dongle_frames_dropped_total",
            ]
            .iter()
            .enumerate()
            {
                row[k] += sum(&text, family, "");
            }
        }
        if let Ok(mut s) = totals.stages.lock() {
            s.push(row);
        }
    }
}

fn main() -> std::process::ExitCode {
    support::main_with(run(Cli::parse()))
}
