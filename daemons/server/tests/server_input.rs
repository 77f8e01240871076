//! Bad input on every endpoint: a clear JSON error, nothing stored, and the server keeps
//! serving.

mod server_support;

use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, assert_error_shape, code, read};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts of the user's agents, dongles and groups.
async fn counts(srv: &TestServer, token: &str) -> TestResult<[usize; 3]> {
    let mut out = [0; 3];
    for (i, (path, key)) in [
        ("/api/v1/agents", "agents"),
        ("/api/v1/dongles", "dongles"),
        ("/api/v1/groups", "groups"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = srv.get(path, token).await?;
        assert_eq!(status, StatusCode::OK);
        out[i] = body[key].as_array().map_or(usize::MAX, Vec::len);
    }
    Ok(out)
}

/// Sends raw bytes with a content type and returns status and JSON body.
async fn raw(
    srv: &TestServer,
    path: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> TestResult<(StatusCode, Value)> {
    let response = srv
        .client
        .post(format!("{}{path}", srv.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await?;
    read(response).await
}

#[tokio::test]
async fn malformed_bodies_get_json_errors_and_store_nothing() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, agent, a, b) = srv.user_with_pair("alice").await?;
    let before = counts(&srv, &alice).await?;
    let good_group = json!({ "name": "g", "dongle_a": a, "dongle_b": b }).to_string();
    let endpoints = [
        (
            "/api/v1/agents",
            alice.as_str(),
            r#"{"name":"ok"}"#.to_owned(),
        ),
        (
            "/api/v1/agent/dongles",
            agent.as_str(),
            r#"{"serial":"OK-1"}"#.to_owned(),
        ),
        ("/api/v1/groups", alice.as_str(), good_group),
    ];
    let json_type = "application/json";
    for (path, token, _) in &endpoints {
        let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
            (
                json_type,
                br#"{"na"#.to_vec(),
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                json_type,
                b"not json".to_vec(),
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                json_type,
                vec![0xff, 0xfe, 0x00],
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                json_type,
                b"".to_vec(),
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                json_type,
                br#"{"name":5,"serial":5,"dongle_a":5,"dongle_b":5}"#.to_vec(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                json_type,
                b"{}".to_vec(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                json_type,
                b"[]".to_vec(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                json_type,
                b"null".to_vec(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                json_type,
                br#"{"name":"x","serial":"x","extra":1}"#.to_vec(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                "text/plain",
                br#"{"name":"x"}"#.to_vec(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
        ];
        for (content_type, body, status, expected) in cases {
            let shown = String::from_utf8_lossy(&body).into_owned();
            let (got, answer) = raw(&srv, path, token, content_type, body).await?;
            assert_eq!(
                (got, code(&answer)),
                (status, expected),
                "{path} {content_type} {shown}: {answer}"
            );
        }
        // A body over the 64 KiB limit.
        let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(100 * 1024)).into_bytes();
        let (got, answer) = raw(&srv, path, token, json_type, huge).await?;
        assert_eq!(
            (got, code(&answer)),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            "{path}"
        );
    }
    // Values that parse but are refused.
    for (path, token, body) in [
        ("/api/v1/agents", alice.as_str(), json!({ "name": "" })),
        (
            "/api/v1/agents",
            alice.as_str(),
            json!({ "name": "a\u{7}b" }),
        ),
        (
            "/api/v1/agent/dongles",
            agent.as_str(),
            json!({ "serial": "" }),
        ),
        (
            "/api/v1/agent/dongles",
            agent.as_str(),
            json!({ "serial": "has space" }),
        ),
        (
            "/api/v1/agent/dongles",
            agent.as_str(),
            json!({ "serial": "x".repeat(65) }),
        ),
    ] {
        let (status, answer) = srv.post(path, token, body.clone()).await?;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            "{body}"
        );
    }
    assert_eq!(counts(&srv, &alice).await?, before, "nothing stored");
    // And the well-formed requests still work afterwards.
    for (path, token, body) in &endpoints {
        let (status, answer) = raw(&srv, path, token, json_type, body.clone().into_bytes()).await?;
        assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
    }
    srv.stop().await
}

#[tokio::test]
async fn chunked_oversized_body_is_refused_with_json() -> TestResult {
    let srv = TestServer::start().await?;
    let token = srv.user_token("alice").await?;
    // No Content-Length: the limit must trip while reading the stream.
    let mut stream = tokio::net::TcpStream::connect(srv.server.local_addr()).await?;
    let head = format!(
        "POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b'x'; 8192];
    let mut write_failed = false;
    for _ in 0..20 {
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&frame).await.is_err() {
            // The server may answer and close before we finish: that is the point.
            write_failed = true;
            break;
        }
    }
    if !write_failed {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert_eq!(counts(&srv, &token).await?, [0, 0, 0]);
    srv.stop().await
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_ids_are_json_errors() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, _, a, b) = srv.user_with_pair("alice").await?;
    let group_id = srv.group(&alice, &a, &b).await?;
    // `GET /` is the web page (server_webui.rs); everything unknown around it is a JSON 404.
    let not_found = vec![
        (Method::GET, "/nope".to_owned()),
        (Method::GET, "/api/v2/agents".to_owned()),
        (Method::POST, "/api/v1/agents/extra/segments".to_owned()),
        (Method::GET, "/api/v1/groups/not-a-uuid".to_owned()),
        (Method::GET, format!("/api/v1/groups/{}", "9".repeat(4000))),
        (Method::GET, "/api/v1/dongles/%FF%FE".to_owned()),
        (Method::POST, "/api/v1/groups/123/activate".to_owned()),
    ];
    let wrong_method = vec![
        (Method::PUT, "/api/v1/agents".to_owned()),
        (Method::PATCH, format!("/api/v1/groups/{group_id}")),
        (Method::GET, format!("/api/v1/groups/{group_id}/activate")),
        (Method::DELETE, format!("/api/v1/dongles/{a}")),
        (Method::POST, "/healthz".to_owned()),
        (Method::GET, "/api/v1/agent/dongles".to_owned()),
    ];
    let expected = [
        (StatusCode::NOT_FOUND, "not_found", not_found),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            wrong_method,
        ),
    ];
    for (want_status, want_code, requests) in expected {
        for (method, path) in requests {
            let (status, body) = srv.call(method.clone(), &path, Some(&alice), None).await?;
            assert_eq!(
                (status, code(&body)),
                (want_status, want_code),
                "{method} {path}"
            );
        }
    }
    // A non-ASCII Authorization header is a 401, not a crash.
    let response = srv
        .client
        .get(format!("{}/api/v1/agents", srv.base))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe")?,
        )
        .send()
        .await?;
    let (status, _) = read(response).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = srv.call(Method::GET, "/healthz", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    srv.stop().await
}

#[tokio::test]
async fn random_bodies_never_break_the_server() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, agent, _, _) = srv.user_with_pair("alice").await?;
    let before = counts(&srv, &alice).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e7e);
    let pieces: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"name\"",
        b"\"serial\"",
        b":",
        b",",
        b"\"\\u0000\"",
        b"1e999",
        b"-",
        b"\"dongle_a\"",
    ];
    for i in 0..150 {
        let mut body = Vec::new();
        for _ in 0..rng.random_range(0..24) {
            if rng.random_bool(0.2) {
                body.push(rng.random());
            } else {
                body.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
        }
        let (path, token) = match i % 3 {
            0 => ("/api/v1/agents", alice.as_str()),
            1 => ("/api/v1/agent/dongles", agent.as_str()),
            _ => ("/api/v1/groups", alice.as_str()),
        };
        let (status, answer) = raw(&srv, path, token, "application/json", body).await?;
        if status.is_success() {
            // Random input that happens to be valid is fine, but must then be well-formed.
            assert!(answer.is_object());
        } else {
            assert!(status.is_client_error(), "{status} {answer}");
            assert_error_shape(&answer)?;
        }
    }
    let after = counts(&srv, &alice).await?;
    assert!(after[2] == before[2], "no group can come from random bytes");
    let (status, _) = srv.call(Method::GET, "/healthz", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    srv.stop().await
}

#[tokio::test]
async fn silent_connections_are_closed_and_the_server_keeps_serving() -> TestResult {
    let srv = TestServer::start_with(|c| c.header_read_timeout = std::time::Duration::from_secs(1))
        .await?;
    // An incomplete request head, then silence.
    let mut stream = tokio::net::TcpStream::connect(srv.server.local_addr()).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut answer = Vec::new();
    // The bound only keeps a broken server from hanging the test; it is not what is tested.
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the server never closed the silent connection"
    );
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    let (status, _) = srv.call(Method::GET, "/healthz", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    srv.stop().await
}
