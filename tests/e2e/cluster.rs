//! Several `tether server` processes on one Redis and one records store — a fresh PostgreSQL
//! database (one test uses a shared SQLite data directory instead) — (`docs/cluster.md`):
//! the two sides of a group on different instances relay both ways in order; `kill -9` of an
//! instance mid-stream and its side failing over to another instance loses and duplicates
//! nothing, with the group's mode and backlog right on every instance; a stalled instance whose
//! side moved on appends late without effect; Redis restarted mid-stream loses nothing
//! acknowledged; a console resumes on one instance with an event ID another one served.
//!
//! The sides are protocol clients with the dongle agent's semantics (resend from `tx_acked + 1`
//! of the welcome, resume delivery after the last seq processed, drop what was already
//! processed, try the next server URL on a lost connection). Needs `REDIS_URL`; the Redis
//! restart test starts a `redis-server` of its own on a free port.

mod support;

#[path = "../../daemons/server/tests/commands_support/fake_agent.rs"]
#[allow(dead_code, unreachable_pub)]
mod fake_agent;

#[path = "../../daemons/server/tests/server_support/data_client.rs"]
mod data_client;

use std::process::Command;
use std::time::{Duration, Instant};

use data_client::{DataClient, batch, seq_of};
use fake_agent::FakeAgent;
use relay_core::engine::Side;
use relay_core::protocol::diag::{AgentCommandStatus, CommandStatusUpdate, DiagMessage};
use relay_core::protocol::{Encoding, Message};
use reqwest::StatusCode;
use serde_json::Value;
use support::{
    Api, ServerOptions, ServerProc, TestResult, Workspace, eventually, redis_url, require_redis,
    signal, text,
};
use tether_testkit::postgres::TestDatabase;
use tether_testkit::redis::OwnRedis;
use uuid::Uuid;

/// How long a whole scenario may take before it fails.
const SCENARIO: Duration = Duration::from_secs(90);

/// Frames per batch and most frames in flight unacknowledged, as an agent sends them.
const BATCH: u64 = 50;
const WINDOW: u64 = 1000;

/// Redis (required), a workspace, a fresh PostgreSQL database and `n` instances on them.
async fn postgres_cluster(n: usize) -> TestResult<(Workspace, TestDatabase, Vec<ServerProc>)> {
    let redis = redis_url();
    require_redis(&redis).await?;
    let ws = Workspace::new()?;
    let db = TestDatabase::create().ok_or("PostgreSQL is unreachable")?;
    let servers = cluster(&ws, n, &redis, Some(&db)).await?;
    Ok((ws, db, servers))
}

/// N instances sharing `redis` and the records: the PostgreSQL database `db`, or else one
/// SQLite data directory.
async fn cluster(
    ws: &Workspace,
    n: usize,
    redis: &str,
    db: Option<&TestDatabase>,
) -> TestResult<Vec<ServerProc>> {
    let data = ws.path("records");
    let mut servers = Vec::new();
    for i in 1..=n {
        let extra_config = db
            .map(|db| format!("database_url: \"{}\"\n", db.url))
            .unwrap_or_default();
        let options = ServerOptions {
            redis_url: Some(redis.to_owned()),
            extra_config,
            ..ServerOptions::default()
        };
        servers.push(ServerProc::start_named(ws, &format!("instance-{i}"), &data, options).await?);
    }
    Ok(servers)
}

/// A user, two agents with a dongle each, and an active group between the dongles.
struct Setup {
    user: String,
    group: String,
    token_a: String,
    token_b: String,
    dongle_a: String,
}

