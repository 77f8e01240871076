//! Crash test for the SQLite outbox: a child process (this test binary re-invoked with
//! `TETHER_OUTBOX_CRASH_CHILD` set) appends, marks and prunes in a loop and reports each
//! committed step on stdout; the parent SIGKILLs it at random points, 30 times, and after each
//! kill checks the file: every record not acknowledged is still there, with dense seqs and the
//! right payload, and nothing the child reported as committed was lost.
//!
//! SIGKILL is a process crash; with WAL and `synchronous=FULL` (the default) that is also what
//! an OS crash would leave, but this test cannot cut the power.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_core::uplink::{NewRecord, OutboxConfig, SqliteOutbox, UplinkOutbox, UplinkSync};

const CHILD_ENV: &str = "TETHER_OUTBOX_CRASH_CHILD";
const KILLS: usize = 30;

fn payload(seq: u64) -> Bytes {
    Bytes::from(format!("record-{seq}"))
}

fn config() -> OutboxConfig {
    // No overflow drops in this test: every loss would be a bug.
    OutboxConfig {
        max_local_records: 10_000_000,
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
    let mut outbox =
        SqliteOutbox::open(&path, config(), UplinkSync::Full).expect("child opens the outbox");
    let mut rng = rand::rng();
    let mut out = std::io::stdout();
    loop {
        let stats = outbox.stats(0).expect("stats");
        let next = stats.last_seq + 1;
        let n = rng.random_range(1..=20u64);
        let records: Vec<NewRecord> = (next..next + n)
            .map(|seq| NewRecord {
                ts_ms: seq,
                payload: payload(seq),
            })
            .collect();
        let report = outbox.append(&records).expect("append");
        assert_eq!(report.first_seq, next);
        writeln!(out, "appended {}", report.last_seq)
            .and_then(|()| out.flush())
            .expect("stdout");
        if rng.random_bool(0.5) {
            // The remote acknowledged some prefix.
            let up_to = rng.random_range(stats.acked_through..=report.last_seq);
            outbox.mark_uplinked(up_to).expect("mark");
            writeln!(out, "acked {up_to}")
                .and_then(|()| out.flush())
                .expect("stdout");
        }
        if rng.random_bool(0.1) {
            outbox.prune_uplinked(u64::MAX).expect("prune");
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_no_unacknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let exe = std::env::current_exe().unwrap();
    let seed: u64 = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reported_appended = 0u64;
    let mut reported_acked = 0u64;

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
        // Kill after a random number of committed steps; the child keeps running while the
        // signal is on its way, so it dies at an arbitrary instruction.
        let target = rng.random_range(1..=120usize);
        let mut seen = 0;
        let mut lines = Vec::new();
        while seen < target {
            match rx.recv() {
                Ok(line) => {
                    if line.starts_with("appended ") || line.starts_with("acked ") {
                        seen += 1;
                    }
                    lines.push(line);
                }
                Err(_) => panic!("child exited on its own (kill {kill}, seed {seed}): {lines:?}"),
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in &lines {
            if let Some(v) = line.strip_prefix("appended ") {
                reported_appended = reported_appended.max(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("acked ") {
                reported_acked = reported_acked.max(v.parse().unwrap());
            }
        }

        let mut outbox = SqliteOutbox::open(&path, config(), UplinkSync::Full).unwrap();
        let stats = outbox.stats(0).unwrap();
        let ctx = format!("kill {kill}, seed {seed}, stats {stats:?}");
        assert!(
            stats.last_seq >= reported_appended,
            "a committed append was lost: {ctx}"
        );
        assert!(
            stats.acked_through >= reported_acked,
            "a committed ack was lost: {ctx}"
        );
        assert!(stats.acked_through <= stats.last_seq, "{ctx}");
        assert_eq!(stats.dropped_pending_total, 0, "{ctx}");
        // Every unacknowledged record is there, dense, with its payload.
        let pending = outbox.fetch_pending(0, usize::MAX).unwrap();
        let expected: Vec<u64> = (stats.acked_through + 1..=stats.last_seq).collect();
        assert_eq!(
            pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
            expected,
            "{ctx}"
        );
        for r in &pending {
            assert_eq!(r.payload, payload(r.seq), "{ctx}");
        }
        assert_eq!(stats.pending, expected.len() as u64, "{ctx}");
        // The stored counter matches the rows.
        let all = outbox.recent(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, stats.stored, "{ctx}");
    }
    assert!(reported_appended > 0);
}
