//! Limits that stop one token or one agent from exhausting the server: a request rate per
//! token on the REST API (`429 rate_limited`), concurrent console streams per token and
//! concurrent `/ws/data` connections per agent (`503 over_capacity`). Every refusal carries
//! `Retry-After` and the JSON error shape, and is counted in
//! `tether_server_limit_refusals_total{limit}`.
//!
//! The rate limit is [`governor`]'s keyed GCRA limiter (a token bucket without a refill task),
//! keyed by the SHA-256 of the presented token, so raw tokens are never kept in memory; keys of
//! idle tokens are shed every [`SHED_EVERY`] checks. The concurrency caps are counters whose
//! permits ([`LimitPermit`]) give their place back when dropped (stream or socket gone).
//!
//! It does not authenticate: the rate limit counts every request that presents a token
//! (`Authorization: Bearer` or `access_token`), valid or not, before the handler looks it up, so
//! guessing tokens is throttled too; requests without a token are not rate limited (they are
//! refused with 401 anyway). Limits are per server process, not shared across instances.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use uuid::Uuid;

use super::ApiError;
use super::auth::bearer_token;
use crate::setting::bounded;

/// Default `limits.console_streams_per_token`.
pub const DEFAULT_CONSOLE_STREAMS_PER_TOKEN: u32 = 256;
/// Default `limits.rest_requests_per_s` (per token).
pub const DEFAULT_REST_REQUESTS_PER_S: u32 = 500;
/// Default `limits.rest_burst` (per token).
pub const DEFAULT_REST_BURST: u32 = 1000;
/// Default `limits.ws_data_connections_per_agent`.
pub const DEFAULT_WS_DATA_CONNECTIONS_PER_AGENT: u32 = 1024;
/// Default `limits.capacity_retry_after_secs`: the `Retry-After` of a capacity refusal.
pub const DEFAULT_CAPACITY_RETRY_AFTER_SECS: u32 = 5;
/// Rate-limit checks between two sheddings of idle keys.
pub const SHED_EVERY: u64 = 4096;

/// The `limits:` section as written in the file; every field is optional, `0` switches a limit
/// off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Concurrent console (SSE) streams per user token.
    pub console_streams_per_token: Option<u32>,
    /// Sustained REST requests per second per token.
    pub rest_requests_per_s: Option<u32>,
    /// REST requests a token may send at once above the sustained rate.
    pub rest_burst: Option<u32>,
    /// Concurrent `/ws/data` connections per agent.
    pub ws_data_connections_per_agent: Option<u32>,
    /// `Retry-After` (seconds) of a `503 over_capacity`.
    pub capacity_retry_after_secs: Option<u32>,
}

/// The validated limits; `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Concurrent console streams per token.
    pub console_streams_per_token: Option<NonZeroU32>,
    /// REST rate per token: (requests per second, burst).
    pub rest: Option<(NonZeroU32, NonZeroU32)>,
    /// Concurrent `/ws/data` connections per agent.
    pub ws_data_connections_per_agent: Option<NonZeroU32>,
    /// `Retry-After` of a capacity refusal.
    pub capacity_retry_after: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig::resolve(None).unwrap_or(LimitConfig {
            console_streams_per_token: None,
            rest: None,
            ws_data_connections_per_agent: None,
            capacity_retry_after: Duration::from_secs(1),
        })
    }
}

impl LimitConfig {
    /// Applies defaults and checks ranges.
    pub fn resolve(file: Option<LimitSettings>) -> Result<LimitConfig, String> {
        let file = file.unwrap_or_default();
        let console = file
            .console_streams_per_token
            .unwrap_or(DEFAULT_CONSOLE_STREAMS_PER_TOKEN);
        let rate = file
            .rest_requests_per_s
            .unwrap_or(DEFAULT_REST_REQUESTS_PER_S);
        let burst = file.rest_burst.unwrap_or(if rate == 0 {
            0
        } else {
            DEFAULT_REST_BURST.max(rate)
        });
        let rest = match (NonZeroU32::new(rate), NonZeroU32::new(burst)) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(
                    "limits.rest_burst must be at least 1 when rest_requests_per_s is set"
                        .to_owned(),
                );
            }
            (Some(rate), Some(burst)) => Some((rate, burst)),
        };
        let retry = bounded(
            "limits.capacity_retry_after_secs",
            file.capacity_retry_after_secs,
            DEFAULT_CAPACITY_RETRY_AFTER_SECS,
            1..=3600,
        )?;
        Ok(LimitConfig {
            console_streams_per_token: NonZeroU32::new(console),
            rest,
            ws_data_connections_per_agent: NonZeroU32::new(
                file.ws_data_connections_per_agent
                    .unwrap_or(DEFAULT_WS_DATA_CONNECTIONS_PER_AGENT),
            ),
            capacity_retry_after: Duration::from_secs(u64::from(retry)),
        })
    }
}