async fn setup(server: &ServerProc, user: &str, db: Option<&TestDatabase>) -> TestResult<Setup> {
    let api = server.api();
    let user_token = match db {
        None => server.user_token(user)?,
        // The operator's CLI, against the database.
        Some(db) => {
            let out = Command::new(env!("CARGO_BIN_EXE_tether"))
                .args([
                    "server",
                    "token",
                    "create",
                    "--user",
                    user,
                    "--database-url",
                    &db.url,
                ])
                .env_remove("REDIS_URL")
                .output()?;
            if !out.status.success() {
                return Err(
                    format!("token create: {}", String::from_utf8_lossy(&out.stderr)).into(),
                );
            }
            String::from_utf8(out.stdout)?.trim().to_owned()
        }
    };
    let (_, token_a) = api.create_agent(&user_token, &format!("{user}-a")).await?;
    let (_, token_b) = api.create_agent(&user_token, &format!("{user}-b")).await?;
    let a = api.announce_dongle(&token_a, &format!("{user}-A")).await?;
    let b = api.announce_dongle(&token_b, &format!("{user}-B")).await?;
    let group = api.active_group(&user_token, user, &a, &b).await?;
    Ok(Setup {
        user: user_token,
        group,
        token_a,
        token_b,
        dongle_a: a,
    })
}

impl Setup {
    /// Side A connected through `urls_a` (in order), side B through `urls_b`.
    async fn peers(&self, urls_a: Vec<String>, urls_b: Vec<String>) -> TestResult<(Peer, Peer)> {
        let a = Peer::open("A", Side::A, &self.token_a, &self.group, urls_a).await?;
        let b = Peer::open("B", Side::B, &self.token_b, &self.group, urls_b).await?;
        Ok((a, b))
    }
}

/// One side of the group, with the agent's delivery semantics.
struct Peer {
    name: &'static str,
    side: Side,
    token: String,
    group: String,
    /// The server URLs it tries, in order (the agent's `server_url` list).
    urls: Vec<String>,
    client: Option<DataClient>,
    /// Index in `urls` of the server it is connected to (or tries next).
    at: usize,
    /// Next seq to send; highest seq acknowledged by the server.
    next: u64,
    acked: u64,
    /// Seqs processed, in order (each once).
    received: Vec<u64>,
    /// Seqs delivered again on a later connection (dropped, as the agent drops them).
    redelivered: u64,
    /// Connections opened after the first.
    reconnects: usize,
}

impl Peer {
    async fn open(
        name: &'static str,
        side: Side,
        token: &str,
        group: &str,
        urls: Vec<String>,
    ) -> TestResult<Peer> {
        let mut peer = Peer {
            name,
            side,
            token: token.to_owned(),
            group: group.to_owned(),
            urls,
            client: None,
            at: 0,
            next: 1,
            acked: 0,
            received: Vec::new(),
            redelivered: 0,
            reconnects: 0,
        };
        peer.connect().await?;
        peer.reconnects = 0;
        Ok(peer)
    }

    fn covered(&self) -> u64 {
        self.received.last().copied().unwrap_or(0)
    }

