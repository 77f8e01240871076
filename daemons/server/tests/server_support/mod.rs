//! Shared helpers of the `server_*` integration tests: a real server on 127.0.0.1:0 with a
//! fresh data directory, and a small JSON client over reqwest.

#![allow(dead_code, unreachable_pub)]

use std::error::Error;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tether_server::{self as server, RunningServer, ServerConfig};

/// Result type of the tests.
pub type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// A running server with its own data directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub client: reqwest::Client,
    pub base: String,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start() -> TestResult<TestServer> {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestResult<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, dir.path().join("data"));
        adjust(&mut config);
        let server = server::spawn(config).await?;
        let base = format!("http://{}", server.local_addr());
        Ok(TestServer {
            dir,
            server,
            client: reqwest::Client::new(),
            base,
        })
    }

    /// Issues a user token the way `tether server token create` does.
    pub async fn user_token(&self, name: &str) -> TestResult<String> {
        let name = name.to_owned();
        let (_, _, issued) = self
            .server
            .state()
            .store()
            .call(move |store| store.create_user_token(&name, Utc::now()))
            .await?;
        Ok(issued.secret)
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON body
    /// (`Value::Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResult<(StatusCode, Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        read(response).await
    }

    pub async fn get(&self, path: &str, token: &str) -> TestResult<(StatusCode, Value)> {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> TestResult<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates an agent and returns `(id, token)`.
    pub async fn agent(&self, user_token: &str, name: &str) -> TestResult<(String, String)> {
        let (status, body) = self
            .post(
                "/api/v1/agents",
                user_token,
                serde_json::json!({ "name": name }),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Ok((text(&body, "id")?, text(&body, "token")?))
    }

    /// `DELETE path` with a bearer token.
    pub async fn delete(&self, path: &str, token: &str) -> TestResult<(StatusCode, Value)> {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Announces a dongle with an agent token and returns its id.
    pub async fn dongle(&self, agent_token: &str, serial: &str) -> TestResult<String> {
        let (status, body) = self
            .post(
                "/api/v1/agent/dongles",
                agent_token,
                serde_json::json!({ "serial": serial }),
            )
            .await?;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status} {body}"
        );
        text(&body, "id")
    }

    /// Creates a group "g" of dongles `a` and `b` for `user` and returns its id.
    pub async fn group(&self, user: &str, a: &str, b: &str) -> TestResult<String> {
        let body = serde_json::json!({ "name": "g", "dongle_a": a, "dongle_b": b });
        let (status, group) = self.post("/api/v1/groups", user, body).await?;
        assert_eq!(status, StatusCode::CREATED, "{group}");
        text(&group, "id")
    }

    /// [`TestServer::group`], then activated.
    pub async fn active_group(&self, user: &str, a: &str, b: &str) -> TestResult<String> {
        let id = self.group(user, a, b).await?;
        let path = format!("/api/v1/groups/{id}/activate");
        let (status, body) = self.post(&path, user, serde_json::json!({})).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        Ok(id)
    }

    /// The `/metrics` page as text.
    pub async fn metrics(&self) -> TestResult<String> {
        let url = format!("{}/metrics", self.base);
        Ok(self.client.get(url).send().await?.text().await?)
    }

    /// A user with an agent and two announced dongles: `(user token, agent token, a, b)`.
    pub async fn user_with_pair(&self, name: &str) -> TestResult<(String, String, String, String)> {
        let token = self.user_token(name).await?;
        let (_, agent) = self.agent(&token, &format!("{name}-edge")).await?;
        let a = self.dongle(&agent, &format!("{name}-A")).await?;
        let b = self.dongle(&agent, &format!("{name}-B")).await?;
        Ok((token, agent, a, b))
    }
}

/// `GET url` with `token` until it is refused, for a token revoked outside this process (the
/// CLI, another instance): a server remembers an authenticated user token for
/// [`server::store::USER_TOKEN_CACHE_TTL`], so the refusal comes within that bound. Returns
/// the last answer (status and body) once refused or once twice the bound has passed.
pub async fn refused_after_revocation(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> TestResult<(StatusCode, Value)> {
    let deadline = std::time::Instant::now() + 2 * server::store::USER_TOKEN_CACHE_TTL;
    loop {
        let answer = read(client.get(url).bearer_auth(token).send().await?).await?;
        if answer.0 == StatusCode::UNAUTHORIZED || std::time::Instant::now() > deadline {
            return Ok(answer);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads a response as JSON, checking that error responses have the JSON error shape.
pub async fn read(response: reqwest::Response) -> TestResult<(StatusCode, Value)> {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{status}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?
    };
    if status.is_client_error() || status.is_server_error() {
        assert!(
            content_type.starts_with("application/json"),
            "{status} content type {content_type:?}"
        );
        assert_error_shape(&body)?;
    }
    Ok((status, body))
}

/// Asserts `{"error": {"code": "<non-empty>", "message": "<non-empty>"}}`.
pub fn assert_error_shape(body: &Value) -> TestResult {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = body["error"]["message"].as_str().unwrap_or("");
    if code.is_empty() || message.is_empty() {
        return Err(format!("not a JSON error: {body}").into());
    }
    Ok(())
}

/// A string field of a JSON object.
pub fn text(body: &Value, field: &str) -> TestResult<String> {
    body[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no string field {field:?} in {body}").into())
}

/// The error code of a JSON error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}
