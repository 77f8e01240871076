//! Load driver of `scripts/bench-relay.sh agents`: frames from simulated REMP dongles through two
//! real `tether agent` processes (dongle role) and a running `tether server`.
//!
//! It sets up, through the REST API, two agents (A and B) and N groups (dongle `i-A` owned by
//! agent A, `i-B` by agent B, activated), writes each agent a config file, starts both agents
//! (`--tether BIN agent --config …`), then runs 2·N UDP dongles: each sends its hello, waits until
//! its agent relays, then sends `--rate` frames/s (`0`: as fast as the socket takes them) in
//! batches every `--batch-ms`. Each frame's 8 data bytes carry the dongle's frame number (u32)
//! and its send time (µs since the driver started, u32); the peer dongle records the added
//! latency (same clock) and checks the numbers: a number that arrives twice is `duplicated`,
//! numbers that never arrive are `lost` unless the agent counted them as dropped (its
//! `tether_agent_dongle_frames_dropped_total` by reason, read from its `/metrics`).
//!
//! Output: one `key=value` line, plus `deliv_per_s=` the frames delivered in each second of the
//! run (all dongles), which shows whether an overloaded agent keeps its rate. Agent resident
//! memory (`VmRSS` at the end, `VmHWM` peak) is read from /proc.
//!
//! It does not measure the agents' CPU, and the dongles, agents and server share one machine.
#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use can_io::frame::{CanFrame, CanId, CanRecord, DataFrame, Direction};
use can_io::transport::CanBus;
use can_io::transport::udp::RempUdp;
use clap::Parser;
use hdrhistogram::Histogram;

#[path = "support/mod.rs"]
mod support;

use support::ErrorLog;

#[derive(Debug, Parser)]
#[command(about = "Dongle → agent → server → agent → dongle load driver")]
struct Cli {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: String,
    /// A user token (`tether server token create`).
    #[arg(long)]
    token: String,
    /// The `tether` binary that runs the agents.
    #[arg(long)]
    tether: PathBuf,
    /// Directory for the agents' configs, data and logs.
    #[arg(long)]
    work: PathBuf,
    /// Dongles per agent (= groups).
    #[arg(long, default_value_t = 10)]
    dongles: usize,
    /// Frames per second each dongle sends; 0 = as fast as it can.
    #[arg(long, default_value_t = 4500)]
    rate: u64,
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
    latency_us: Mutex<Histogram<u64>>,
    /// Frames received per second of the run.
    per_second: Mutex<Vec<u64>>,
    /// Both agents' counters, summed, once a second from the start of sending: frames read
    /// from UDP (`frames_in`), acknowledged by the server (`frames_acked`), sent to the
    /// dongles (`frames_delivered`), dropped (any reason). Their differences show where a
    /// backlog sits: in front of the agents, in the server, or behind it.
    stages: Mutex<Vec<[u64; 4]>>,
    errors: ErrorLog,
}

fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
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

fn record(pair: u32, n: u32, us: u32) -> anyhow::Result<CanRecord> {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&n.to_le_bytes());
    data[4..].copy_from_slice(&us.to_le_bytes());
    let frame = DataFrame::new(CanId::standard(pair & 0x7ff)?, &data)?;
    Ok(CanRecord::new(
        0,
        Arc::from("can0"),
        Direction::Rx,
        CanFrame::Data(frame),
    ))
}

/// One dongle: sends at the rate until told to stop, receives until the peer's count is in.
async fn dongle(
    mut bus: RempUdp,
    pair: u32,
    cli_rate: u64,
    batch_ms: u64,
    start: Instant,
    go: Arc<AtomicBool>,
    totals: Arc<Totals>,
) {
    let mut seen: Vec<u64> = Vec::new(); // bitmap of received numbers
    let mut tick = tokio::time::interval(Duration::from_millis(batch_ms));
    let mut keepalive = tokio::time::interval(Duration::from_secs(1));
    let mut n: u32 = 0;
    let mut started: Option<Instant> = None;
    loop {
        let sending = go.load(Ordering::Relaxed) && !totals.stop.load(Ordering::Relaxed);
        tokio::select! {
            _ = keepalive.tick() => { let _ = bus.keepalive().await; }
            _ = tick.tick(), if sending => {
                let begun = *started.get_or_insert_with(Instant::now);
                let due = if cli_rate == 0 {
                    u64::from(n) + 256
                } else {
                    (begun.elapsed().as_micros() as u64 * cli_rate / 1_000_000).max(1)
                };
                while u64::from(n) < due {
                    let us = start.elapsed().as_micros() as u32;
                    let r = match record(pair, n, us) { Ok(r) => r, Err(e) => { totals.errors.push(e.to_string()); return; } };
                    if let Err(e) = bus.send(&r).await { totals.errors.push(format!("send: {e}")); break; }
                    n += 1;
                    totals.sent.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) = bus.flush().await { totals.errors.push(format!("flush: {e}")); }
            }
            r = bus.recv() => match r {
                Ok(Some(rec)) => {
                    let d = rec.frame.data();
                    if d.len() != 8 { continue; }
                    let num = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
                    let us = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
                    let now = start.elapsed();
                    if seen.len() <= num / 64 { seen.resize(num / 64 + 1, 0); }
                    let bit = 1u64 << (num % 64);
                    if seen[num / 64] & bit != 0 {
                        totals.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    seen[num / 64] |= bit;
                    totals.received.fetch_add(1, Ordering::Relaxed);
                    let lat = (now.as_micros() as u32).wrapping_sub(us);
                    if let Ok(mut h) = totals.latency_us.lock() { let _ = h.record(u64::from(lat.max(1))); }
                    if let Ok(mut p) = totals.per_second.lock() {
                        let s = now.as_secs() as usize;
                        if p.len() <= s { p.resize(s + 1, 0); }
                        p[s] += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => { totals.errors.push(format!("recv: {e}")); break; }
            },
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = cli.server.trim_end_matches('/').to_owned();
    let runid = std::process::id();
    let serial = |i: usize, side: &str| format!("AB{runid}-{i}-{side}");
    let groups = support::setup_groups(
        &server,
        &cli.token,
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
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        per_second: Mutex::new(Vec::new()),
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
    let mut tasks = Vec::new();
    for i in 0..cli.dongles {
        for (k, side) in ["A", "B"].iter().enumerate() {
            let bus = RempUdp::dongle(agents[k].udp, &serial(i, side)).await?;
            tasks.push(tokio::spawn(dongle(
                bus,
                u32::try_from(i)?,
                cli.rate,
                cli.pace.batch_ms,
                start,
                Arc::clone(&go),
                Arc::clone(&totals),
            )));
        }
    }
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
    if let Ok(mut p) = totals.per_second.lock() {
        p.clear();
    }
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
    for t in &tasks {
        t.abort();
    }
    sampler.abort();
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
    let hist = totals
        .latency_us
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per_second = totals
        .per_second
        .lock()
        .map(|p| {
            let from = usize::try_from(setup_s).unwrap_or(0);
            p.iter()
                .skip(from)
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let run_s = cli.pace.seconds as f64;
    println!(
        "target=agents label={} dongles_per_agent={} rate_per_dongle={} seconds={} sent={sent_total} offered_fps={:.0} delivered={received} delivered_fps_during_run={:.0} dropped_outbox_full={} dropped_queue_full={} dropped_other={} not_delivered_not_dropped={uncounted} duplicated={} drain_s={drain_s:.2} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2} agent_rss_mib_now/peak={} deliv_per_s={per_second} agents_in_per_s={} agents_acked_per_s={} agents_delivered_per_s={} agents_dropped_per_s={}",
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
