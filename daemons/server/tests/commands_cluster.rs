//! Commands across two server instances sharing one Redis and one records store
//! (`docs/cluster.md`): `POST /api/v1/commands` on instance 1 reaches the vehicle's agent
//! connected to instance 2; its answers come back, are stored once, published on Redis
//! `response:{command_id}` and streamed by `/ws/responses/{id}` from either instance. Needs
//! `REDIS_URL`.

mod commands_support;
mod server_support;

use std::time::Duration;

use commands_support::{fleet, pair, stream};
use futures::StreamExt;
use serde_json::{Value, json};
use server_support::{TestResult, redis_url};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_posted_on_one_instance_runs_on_the_agent_of_another() -> TestResult {
    let url = redis_url()?;
    let (one, two, _shared) = pair(&url).await?;
    let f = fleet(&one, "cleo").await?;
    let (mut agent, welcome) = f.connect_agent(&two).await?;
    assert_eq!(welcome.dongles, [f.dongle.parse::<Uuid>()?]);

    // Watch Redis for the published responses.
    let client = redis::Client::open(url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;

    let id = f
        .accept_id(&one, "ReadDTC", json!({"status_mask": 8}))
        .await?;
    pubsub.subscribe(format!("response:{id}")).await?;
    // Instance 1 has no connection for the dongle: the request travels through Redis.
    let command = agent.command().await?;
    assert_eq!(command.command_id, id);
    assert_eq!(command.command_name, "ReadDTC");
    agent.in_progress(id).await?;
    let engine = json!({"ecu": "engine", "dtcs": [{"dtcCode": "P0420", "ftb": 0, "status": 47}]});
    let abs = json!({"ecu": "abs", "dtcs": []});
    agent.answer(id, 1, false, engine.clone()).await?;
    agent.answer(id, 2, true, abs.clone()).await?;
    let done = f.ended(&one, id).await?;
    assert_eq!(done["status"], "completed", "{done}");

    // Published once each on `response:{id}`, in order.
    let mut published = Vec::new();
    let mut messages = pubsub.on_message();
    while published.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| format!("only {} responses published", published.len()))?
            .ok_or("pub/sub ended")?;
        let payload: String = message.get_payload()?;
        published.push(serde_json::from_str::<Value>(&payload)?);
    }
    assert_eq!(published[0]["response"], engine);
    assert_eq!(published[1]["response"], abs);

    // Streamed by either instance, from the shared records.
    for server in [&one, &two] {
        let (events, _) = stream(server, &id.to_string(), &f.token, false).await?;
        let payloads: Vec<&Value> = events.iter().map(|e| &e["response"]).collect();
        assert_eq!(payloads, [&engine, &abs]);
    }
    agent.close().await?;
    one.server.shutdown().await?;
    two.stop().await
}
