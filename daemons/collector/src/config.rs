//! The collector's configuration: an optional YAML file (`tether collector --config FILE`)
//! whose keys are the environment names in lower case, `${VAR}` in its strings
//! (`tether-runtime`'s rules), and the environment names themselves, which win over the file
//! — so a deployment of the original collector runs from its environment alone.
//!
//! | key / variable | role | default |
//! |---|---|---|
//! | `ROLE` | both | `vehicle` (`vehicle` / `remote`) |
//! | `DB_PATH` | both | `telemetry.db` |
//! | `LISTEN` | both | `0.0.0.0:8080` (HTTP: dashboard API, or upload + read API) |
//! | `REMOTE_ENDPOINT_URL` | vehicle | none (`ws://host:port/ws/telemetry/upload`; several, comma-separated, are tried in turn) |
//! | `API_KEY` | vehicle | none (sent as `Authorization: Bearer`) |
//! | `ENABLE_CAN_LISTENER` | vehicle | `true` |
//! | `ENABLE_UPLINK_MANAGER` | vehicle | `true` |
//! | `DASHBOARD_RETENTION_S` | vehicle | `3600` |
//! | `MAX_LOCAL_RECORDS` | vehicle | `100000` |
//! | `CAN_BUS` | vehicle | `udp://0.0.0.0:29536` (any `tether can record` address) |
//! | `DBC_PATH` | vehicle | none |
//! | `STATUS_INTERVAL_MS` | vehicle | `1000` (status frames on the bus; 0: only on change) |
//! | `API_KEYS` | remote | none (`vehicle:key,vehicle:key`; adds to the file's `vehicles:`) |
//! | `READ_API_KEY` | remote | none (the read API is then refused) |
//! | `DB_SYNC` | both | `full` (`full` / `normal`, see `docs/protocols/uplink.md`) |

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use relay_core::sqlite::Durability;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tether_runtime::config::{coerce, expand_yaml_strings, opt_string_like};

/// The environment names the collector reads.
pub const ENV_NAMES: &[&str] = &[
    "ROLE",
    "DB_PATH",
    "LISTEN",
    "REMOTE_ENDPOINT_URL",
    "API_KEY",
    "ENABLE_CAN_LISTENER",
    "ENABLE_UPLINK_MANAGER",
    "DASHBOARD_RETENTION_S",
    "MAX_LOCAL_RECORDS",
    "CAN_BUS",
    "DBC_PATH",
    "STATUS_INTERVAL_MS",
    "API_KEYS",
    "READ_API_KEY",
    "DB_SYNC",
];

/// Which side this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// CAN listener, local store, uplink manager, dashboard API.
    Vehicle,
    /// Upload endpoint, inbox, read API.
    Remote,
}

/// A vehicle the remote accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleKey {
    /// The vehicle id its records are stored under.
    #[serde(deserialize_with = "tether_runtime::config::string_like")]
    pub id: String,
    /// The credential it presents.
    #[serde(deserialize_with = "tether_runtime::config::string_like")]
    pub api_key: String,
}

fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "expected true/false, got {s:?}"
            ))),
        },
        other => Err(serde::de::Error::custom(format!(
            "expected true/false, got {other}"
        ))),
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_role")]
    role: Role,
    #[serde(default, deserialize_with = "opt_string_like")]
    db_path: Option<String>,
    #[serde(default, deserialize_with = "opt_string_like")]
    listen: Option<String>,
    #[serde(default, deserialize_with = "opt_string_like")]
    remote_endpoint_url: Option<String>,
    #[serde(default, deserialize_with = "opt_string_like")]
    api_key: Option<String>,
    #[serde(default = "default_true", deserialize_with = "flexible_bool")]
    enable_can_listener: bool,
    #[serde(default = "default_true", deserialize_with = "flexible_bool")]
    enable_uplink_manager: bool,
    #[serde(default)]
    dashboard_retention_s: Option<f64>,
    #[serde(default)]
    max_local_records: Option<u64>,
    #[serde(default, deserialize_with = "opt_string_like")]
    can_bus: Option<String>,
    #[serde(default, deserialize_with = "opt_string_like")]
    dbc_path: Option<String>,
    #[serde(default)]
    status_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "opt_string_like")]
    api_keys: Option<String>,
    #[serde(default)]
    vehicles: Vec<VehicleKey>,
    #[serde(default, deserialize_with = "opt_string_like")]
    read_api_key: Option<String>,
    #[serde(default, deserialize_with = "opt_string_like")]
    db_sync: Option<String>,
}

fn default_role() -> Role {
    Role::Vehicle
}

