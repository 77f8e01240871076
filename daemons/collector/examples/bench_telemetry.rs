//! Load driver of `scripts/bench-telemetry.sh`. Prints one JSON line per run.
//!
//! * `loopback RECORDS PAYLOAD_BYTES` — a vehicle and a remote in this process, over a real
//!   WebSocket on loopback, both stores durable (`Durability::Full`): time from the first
//!   record handed to the vehicle to the remote's ack of the last one.
//! * `fleet WS_URL VEHICLES RATE SECONDS DIR` — `VEHICLES` vehicles in this process (stores in
//!   `DIR`, `Durability::Normal`: one machine cannot fsync for 200 vehicles), each taking
//!   `RATE` records/s, uplinking to the remote at `WS_URL` (keys `key-N` → `car-N`); reports
//!   the aggregate acknowledged rate and send → ack latency percentiles (ingest to ack).
//! * `wire WS_URL VEHICLES RATE SECONDS [TICK_MS]` — the same offered load with no vehicle
//!   behind it: `VEHICLES` WebSocket connections (keys `key-N`) that speak the upload
//!   protocol (`tether_collector::wire`) directly — `welcome`, then seqs after the remote's
//!   `acked`: `RATE × TICK_MS / 1000` records become due every `TICK_MS` (default 10) on an
//!   absolute schedule and go as a vehicle's session sends them (what is due as one batch of
//!   at most `batch_max`, while fewer than `window` records are unacknowledged;
//!   `VehicleConfig` defaults) — and time each batch from its send to the cumulative `ack`
//!   that covers it. No local store: the generator costs little, so what is measured is the
//!   remote's capacity. Also prints the batches sent (the remote's cost is per batch as much
//!   as per record) and this process's CPU time, to compare the two generators' cost.
//! * `serve` — a role from the environment (`ROLE`, `DB_PATH`, `LISTEN`, `API_KEYS`, …) on the
//!   runtime of that role, exactly as `tether collector` runs it (`tether_collector::run`)
//!   but without building the whole `tether` binary; until killed.
//! * `rss RECORDS MAX_LOCAL` — one vehicle, remote unreachable, `RECORDS` 64-byte records with
//!   `MAX_LOCAL_RECORDS = MAX_LOCAL`, on the vehicle role's runtime (`VEHICLE_WORKERS=N`: N
//!   workers instead, here and in `loopback`); reports this process's peak and current RSS
//!   and what the RSS is made of (threads, malloc arenas, file-backed pages).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::sqlite::Durability;
use relay_core::uplink::{NewRecord, OutboxRecord};
use tether_collector::config::{VehicleConfig, VehicleKey};
use tether_collector::remote::{KeyAuth, Remote};
use tether_collector::vehicle::Vehicle;
use tether_collector::wire::{RemoteMessage, encode_batch};
use tokio_tungstenite::tungstenite::Message;

