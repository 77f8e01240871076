//! 200 vehicles on one remote, over real WebSockets on loopback: every vehicle's records
//! arrive once, under its own id (the one its key maps to), and every vehicle ends with
//! nothing pending.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::sqlite::Durability;
use relay_core::uplink::NewRecord;
use tether_collector::config::{VehicleConfig, VehicleKey};
use tether_collector::vehicle::Vehicle;

const VEHICLES: usize = 200;
const RECORDS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_vehicles_upload_to_one_remote() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<VehicleKey> = (0..VEHICLES)
        .map(|i| VehicleKey {
            id: format!("car-{i:03}"),
            api_key: format!("key-{i}"),
        })
        .collect();
    let (addr, server) = support::spawn_remote(&dir.path().join("remote.db"), keys).await;

    let mut vehicles = Vec::new();
    for i in 0..VEHICLES {
        let mut c = VehicleConfig::new(dir.path().join(format!("v{i}.db")));
        c.durability = Durability::Normal;
        c.enable_can_listener = false;
        c.status_interval_ms = 0;
        c.remote_endpoint_url = Some(format!("ws://{addr}/ws/telemetry/upload"));
        c.api_key = Some(format!("key-{i}"));
        let v = Vehicle::start(c).await.unwrap();
        let records = (0..RECORDS)
            .map(|n| NewRecord {
                ts_ms: 1_700_000_000_000 + n,
                payload: Bytes::from(format!("{{\"kind\":\"test\",\"vehicle\":{i},\"n\":{n}}}")),
            })
            .collect();
        v.ingest().send(records).await.unwrap();
        vehicles.push(v);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for v in &vehicles {
        loop {
            let s = v.status().await.unwrap();
            if s.acked_seq == RECORDS && s.queue_size == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "a vehicle did not drain: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let client = reqwest::Client::new();
    // `GET path` of the reader API as JSON.
    let get = |path: String| {
        let request = client
            .get(format!("http://{addr}{path}"))
            .bearer_auth("reader");
        async move {
            let response = request.send().await.unwrap();
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let list = get("/api/v1/telemetry/vehicles".to_owned()).await;
    let list = list["vehicles"].as_array().unwrap();
    assert_eq!(list.len(), VEHICLES);
    for entry in list {
        assert_eq!(entry["last_seq"], RECORDS, "{entry}");
        assert_eq!(entry["records"], RECORDS, "{entry}");
    }
    // Each vehicle's records are its own: the payload names the vehicle whose key sent it.
    for i in [0usize, 77, 199] {
        let page = get(format!(
            "/api/v1/telemetry/vehicles/car-{i:03}/records?limit=1000"
        ))
        .await;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len() as u64, RECORDS);
        for (n, item) in items.iter().enumerate() {
            assert_eq!(item["seq"], n as u64 + 1);
            assert_eq!(item["record"]["vehicle"], i);
            assert_eq!(item["record"]["n"], n);
        }
    }
    for v in vehicles {
        v.shutdown().await.unwrap();
    }
    server.abort();
}
