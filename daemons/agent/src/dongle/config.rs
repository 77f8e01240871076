//! The `dongle:` section of the agent file and its validated form, [`DongleRole`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use tether_runtime::config::{opt_string_like, secs, string_like};

use crate::servers::{ServerUrlSetting, ServerUrls};

/// The dongle UDP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DongleProtocol {
    /// REMP (`docs/protocols/remp.md`): serials, hellos, keep-alives, loss accounting.
    Remp,
}

/// How hard the outbox syncs a commit to disk (`outbox_sync`; WAL in both cases): `normal`
/// (default) survives a crash of the agent process (`kill -9`), `full` also power loss (an
/// fsync per commit). The one durability enum of the code base.
pub use relay_core::sqlite::Durability;

fn default_outbox_sync() -> Durability {
    Durability::Normal
}

/// `dongle:` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DongleSection {
    /// UDP address dongles send to, e.g. `0.0.0.0:20100`.
    #[serde(deserialize_with = "string_like")]
    pub listen: String,
    /// `remp` (the only protocol that identifies dongles).
    #[serde(default = "default_protocol")]
    pub protocol: DongleProtocol,
    /// Most frames kept in the outbox per dongle (acknowledged ones are removed at once); when
    /// full, the oldest unacknowledged frame is dropped and counted (`outbox_full`).
    #[serde(default = "default_outbox_max")]
    pub outbox_max_frames: u64,
    /// `normal` (default) or `full`.
    #[serde(default = "default_outbox_sync")]
    pub outbox_sync: Durability,
    /// Most frames in one `frames` message.
    #[serde(default = "default_batch_max")]
    pub batch_max_frames: usize,
    /// Most frames sent and not yet acknowledged per connection.
    #[serde(default = "default_window")]
    pub send_window_frames: u64,
    /// Seconds between assignment polls while a dongle has no active group.
    #[serde(default = "one")]
    pub assignment_poll: f64,
    /// Seconds between assignment polls once a dongle has an active group.
    #[serde(default = "ten")]
    pub assignment_poll_active: f64,
    /// Smallest reconnect / retry delay, seconds.
    #[serde(default = "point_two")]
    pub reconnect_min: f64,
    /// Largest reconnect / retry delay, seconds (jittered exponential backoff in between).
    #[serde(default = "ten")]
    pub reconnect_max: f64,
    /// `HOST:PORT` of `GET /metrics` (Prometheus text); off when absent.
    #[serde(default, deserialize_with = "opt_string_like")]
    pub metrics_listen: Option<String>,
    /// Seconds between structured log lines with the totals (0 = off).
    #[serde(default = "thirty")]
    pub stats_interval: f64,
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter.
    #[serde(default = "info", deserialize_with = "string_like")]
    pub log_level: String,
    /// Per-dongle keys, hex: `SERIAL: KEY`, or `SERIAL: [NEW, OLD]` while rotating. A serial
    /// with a key must sign its datagrams (`docs/protocols/remp.md`, authentication).
    #[serde(default)]
    pub keys: std::collections::BTreeMap<String, KeyList>,
    /// Refuse every dongle without a key (the production setting).
    #[serde(default)]
    pub require_auth: bool,
}

/// One key or several (rotation).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyList {
    /// One key.
    One(String),
    /// Several keys, all accepted.
    Many(Vec<String>),
}

fn default_protocol() -> DongleProtocol {
    DongleProtocol::Remp
}
fn default_outbox_max() -> u64 {
    100_000
}
fn default_batch_max() -> usize {
    256
}
fn default_window() -> u64 {
    8192
}
fn one() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}
fn thirty() -> f64 {
    30.0
}
fn point_two() -> f64 {
    0.2
}
fn info() -> String {
    "info".into()
}

/// The dongle role's settings, validated and resolved.
#[derive(Debug, Clone)]
pub struct DongleRole {
    /// The servers, tried in turn when a connection is lost (`/ws/data` and the REST API on
    /// each).
    pub servers: ServerUrls,
    /// Agent token.
    pub token: String,
    /// State directory.
    pub data_dir: PathBuf,
    /// UDP listen address.
    pub listen: SocketAddr,
    /// UDP protocol.
    pub protocol: DongleProtocol,
    /// Outbox cap per dongle stream.
    pub outbox_max_frames: u64,
    /// Outbox durability.
    pub outbox_sync: Durability,
    /// Frames per `frames` message.
    pub batch_max_frames: usize,
    /// Unacknowledged frames in flight per connection.
    pub send_window_frames: u64,
    /// Poll period without an active group.
    pub assignment_poll: Duration,
    /// Poll period with an active group.
    pub assignment_poll_active: Duration,
    /// Backoff floor.
    pub reconnect_min: Duration,
    /// Backoff ceiling.
    pub reconnect_max: Duration,
    /// Metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Totals log period (`None` = off).
    pub stats_interval: Option<Duration>,
    /// Log filter.
    pub log_level: String,
    /// Keys per serial.
    pub keys: std::collections::HashMap<String, Vec<can_io::wire::remp::RempKey>>,
    /// Refuse serials without a key.
    pub require_auth: bool,
}

