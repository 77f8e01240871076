//! Benchmark helper: drain `queue:usage_records` under `PREFIX` with the reliable-queue
//! machinery (batched `LMOVE` into a processing list, then ack) and a do-nothing handler.
//! Prints `items seconds rate`. Usage: bench_drain REDIS_URL PREFIX COUNT [WORKERS] [BATCH]
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use metering_core::message::QueueKind;
use metering_core::queue::{KeyLayout, QueueStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = args.get(2).cloned().unwrap_or_default();
    let count: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let workers: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
    let batch: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(500);
    let store = QueueStore::new(
        redis::Client::open(url)?,
        KeyLayout::new(&prefix, &format!("bench:{}", uuid::Uuid::new_v4())),
        Duration::from_secs(5),
    )?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let items = store.fetch(QueueKind::UsageRecords, batch).await?;
                if items.is_empty() {
                    return Ok::<_, metering_core::MeteringError>(());
                }
                // The do-nothing handler.
                let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
                store.ack(QueueKind::UsageRecords, &refs).await?;
                done.fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(std::sync::atomic::Ordering::Relaxed);
    if n != count {
        eprintln!("warning: drained {n}, expected {count}");
    }
    println!("{n} {secs:.3} {:.0}", n as f64 / secs);
    Ok(())
}
