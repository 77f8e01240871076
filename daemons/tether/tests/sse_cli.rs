//! `tether sse parse` and `tether sse tail` against a real SSE server on loopback (axum serving
//! `sse-core`'s hub and encoder).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use sse_core::encoder::{BodyOptions, RESPONSE_HEADERS, event_stream_body};
use sse_core::{EventBackend, MemoryBackend, StreamConfig, SystemClock};
use tokio::io::AsyncWriteExt;

const KEY: &str = "dongle:cli";
const GUARD: Duration = Duration::from_secs(30);

struct AppState {
    hub: MemoryBackend,
    /// (Last-Event-ID, X-Test) of every request, in order.
    requests: Mutex<Vec<(Option<String>, Option<String>)>>,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Serves the hub stream, but ends each response after two items so the client must reconnect.
async fn events(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let last = header(&headers, "last-event-id");
    state
        .requests
        .lock()
        .expect("lock")
        .push((last.clone(), header(&headers, "x-test")));
    let sub = state
        .hub
        .subscribe(KEY, last.as_deref())
        .await
        .expect("subscribe");
    let body = event_stream_body(
        sub.take(2),
        BodyOptions {
            keep_alive: Duration::from_secs(15),
            retry_ms: Some(50),
        },
    );
    let mut response = Response::new(Body::from_stream(
        body.map(Ok::<_, std::convert::Infallible>),
    ));
    for (name, value) in RESPONSE_HEADERS {
        response
            .headers_mut()
            .insert(name, value.parse().expect("static header"));
    }
    response
}

async fn down(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state.requests.lock().expect("lock").push((None, None));
    (StatusCode::SERVICE_UNAVAILABLE, "down")
}

async fn start_server() -> (Arc<AppState>, String) {
    let state = Arc::new(AppState {
        hub: MemoryBackend::new(Arc::new(SystemClock), StreamConfig::default()),
        requests: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/events", get(events))
        .route("/down", get(down))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (state, format!("http://{addr}"))
}

async fn tether(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tether");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .expect("tether finished")
        .expect("output")
}

/// `tether sse tail {base}/events --last-event-id ID --max-events N` with `extra` arguments,
/// which must succeed.
async fn tail_events(
    base: &str,
    last_event_id: &str,
    max_events: u64,
    extra: &[&str],
) -> std::process::Output {
    let url = format!("{base}/events");
    let max_events = max_events.to_string();
    let mut args = vec![
        "sse",
        "tail",
        &url,
        "--last-event-id",
        last_event_id,
        "--max-events",
        &max_events,
    ];
    args.extend_from_slice(extra);
    let out = tether(&args, b"").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[tokio::test]
async fn parse_prints_events_and_retry_in_stream_order() {
    let input = b"\xEF\xBB\xBFretry: 1500\nevent: log\ndata: a\r\ndata: b\nid: 7-0\n\n: comment\ndata:x\n\nid\ndata: y\n\nretry: +9\ndata: unfinished";
    let out = tether(&["sse", "parse"], input).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&out.stdout),
        vec![
            serde_json::json!({"retry": 1500}),
            serde_json::json!({"event": "log", "data": "a\nb", "id": "7-0"}),
            serde_json::json!({"event": "message", "data": "x", "id": "7-0"}),
            serde_json::json!({"event": "message", "data": "y", "id": ""}),
        ]
    );
    // Field order is part of the format.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#"{"event":"log","data":"a\nb","id":"7-0"}"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_reconnects_with_last_event_id_and_honours_retry() {
    let (state, base) = start_server().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            state
                .hub
                .publish_now(KEY, "log", &format!("{{\"n\":{i}}}"))
                .expect("publish")
                .to_string(),
        );
    }
    let out = tail_events(&base, &ids[0], 4, &["--header", "X-Test: yes"]).await;
    let got = lines(&out.stdout);
    let events: Vec<_> = got
        .iter()
        .filter(|v| v.get("event").is_some())
        .cloned()
        .collect();
    let expected: Vec<_> = (1..5)
        .map(
            |i| serde_json::json!({"event": "log", "data": format!("{{\"n\":{i}}}"), "id": ids[i]}),
        )
        .collect();
    assert_eq!(events, expected);
    assert!(got.contains(&serde_json::json!({"retry": 50})));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reconnecting in 50 ms"),
        "retry honoured: {stderr}"
    );
    let requests = state.requests.lock().expect("lock").clone();
    assert_eq!(
        requests,
        vec![
            (Some(ids[0].clone()), Some("yes".to_owned())),
            (Some(ids[2].clone()), Some("yes".to_owned()))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_stream_reset_for_an_unknown_id() {
    let (state, base) = start_server().await;
    let first = state
        .hub
        .publish_now(KEY, "log", "{}")
        .expect("publish")
        .to_string();
    let out = tail_events(&base, "not-an-id", 2, &[]).await;
    let events: Vec<_> = lines(&out.stdout)
        .into_iter()
        .filter(|v| v.get("event").is_some())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "stream_reset");
    let reset: serde_json::Value =
        serde_json::from_str(events[0]["data"].as_str().expect("data")).expect("reset json");
    assert_eq!(reset["reason"], "malformed");
    assert_eq!(reset["requested"], "not-an-id");
    assert_eq!(events[1]["id"], first.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_gives_up_on_a_non_200_status_without_reconnecting() {
    let (state, base) = start_server().await;
    let out = tether(&["sse", "tail", &format!("{base}/down")], b"").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    assert_eq!(state.requests.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn tail_refuses_a_malformed_header() {
    let out = tether(
        &[
            "sse",
            "tail",
            "http://127.0.0.1:9/x",
            "--header",
            "no colon here",
        ],
        b"",
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not of the form"));
}
