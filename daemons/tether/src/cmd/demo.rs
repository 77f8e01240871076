//! `tether demo`: the whole group relay on one machine, for a newcomer.
//!
//! Starts, as child processes of this same binary: a `tether server` on a fresh data directory,
//! two `tether agent`s with the dongle role, and two `tether can dongle` simulated dongles that
//! loop over a real capture shipped with the project. Before the children start it creates a
//! demo user (with the code behind `tether server token create`), two agents, announces both
//! dongles and activates a group between them, all through the REST API. Then it prints the
//! web page's ready sign-in link, the console URLs, the user token and a ready-to-paste
//! `curl -N` line, and runs until Ctrl-C or SIGTERM, when it stops every child (dongles, agents, then the server) and waits for them.
//!
//! The data directory (`./tether-demo-data` by default) is wiped at every start. To protect
//! anything else, it is only wiped when it is empty or carries the marker file a previous demo
//! left there.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use tether_runtime::signals::StopSignals;
use tether_server::store::Store;

/// Marker file that makes a directory a demo directory (safe to wipe).
const MARKER: &str = ".tether-demo";
/// The capture the dongles replay, relative to the workspace root.
const CAPTURE: &str = "data/captures/nissan-leaf-isotp.log";
/// The demo vehicle's ECU profile, relative to the workspace root.
const ECU_PROFILE: &str = "data/ecu/demo.yaml";
/// The serial the demo vehicle's bus is announced under.
const VEHICLE_SERIAL: &str = "DEMO-CAR";
/// How long the server has to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each child has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the demo waits for the group to become `active` before saying so.
const ACTIVE_PATIENCE: Duration = Duration::from_secs(60);

/// `tether demo` arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address the server listens on, `IP:PORT` (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: String,
    /// Data directory, wiped at start (only if empty or made by an earlier demo).
    #[arg(long, default_value = "./tether-demo-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Capture both dongles replay in a loop [default: data/captures/nissan-leaf-isotp.log].
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    /// The demo car's ECU profile [default: data/ecu/demo.yaml].
    #[arg(long, value_name = "FILE")]
    pub ecu_profile: Option<PathBuf>,
    /// Replay speed factor (1 = the capture's own timing) or `max`.
    #[arg(long, default_value = "1", value_parser = parse_speed)]
    pub speed: String,
    /// Also run the metering pipeline: a metering agent against the server's control plane,
    /// with a few sessions pushed through Redis.
    #[arg(long)]
    pub metering: bool,
    /// Redis for `--metering`.
    #[arg(long, default_value = "redis://127.0.0.1:6379", value_name = "URL")]
    pub redis_url: String,
}

/// `--listen`, checked before anything starts: the server takes an IP address and a port, and
/// resolves no names.
fn parse_listen(text: &str) -> Result<String, String> {
    text.parse::<std::net::SocketAddr>()
        .map(|_| text.to_owned())
        .map_err(|_| {
            format!("{text:?} is not IP:PORT such as 127.0.0.1:8080 (host names such as localhost are not resolved)")
        })
}

/// `--speed`, checked before anything starts (the dongles are what use it).
fn parse_speed(text: &str) -> Result<String, String> {
    text.parse::<can_io::transport::replay::ReplaySpeed>()
        .map(|_| text.to_owned())
}

/// A fresh random REMP key (32 bytes, hex) for one demo dongle.
fn demo_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The last lines of a child's log, for an error message.
fn log_tail(dir: &Path, name: &str) -> String {
    let path = dir.join("logs").join(format!("{name}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// A child process with a name for messages.
struct Proc {
    name: &'static str,
    child: Child,
}

/// Everything started so far, stopped in reverse order.
#[derive(Default)]
struct Children {
    procs: Vec<Proc>,
}

impl Children {
    fn add(&mut self, name: &'static str, child: Child) {
        self.procs.push(Proc { name, child });
    }

    /// The first child that exited, with its status.
    fn exited(&mut self) -> Option<(&'static str, std::process::ExitStatus)> {
        self.procs.iter_mut().find_map(|p| {
            p.child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (p.name, status))
        })
    }

    /// SIGTERM to each child, newest first, waiting for each (killing it after a grace period)
    /// so agents drain before the server goes. Returns the names of children that had to be
    /// killed.
    async fn stop_all(&mut self) -> Vec<&'static str> {
        let mut killed = Vec::new();
        while let Some(mut proc) = self.procs.pop() {
            if proc.child.try_wait().ok().flatten().is_some() {
                continue;
            }
            if let Some(pid) = proc.child.id() {
                terminate(pid);
            }
            match tokio::time::timeout(STOP_GRACE, proc.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = proc.child.kill().await;
                    killed.push(proc.name);
                }
            }
        }
        killed
    }
}