fn payload(n: usize, size: usize) -> Bytes {
    let mut s = format!("{{\"kind\":\"bench\",\"n\":{n},\"pad\":\"");
    while s.len() + 2 < size {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

fn vehicle_config(path: std::path::PathBuf, url: Option<String>, key: &str) -> VehicleConfig {
    let mut c = VehicleConfig::new(path);
    c.enable_can_listener = false;
    c.status_interval_ms = 0;
    c.remote_endpoint_url = url;
    c.api_key = Some(key.to_owned());
    c
}

async fn loopback(records: usize, size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(KeyAuth::new(
        vec![VehicleKey {
            id: "car-0".into(),
            api_key: "key-0".into(),
        }],
        None,
    ));
    let remote = Remote::open(&dir.path().join("remote.db"), Durability::Full, auth).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let router = remote.router();
    tokio::spawn(async move { axum::serve(tcp, router).await.unwrap() });
    let url = format!("ws://{addr}/ws/telemetry/upload");
    // The vehicle on the runtime its role runs on (`vehicle::runtime`), on a thread of its
    // own; the remote on this process's runtime.
    let path = dir.path().join("vehicle.db");
    tokio::task::spawn_blocking(move || {
        vehicle_runtime().block_on(loopback_vehicle(path, url, records, size))
    })
    .await
    .unwrap();
}

async fn loopback_vehicle(path: std::path::PathBuf, url: String, records: usize, size: usize) {
    let mut c = vehicle_config(path, Some(url), "key-0");
    c.max_local_records = records as u64 + 1;
    let vehicle = Vehicle::start(c).await.unwrap();
    let mut acked = vehicle.acked();
    let batches: Vec<Vec<NewRecord>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(4096)
        .map(|c| {
            c.iter()
                .map(|&n| NewRecord {
                    ts_ms: 1_700_000_000_000 + n as u64,
                    payload: payload(n, size),
                })
                .collect()
        })
        .collect();
    let ingest = vehicle.ingest();
    let start = Instant::now();
    for b in batches {
        ingest.send(b).await.unwrap();
    }
    while *acked.borrow_and_update() < records as u64 {
        acked.changed().await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"loopback\",\"records\":{records},\"payload_bytes\":{size},\"seconds\":{secs:.3},\"records_per_s\":{:.0}}}",
        records as f64 / secs
    );
    vehicle.shutdown().await.unwrap();
}

type Hist = Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>;

/// Records the latency of every batch in `sent` (its last seq, its records, when it was
/// sent) that `up_to` acknowledges, once per record, and forgets them.
fn settle(sent: &mut VecDeque<(u64, u64, Instant)>, up_to: u64, hist: &Hist) {
    let now = Instant::now();
    let mut h = hist.lock().unwrap();
    while let Some(&(last, count, at)) = sent.front() {
        if last > up_to {
            break;
        }
        let ms = now.duration_since(at).as_millis().max(1) as u64;
        h.record_n(ms, count).unwrap();
        sent.pop_front();
    }
}

/// Waits for the simulated vehicles (each returns the records it had acknowledged) and
/// prints the run's line.
#[allow(clippy::too_many_arguments)]
async fn report(
    mode: &str,
    vehicles: usize,
    rate: u64,
    seconds: u64,
    start: Instant,
    cpu_before: f64,
    hist: &Hist,
    handles: Vec<tokio::task::JoinHandle<u64>>,
) {
    let mut total = 0;
    for h in handles {
        total += tokio::time::timeout(Duration::from_secs(seconds + 120), h)
            .await
            .expect("a vehicle did not drain")
            .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let h = hist.lock().unwrap().clone();
    println!(
        "{{\"mode\":\"{mode}\",\"vehicles\":{vehicles},\"rate_per_vehicle\":{rate},\"records\":{total},\"seconds\":{secs:.2},\"acked_per_s\":{:.0},\"offered_per_s\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"generator_cpu_s\":{:.2}}}",
        total as f64 / secs,
        vehicles as u64 * rate,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        cpu_seconds() - cpu_before
    );
}

async fn fleet(url: String, vehicles: usize, rate: u64, seconds: u64, dir: std::path::PathBuf) {
    let mut handles = Vec::new();
    let mut started = Vec::new();
    for i in 0..vehicles {
        let mut c = vehicle_config(
            dir.join(format!("v{i}.db")),
            Some(url.clone()),
            &format!("key-{i}"),
        );
        c.durability = Durability::Normal;
        started.push(Vehicle::start(c).await.unwrap());
    }
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap(),
    ));
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    for (i, v) in started.iter().enumerate() {
        let ingest = v.ingest();
        let mut acked = v.acked();
        let hist = Arc::clone(&hist);
        handles.push(tokio::spawn(async move {
            let mut sent: VecDeque<(u64, u64, Instant)> = VecDeque::new();
            let mut seq = 0u64;
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = interval.tick(), if Instant::now() < end => {
                        let batch: Vec<NewRecord> = (0..per_tick)
                            .map(|k| NewRecord {
                                ts_ms: 1_700_000_000_000 + seq + k,
                                payload: payload(i, 64),
                            })
                            .collect();
                        seq += per_tick;
                        sent.push_back((seq, per_tick, Instant::now()));
                        if ingest.send(batch).await.is_err() {
                            break;
                        }
                    }
                    changed = acked.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let up_to = *acked.borrow_and_update();
                        settle(&mut sent, up_to, &hist);
                        if Instant::now() >= end && sent.is_empty() {
                            break;
                        }
                    }
                }
            }
            seq
        }));
    }
    report(
        "fleet", vehicles, rate, seconds, start, cpu_before, &hist, handles,
    )
    .await;
    for v in started {
        v.shutdown().await.unwrap();
    }
}

/// CPU time (user + system) this process has used, in seconds (`/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime
    // the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as `key` and reads `welcome`: the socket and the remote's `acked`.