impl DongleRole {
    /// Validate the `dongle:` section `d` together with the top-level settings of the agent file
    /// it needs (`server_url`, `token`, `data_dir`; see `AgentConfig::dongle_role`).
    pub fn resolve(
        d: &DongleSection,
        server_url: Option<&ServerUrlSetting>,
        token: Option<&str>,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let (servers, token) = server_and_token(server_url, token, "dongle")?;
        let data_dir = data_dir
            .map(Path::to_path_buf)
            .context("data_dir is required by the dongle role")?;
        let listen: SocketAddr = d.listen.parse().with_context(|| {
            format!(
                "dongle.listen must be an IP:PORT address, got {:?}",
                d.listen
            )
        })?;
        let metrics_listen = match &d.metrics_listen {
            Some(m) => Some(m.parse::<SocketAddr>().with_context(|| {
                format!("dongle.metrics_listen must be an IP:PORT address, got {m:?}")
            })?),
            None => None,
        };
        if d.outbox_max_frames == 0 {
            bail!("dongle.outbox_max_frames must be positive");
        }
        if d.batch_max_frames == 0 || d.batch_max_frames > relay_core::protocol::MAX_BATCH_FRAMES {
            bail!(
                "dongle.batch_max_frames must be 1–{}",
                relay_core::protocol::MAX_BATCH_FRAMES
            );
        }
        if d.send_window_frames < d.batch_max_frames as u64 {
            bail!("dongle.send_window_frames must be at least batch_max_frames");
        }
        let poll = secs("dongle.assignment_poll", d.assignment_poll)?;
        let poll_active = secs("dongle.assignment_poll_active", d.assignment_poll_active)?;
        let rmin = secs("dongle.reconnect_min", d.reconnect_min)?;
        let rmax = secs("dongle.reconnect_max", d.reconnect_max)?;
        let stats = secs("dongle.stats_interval", d.stats_interval)?;
        if poll < Duration::from_millis(50) || poll_active < Duration::from_millis(50) {
            bail!("dongle assignment poll intervals must be at least 0.05 s");
        }
        if rmin < Duration::from_millis(10) || rmax < rmin {
            bail!("dongle.reconnect_min must be at least 0.01 s and at most reconnect_max");
        }
        let mut keys = std::collections::HashMap::new();
        for (serial, list) in &d.keys {
            can_io::wire::remp::validate_serial(serial)
                .map_err(|e| anyhow::anyhow!("dongle.keys: {serial:?}: {e}"))?;
            let texts = match list {
                KeyList::One(k) => std::slice::from_ref(k),
                KeyList::Many(ks) => ks.as_slice(),
            };
            if texts.is_empty() {
                bail!("dongle.keys.{serial}: no key");
            }
            let parsed = texts
                .iter()
                .map(|k| can_io::wire::remp::RempKey::from_hex(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("dongle.keys.{serial}: {e}"))?;
            keys.insert(serial.clone(), parsed);
        }
        Ok(DongleRole {
            keys,
            require_auth: d.require_auth,
            servers,
            token,
            data_dir,
            listen,
            protocol: d.protocol,
            outbox_max_frames: d.outbox_max_frames,
            outbox_sync: d.outbox_sync,
            batch_max_frames: d.batch_max_frames,
            send_window_frames: d.send_window_frames,
            assignment_poll: poll,
            assignment_poll_active: poll_active,
            reconnect_min: rmin,
            reconnect_max: rmax,
            metrics_listen,
            stats_interval: (!stats.is_zero()).then_some(stats),
            log_level: d.log_level.clone(),
        })
    }
}

/// The checked `server_url` list and the token, for a role (`role` names it in errors).
pub(crate) fn server_and_token(
    server_url: Option<&ServerUrlSetting>,
    token: Option<&str>,
    role: &str,
) -> anyhow::Result<(ServerUrls, String)> {
    let servers = ServerUrls::parse(
        server_url.with_context(|| format!("server_url is required by the {role} role"))?,
    )?;
    let token = token
        .map(str::to_owned)
        .with_context(|| format!("token is required by the {role} role"))?;
    if token.trim().is_empty() {
        bail!("token is empty");
    }
    if token.chars().any(char::is_control) {
        bail!("token contains control characters");
    }
    Ok((servers, token))
}