/// Sends SIGTERM (the children shut down cleanly on it).
fn terminate(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !sent.is_ok_and(|s| s.success()) {
        tracing::warn!(pid, "could not send SIGTERM");
    }
}

/// Run `tether demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut children = Children::default();
        let outcome = demo(&args, &mut children).await;
        let killed = children.stop_all().await;
        if !killed.is_empty() {
            eprintln!("had to kill after {STOP_GRACE:?}: {}", killed.join(", "));
        }
        match outcome {
            Ok(()) => {
                println!("demo stopped");
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => Err(err),
        }
    })
}

/// Wipes (or creates) the demo directory, refusing directories a demo did not make.
fn fresh_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "refusing to wipe {}: it is not empty and was not made by `tether demo` (no {MARKER} file); pass another --data-dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `tether demo`; wiped at its next start\n",
    )
    .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    Ok(())
}

/// The capture to replay: `--capture`, or the shipped one from the current directory, or from
/// the source tree this binary was built from.
fn find_capture(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        anyhow::ensure!(path.is_file(), "capture {} not found", path.display());
        return Ok(path.to_owned());
    }
    find_shipped(CAPTURE, "--capture FILE")
}

/// A file shipped with the project (`rel` from the workspace root): from the current directory,
/// or from the source tree this binary was built from.
fn find_shipped(rel: &str, option: &str) -> anyhow::Result<PathBuf> {
    let here = PathBuf::from(rel);
    if here.is_file() {
        return Ok(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    if built.is_file() {
        return Ok(built);
    }
    bail!("cannot find {rel}; run from the repository root or pass {option}")
}

/// A free UDP port on loopback for an agent's dongle listener.
fn free_udp_port() -> anyhow::Result<u16> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join("logs").join(format!("{name}.log"));
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// A child of this binary with its stderr in `<dir>/logs/<name>.log`.
pub(super) fn child_command(exe: &Path, dir: &Path, name: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(dir, name)?)
        .env_remove("REDIS_URL")
        .kill_on_drop(true);
    Ok(cmd)
}

/// A tiny JSON client for the set-up calls.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, token, Some(&body))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    /// Sends one request with `token`; the answer's JSON body (`null` if it has none), or an
    /// error naming the request if it did not succeed.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {body}");
        Ok(body)
    }
}

