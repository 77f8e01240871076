//! `tether collector` under SIGKILL: 20 cycles, each killing the vehicle, the remote or both
//! at a random point while frames flow. At the end the remote holds exactly the records the
//! vehicle stored — every one once, same seq, same content, in order — and the vehicle has
//! nothing left to send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod collector_support;

use std::time::Duration;

use collector_support::*;
use rand::Rng;

const CYCLES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_either_side_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (remote_port, vehicle_port) = (free_port(), free_port());
    let mut bus = Bus::start().await;
    let remote_db = dir.path().join("remote.db");
    let vehicle_db = dir.path().join("vehicle.db");
    let renv = remote_env(&remote_db, remote_port, "car-1:key-1");
    let venv = vehicle_env(&vehicle_db, vehicle_port, remote_port, "key-1", bus.addr);
    let mut remote = Collector::spawn(dir.path(), "remote", &renv);
    let mut vehicle = Collector::spawn(dir.path(), "vehicle", &venv);
    let mut rng = rand::rng();
    let mut counter = 0u32;
    for cycle in 0..CYCLES {
        wait_for("the vehicle is up", || async {
            vehicle_status(&vehicle).await
        })
        .await;
        let n = rng.random_range(20..120);
        bus.send_counters(counter..counter + n).await;
        counter += n;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        match cycle % 3 {
            0 => {
                vehicle.kill();
                vehicle = Collector::spawn(dir.path(), "vehicle", &venv);
            }
            1 => {
                remote.kill();
                remote = Collector::spawn(dir.path(), "remote", &renv);
            }
            _ => {
                remote.kill();
                vehicle.kill();
                remote = Collector::spawn(dir.path(), "remote", &renv);
                vehicle = Collector::spawn(dir.path(), "vehicle", &venv);
            }
        }
    }
    let status = wait_for("the vehicle drained", || async {
        vehicle_status(&vehicle).await.filter(|s| {
            s["state"] == "connected" && s["queue_size"] == 0 && s["acked_seq"] == s["last_seq"]
        })
    })
    .await;
    let stored = vehicle_records(&vehicle).await;
    let held = remote_records(&remote.http, "car-1").await;
    assert!(!stored.is_empty());
    assert_eq!(stored.len() as u64, status["last_seq"].as_u64().unwrap());
    let stored: Vec<(u64, u32)> = stored.iter().map(|(s, c, _)| (*s, *c)).collect();
    assert_eq!(
        held, stored,
        "the remote differs from what the vehicle stored"
    );
    assert!(
        held.iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as u64 + 1)
    );
    assert!(
        held.windows(2).all(|w| w[0].1 < w[1].1),
        "records out of order or twice"
    );
    assert_eq!(status["dropped_total"], 0);
}
