//! Authorization: another user's token sees nothing of this user's (404, never 403), and bad
//! tokens get 401 on every endpoint.

mod server_support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, code, text};

/// Every user endpoint that names one of alice's resources.
fn resource_requests(
    agent: &str,
    dongle: &str,
    group: &str,
) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/v1/agents/{agent}"), None),
        (Method::DELETE, format!("/api/v1/agents/{agent}"), None),
        (Method::GET, format!("/api/v1/dongles/{dongle}"), None),
        (Method::GET, format!("/api/v1/groups/{group}"), None),
        (
            Method::POST,
            format!("/api/v1/groups/{group}/activate"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/groups/{group}/deactivate"),
            None,
        ),
        (Method::GET, format!("/api/v1/groups/{group}/audit"), None),
        (Method::DELETE, format!("/api/v1/groups/{group}"), None),
    ]
}

#[tokio::test]
async fn another_users_token_gets_404_on_everything_and_changes_nothing() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, alice_agent, a, b) = srv.user_with_pair("alice").await?;
    let (bob, _, bob_a, _) = srv.user_with_pair("bob").await?;
    let (_, agents) = srv.get("/api/v1/agents", &alice).await?;
    let agent_id = text(&agents["agents"][0], "id")?;
    let group_id = srv.create_group(&alice, "alice pair", &a, &b).await?;

    for (method, path, body) in resource_requests(&agent_id, &a, &group_id) {
        let (status, answer) = srv.call(method.clone(), &path, Some(&bob), body).await?;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {path}"
        );
        // Same answer as for an id that does not exist at all.
        let unknown = path.replace(&agent_id, &uuid::Uuid::new_v4().to_string());
        let unknown = unknown.replace(&a, &uuid::Uuid::new_v4().to_string());
        let unknown = unknown.replace(&group_id, &uuid::Uuid::new_v4().to_string());
        let (status2, answer2) = srv.call(method.clone(), &unknown, Some(&bob), None).await?;
        assert_eq!(status2, StatusCode::NOT_FOUND);
        assert_eq!(answer["error"]["code"], answer2["error"]["code"]);
        assert!(!answer.to_string().contains("alice"));
    }
    // Bob cannot use alice's dongles in his group either (same refusal as an unknown id).
    let (status, answer) = srv.post_group(&bob, "steal", &bob_a, &b).await?;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_dongle")
    );
    // Listings only show one's own.
    for list in ["/api/v1/agents", "/api/v1/dongles", "/api/v1/groups"] {
        let (_, body) = srv.get(list, &bob).await?;
        let text = body.to_string();
        assert!(
            !text.contains(&a) && !text.contains(&group_id) && !text.contains(&agent_id),
            "{list}: {text}"
        );
    }
    // Nothing of alice's changed: agent alive, group still there and inactive, audit untouched.
    let (status, _) = srv
        .get(&format!("/api/v1/agents/{agent_id}"), &alice)
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        srv.dongle(&alice_agent, "alice-A").await?,
        a,
        "alice's agent token still works"
    );
    let (status, read) = srv
        .get(&format!("/api/v1/groups/{group_id}"), &alice)
        .await?;
    assert_eq!(
        (status, read["mode"].as_str()),
        (StatusCode::OK, Some("inactive"))
    );
    assert_eq!(srv.group_audit(&alice, &group_id).await?.len(), 1);
    srv.stop().await
}

#[tokio::test]
async fn bad_tokens_get_401_on_every_endpoint() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, agent_token, a, b) = srv.user_with_pair("alice").await?;
    let group_id = srv.create_group(&alice, "p", &a, &b).await?;
    let (_, agents) = srv.get("/api/v1/agents", &alice).await?;
    let agent_id = text(&agents["agents"][0], "id")?;

    let mut user_endpoints = resource_requests(&agent_id, &a, &group_id);
    user_endpoints.extend([
        (Method::GET, "/api/v1/agents".to_owned(), None),
        (
            Method::POST,
            "/api/v1/agents".to_owned(),
            Some(json!({ "name": "x" })),
        ),
        (Method::GET, "/api/v1/dongles".to_owned(), None),
        (Method::GET, "/api/v1/groups".to_owned(), None),
        (
            Method::POST,
            "/api/v1/groups".to_owned(),
            Some(json!({ "name": "x", "dongle_a": a, "dongle_b": b })),
        ),
    ]);
    let forged_user = format!("tu_{}", "0".repeat(64));
    let user_token_lookalike = format!("{}{}", &alice[..19], "f".repeat(48));
    // Missing, garbage, forged, same lookup key with a wrong secret, and an agent token.
    let bad: Vec<Option<String>> = vec![
        None,
        Some("garbage".to_owned()),
        Some(forged_user),
        Some(user_token_lookalike),
        Some(agent_token.clone()),
    ];
    for (method, path, body) in &user_endpoints {
        for token in &bad {
            let (status, answer) = srv
                .call(method.clone(), path, token.as_deref(), body.clone())
                .await?;
            assert_eq!(
                (status, code(&answer)),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{method} {path} {token:?}"
            );
        }
        // Wrong scheme.
        let response = srv
            .client
            .request(method.clone(), format!("{}{path}", srv.base))
            .header("Authorization", format!("Basic {alice}"))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
    }
    // The agent endpoint refuses user tokens and bad agent tokens.
    let forged_agent = format!("ta_{}", "0".repeat(64));
    for token in [None, Some(alice.as_str()), Some(forged_agent.as_str())] {
        let (status, _) = srv
            .call(
                Method::POST,
                "/api/v1/agent/dongles",
                token,
                Some(json!({ "serial": "NEW" })),
            )
            .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Nothing was created by any refused request.
    let (_, agents) = srv.get("/api/v1/agents", &alice).await?;
    assert_eq!(agents["agents"].as_array().map(Vec::len), Some(1));
    let (_, dongles) = srv.get("/api/v1/dongles", &alice).await?;
    assert_eq!(dongles["dongles"].as_array().map(Vec::len), Some(2));
    let (_, groups) = srv.get("/api/v1/groups", &alice).await?;
    assert_eq!(groups["groups"].as_array().map(Vec::len), Some(1));
    srv.stop().await
}
