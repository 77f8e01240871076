//! Which other origins (web pages served elsewhere) may use the API from a browser: the
//! `cors:` section of the server configuration, tower-http's CORS layer built from it, and the
//! origin check of browser WebSockets (which CORS does not cover).
//!
//! Off by default: without `cors.allowed_origins` no CORS header is sent, a preflight
//! `OPTIONS` answers `405` as any unknown method does, and a browser WebSocket from another
//! origin is refused. Requests without an `Origin` header (curl, agents, SDKs) are never
//! affected.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::ApiError;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The `cors:` section of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins (`scheme://host[:port]`, as browsers send them) allowed to call the API, read
    /// the consoles and open the response WebSockets; `"*"` allows every origin.
    pub allowed_origins: Option<Vec<String>>,
}

/// The validated origin allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Every origin is allowed (`"*"`).
    any: bool,
    /// The allowed origins, exactly as browsers send them (lower-case scheme and host).
    origins: Vec<HeaderValue>,
}

impl OriginPolicy {
    /// Validates the file section. An origin is `http` or `https`, a host, an optional port,
    /// and nothing else (no path, no trailing `/`); `"*"` stands alone.
    pub fn resolve(settings: Option<CorsSettings>) -> Result<OriginPolicy, String> {
        let list = settings.and_then(|s| s.allowed_origins).unwrap_or_default();
        let mut policy = OriginPolicy::default();
        for raw in list {
            if raw == "*" {
                policy.any = true;
                continue;
            }
            let origin = normalise_origin(&raw).ok_or_else(|| {
                format!(
                    "cors.allowed_origins: {raw:?} is not an origin such as https://dash.example.com or http://127.0.0.1:3000 (scheme, host, optional port, no path)"
                )
            })?;
            let value = HeaderValue::from_str(&origin)
                .map_err(|_| format!("cors.allowed_origins: {raw:?} is not ASCII"))?;
            if !policy.origins.contains(&value) {
                policy.origins.push(value);
            }
        }
        if policy.any && !policy.origins.is_empty() {
            return Err(
                "cors.allowed_origins: \"*\" allows every origin; list it alone".to_owned(),
            );
        }
        Ok(policy)
    }

    /// A policy allowing exactly these origins (for embedding and tests); they are validated
    /// like the configuration file's.
    pub fn allowing<I, S>(origins: I) -> Result<OriginPolicy, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        OriginPolicy::resolve(Some(CorsSettings {
            allowed_origins: Some(origins.into_iter().map(Into::into).collect()),
        }))
    }

    /// One line for `--check-config`: `off`, `any origin`, or the allowed origins.
    pub fn describe(&self) -> String {
        if self.any {
            return "any origin".to_owned();
        }
        if self.origins.is_empty() {
            return "off".to_owned();
        }
        let origins: Vec<&str> = self
            .origins
            .iter()
            .filter_map(|o| o.to_str().ok())
            .collect();
        origins.join(", ")
    }

    /// Whether cross-origin access is configured at all.
    pub fn is_enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// Whether a browser on `origin` (an `Origin` header value) is allowed.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.any
            || origin
                .to_str()
                .ok()
                .and_then(normalise_origin)
                .is_some_and(|o| self.origins.iter().any(|allowed| allowed == o.as_str()))
    }

    /// The CORS layer for the whole router, `None` when the policy is off. It answers
    /// preflights itself and adds `Access-Control-Allow-Origin` to every answer for an allowed
    /// origin (event streams included), letting pages send `Authorization`, `Content-Type`
    /// and `Last-Event-ID`.
    pub fn layer(&self) -> Option<CorsLayer> {
        if !self.is_enabled() {
            return None;
        }
        let allow_origin = if self.any {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.origins.clone())
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("last-event-id"),
                ])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }

    /// The origin check of a browser WebSocket handshake (browsers send `Origin` and CORS does
    /// not apply to WebSockets): no `Origin` (not a browser), the server's own origin (the
    /// `Host` the request was sent to) or an allowed origin pass; anything else is
    /// `403 forbidden_origin`.
    pub fn check_websocket(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.allows(origin) || same_origin(origin, headers) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin is not allowed to open WebSockets here (see cors.allowed_origins)",
        ))
    }
}