/// The vehicle role's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleConfig {
    /// The local store (SQLite).
    pub db_path: PathBuf,
    /// The store's sync level.
    pub durability: Durability,
    /// The dashboard API address (`None`: no HTTP server, e.g. inside `tether agent` without
    /// one).
    pub listen: Option<SocketAddr>,
    /// The remote's upload endpoint; several, comma-separated, are tried in turn after a lost
    /// connection ([`VehicleConfig::remote_endpoints`]).
    pub remote_endpoint_url: Option<String>,
    /// The credential presented to the remote.
    pub api_key: Option<String>,
    /// Read frames from `can_bus`.
    pub enable_can_listener: bool,
    /// Uplink to `remote_endpoint_url`.
    pub enable_uplink_manager: bool,
    /// How long uplinked records stay for the dashboard, in seconds.
    pub dashboard_retention_s: u64,
    /// The cap on stored records.
    pub max_local_records: u64,
    /// The bus address (`can_io::transport::open`).
    pub can_bus: String,
    /// A DBC file for `signals` records.
    pub dbc_path: Option<PathBuf>,
    /// Status frames every this many ms (0: only on state changes).
    pub status_interval_ms: u64,
    /// Records per uplink batch.
    pub batch_max: usize,
    /// Records sent and not acknowledged, at most.
    pub window: u64,
}

impl VehicleConfig {
    /// Defaults for a store at `db_path`.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        VehicleConfig {
            db_path: db_path.into(),
            durability: Durability::Full,
            listen: None,
            remote_endpoint_url: None,
            api_key: None,
            enable_can_listener: true,
            enable_uplink_manager: true,
            dashboard_retention_s: 3600,
            max_local_records: relay_core::uplink::DEFAULT_MAX_LOCAL_RECORDS,
            can_bus: "udp://0.0.0.0:29536".to_owned(),
            dbc_path: None,
            status_interval_ms: 1000,
            batch_max: 1024,
            window: 8192,
        }
    }
}

impl VehicleConfig {
    /// The upload endpoints of `remote_endpoint_url`, in the order they are tried.
    pub fn remote_endpoints(&self) -> Vec<&str> {
        self.remote_endpoint_url
            .as_deref()
            .map(|u| {
                u.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The remote role's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// The inbox (SQLite).
    pub db_path: PathBuf,
    /// Its sync level.
    pub durability: Durability,
    /// The HTTP address.
    pub listen: SocketAddr,
    /// Credentials → vehicle ids.
    pub vehicles: Vec<VehicleKey>,
    /// The read API's Bearer key (`None`: reads refused).
    pub read_api_key: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectorConfig {
    /// `ROLE=vehicle`.
    Vehicle(VehicleConfig),
    /// `ROLE=remote`.
    Remote(RemoteConfig),
}

impl CollectorConfig {
    /// The async runtime the role runs on. The vehicle: one thread
    /// ([`crate::vehicle::runtime`]). The remote: two workers (many vehicles at once, each
    /// connection's decoding in parallel with the inbox commits).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            CollectorConfig::Vehicle(_) => crate::vehicle::runtime(),
            CollectorConfig::Remote(_) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        }
    }
}

fn parse_api_keys(text: &str) -> anyhow::Result<Vec<VehicleKey>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (id, key) = pair
                .split_once(':')
                .with_context(|| format!("API_KEYS: {pair:?} is not vehicle:key"))?;
            if id.is_empty() || key.is_empty() {
                bail!("API_KEYS: {pair:?} has an empty vehicle id or key");
            }
            Ok(VehicleKey {
                id: id.to_owned(),
                api_key: key.to_owned(),
            })
        })
        .collect()
}

fn durability(text: Option<&str>) -> anyhow::Result<Durability> {
    match text.unwrap_or("full") {
        "full" => Ok(Durability::Full),
        "normal" => Ok(Durability::Normal),
        other => bail!("DB_SYNC must be full or normal, got {other:?}"),
    }
}

