//! The REST API end to end against a real server on loopback: agents, dongles, groups, audit.

mod server_support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use server_support::{TestResult, TestServer, assert_fields, code, text};

#[tokio::test]
async fn agents_are_created_listed_read_and_revoked() -> TestResult {
    let srv = TestServer::start().await?;
    let token = srv.user_token("alice").await?;
    let (status, created) = srv
        .post("/api/v1/agents", &token, json!({ "name": "  garage pi  " }))
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["name"], "garage pi");
    let agent_token = text(&created, "token")?;
    assert!(
        agent_token.starts_with("ta_") && agent_token.len() == 67,
        "{agent_token}"
    );
    let id = text(&created, "id")?;

    let (status, list) = srv.get("/api/v1/agents", &token).await?;
    assert_eq!(status, StatusCode::OK);
    let agents = list["agents"].as_array().cloned().unwrap_or_default();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["id"], id.as_str());
    // The token is shown once: never in listings or reads.
    assert!(agents[0].get("token").is_none());
    let (status, one) = srv.get(&format!("/api/v1/agents/{id}"), &token).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(one.get("token").is_none());
    assert_eq!(one["name"], "garage pi");

    // The agent token works until the agent is deleted.
    assert_eq!(srv.dongle(&agent_token, "SN1").await?.len(), 36);
    let (status, _) = srv.delete(&format!("/api/v1/agents/{id}"), &token).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = srv.announce(&agent_token, "SN2").await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _) = srv.get(&format!("/api/v1/agents/{id}"), &token).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = srv.delete(&format!("/api/v1/agents/{id}"), &token).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = srv.get("/api/v1/agents", &token).await?;
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(0));
    // Its dongle stays the user's.
    let (_, dongles) = srv.get("/api/v1/dongles", &token).await?;
    assert_eq!(dongles["dongles"].as_array().map(Vec::len), Some(1));
    srv.stop().await
}

#[tokio::test]
async fn dongle_announce_is_an_idempotent_upsert_owned_by_the_agents_user() -> TestResult {
    let srv = TestServer::start().await?;
    let alice = srv.user_token("alice").await?;
    let bob = srv.user_token("bob").await?;
    let (agent1_id, agent1) = srv.agent(&alice, "one").await?;
    let (agent2_id, agent2) = srv.agent(&alice, "two").await?;
    let (_, bob_agent) = srv.agent(&bob, "bob").await?;

    let (status, first) = srv.announce(&agent1, "VIN-42").await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["serial"], "VIN-42");
    assert_eq!(first["agent_id"], agent1_id.as_str());
    assert_eq!(first["online"], false);
    assert!(first["last_seen"].is_null());
    let (status, again) = srv.announce(&agent1, "VIN-42").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    // Moved to another agent of the same user.
    let (status, moved) = srv.announce(&agent2, "VIN-42").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(moved["id"], first["id"]);
    assert_eq!(moved["agent_id"], agent2_id.as_str());
    // Another user's agent announcing the same serial gets a dongle of its own user: serials
    // are a namespace per account, and nothing in the answer speaks of alice's.
    let (status, bobs) = srv.announce(&bob_agent, "VIN-42").await?;
    assert_eq!(status, StatusCode::CREATED, "{bobs}");
    assert_ne!(bobs["id"], first["id"]);
    assert_eq!(bobs["online"], false);
    assert!(!bobs.to_string().contains(agent2_id.as_str()));
    // And alice's announcement still finds her own dongle, unchanged.
    let (status, mine) = srv.announce(&agent2, "VIN-42").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["id"], first["id"]);

    let (_, list) = srv.get("/api/v1/dongles", &alice).await?;
    let dongles = list["dongles"].as_array().cloned().unwrap_or_default();
    assert_eq!(dongles.len(), 1);
    let id = text(&dongles[0], "id")?;
    let (status, one) = srv.get(&format!("/api/v1/dongles/{id}"), &alice).await?;
    assert_eq!(status, StatusCode::OK);
    assert_fields(&one, &["id", "serial", "agent_id", "online", "last_seen"]);
    let (_, bob_list) = srv.get("/api/v1/dongles", &bob).await?;
    let bob_dongles = bob_list["dongles"].as_array().cloned().unwrap_or_default();
    assert_eq!(bob_dongles.len(), 1);
    assert_eq!(bob_dongles[0]["id"], bobs["id"]);
    let (status, _) = srv.get(&format!("/api/v1/dongles/{id}"), &bob).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    srv.stop().await
}