/// Labels of `tether_server_limit_refusals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `rest_rate`, `console_streams` or `ws_data_connections`.
    pub limit: &'static str,
}

/// What a concurrency cap counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    /// A token's SHA-256.
    Token([u8; 32]),
    /// An agent id.
    Agent(Uuid),
}

#[derive(Debug)]
struct Counts {
    cap: Option<NonZeroU32>,
    held: Mutex<HashMap<Holder, u32>>,
}

impl Counts {
    fn new(cap: Option<NonZeroU32>) -> Arc<Counts> {
        Arc::new(Counts {
            cap,
            held: Mutex::new(HashMap::new()),
        })
    }
}

/// A place under a concurrency cap; dropping it gives the place back.
#[derive(Debug)]
pub struct LimitPermit {
    counts: Arc<Counts>,
    holder: Holder,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        let mut held = self.counts.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.holder) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.holder);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    config: LimitConfig,
    rest: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    checks: AtomicU64,
    console: Arc<Counts>,
    ws_data: Arc<Counts>,
    refusals: Family<LimitLabels, Counter>,
}

/// The server's limits, shared by the rate-limit layer, the console and the data plane (as an
/// `Extension`).
#[derive(Debug, Clone)]
pub struct Limits(Arc<Inner>);

impl Limits {
    /// Limits of `config`, with the refusal counter registered in `registry`.
    pub fn new(config: LimitConfig, registry: &mut Registry) -> Limits {
        let refusals = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_refusals",
            "Requests refused by a limit (429 rate, 503 capacity), by limit",
            refusals.clone(),
        );
        let rest = config
            .rest
            .map(|(rate, burst)| RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)));
        Limits(Arc::new(Inner {
            config,
            rest,
            checks: AtomicU64::new(0),
            console: Counts::new(config.console_streams_per_token),
            ws_data: Counts::new(config.ws_data_connections_per_agent),
            refusals,
        }))
    }

    /// The limits in force.
    pub fn config(&self) -> &LimitConfig {
        &self.0.config
    }

    fn refused(&self, limit: &'static str) {
        self.0.refusals.get_or_create(&LimitLabels { limit }).inc();
    }

    /// Counts one REST request of `token`; `Err` is the `429` to answer.
    pub fn check_rest(&self, token: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.0.rest else {
            return Ok(());
        };
        if self.0.checks.fetch_add(1, Ordering::Relaxed) % SHED_EVERY == SHED_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter
            .check_key(&crate::token::hash(token))
            .map_err(|not_until| {
                self.refused("rest_rate");
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests with this token; retry after the time in Retry-After",
                )
                .retry_after(wait)
            })
    }

    fn acquire(
        &self,
        counts: &Arc<Counts>,
        holder: Holder,
        limit: &'static str,
        what: &str,
    ) -> Result<LimitPermit, ApiError> {
        let mut held = counts.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(holder).or_insert(0);
        if let Some(cap) = counts.cap
            && *n >= cap.get()
        {
            drop(held);
            self.refused(limit);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "over_capacity",
                format!("at most {cap} {what}; close one or retry later"),
            )
            .retry_after(self.0.config.capacity_retry_after));
        }
        *n += 1;
        Ok(LimitPermit {
            counts: Arc::clone(counts),
            holder,
        })
    }

    /// A place for one more console stream of `token`.
    pub fn console_stream(&self, token: &str) -> Result<LimitPermit, ApiError> {
        let holder = Holder::Token(crate::token::hash(token));
        self.acquire(
            &self.0.console,
            holder,
            "console_streams",
            "concurrent console streams per token",
        )
    }

    /// A place for one more `/ws/data` connection of `agent`.
    pub fn ws_data_connection(&self, agent: Uuid) -> Result<LimitPermit, ApiError> {
        self.acquire(
            &self.0.ws_data,
            Holder::Agent(agent),
            "ws_data_connections",
            "concurrent /ws/data connections per agent",
        )
    }
}

