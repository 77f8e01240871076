//! Control-plane REST client: `X-API-Key`, timeouts, retries with full jitter, duplicate
//! answers treated as success.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::backoff::{RetryPolicy, parse_retry_after};
use crate::error::{MeteringError, Result};
use crate::metrics::{RequestHistogram, RequestLabels};

/// Longest response body kept in errors and DLQ entries.
const MAX_BODY: usize = 2048;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://…`, or `http://` to a loopback host.
    pub base_url: String,
    /// Sent as `X-API-Key`.
    pub api_key: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retry policy per attempt cycle.
    pub retry: RetryPolicy,
    /// Idle connections kept open for reuse. Set it to the most requests the caller has in
    /// flight at once: with fewer, every burst closes the surplus connections and the next one
    /// opens them again (a TCP, and in production a TLS, handshake per request).
    pub max_idle_connections: usize,
}

/// How one attempt cycle (first try + retries) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// 2xx, or an answer saying the item was already recorded.
    Accepted {
        /// True when the control plane said "duplicate".
        duplicate: bool,
        /// Parsed JSON body (`Null` if none).
        body: Value,
    },
    /// A 4xx other than 408/429 that is not a duplicate: never retried; the item goes to the DLQ.
    Rejected {
        /// HTTP status.
        status: u16,
        /// Body (truncated).
        body: String,
    },
    /// Still failing after the last retry (network, timeout, 408, 429, 5xx).
    Unavailable {
        /// Last failure.
        reason: String,
        /// Server-requested wait, if any.
        retry_after: Option<Duration>,
    },
}

/// A request built once by [`ControlPlaneClient::prepare`] and sent by
/// [`ControlPlaneClient::send_prepared`] as often as needed.
#[derive(Debug)]
pub struct Prepared(PreparedInner);

#[derive(Debug)]
enum PreparedInner {
    Ready(Box<reqwest::Request>),
    /// The path does not join onto the base URL: refused without a try.
    BadUrl(String),
    /// The request cannot be built (e.g. a header value): every try fails.
    Unbuildable(String),
}

/// The client.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    http: reqwest::Client,
    base: Url,
    api_key: String,
    retry: RetryPolicy,
    histogram: Option<RequestHistogram>,
}

/// The endpoint label of a request path: the segment after `sessions`, `servers` and
/// `commands` is an id (except `servers/register`) and becomes `{id}`, so the label set stays
/// bounded.
pub fn endpoint_label(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev = "";
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        let is_id = matches!(prev, "sessions" | "servers" | "commands") && seg != "register";
        out.push_str(if is_id { "{id}" } else { seg });
        prev = seg;
    }
    out
}

/// Is `url` acceptable: https anywhere, http only to loopback.
pub fn check_base_url(url: &str) -> Result<Url> {
    let u = Url::parse(url)
        .map_err(|e| MeteringError::Config(format!("control_plane.base_url {url:?}: {e}")))?;
    match u.scheme() {
        "https" => Ok(u),
        "http" => {
            let host = u
                .host_str()
                .unwrap_or("")
                .trim_start_matches('[')
                .trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(u)
            } else {
                Err(MeteringError::Config(format!(
                    "control_plane.base_url {url:?}: plain http is only allowed to loopback; use https"
                )))
            }
        }
        s => Err(MeteringError::Config(format!(
            "control_plane.base_url: unsupported scheme {s}"
        ))),
    }
}

