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
    let mut site = Site::start().await;
    let renv = site.remote_env("car-1:key-1");
    let venv = site.vehicle_env("key-1");
    let mut remote = site.spawn("remote", &renv);
    let mut vehicle = site.spawn("vehicle", &venv);
    let mut rng = rand::rng();
    let mut counter = 0u32;
    for cycle in 0..CYCLES {
        wait_for("the vehicle is up", || async {
            vehicle_status(&vehicle).await
        })
        .await;
        let n = rng.random_range(20..120);
        site.bus.send_counters(counter..counter + n).await;
        counter += n;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        match cycle % 3 {
            0 => {
                vehicle.kill();
                vehicle = site.spawn("vehicle", &venv);
            }
            1 => {
                remote.kill();
                remote = site.spawn("remote", &renv);
            }
            _ => {
                remote.kill();
                vehicle.kill();
                remote = site.spawn("remote", &renv);
                vehicle = site.spawn("vehicle", &venv);
            }
        }
    }
    let status = wait_status(&vehicle, "the vehicle drained", |s| {
        s["state"] == "connected" && s["queue_size"] == 0 && s["acked_seq"] == s["last_seq"]
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
