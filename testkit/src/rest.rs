//! A small JSON client of Tether's REST API and the set-up calls every test makes.
//!
//! [`Api::new`] reads any answer (a body that is not JSON becomes a JSON string);
//! [`Api::checked`] also asserts that every 4xx/5xx answer is a JSON error
//! (`{"error": {"code", "message"}}`, `application/json`), as the server's own tests want.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestResult;

/// How long one request may take before the call fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A JSON client of one server.
#[derive(Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    /// The HTTP client (a pool; clone freely).
    pub client: reqwest::Client,
    /// Whether error answers must have the JSON error shape ([`read`]).
    pub checked: bool,
}

impl Api {
    /// A lenient client of `base` (`http://host:port`).
    pub fn new(base: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            client: reqwest::Client::new(),
            checked: false,
        }
    }

    /// A client that asserts the JSON error shape of every 4xx/5xx answer.
    pub fn checked(base: impl Into<String>) -> Api {
        Api {
            checked: true,
            ..Api::new(base)
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The WebSocket URL of `path` (`ws://host:port/path`).
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    /// A `GET path` to add to (headers, a token) before sending it; no timeout, for streams.
    pub fn get_request(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// `GET path` without a token: the response as it came (status, headers, body).
    pub async fn fetch(&self, path: &str) -> TestResult<reqwest::Response> {
        Ok(self.get_request(path).send().await?)
    }

    /// Sends a request with an optional bearer token and JSON body; returns the status and the
    /// JSON body (`Value::Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResult<(StatusCode, Value)> {
        let mut request = self
            .client
            .request(method, self.url(path))
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        if self.checked {
            read(response).await
        } else {
            read_lenient(response).await
        }
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> TestResult<(StatusCode, Value)> {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// `POST path` with a bearer token and a JSON body.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> TestResult<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// `DELETE path` with a bearer token.
    pub async fn delete(&self, path: &str, token: &str) -> TestResult<(StatusCode, Value)> {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// `POST path`, failing unless the answer is `want`; returns the body.
    pub async fn post_expect(
        &self,
        path: &str,
        token: &str,
        body: Value,
        want: StatusCode,
    ) -> TestResult<Value> {
        let (status, answer) = self.post(path, token, body.clone()).await?;
        if status != want {
            return Err(format!("POST {path} {body}: {status} {answer}, wanted {want}").into());
        }
        Ok(answer)
    }

    /// `POST path` that must create (201) → the new resource's `id`.
    async fn create(&self, path: &str, user_token: &str, body: Value) -> TestResult<String> {
        let created = self
            .post_expect(path, user_token, body, StatusCode::CREATED)
            .await?;
        text(&created, "id")
    }

    /// `POST /api/v1/agents` → `(id, token)`.
    pub async fn create_agent(&self, user_token: &str, name: &str) -> TestResult<(String, String)> {
        let body = json!({ "name": name });
        let agent = self
            .post_expect("/api/v1/agents", user_token, body, StatusCode::CREATED)
            .await?;
        Ok((text(&agent, "id")?, text(&agent, "token")?))
    }

    /// `POST /api/v1/agent/dongles` `{"serial": serial}` with an agent token: the raw answer.
    pub async fn announce(
        &self,
        agent_token: &str,
        serial: &str,
    ) -> TestResult<(StatusCode, Value)> {
        let body = json!({ "serial": serial });
        self.post("/api/v1/agent/dongles", agent_token, body).await
    }

    /// `POST /api/v1/agent/dongles` with an agent token (201 new, 200 known) → dongle id.
    pub async fn announce_dongle(&self, agent_token: &str, serial: &str) -> TestResult<String> {
        let (status, answer) = self.announce(agent_token, serial).await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(format!("announce dongle {serial}: {status} {answer}").into());
        }
        text(&answer, "id")
    }

    /// `POST /api/v1/groups` of dongles `a` and `b`: the raw answer.
    pub async fn post_group(
        &self,
        user_token: &str,
        name: &str,
        a: &str,
        b: &str,
    ) -> TestResult<(StatusCode, Value)> {
        self.post("/api/v1/groups", user_token, group_body(name, a, b))
            .await
    }

    /// `POST /api/v1/groups` of dongles `a` and `b` (201) → group id.
    pub async fn create_group(
        &self,
        user_token: &str,
        name: &str,
        a: &str,
        b: &str,
    ) -> TestResult<String> {
        let body = group_body(name, a, b);
        self.create("/api/v1/groups", user_token, body).await
    }

    /// `POST /api/v1/groups/{id}/activate` (200).
    pub async fn activate_group(&self, user_token: &str, id: &str) -> TestResult<Value> {
        let path = format!("/api/v1/groups/{id}/activate");
        self.post_expect(&path, user_token, json!({}), StatusCode::OK)
            .await
    }

    /// [`Api::create_group`], then [`Api::activate_group`] → group id.
    pub async fn active_group(
        &self,
        user_token: &str,
        name: &str,
        a: &str,
        b: &str,
    ) -> TestResult<String> {
        let id = self.create_group(user_token, name, a, b).await?;
        self.activate_group(user_token, &id).await?;
        Ok(id)
    }

    /// `GET /api/v1/groups/{id}`, `None` while the server does not answer 200.
    pub async fn group(&self, user_token: &str, id: &str) -> Option<Value> {
        match self.get(&format!("/api/v1/groups/{id}"), user_token).await {
            Ok((StatusCode::OK, body)) => Some(body),
            _ => None,
        }
    }

    /// `POST /api/v1/vehicles` on `dongle` with ECUs `engine` (0x7E0 → 0x7E8) and `abs`
    /// (2017 → 2025) → vehicle id.
    pub async fn create_vehicle(
        &self,
        user_token: &str,
        name: &str,
        dongle: &str,
    ) -> TestResult<String> {
        let body = json!({
            "name": name,
            "vin": "1HGCM82633A004352",
            "dongle_id": dongle,
            "ecus": [
                {"name": "engine", "request_id": "0x7E0", "response_id": "0x7E8"},
                {"name": "abs", "request_id": 2017, "response_id": 2025}
            ]
        });
        self.create("/api/v1/vehicles", user_token, body).await
    }

    /// `POST /api/v1/commands` of command `name` on `vehicle` (`command_params` left out when
    /// `None`): the raw answer.
    pub async fn post_command(
        &self,
        user_token: &str,
        vehicle: &str,
        name: &str,
        params: Option<Value>,
    ) -> TestResult<(StatusCode, Value)> {
        let body = command_body(vehicle, name, params);
        self.post("/api/v1/commands", user_token, body).await
    }

    /// `POST /api/v1/commands` (202) → the accepted body.
    pub async fn submit_command(
        &self,
        user_token: &str,
        vehicle: &str,
        name: &str,
        params: Value,
    ) -> TestResult<Value> {
        let body = command_body(vehicle, name, Some(params));
        self.post_expect("/api/v1/commands", user_token, body, StatusCode::ACCEPTED)
            .await
    }

    /// Polls `GET /api/v1/commands/{id}` until the command is `completed` or `failed`
    /// (within `limit`) → the command; fails at once on an answer other than 200.
    pub async fn command_ended(
        &self,
        user_token: &str,
        id: &str,
        limit: Duration,
    ) -> TestResult<Value> {
        let path = format!("/api/v1/commands/{id}");
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (status, body) = self.get(&path, user_token).await?;
            if status != StatusCode::OK {
                return Err(format!("GET {path}: {status} {body}").into());
            }
            if body["status"] == "completed" || body["status"] == "failed" {
                return Ok(body);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("command {id} did not end: {body}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics` text, `None` while the server does not answer.
    pub async fn metrics(&self) -> Option<String> {
        get_text(&self.client, &self.url("/metrics")).await
    }
}

/// The body of `POST /api/v1/groups`.
fn group_body(name: &str, a: &str, b: &str) -> Value {
    json!({ "name": name, "dongle_a": a, "dongle_b": b })
}

/// The body of `POST /api/v1/commands`.
fn command_body(vehicle: &str, name: &str, params: Option<Value>) -> Value {
    let mut body = json!({ "vehicle_id": vehicle, "command_name": name });
    if let Some(params) = params {
        body["command_params"] = params;
    }
    body
}

/// Reads a response as JSON, asserting that error responses have the JSON error shape.
pub async fn read(response: reqwest::Response) -> TestResult<(StatusCode, Value)> {
    let status = response.status();
    let content_type = content_type(&response);
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

/// The `Content-Type` of a response (`""` when absent).
pub fn content_type(response: &reqwest::Response) -> String {
    let value = response.headers().get(reqwest::header::CONTENT_TYPE);
    value.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

/// Reads a response as JSON; a body that is not JSON becomes a JSON string.
pub async fn read_lenient(response: reqwest::Response) -> TestResult<(StatusCode, Value)> {
    let status = response.status();
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
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

/// Asserts that the JSON object `body` has every one of `fields` (the failure names the field
/// missing and shows `body`).
pub fn assert_fields(body: &Value, fields: &[&str]) {
    for field in fields {
        assert!(body.get(field).is_some(), "no field {field:?} in {body}");
    }
}

/// The error code of a JSON error body (`""` when it is not one).
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// `GET url` (optionally with a bearer token) as JSON; `None` unless it answers 2xx with JSON.
pub async fn get_json(url: &str, bearer: Option<&str>) -> Option<Value> {
    let mut request = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// `GET url` as JSON whatever the status (a health check answers 503 with a JSON body);
/// `None` while nothing answers or the body is not JSON.
pub async fn get_json_any(url: &str) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// `GET url` as text, `None` while nothing answers.
pub async fn get_text(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}