    /// Connects to `urls[at]`, else the next ones in turn, with backoff.
    async fn connect(&mut self) -> TestResult {
        self.client = None;
        let deadline = Instant::now() + SCENARIO;
        let mut wait = Duration::from_millis(100);
        loop {
            let base = self.urls[self.at % self.urls.len()].clone();
            let opened = DataClient::open(
                &base,
                &self.token,
                &self.group,
                self.side,
                self.covered(),
                &[Encoding::Msgpack],
            )
            .await;
            match opened {
                Ok((client, welcome)) => {
                    // Whatever server answers, what was acknowledged is still stored.
                    if welcome.tx_acked < self.acked {
                        return Err(format!(
                            "{}: {base} holds {} of the {} frames acknowledged: acknowledged frames lost",
                            self.name, welcome.tx_acked, self.acked
                        )
                        .into());
                    }
                    // Resend everything the server does not hold durably.
                    self.next = welcome.tx_acked + 1;
                    self.acked = welcome.tx_acked;
                    self.client = Some(client);
                    self.reconnects += 1;
                    return Ok(());
                }
                Err(err) if Instant::now() < deadline => {
                    eprintln!("{}: {base} refused ({err}); trying the next", self.name);
                    self.at = (self.at + 1) % self.urls.len();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends one batch (up to `last`) if the window allows, then handles what arrives within a
    /// few milliseconds. `Ok(false)`: the connection is gone.
    async fn step(&mut self, last: u64) -> TestResult<bool> {
        let Some(client) = self.client.as_mut() else {
            return Ok(true);
        };
        if self.next <= last && self.next - 1 - self.acked < WINDOW {
            let end = (self.next + BATCH - 1).min(last);
            if client.send(&batch(self.next, end)).await.is_err() {
                return Ok(false);
            }
            self.next = end + 1;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
        loop {
            let message = match tokio::time::timeout_at(deadline, client.recv()).await {
                Err(_) => return Ok(true),
                Ok(Err(_) | Ok(None)) => return Ok(false),
                Ok(Ok(Some(message))) => message,
            };
            match message {
                Message::Frames(frames) => {
                    let mut seen = self.received.last().copied().unwrap_or(0);
                    for (offset, frame) in frames.frames.iter().enumerate() {
                        let seq = frames.first_seq + offset as u64;
                        if seq_of(frame) != seq {
                            return Err(format!(
                                "{}: frame {seq} carries {}",
                                self.name,
                                seq_of(frame)
                            )
                            .into());
                        }
                        if seq <= seen {
                            self.redelivered += 1;
                            continue;
                        }
                        if seq != seen + 1 {
                            return Err(format!(
                                "{}: got seq {seq} after {seen}: a hole",
                                self.name
                            )
                            .into());
                        }
                        self.received.push(seq);
                        seen = seq;
                    }
                    if client.ack(seen).await.is_err() {
                        return Ok(false);
                    }
                }
                Message::Ack(ack) => self.acked = self.acked.max(ack.up_to),
                Message::Gap(gap) => {
                    return Err(format!("{}: unexpected gap {gap:?}", self.name).into());
                }
                Message::Error(err) => eprintln!("{}: server error {err:?}", self.name),
                _ => {}
            }
        }
    }

    fn done(&self, last: u64) -> bool {
        self.acked >= last && self.covered() >= last
    }

    fn progress(&self) -> String {
        format!(
            "{} acked {} received {}",
            self.name,
            self.acked,
            self.covered()
        )
    }
}

/// Steps the connected peers (each sending up to `last`) until `stop` holds; a peer whose
/// connection is lost fails over to its next URL.
async fn run(
    peers: &mut [&mut Peer],
    last: u64,
    stop: impl Fn(&[&mut Peer]) -> bool,
) -> TestResult {
    let deadline = Instant::now() + SCENARIO;
    while !stop(peers) {
        if Instant::now() > deadline {
            let state: Vec<String> = peers.iter().map(|p| p.progress()).collect();
            return Err(format!("stream stalled: {}", state.join(", ")).into());
        }
        for peer in peers.iter_mut() {
            if !peer.step(last).await? {
                eprintln!("{}: connection lost; failing over", peer.progress());
                peer.at = (peer.at + 1) % peer.urls.len();
                peer.connect().await?;
            }
        }
    }
    Ok(())
}

/// Checks one direction's record: every seq `1..=last` exactly once, in order.
fn check_record(peer: &Peer, last: u64) -> TestResult {
    let want: Vec<u64> = (1..=last).collect();
    if peer.received != want {
        let missing = want.iter().filter(|s| !peer.received.contains(s)).count();
        return Err(format!(
            "{} received {} frames, want {last} ({missing} missing)",
            peer.name,
            peer.received.len()
        )
        .into());
    }
    Ok(())
}

/// The group as each of `servers` shows it, once `check` accepts it there (waited for on one
/// instance after the other).
async fn wait_group(
    servers: &[ServerProc],
    setup: &Setup,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> TestResult<Vec<Value>> {
    let mut seen = Vec::with_capacity(servers.len());
    for server in servers {
        let api = server.api();
        let group = eventually(Duration::from_secs(20), what, || async {
            api.group(&setup.user, &setup.group).await.filter(&check)
        })
        .await?;
        seen.push(group);
    }
    Ok(seen)
}

fn active_no_backlog(group: &Value) -> bool {
    group["mode"] == "active" && group["backlog"]["a_to_b"] == 0 && group["backlog"]["b_to_a"] == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sides_on_two_instances_relay_and_fail_over_after_kill_9() -> TestResult {
    let (ws, db, mut servers) = postgres_cluster(3).await?;
    let outcome = async {
        let base = |i: usize| servers[i].base.clone();
        let setup = setup(&servers[0], "kim", Some(&db)).await?;
        // A on instance 1 (then 3, as an agent with `server_url: [s1, s3]`), B on instance 2.
        let (mut a, mut b) = setup.peers(vec![base(0), base(2)], vec![base(1)]).await?;
        wait_group(
            &servers,
            &setup,
            "active on every instance",
            active_no_backlog,
        )
        .await?;
        let last = 6000;
        // Both ways, in order, across instances, until a third is through.
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].covered() >= last / 3 && p[1].covered() >= last / 3
        })
        .await?;
        let a_before = a.covered();
        servers[0].kill9();
        // A is away while B goes on: instance 1's presence expires, every instance shows the
        // group degraded with A offline, and instance 2 (B's) counts B's frames waiting for A.
        a.client = None;
        let b_target = b.acked + 500;
        run(&mut [&mut b], last, |p| p[0].acked >= b_target).await?;
        wait_group(&servers[1..], &setup, "degraded with A offline", |g| {
            g["mode"] == "degraded" && g["offline_side"] == "a"
        })
        .await?;
        // Instance 2 (B's) counts B's frames waiting for A, and so does instance 3, which
        // holds neither side (it shows the status instance 2 shares through Redis).
        let seen = wait_group(&servers[1..], &setup, "B's frames waiting for A", |g| {
            g["mode"] == "degraded"
                && g["backlog"]["b_to_a"]
                    .as_u64()
                    .is_some_and(|n| n + a_before >= b_target)
        })
        .await?;
        for (index, group) in seen.iter().enumerate() {
            eprintln!("instance {} during the outage: {group}", index + 2);
        }
        // A fails over to instance 3 and everything drains.
        a.at = 1;
        a.connect().await?;
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].done(last) && p[1].done(last)
        })
        .await?;
        check_record(&a, last)?;
        check_record(&b, last)?;
        eprintln!(
            "A: {} redelivered after failover; B: {} redelivered",
            a.redelivered, b.redelivered
        );
        // Mode and backlog right on the instances still up.
        wait_group(
            &servers[1..],
            &setup,
            "active after failover",
            active_no_backlog,
        )
        .await?;
        Ok(())
    }
    .await;
    ws.explain(outcome)
}

/// The agent's diagnostics role (commands) on a `/ws/data` connection, played by the test:
/// the server tests' [`FakeAgent`] serving one dongle.
struct DiagAgent(FakeAgent);

impl DiagAgent {
    /// Connects to `base` with the agent token, serving `dongle`.
    async fn connect(base: &str, token: &str, dongle: &str) -> TestResult<DiagAgent> {
        let (agent, welcome) = FakeAgent::connect(&Api::new(base), token, &[dongle]).await?;
        if welcome.dongles.len() != 1 {
            return Err(
                format!("expected a diag_welcome serving the dongle, got {welcome:?}").into(),
            );
        }
        Ok(DiagAgent(agent))
    }

