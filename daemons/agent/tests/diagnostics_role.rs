//! The diagnostics role against a loopback double of the server (REST announce + `/ws/data`
//! speaking the diagnostics channel) and the ECU simulator as a REMP dongle on UDP: hello and
//! welcome, commands to one ECU and functional ones, NRCs, timeouts, an unknown dongle, many
//! commands in parallel, and a reconnect with a fresh `diag_hello` after the server drops the
//! connection — to the second server of `server_url` (fail-over), the same double on a second
//! port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use can_io::transport::udp::RempUdp;
use can_io::uds::EcuAddress;
use can_io::uds::ecu::{EcuProfile, run_ecus};
use relay_core::protocol::diag::{
    CommandRequest, DiagMessage, DiagWelcome, decode_diag, encode_diag,
};
use serde_json::{Value, json};
use tether_agent::diagnostics::DiagCounters;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

const TOKEN: &str = "ta_diag_test";
const GUARD: Duration = Duration::from_secs(20);

/// can-io's two-ECU test vehicle (engine, and abs answering response-pending for 300 ms).
const PROFILE: &str = include_str!("../../../can-io/tests/fixtures/engine_abs.yaml");

/// One accepted WebSocket: what the agent sent, and a way to send to it.
struct Conn {
    /// The `Host` the agent connected to.
    host: String,
    hello: Vec<Uuid>,
    from_agent: mpsc::UnboundedReceiver<DiagMessage>,
    to_agent: mpsc::UnboundedSender<Option<DiagMessage>>,
}

#[derive(Clone)]
struct Double {
    /// serial → dongle id handed out.
    dongles: Arc<Mutex<HashMap<String, Uuid>>>,
    conns: mpsc::UnboundedSender<Conn>,
}

async fn announce(
    State(d): State<Double>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> impl IntoResponse {
    if headers.get("authorization").and_then(|h| h.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({}))).into_response();
    }
    let serial = body["serial"].as_str().unwrap().to_owned();
    let id = *d
        .dongles
        .lock()
        .unwrap()
        .entry(serial.clone())
        .or_insert_with(Uuid::new_v4);
    axum::Json(json!({"id": id.to_string(), "serial": serial})).into_response()
}

async fn ws_data(
    State(d): State<Double>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    assert_eq!(
        headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {TOKEN}")
    );
    let host = headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_owned())
        .unwrap_or_default();
    ws.on_upgrade(move |socket| serve_ws(d, host, socket))
}

async fn serve_ws(d: Double, host: String, mut socket: WebSocket) {
    let Some(Ok(Message::Text(t))) = socket.recv().await else {
        return;
    };
    let DiagMessage::DiagHello(hello) = decode_diag(t.as_bytes()).unwrap() else {
        panic!("the first message is diag_hello: {t}")
    };
    let known: Vec<Uuid> = d.dongles.lock().unwrap().values().copied().collect();
    let (ok, refused): (Vec<Uuid>, Vec<Uuid>) =
        hello.dongles.iter().partition(|id| known.contains(id));
    let welcome = DiagMessage::DiagWelcome(DiagWelcome {
        version: 1,
        dongles: ok,
        refused,
    });
    socket
        .send(Message::text(encode_diag(&welcome).unwrap()))
        .await
        .unwrap();
    let (from_tx, from_rx) = mpsc::unbounded_channel();
    let (to_tx, mut to_rx) = mpsc::unbounded_channel::<Option<DiagMessage>>();
    d.conns
        .send(Conn {
            host,
            hello: hello.dongles.clone(),
            from_agent: from_rx,
            to_agent: to_tx,
        })
        .unwrap();
    loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    let _ = from_tx.send(decode_diag(t.as_bytes()).unwrap());
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            out = to_rx.recv() => match out {
                Some(Some(m)) => socket.send(Message::text(encode_diag(&m).unwrap())).await.unwrap(),
                // `None`: drop the connection.
                _ => return,
            },
        }
    }
}

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// The ECUs of [`PROFILE`], as a vehicle's `ecus` list names them.
fn ecus() -> Vec<EcuAddress> {
    profile().addresses()
}

