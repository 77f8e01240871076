//! Tether mounted under a prefix of a host's own axum router, on the host's listener: REST,
//! JSON errors, metrics and the data plane all answer under the prefix, the host's routes
//! still answer, and `Server::shutdown` ends the data-plane connections so the host's graceful
//! shutdown completes.

#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chrono::Utc;
use data_client::{DataClient, Received};
use relay_core::engine::Side;
use relay_core::protocol::Encoding;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server_support::{TestResult, code, read, text};
use tether_server::{ServerBuilder, ServerConfig};

/// A JSON request against `base` with an optional bearer token.
async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> TestResult<(StatusCode, Value)> {
    let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    read(request.send().await?).await
}

#[tokio::test]
async fn mounted_under_a_prefix_everything_answers_there() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = ServerConfig::new("127.0.0.1:0".parse()?, dir.path().join("data"));
    let tether = ServerBuilder::new(config).build().await?;
    let state = tether.state().clone();
    let app = Router::new()
        .route("/", get(|| async { "host" }))
        .nest("/tether", tether.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
                tether.shutdown().await;
            })
            .await
    });
    let host = format!("http://{addr}");
    let base = format!("{host}/tether");

    // The host's own route, and Tether's health under the prefix.
    let body = reqwest::get(format!("{host}/")).await?.text().await?;
    assert_eq!(body, "host");
    let (status, health) = call(&base, Method::GET, "/healthz", None, None).await?;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    // Tether's JSON errors under the prefix: unknown route, missing token.
    let (status, body) = call(&base, Method::GET, "/nope", None, None).await?;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = call(&base, Method::GET, "/api/v1/groups", None, None).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    // A user, an agent, two dongles and an active group, through the mounted REST API.
    let (_, _, issued) = state
        .store()
        .call(|store| store.create_user_token("embedder", Utc::now()))
        .await?;
    let user = issued.secret;
    let (status, agent) = call(
        &base,
        Method::POST,
        "/api/v1/agents",
        Some(&user),
        Some(json!({ "name": "edge" })),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = text(&agent, "token")?;
    let mut dongles = Vec::new();
    for serial in ["A", "B"] {
        let (_, dongle) = call(
            &base,
            Method::POST,
            "/api/v1/agent/dongles",
            Some(&agent),
            Some(json!({ "serial": serial })),
        )
        .await?;
        dongles.push(text(&dongle, "id")?);
    }
    let (status, group) = call(
        &base,
        Method::POST,
        "/api/v1/groups",
        Some(&user),
        Some(json!({ "name": "g", "dongle_a": dongles[0], "dongle_b": dongles[1] })),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let group = text(&group, "id")?;
    let (status, _) = call(
        &base,
        Method::POST,
        &format!("/api/v1/groups/{group}/activate"),
        Some(&user),
        Some(json!({})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);

    // The data plane under the prefix relays A → B.
    let (mut a, _) = DataClient::open(&base, &agent, &group, Side::A, 0, &[Encoding::Json]).await?;
    let (mut b, _) = DataClient::open(&base, &agent, &group, Side::B, 0, &[Encoding::Json]).await?;
    assert_eq!(a.send_acked(1, 20).await?, 20);
    let mut got = Received::default();
    b.consume_until(20, &mut got).await?;
    assert_eq!(got.seqs, (1..=20).collect::<Vec<_>>());
    assert!(got.gaps.is_empty(), "{:?}", got.gaps);

    // Request metrics name the route with its prefix.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("route=\"/tether/api/v1/groups\""),
        "{metrics}"
    );

    // The host stops: Tether's shutdown closes the data-plane sockets, so serving ends.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), served).await???;
    a.recv_until_closed().await?;
    b.recv_until_closed().await?;
    Ok(())
}