async fn wire_connect(url: &str, key: &str) -> (Ws, u64) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("no welcome from the remote");
    };
    match serde_json::from_str::<RemoteMessage>(text.as_str()).unwrap() {
        RemoteMessage::Welcome { acked, .. } => (ws, acked),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Batch messages `wire` sent, all connections.
static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How a simulated vehicle of `wire` sends: as a vehicle's session does
/// (`VehicleConfig` defaults), what is due goes as one batch of at most `batch_max` records
/// while fewer than `window` records are unacknowledged.
#[derive(Clone, Copy)]
struct Pace {
    tick: Duration,
    per_tick: u64,
    batch_max: u64,
    window: u64,
    start: Instant,
    end: Instant,
}

/// One simulated vehicle of `wire`: `per_tick` records become due every `tick` until `end`;
/// batches out, acks in. Returns the records acknowledged.
async fn wire_vehicle(ws: Ws, acked_at_start: u64, n: usize, pace: Pace, hist: Hist) -> u64 {
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut stream) = ws.split();
    let sent: Arc<std::sync::Mutex<VecDeque<(u64, u64, Instant)>>> = Arc::default();
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(acked_at_start);
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(None::<u64>);
    let writer = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut due = acked_at_start; // the last seq due
            let mut next = acked_at_start + 1; // the next seq to send
            let mut interval = tokio::time::interval_at(pace.start.into(), pace.tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = interval.tick(), if Instant::now() < pace.end => due += pace.per_tick,
                    changed = acked_rx.changed() => if changed.is_err() { break },
                }
                let acked = *acked_rx.borrow_and_update();
                while next <= due && next - 1 - acked < pace.window {
                    let count = (due + 1 - next)
                        .min(pace.batch_max)
                        .min(pace.window - (next - 1 - acked));
                    let records: Vec<OutboxRecord> = (next..next + count)
                        .map(|seq| OutboxRecord {
                            seq,
                            ts_ms: 1_700_000_000_000 + seq,
                            payload: payload(n, 64),
                        })
                        .collect();
                    next += count;
                    sent.lock()
                        .unwrap()
                        .push_back((next - 1, count, Instant::now()));
                    BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if sink
                        .send(Message::Binary(encode_batch(&records)))
                        .await
                        .is_err()
                    {
                        return sink;
                    }
                }
                if Instant::now() >= pace.end && next > due {
                    break;
                }
            }
            let _ = last_tx.send(Some(next - 1));
            sink
        })
    };
    let mut up_to = acked_at_start;
    let mut last: Option<u64> = None;
    while last.is_none_or(|l| up_to < l) {
        tokio::select! {
            changed = last_rx.changed(), if last.is_none() => {
                if changed.is_err() {
                    break;
                }
                last = *last_rx.borrow_and_update();
            }
            message = stream.next() => {
                let Some(Ok(message)) = message else { break };
                let Message::Text(text) = message else { continue };
                match serde_json::from_str::<RemoteMessage>(text.as_str()) {
                    Ok(RemoteMessage::Ack { up_to: a }) => {
                        up_to = up_to.max(a);
                        settle(&mut sent.lock().unwrap(), up_to, &hist);
                        acked_tx.send_replace(up_to);
                    }
                    Ok(RemoteMessage::Error { code, message }) => {
                        panic!("the remote refused car-{n}: {code}: {message}")
                    }
                    // Other control messages (a later protocol's) do not concern the bench.
                    _ => {}
                }
            }
        }
    }
    drop(acked_tx);
    if let Ok(mut sink) = writer.await {
        let _ = sink.close().await;
    }
    up_to - acked_at_start
}

async fn wire(url: String, vehicles: usize, rate: u64, seconds: u64, tick_ms: u64) {
    let mut sockets = Vec::with_capacity(vehicles);
    for i in 0..vehicles {
        sockets.push(wire_connect(&url, &format!("key-{i}")).await);
    }
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3).unwrap(),
    ));
    let defaults = VehicleConfig::new("");
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let pace = Pace {
        tick: Duration::from_millis(tick_ms),
        per_tick: (rate * tick_ms / 1000).max(1),
        batch_max: defaults.batch_max as u64,
        window: defaults.window,
        start,
        end: start + Duration::from_secs(seconds),
    };
    let handles: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (ws, acked))| tokio::spawn(wire_vehicle(ws, acked, i, pace, Arc::clone(&hist))))
        .collect();
    report(
        "wire", vehicles, rate, seconds, start, cpu_before, &hist, handles,
    )
    .await;
    let batches = BATCHES.load(std::sync::atomic::Ordering::Relaxed);
    println!("{{\"mode\":\"wire\",\"tick_ms\":{tick_ms},\"batches\":{batches}}}");
}

