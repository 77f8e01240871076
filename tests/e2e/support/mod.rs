//! Shared harness of the cross-crate end-to-end tests: everything runs as real `tether`
//! processes on loopback — `tether server` with its own data directory (and Redis when asked),
//! `tether agent` with a dongle role, `tether can dongle` simulated dongles replaying and
//! recording candump logs — set up through the CLI and the REST API only, never by editing a
//! database. SSE consoles are read with sse-core's parser over a streaming HTTP response.
#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sse_core::{EventStreamParser, ParsedEvent, ParsedItem};

/// The binary under test.
pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

pub use tether_testkit::dir::Workspace;
pub use tether_testkit::metrics::metric_sum;
pub use tether_testkit::process::{kill9, signal, wait_child};
pub use tether_testkit::redis::{redis_url, require_redis};
pub use tether_testkit::rest::{Api, code, text};
pub use tether_testkit::sse::SseReader;
pub use tether_testkit::{
    PATIENCE, TestResult, capture_path, eventually, free_tcp_port, free_udp_port,
};

/// How to start a server.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Use Redis for relay streams and SSE history.
    pub redis_url: Option<String>,
    /// Extra YAML appended to the server's configuration file (retention, …).
    pub extra_config: String,
    /// Fixed port (a restart reuses the first one).
    pub port: Option<u16>,
    /// A program and its arguments the server runs under (`faketime …`, `unshare …`); the
    /// `tether server …` command line is appended.
    pub wrapper: Vec<String>,
    /// Extra environment of the server process.
    pub env: Vec<(String, String)>,
}

/// A fresh workspace with a server on the default configuration (SQLite, no Redis) in it.
pub async fn default_server() -> TestResult<(Workspace, ServerProc)> {
    let ws = Workspace::new()?;
    let server = ServerProc::start(&ws, ServerOptions::default()).await?;
    Ok((ws, server))
}

/// A `tether server` child process with its data directory.
pub struct ServerProc {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub base: String,
    pub options: ServerOptions,
    stderr_dir: PathBuf,
    /// Names the process's stderr files (`{label}-{n}.stderr`).
    label: String,
    starts: usize,
}

impl ServerProc {
    /// Starts a server with a fresh data directory under `ws`.
    pub async fn start(ws: &Workspace, options: ServerOptions) -> TestResult<ServerProc> {
        ServerProc::start_named(ws, "server", &ws.path("server-data"), options).await
    }

