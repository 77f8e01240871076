//! Crash test for the SQLite outbox store: a child process (this test binary re-invoked with
//! `TETHER_OUTBOX_CRASH_CHILD` set) drives three streams in one file — appends past the cap,
//! sends, acks, reconciles, cursor updates, prunes — and reports each stream's numbers after
//! every committed call on stdout; the parent SIGKILLs it at random points, 30 times, and after
//! each kill reopens the file and checks every stream: nothing the child reported as committed
//! was lost, and the stored records are whole (dense seqs, contiguous record ids, payloads
//! intact, counters matching the rows).
//!
//! SIGKILL is a process crash; with WAL and `synchronous=FULL` (the default) that is also what
//! an OS crash would leave, but this test cannot cut the power.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    NewRecord, OnAck, OutboxRecord, OutboxStoreHandle, SqliteOutboxStore, StreamConfig,
    StreamOutbox,
};

const CHILD_ENV: &str = "TETHER_OUTBOX_CRASH_CHILD";
const KILLS: usize = 30;
const STREAMS: [&str; 3] = ["SIM-1/g1/a", "SIM-2/g1/b", "vehicle"];
const MAX_BATCH: u64 = 20;

fn config() -> StreamConfig {
    StreamConfig {
        max_records: 200,
        on_ack: OnAck::Keep,
        mirror_max: 64,
    }
}

fn id_of(r: &OutboxRecord) -> u64 {
    std::str::from_utf8(&r.payload).unwrap().parse().unwrap()
}

/// The numbers the child reports and the parent checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reported {
    last_id: u64,
    acked: u64,
    rx: u64,
    dropped: u64,
}

async fn newest_id(o: &StreamOutbox) -> u64 {
    o.recent(0, None, 1).await.unwrap().first().map_or(0, id_of)
}

async fn numbers(o: &StreamOutbox) -> Reported {
    Reported {
        last_id: newest_id(o).await,
        acked: o.acked(),
        rx: o.rx_seq(),
        dropped: o.stats(0).dropped.total(),
    }
}

/// The child's loop, run only by the parent test below (ignored in a normal run, so a no-op
/// never counts as a passed test).
#[test]
#[ignore = "child process of the SIGKILL test; started by it with --ignored"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = OutboxStoreHandle::spawn(
            SqliteOutboxStore::open(&path, Durability::Full).expect("child opens the store"),
        )
        .unwrap();
        let mut streams = Vec::new();
        for key in STREAMS {
            let o = StreamOutbox::open(&store, key, config())
                .await
                .expect("open");
            let next = newest_id(&o).await + 1;
            streams.push((o, next));
        }
        let mut rng = rand::rng();
        let mut out = std::io::stdout();
        loop {
            let k = rng.random_range(0..streams.len());
            let (o, next_id) = &mut streams[k];
            match rng.random_range(0..10) {
                0..=3 => {
                    let n = rng.random_range(1..=MAX_BATCH);
                    let records = (*next_id..*next_id + n)
                        .map(|id| NewRecord {
                            ts_ms: id,
                            payload: Bytes::from(id.to_string()),
                        })
                        .collect();
                    o.append(records).await.expect("append");
                    *next_id += n;
                }
                4 | 5 => {
                    o.next_batch(o.acked(), 16).await.expect("send");
                }
                6 => {
                    let top = o.sent_high().min(o.last_seq()).max(o.acked());
                    let up_to = rng.random_range(o.acked()..=top);
                    o.ack(up_to).await.expect("ack");
                }
                7 => {
                    let remote = rng.random_range(o.acked()..=o.last_seq());
                    o.reconcile(remote).await.expect("reconcile");
                }
                8 => {
                    let rx = o.rx_seq() + rng.random_range(1..50);
                    o.set_rx(rx).await.expect("rx");
                }
                _ => {
                    let older = (*next_id).saturating_sub(100);
                    o.prune_uplinked(older).await.expect("prune");
                }
            }
            let n = numbers(o).await;
            writeln!(
                out,
                "state {k} {} {} {} {}",
                n.last_id, n.acked, n.rx, n.dropped
            )
            .and_then(|()| out.flush())
            .expect("stdout");
        }
    });
}

/// Checks one reopened stream against what the child last reported for it.
async fn check_stream(o: &StreamOutbox, reported: Reported, ctx: &str) {
    let now = numbers(o).await;
    let stats = o.stats(0);
    let ctx = format!("{ctx}, reported {reported:?}, now {now:?}, {stats:?}");
    // Nothing reported as committed was lost; at most the call in flight went further.
    assert!(now.last_id >= reported.last_id, "an append was lost: {ctx}");
    assert!(now.last_id <= reported.last_id + MAX_BATCH, "{ctx}");
    assert!(now.acked >= reported.acked, "an ack was lost: {ctx}");
    assert!(now.rx >= reported.rx, "a cursor was lost: {ctx}");
    assert!(
        now.dropped >= reported.dropped,
        "a drop count was lost: {ctx}"
    );
    assert!(stats.acked_through <= stats.last_seq, "{ctx}");
    // The stored records are whole: dense seqs, contiguous ids, payloads intact.
    let all = o.recent(0, None, usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, stats.stored, "{ctx}");
    for pair in all.windows(2) {
        assert_eq!(pair[0].seq + 1, pair[1].seq, "{ctx}");
        assert_eq!(id_of(&pair[0]) + 1, id_of(&pair[1]), "{ctx}");
    }
    for r in &all {
        assert_eq!(r.ts_ms, id_of(r), "payload and timestamp disagree: {ctx}");
    }
    if let Some(last) = all.last() {
        assert_eq!(last.seq, stats.last_seq, "{ctx}");
    }
    let pending: Vec<&OutboxRecord> = all.iter().filter(|r| r.seq > stats.acked_through).collect();
    assert_eq!(pending.len() as u64, stats.pending, "{ctx}");
    assert!(stats.stored <= config().max_records, "{ctx}");
}

#[test]
fn sigkill_at_random_points_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let exe = std::env::current_exe().unwrap();
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reported: HashMap<usize, Reported> = HashMap::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of committed calls; the child keeps running while the
        // signal is on its way, so it dies at an arbitrary instruction.
        let target = rng.random_range(1..=150usize);
        let mut lines = Vec::new();
        let mut seen = 0;
        while seen < target {
            match rx.recv() {
                Ok(line) => {
                    // The test harness prints its own lines around the child's.
                    if line.starts_with("state ") {
                        seen += 1;
                        lines.push(line);
                    }
                }
                Err(_) => panic!("child exited on its own (kill {kill}, seed {seed}): {lines:?}"),
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter().filter(|l| l.starts_with("state ")));
        for line in &lines {
            let fields: Vec<u64> = line["state ".len()..]
                .split(' ')
                .map(|f| f.parse().unwrap())
                .collect();
            reported.insert(
                fields[0] as usize,
                Reported {
                    last_id: fields[1],
                    acked: fields[2],
                    rx: fields[3],
                    dropped: fields[4],
                },
            );
        }

        rt.block_on(async {
            let store =
                OutboxStoreHandle::spawn(SqliteOutboxStore::open(&path, Durability::Full).unwrap())
                    .unwrap();
            for (k, key) in STREAMS.iter().enumerate() {
                let o = StreamOutbox::open(&store, key, config()).await.unwrap();
                let ctx = format!("kill {kill}, seed {seed}, stream {key}");
                check_stream(&o, reported.get(&k).copied().unwrap_or_default(), &ctx).await;
            }
            store.close().await.unwrap();
        });
    }
    assert!(reported.values().any(|r| r.last_id > 0));
}
