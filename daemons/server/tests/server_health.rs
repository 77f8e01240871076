//! `/healthz`, `/readyz` (with a real Redis and an unreachable one) and `/metrics`.

mod server_support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use server_support::{TestResult, TestServer, code, redis_url};

#[tokio::test]
async fn healthz_and_readyz_without_redis() -> TestResult {
    let srv = TestServer::start().await?;
    let (status, body) = srv.call(Method::GET, "/healthz", None, None).await?;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
    let (status, body) = srv.call(Method::GET, "/readyz", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["checks"],
        json!({ "database": "ok", "redis": "not_configured" })
    );
    srv.stop().await
}

#[tokio::test]
async fn readyz_is_503_when_redis_is_unreachable() -> TestResult {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let srv =
        TestServer::start_with(|c| c.redis_url = Some("redis://127.0.0.1:1".to_owned())).await?;
    let (status, body) = srv.call(Method::GET, "/readyz", None, None).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    assert_eq!(
        body["checks"],
        json!({ "database": "ok", "redis": "unreachable" })
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("redis:")),
        "{body}"
    );
    // Alive all the same.
    let (status, _) = srv.call(Method::GET, "/healthz", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    srv.assert_metrics(&["tether_server_readiness_failures_total 1"])
        .await?;
    srv.stop().await
}

#[tokio::test]
async fn readyz_is_ok_with_a_real_redis() -> TestResult {
    let url = redis_url()?;
    let srv = TestServer::start_with(|c| c.redis_url = Some(url.clone())).await?;
    let (status, body) = srv.call(Method::GET, "/readyz", None, None).await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "Redis at {url} must be reachable: {body}"
    );
    assert_eq!(body["checks"], json!({ "database": "ok", "redis": "ok" }));
    srv.stop().await
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_connections() -> TestResult {
    let srv = TestServer::start().await?;
    let token = srv.user_token("alice").await?;
    let (_, agent) = srv.agent(&token, "edge").await?;
    for _ in 0..3 {
        srv.get(&format!("/api/v1/agents/{agent}"), &token).await?;
    }
    srv.call(Method::GET, "/no/such/route", None, None).await?;
    let response = srv.fetch("/metrics").await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await?;
    // Route templates, not raw paths, so ids do not explode the label space.
    assert!(text.contains(r#"tether_server_http_requests_total{route="/api/v1/agents/{id}",method="GET",status="404"} 3"#), "{text}");
    assert!(text.contains(r#"tether_server_http_requests_total{route="/api/v1/agents",method="POST",status="201"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"tether_server_http_requests_total{route="unmatched",method="GET",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("tether_server_connections_accepted_total"),
        "{text}"
    );
    let open_line = text
        .lines()
        .find(|l| l.starts_with("tether_server_connections_open "))
        .ok_or("no connections_open gauge")?;
    let open: i64 = open_line.rsplit(' ').next().unwrap_or("x").parse()?;
    assert!(open >= 1, "{open_line}");
    // The data plane's and the console's families are exported too.
    for family in ["tether_server_relay_", "tether_server_sse_subscribers"] {
        assert!(text.contains(family), "no {family}* family in {text}");
    }
    srv.stop().await
}