    /// Waits for a command, reports it in progress and sends its first (not final) answer.
    async fn start_command(&mut self) -> TestResult<Uuid> {
        let id = self.0.command().await?.command_id;
        self.0
            .send(&DiagMessage::CommandStatus(CommandStatusUpdate {
                command_id: id,
                status: AgentCommandStatus::InProgress,
            }))
            .await?;
        self.answer(id, 1, false).await?;
        Ok(id)
    }

    async fn answer(&mut self, id: Uuid, seq: u32, is_final: bool) -> TestResult {
        let response = serde_json::json!({"ecu": "engine", "dtcs": [], "part": seq});
        self.0.answer(id, seq, is_final, response).await
    }
}

/// A vehicle on side A's dongle; a ReadDTC posted for it on `api` → the command id.
async fn vehicle_and_command(api: &Api, setup: &Setup) -> TestResult<String> {
    let body = serde_json::json!({
        "name": "car",
        "vin": "1HGCM82633A004352",
        "dongle_id": setup.dongle_a,
        "ecus": [{"name": "engine", "request_id": "0x7E0", "response_id": "0x7E8"}]
    });
    let vehicle = api
        .post_expect("/api/v1/vehicles", &setup.user, body, StatusCode::CREATED)
        .await?;
    post_command(api, setup, &vehicle["id"]).await
}

async fn post_command(api: &Api, setup: &Setup, vehicle: &Value) -> TestResult<String> {
    let vehicle = vehicle.as_str().ok_or("no vehicle id")?;
    let params = serde_json::json!({"status_mask": 8});
    let accepted = api
        .submit_command(&setup.user, vehicle, "ReadDTC", params)
        .await?;
    text(&accepted, "command_id")
}

/// The command as `api` shows it, once `check` accepts it.
async fn wait_command(
    api: &Api,
    setup: &Setup,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> TestResult<Value> {
    eventually(Duration::from_secs(20), what, || async {
        let (status, body) = api
            .get(&format!("/api/v1/commands/{id}"), &setup.user)
            .await
            .ok()?;
        (status == StatusCode::OK && check(&body)).then_some(body)
    })
    .await
}

fn active_both_online(group: &Value) -> bool {
    group["mode"] == "active" && group["offline_side"].is_null()
}

/// Start-up resets are instance-scoped (`docs/cluster.md`): instance 2 is killed and started
/// again while instance 1 holds both sides of a group and runs a command on the agent
/// connected to it — the sides stay online in the shared records on both instances and the
/// command completes. Then instance 1 itself is killed with a command in flight and started
/// again: that command, whose owner is gone, fails as interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_instance_leaves_the_live_ones_sides_and_commands_alone() -> TestResult {
    let (ws, db, mut servers) = postgres_cluster(2).await?;
    let outcome = async {
        let setup = setup(&servers[0], "ren", Some(&db)).await?;
        let base = servers[0].base.clone();
        let (mut a, mut b) = setup.peers(vec![base.clone()], vec![base.clone()]).await?;
        let mut diag = DiagAgent::connect(&base, &setup.token_a, &setup.dongle_a).await?;
        wait_group(
            &servers,
            &setup,
            "active on both instances",
            active_both_online,
        )
        .await?;
        let api = servers[0].api();
        let id = vehicle_and_command(&api, &setup).await?;
        let started = diag.start_command().await?;
        assert_eq!(started.to_string(), id);
        wait_command(&servers[1].api(), &setup, &id, "in progress", |c| {
            c["status"] == "in_progress"
        })
        .await?;

        servers[1].kill9();
        servers[1].restart().await?;
        // Relay through instance 1 past the restarted instance's start-up checks (the second
        // one comes once presence keys of a just-dead holder would have expired).
        let last = 3000;
        let until = Instant::now() + Duration::from_secs(5);
        run(&mut [&mut a, &mut b], last, |_| Instant::now() > until).await?;
        for server in &servers {
            let group = api.group(&setup.user, &setup.group).await;
            let here = server.api().group(&setup.user, &setup.group).await;
            for g in [group, here] {
                let g = g.ok_or("group not readable")?;
                if !active_both_online(&g) {
                    return Err(format!("a live instance's sides were reset: {g}").into());
                }
            }
            let (_, command) = server
                .api()
                .get(&format!("/api/v1/commands/{id}"), &setup.user)
                .await?;
            if command["status"] != "in_progress" {
                return Err(format!("a live instance's command was ended: {command}").into());
            }
        }
        diag.answer(started, 2, true).await?;
        for server in &servers {
            wait_command(&server.api(), &setup, &id, "completed", |c| {
                c["status"] == "completed"
            })
            .await?;
        }
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].done(last) && p[1].done(last)
        })
        .await?;
        check_record(&a, last)?;
        check_record(&b, last)?;

        // Instance 1 dies with a command in flight; once restarted, that command is over.
        let (_, command) = api
            .get(&format!("/api/v1/commands/{id}"), &setup.user)
            .await?;
        let second = post_command(&api, &setup, &command["vehicle_id"]).await?;
        let started = diag.start_command().await?;
        assert_eq!(started.to_string(), second);
        wait_command(&api, &setup, &second, "in progress", |c| {
            c["status"] == "in_progress"
        })
        .await?;
        servers[0].kill9();
        servers[0].restart().await?;
        for server in &servers {
            let ended = wait_command(&server.api(), &setup, &second, "failed", |c| {
                c["status"] == "failed"
            })
            .await?;
            assert_eq!(ended["error_message"], "interrupted: server restarted");
        }
        Ok(())
    }
    .await;
    ws.explain(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_loses_nothing_acknowledged() -> TestResult {
    require_redis(&redis_url()).await?;
    let ws = Workspace::new()?;
    let mut redis = OwnRedis::start(&ws.path("redis")).await?;
    // Records in one SQLite data directory here (the other tests use PostgreSQL).
    let servers = cluster(&ws, 2, &redis.url(), None).await?;
    let outcome = async {
        let setup = setup(&servers[0], "ray", None).await?;
        let (mut a, mut b) = setup
            .peers(
                vec![servers[0].base.clone(), servers[1].base.clone()],
                vec![servers[1].base.clone(), servers[0].base.clone()],
            )
            .await?;
        let last = 5000;
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].covered() >= last / 3 && p[1].covered() >= last / 3
        })
        .await?;
        let acked = (a.acked, b.acked);
        redis.kill9();
        // Redis is back in a second; the sides keep sending meanwhile (appends fail, the
        // instances reset the producers, who reconnect and resend from their last ack).
        let restart = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let restarted = redis.restart().await.map_err(|e| e.to_string());
            (redis, restarted)
        });
        // Every reconnect checks that the server still holds what it acknowledged.
        let streamed = run(&mut [&mut a, &mut b], last, |p| {
            p[0].done(last) && p[1].done(last)
        })
        .await;
        let (_redis, restarted) = restart.await?;
        restarted?;
        streamed?;
        check_record(&a, last)?;
        check_record(&b, last)?;
        assert!(
            a.reconnects + b.reconnects >= 1,
            "no side noticed the Redis restart (acked at the restart: {acked:?})"
        );
        Ok(())
    }
    .await;
    ws.explain(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_instance_appending_late_changes_nothing() -> TestResult {
    let (ws, db, servers) = postgres_cluster(3).await?;
    let outcome = async {
        let setup = setup(&servers[0], "sal", Some(&db)).await?;
        let (mut a, mut b) = setup
            .peers(
                vec![servers[0].base.clone(), servers[2].base.clone()],
                vec![servers[1].base.clone()],
            )
            .await?;
        let last = 4000;
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].acked >= 1000 && p[1].covered() >= 1000
        })
        .await?;
        // Instance 1 stalls (as under a long pause) with A's next frames in its socket buffer;
        // A gives up on it and moves to instance 3, resending from its last ack there.
        let pid = servers[0]
            .child
            .as_ref()
            .ok_or("instance 1 not running")?
            .id();
        signal(pid, "STOP");
        let stale_from = a.next;
        let stale = a.client.as_mut().ok_or("A not connected")?;
        stale.send(&batch(stale_from, stale_from + 199)).await?;
        let old = a.client.take();
        a.at = 1;
        a.connect().await?;
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].acked >= stale_from + 1000
        })
        .await?;
        // Instance 1 resumes: it reads the stale batch and appends it, late.
        signal(pid, "CONT");
        drop(old);
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].done(last) && p[1].done(last)
        })
        .await?;
        check_record(&a, last)?;
        check_record(&b, last)?;
        assert_eq!(b.redelivered, 0, "B got frames twice on one connection");
        wait_group(
            &servers,
            &setup,
            "active after the stall",
            active_no_backlog,
        )
        .await?;
        Ok(())
    }
    .await;
    ws.explain(outcome)
}

