//! The agent connector with a test double of the agent's diagnostics role speaking the
//! diagnostics channel over a real `/ws/data` WebSocket: accepted and refused dongles,
//! `online`, commands routed to the agent, responses stored and streamed, failures, a
//! read-only command re-sent once after a reconnect, ClearDTC never twice, offline ttl.

mod commands_support;
mod server_support;

use std::time::Duration;

use commands_support::fake_agent::FakeAgent;
use commands_support::{Fleet, fleet, outcome, stream};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use uuid::Uuid;

async fn online(server: &TestServer, f: &Fleet) -> TestResult<bool> {
    let (status, body) = server
        .get(&format!("/api/v1/vehicles/{}", f.vehicle), &f.token)
        .await?;
    assert_eq!(status, StatusCode::OK);
    Ok(body["online"] == true)
}

async fn eventually_online(server: &TestServer, f: &Fleet, want: bool) -> TestResult {
    for _ in 0..200 {
        if online(server, f).await? == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("vehicle never became online={want}").into())
}

#[tokio::test]
async fn commands_run_through_the_agent_and_its_answers_are_stored_and_streamed() -> TestResult {
    let server = TestServer::start().await?;
    let f = fleet(&server, "alice").await?;
    let other = fleet(&server, "mallory").await?;
    assert!(!online(&server, &f).await?);
    let (mut agent, welcome) =
        FakeAgent::connect(&server, &f.agent_token, &[&f.dongle, &other.dongle]).await?;
    assert_eq!(welcome.dongles, [f.dongle.parse::<Uuid>()?]);
    assert_eq!(welcome.refused, [other.dongle.parse::<Uuid>()?]);
    eventually_online(&server, &f, true).await?;

    // A functional ReadDTC: two ECUs answer, the second is final.
    let id = f
        .accept_id(&server, "ReadDTC", json!({"status_mask": 8}))
        .await?;
    let command = agent.command().await?;
    assert_eq!(command.command_id, id);
    assert_eq!(command.dongle_id, f.dongle.parse::<Uuid>()?);
    assert_eq!(command.command_name, "ReadDTC");
    assert_eq!(command.command_params, json!({"status_mask": 8}));
    assert_eq!(command.attempt, 1);
    assert_eq!(command.ecus.len(), 2);
    assert_eq!(command.ecus[0].request_id, 0x7E0);
    assert!(command.deadline_ms > 0);
    agent.in_progress(id).await?;
    let engine = json!({"ecu": "engine", "dtcs": [{"dtcCode": "P0420", "ftb": 0, "status": 47}]});
    let abs = json!({"ecu": "abs", "dtcs": []});
    agent.answer(id, 1, false, engine.clone()).await?;
    // A duplicate / out-of-sequence answer is ignored.
    agent.answer(id, 1, false, json!({"ecu": "dup"})).await?;
    agent.answer(id, 2, true, abs.clone()).await?;
    let done = f.ended(&server, id).await?;
    assert_eq!(done["status"], "completed", "{done}");
    let (events, _) = stream(&server, &id.to_string(), &f.token, false).await?;
    let payloads: Vec<&Value> = events.iter().map(|e| &e["response"]).collect();
    assert_eq!(payloads, [&engine, &abs]);
    assert_eq!(events[1]["is_final"], true);

    // A negative answer fails the command with the NRC's name.
    let id = f
        .accept_id(
            &server,
            "ReadDataByID",
            json!({"ecu": "engine", "did": "0xF199"}),
        )
        .await?;
    let command = agent.command().await?;
    assert_eq!(command.command_id, id);
    agent.fail(id, "requestOutOfRange").await?;
    let done = f.ended(&server, id).await?;
    assert_eq!(outcome(&done), (Some("failed"), Some("requestOutOfRange")));

    // A report for a command the connection does not run is ignored.
    agent.answer(Uuid::new_v4(), 1, true, json!({})).await?;
    agent.close().await?;
    eventually_online(&server, &f, false).await?;
    server.stop().await
}

#[tokio::test]
async fn agent_restart_retries_read_only_commands_once_and_never_clear_dtc() -> TestResult {
    let server = TestServer::start().await?;
    let f = fleet(&server, "alice").await?;
    let (mut agent, _) = f.connect_agent(&server).await?;
    eventually_online(&server, &f, true).await?;

    // ReadDTC: the agent goes away mid-command and comes back: attempt 2, then it completes.
    let id = f
        .accept_id(&server, "ReadDTC", json!({"ecu": "engine"}))
        .await?;
    assert_eq!(agent.command().await?.attempt, 1);
    agent.close().await?;
    let (mut agent, _) = f.connect_agent(&server).await?;
    let again = agent.command().await?;
    assert_eq!((again.command_id, again.attempt), (id, 2));
    agent
        .answer(id, 1, true, json!({"ecu": "engine", "dtcs": []}))
        .await?;
    assert_eq!(f.ended(&server, id).await?["status"], "completed");

    // ClearDTC: interrupted, and not sent again after the reconnect.
    let clear = f
        .accept_id(&server, "ClearDTC", json!({"ecu": "engine"}))
        .await?;
    assert_eq!(agent.command().await?.command_id, clear);
    agent.close().await?;
    let done = f.ended(&server, clear).await?;
    assert_eq!(
        outcome(&done),
        (Some("failed"), Some("interrupted: agent disconnected"))
    );
    let (mut agent, _) = f.connect_agent(&server).await?;
    let next = f
        .accept_id(&server, "TesterPresent", json!({"ecu": "engine"}))
        .await?;
    let sent = agent.command().await?;
    assert_eq!(sent.command_id, next, "the ClearDTC must not come again");
    agent
        .answer(next, 1, true, json!({"ecu": "engine", "hex": "7E00"}))
        .await?;
    assert_eq!(f.ended(&server, next).await?["status"], "completed");
    agent.close().await?;
    server.stop().await
}

#[tokio::test]
async fn an_offline_vehicle_keeps_the_command_pending_until_its_ttl() -> TestResult {
    let server = TestServer::start().await?;
    let f = fleet(&server, "alice").await?;
    // Runs once the agent connects within the ttl.
    let id = f
        .accept_id(&server, "ReadDTC", json!({"ttl_s": 30}))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = server
        .get(&format!("/api/v1/commands/{id}"), &f.token)
        .await?;
    assert_eq!(body["status"], "pending");
    let (mut agent, _) = f.connect_agent(&server).await?;
    assert_eq!(agent.command().await?.command_id, id);
    agent
        .answer(id, 1, true, json!({"ecu": "engine", "dtcs": []}))
        .await?;
    assert_eq!(f.ended(&server, id).await?["status"], "completed");
    agent.close().await?;
    eventually_online(&server, &f, false).await?;

    // Fails when nobody comes.
    let done = f.run(&server, "ReadDTC", json!({"ttl_s": 0.3})).await?;
    assert_eq!(outcome(&done), (Some("failed"), Some("vehicle offline")));
    server.stop().await
}

#[tokio::test]
async fn a_bad_diag_hello_is_refused() -> TestResult {
    let server = TestServer::start().await?;
    let f = fleet(&server, "alice").await?;
    let url = format!("{}/ws/data", server.base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", f.agent_token))?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.send(WsMessage::Text(
        r#"{"type":"diag_hello","version":9,"dongles":[]}"#.into(),
    ))
    .await?;
    let Some(Ok(WsMessage::Text(t))) = ws.next().await else {
        return Err("no answer".into());
    };
    let answer: Value = serde_json::from_str(&t)?;
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "unsupported_version");
    server.stop().await
}
