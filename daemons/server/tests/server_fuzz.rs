//! Arbitrary bytes against the server's sockets, in process (issue 18): property tests that
//! drive the REST routes (through the router itself, `tower::ServiceExt::oneshot`) and the
//! `/ws/data` connection handler (over a real WebSocket on loopback) with random methods,
//! paths, headers, bodies and messages. The server must never panic or answer 500, every
//! refusal must be the JSON error shape, and the server must still serve afterwards.

#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use data_client::data_url;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use server_support::{TestResult, TestServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

/// One server and runtime for every case (starting one per case would dominate the run).
struct Harness {
    runtime: tokio::runtime::Runtime,
    /// A served server for the WebSocket cases, with a user, an agent and a group.
    server: TestServer,
    agent: String,
    group: String,
    /// Another server's router for the REST cases, with its own user and agent tokens.
    router: axum::Router,
    router_tokens: [String; 2],
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (server, agent, group, router, router_tokens) = runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = tether_server::ServerConfig::new(
                "127.0.0.1:0".parse().expect("addr"),
                dir.path().join("router"),
            );
            let built = tether_server::ServerBuilder::new(config)
                .build()
                .await
                .expect("server");
            let router = built.router();
            let store = std::sync::Arc::clone(built.state().store());
            let router_tokens = store
                .call(|store| {
                    let (user, _, issued) = store.create_user_token("fuzz", chrono::Utc::now())?;
                    let agent = store.create_agent(user.id, "edge", chrono::Utc::now())?;
                    Ok([issued.secret, agent.token])
                })
                .await
                .expect("tokens");
            // Kept alive for the process: the router's stores live in it.
            std::mem::forget(dir);
            std::mem::forget(built);
            let server = TestServer::start().await.expect("server");
            let (user, agent, a, b) = server.user_with_pair("fuzz").await.expect("pair");
            let (_, group) = server.post_group(&user, "g", &a, &b).await.expect("group");
            let group = group["id"].as_str().expect("group id").to_owned();
            (server, agent, group, router, router_tokens)
        });
        Harness {
            runtime,
            server,
            agent,
            group,
            router,
            router_tokens,
        }
    })
}

const PATHS: &[&str] = &[
    "/api/v1/agents",
    "/api/v1/agents/{id}",
    "/api/v1/agent/dongles",
    "/api/v1/agent/dongles/{id}",
    "/api/v1/dongles",
    "/api/v1/groups",
    "/api/v1/groups/{id}",
    "/api/v1/groups/{id}/activate",
    "/api/v1/groups/{id}/audit",
    "/api/v1/vehicles",
    "/api/v1/commands",
    "/api/v1/commands/{id}/responses",
    "/api/v1/servers/register",
    "/api/v1/sessions/{id}/usage-records",
    "/api/v1/streams/console",
    "/healthz",
    "/ws/data",
    "/{id}",
];

fn request_strategy() -> impl Strategy<Value = (Method, String, Option<String>, Vec<u8>, u8)> {
    let method = prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::PUT,
        Method::PATCH,
    ]);
    let segment = prop_oneof![
        Just("00000000-0000-0000-0000-000000000000".to_owned()),
        "[a-zA-Z0-9%._~-]{0,40}",
        Just("..%2F..%2Fetc".to_owned()),
    ];
    let path = (prop::sample::select(PATHS), segment, "[a-z=&%0-9_]{0,30}")
        .prop_map(|(p, seg, q)| format!("{}?{q}", p.replace("{id}", &seg)));
    let content_type = prop::option::of(prop::sample::select(vec![
        "application/json".to_owned(),
        "text/plain".to_owned(),
        "application/json; charset=utf-8".to_owned(),
    ]));
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Near-JSON: objects with random keys and values.
        prop::collection::btree_map("[a-z_]{1,12}", any::<String>(), 0..6)
            .prop_map(|m| { serde_json::to_vec(&m).unwrap_or_default() }),
        Just(b"{\"name\": \"x\", \"name\": 3}".to_vec()),
        Just(b"[\"x\"]".to_vec()),
    ];
    (method, path, content_type, body, 0u8..3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rest_routes_answer_arbitrary_requests_with_json_errors_never_500(
        (method, path, content_type, body, auth) in request_strategy()
    ) {
        let h = harness();
        let token = match auth {
            0 => None,
            1 => Some(h.router_tokens[0].clone()),
            _ => Some(h.router_tokens[1].clone()),
        };
        let mut request = Request::builder().method(method.clone()).uri(path.as_str());
        if let Some(ct) = &content_type {
            request = request.header("content-type", ct);
        }
        if let Some(token) = &token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let Ok(request) = request.body(Body::from(body)) else {
            return Ok(()); // not a valid HTTP request at all (the URI)
        };
        let response = h.runtime.block_on(h.router.clone().oneshot(request));
        let response = response.map_err(|e| TestCaseError::fail(format!("router error: {e}")))?;
        let status = response.status();
        prop_assert!(status.as_u16() < 500 || status.as_u16() == 503,
            "{method} {path}: {status}");
        if status.is_client_error() || status.is_server_error() {
            let bytes = h.runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("{method} {path}: {status} body is not JSON ({e}): {bytes:?}")))?;
            prop_assert!(value["error"]["code"].is_string(), "{method} {path}: {value}");
        }
    }

    #[test]
    fn the_data_plane_survives_arbitrary_messages(
        messages in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| (true, b)),
                any::<String>().prop_map(|s| (false, s.into_bytes())),
                Just((false, b"{\"type\":\"frames\",\"frames\":[{\"seq\":1}]}".to_vec())),
                Just((false, b"{\"type\":\"ack\",\"up_to\":18446744073709551615}".to_vec())),
            ],
            1..6,
        ),
        say_hello in any::<bool>(),
    ) {
        let h = harness();
        let outcome: TestResult = h.runtime.block_on(async {
            let mut request = data_url(&h.server.base).into_client_request()?;
            request.headers_mut().insert("authorization", format!("Bearer {}", h.agent).parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
            if say_hello {
                let hello = serde_json::json!({"type": "hello", "version": 1, "group_id": h.group,
                    "side": "a", "resume": {"rx_seq": 0}, "encodings": ["json"]});
                ws.send(WsMessage::Text(hello.to_string().into())).await?;
            }
            for (binary, bytes) in messages {
                let message = if binary {
                    WsMessage::Binary(bytes.into())
                } else {
                    WsMessage::Text(String::from_utf8_lossy(&bytes).into_owned().into())
                };
                if ws.send(message).await.is_err() {
                    break; // the server already closed: a refusal
                }
            }
            // Whatever the server answers must be protocol messages or a close; read briefly.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(300), async {
                while let Some(Ok(message)) = ws.next().await {
                    if let WsMessage::Text(text) = &message {
                        let value: serde_json::Value = serde_json::from_str(text)?;
                        if !value["type"].is_string() {
                            return Err::<(), Box<dyn std::error::Error + Send + Sync>>(
                                format!("not a protocol message: {text}").into(),
                            );
                        }
                    }
                }
                Ok(())
            })
            .await;
            let _ = ws.close(None).await;
            // The server still serves.
            let (status, _) = h.server.call(reqwest::Method::GET, "/healthz", None, None).await?;
            if !status.is_success() {
                return Err(format!("/healthz answered {status} after the connection").into());
            }
            Ok(())
        });
        prop_assert!(outcome.is_ok(), "{outcome:?}");
    }
}
