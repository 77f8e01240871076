//! The server's REST API as the dongle and diagnostics roles use it: announce a dongle, read
//! its assignment. Calls go to the role's current server ([`Failover`]); a call that cannot
//! reach it, or gets a 5xx answer, moves the role on to the next one of `server_url` (the caller
//! retries with its backoff).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use relay_core::engine::{GroupMode, Side};
use serde::Deserialize;
use serde_json::json;

use crate::servers::Failover;

/// A group assignment as `GET /api/v1/agent/dongles/{id}` reports it; a side or mode the
/// engine does not know fails the answer's decoding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Assignment {
    /// Group uuid.
    pub id: String,
    /// `a` or `b`.
    pub side: Side,
    /// `inactive`, `active` or `degraded`.
    pub mode: GroupMode,
}

impl Assignment {
    /// Whether frames are relayed (`active` or `degraded`).
    pub fn is_active(&self) -> bool {
        self.mode != GroupMode::Inactive
    }
}

#[derive(Debug, Deserialize)]
struct DongleView {
    id: serde_json::Value,
    #[serde(default)]
    group: Option<Assignment>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server refused the token (401/403): retrying will not help until it changes.
    #[error("the server refused the agent token ({0})")]
    Unauthorized(u16),
    /// The dongle is unknown to the server (404): announce it again.
    #[error("the server does not know this dongle")]
    NotFound,
    /// Anything else (network, 5xx, 409 …): retry with backoff.
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// REST client with the agent token.
#[derive(Debug, Clone)]
pub struct ServerApi {
    http: reqwest::Client,
    servers: Arc<Failover>,
    token: String,
}

impl ServerApi {
    /// A client of the role's servers.
    pub fn new(servers: Arc<Failover>, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("tether-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(ServerApi {
            http,
            servers,
            token: token.to_owned(),
        })
    }

    /// Sends the request `build` makes for the current server's base URL; returns the status
    /// and body. An unreachable server or a 5xx answer moves the role to the next server.
    async fn call(
        &self,
        what: &str,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), ApiError> {
        let (index, server) = self.servers.current();
        let result = async {
            let resp = build(&self.http, &server.base)
                .bearer_auth(&self.token)
                .send()
                .await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.text().await?))
        }
        .await;
        match result {
            Ok((status, body)) if !status.is_server_error() => Ok((status, body)),
            Ok((status, body)) => {
                self.servers.failed(index);
                Self::check(status, &body).map(|()| (status, body))
            }
            Err(e) => {
                self.servers.failed(index);
                Err(ApiError::Other(
                    anyhow::Error::new(e).context(format!("{what} at {server}")),
                ))
            }
        }
    }

    fn check(status: reqwest::StatusCode, body: &str) -> Result<(), ApiError> {
        match status.as_u16() {
            200..=299 => Ok(()),
            401 | 403 => Err(ApiError::Unauthorized(status.as_u16())),
            404 => Err(ApiError::NotFound),
            code => Err(ApiError::Other(anyhow::anyhow!(
                "HTTP {code}: {}",
                body.chars().take(300).collect::<String>()
            ))),
        }
    }

    /// `POST /api/v1/agent/dongles {"serial"}` → the server's dongle id.
    pub async fn announce(&self, serial: &str) -> Result<String, ApiError> {
        let (status, body) = self
            .call("announcing", |http, base| {
                http.post(format!("{base}/api/v1/agent/dongles"))
                    .json(&json!({ "serial": serial }))
            })
            .await?;
        Self::check(status, &body)?;
        let view: DongleView = serde_json::from_str(&body)
            .map_err(|e| ApiError::Other(anyhow::anyhow!("announce answer: {e}")))?;
        id_string(&view.id).map_err(ApiError::Other)
    }

    /// `GET /api/v1/agent/dongles/{id}` → the group assignment, if any.
    pub async fn assignment(&self, dongle_id: &str) -> Result<Option<Assignment>, ApiError> {
        let (status, body) = self
            .call("polling", |http, base| {
                http.get(format!("{base}/api/v1/agent/dongles/{dongle_id}"))
            })
            .await?;
        Self::check(status, &body)?;
        let view: DongleView = serde_json::from_str(&body)
            .map_err(|e| ApiError::Other(anyhow::anyhow!("assignment answer: {e}")))?;
        Ok(view.group)
    }
}

fn id_string(v: &serde_json::Value) -> anyhow::Result<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => bail!("announce answer: unusable dongle id {other}"),
    }
}
