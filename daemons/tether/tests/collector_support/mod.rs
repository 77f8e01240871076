//! Shared by the `collector_*` tests: the real `tether collector` binary in either role, a real
//! socketcand hub on loopback as the vehicle's CAN bus (the test is another client of it),
//! and readers of both roles' HTTP APIs.

#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use can_io::CanRecord;
use can_io::frame::{CanFrame, CanId, DataFrame, Direction};
use can_io::transport::CanBus;
use can_io::transport::socketcand::{SocketcandClient, SocketcandServer};
use serde_json::Value;

pub const READ_KEY: &str = "read-key-1";
pub const GUARD: Duration = Duration::from_secs(60);

pub use tether_testkit::free_tcp_port as free_port;
pub use tether_testkit::rest::get_json;

/// A `tether collector` process; killed (SIGKILL) when dropped.
pub struct Collector {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Collector {
    pub fn spawn(dir: &Path, name: &str, env: &[(&str, String)]) -> Collector {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.arg("collector")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        let mut http = String::new();
        for (k, v) in env {
            cmd.env(k, v);
            if *k == "LISTEN" {
                http = format!("http://{v}");
            }
        }
        Collector {
            child: cmd.spawn().unwrap(),
            http,
            log,
        }
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) {
        tether_testkit::process::kill9(&mut self.child);
    }

    /// SIGTERM, and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        tether_testkit::process::terminate(&mut self.child, Duration::from_secs(20))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn remote_env(db: &Path, port: u16, keys: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ROLE", "remote".into()),
        ("DB_PATH", db.display().to_string()),
        ("LISTEN", format!("127.0.0.1:{port}")),
        ("API_KEYS", keys.into()),
        ("READ_API_KEY", READ_KEY.into()),
    ]
}

pub fn vehicle_env(
    db: &Path,
    http_port: u16,
    remote_port: u16,
    key: &str,
    bus: SocketAddr,
) -> Vec<(&'static str, String)> {
    vec![
        ("ROLE", "vehicle".into()),
        ("DB_PATH", db.display().to_string()),
        ("LISTEN", format!("127.0.0.1:{http_port}")),
        (
            "REMOTE_ENDPOINT_URL",
            format!("ws://127.0.0.1:{remote_port}/ws/telemetry/upload"),
        ),
        ("API_KEY", key.into()),
        ("CAN_BUS", format!("socketcand://{bus}/vcan0")),
        ("STATUS_INTERVAL_MS", "200".into()),
        ("DASHBOARD_RETENTION_S", "86400".into()),
    ]
}

/// A socketcand hub (the vehicle's bus) and the test's own client on it.
pub struct Bus {
    pub addr: SocketAddr,
    pub client: SocketcandClient,
    drain: tokio::task::JoinHandle<()>,
}

