//! Shared helpers of the `commands_*` tests: servers with a chosen connector, a user with a
//! dongle and a vehicle, and a client of `/ws/responses/{id}`.

#![allow(dead_code, unreachable_pub)]

pub mod fake_agent;

use std::time::Duration;

use futures::StreamExt;
use relay_core::protocol::diag::DiagWelcome;
use serde_json::Value;
use tether_server::ServerConfig;
use tether_server::config::ConnectorKind;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use crate::server_support::{TestResult, TestServer, text};
use fake_agent::FakeAgent;

/// Longest wait for one event.
pub const WAIT: Duration = Duration::from_secs(20);

/// Settings for the mock connector with a fixed delay.
pub fn mock(delay_ms: u64) -> impl FnOnce(&mut ServerConfig) {
    move |config| {
        config.commands.connector = ConnectorKind::Mock;
        config.commands.mock_delay = (
            Duration::from_millis(delay_ms),
            Duration::from_millis(delay_ms),
        );
    }
}

/// Two instances on the Redis at `url` sharing one records directory, kept in the returned
/// directory (`docs/cluster.md`).
pub async fn pair(url: &str) -> TestResult<(TestServer, TestServer, tempfile::TempDir)> {
    let shared = tempfile::tempdir()?;
    let data = shared.path().join("records");
    let start = || {
        TestServer::start_with(|config| {
            config.redis_url = Some(url.to_owned());
            config.data_dir = data.clone();
        })
    };
    Ok((start().await?, start().await?, shared))
}

/// A server with the [`mock`] connector and a [`fleet`] of `name` on it.
pub async fn mocked_fleet(delay_ms: u64, name: &str) -> TestResult<(TestServer, Fleet)> {
    let server = TestServer::start_with(mock(delay_ms)).await?;
    let f = fleet(&server, name).await?;
    Ok((server, f))
}

/// A user with an agent, one dongle and a vehicle on it with ECUs `engine` (0x7E0) and `abs`
/// (0x7E1).
pub struct Fleet {
    pub token: String,
    pub agent_token: String,
    pub dongle: String,
    pub vehicle: String,
}

pub async fn fleet(server: &TestServer, name: &str) -> TestResult<Fleet> {
    let token = server.user_token(name).await?;
    let (_, agent_token) = server.agent(&token, &format!("{name}-edge")).await?;
    let dongle = server.dongle(&agent_token, &format!("{name}-D")).await?;
    let vehicle = server
        .create_vehicle(&token, &format!("{name}'s car"), &dongle)
        .await?;
    Ok(Fleet {
        token,
        agent_token,
        dongle,
        vehicle,
    })
}

impl Fleet {
    /// [`submit`]s `name` on this fleet's vehicle (202); returns the accepted body.
    pub async fn accept(
        &self,
        server: &TestServer,
        name: &str,
        params: Value,
    ) -> TestResult<Value> {
        submit(server, &self.token, &self.vehicle, name, params).await
    }

    /// [`Fleet::accept`]; returns the command id.
    pub async fn accept_id(
        &self,
        server: &TestServer,
        name: &str,
        params: Value,
    ) -> TestResult<Uuid> {
        let accepted = self.accept(server, name, params).await?;
        Ok(text(&accepted, "command_id")?.parse()?)
    }

    /// Waits until this fleet's command `id` has [`ended`]; returns it.
    pub async fn ended(&self, server: &TestServer, id: Uuid) -> TestResult<Value> {
        ended(server, &self.token, &id.to_string()).await
    }

    /// Connects a [`FakeAgent`] with this fleet's agent token and dongle.
    pub async fn connect_agent(&self, server: &TestServer) -> TestResult<(FakeAgent, DiagWelcome)> {
        FakeAgent::connect(server, &self.agent_token, &[&self.dongle]).await
    }

    /// [`Fleet::accept`], then waits until the command has [`ended`]; returns it.
    pub async fn run(&self, server: &TestServer, name: &str, params: Value) -> TestResult<Value> {
        let accepted = self.accept(server, name, params).await?;
        ended(server, &self.token, &text(&accepted, "command_id")?).await
    }
}

/// Posts a command, expecting 202; returns the body.
pub async fn submit(
    server: &TestServer,
    token: &str,
    vehicle: &str,
    name: &str,
    params: Value,
) -> TestResult<Value> {
    server.submit_command(token, vehicle, name, params).await
}

/// Polls a command until it has ended; returns it.
pub async fn ended(server: &TestServer, token: &str, id: &str) -> TestResult<Value> {
    server.command_ended(token, id, WAIT).await
}

/// An ended command's `(status, error_message)`.
pub fn outcome(done: &Value) -> (Option<&str>, Option<&str>) {
    (done["status"].as_str(), done["error_message"].as_str())
}

/// Everything `/ws/responses/{id}` sends until it closes, and the close code.
pub async fn stream(
    server: &TestServer,
    id: &str,
    token: &str,
    in_query: bool,
) -> TestResult<(Vec<Value>, Option<CloseCode>)> {
    let url = if in_query {
        server.ws_url(&format!("/ws/responses/{id}?access_token={token}"))
    } else {
        server.ws_url(&format!("/ws/responses/{id}"))
    };
    let mut request = url.into_client_request()?;
    if !in_query {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let mut events = Vec::new();
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| "no message from the response stream")?;
        match message {
            Some(Ok(WsMessage::Text(t))) => events.push(serde_json::from_str(&t)?),
            Some(Ok(WsMessage::Close(frame))) => return Ok((events, frame.map(|f| f.code))),
            Some(Ok(_)) => {}
            None => return Ok((events, None)),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}
