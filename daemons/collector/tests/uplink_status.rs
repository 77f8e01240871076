//! The vehicle's uplink status (`status` text messages, `docs/protocols/telemetry.md`) over
//! real WebSockets on loopback: a vehicle with a backlog reports its queue on connect and the
//! remote's read API shows it, then the drained queue; a remote that does not list `status`
//! in its welcome's `accepts` (one older than the message) gets batches only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use relay_core::sqlite::Durability;
use relay_core::uplink::NewRecord;
use serde_json::Value;
use tether_collector::config::{VehicleConfig, VehicleKey};
use tether_collector::vehicle::Vehicle;
use tether_collector::wire::{RemoteMessage, decode_batch};
use tokio_tungstenite::tungstenite::Message;

const BACKLOG: u64 = 500;

fn records(n: u64) -> Vec<NewRecord> {
    (1..=n)
        .map(|i| NewRecord {
            ts_ms: 1_700_000_000_000 + i,
            payload: Bytes::from(format!("{{\"kind\":\"test\",\"n\":{i}}}")),
        })
        .collect()
}

fn vehicle_config(db: &std::path::Path, url: Option<String>) -> VehicleConfig {
    let mut c = VehicleConfig::new(db);
    c.durability = Durability::Normal;
    c.enable_can_listener = false;
    c.status_interval_ms = 0;
    c.remote_endpoint_url = url;
    c.api_key = Some("key-1".into());
    c
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth("reader")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicles_queue_reaches_the_remotes_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vehicle.db");
    // First without a remote: the records wait in the vehicle's store.
    let offline = Vehicle::start(vehicle_config(&db, None)).await.unwrap();
    offline.ingest().send(records(BACKLOG)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while offline.status().await.unwrap().queue_size < BACKLOG {
        assert!(Instant::now() < deadline, "records not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    offline.shutdown().await.unwrap();

    let keys = vec![VehicleKey {
        id: "car-1".into(),
        api_key: "key-1".into(),
    }];
    let (addr, server) = support::spawn_remote(&dir.path().join("remote.db"), keys).await;
    assert_eq!(get(addr, "/api/v1/telemetry/vehicles/car-1").await.0, 404);

    let url = format!("ws://{addr}/ws/telemetry/upload");
    let vehicle = Vehicle::start(vehicle_config(&db, Some(url)))
        .await
        .unwrap();
    // The status sent on connect carries the backlog; a later one the drained queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let (code, record) = get(addr, "/api/v1/telemetry/vehicles/car-1").await;
        let drained = record["status"]["queue"] == 0 && record["status"]["state"] == "connected";
        if code == 200 && drained && record["last_seq"] == BACKLOG {
            break record;
        }
        assert!(Instant::now() < deadline, "no drained status: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let history = record["status_history"].as_array().unwrap();
    assert_eq!(history[0]["queue"], BACKLOG, "{record}");
    assert_eq!(record["connected"], true);
    let latest = &record["status"];
    assert_eq!(history.last(), Some(latest));
    assert_eq!(latest["dropped"], 0);
    assert!(latest["records_per_s"].as_f64().is_some(), "{latest}");
    let (received, sent) = (latest["received_ts_ms"].as_u64(), latest["ts_ms"].as_u64());
    assert!(received.is_some() && sent.is_some(), "{latest}");

    // The list carries the same latest status.
    let (code, list) = get(addr, "/api/v1/telemetry/vehicles").await;
    assert_eq!(code, 200);
    assert_eq!(list["vehicles"][0]["id"], "car-1");
    assert_eq!(
        list["vehicles"][0]["status"]["state"], "connected",
        "{list}"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tether_telemetry_remote_bad_statuses_total 0"));
    assert!(!metrics.contains("tether_telemetry_remote_statuses_total 0"));

    // Kept after the vehicle leaves, with `connected: false`.
    vehicle.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, record) = get(addr, "/api/v1/telemetry/vehicles/car-1").await;
        if record["connected"] == false {
            assert!(record["status"]["ts_ms"].as_u64() >= sent, "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "still connected: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
}

/// A remote as it was before `status`: welcome without `accepts`, and any text message is
/// refused. It answers every batch with an ack and reports each text message it got.
async fn older_remote(
    tcp: tokio::net::TcpListener,
    texts: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let (stream, _) = tcp.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    let welcome = r#"{"type":"welcome","version":1,"vehicle":"car-1","acked":0}"#;
    ws.send(Message::Text(welcome.into())).await.unwrap();
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(bytes) => {
                let batch = decode_batch(&bytes).unwrap();
                let up_to = batch.last().unwrap().seq;
                let ack = RemoteMessage::Ack { up_to }.to_text();
                ws.send(Message::Text(ack.into())).await.unwrap();
            }
            Message::Text(text) => {
                texts.send(text.to_string()).unwrap();
                let refusal =
                    r#"{"type":"error","code":"bad_message","message":"expected binary batches"}"#;
                let _ = ws.send(Message::Text(refusal.into())).await;
                return;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_remote_gets_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws/telemetry/upload", tcp.local_addr().unwrap());
    let (texts_tx, mut texts) = tokio::sync::mpsc::unbounded_channel();
    let remote = tokio::spawn(older_remote(tcp, texts_tx));
    let vehicle = Vehicle::start(vehicle_config(&dir.path().join("v.db"), Some(url)))
        .await
        .unwrap();
    vehicle.ingest().send(records(50)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vehicle.status().await.unwrap().acked_seq < 50 {
        assert!(Instant::now() < deadline, "not uplinked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two status periods more: a vehicle that ignored `accepts` would have sent one by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = vehicle.status().await.unwrap();
    assert_eq!(status.state, "connected", "{status:?}");
    assert!(texts.try_recv().is_err(), "the vehicle sent a text message");
    vehicle.shutdown().await.unwrap();
    remote.abort();
}