/// Reads the configuration from an optional YAML `file` text and the environment (`env`
/// looks a variable up), validating it.
pub fn load(
    file: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<CollectorConfig> {
    let mut tree = match file {
        Some(text) => {
            let mut yaml: serde_norway::Value =
                serde_norway::from_str(text).context("parsing the collector config file")?;
            expand_yaml_strings(&mut yaml, env).context("expanding ${VAR} in the config file")?;
            let json: Value =
                serde_json::to_value(yaml).context("the config file is not a mapping")?;
            match json {
                Value::Object(_) => json,
                Value::Null => Value::Object(Map::new()),
                _ => bail!("the collector config file must be a mapping"),
            }
        }
        None => Value::Object(Map::new()),
    };
    if let Value::Object(map) = &mut tree {
        for name in ENV_NAMES {
            if let Some(value) = env(name) {
                let key = name.to_ascii_lowercase();
                let value = match *name {
                    // Keys and paths stay strings even when they look like numbers.
                    "API_KEY" | "API_KEYS" | "READ_API_KEY" | "DB_PATH" | "DBC_PATH" => {
                        Value::String(value)
                    }
                    _ => coerce(value),
                };
                map.insert(key, value);
            }
        }
    }
    from_tree(tree)
}

/// What the `telemetry:` section of `tether agent` takes from the rest of the agent's file.
#[derive(Debug, Clone, Default)]
pub struct SectionDefaults {
    /// `DB_PATH` when the section has none (`<data_dir>/telemetry.db`).
    pub db_path: Option<PathBuf>,
    /// `REMOTE_ENDPOINT_URL` when the section has none (from the agent's `server_url`).
    pub remote_endpoint_url: Option<String>,
    /// `API_KEY` when the section has none (the agent's token).
    pub api_key: Option<String>,
}

/// The vehicle role from a `telemetry:` section of `tether agent` (the same keys as the
/// collector's file, without `role`; no dashboard API unless it sets `listen`).
pub fn vehicle_from_section(
    section: &Value,
    defaults: &SectionDefaults,
) -> anyhow::Result<VehicleConfig> {
    let mut map = match section {
        Value::Object(map) => map.clone(),
        Value::Null => Map::new(),
        _ => bail!("telemetry: must be a mapping"),
    };
    if map.contains_key("role") {
        bail!("telemetry: is always the vehicle role; remove `role`");
    }
    let has_listen = map.contains_key("listen");
    let mut fill = |key: &str, value: Option<String>| {
        if let Some(v) = value
            && !map.contains_key(key)
        {
            map.insert(key.to_owned(), Value::String(v));
        }
    };
    fill(
        "db_path",
        defaults.db_path.as_ref().map(|p| p.display().to_string()),
    );
    fill("remote_endpoint_url", defaults.remote_endpoint_url.clone());
    fill("api_key", defaults.api_key.clone());
    match from_tree(Value::Object(map)).context("telemetry:")? {
        CollectorConfig::Vehicle(mut v) => {
            if !has_listen {
                v.listen = None;
            }
            Ok(v)
        }
        CollectorConfig::Remote(_) => bail!("telemetry: is always the vehicle role"),
    }
}

fn from_tree(tree: Value) -> anyhow::Result<CollectorConfig> {
    let raw: Raw = serde_json::from_value(tree).context("reading the collector config")?;
    let listen: SocketAddr = raw
        .listen
        .as_deref()
        .unwrap_or("0.0.0.0:8080")
        .parse()
        .context("LISTEN must be HOST:PORT with an IP address")?;
    let db_path = PathBuf::from(raw.db_path.unwrap_or_else(|| "telemetry.db".to_owned()));
    let durability = durability(raw.db_sync.as_deref())?;
    match raw.role {
        Role::Vehicle => {
            let mut v = VehicleConfig::new(db_path);
            v.durability = durability;
            v.listen = Some(listen);
            v.enable_can_listener = raw.enable_can_listener;
            v.enable_uplink_manager = raw.enable_uplink_manager;
            if let Some(s) = raw.dashboard_retention_s {
                v.dashboard_retention_s =
                    tether_runtime::config::secs("DASHBOARD_RETENTION_S", s)?.as_secs();
            }
            if let Some(n) = raw.max_local_records {
                if n == 0 {
                    bail!("MAX_LOCAL_RECORDS must be at least 1");
                }
                v.max_local_records = n;
            }
            if let Some(bus) = raw.can_bus {
                v.can_bus = bus;
            }
            if v.enable_can_listener {
                crate::vehicle::listener::check_bus_address(&v.can_bus)?;
            }
            v.dbc_path = raw.dbc_path.map(PathBuf::from);
            if let Some(ms) = raw.status_interval_ms {
                v.status_interval_ms = ms;
            }
            v.api_key = raw.api_key;
            v.remote_endpoint_url = raw.remote_endpoint_url;
            if v.enable_uplink_manager {
                let urls = v.remote_endpoints();
                if urls.is_empty() {
                    bail!("REMOTE_ENDPOINT_URL is required with ENABLE_UPLINK_MANAGER");
                }
                for url in urls {
                    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                        bail!("REMOTE_ENDPOINT_URL must be ws:// or wss:// URLs, got {url:?}");
                    }
                }
            }
            Ok(CollectorConfig::Vehicle(v))
        }
        Role::Remote => {
            let mut vehicles = raw.vehicles;
            if let Some(keys) = raw.api_keys.as_deref() {
                vehicles.extend(parse_api_keys(keys)?);
            }
            for (i, a) in vehicles.iter().enumerate() {
                if a.id.is_empty()
                    || a.id.len() > relay_core::uplink::MAX_SOURCE_LEN
                    || a.id.chars().any(char::is_control)
                {
                    bail!(
                        "vehicle id {:?} must be 1..=128 bytes without control characters",
                        a.id
                    );
                }
                if vehicles[..i].iter().any(|b| b.api_key == a.api_key) {
                    bail!("vehicles {:?} and another one share an API key", a.id);
                }
            }
            Ok(CollectorConfig::Remote(RemoteConfig {
                db_path,
                durability,
                listen,
                vehicles,
                read_api_key: raw.read_api_key,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_environment_alone_configures_a_vehicle() -> anyhow::Result<()> {
        let e = env(&[
            ("ROLE", "vehicle"),
            ("DB_PATH", "/tmp/v.db"),
            (
                "REMOTE_ENDPOINT_URL",
                "ws://127.0.0.1:9/ws/telemetry/upload",
            ),
            ("ENABLE_CAN_LISTENER", "0"),
            ("DASHBOARD_RETENTION_S", "60"),
            ("MAX_LOCAL_RECORDS", "500"),
            ("API_KEY", "1234"),
            ("LISTEN", "127.0.0.1:0"),
        ]);
        let CollectorConfig::Vehicle(v) = load(None, &e)? else {
            bail!("not a vehicle");
        };
        assert_eq!(v.db_path, PathBuf::from("/tmp/v.db"));
        assert!(!v.enable_can_listener && v.enable_uplink_manager);
        assert_eq!((v.dashboard_retention_s, v.max_local_records), (60, 500));
        assert_eq!(v.api_key.as_deref(), Some("1234"));
        assert_eq!(
            v.remote_endpoints(),
            ["ws://127.0.0.1:9/ws/telemetry/upload"]
        );
        let e = env(&[
            ("ENABLE_CAN_LISTENER", "0"),
            ("REMOTE_ENDPOINT_URL", "ws://a:1/up, wss://b:2/up"),
        ]);
        let CollectorConfig::Vehicle(v) = load(None, &e)? else {
            bail!("not a vehicle");
        };
        assert_eq!(v.remote_endpoints(), ["ws://a:1/up", "wss://b:2/up"]);
        Ok(())
    }

    #[test]
    fn the_environment_wins_over_the_file_and_keys_merge() -> anyhow::Result<()> {
        let file =
            "role: remote\nlisten: 127.0.0.1:1\nvehicles:\n  - id: car-1\n    api_key: ${K1}\n";
        let e = env(&[
            ("K1", "k-one"),
            ("API_KEYS", "car-2:k-two"),
            ("LISTEN", "127.0.0.1:2"),
        ]);
        let CollectorConfig::Remote(r) = load(Some(file), &e)? else {
            bail!("not a remote");
        };
        assert_eq!(r.listen.port(), 2);
        let ids: Vec<_> = r.vehicles.iter().map(|v| (&*v.id, &*v.api_key)).collect();
        assert_eq!(ids, vec![("car-1", "k-one"), ("car-2", "k-two")]);
        Ok(())
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let cases: &[&'static [(&'static str, &'static str)]] = &[
            &[("ROLE", "cloud")],
            &[("ROLE", "vehicle"), ("ENABLE_CAN_LISTENER", "false")],
            &[
                ("ROLE", "vehicle"),
                ("REMOTE_ENDPOINT_URL", "http://x"),
                ("ENABLE_CAN_LISTENER", "no"),
            ],
            &[("ROLE", "remote"), ("API_KEYS", "car-1")],
            &[("ROLE", "remote"), ("API_KEYS", "a:k,b:k")],
            &[
                ("REMOTE_ENDPOINT_URL", "ws://a:1/up,http://b"),
                ("ENABLE_CAN_LISTENER", "no"),
            ],
            &[
                ("ROLE", "vehicle"),
                ("MAX_LOCAL_RECORDS", "0"),
                ("ENABLE_UPLINK_MANAGER", "false"),
            ],
            &[
                ("ROLE", "vehicle"),
                ("CAN_BUS", "tcp://x"),
                ("ENABLE_UPLINK_MANAGER", "false"),
            ],
        ];
        for vars in cases {
            assert!(load(None, &env(vars)).is_err(), "{vars:?} accepted");
        }
    }
}
