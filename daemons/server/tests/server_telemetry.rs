//! The telemetry remote mounted in `tether server`: a vehicle (the collector's vehicle role)
//! uploads with its agent token and its records are stored under the agent's id; a bad agent
//! token is refused before the upgrade; users read only their own agents' vehicles.

mod server_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::uplink::NewRecord;
use reqwest::StatusCode;
use server_support::{TestResult, TestServer};
use tether_collector::config::VehicleConfig;
use tether_collector::vehicle::Vehicle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_upload_with_agent_tokens_and_users_read_their_own() -> TestResult {
    let server = TestServer::start().await?;
    let alice = server.user_token("alice").await?;
    let bob = server.user_token("bob").await?;
    let (agent_id, agent_token) = server.agent(&alice, "truck-7").await?;
    let url = format!("ws://{}/ws/telemetry/upload", server.server.local_addr());

    // A bad agent token (or a user token) is refused before the upgrade.
    for bad in ["ta_nope", alice.as_str()] {
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {bad}").parse()?);
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    let dir = tempfile::tempdir()?;
    let mut config = VehicleConfig::new(dir.path().join("vehicle.db"));
    config.enable_can_listener = false;
    config.status_interval_ms = 0;
    config.remote_endpoint_url = Some(url);
    config.api_key = Some(agent_token);
    let vehicle = Vehicle::start(config).await?;
    let records = (0..10u64)
        .map(|n| NewRecord {
            ts_ms: 1_700_000_000_000 + n,
            payload: Bytes::from(format!("{{\"kind\":\"test\",\"n\":{n}}}")),
        })
        .collect();
    vehicle.ingest().send(records).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while vehicle.status().await?.acked_seq < 10 {
        assert!(Instant::now() < deadline, "not uplinked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, list) = server.get("/api/v1/telemetry/vehicles", &alice).await?;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["vehicles"][0]["id"], agent_id.as_str());
    assert_eq!(list["vehicles"][0]["last_seq"], 10);
    let path = format!("/api/v1/telemetry/vehicles/{agent_id}/records?after_seq=4&limit=3");
    let (status, page) = server.get(&path, &alice).await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ns: Vec<_> = page["items"]
        .as_array()
        .map(|items| items.iter().map(|i| i["record"]["n"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(ns, vec![4, 5, 6]);
    assert_eq!(page["next_after_seq"], 7);
    // The vehicle's uplink status (its `status` messages) reaches the vehicle's record.
    let one = format!("/api/v1/telemetry/vehicles/{agent_id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let (status, record) = server.get(&one, &alice).await?;
        assert_eq!(status, StatusCode::OK, "{record}");
        if record["status"]["state"] == "connected" && record["status"]["queue"] == 0 {
            break record;
        }
        assert!(Instant::now() < deadline, "no status: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["connected"], true);
    assert!(
        !record["status_history"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    let (_, list) = server.get("/api/v1/telemetry/vehicles", &alice).await?;
    assert_eq!(
        list["vehicles"][0]["status"]["state"], "connected",
        "{list}"
    );
    // Bob sees nothing of Alice's agent.
    let (status, _) = server.get(&path, &bob).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.get(&one, &bob).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, list) = server.get("/api/v1/telemetry/vehicles", &bob).await?;
    assert_eq!(list["vehicles"].as_array().map(Vec::len), Some(0));
    vehicle.shutdown().await?;
    Ok(())
}