/// Whether `origin`'s host and port are the `Host` header's (the page was served by us).
fn same_origin(origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        origin.to_str().ok().and_then(normalise_origin),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    let default_port = if origin.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    authority == host
        || format!("{authority}{default_port}") == host
        || authority == host.strip_suffix(default_port).unwrap_or("")
}

/// `scheme://host[:port]` in lower case, or `None` for anything else (paths, queries, user
/// info, other schemes, empty hosts, bad ports).
fn normalise_origin(raw: &str) -> Option<String> {
    let lower = raw.trim().to_ascii_lowercase();
    let (scheme, authority) = lower.split_once("://")?;
    if !matches!(scheme, "http" | "https") || authority.is_empty() {
        return None;
    }
    if authority
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '@' | ' ') || c.is_control())
    {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return None;
    }
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return None;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
        );
        if let Some(origin) = origin {
            h.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        h
    }

    #[test]
    fn origins_are_validated_and_normalised() {
        let policy = OriginPolicy::allowing(["HTTPS://Dash.Example.com", "http://127.0.0.1:3000"]);
        let policy = policy.unwrap_or_default();
        assert!(policy.is_enabled());
        assert!(policy.allows(&HeaderValue::from_static("https://dash.example.com")));
        assert!(policy.allows(&HeaderValue::from_static("http://127.0.0.1:3000")));
        assert!(!policy.allows(&HeaderValue::from_static("http://127.0.0.1:3001")));
        assert!(!policy.allows(&HeaderValue::from_static("null")));
        for bad in [
            "dash.example.com",
            "https://dash.example.com/",
            "https://dash.example.com/app",
            "ftp://x",
            "https://",
            "https://x:99999",
            "https://user@x",
        ] {
            assert!(OriginPolicy::allowing([bad]).is_err(), "{bad}");
        }
        assert!(OriginPolicy::allowing(["*", "https://x"]).is_err());
        assert_eq!(OriginPolicy::resolve(None), Ok(OriginPolicy::default()));
        assert!(OriginPolicy::default().layer().is_none());
        assert_eq!(OriginPolicy::default().describe(), "off");
        assert_eq!(
            policy.describe(),
            "https://dash.example.com, http://127.0.0.1:3000"
        );
    }

    #[test]
    fn websocket_origin_check() {
        let off = OriginPolicy::default();
        let on = OriginPolicy::allowing(["http://dash.example"]).unwrap_or_default();
        let any = OriginPolicy::allowing(["*"]).unwrap_or_default();
        // (policy, Origin, Host, accepted): with the policy off, only same-origin requests (or
        // none naming an origin) pass.
        let cases = [
            (&off, None, "127.0.0.1:8080", true),
            (&off, Some("http://127.0.0.1:8080"), "127.0.0.1:8080", true),
            (
                &off,
                Some("http://tether.example"),
                "tether.example:80",
                true,
            ),
            (&off, Some("https://tether.example"), "tether.example", true),
            (&off, Some("http://evil.example"), "127.0.0.1:8080", false),
            (&on, Some("http://dash.example"), "127.0.0.1:8080", true),
            (&on, Some("http://evil.example"), "127.0.0.1:8080", false),
            (&any, Some("http://evil.example"), "127.0.0.1:8080", true),
        ];
        for (policy, origin, host, accepted) in cases {
            let checked = policy.check_websocket(&headers(origin, host));
            let status = checked.err().map(|e| e.status);
            let expected = (!accepted).then_some(StatusCode::FORBIDDEN);
            assert_eq!(
                status,
                expected,
                "{origin:?} on {host} ({})",
                policy.describe()
            );
        }
    }
}
