//! Shared helpers of the `commands_*` tests: servers with a chosen connector, a user with a
//! dongle and a vehicle, and a client of `/ws/responses/{id}`.

#![allow(dead_code, unreachable_pub)]

pub mod fake_agent;

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tether_server::ServerConfig;
use tether_server::config::ConnectorKind;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::server_support::{TestResult, TestServer, text};

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