/// Reads a console from `url` with `last_event_id` until `count` events arrived.
/// Opens a console stream: once this returns, the server has subscribed, so every event
/// published from now on reaches the response.
async fn open_console(
    url: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> TestResult<reqwest::Response> {
    let mut request = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .header("Accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await?;
    if response.status() != StatusCode::OK {
        return Err(format!("console answered {}", response.status()).into());
    }
    Ok(response)
}

/// The first `count` events (with an `id:`) of an open console stream.
async fn read_events(
    mut response: reqwest::Response,
    count: usize,
) -> TestResult<Vec<sse_core::ParsedEvent>> {
    let mut parser = sse_core::EventStreamParser::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .map_err(|_| format!("console: {} of {count} events", events.len()))??
            .ok_or("console ended")?;
        let mut items = Vec::new();
        parser.feed(&chunk, &mut items);
        events.extend(items.into_iter().filter_map(|item| match item {
            // The `group_state` sent first to a reader without a last-seen ID has no id:
            // it is not part of the history a resume replays. A `stream_reset` is kept.
            sse_core::ParsedItem::Event(event)
                if !event.last_event_id.is_empty() || event.event_type == "stream_reset" =>
            {
                Some(event)
            }
            _ => None,
        }));
    }
    events.truncate(count);
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_resumes_on_another_instance() -> TestResult {
    let (ws, db, servers) = postgres_cluster(3).await?;
    let outcome = async {
        let setup = setup(&servers[0], "cho", Some(&db)).await?;
        let (mut a, mut b) = setup
            .peers(vec![servers[0].base.clone()], vec![servers[1].base.clone()])
            .await?;
        let path = format!("/api/v1/streams/groups/{}/console", setup.group);
        // A reader on instance 1, subscribed before the frames flow, sees them live (frames
        // shown as `can_frame` events, and more). A reader opened afterwards without an ID
        // would see only what comes after it.
        let live = open_console(&format!("{}{path}", servers[0].base), &setup.user, None).await?;
        let last = 300;
        run(&mut [&mut a, &mut b], last, |p| {
            p[0].done(last) && p[1].done(last)
        })
        .await?;
        let first = read_events(live, 40).await?;
        let cut = 19;
        let id = first[cut].last_event_id.clone();
        assert!(!id.is_empty(), "instance 1 served events without ids");
        // Instance 3 resumes right after that id: exactly the events that followed it.
        let resumed = open_console(
            &format!("{}{path}", servers[2].base),
            &setup.user,
            Some(&id),
        )
        .await?;
        let rest = read_events(resumed, 20).await?;
        assert!(
            rest.iter().all(|e| e.event_type != "stream_reset"),
            "instance 3 did not know instance 1's id: {:?}",
            rest.first()
        );
        assert_eq!(rest, first[cut + 1..].to_vec(), "resumed events differ");
        Ok(())
    }
    .await;
    ws.explain(outcome)
}