fn profile() -> EcuProfile {
    serde_norway::from_str(PROFILE).unwrap()
}

fn command(dongle: Uuid, name: &str, params: Value) -> CommandRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    CommandRequest {
        command_id: Uuid::new_v4(),
        dongle_id: dongle,
        command_name: name.into(),
        command_params: params,
        ecus: ecus(),
        attempt: 1,
        deadline_ms: now + 10_000,
    }
}

/// What the agent said about each command: responses (sequence, final, body) or the failure.
#[derive(Debug, Default)]
struct Outcome {
    in_progress: bool,
    responses: Vec<(u32, bool, Value)>,
    failed: Option<String>,
}

impl Outcome {
    fn done(&self) -> bool {
        self.failed.is_some() || self.responses.last().is_some_and(|r| r.1)
    }
}

/// Read from the agent until every id in `ids` is done.
async fn collect(conn: &mut Conn, ids: &[Uuid]) -> HashMap<Uuid, Outcome> {
    let mut out: HashMap<Uuid, Outcome> = ids.iter().map(|i| (*i, Outcome::default())).collect();
    while !out.values().all(Outcome::done) {
        let m = tokio::time::timeout(GUARD, conn.from_agent.recv())
            .await
            .expect("the agent answers in time")
            .expect("connection open");
        match m {
            DiagMessage::CommandStatus(s) => out.get_mut(&s.command_id).unwrap().in_progress = true,
            DiagMessage::CommandResponse(r) => {
                let o = out.get_mut(&r.command_id).unwrap();
                assert!(o.in_progress, "in_progress comes first");
                o.responses
                    .push((r.sequence_number, r.is_final, r.response));
            }
            DiagMessage::CommandFailed(f) => {
                out.get_mut(&f.command_id).unwrap().failed = Some(f.error)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

async fn run_one(conn: &mut Conn, c: CommandRequest) -> Outcome {
    let id = c.command_id;
    conn.to_agent.send(Some(DiagMessage::Command(c))).unwrap();
    collect(conn, &[id]).await.remove(&id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_runs_commands_on_a_remp_bus_and_reconnects() {
    let (conn_tx, mut conns) = mpsc::unbounded_channel();
    let double = Double {
        dongles: Arc::new(Mutex::new(HashMap::new())),
        conns: conn_tx,
    };
    let app = Router::new()
        .route("/api/v1/agent/dongles", post(announce))
        .route("/ws/data", get(ws_data))
        .with_state(double.clone());
    let mut servers = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(listener.local_addr().unwrap());
        let app = app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    let (server, second) = (servers[0], servers[1]);

    let bus_addr = free_udp_port();
    let yaml = format!(
        "server_url: http://{server},http://{second}\ntoken: {TOKEN}\ndiagnostics:\n  buses:\n    - {{serial: VEH-0001, bus: 'udp://{bus_addr}'}}\n  p2: 0.3\n  p2_star: 3\n  reconnect_min: 0.05\n  reconnect_max: 0.2\n"
    );
    let config = tether_agent::config::parse(&yaml, &|_| None, &[]).unwrap();
    let role = config.diagnostics_role().unwrap().unwrap();
    let counters = Arc::new(DiagCounters::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(tether_agent::diagnostics::run_with_counters(
        role,
        counters.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let mut conn = tokio::time::timeout(GUARD, conns.recv())
        .await
        .unwrap()
        .unwrap();
    let dongle = double.dongles.lock().unwrap()["VEH-0001"];
    assert_eq!(conn.hello, [dongle]);
    assert_eq!(conn.host, server.to_string());

    // The ECUs, as a REMP dongle sending to the agent's bus address.
    let profile = profile();
    let ecu_bus = RempUdp::dongle(bus_addr, "ECU-SIM").await.unwrap();
    let (ecu_stop_tx, ecu_stop_rx) = oneshot::channel::<()>();
    let ecus_task = tokio::spawn(async move {
        run_ecus(ecu_bus, &profile, async {
            let _ = ecu_stop_rx.await;
        })
        .await
        .unwrap()
    });
    // Let the hello reach the agent before the first request goes out.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let o = run_one(
        &mut conn,
        command(dongle, "ReadDTC", json!({"ecu": "engine"})),
    )
    .await;
    let seq: Vec<(u32, bool)> = o.responses.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(seq, [(1, true)]);
    let got = &o.responses[0].2;
    assert_eq!(got.as_object().unwrap().len(), 2, "{got}");
    assert_eq!(got["ecu"], "engine");
    assert_eq!(
        got["dtcs"][0],
        json!({"dtcCode": "P0420", "ftb": 0, "status": 47,
               "description": "Catalyst System Efficiency Below Threshold"})
    );
    let codes: Vec<&str> = got["dtcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dtcCode"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["P0420", "U0100", "P0300", "P0171", "P1234"]);

    let o = run_one(
        &mut conn,
        command(
            dongle,
            "ReadDataByID",
            json!({"ecu": "engine", "did": 0x1234}),
        ),
    )
    .await;
    assert_eq!(o.failed.as_deref(), Some("requestOutOfRange"));
    assert!(o.responses.is_empty());

    // Functional: both ECUs (abs after response-pending), the last final.
    let o = run_one(&mut conn, command(dongle, "ReadDTC", json!({}))).await;
    let seq: Vec<(u32, bool)> = o.responses.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(seq, [(1, false), (2, true)]);
    assert_eq!(o.responses[1].2["ecu"], "abs");

    let o = run_one(
        &mut conn,
        command(dongle, "ReadDTC", json!({"ecuAddress": 0x7E5})),
    )
    .await;
    assert_eq!(o.failed.as_deref(), Some("timeout"));
    let o = run_one(&mut conn, command(Uuid::new_v4(), "ReadDTC", json!({}))).await;
    assert!(o.failed.unwrap().starts_with("bus_error: "));
    let o = run_one(
        &mut conn,
        command(dongle, "ReadDTC", json!({"ecu": "gearbox"})),
    )
    .await;
    assert!(o.failed.unwrap().starts_with("unknown_ecu: gearbox"));
    let o = run_one(&mut conn, command(dongle, "Launch", json!({}))).await;
    assert!(o.failed.unwrap().starts_with("invalid_command: "));

    // Many at once, over both ECUs: each completes, one at a time per ECU.
    let mut ids = Vec::new();
    for i in 0..20 {
        let ecu = if i % 2 == 0 { "engine" } else { "abs" };
        let c = if i % 3 == 0 {
            command(dongle, "TesterPresent", json!({"ecu": ecu}))
        } else {
            command(dongle, "ReadDTC", json!({"ecu": ecu}))
        };
        ids.push(c.command_id);
        conn.to_agent.send(Some(DiagMessage::Command(c))).unwrap();
    }
    let all = collect(&mut conn, &ids).await;
    for (id, o) in &all {
        assert!(o.failed.is_none(), "{id}: {o:?}");
        assert_eq!(o.responses.len(), 1);
    }

    // The server drops the connection: the agent comes back with a new diag_hello, at the
    // next server of its list.
    conn.to_agent.send(None).unwrap();
    let mut conn = tokio::time::timeout(GUARD, conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.hello, [dongle]);
    assert_eq!(conn.host, second.to_string());
    let o = run_one(
        &mut conn,
        command(
            dongle,
            "ReadDataByID",
            json!({"ecu": "engine", "did": [0xF190]}),
        ),
    )
    .await;
    assert_eq!(o.responses[0].2["values"][0]["ascii"], "1HGCM82633A004352");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(GUARD, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    ecu_stop_tx.send(()).unwrap();
    let sim = ecus_task.await.unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.commands.load(Relaxed), 28);
    assert_eq!(counters.completed.load(Relaxed), 23);
    assert_eq!(counters.failed.load(Relaxed), 5);
    assert_eq!(counters.undelivered.load(Relaxed), 0);
    let engine = sim.responders().next().unwrap().stats();
    assert!(engine.requests >= 12, "{engine:?}");
}