impl Bus {
    pub async fn start() -> Bus {
        let mut server = SocketcandServer::bind("127.0.0.1:0".parse().unwrap(), "vcan0", true)
            .await
            .unwrap();
        let addr = server.local_addr();
        // The hub's own application side: drain it so clients never wait on it.
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = server.recv().await {} });
        let client = SocketcandClient::connect(addr, "vcan0").await.unwrap();
        Bus {
            addr,
            client,
            drain,
        }
    }

    /// Sends frames with counters `range` (id 0x123, the counter in the first 4 bytes),
    /// paced so that no socketcand queue overflows.
    pub async fn send_counters(&mut self, range: std::ops::Range<u32>) {
        for (i, n) in range.enumerate() {
            let mut data = [0u8; 8];
            data[..4].copy_from_slice(&n.to_le_bytes());
            let frame = DataFrame::new(CanId::new(0x123, false).unwrap(), &data).unwrap();
            let rec = CanRecord::new(
                can_io::transport::now_ns(),
                "vcan0".into(),
                Direction::Tx,
                CanFrame::Data(frame),
            );
            self.client.send(&rec).await.unwrap();
            if i % 50 == 49 {
                self.client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.client.flush().await.unwrap();
    }

    /// Status frames (`0x500101`) received within `wait`: (state, queue) pairs, queue taken
    /// from the `0x500102` frame that follows.
    pub async fn status_frames(&mut self, wait: Duration) -> Vec<(u8, u32)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        let mut state = None;
        while let Ok(Ok(Some(r))) = tokio::time::timeout_at(deadline, self.client.recv()).await {
            let Some(id) = r.frame.id() else { continue };
            let d = r.frame.data();
            match id.raw() {
                0x50_0101 if id.is_extended() => state = Some(d[0]),
                0x50_0102 if id.is_extended() => {
                    if let Some(s) = state.take() {
                        out.push((s, u32::from_le_bytes([d[0], d[1], d[2], d[3]])));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

pub async fn vehicle_status(c: &Collector) -> Option<Value> {
    get_json(&format!("{}/api/v1/telemetry/status", c.http), None).await
}

/// Polls the telemetry status at `url` until `want` holds for it → that status (panics after
/// `GUARD` with `what`).
pub async fn wait_status_at(url: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, || async {
        get_json(url, None).await.filter(|s| want(s))
    })
    .await
}

/// [`wait_status_at`] on a vehicle collector's status.
pub async fn wait_status(c: &Collector, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    wait_status_at(&format!("{}/api/v1/telemetry/status", c.http), what, want).await
}

/// Polls until the remote at `remote` holds exactly `n` records for `vehicle`.
pub async fn wait_remote_records(remote: &str, vehicle: &str, n: usize) {
    let what = format!("{n} records of {vehicle} at the remote");
    wait_for(&what, || async {
        (remote_records(remote, vehicle).await.len() == n).then_some(())
    })
    .await
}

/// What a vehicle ↔ remote test starts from: a scratch directory, the vehicle's bus, and a
/// port for each role.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub bus: Bus,
    pub remote_port: u16,
    pub vehicle_port: u16,
}

impl Site {
    pub async fn start() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
            bus: Bus::start().await,
            remote_port: free_port(),
            vehicle_port: free_port(),
        }
    }

    /// The remote's environment ([`remote_env`]) with its database in the site's directory.
    pub fn remote_env(&self, keys: &str) -> Vec<(&'static str, String)> {
        remote_env(&self.dir.path().join("remote.db"), self.remote_port, keys)
    }

    /// The vehicle's environment ([`vehicle_env`]): its database in the site's directory, the
    /// site's bus, uplinking to the site's remote with `key`.
    pub fn vehicle_env(&self, key: &str) -> Vec<(&'static str, String)> {
        let db = self.dir.path().join("vehicle.db");
        vehicle_env(&db, self.vehicle_port, self.remote_port, key, self.bus.addr)
    }

    /// Starts a collector named `name` (its log file) in the site's directory.
    pub fn spawn(&self, name: &str, env: &[(&str, String)]) -> Collector {
        Collector::spawn(self.dir.path(), name, env)
    }
}

/// Polls `f` until it returns `Some`, or panics after `GUARD` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tether_testkit::wait_for(GUARD, what, f).await
}

/// The counter of a `frame` record.
pub fn counter(record: &Value) -> u32 {
    assert_eq!(record["kind"], "frame", "{record}");
    let data = hex::decode(record["frame"]["data"].as_str().unwrap()).unwrap();
    u32::from_le_bytes([data[0], data[1], data[2], data[3]])
}

/// Every record the remote holds for `vehicle`: (seq, counter), in the API's order.
pub async fn remote_records(remote: &str, vehicle: &str) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let url = format!(
            "{remote}/api/v1/telemetry/vehicles/{vehicle}/records?after_seq={after}&limit=1000"
        );
        let page = get_json(&url, Some(READ_KEY)).await.expect("records page");
        let items = page["items"].as_array().unwrap();
        for item in items {
            out.push((item["seq"].as_u64().unwrap(), counter(&item["record"])));
        }
        match page["next_after_seq"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Every record the vehicle stores: (seq, counter, uplinked), oldest first.
pub async fn vehicle_records(vehicle: &Collector) -> Vec<(u64, u32, bool)> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{}/api/v1/telemetry/recent?limit=1000", vehicle.http);
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let page = get_json(&url, None).await.expect("recent page");
        for item in page["items"].as_array().unwrap() {
            out.push((
                item["seq"].as_u64().unwrap(),
                counter(&item["record"]),
                item["uplinked"].as_bool().unwrap(),
            ));
        }
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    out.reverse();
    out
}