fn field(body: &Value, name: &str) -> anyhow::Result<String> {
    body[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {name:?} in {body}"))
}

async fn demo(args: &DemoArgs, children: &mut Children) -> anyhow::Result<()> {
    // Listen for Ctrl-C from the start: the terminal sends it to the children as well, and a
    // child exiting because of it is a shutdown, not a failure.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stop = StopSignals::register();
    tokio::spawn(async move {
        stop.wait().await;
        let _ = stop_tx.send(true);
    });
    let exe = std::env::current_exe().context("cannot find the tether binary")?;
    let dir = &args.data_dir;
    fresh_data_dir(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let capture = find_capture(args.capture.as_deref())?;
    let ecu_profile = match &args.ecu_profile {
        Some(p) => p.clone(),
        None => find_shipped(ECU_PROFILE, "--ecu-profile FILE")?,
    };
    let profile = super::can::ecu::load_profile(&ecu_profile)?;
    let server_dir = dir.join("server");

    // The demo user, exactly as `tether server token create --user demo` makes it.
    let token = {
        let store = Store::open_in(&server_dir)?;
        let (_, _, issued) = store.create_user_token("demo", Utc::now())?;
        issued.secret
    };

    let mut server = child_command(&exe, &dir, "server")?;
    server
        .args(["server", "--listen", &args.listen, "--data-dir"])
        .arg(&server_dir)
        .stdout(Stdio::piped());
    let mut server = server.spawn().context("starting the server")?;
    let stdout = server.stdout.take().context("no server stdout")?;
    children.add("server", server);
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .context("the server did not start in time (see logs/server.log)")??;
    let Some(first) = first else {
        // Let the log be written out before quoting it.
        if let Some(server) = children.procs.last_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), server.child.wait()).await;
        }
        bail!(
            "the server exited at start; the end of {}:\n{}",
            dir.join("logs/server.log").display(),
            log_tail(&dir, "server")
        );
    };
    let base = first
        .strip_prefix("tether server listening on ")
        .with_context(|| format!("unexpected server output {first:?}"))?
        .to_owned();
    // Keep reading so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let api = Api {
        base: base.clone(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    };
    let mut sides = Vec::new();
    for (side, serial) in [("a", "DEMO-A"), ("b", "DEMO-B")] {
        let agent = api
            .post(
                "/api/v1/agents",
                &token,
                json!({ "name": format!("demo agent {side}") }),
            )
            .await?;
        let agent_token = field(&agent, "token")?;
        let dongle = api
            .post(
                "/api/v1/agent/dongles",
                &agent_token,
                json!({ "serial": serial }),
            )
            .await?;
        sides.push((side, serial, agent_token, field(&dongle, "id")?));
    }
    let group = api
        .post(
            "/api/v1/groups",
            &token,
            json!({ "name": "demo pair", "dongle_a": sides[0].3, "dongle_b": sides[1].3 }),
        )
        .await?;
    let group_id = field(&group, "id")?;
    api.post(
        &format!("/api/v1/groups/{group_id}/activate"),
        &token,
        json!({}),
    )
    .await?;

    // The demo vehicle: its bus is announced by agent A (whose diagnostics role serves it) and
    // hosts the ECUs of the profile, simulated by `tether can ecu` as a REMP dongle.
    let car_dongle = api
        .post(
            "/api/v1/agent/dongles",
            &sides[0].2,
            json!({ "serial": VEHICLE_SERIAL }),
        )
        .await?;
    let ecus: Vec<Value> = profile
        .ecus
        .iter()
        .map(|e| json!({"name": e.name, "request_id": e.request_id, "response_id": e.response_id}))
        .collect();
    let vehicle = api
        .post(
            "/api/v1/vehicles",
            &token,
            json!({ "name": "demo car", "vin": "1HGCM82633A004352",
                    "dongle_id": field(&car_dongle, "id")?, "ecus": ecus }),
        )
        .await?;
    let vehicle_id = field(&vehicle, "id")?;
    let car_port = free_udp_port()?;

    for (side, serial, agent_token, _) in &sides {
        let port = free_udp_port()?;
        let agent_dir = dir.join(format!("agent-{side}"));
        let config = dir.join(format!("agent-{side}.yaml"));
        // Signed datagrams, as in production: the dongle's key in the agent's `dongle.keys`,
        // and no unsigned serial accepted.
        let key = demo_key();
        let mut yaml = format!(
            "# written by `tether demo`\nserver_url: \"{base}\"\ntoken: \"${{TETHER_AGENT_TOKEN}}\"\ndata_dir: \"{}\"\ndongle:\n  listen: \"127.0.0.1:{port}\"\n  protocol: remp\n  require_auth: true\n  keys:\n    {serial}: \"{key}\"\n",
            agent_dir.display()
        );
        if *side == "a" {
            yaml.push_str(&format!(
                "diagnostics:\n  buses:\n    - {{serial: {VEHICLE_SERIAL}, bus: \"udp://127.0.0.1:{car_port}\"}}\n"
            ));
        }
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        let (agent_name, dongle_name) = if *side == "a" {
            ("agent A", "dongle A")
        } else {
            ("agent B", "dongle B")
        };
        let mut agent = child_command(&exe, &dir, &format!("agent-{side}"))?;
        agent
            .args(["agent", "--config"])
            .arg(&config)
            .env("TETHER_AGENT_TOKEN", agent_token);
        children.add(agent_name, agent.spawn().context("starting an agent")?);
        let mut dongle = child_command(&exe, &dir, &format!("dongle-{side}"))?;
        dongle
            .args(["can", "dongle", "--serial", serial, "--agent"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--replay")
            .arg(&capture)
            .args(["--speed", &args.speed, "--loop", "--record"])
            .arg(dir.join(format!("dongle-{side}-received.log")))
            .env("TETHER_DONGLE_KEY", &key);
        children.add(dongle_name, dongle.spawn().context("starting a dongle")?);
    }

    let metering = if args.metering {
        let (mut cmd, health_port) =
            super::demo_metering::prepare(&exe, &dir, &server_dir, &base, &args.redis_url, "demo")?;
        children.add(
            "metering agent",
            cmd.spawn().context("starting the metering agent")?,
        );
        let sessions = super::demo_metering::push_sessions(&args.redis_url).await?;
        Some(super::demo_metering::MeteringDemo {
            health_port,
            sessions,
        })
    } else {
        None
    };
    // Started after agent A, whose diagnostics bus it sends to (its hello is repeated as
    // keep-alives every second, so a late agent learns it too).
    let mut car = child_command(&exe, &dir, "ecu-car")?;
    car.args(["can", "ecu", "--profile"])
        .arg(&ecu_profile)
        .args(["--bus", &format!("udp://127.0.0.1:{car_port}")])
        .args(["--serial", "DEMO-CAR-ECUS"]);
    children.add(
        "demo car ECUs",
        car.spawn().context("starting the ECU simulator")?,
    );

    let (a, b) = (&sides[0].3, &sides[1].3);
    let group_url = format!("{base}/api/v1/streams/groups/{group_id}/console");
    println!("Tether demo: a server, two agents and two simulated dongles on this machine.");
    println!(
        "  dongles   sign every datagram (REMP keys in agent-a.yaml / agent-b.yaml, require_auth on)"
    );
    println!(
        "  data      {} (wiped at every start; logs in logs/)",
        dir.display()
    );
    println!("  server    {base}");
    println!("  token     {token}");
    println!("  web page  {base}/#token={token}&route=/groups/{group_id}");
    println!("  group     {group_id} (\"demo pair\": DEMO-A {a} <-> DEMO-B {b})");
    println!(
        "  capture   {} (both dongles, looped, speed {})",
        capture.display(),
        args.speed
    );
    println!();
    println!("Live consoles (Server-Sent Events; in a browser append ?access_token=<token>):");
    println!("  group     {group_url}");
    println!("  dongle A  {base}/api/v1/streams/dongles/{a}/console");
    println!("  dongle B  {base}/api/v1/streams/dongles/{b}/console");
    println!("  all       {base}/api/v1/streams/console?groups={group_id}&dongles={a},{b}");
    println!();
    println!("Watch the relay:");
    println!("  curl -N -H \"Authorization: Bearer {token}\" {group_url}");
    if let Some(m) = &metering {
        super::demo_metering::print(m, &base, &token);
    }
    println!();
    println!(
        "Run a diagnostic command on the demo car (its ECUs: {}):",
        profile
            .ecus
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  curl -X POST -H \"Authorization: Bearer {token}\" -H \"Content-Type: application/json\" -d '{{\"vehicle_id\": \"{vehicle_id}\", \"command_name\": \"ReadDTC\", \"command_params\": {{\"ecu\": \"engine\"}}}}' {base}/api/v1/commands"
    );
    println!(
        "  then: curl -H \"Authorization: Bearer {token}\" {base}/api/v1/commands/<command_id>/responses"
    );
    println!();
    println!("Press Ctrl-C to stop.");

    let mut announced = false;
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            biased;
            _ = stop_rx.changed() => {
                println!("stopping…");
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        if let Some((name, status)) = children.exited() {
            // Ctrl-C in a terminal reaches the children too; give our own handler a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if *stop_rx.borrow() {
                println!("stopping…");
                return Ok(());
            }
            bail!(
                "{name} exited unexpectedly ({status}); see the logs in {}",
                dir.join("logs").display()
            );
        }
        if !announced {
            if let Ok(state) = api.get(&format!("/api/v1/groups/{group_id}"), &token).await
                && state["mode"] == "active"
            {
                println!("group is active: frames are flowing both ways");
                announced = true;
            }
            if !announced && started.elapsed() > ACTIVE_PATIENCE {
                println!(
                    "the group is not active yet; see the logs in {}",
                    dir.join("logs").display()
                );
                announced = true;
            }
        }
    }
}
