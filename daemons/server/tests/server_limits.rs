//! Limits per token and per agent (issue 18): the REST rate per token answers `429` with
//! `Retry-After`, concurrent console streams per token and `/ws/data` connections per agent
//! answer `503 over_capacity` with `Retry-After`, places come back when streams end, and each
//! refusal is counted in `tether_server_limit_refusals_total{limit}`. Also: a fresh group
//! console subscriber gets the group's current `group_state` first.

#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use std::num::NonZeroU32;
use std::time::Duration;

use data_client::DataClient;
use reqwest::StatusCode;
use server_support::{TestResult, TestServer, code};
use tether_testkit::eventually;

/// How long a closed stream or connection may take to give its place back.
const PLACE_BACK: Duration = Duration::from_secs(5);

fn nz(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

async fn refusals(srv: &TestServer, limit: &str) -> TestResult<f64> {
    let text = srv.metrics().await?;
    let wanted = format!("tether_server_limit_refusals_total{{limit=\"{limit}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(f64::NAN)))
}

fn retry_after(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_others_do_not() -> TestResult {
    let srv = TestServer::start_with(|c| {
        c.limits.rest = Some((
            NonZeroU32::MIN,
            NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
        ));
    })
    .await?;
    let alice = srv.user_token("alice").await?;
    let bob = srv.user_token("bob").await?;
    for i in 0..5 {
        let (status, body) = srv.get("/api/v1/agents", &alice).await?;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let response = srv
        .get_request("/api/v1/agents")
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&response).ok_or("no Retry-After")?;
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let (_, body) = server_support::read(response).await?;
    assert_eq!(code(&body), "rate_limited", "{body}");
    // Another token is not slowed down by alice's burst.
    let (status, _) = srv.get("/api/v1/agents", &bob).await?;
    assert_eq!(status, StatusCode::OK);
    // Health and metrics are not API routes: never rate limited.
    let (status, _) = srv
        .call(reqwest::Method::GET, "/healthz", Some(&alice), None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(refusals(&srv, "rest_rate").await?, 1.0);
    // The bucket refills: after the wait alice is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = srv.get("/api/v1/agents", &alice).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn console_streams_per_token_are_capped_and_given_back() -> TestResult {
    let srv = TestServer::start_with(|c| {
        c.limits.console_streams_per_token = nz(2);
        c.limits.rest = None;
    })
    .await?;
    let (token, _, a, _) = srv.user_with_pair("carol").await?;
    let url = format!("{}/api/v1/streams/dongles/{a}/console", srv.base);
    let open = |token: &str| {
        srv.client
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let first = open(&token).await?;
    assert_eq!(first.status(), StatusCode::OK);
    // The browser form (`access_token`) counts against the same token.
    let second = srv
        .client
        .get(format!("{url}?access_token={token}"))
        .send()
        .await?;
    assert_eq!(second.status(), StatusCode::OK);
    let third = open(&token).await?;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&third), Some(5));
    let (_, body) = server_support::read(third).await?;
    assert_eq!(code(&body), "over_capacity", "{body}");
    assert_eq!(refusals(&srv, "console_streams").await?, 1.0);
    // Another token has its own places.
    let (other, _, other_dongle, _) = srv.user_with_pair("dave").await?;
    let dave_stream = srv
        .get_request(&format!("/api/v1/streams/console?dongles={other_dongle}"))
        .bearer_auth(&other)
        .send()
        .await?;
    assert_eq!(dave_stream.status(), StatusCode::OK);
    // Closing a stream gives its place back.
    drop(first);
    let _reopened = eventually(PLACE_BACK, "the closed stream's place back", || async {
        open(&token)
            .await
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
    })
    .await?;
    drop(second);
    Ok(())
}

#[tokio::test]
async fn ws_data_connections_per_agent_are_capped_before_the_upgrade() -> TestResult {
    let srv = TestServer::start_with(|c| {
        c.limits.ws_data_connections_per_agent = nz(1);
    })
    .await?;
    let (token, agent, _, _) = srv.user_with_pair("frank").await?;
    let first = DataClient::connect(&srv.base, &agent).await?;
    let refused = DataClient::connect(&srv.base, &agent).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert_eq!(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("5")
            );
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())?;
            assert_eq!(code(&body), "over_capacity", "{body}");
        }
        Err(other) => return Err(format!("expected a 503, got {other}").into()),
        Ok(_) => return Err("a second connection of the agent was accepted".into()),
    }
    assert_eq!(refusals(&srv, "ws_data_connections").await?, 1.0);
    // Another agent of the same user is not affected.
    let (_, other_agent) = srv.agent(&token, "frank-2").await?;
    let other = DataClient::connect(&srv.base, &other_agent).await?;
    drop(other);
    // The place comes back when the connection ends.
    first.close().await?;
    let _again = eventually(PLACE_BACK, "the closed connection's place back", || async {
        DataClient::connect(&srv.base, &agent).await.ok()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_fresh_group_subscriber_gets_the_current_group_state_first() -> TestResult {
    let srv = TestServer::start().await?;
    let (token, _, a, b) = srv.user_with_pair("gina").await?;
    let id = srv.active_group(&token, &a, &b).await?;
    for path in [
        format!("/api/v1/streams/groups/{id}/console"),
        format!("/api/v1/streams/console?groups={id}"),
    ] {
        let response = srv.get_request(&path).bearer_auth(&token).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let mut response = response;
        let mut text = String::new();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(chunk) = response.chunk().await? {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("event: group_state") && text.contains("\n\n") {
                    let tail = text.split("event: group_state").nth(1).unwrap_or("");
                    if tail.contains("\n\n") {
                        return TestResult::Ok(());
                    }
                }
            }
            Err("stream ended".into())
        })
        .await;
        assert!(got.is_ok(), "{path}: no group_state within 10 s: {text:?}");
        let event = text
            .split("event: group_state\n")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .ok_or("no event")?;
        assert!(
            !event.contains("id:"),
            "{path}: the first group_state has an id: {event}"
        );
        let data: serde_json::Value = serde_json::from_str(
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .ok_or("no data")?,
        )?;
        assert_eq!(data["id"], id.as_str(), "{data}");
        // Activated, both dongles offline: degraded with both sides offline.
        assert_eq!(data["mode"], "degraded", "{data}");
        assert_eq!(data["offline_side"], "both", "{data}");
        // It comes right after the stream's opening.
        let before = text.split("event: group_state").next().unwrap_or("");
        assert!(before.contains(": stream open"), "{path}: {before:?}");
        assert!(!before.contains("event:"), "{path}: {before:?}");
    }
    // A resuming subscriber gets no extra group_state.
    let response = srv
        .get_request(&format!("/api/v1/streams/groups/{id}/console"))
        .bearer_auth(&token)
        .header("last-event-id", "0-0")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(())
}
