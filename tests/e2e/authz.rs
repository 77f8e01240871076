//! Authorization across users at the process level: another user's token cannot read, change
//! or stream anything of this user's (REST and SSE answer 404, exactly as for an unknown id),
//! bad tokens get 401, and on `/ws/data` an agent cannot join a group it is not part of.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ServerProc, TestResult, code, default_server};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Status of a GET on an SSE console (the body is not read beyond the head).
async fn sse_status(url: &str, bearer: Option<&str>) -> TestResult<StatusCode> {
    let mut request = reqwest::Client::new()
        .get(url)
        .header("Accept", "text/event-stream")
        .timeout(Duration::from_secs(10));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?.status())
}

/// How `/ws/data` answered a hello: refused at the upgrade (HTTP status), or with an `error`
/// message (its code), or accepted (`welcome`).
#[derive(Debug, PartialEq, Eq)]
enum WsOutcome {
    Http(u16),
    Error(String),
    Welcome,
    Closed,
}

async fn ws_hello(
    server: &ServerProc,
    token: &str,
    group: &str,
    side: &str,
) -> TestResult<WsOutcome> {
    let mut request = format!("{}/ws/data", server.ws_url()).into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return Ok(WsOutcome::Http(response.status().as_u16()));
        }
        Err(err) => return Err(err.into()),
    };
    let hello = json!({"type": "hello", "version": 1, "group_id": group, "side": side,
                       "resume": {"rx_seq": 0}, "encodings": ["json"]});
    socket.send(WsMessage::text(hello.to_string())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(WsMessage::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return match v["type"].as_str() {
                        Some("welcome") => WsOutcome::Welcome,
                        Some("error") => {
                            WsOutcome::Error(v["code"].as_str().unwrap_or("").to_owned())
                        }
                        _ => continue,
                    };
                }
                Ok(WsMessage::Close(_)) | Err(_) => return WsOutcome::Closed,
                Ok(_) => continue,
            }
        }
        WsOutcome::Closed
    })
    .await?;
    let _ = socket.close(None).await;
    Ok(answer)
}

fn refused(outcome: &WsOutcome) -> bool {
    matches!(outcome, WsOutcome::Http(401 | 403 | 404))
        || *outcome == WsOutcome::Error("unauthorized".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_and_agents_are_kept_out() -> TestResult {
    let (_ws, server) = default_server().await?;
    let api = server.api();
    let alice = server.user_token("alice")?;
    let mallory = server.user_token("mallory")?;
    let (_, alice_agent_a) = api.create_agent(&alice, "alice-a").await?;
    let (_, alice_agent_b) = api.create_agent(&alice, "alice-b").await?;
    let (_, mallory_agent) = api.create_agent(&mallory, "mallory-edge").await?;
    let a = api.announce_dongle(&alice_agent_a, "ALICE-A").await?;
    let b = api.announce_dongle(&alice_agent_b, "ALICE-B").await?;
    let group = api.active_group(&alice, "alice pair", &a, &b).await?;
    let m1 = api.announce_dongle(&mallory_agent, "MALLORY-1").await?;

    // REST: everything of alice's is 404 for mallory, and nothing changes.
    for (method, path) in [
        (Method::GET, format!("/api/v1/groups/{group}")),
        (Method::GET, format!("/api/v1/groups/{group}/audit")),
        (Method::POST, format!("/api/v1/groups/{group}/deactivate")),
        (Method::POST, format!("/api/v1/groups/{group}/activate")),
        (Method::DELETE, format!("/api/v1/groups/{group}")),
        (Method::GET, format!("/api/v1/dongles/{a}")),
    ] {
        let (status, body) = api
            .call(method.clone(), &path, Some(&mallory), None)
            .await?;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = api.post_group(&mallory, "steal", &m1, &a).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_dongle"),
        "{body}"
    );
    let (_, listed) = api.get("/api/v1/groups", &mallory).await?;
    assert_eq!(listed["groups"], json!([]), "{listed}");
    let (status, mine) = api.get(&format!("/api/v1/groups/{group}"), &alice).await?;
    assert_eq!(status, StatusCode::OK, "mallory deleted nothing: {mine}");
    assert!(
        matches!(mine["mode"].as_str(), Some("active" | "degraded")),
        "mallory deactivated nothing: {mine}"
    );
    // An agent token is not a user token and vice versa.
    let (status, _) = api.get("/api/v1/groups", &alice_agent_a).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.announce(&alice, "X-1").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another user's serial cannot be taken over: announcing it gives mallory a dongle of her
    // own (serials are per account), alice's stays hers and is not revealed.
    let (status, body) = api.announce(&mallory_agent, "ALICE-A").await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["id"].as_str(), Some(a.as_str()), "{body}");
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/api/v1/dongles/{a}"),
            Some(&mallory),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // SSE: 404 for someone else's streams, 401 for bad tokens, 200 for the owner.
    let base = &server.base;
    let group_console = format!("{base}/api/v1/streams/groups/{group}/console");
    let dongle_console = format!("{base}/api/v1/streams/dongles/{a}/console");
    let multiplexed = format!("{base}/api/v1/streams/console?groups={group}&dongles={a}");
    for url in [&group_console, &dongle_console, &multiplexed] {
        assert_eq!(
            sse_status(url, Some(&mallory)).await?,
            StatusCode::NOT_FOUND,
            "{url}"
        );
        assert_eq!(
            sse_status(url, Some("tu_0000")).await?,
            StatusCode::UNAUTHORIZED,
            "{url}"
        );
        assert_eq!(
            sse_status(url, None).await?,
            StatusCode::UNAUTHORIZED,
            "{url}"
        );
        assert_eq!(
            sse_status(url, Some(&alice)).await?,
            StatusCode::OK,
            "{url}"
        );
        let sep = if url.contains('?') { '&' } else { '?' };
        assert_eq!(
            sse_status(&format!("{url}{sep}access_token={mallory}"), None).await?,
            StatusCode::NOT_FOUND,
            "{url} with mallory's access_token"
        );
        assert_eq!(
            sse_status(&format!("{url}{sep}access_token={alice}"), None).await?,
            StatusCode::OK,
            "{url} with alice's access_token"
        );
    }

    // /ws/data: mallory's agent cannot join alice's group on either side; a bad token cannot
    // connect at all; alice's agent A may not pose as side B.
    for side in ["a", "b"] {
        let outcome = ws_hello(&server, &mallory_agent, &group, side).await?;
        assert!(
            refused(&outcome),
            "mallory's agent on side {side}: {outcome:?}"
        );
    }
    let outcome = ws_hello(&server, "ta_not-a-token", &group, "a").await?;
    assert!(refused(&outcome), "bad agent token: {outcome:?}");
    let outcome = ws_hello(&server, &alice, &group, "a").await?;
    assert!(
        refused(&outcome),
        "user token on the data plane: {outcome:?}"
    );
    let outcome = ws_hello(&server, &alice_agent_a, &group, "b").await?;
    assert!(refused(&outcome), "agent A as side b: {outcome:?}");
    // The owner's agent on its own side is welcome: the refusals above were about identity.
    assert_eq!(
        ws_hello(&server, &alice_agent_a, &group, "a").await?,
        WsOutcome::Welcome
    );

    // The server kept serving through all of it.
    let (status, _) = api.get(&format!("/api/v1/groups/{group}"), &alice).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}