/// What this process's resident memory is made of, from `/proc/self/smaps` (kB): file-backed
/// (code, the SQLite WAL index), the main malloc arena (`[heap]`), the other glibc arenas
/// (anonymous mappings on a 64 MiB boundary: glibc's per-thread heaps), the rest of the
/// anonymous memory (thread stacks, large allocations mmapped on their own), and the thread
/// count.
fn memory_breakdown() -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut file, mut heap, mut arenas, mut arena_kb, mut anon) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut kind = 0u8;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-')
            && let Ok(start) = u64::from_str_radix(start, 16)
        {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = if path.starts_with('/') {
                0
            } else if path == "[heap]" {
                1
            } else if path.is_empty() && start % (64 << 20) == 0 {
                arenas += 1;
                2
            } else {
                3
            };
        } else if first == "Rss:" {
            let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => file += kb,
                1 => heap += kb,
                2 => arena_kb += kb,
                _ => anon += kb,
            }
        }
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    format!(
        "\"threads\":{threads},\"rss_file_kb\":{file},\"rss_main_arena_kb\":{heap},\"arenas\":{arenas},\"rss_arenas_kb\":{arena_kb},\"rss_other_anon_kb\":{anon}"
    )
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn rss(records: usize, max_local: u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nobody listens there: everything stays pending, the cap does the rest.
    let url = format!("ws://127.0.0.1:{port}/ws/telemetry/upload");
    let mut c = vehicle_config(dir.path().join("vehicle.db"), Some(url), "key-0");
    c.max_local_records = max_local;
    let vehicle = Vehicle::start(c).await.unwrap();
    let started_kb = status_kb("VmRSS:");
    let ingest = vehicle.ingest();
    for chunk in (0..records).collect::<Vec<_>>().chunks(4096) {
        let batch = chunk
            .iter()
            .map(|&n| NewRecord {
                ts_ms: 1_700_000_000_000 + n as u64,
                payload: payload(n, 64),
            })
            .collect();
        ingest.send(batch).await.unwrap();
    }
    loop {
        let s = vehicle.status().await.unwrap();
        if s.records_collected == records as u64 {
            println!(
                "{{\"mode\":\"rss\",\"records\":{records},\"max_local_records\":{max_local},\"stored\":{},\"dropped_overflow\":{},\"vm_hwm_kb\":{},\"vm_rss_kb\":{},\"vm_rss_started_kb\":{started_kb},{}}}",
                s.stored,
                s.dropped_overflow,
                status_kb("VmHWM:"),
                status_kb("VmRSS:"),
                memory_breakdown()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vehicle.shutdown().await.unwrap();
}

/// The vehicle role's runtime (`tether_collector::vehicle::runtime`), or `VEHICLE_WORKERS=N`
/// workers instead, to see what the runtime alone changes.
fn vehicle_runtime() -> tokio::runtime::Runtime {
    match std::env::var("VEHICLE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        Some(workers) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap(),
        None => tether_collector::vehicle::runtime().unwrap(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Two workers, as the remote role (built only for the modes that use it: `rss` is the
    // vehicle process alone).
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let n = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("loopback") => rt().block_on(loopback(n(1) as usize, n(2) as usize)),
        Some("fleet") => rt().block_on(fleet(
            args[1].clone(),
            n(2) as usize,
            n(3),
            n(4),
            args[5].clone().into(),
        )),
        Some("wire") => rt().block_on(wire(
            args[1].clone(),
            n(2) as usize,
            n(3),
            n(4),
            args.get(5).map_or(10, |_| n(5)),
        )),
        Some("serve") => {
            let config = tether_collector::config::load(None, &|n| std::env::var(n).ok()).unwrap();
            config
                .runtime()
                .unwrap()
                .block_on(tether_collector::run(config, std::future::pending()))
                .unwrap();
        }
        // The vehicle process alone, on the runtime of its role.
        Some("rss") => vehicle_runtime().block_on(rss(n(1) as usize, n(2))),
        _ => {
            eprintln!(
                "usage: bench_telemetry loopback N BYTES | fleet URL VEHICLES RATE SECONDS DIR | wire URL VEHICLES RATE SECONDS [TICK_MS] | serve | rss N MAX"
            );
            std::process::exit(2);
        }
    }
}
