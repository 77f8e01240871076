//! Load driver of `scripts/bench-telemetry.sh`. Prints one JSON line per run.
//!
//! * `loopback RECORDS PAYLOAD_BYTES` — a vehicle and a remote in this process, over a real
//!   WebSocket on loopback, both stores durable (`Durability::Full`): time from the first
//!   record handed to the vehicle to the remote's ack of the last one.
//! * `fleet WS_URL VEHICLES RATE SECONDS DIR` — `VEHICLES` vehicles in this process (stores in
//!   `DIR`, `Durability::Normal`: one machine cannot fsync for 200 vehicles), each taking
//!   `RATE` records/s, uplinking to the remote at `WS_URL` (keys `key-N` → `car-N`); reports
//!   the aggregate acknowledged rate and send → ack latency percentiles (ingest to ack).
//! * `rss RECORDS MAX_LOCAL` — one vehicle, remote unreachable, `RECORDS` 64-byte records with
//!   `MAX_LOCAL_RECORDS = MAX_LOCAL`; reports this process's peak and current RSS.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::sqlite::Durability;
use relay_core::uplink::NewRecord;
use tether_collector::config::{VehicleConfig, VehicleKey};
use tether_collector::remote::{KeyAuth, Remote};
use tether_collector::vehicle::Vehicle;

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
    let mut c = vehicle_config(dir.path().join("vehicle.db"), Some(url), "key-0");
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
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    for (i, v) in started.iter().enumerate() {
        let ingest = v.ingest();
        let mut acked = v.acked();
        let hist = Arc::clone(&hist);
        handles.push(tokio::spawn(async move {
            let mut sent: VecDeque<(u64, Instant)> = VecDeque::new();
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
                        sent.push_back((seq, Instant::now()));
                        if ingest.send(batch).await.is_err() {
                            break;
                        }
                    }
                    changed = acked.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let up_to = *acked.borrow_and_update();
                        let now = Instant::now();
                        let mut h = hist.lock().unwrap();
                        while let Some(&(last, at)) = sent.front() {
                            if last > up_to {
                                break;
                            }
                            let ms = now.duration_since(at).as_millis().max(1) as u64;
                            h.record_n(ms, per_tick).unwrap();
                            sent.pop_front();
                        }
                        drop(h);
                        if Instant::now() >= end && sent.is_empty() {
                            break;
                        }
                    }
                }
            }
            seq
        }));
    }
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
        "{{\"mode\":\"fleet\",\"vehicles\":{vehicles},\"rate_per_vehicle\":{rate},\"records\":{total},\"seconds\":{secs:.2},\"acked_per_s\":{:.0},\"offered_per_s\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
        total as f64 / secs,
        vehicles as u64 * rate,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    for v in started {
        v.shutdown().await.unwrap();
    }
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
                "{{\"mode\":\"rss\",\"records\":{records},\"max_local_records\":{max_local},\"stored\":{},\"dropped_overflow\":{},\"vm_hwm_kb\":{},\"vm_rss_kb\":{}}}",
                s.stored,
                s.dropped_overflow,
                status_kb("VmHWM:"),
                status_kb("VmRSS:")
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vehicle.shutdown().await.unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("loopback") => rt.block_on(loopback(n(1) as usize, n(2) as usize)),
        Some("fleet") => rt.block_on(fleet(
            args[1].clone(),
            n(2) as usize,
            n(3),
            n(4),
            args[5].clone().into(),
        )),
        Some("rss") => rt.block_on(rss(n(1) as usize, n(2))),
        _ => {
            eprintln!(
                "usage: bench_telemetry loopback N BYTES | fleet URL VEHICLES RATE SECONDS DIR | rss N MAX"
            );
            std::process::exit(2);
        }
    }
}
