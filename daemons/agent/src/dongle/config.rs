//! The `dongle:` section of the agent file and its validated form, [`DongleRole`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use tether_runtime::config::{opt_string_like, secs, string_like};

use crate::config::defaults::{info, one, point_two, ten, thirty};
use crate::servers::{ServerUrlSetting, ServerUrls};

/// How the role reaches its dongles (`dongle.protocol`; `docs/agent.md`, "Protocols").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DongleProtocol {
    /// REMP over UDP (`docs/protocols/remp.md`): any number of dongles, each naming itself by
    /// serial; hellos, keep-alives, loss accounting, optional keys.
    Remp,
    /// A local SocketCAN interface (an agent on the vehicle): one dongle, its serial from
    /// `dongle.serial`.
    Socketcan,
    /// cannelloni v2 datagrams over UDP from one peer: one dongle, its serial from
    /// `dongle.serial`.
    Cannelloni,
}

impl DongleProtocol {
    /// The name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            DongleProtocol::Remp => "remp",
            DongleProtocol::Socketcan => "socketcan",
            DongleProtocol::Cannelloni => "cannelloni",
        }
    }
}

/// Where the role's frames come from and go to, by protocol: the only part of the role that
/// differs between protocols (the outbox, worker and assignment poller are the same).
#[derive(Debug, Clone)]
pub enum DongleEdge {
    /// REMP dongles on a UDP socket, learned by serial.
    Remp {
        /// UDP listen address.
        listen: SocketAddr,
        /// Keys per serial.
        keys: std::collections::HashMap<String, Vec<can_io::wire::remp::RempKey>>,
        /// Refuse serials without a key.
        require_auth: bool,
    },
    /// One dongle on a local SocketCAN interface.
    SocketCan {
        /// The interface (`can0`).
        interface: String,
        /// The serial the dongle is announced and relayed under.
        serial: String,
    },
    /// One dongle sending cannelloni datagrams to a UDP socket.
    Cannelloni {
        /// UDP listen address.
        listen: SocketAddr,
        /// Where frames for the dongle go; `None`: the address last heard from.
        peer: Option<SocketAddr>,
        /// The serial the dongle is announced and relayed under.
        serial: String,
    },
}

impl DongleEdge {
    /// The protocol.
    pub fn protocol(&self) -> DongleProtocol {
        match self {
            DongleEdge::Remp { .. } => DongleProtocol::Remp,
            DongleEdge::SocketCan { .. } => DongleProtocol::Socketcan,
            DongleEdge::Cannelloni { .. } => DongleProtocol::Cannelloni,
        }
    }
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
    /// `remp` and `cannelloni`: the UDP address dongles send to, e.g. `0.0.0.0:20100`;
    /// `socketcan`: the interface, `can0` or `socketcan://can0`.
    #[serde(deserialize_with = "string_like")]
    pub listen: String,
    /// `remp` (default), `socketcan` or `cannelloni`.
    #[serde(default = "default_protocol")]
    pub protocol: DongleProtocol,
    /// `socketcan` and `cannelloni` (required there, refused with `remp`): the serial of the
    /// one dongle behind the interface or the UDP peer, as the server knows it.
    #[serde(default, deserialize_with = "opt_string_like")]
    pub serial: Option<String>,
    /// `cannelloni` only: `IP:PORT` frames for the dongle are sent to; without it, the address
    /// the last valid datagram came from.
    #[serde(default, deserialize_with = "opt_string_like")]
    pub peer: Option<String>,
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
    /// The protocol and its settings.
    pub edge: DongleEdge,
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
        let edge = resolve_edge(d)?;
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
        Ok(DongleRole {
            servers,
            token,
            data_dir,
            edge,
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

impl DongleRole {
    /// The protocol.
    pub fn protocol(&self) -> DongleProtocol {
        self.edge.protocol()
    }
}

/// `listen`, `serial`, `peer`, `keys` and `require_auth`, checked against the protocol: a
/// setting another protocol has and this one does not is refused, not ignored.
fn resolve_edge(d: &DongleSection) -> anyhow::Result<DongleEdge> {
    let protocol = d.protocol.as_str();
    let udp_listen = || -> anyhow::Result<SocketAddr> {
        d.listen.parse().with_context(|| {
            format!(
                "dongle.listen must be an IP:PORT address (protocol {protocol}), got {:?}",
                d.listen
            )
        })
    };
    if d.peer.is_some() && d.protocol != DongleProtocol::Cannelloni {
        bail!(
            "dongle.peer is a setting of protocol cannelloni, not {protocol} (remove it): {}",
            match d.protocol {
                DongleProtocol::Remp => "REMP answers each dongle where it was last heard from",
                _ => "a CAN interface has no peer address",
            }
        );
    }
    let serial = match (d.protocol, &d.serial) {
        (DongleProtocol::Remp, None) => {
            return Ok(DongleEdge::Remp {
                listen: udp_listen()?,
                keys: remp_keys(&d.keys)?,
                require_auth: d.require_auth,
            });
        }
        (DongleProtocol::Remp, Some(_)) => bail!(
            "dongle.serial is a setting of protocol socketcan and cannelloni: REMP dongles name themselves (remove it)"
        ),
        (_, None) => bail!(
            "dongle.serial is required by protocol {protocol}: the serial the server knows the dongle by (the protocol carries none)"
        ),
        (_, Some(serial)) => serial.clone(),
    };
    if !d.keys.is_empty() || d.require_auth {
        bail!(
            "dongle.keys and dongle.require_auth authenticate REMP datagrams; protocol {protocol} has no authentication (remove them, and keep the interface or the UDP port on a trusted network)"
        );
    }
    can_io::wire::remp::validate_serial(&serial)
        .map_err(|e| anyhow::anyhow!("dongle.serial {serial:?}: {e}"))?;
    if d.protocol == DongleProtocol::Socketcan {
        return Ok(DongleEdge::SocketCan {
            interface: socketcan_interface(&d.listen)?,
            serial,
        });
    }
    let peer = match &d.peer {
        Some(p) => Some(
            p.parse::<SocketAddr>()
                .with_context(|| format!("dongle.peer must be an IP:PORT address, got {p:?}"))?,
        ),
        None => None,
    };
    Ok(DongleEdge::Cannelloni {
        listen: udp_listen()?,
        peer,
        serial,
    })
}

/// `dongle.keys`, checked and parsed.
fn remp_keys(
    keys: &std::collections::BTreeMap<String, KeyList>,
) -> anyhow::Result<std::collections::HashMap<String, Vec<can_io::wire::remp::RempKey>>> {
    let mut parsed_keys = std::collections::HashMap::new();
    for (serial, list) in keys {
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
        parsed_keys.insert(serial.clone(), parsed);
    }
    Ok(parsed_keys)
}

/// The interface of `dongle.listen` with protocol socketcan: `can0` or `socketcan://can0`,
/// checked as `tether can … --bus socketcan://IFACE` checks it.
pub fn socketcan_interface(listen: &str) -> anyhow::Result<String> {
    let address = if listen.contains("://") {
        listen.to_owned()
    } else {
        format!("socketcan://{listen}")
    };
    match address.parse::<can_io::transport::open::BusAddress>() {
        Ok(can_io::transport::open::BusAddress::SocketCan(interface)) => Ok(interface),
        Ok(other) => bail!(
            "dongle.listen with protocol socketcan must name a CAN interface (can0 or socketcan://can0), got {other}"
        ),
        Err(e) => bail!("dongle.listen {listen:?}: {e}"),
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
