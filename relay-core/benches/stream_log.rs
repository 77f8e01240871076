//! Stream log throughput: append + read per backend at batch sizes 1, 64 and 1024, side by side
//! with the raw ceiling of the same engine measured in the same run:
//!
//! * SQLite: plain batched `INSERT`s with rusqlite, one row per item, into a table of the shape
//!   the log used before chunks, same connection settings (`relay_core::sqlite::open_wal`,
//!   `Durability::Normal`), one transaction per batch, no async hop.
//! * Redis: `redis-benchmark -c 1 -P <batch> XADD … * f <64 bytes>` (one client, pipelined).
//!
//! Each cell is the median of `REPS` runs; payloads are 64 bytes. Run it with
//! `scripts/bench-stream-log.sh` (needs Redis at `REDIS_URL` and `redis-benchmark` on PATH).
//! A custom harness (not criterion) because the ceiling comes from an external tool and the
//! output is one comparison table; the run takes a few tens of seconds on purpose.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::log::{Item, MemoryStreamLog, RedisStreamLog, SqliteStreamLog, StreamLog};
use relay_core::sqlite::{Durability, open_wal};

const REPS: usize = 3;
const BATCHES: [usize; 3] = [1, 64, 1024];
const PAYLOAD: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Items per run for a backend class and batch size: enough for a stable rate, small enough
/// for a shared machine.
fn items_for(kind: &str, batch: usize) -> usize {
    match (kind, batch) {
        ("memory", 1) => 500_000,
        ("memory", _) => 1_000_000,
        (_, 1) => 10_000,
        (_, 64) => 64_000,
        _ => 131_072,
    }
}

fn make_items(n: usize) -> Vec<Item> {
    let payload = Bytes::from_static(PAYLOAD);
    (1..=n as u64)
        .map(|seq| Item {
            seq,
            ts_ms: 1_700_000_000_000 + seq,
            payload: payload.clone(),
        })
        .collect()
}

/// One run: append all items in `batch`-sized calls, then read them back `batch` at a time.
/// Returns (append seconds, read seconds).
async fn run_log<L: StreamLog>(
    log: &L,
    stream: &str,
    items: &[Item],
    batch: usize,
) -> BenchResult<(f64, f64)> {
    let t = Instant::now();
    for chunk in items.chunks(batch) {
        log.append(stream, chunk).await?;
    }
    let append = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut after = 0;
    let mut n = 0;
    while n < items.len() {
        let r = log.read(stream, after, batch).await?;
        let Some(last) = r.last_seq() else {
            return Err(format!("read stalled at {after} in {stream}").into());
        };
        n += r.items.len();
        after = last;
    }
    let read = t.elapsed().as_secs_f64();
    std::hint::black_box(n);
    Ok((append, read))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median rates in items/s: append, read, and append+read over the same items.
#[derive(Clone, Copy, Default)]
struct Rates {
    append: f64,
    read: f64,
    both: f64,
}

fn rates(n: usize, runs: &[(f64, f64)]) -> Rates {
    let n = n as f64;
    Rates {
        append: median(runs.iter().map(|r| n / r.0).collect()),
        read: median(runs.iter().map(|r| n / r.1).collect()),
        both: median(runs.iter().map(|r| n / (r.0 + r.1)).collect()),
    }
}

/// The SQLite ceiling: one row per item in the log's table shape before chunks, same pragmas,
/// plain rusqlite, one transaction per batch. Returns items/s.
fn sqlite_raw(path: &Path, items: &[Item], batch: usize) -> BenchResult<f64> {
    let mut conn = open_wal(path, Durability::Normal)?;
    conn.execute_batch(
        "CREATE TABLE raw_items (stream_id INTEGER NOT NULL, seq INTEGER NOT NULL,
         ts_ms INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (stream_id, seq))
         WITHOUT ROWID;",
    )?;
    let t = Instant::now();
    for chunk in items.chunks(batch) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached("INSERT INTO raw_items VALUES (1, ?1, ?2, ?3)")?;
            for it in chunk {
                st.execute(rusqlite::params![
                    it.seq as i64,
                    it.ts_ms as i64,
                    &it.payload[..]
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(items.len() as f64 / t.elapsed().as_secs_f64())
}

/// The Redis ceiling: `redis-benchmark` pipelined XADD with one client. Returns requests/s.
fn redis_raw(url: &redis::ConnectionInfo, key: &str, batch: usize, n: usize) -> BenchResult<f64> {
    let (host, port) = match url.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        other => return Err(format!("redis-benchmark needs a TCP Redis, got {other:?}").into()),
    };
    let payload = std::str::from_utf8(PAYLOAD)?;
    let out = Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port.to_string(), "-c", "1", "-q"])
        .args(["-P", &batch.to_string(), "-n", &n.to_string()])
        .args(["XADD", key, "*", "f", payload])
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.rsplit('\r').next().unwrap_or_default();
    let rps = last
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot parse redis-benchmark output: {last:?}"))?;
    Ok(rps)
}