impl ApiError {
    /// This error with a `Retry-After` of `wait`, rounded up to whole seconds (at least 1).
    pub fn retry_after(mut self, wait: Duration) -> ApiError {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }
}

/// The token a request presents: `Authorization: Bearer`, else an `access_token` query
/// parameter (browsers' `EventSource`/`WebSocket`).
pub(crate) fn presented_token(request: &Request) -> Option<String> {
    if let Ok(Some(token)) = bearer_token(request.headers()) {
        return Some(token.to_owned());
    }
    #[derive(Deserialize)]
    struct TokenParam {
        access_token: Option<String>,
    }
    axum::extract::Query::<TokenParam>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.access_token)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Middleware: the per-token REST rate limit, when a [`Limits`] extension is present.
pub async fn rate_limit(request: Request, next: Next) -> Response {
    let limits = request.extensions().get::<Limits>().cloned();
    if let (Some(limits), Some(token)) = (limits, presented_token(&request))
        && let Err(err) = limits.check_rest(&token)
    {
        return err.into_response();
    }
    next.run(request).await
}

/// Sets `Retry-After` on a response.
pub(crate) fn set_retry_after(response: &mut Response, secs: u64) {
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(settings: LimitSettings) -> Limits {
        let config = LimitConfig::resolve(Some(settings)).unwrap();
        Limits::new(config, &mut Registry::default())
    }

    #[test]
    fn defaults_bound_every_limit() {
        let config = LimitConfig::default();
        assert_eq!(
            config.console_streams_per_token.map(NonZeroU32::get),
            Some(256)
        );
        assert!(config.rest.is_some());
        assert!(config.ws_data_connections_per_agent.is_some());
    }

    #[test]
    fn zero_switches_a_limit_off_and_bad_values_are_named() {
        let config = LimitConfig::resolve(Some(LimitSettings {
            console_streams_per_token: Some(0),
            rest_requests_per_s: Some(0),
            ws_data_connections_per_agent: Some(0),
            ..LimitSettings::default()
        }))
        .unwrap();
        assert_eq!(config.console_streams_per_token, None);
        assert_eq!(config.rest, None);
        assert_eq!(config.ws_data_connections_per_agent, None);
        let err = LimitConfig::resolve(Some(LimitSettings {
            rest_requests_per_s: Some(5),
            rest_burst: Some(0),
            ..LimitSettings::default()
        }))
        .unwrap_err();
        assert!(err.contains("limits.rest_burst"), "{err}");
    }

    #[test]
    fn permits_are_per_holder_and_given_back() {
        let limits = limits(LimitSettings {
            console_streams_per_token: Some(2),
            ..LimitSettings::default()
        });
        let a1 = limits.console_stream("tok-a").unwrap();
        let _a2 = limits.console_stream("tok-a").unwrap();
        let err = limits.console_stream("tok-a").unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, "over_capacity");
        assert_eq!(err.retry_after, Some(5));
        // Another token has its own places.
        let _b = limits.console_stream("tok-b").unwrap();
        drop(a1);
        let _a3 = limits.console_stream("tok-a").unwrap();
        assert_eq!(
            limits
                .0
                .refusals
                .get_or_create(&LimitLabels {
                    limit: "console_streams"
                })
                .get(),
            1
        );
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_with_a_wait() {
        let limits = limits(LimitSettings {
            rest_requests_per_s: Some(1),
            rest_burst: Some(3),
            ..LimitSettings::default()
        });
        for _ in 0..3 {
            limits.check_rest("tok").unwrap();
        }
        let err = limits.check_rest("tok").unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "rate_limited");
        assert_eq!(err.retry_after, Some(1));
        limits.check_rest("other").unwrap();
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        let request = Request::builder()
            .uri("/api/v1/streams/console?dongles=x&access_token=tu_abc%2B")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(presented_token(&request).as_deref(), Some("tu_abc+"));
        let request = Request::builder()
            .uri("/api/v1/agents?access_token=q")
            .header("authorization", "Bearer tu_h")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(presented_token(&request).as_deref(), Some("tu_h"));
        let request = Request::builder()
            .uri("/api/v1/agents")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(presented_token(&request), None);
    }
}
