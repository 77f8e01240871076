//! The edges of the HTTP stack: answers hyper writes itself carry the JSON error body, bodies
//! must be JSON objects, and a record reads the same in the answer that created it and later.

mod server_support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, code, text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `request` on a fresh connection and reads the answer until the server closes.
async fn raw_exchange(srv: &TestServer, request: &[u8]) -> TestResult<(u16, String, Value)> {
    let mut stream = tokio::net::TcpStream::connect(srv.server.local_addr()).await?;
    // The server may answer (and close) before it read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .map_err(|_| "the server did not close the connection")??;
    let answer = String::from_utf8(answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {answer:?}"))?;
    let status: u16 = head
        .get(9..12)
        .ok_or("short status line")?
        .parse()
        .map_err(|_| format!("bad status line in {head:?}"))?;
    let body: Value = serde_json::from_str(body)
        .map_err(|e| format!("{status}: body is not JSON ({e}): {body:?}"))?;
    Ok((status, head.to_ascii_lowercase(), body))
}

#[tokio::test]
async fn errors_hyper_writes_itself_have_json_bodies() -> TestResult {
    let srv = TestServer::start().await?;
    let long_uri = format!(
        "GET /api/v1/agents?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let mut huge_headers = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        huge_headers.push_str(&format!("x-filler-{i}: {}\r\n", "b".repeat(5_000)));
    }
    huge_headers.push_str("\r\n");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (long_uri.into_bytes(), 414, "uri_too_long"),
        (huge_headers.into_bytes(), 431, "headers_too_large"),
        (b"BLAH\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                .to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (request, status, expected) in cases {
        let shown = String::from_utf8_lossy(&request[..request.len().min(40)]).into_owned();
        let (got, head, body) = raw_exchange(&srv, &request).await?;
        assert_eq!(got, status, "{shown}: {body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(code(&body), expected, "{shown}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // The server still serves.
    let (status, _) = srv
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    srv.stop().await
}

#[tokio::test]
async fn bodies_must_be_objects_and_messages_name_no_rust_types() -> TestResult {
    let srv = TestServer::start().await?;
    let alice = srv.user_token("alice").await?;
    let (_, agents) = srv.get("/api/v1/agents", &alice).await?;
    for body in [json!(["x"]), json!(["x", "y", "z"]), json!("x"), json!(5)] {
        let (status, answer) = srv.post("/api/v1/agents", &alice, body.clone()).await?;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("must be a JSON object"), "{message}");
    }
    let (status, answer) = srv
        .post("/api/v1/agents", &alice, json!({ "name": 5 }))
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    for internal in ["struct", "CreateAgent", "usize", "element"] {
        assert!(!message.contains(internal), "{message}");
    }
    assert_eq!(
        srv.get("/api/v1/agents", &alice).await?.1,
        agents,
        "nothing stored"
    );
    srv.stop().await
}

#[tokio::test]
async fn a_record_reads_the_same_when_created_and_later() -> TestResult {
    let srv = TestServer::start().await?;
    let alice = srv.user_token("alice").await?;
    let (status, created) = srv
        .post("/api/v1/agents", &alice, json!({ "name": "car" }))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = text(&created["agent"], "id").or_else(|_| text(&created, "id"))?;
    let (_, read) = srv.get(&format!("/api/v1/agents/{id}"), &alice).await?;
    let created_at = created
        .pointer("/agent/created_at")
        .or_else(|| created.get("created_at"))
        .cloned()
        .unwrap_or_default();
    let read_at = read
        .pointer("/agent/created_at")
        .or_else(|| read.get("created_at"))
        .cloned()
        .unwrap_or_default();
    assert!(created_at.is_string(), "{created}");
    assert_eq!(created_at, read_at);
    // Three fraction digits, UTC.
    let text_at = created_at.as_str().unwrap_or_default();
    let fraction = text_at.rsplit_once('.').map(|(_, f)| f).unwrap_or_default();
    assert_eq!(fraction.len(), 4, "{text_at}");
    assert!(fraction.ends_with('Z'), "{text_at}");
    srv.stop().await
}