async fn del_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> BenchResult<()> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(conn).await?;
    if !keys.is_empty() {
        redis::cmd("DEL").arg(&keys).exec_async(conn).await?;
    }
    Ok(())
}

struct Row {
    backend: &'static str,
    batch: usize,
    ours: Rates,
    ceiling: Option<f64>,
}

async fn bench() -> BenchResult<Vec<Row>> {
    let mut rows = Vec::new();
    let dir = tempfile::tempdir()?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url.as_str())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let prefix = format!("tether-bench:{:016x}:", rand::random::<u64>());
    let redis_log = RedisStreamLog::connect(&url, &prefix).await?;

    for batch in BATCHES {
        // memory
        let n = items_for("memory", batch);
        let items = make_items(n);
        let mut runs = Vec::new();
        for rep in 0..REPS {
            let log = MemoryStreamLog::new();
            runs.push(run_log(&log, &format!("m{rep}"), &items, batch).await?);
        }
        rows.push(Row {
            backend: "memory",
            batch,
            ours: rates(n, &runs),
            ceiling: None,
        });

        // SQLite and its ceiling, interleaved (and the order swapped every rep) so both see the
        // same machine state.
        let n = items_for("sqlite", batch);
        let items = make_items(n);
        let (mut runs, mut raw) = (Vec::new(), Vec::new());
        for rep in 0..REPS {
            for ours in [rep % 2 == 0, rep % 2 != 0] {
                if ours {
                    let path = dir.path().join(format!("log-{batch}-{rep}.db"));
                    let log = SqliteStreamLog::open(&path, Durability::Normal).await?;
                    runs.push(run_log(&log, "group:bench:a_to_b", &items, batch).await?);
                } else {
                    let raw_path = dir.path().join(format!("raw-{batch}-{rep}.db"));
                    let raw_items = items.clone();
                    raw.push(
                        tokio::task::spawn_blocking(move || {
                            sqlite_raw(&raw_path, &raw_items, batch).map_err(|e| e.to_string())
                        })
                        .await??,
                    );
                }
            }
        }
        rows.push(Row {
            backend: "sqlite",
            batch,
            ours: rates(n, &runs),
            ceiling: Some(median(raw)),
        });

        // Redis and redis-benchmark.
        let n = items_for("redis", batch);
        let items = make_items(n);
        let (mut runs, mut raw) = (Vec::new(), Vec::new());
        for rep in 0..REPS {
            let stream = format!("bench:{batch}:{rep}");
            runs.push(run_log(&redis_log, &stream, &items, batch).await?);
            redis_log.delete_stream(&stream).await?;
            let key = format!("{prefix}raw");
            raw.push(redis_raw(client.get_connection_info(), &key, batch, n)?);
            del_prefix(&mut admin, &key).await?;
        }
        rows.push(Row {
            backend: "redis",
            batch,
            ours: rates(n, &runs),
            ceiling: Some(median(raw)),
        });
    }
    del_prefix(&mut admin, &format!("{prefix}*")).await?;
    Ok(rows)
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.0} k/s", r / 1e3)
    }
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a
    // quick exit, so only run when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let rows = rt.block_on(bench())?;
    println!("\nstream log append+read, 64-byte payloads, median of {REPS} runs (items/s)\n");
    println!(
        "| backend | batch | append | read | append+read | raw ceiling (append) | append / ceiling |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (ceiling, ratio) = match r.ceiling {
            Some(c) => (fmt_rate(c), format!("{:.0} %", 100.0 * r.ours.append / c)),
            None => ("—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.batch,
            fmt_rate(r.ours.append),
            fmt_rate(r.ours.read),
            fmt_rate(r.ours.both),
            ceiling,
            ratio
        );
    }
    let took: Duration = started.elapsed();
    println!("\n(run took {:.0} s)", took.as_secs_f64());
    Ok(())
}
