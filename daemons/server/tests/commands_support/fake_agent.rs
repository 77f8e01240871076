//! The agent's diagnostics role played by a test: a client of the diagnostics channel on a real
//! `/ws/data` WebSocket (shared with tests/e2e/cluster.rs).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use relay_core::protocol::diag::{
    AgentCommandStatus, CommandFailed, CommandRequest, CommandResponse, CommandStatusUpdate,
    DiagHello, DiagMessage, DiagWelcome, decode_diag, encode_diag,
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use tether_testkit::{Api, TestResult};

/// The agent's diagnostics role, played by the test.
pub struct FakeAgent {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl FakeAgent {
    pub async fn connect(
        server: &Api,
        token: &str,
        dongles: &[&str],
    ) -> TestResult<(FakeAgent, DiagWelcome)> {
        let url = server.ws_url("/ws/data");
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut agent = FakeAgent { ws };
        let dongles = dongles
            .iter()
            .map(|d| d.parse())
            .collect::<Result<Vec<Uuid>, _>>()?;
        agent
            .send(&DiagMessage::DiagHello(DiagHello {
                version: 1,
                dongles,
            }))
            .await?;
        match agent.recv().await? {
            DiagMessage::DiagWelcome(w) => Ok((agent, w)),
            other => Err(format!("expected diag_welcome, got {other:?}").into()),
        }
    }

    pub async fn send(&mut self, message: &DiagMessage) -> TestResult {
        self.ws
            .send(WsMessage::Text(encode_diag(message)?.into()))
            .await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> TestResult<DiagMessage> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .map_err(|_| "nothing from the server")?;
            match message {
                Some(Ok(WsMessage::Text(t))) => return Ok(decode_diag(t.as_bytes())?),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => return Err(format!("connection ended: {other:?}").into()),
            }
        }
    }

    pub async fn command(&mut self) -> TestResult<CommandRequest> {
        match self.recv().await? {
            DiagMessage::Command(c) => Ok(c),
            other => Err(format!("expected a command, got {other:?}").into()),
        }
    }

    pub async fn answer(
        &mut self,
        command: Uuid,
        seq: u32,
        is_final: bool,
        response: Value,
    ) -> TestResult {
        self.send(&DiagMessage::CommandResponse(CommandResponse {
            command_id: command,
            sequence_number: seq,
            is_final,
            response,
        }))
        .await
    }

    /// Reports `command` as in progress.
    pub async fn in_progress(&mut self, command: Uuid) -> TestResult {
        self.send(&DiagMessage::CommandStatus(CommandStatusUpdate {
            command_id: command,
            status: AgentCommandStatus::InProgress,
        }))
        .await
    }

    /// Reports `command` as failed with `error`.
    pub async fn fail(&mut self, command: Uuid, error: &str) -> TestResult {
        self.send(&DiagMessage::CommandFailed(CommandFailed {
            command_id: command,
            error: error.into(),
        }))
        .await
    }

    pub async fn close(mut self) -> TestResult {
        self.ws.close(None).await?;
        Ok(())
    }
}