fn is_duplicate(status: StatusCode, body: &Value) -> bool {
    if status == StatusCode::CONFLICT {
        return true;
    }
    let says = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case("duplicate"))
    };
    status.is_client_error()
        && (says("code") || says("error") || body.get("duplicate") == Some(&Value::Bool(true)))
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_BODY {
        let mut cut = MAX_BODY;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A try that failed in transport (`what`: sending, or reading the answer): the control plane
/// counts as unavailable; the outcome label says whether it timed out.
fn transport_failure(
    what: &str,
    e: &reqwest::Error,
    retry_after: Option<Duration>,
) -> (Delivery, &'static str) {
    let outcome = if e.is_timeout() {
        "timeout"
    } else {
        "network_error"
    };
    let d = Delivery::Unavailable {
        reason: format!("{what}: {e}"),
        retry_after,
    };
    (d, outcome)
}

impl ControlPlaneClient {
    /// Build a client.
    pub fn new(cfg: &ClientConfig, user_agent: &str) -> Result<Self> {
        let base = check_base_url(&cfg.base_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .user_agent(user_agent)
            .pool_max_idle_per_host(cfg.max_idle_connections.max(1))
            .build()
            .map_err(|e| MeteringError::Http {
                action: "build control-plane client".into(),
                source: e,
            })?;
        Ok(ControlPlaneClient {
            http,
            base,
            api_key: cfg.api_key.clone(),
            retry: cfg.retry,
            histogram: None,
        })
    }

    /// Times every try into `histogram` (`control_plane_request_seconds`).
    pub fn with_histogram(mut self, histogram: RequestHistogram) -> Self {
        self.histogram = Some(histogram);
        self
    }

    fn observe(&self, req: &reqwest::Request, started: std::time::Instant, outcome: &str) {
        if let Some(h) = &self.histogram {
            h.get_or_create(&RequestLabels {
                endpoint: endpoint_label(req.url().path().trim_start_matches(self.base.path())),
                outcome: outcome.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| MeteringError::Config(format!("bad control-plane path {path}: {e}")))
    }

    /// Build a request for [`Self::send_prepared`]; `body` is JSON.
    pub fn prepare(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Prepared {
        let url = match self.url(path) {
            Ok(u) => u,
            Err(e) => return Prepared(PreparedInner::BadUrl(e.to_string())),
        };
        let mut req = self
            .http
            .request(method, url)
            .header("X-API-Key", &self.api_key);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        Prepared(match req.build() {
            Ok(r) => PreparedInner::Ready(Box::new(r)),
            Err(e) => PreparedInner::Unbuildable(format!("request failed: {e}")),
        })
    }

    /// One try, classified and timed.
    async fn try_once(&self, req: &reqwest::Request) -> Delivery {
        let started = std::time::Instant::now();
        let (d, outcome) = self.try_once_untimed(req).await;
        self.observe(req, started, outcome);
        d
    }

    async fn try_once_untimed(&self, req: &reqwest::Request) -> (Delivery, &'static str) {
        // A body given as bytes is always cloneable; the clone shares its buffer.
        let Some(req) = req.try_clone() else {
            let d = Delivery::Rejected {
                status: 0,
                body: "request body cannot be resent".into(),
            };
            return (d, "client_error");
        };
        let sent = self.http.execute(req).await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return transport_failure("request failed", &e, None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return transport_failure("reading response", &e, retry_after),
        };
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            let d = Delivery::Accepted {
                duplicate: false,
                body: json,
            };
            return (d, "success");
        }
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            let outcome = if status.is_server_error() {
                "server_error"
            } else {
                "client_error"
            };
            let d = Delivery::Unavailable {
                reason: format!("HTTP {}", status.as_u16()),
                retry_after,
            };
            return (d, outcome);
        }
        if is_duplicate(status, &json) {
            let d = Delivery::Accepted {
                duplicate: true,
                body: json,
            };
            return (d, "duplicate");
        }
        let d = Delivery::Rejected {
            status: status.as_u16(),
            body: truncate(text),
        };
        (d, "client_error")
    }

    /// One attempt cycle: the first try plus up to `max_retries` retries with full-jitter
    /// backoff (or the server's `Retry-After`). Never gives up on a `Rejected` or `Accepted`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        on_retry: impl FnMut(),
    ) -> Delivery {
        let body = body.map(|b| b.to_string().into_bytes());
        let req = self.prepare(method, path, body, idempotency_key);
        self.send_prepared(&req, on_retry).await
    }

    /// [`Self::send`] for a [`Self::prepare`]d request, which can be sent again in later attempt
    /// cycles: its body is serialised once and never copied.
    pub async fn send_prepared(&self, req: &Prepared, mut on_retry: impl FnMut()) -> Delivery {
        if let PreparedInner::BadUrl(e) = &req.0 {
            return Delivery::Rejected {
                status: 0,
                body: e.clone(),
            };
        }
        let mut retry = 0;
        loop {
            let d = match &req.0 {
                PreparedInner::Ready(r) => self.try_once(r).await,
                PreparedInner::BadUrl(e) | PreparedInner::Unbuildable(e) => Delivery::Unavailable {
                    reason: e.clone(),
                    retry_after: None,
                },
            };
            let Delivery::Unavailable { retry_after, .. } = &d else {
                return d;
            };
            if retry >= self.retry.max_retries {
                return d;
            }
            let unit: f64 = rand::rng().random();
            tokio::time::sleep(self.retry.delay(retry, unit, *retry_after)).await;
            retry += 1;
            on_retry();
        }
    }

    /// `send` for calls whose caller wants a `Result` (register, heartbeat, commands…).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        match self.send(method, path, body, None, || {}).await {
            Delivery::Accepted { body, .. } => Ok(body),
            Delivery::Rejected { status, body } => Err(MeteringError::Refused {
                action: path.to_owned(),
                status,
                body,
            }),
            Delivery::Unavailable {
                reason,
                retry_after,
            } => Err(MeteringError::Unavailable {
                action: path.to_owned(),
                reason,
                retry_after,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_base_url("http://127.0.0.1:8080").is_ok());
        assert!(check_base_url("http://localhost").is_ok());
        assert!(check_base_url("http://[::1]:9").is_ok());
        assert!(check_base_url("https://cp.example.com").is_ok());
        assert!(check_base_url("http://cp.example.com").is_err());
        assert!(check_base_url("ftp://127.0.0.1").is_err());
        assert!(check_base_url("not a url").is_err());
    }

    #[test]
    fn endpoint_labels_hide_ids() {
        assert_eq!(
            endpoint_label("/api/v1/sessions/s-1/usage-records"),
            "/api/v1/sessions/{id}/usage-records"
        );
        assert_eq!(
            endpoint_label("/api/v1/servers/register"),
            "/api/v1/servers/register"
        );
        assert_eq!(
            endpoint_label("/api/v1/servers/a/commands/c9/result"),
            "/api/v1/servers/{id}/commands/{id}/result"
        );
    }

    #[test]
    fn duplicates_are_recognised() {
        assert!(is_duplicate(StatusCode::CONFLICT, &Value::Null));
        assert!(is_duplicate(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({"code": "duplicate"})
        ));
        assert!(is_duplicate(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"duplicate": true})
        ));
        assert!(!is_duplicate(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"code": "invalid"})
        ));
    }
}