#[tokio::test]
async fn group_creation_refusals_are_clear() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, alice_agent, a, b) = srv.user_with_pair("alice").await?;
    let (_, _, bob_a, _) = srv.user_with_pair("bob").await?;
    let c = srv.dongle(&alice_agent, "alice-C").await?;

    let cases = [
        (
            json!({ "name": "x", "dongle_a": a, "dongle_b": a }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_dongle",
        ),
        (
            json!({ "name": "x", "dongle_a": a, "dongle_b": bob_a }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_dongle",
        ),
        (
            json!({ "name": "x", "dongle_a": uuid::Uuid::new_v4(), "dongle_b": b }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_dongle",
        ),
        (
            json!({ "name": "   ", "dongle_a": a, "dongle_b": b }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "name": "x".repeat(101), "dongle_a": a, "dongle_b": b }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "name": "x", "dongle_a": "not-a-uuid", "dongle_b": b }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, expected) in cases {
        let (got, answer) = srv.post("/api/v1/groups", &alice, body.clone()).await?;
        assert_eq!(
            (got, code(&answer)),
            (status, expected),
            "{body} -> {answer}"
        );
    }
    let (_, list) = srv.get("/api/v1/groups", &alice).await?;
    assert_eq!(
        list["groups"].as_array().map(Vec::len),
        Some(0),
        "refusals stored nothing"
    );

    let (status, group) = srv.post_group(&alice, "bench pair", &a, &b).await?;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["mode"], "inactive");
    assert_eq!(group["backlog"], json!({ "a_to_b": 0, "b_to_a": 0 }));
    assert_eq!(group["offline_side"], "both");
    assert_eq!(group["dongle_a"], a.as_str());
    // Either dongle already grouped: 409.
    for body in [
        json!({ "name": "y", "dongle_a": a, "dongle_b": c }),
        json!({ "name": "y", "dongle_a": c, "dongle_b": b }),
    ] {
        let (status, answer) = srv.post("/api/v1/groups", &alice, body).await?;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::CONFLICT, "dongle_in_group")
        );
    }
    // Deleting the group frees its dongles.
    let id = text(&group, "id")?;
    let (status, _) = srv.delete(&format!("/api/v1/groups/{id}"), &alice).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = srv.get(&format!("/api/v1/groups/{id}"), &alice).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = srv.post_group(&alice, "again", &c, &a).await?;
    assert_eq!(status, StatusCode::CREATED);
    srv.stop().await
}

#[tokio::test]
async fn activation_is_idempotent_persisted_and_audited() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, _, a, b) = srv.user_with_pair("alice").await?;
    let id = srv.create_group(&alice, "pair", &a, &b).await?;
    let activate = format!("/api/v1/groups/{id}/activate");
    let deactivate = format!("/api/v1/groups/{id}/deactivate");

    // Dongles are offline (no data plane yet): an activated group is degraded.
    for _ in 0..2 {
        let (status, state) = srv.post(&activate, &alice, json!({})).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(state["mode"], "degraded");
        assert_eq!(state["offline_side"], "both");
        assert_eq!(state["id"], id.as_str());
        assert_eq!(state["name"], "pair");
    }
    // No body at all is fine too.
    let (status, state) = srv
        .call(Method::POST, &activate, Some(&alice), None)
        .await?;
    assert_eq!(
        (status, state["mode"].as_str()),
        (StatusCode::OK, Some("degraded"))
    );
    let (_, read) = srv.get(&format!("/api/v1/groups/{id}"), &alice).await?;
    assert_eq!(read["mode"], "degraded");
    for _ in 0..2 {
        let (status, state) = srv
            .call(Method::POST, &deactivate, Some(&alice), None)
            .await?;
        assert_eq!(
            (status, state["mode"].as_str()),
            (StatusCode::OK, Some("inactive"))
        );
    }

    let entries = srv.group_audit(&alice, &id).await?;
    let trail: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("?").to_owned(),
                e["action"].as_str().unwrap_or("?").to_owned(),
                e["old_mode"].as_str().unwrap_or("null").to_owned(),
                e["new_mode"].as_str().unwrap_or("null").to_owned(),
            )
        })
        .collect();
    let expect = |actor: &str, action: &str, old: &str, new: &str| {
        (
            actor.to_owned(),
            action.to_owned(),
            old.to_owned(),
            new.to_owned(),
        )
    };
    assert_eq!(
        trail,
        vec![
            expect("user:alice", "create", "null", "inactive"),
            expect("user:alice", "activate", "inactive", "degraded"),
            expect("user:alice", "deactivate", "degraded", "inactive"),
        ],
        "repeated calls add no entries"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["at"].as_str().is_some_and(|t| t.contains('T')))
    );

    // The mode survives a restart of the server on the same data directory.
    srv.post(&activate, &alice, json!({})).await?;
    let data_dir = srv.dir.path().join("data");
    let TestServer { dir, server, .. } = srv;
    server.shutdown().await?;
    let srv2 = TestServer::start_with(|c| c.data_dir = data_dir).await?;
    let (status, read) = srv2.get(&format!("/api/v1/groups/{id}"), &alice).await?;
    assert_eq!(
        (status, read["mode"].as_str()),
        (StatusCode::OK, Some("degraded"))
    );
    srv2.server.shutdown().await?;
    drop(dir);
    Ok(())
}

#[tokio::test]
async fn revoked_user_token_is_refused() -> TestResult {
    let srv = TestServer::start().await?;
    let store = srv.server.state().store().clone();
    let (_, id, issued) = store
        .call(|s| s.create_user_token("carol", chrono::Utc::now()))
        .await?;
    let (status, _) = srv.get("/api/v1/agents", &issued.secret).await?;
    assert_eq!(status, StatusCode::OK);
    let revoked = store
        .call(move |s| s.revoke_user_token(id, chrono::Utc::now()))
        .await?;
    assert!(revoked);
    let (status, body) = srv.get("/api/v1/agents", &issued.secret).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    srv.stop().await
}
