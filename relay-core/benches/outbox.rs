//! Store-and-forward throughput: one cycle is what a producer does per batch — append 256
//! records of 64 bytes, take them as the next batch to send, and apply the remote's ack for
//! them — through [`StreamOutbox`] and its store thread, the path the agent and the telemetry
//! vehicle use.
//!
//! * `cycle_256/sqlite_normal/1` and `/10`: a durable SQLite store (WAL, `synchronous=NORMAL`),
//!   one stream, or ten streams driven concurrently (the agent with ten dongles; the store
//!   thread group-commits them).
//! * `cycle_256/sqlite_full/1`: the same with `synchronous=FULL` (an fsync per commit).
//! * `cycle_256/memory/1`: the memory store, for the cost of the rules, the mirror and the
//!   thread hop alone.
//! * `cycle_256/agent_rows/1`: the layout the dongle agent used before (one row per frame,
//!   `INSERT` per frame, ranged `DELETE` on ack, same pragmas) with plain rusqlite on the
//!   calling thread — no async hop, no mirror: the peer this design replaces.
//! * `overload_256/sqlite_normal/1`: the producer is twice as fast as the link. The stream sits
//!   at its cap (10,000): each cycle appends 256, sends and acks 128; the cap drops the oldest
//!   128 and renumbers. Shows that shedding costs what is shed, not what is stored.
//!
//! Throughput is in records appended per second. `cargo bench -p relay-core --bench outbox`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    MemoryOutboxStore, NewRecord, OnAck, OutboxStoreHandle, SqliteOutboxStore, StreamConfig,
    StreamOutbox,
};
use rusqlite::{Connection, params};

const BATCH: usize = 256;
const PAYLOAD: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn records(n: usize) -> Vec<NewRecord> {
    let payload = Bytes::from_static(PAYLOAD);
    (0..n as u64)
        .map(|i| NewRecord {
            ts_ms: 1_700_000_000_000 + i,
            payload: payload.clone(),
        })
        .collect()
}

/// The agent's stream settings with a cap of `max_records`.
fn config(max_records: u64) -> StreamConfig {
    StreamConfig {
        max_records,
        on_ack: OnAck::Delete,
        mirror_max: 16_384,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens `n` streams on `store`.
fn streams(
    rt: &tokio::runtime::Runtime,
    store: &OutboxStoreHandle,
    n: usize,
    config: StreamConfig,
) -> Vec<StreamOutbox> {
    rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                StreamOutbox::open(store, &format!("SIM-{i:04}/group/a"), config)
                    .await
                    .expect("open stream"),
            );
        }
        out
    })
}

/// Append `append`, send and ack `send` on one stream.
async fn cycle(o: &mut StreamOutbox, append: usize, send: usize) {
    o.append(records(append)).await.expect("append");
    let after = o.acked();
    let batch = o.next_batch(after, send).await.expect("batch");
    let last = batch.last().map_or(after, |r| r.seq);
    o.ack(last).await.expect("ack");
}

fn bench_stores(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let mut group = c.benchmark_group("cycle_256");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(6));
    let config = config(100_000);
    let sqlite = |name: &str, sync| {
        let store = SqliteOutboxStore::open(dir.join(name), sync).expect("open");
        OutboxStoreHandle::spawn(store).expect("spawn")
    };
    let memory = OutboxStoreHandle::spawn(MemoryOutboxStore::new()).expect("spawn");
    let cases = [
        ("memory", 1, memory),
        (
            "sqlite_normal",
            1,
            sqlite("normal-1.db", Durability::Normal),
        ),
        (
            "sqlite_normal",
            10,
            sqlite("normal-10.db", Durability::Normal),
        ),
        ("sqlite_full", 1, sqlite("full-1.db", Durability::Full)),
    ];
    for (name, n, store) in cases {
        let mut outs = streams(rt, &store, n, config);
        group.throughput(Throughput::Elements((BATCH * n) as u64));
        group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks = outs.iter_mut().map(|o| cycle(o, BATCH, BATCH));
                    futures::future::join_all(tasks).await;
                })
            })
        });
    }
    group.bench_with_input(BenchmarkId::new("agent_rows", 1), &1, |b, _| {
        let mut rows = AgentRows::open(&dir.join("agent-rows.db"));
        b.iter(|| rows.cycle(BATCH));
    });
    group.finish();
}

fn bench_overload(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let mut group = c.benchmark_group("overload_256");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(6));
    let config = config(10_000);
    let store = OutboxStoreHandle::spawn(
        SqliteOutboxStore::open(dir.join("overload.db"), Durability::Normal).expect("open"),
    )
    .expect("spawn");
    let mut outs = streams(rt, &store, 1, config);
    let o = &mut outs[0];
    rt.block_on(o.append(records(10_000)))
        .expect("fill to the cap");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("sqlite_normal", 1), |b| {
        b.iter(|| rt.block_on(cycle(o, BATCH, BATCH / 2)))
    });
    group.finish();
    // Every cycle fills the stream to its cap again, then 128 are acknowledged.
    let stats = o.stats(0);
    assert_eq!(stats.stored, 10_000 - BATCH as u64 / 2, "the cap holds");
    assert_eq!(
        stats.unsettled, 0,
        "nothing sent was dropped: only the unsent excess"
    );
    assert!(
        stats.dropped.overflow > 0,
        "the excess was shed and counted"
    );
}

/// The dongle agent's previous outbox layout (`frame(stream, seq, payload)`, one row per frame,
/// WITHOUT ROWID): insert the batch in one transaction, read it back, delete it on ack.
struct AgentRows {
    conn: Connection,
    last: i64,
}

impl AgentRows {
    fn open(path: &std::path::Path) -> Self {
        let conn = Connection::open(path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("sync");
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS frame (stream INTEGER NOT NULL, seq INTEGER NOT NULL,
                 payload BLOB NOT NULL, PRIMARY KEY(stream, seq)) WITHOUT ROWID;",
        )
        .expect("schema");
        AgentRows { conn, last: 0 }
    }

    fn cycle(&mut self, n: usize) {
        let tx = self.conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO frame (stream, seq, payload) VALUES (1, ?1, ?2)")
                .expect("prepare");
            for i in 1..=n as i64 {
                insert
                    .execute(params![self.last + i, &PAYLOAD[..]])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
        let first = self.last;
        self.last += n as i64;
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut select = self
            .conn
            .prepare_cached("SELECT seq, payload FROM frame WHERE stream = 1 AND seq > ?1 ORDER BY seq LIMIT ?2")
            .expect("prepare");
            select
                .query_map(params![first, n as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("select")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(rows.len(), n);
        let tx = self.conn.transaction().expect("begin");
        tx.execute(
            "DELETE FROM frame WHERE stream = 1 AND seq <= ?1",
            params![self.last],
        )
        .expect("delete");
        tx.commit().expect("commit");
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    bench_stores(c, &rt, dir.path());
    bench_overload(c, &rt, dir.path());
}

criterion_group!(outbox, benches);
criterion_main!(outbox);