    /// Starts a server named `name` (its configuration file and logs) on `data_dir`, which
    /// several instances of a cluster may share.
    pub async fn start_named(
        ws: &Workspace,
        name: &str,
        data_dir: &Path,
        options: ServerOptions,
    ) -> TestResult<ServerProc> {
        let data_dir = data_dir.to_owned();
        let config = ws.path(&format!("{name}.yaml"));
        let mut yaml = format!("data_dir: \"{}\"\n", data_dir.display());
        if let Some(url) = &options.redis_url {
            yaml.push_str(&format!("redis_url: \"{url}\"\n"));
        }
        yaml.push_str(&options.extra_config);
        std::fs::write(&config, yaml)?;
        let mut server = ServerProc {
            child: None,
            data_dir,
            config,
            addr: "127.0.0.1:0".parse()?,
            base: String::new(),
            options,
            stderr_dir: ws.dir.path().to_owned(),
            label: name.to_owned(),
            starts: 0,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts another instance on this one's configuration — the same data directory and
    /// Redis — on a port of its own; `label` names its logs.
    pub async fn start_sibling(&self, label: &str) -> TestResult<ServerProc> {
        let mut options = self.options.clone();
        options.port = None;
        let mut server = ServerProc {
            child: None,
            data_dir: self.data_dir.clone(),
            config: self.config.clone(),
            addr: "127.0.0.1:0".parse()?,
            base: String::new(),
            options,
            stderr_dir: self.stderr_dir.clone(),
            label: label.to_owned(),
            starts: 0,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> TestResult {
        let port = self.options.port.unwrap_or(0);
        let stderr = std::fs::File::create(
            self.stderr_dir
                .join(format!("{}-{}.stderr", self.label, self.starts)),
        )?;
        self.starts += 1;
        let mut cmd = match self.options.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(TETHER);
                cmd
            }
            None => Command::new(TETHER),
        };
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        cmd.args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&self.config)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            // Keep draining stdout so the server never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            });
            read.map(|_| line)
        })
        .await??;
        let Some(base) = line.trim().strip_prefix("tether server listening on ") else {
            let _ = child.kill();
            return Err(format!("server did not start: first line {line:?}").into());
        };
        self.base = base.to_owned();
        self.addr = base.trim_start_matches("http://").parse()?;
        self.options.port = Some(self.addr.port());
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        reap(&mut self.child);
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) -> TestResult<ExitStatus> {
        let mut child = self.child.take().ok_or("server not running")?;
        signal(child.id(), "TERM");
        wait_child(&mut child, Duration::from_secs(30)).await
    }

    /// Starts the server again on the same data directory, configuration and port. Retries
    /// while the port is still held by the previous process.
    pub async fn restart(&mut self) -> TestResult {
        let mut last = String::new();
        for _ in 0..50 {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("server did not restart: {last}").into())
    }

    /// A user token, created with `tether server token create` (the CLI, like an operator).
    pub fn user_token(&self, user: &str) -> TestResult<String> {
        let out = Command::new(TETHER)
            .args(["server", "token", "create", "--user", user, "--data-dir"])
            .arg(&self.data_dir)
            .env_remove("REDIS_URL")
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    pub fn api(&self) -> Api {
        Api::new(self.base.clone())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `kill -9` of the child in `slot`, if any, and waits until it is gone.
fn reap(slot: &mut Option<Child>) {
    if let Some(mut child) = slot.take() {
        kill9(&mut child);
    }
}

/// The protocol of an agent's dongle role (`dongle.protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// REMP dongles.
    Remp,
    /// One cannelloni peer, relayed as the dongle `serial`.
    Cannelloni { serial: String },
}

impl Edge {
    /// The `dongle:` lines that choose it.
    fn yaml(&self) -> String {
        match self {
            Edge::Remp => "  protocol: remp\n".to_owned(),
            Edge::Cannelloni { serial } => {
                format!("  protocol: cannelloni\n  serial: \"{serial}\"\n")
            }
        }
    }
}

/// A `tether agent` child process with a dongle role.
pub struct AgentProc {
    pub name: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub udp_port: u16,
    pub metrics_port: u16,
    pub token: String,
    pub child: Option<Child>,
    stderr_dir: PathBuf,
    starts: usize,
}

impl AgentProc {
    /// Writes the agent's configuration (token through `${TETHER_AGENT_TOKEN}`) and starts it.
    pub fn start(
        ws: &Workspace,
        name: &str,
        server: &ServerProc,
        token: &str,
    ) -> TestResult<AgentProc> {
        AgentProc::start_at_all(ws, name, &[server.base.as_str()], token)
    }

    /// [`AgentProc::start`] against the server at `base` (a proxy in front of it, say).
    pub fn start_at(ws: &Workspace, name: &str, base: &str, token: &str) -> TestResult<AgentProc> {
        AgentProc::start_at_all(ws, name, &[base], token)
    }

    /// [`AgentProc::start`] with `server_url` listing `servers` in order (fail-over).
    pub fn start_with_servers(
        ws: &Workspace,
        name: &str,
        servers: &[&ServerProc],
        token: &str,
    ) -> TestResult<AgentProc> {
        let bases: Vec<&str> = servers.iter().map(|s| s.base.as_str()).collect();
        AgentProc::start_at_all(ws, name, &bases, token)
    }

    /// [`AgentProc::start`] with `server_url` listing `bases` in order.
    fn start_at_all(
        ws: &Workspace,
        name: &str,
        bases: &[&str],
        token: &str,
    ) -> TestResult<AgentProc> {
        AgentProc::start_edge(ws, name, bases, token, &Edge::Remp)
    }

    /// [`AgentProc::start_at_all`] with the dongle role's protocol `edge`.
    pub fn start_edge(
        ws: &Workspace,
        name: &str,
        bases: &[&str],
        token: &str,
        edge: &Edge,
    ) -> TestResult<AgentProc> {
        let urls: Vec<String> = bases.iter().map(|b| format!("\"{b}\"")).collect();
        let data_dir = ws.path(&format!("agent-{name}-data"));
        let udp_port = free_udp_port();
        let metrics_port = free_tcp_port();
        let config = ws.path(&format!("agent-{name}.yaml"));
        // Short polling and backoff ceilings so outages heal quickly in tests.
        let yaml = format!(
            "server_url: [{}]\ntoken: \"${{TETHER_AGENT_TOKEN}}\"\ndata_dir: \"{}\"\ndongle:\n  listen: \"127.0.0.1:{udp_port}\"\n{}  metrics_listen: \"127.0.0.1:{metrics_port}\"\n  assignment_poll: 0.5\n  reconnect_max: 1\n",
            urls.join(", "),
            data_dir.display(),
            edge.yaml()
        );
        std::fs::write(&config, yaml)?;
        let mut agent = AgentProc {
            name: name.to_owned(),
            config,
            data_dir,
            udp_port,
            metrics_port,
            token: token.to_owned(),
            child: None,
            stderr_dir: ws.dir.path().to_owned(),
            starts: 0,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Starts (again) with the same configuration and data directory.
    pub fn spawn(&mut self) -> TestResult {
        let stderr = std::fs::File::create(
            self.stderr_dir
                .join(format!("agent-{}-{}.stderr", self.name, self.starts)),
        )?;
        self.starts += 1;
        let child = Command::new(TETHER)
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("TETHER_AGENT_TOKEN", &self.token)
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// The agent's Prometheus text (`metrics_listen`), `None` while it does not answer.
    pub async fn metrics(&self) -> Option<String> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// [`AgentProc::metrics`], an error while the agent does not answer.
    pub async fn metrics_text(&self) -> TestResult<String> {
        let text = self.metrics().await;
        text.ok_or_else(|| format!("agent {}: metrics do not answer", self.name).into())
    }

    /// Waits until the running agent listens for dongles (its log says so): a datagram sent
    /// before that would hit a closed port.
    pub async fn ready(&self) -> TestResult {
        let log = self.stderr_dir.join(format!(
            "agent-{}-{}.stderr",
            self.name,
            self.starts.saturating_sub(1)
        ));
        eventually(
            PATIENCE,
            &format!("agent {} listening", self.name),
            || async {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|text| text.contains("dongle agent listening"))
                    .map(|_| ())
            },
        )
        .await
    }

    /// Frames the agent dropped because it did not know the dongle's group yet: the first
    /// frames of a dongle it has just learned, before its assignment arrived (counted and
    /// logged by the agent). Fails if the agent dropped frames for any other reason.
    pub async fn leading_drops(&self) -> TestResult<usize> {
        let text = self.metrics_text().await?;
        let family = "tether_agent_dongle_frames_dropped_total";
        let all = metric_sum(&text, family, &[]);
        let no_group = metric_sum(&text, family, &["reason=\"no_group\""]);
        if all != no_group {
            return Err(format!("{}: frames dropped for other reasons\n{text}", self.name).into());
        }
        Ok(no_group as usize)
    }

    /// `HOST:PORT` the agent's dongle role listens on.
    pub fn udp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.udp_port)
    }

    /// SIGTERM and wait for the exit.
    pub async fn stop(&mut self) -> TestResult<ExitStatus> {
        let mut child = self.child.take().ok_or("agent not running")?;
        signal(child.id(), "TERM");
        wait_child(&mut child, Duration::from_secs(30)).await
    }

    /// Everything the agent wrote to stderr over all its runs.
    pub fn logs(&self) -> String {
        (0..self.starts)
            .map(|n| {
                std::fs::read_to_string(
                    self.stderr_dir
                        .join(format!("agent-{}-{n}.stderr", self.name)),
                )
                .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// A `tether can dongle` simulated dongle.
pub struct DongleProc {
    pub serial: String,
    pub record: Option<PathBuf>,
    pub child: Option<Child>,
}

impl DongleProc {
    /// Starts a simulated dongle talking to `agent` (UDP), replaying `replay` at `speed` when
    /// given, recording what it receives to `record` when given.
    pub fn start(
        ws: &Workspace,
        serial: &str,
        agent_udp: &str,
        replay: Option<(&Path, &str)>,
        record: Option<&Path>,
    ) -> TestResult<DongleProc> {
        let mut n = 0;
        while ws.path(&format!("dongle-{serial}-{n}.stderr")).exists() {
            n += 1;
        }
        let stderr = std::fs::File::create(ws.path(&format!("dongle-{serial}-{n}.stderr")))?;
        let mut cmd = Command::new(TETHER);
        cmd.args(["can", "dongle", "--serial", serial, "--agent", agent_udp]);
        if let Some((file, speed)) = replay {
            cmd.arg("--replay").arg(file).args(["--speed", speed]);
        }
        if let Some(out) = record {
            cmd.arg("--record").arg(out);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        Ok(DongleProc {
            serial: serial.to_owned(),
            record: record.map(Path::to_owned),
            child: Some(child),
        })
    }

    /// SIGTERM and wait for the exit (the record file is complete afterwards).
    pub async fn stop(&mut self) -> TestResult<ExitStatus> {
        let mut child = self.child.take().ok_or("dongle not running")?;
        signal(child.id(), "TERM");
        wait_child(&mut child, Duration::from_secs(30)).await
    }

    /// Waits until a replay-only dongle ends on its own at the end of its capture.
    pub async fn finished(&mut self) -> TestResult<ExitStatus> {
        let child = self.child.as_mut().ok_or("dongle not running")?;
        let status = wait_child(child, PATIENCE).await?;
        self.child = None;
        Ok(status)
    }
}

impl Drop for DongleProc {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// The frames of a candump log as `ID#DATA` strings (upper case), in file order; timestamps,
/// interface names and direction marks are dropped. A missing file reads as no frames.
pub fn candump_frames(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('('))
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_ascii_uppercase)
        .collect()
}

/// Checks that `got` is exactly `want`: same frames, same order, nothing missing or doubled.
/// The message names the first difference.
pub fn assert_same_frames(what: &str, want: &[String], got: &[String]) -> TestResult {
    if want == got {
        return Ok(());
    }
    let first = want
        .iter()
        .zip(got)
        .position(|(w, g)| w != g)
        .unwrap_or(want.len().min(got.len()));
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for f in want {
        *counts.entry(f).or_default() += 1;
    }
    for f in got {
        *counts.entry(f).or_default() -= 1;
    }
    let missing: i64 = counts.values().filter(|c| **c > 0).sum();
    let extra: i64 = -counts.values().filter(|c| **c < 0).sum::<i64>();
    Err(format!(
        "{what}: sent {} frames, received {}; first difference at index {first} (want {:?}, got {:?}); {missing} missing, {extra} extra by content",
        want.len(),
        got.len(),
        want.get(first),
        got.get(first),
    )
    .into())
}

/// One side of a relay set-up: an agent process and its dongle.
pub struct Side {
    pub agent: AgentProc,
    pub dongle_id: String,
    pub serial: String,
}

impl Side {
    /// A simulated dongle on this side's agent ([`DongleProc::start`]).
    pub fn dongle(
        &self,
        ws: &Workspace,
        replay: Option<(&Path, &str)>,
        record: Option<&Path>,
    ) -> TestResult<DongleProc> {
        DongleProc::start(ws, &self.serial, &self.agent.udp_addr(), replay, record)
    }

    /// A simulated dongle on this side's agent replaying `from` at `speed`.
    pub fn replaying_dongle(
        &self,
        ws: &Workspace,
        from: &Path,
        speed: &str,
    ) -> TestResult<DongleProc> {
        self.dongle(ws, Some((from, speed)), None)
    }

    /// A simulated dongle on this side's agent recording what it receives into `into`.
    pub fn recording_dongle(&self, ws: &Workspace, into: &Path) -> TestResult<DongleProc> {
        self.dongle(ws, None, Some(into))
    }
}

/// A user with two agents, two pre-announced dongles and an active group between them, agents
/// running, no dongle processes yet.
pub struct Pair {
    pub user_token: String,
    pub group_id: String,
    pub a: Side,
    pub b: Side,
}

impl Pair {
    /// Sets everything up through the CLI and the REST API.
    pub async fn start(ws: &Workspace, server: &ServerProc, user: &str) -> TestResult<Pair> {
        Self::start_with_servers(ws, &[server], user).await
    }

    /// [`Pair::start`] with agents whose `server_url` lists `servers` in order (set up through
    /// the first one).
    pub async fn start_with_servers(
        ws: &Workspace,
        servers: &[&ServerProc],
        user: &str,
    ) -> TestResult<Pair> {
        let server = servers.first().ok_or("no server")?;
        let bases: Vec<&str> = servers.iter().map(|s| s.base.as_str()).collect();
        let user_token = server.user_token(user)?;
        Pair::start_with_bases(ws, server, user, user_token, [&bases, &bases]).await
    }

    /// [`Pair::start`] with a user token made elsewhere and each agent talking to its own
    /// address of the server (`[a, b]`: the server's base, or a proxy in front of it).
    pub async fn start_with(
        ws: &Workspace,
        server: &ServerProc,
        user: &str,
        user_token: String,
        agent_bases: [&str; 2],
    ) -> TestResult<Pair> {
        let [a, b] = agent_bases;
        Pair::start_with_bases(ws, server, user, user_token, [&[a], &[b]]).await
    }

    /// [`Pair::start_with`] with each agent's `server_url` listing its `agent_bases` in order.
    pub async fn start_with_bases(
        ws: &Workspace,
        server: &ServerProc,
        user: &str,
        user_token: String,
        agent_bases: [&[&str]; 2],
    ) -> TestResult<Pair> {
        Pair::start_with_protocols(ws, server, user, user_token, agent_bases, [false; 2]).await
    }

    /// [`Pair::start`] with side A's and side B's dongle role on cannelloni (`true`, relaying
    /// the side's serial) or REMP (`false`).
    pub async fn start_with_protocols(
        ws: &Workspace,
        server: &ServerProc,
        user: &str,
        user_token: String,
        agent_bases: [&[&str]; 2],
        cannelloni: [bool; 2],
    ) -> TestResult<Pair> {
        let api = server.api();
        let (_, token_a) = api
            .create_agent(&user_token, &format!("{user}-agent-a"))
            .await?;
        let (_, token_b) = api
            .create_agent(&user_token, &format!("{user}-agent-b"))
            .await?;
        let serial_a = format!("{user}-A");
        let serial_b = format!("{user}-B");
        let dongle_a = api.announce_dongle(&token_a, &serial_a).await?;
        let dongle_b = api.announce_dongle(&token_b, &serial_b).await?;
        let group_id = api
            .active_group(&user_token, &format!("{user} pair"), &dongle_a, &dongle_b)
            .await?;
        let edge = |on: bool, serial: &str| match on {
            true => Edge::Cannelloni {
                serial: serial.to_owned(),
            },
            false => Edge::Remp,
        };
        let (edge_a, edge_b) = (
            edge(cannelloni[0], &serial_a),
            edge(cannelloni[1], &serial_b),
        );
        let agent_a =
            AgentProc::start_edge(ws, &format!("{user}-a"), agent_bases[0], &token_a, &edge_a)?;
        let agent_b =
            AgentProc::start_edge(ws, &format!("{user}-b"), agent_bases[1], &token_b, &edge_b)?;
        agent_a.ready().await?;
        agent_b.ready().await?;
        Ok(Pair {
            user_token,
            group_id,
            a: Side {
                agent: agent_a,
                dongle_id: dongle_a,
                serial: serial_a,
            },
            b: Side {
                agent: agent_b,
                dongle_id: dongle_b,
                serial: serial_b,
            },
        })
    }

    /// On failure, prints both agents' frame counters and every process log, then hands the
    /// error on.
    pub async fn explain<T>(&self, ws: &Workspace, outcome: TestResult<T>) -> TestResult<T> {
        if outcome.is_err() {
            for agent in [&self.a.agent, &self.b.agent] {
                let text = agent.metrics().await.unwrap_or_default();
                eprintln!("---- agent {} counters", agent.name);
                for line in text.lines().filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("frames_") || l.contains("remp_") || l.contains("gap_"))
                }) {
                    eprintln!("{line}");
                }
            }
        }
        ws.explain(outcome)
    }

    /// Waits until the group reports `mode` (and returns its state).
    pub async fn wait_mode(&self, api: &Api, mode: &str) -> TestResult<Value> {
        eventually(
            PATIENCE,
            &format!("group {} {mode}", self.group_id),
            || async {
                api.group(&self.user_token, &self.group_id)
                    .await
                    .filter(|g| g["mode"] == mode)
            },
        )
        .await
    }

    /// Waits until `api` shows the group `active`, then checks that neither direction has a
    /// backlog left (and returns the group's state).
    pub async fn assert_drained(&self, api: &Api) -> TestResult<Value> {
        let group = self.wait_mode(api, "active").await?;
        assert_eq!(group["backlog"]["a_to_b"], 0, "{group}");
        assert_eq!(group["backlog"]["b_to_a"], 0, "{group}");
        Ok(group)
    }

    /// Both agents, A's first.
    pub fn agents(&self) -> [&AgentProc; 2] {
        [&self.a.agent, &self.b.agent]
    }

    /// [`Pair::replay_both_ways_at`] speed 8.
    pub fn replay_both_ways(&self, ws: &Workspace) -> TestResult<TwoWay> {
        self.replay_both_ways_at(ws, "8")
    }

    /// Starts both dongles replaying alternate frames of the shipped capture to each other at
    /// `speed` (A the even ones, B the odd ones: both directions at once, distinguishable),
    /// each recording what it receives.
    pub fn replay_both_ways_at(&self, ws: &Workspace, speed: &str) -> TestResult<TwoWay> {
        let from_a = ws.split_capture("a.log", |i| i % 2 == 0)?;
        let from_b = ws.split_capture("b.log", |i| i % 2 == 1)?;
        let (a_rx, b_rx) = (ws.path("a-received.log"), ws.path("b-received.log"));
        let dongle_a = self.a.dongle(ws, Some((&from_a, speed)), Some(&a_rx))?;
        let dongle_b = self.b.dongle(ws, Some((&from_b, speed)), Some(&b_rx))?;
        Ok(TwoWay {
            want_at_b: candump_frames(&from_a),
            want_at_a: candump_frames(&from_b),
            a_rx,
            b_rx,
            dongle_a,
            dongle_b,
        })
    }

    /// Console URL of the group.
    pub fn group_console(&self, server: &ServerProc) -> String {
        format!(
            "{}/api/v1/streams/groups/{}/console",
            server.base, self.group_id
        )
    }
}

/// A two-way replay between the dongles of a [`Pair`] ([`Pair::replay_both_ways`]).
pub struct TwoWay {
    /// What B must receive: A's frames.
    pub want_at_b: Vec<String>,
    /// What A must receive: B's frames.
    pub want_at_a: Vec<String>,
    /// A's record of what it received.
    pub a_rx: PathBuf,
    /// B's record.
    pub b_rx: PathBuf,
    pub dongle_a: DongleProc,
    pub dongle_b: DongleProc,
}

impl TwoWay {
    /// Waits until both records hold `n` frames: the stream is running both ways.
    pub async fn running(&self, n: usize) -> TestResult {
        wait_frames(&self.b_rx, n, "B receives A's first frames").await?;
        wait_frames(&self.a_rx, n, "A receives B's first frames").await?;
        Ok(())
    }

    /// Checks both directions relayed exactly ([`check_relayed`]).
    pub async fn check(&self, pair: &Pair, what: &str) -> TestResult {
        let directions = [
            ("A → B", &self.want_at_b, &pair.a.agent, &self.b_rx),
            ("B → A", &self.want_at_a, &pair.b.agent, &self.a_rx),
        ];
        for (direction, sent, sender, record) in directions {
            check_relayed(&format!("{direction} {what}"), sent, sender, record).await?;
        }
        Ok(())
    }

    /// How many of A's frames B's record holds so far.
    pub fn received_at_b(&self) -> usize {
        candump_frames(&self.b_rx).len()
    }

    /// [`TwoWay::check`] across a fault (an outage, a kill) that began when B had received
    /// `at_cut` of A's frames ([`TwoWay::received_at_b`]); the fault must have come before the
    /// stream ended, or the check would prove nothing about it.
    pub async fn check_across(&self, pair: &Pair, what: &str, at_cut: usize) -> TestResult {
        self.check(pair, what).await?;
        assert!(
            at_cut < self.want_at_b.len(),
            "{what}: the fault came after the stream ended"
        );
        Ok(())
    }

    /// Stops both dongles.
    pub async fn stop(&mut self) -> TestResult {
        self.dongle_a.stop().await?;
        self.dongle_b.stop().await?;
        Ok(())
    }
}

/// Waits until the candump log at `path` holds at least `n` frames; returns them.
pub async fn wait_frames(path: &Path, n: usize, what: &str) -> TestResult<Vec<String>> {
    let result = eventually(PATIENCE, what, || async {
        let frames = candump_frames(path);
        (frames.len() >= n).then_some(frames)
    })
    .await;
    result.map_err(|e| format!("{e} ({} of {n} frames arrived)", candump_frames(path).len()).into())
}

/// Waits until everything `sender` relayed from `sent` has arrived in the candump log at
/// `path`, lets it settle, and checks it is exactly `sent` minus the frames the sender's agent
/// dropped before it knew the group (a prefix, counted, at most half of `sent`): nothing
/// lost, doubled or reordered.
/// Returns that leading drop count.
pub async fn check_relayed(
    what: &str,
    sent: &[String],
    sender: &AgentProc,
    path: &Path,
) -> TestResult<usize> {
    let waited = eventually(PATIENCE, what, || async {
        let skipped = sender.leading_drops().await.ok()?;
        (candump_frames(path).len() + skipped >= sent.len()).then_some(())
    })
    .await;
    if let Err(err) = waited {
        let skipped = sender.leading_drops().await?;
        return Err(format!(
            "{err}: {} of {} frames arrived, {skipped} dropped by the sending agent before it knew the group",
            candump_frames(path).len(),
            sent.len()
        )
        .into());
    }
    let got = settle_frames(path, Duration::from_secs(2)).await;
    let skipped = sender.leading_drops().await?;
    // The drops before the agent learnt its group are a short prefix; most of the capture
    // must have been relayed, or the comparison below would prove nothing.
    if skipped * 2 > sent.len() {
        return Err(format!(
            "{what}: the sending agent dropped {skipped} of {} frames before it knew the group",
            sent.len()
        )
        .into());
    }
    assert_same_frames(what, &sent[skipped..], &got)?;
    Ok(skipped)
}

/// Waits until the candump log at `path` stops growing (no new frame for `quiet`), returns it.
pub async fn settle_frames(path: &Path, quiet: Duration) -> Vec<String> {
    let mut last = candump_frames(path);
    loop {
        tokio::time::sleep(quiet).await;
        let now = candump_frames(path);
        if now.len() == last.len() {
            return now;
        }
        last = now;
    }
}
