//! `tether agent` configuration: a YAML file with one optional section per role, `${VAR}`
//! substitution, environment overrides and validation.
//!
//! Order of application: parse YAML → replace `${VAR}` in every string by the rules of
//! [`tether_runtime::config`] (an unset variable is an error naming it; `$${` writes a literal
//! `${`) → apply overrides from environment variables
//! named `TETHER_<SECTION>__<KEY>__<SUBKEY>…` (double underscore separates levels; case does not
//! matter, e.g. `TETHER_METERING__CONTROL_PLANE__API_KEY`) → deserialize and validate.
//! Substituted and overriding values that read back exactly as a number or boolean become one,
//! and string fields accept numbers, so `port: ${PORT}` and `api_key: ${KEY}` both work.

use std::path::Path;

use crate::diagnostics::config::{DiagnosticsRole, DiagnosticsSection};
use crate::dongle::config::{DongleRole, DongleSection};
use crate::servers::{ServerUrlSetting, ServerUrls};
use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Map, Value};
use tether_runtime::config::{
    apply_env_overrides, expand_json_strings, located, opt_string_like, secs, string_like,
};
use tether_runtime::logging::check_log_level;

use self::defaults::{five, point_two, ten, thirty, three, two, yes};

/// The defaults of the agent file's keys, for `#[serde(default = "…")]`: one function per
/// value, shared by every section of the file.
pub(crate) mod defaults {
    pub(crate) fn yes() -> bool {
        true
    }
    pub(crate) fn one() -> f64 {
        1.0
    }
    pub(crate) fn two() -> u32 {
        2
    }
    pub(crate) fn three() -> u32 {
        3
    }
    pub(crate) fn five() -> f64 {
        5.0
    }
    pub(crate) fn ten() -> f64 {
        10.0
    }
    pub(crate) fn thirty() -> f64 {
        30.0
    }
    pub(crate) fn point_two() -> f64 {
        0.2
    }
    pub(crate) fn info() -> String {
        "info".into()
    }
}

/// Which layout a metering configuration was written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Every role under its own section (`metering:`, `dongle:`).
    #[default]
    Sections,
    /// The metering specification's file: top-level `server`, `redis`, `control_plane`,
    /// `monitoring` (and optionally `queues`), read as the `metering:` section.
    Specification,
}

impl Layout {
    /// One line for `--check-config`.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Sections => "role sections (`metering:` / `dongle:`)",
            Layout::Specification => {
                "metering specification (top-level server, redis, control_plane, monitoring)"
            }
        }
    }
}

/// Top-level keys of the specification's layout; they become the `metering:` section.
const SPEC_SECTIONS: [&str; 5] = ["server", "redis", "control_plane", "monitoring", "queues"];

/// The whole agent file. Roles not present are off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The layout the file was written in (not a key of the file).
    #[serde(skip)]
    pub layout: Layout,
    /// The Tether server (`http://` or `https://`), used by the dongle, diagnostics and
    /// telemetry roles: one URL, a list, or comma-separated URLs — the servers tried in turn
    /// when a connection is lost ([`crate::servers`]).
    #[serde(default)]
    pub server_url: Option<ServerUrlSetting>,
    /// The agent's API token (`POST /api/v1/agents`), used by the dongle role.
    #[serde(default, deserialize_with = "opt_string_like")]
    pub token: Option<String>,
    /// Where the agent keeps its state (the dongle role's outbox and cursors).
    #[serde(default)]
    pub data_dir: Option<std::path::PathBuf>,
    /// The usage-metering role.
    #[serde(default)]
    pub metering: Option<MeteringConfig>,
    /// The dongle role (REMP dongles ↔ `/ws/data`).
    #[serde(default)]
    pub dongle: Option<DongleSection>,
    /// The telemetry role (the vehicle collector, `tether_collector`): the keys of
    /// `tether collector`'s file, in lower case, without `role`.
    #[serde(default)]
    pub telemetry: Option<Value>,
    /// The diagnostics role (vehicle commands as UDS on CAN buses).
    #[serde(default)]
    pub diagnostics: Option<DiagnosticsSection>,
}

impl AgentConfig {
    /// The log filter of the agent: the metering role's `monitoring.log_level` when that role is
    /// on, else the dongle role's `log_level`, else `info`.
    pub fn log_level(&self) -> &str {
        match (&self.metering, &self.dongle) {
            (Some(m), _) => &m.monitoring.log_level,
            (None, Some(d)) => &d.log_level,
            (None, None) => "info",
        }
    }

    /// The telemetry role's validated settings; `None` without a `telemetry:` section. Its
    /// store defaults to `<data_dir>/telemetry.db`, its remote to the server's
    /// `/ws/telemetry/upload` and its credential to the agent's token.
    pub fn telemetry_role(
        &self,
    ) -> anyhow::Result<Option<tether_collector::config::VehicleConfig>> {
        let Some(section) = &self.telemetry else {
            return Ok(None);
        };
        let remote = match &self.server_url {
            Some(s) => Some(
                ServerUrls::parse(s)?
                    .as_slice()
                    .iter()
                    .map(|u| u.ws("/ws/telemetry/upload"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => None,
        };
        let defaults = tether_collector::config::SectionDefaults {
            db_path: self.data_dir.as_ref().map(|d| d.join("telemetry.db")),
            remote_endpoint_url: remote,
            api_key: self.token.clone(),
        };
        tether_collector::config::vehicle_from_section(section, &defaults).map(Some)
    }

    /// The diagnostics role's validated settings (its section with `server_url` and `token`;
    /// its `dongle:` buses checked against the `dongle:` section); `None` when the file has no
    /// `diagnostics:` section.
    pub fn diagnostics_role(&self) -> anyhow::Result<Option<DiagnosticsRole>> {
        let Some(d) = &self.diagnostics else {
            return Ok(None);
        };
        let role = DiagnosticsRole::resolve(d, self.server_url.as_ref(), self.token.as_deref())?;
        role.check_shared(self.dongle.as_ref())?;
        if let Some(d) = &self.dongle
            && d.protocol != crate::dongle::config::DongleProtocol::Remp
            && role.shared_dongles().next().is_some()
        {
            bail!(
                "diagnostics.buses: a bus given as `dongle: SERIAL` shares a REMP dongle's link, and dongle.protocol is {} (give the bus its own `bus:` address, e.g. socketcan://can0)",
                d.protocol.as_str()
            );
        }
        Ok(Some(role))
    }

    /// The dongle role's validated settings (its section with `server_url`, `token` and
    /// `data_dir`); `None` when the file has no `dongle:` section.
    pub fn dongle_role(&self) -> anyhow::Result<Option<DongleRole>> {
        self.dongle
            .as_ref()
            .map(|d| {
                DongleRole::resolve(
                    d,
                    self.server_url.as_ref(),
                    self.token.as_deref(),
                    self.data_dir.as_deref(),
                )
            })
            .transpose()
    }
}

/// `metering:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringConfig {
    /// This API server.
    pub server: ServerSection,
    /// Where the queues live.
    pub redis: RedisSection,
    /// The control plane.
    pub control_plane: ControlPlaneSection,
    /// Consumer tuning.
    #[serde(default)]
    pub queues: QueuesSection,
    /// Health, metrics, logs, heartbeat, command polling.
    #[serde(default)]
    pub monitoring: MonitoringSection,
}

/// `metering.server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Server id (registration key, command audience, `server_instance_id`).
    #[serde(deserialize_with = "string_like")]
    pub id: String,
    /// Region (`api_server_region`).
    #[serde(deserialize_with = "string_like")]
    pub region: String,
    /// Port of the speech API server, reported at registration.
    pub port: u16,
    /// Address reported at registration.
    #[serde(default = "default_ip", deserialize_with = "string_like")]
    pub ip_address: String,
    /// Capabilities reported at registration.
    #[serde(default)]
    pub capabilities: Capabilities,
}

fn default_ip() -> String {
    "127.0.0.1".into()
}

/// `metering.server.capabilities`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Concurrent sessions this server takes.
    pub max_concurrent_sessions: u32,
    /// Comma-separated product codes.
    #[serde(deserialize_with = "string_like")]
    pub supported_products: String,
    /// Comma-separated language codes.
    #[serde(deserialize_with = "string_like")]
    pub supported_languages: String,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_concurrent_sessions: 100,
            supported_products: "speech_transcription".into(),
            supported_languages: "en".into(),
        }
    }
}

/// `metering.redis`: either `url`, or `host`/`port`/`password`/`db`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://…` URL; wins over the fields below.
    #[serde(default, deserialize_with = "opt_string_like")]
    pub url: Option<String>,
    /// Host (default 127.0.0.1).
    #[serde(default, deserialize_with = "opt_string_like")]
    pub host: Option<String>,
    /// Port (default 6379).
    #[serde(default)]
    pub port: Option<u16>,
    /// Password (empty = none).
    #[serde(default, deserialize_with = "opt_string_like")]
    pub password: Option<String>,
    /// Database number.
    #[serde(default)]
    pub db: Option<i64>,
    /// Prefix of every key (default empty: the documented names `queue:usage_records`, …).
    #[serde(default, deserialize_with = "opt_string_like")]
    pub key_prefix: Option<String>,
    /// Timeout of non-blocking commands, seconds (default 5).
    #[serde(default = "five")]
    pub operation_timeout: f64,
    /// The specification's name for the timeout of non-blocking commands (connect, read,
    /// write), seconds; when given it is the operation timeout.
    #[serde(default)]
    pub socket_timeout: Option<f64>,
    /// Retry a command once at once when it timed out, before counting it as a Redis failure
    /// (default true). When false, a timeout is a failure and the queue worker backs off.
    #[serde(default = "yes")]
    pub retry_on_timeout: bool,
}

impl RedisSection {
    /// Timeout of non-blocking commands: `socket_timeout` when given, else `operation_timeout`.
    pub fn command_timeout(&self) -> f64 {
        self.socket_timeout.unwrap_or(self.operation_timeout)
    }

    /// The connection URL.
    pub fn connection_url(&self) -> String {
        if let Some(u) = &self.url {
            return u.clone();
        }
        let host = self.host.as_deref().unwrap_or("127.0.0.1");
        let port = self.port.unwrap_or(6379);
        let db = self.db.unwrap_or(0);
        // An empty password (an unset-but-defined `${REDIS_PASSWORD}`) means none.
        match self.password.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => format!("redis://:{}@{host}:{port}/{db}", percent_encode(p)),
            None => format!("redis://{host}:{port}/{db}"),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `metering.control_plane`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneSection {
    /// `https://…` (plain `http://` only to loopback).
    #[serde(deserialize_with = "string_like")]
    pub base_url: String,
    /// Sent as `X-API-Key`; also protects the admin endpoints.
    #[serde(deserialize_with = "string_like")]
    pub api_key: String,
    /// Whole-request timeout, seconds (default 10).
    #[serde(default = "ten")]
    pub timeout: f64,
    /// Connect timeout, seconds (default 5).
    #[serde(default = "five")]
    pub connect_timeout: f64,
    /// Retries per attempt cycle (default 2).
    #[serde(default = "two")]
    pub retry_attempts: u32,
    /// Backoff base, seconds (default 0.2).
    #[serde(default = "point_two")]
    pub retry_base: f64,
    /// Backoff cap, seconds (default 10).
    #[serde(default = "ten")]
    pub retry_cap: f64,
    /// Failed attempt cycles that open the breaker (default 3).
    #[serde(default = "three")]
    pub breaker_failure_threshold: u32,
    /// Seconds the breaker stays open before a probe (default 30).
    #[serde(default = "thirty")]
    pub breaker_open_seconds: f64,
}

/// `metering.queues`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesSection {
    /// Workers per queue.
    pub workers: usize,
    /// Items per fetch.
    pub batch_size: usize,
    /// `BLMOVE` block, seconds.
    pub block_seconds: f64,
    /// Lease lifetime, seconds.
    pub lease_ttl_seconds: f64,
    /// Reaper period, seconds.
    pub reaper_interval_seconds: f64,
    /// Deliveries before the DLQ.
    pub max_deliveries: u32,
    /// Concurrent requests per worker.
    pub max_concurrent_requests: usize,
}

impl Default for QueuesSection {
    fn default() -> Self {
        QueuesSection {
            workers: 2,
            batch_size: 500,
            block_seconds: 1.0,
            lease_ttl_seconds: 30.0,
            reaper_interval_seconds: 15.0,
            max_deliveries: 3,
            max_concurrent_requests: 32,
        }
    }
}

/// `metering.monitoring`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringSection {
    /// Heartbeat period, seconds.
    pub heartbeat_interval: f64,
    /// Port of `GET /metrics` (may equal `health_check_port`).
    pub metrics_port: u16,
    /// Port of `GET /health` and the admin endpoints.
    pub health_check_port: u16,
    /// Address both listen on.
    #[serde(deserialize_with = "string_like")]
    pub bind_address: String,
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter.
    #[serde(deserialize_with = "string_like")]
    pub log_level: String,
    /// Command polling period, seconds (jittered ±10 %).
    pub command_poll_interval: f64,
    /// Directory for log files (rotated daily). Unset: logs go to stderr (the journal).
    pub log_dir: Option<std::path::PathBuf>,
    /// Days of log files kept in `log_dir` (older ones are deleted at rotation).
    pub log_retention_days: u32,
}

impl Default for MonitoringSection {
    fn default() -> Self {
        MonitoringSection {
            heartbeat_interval: 60.0,
            metrics_port: 9090,
            health_check_port: 8081,
            bind_address: "127.0.0.1".into(),
            log_level: "info".into(),
            command_poll_interval: 60.0,
            log_dir: None,
            log_retention_days: 7,
        }
    }
}

impl MeteringConfig {
    /// Check values serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.server.id.trim().is_empty() {
            bail!("metering.server.id is empty");
        }
        if self.control_plane.api_key.is_empty() {
            bail!("metering.control_plane.api_key is empty");
        }
        metering_core::client::check_base_url(&self.control_plane.base_url)?;
        redis::Client::open(self.redis.connection_url())
            .context("metering.redis: bad connection settings")?;
        let cp = &self.control_plane;
        for (n, v) in [
            ("control_plane.timeout", cp.timeout),
            ("control_plane.connect_timeout", cp.connect_timeout),
            ("control_plane.retry_base", cp.retry_base),
            ("control_plane.retry_cap", cp.retry_cap),
            (
                "control_plane.breaker_open_seconds",
                cp.breaker_open_seconds,
            ),
            ("redis.operation_timeout", self.redis.operation_timeout),
            ("redis.socket_timeout", self.redis.command_timeout()),
            ("queues.block_seconds", self.queues.block_seconds),
            ("queues.lease_ttl_seconds", self.queues.lease_ttl_seconds),
            (
                "queues.reaper_interval_seconds",
                self.queues.reaper_interval_seconds,
            ),
            (
                "monitoring.heartbeat_interval",
                self.monitoring.heartbeat_interval,
            ),
            (
                "monitoring.command_poll_interval",
                self.monitoring.command_poll_interval,
            ),
        ] {
            secs(n, v)?;
        }
        if self.queues.block_seconds < 0.01 {
            bail!("queues.block_seconds must be at least 0.01");
        }
        if self.queues.lease_ttl_seconds < 3.0 * self.queues.block_seconds.max(0.1) {
            bail!("queues.lease_ttl_seconds must be at least three times block_seconds");
        }
        if self.queues.batch_size == 0
            || self.queues.workers == 0
            || self.queues.max_deliveries == 0
        {
            bail!("queues.batch_size, workers and max_deliveries must be positive");
        }
        if self.monitoring.heartbeat_interval < 0.1 || self.monitoring.command_poll_interval < 0.1 {
            bail!("monitoring intervals must be at least 0.1 s");
        }
        if self.redis.command_timeout() < 0.001 {
            bail!("redis.socket_timeout must be positive");
        }
        if self.monitoring.log_retention_days == 0 {
            bail!("monitoring.log_retention_days must be at least 1");
        }
        Ok(())
    }
}

/// Read, substitute, override, parse and validate `path`, using `env` for variables. An error
/// about a key names its path and the file's line, or the `TETHER_…` variable that set it.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> anyhow::Result<AgentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_named(&text, &path.display().to_string(), env, env_vars)
}

/// Moves the specification's top-level sections under `metering:`. A file mixing both
/// layouts is refused: it is not clear which settings were meant.
fn nest_specification_layout(value: &mut Value) -> anyhow::Result<Layout> {
    let Value::Object(top) = value else {
        bail!("the configuration must be a mapping of sections");
    };
    let found: Vec<&str> = SPEC_SECTIONS
        .into_iter()
        .filter(|k| top.contains_key(*k))
        .collect();
    if found.is_empty() {
        return Ok(Layout::Sections);
    }
    if top.contains_key("metering") {
        bail!(
            "the file mixes two layouts: top-level {} and a `metering:` section; use one",
            found.join(", ")
        );
    }
    let mut section = Map::new();
    for k in found {
        if let Some(v) = top.remove(k) {
            section.insert(k.to_owned(), v);
        }
    }
    top.insert("metering".into(), Value::Object(section));
    Ok(Layout::Specification)
}

/// [`load`] on text (errors name the file `<config>`).
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> anyhow::Result<AgentConfig> {
    parse_named(text, "<config>", env, env_vars)
}

/// [`load`] on text read from `file`.
pub fn parse_named(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> anyhow::Result<AgentConfig> {
    // Through the YAML tree first: it refuses duplicate keys (a JSON map keeps the last).
    let yaml = located::parse_yaml(text, file)?;
    let mut value: Value = if yaml.is_null() {
        Value::Object(Map::new())
    } else {
        serde_json::to_value(&yaml).with_context(|| format!("in {file}: keys must be strings"))?
    };
    expand_json_strings(&mut value, env).with_context(|| format!("in {file}"))?;
    let overrides = apply_env_overrides(&mut value, "TETHER_", env_vars)?;
    let layout = nest_specification_layout(&mut value)?;
    let origin = located::Origin {
        file,
        text,
        overrides: &overrides,
    };
    let mut cfg: AgentConfig = located::deserialize(value, origin)?;
    cfg.layout = layout;
    let at = |path: &[&str], message: String| {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        located::located(origin, &path, message)
    };
    if let Some(m) = &cfg.metering {
        check_log_level(&m.monitoring.log_level)
            .map_err(|e| at(&["metering", "monitoring", "log_level"], e))?;
    }
    if let Some(d) = &cfg.dongle {
        check_log_level(&d.log_level).map_err(|e| at(&["dongle", "log_level"], e))?;
    }
    validate(&cfg).with_context(|| format!("in {file}"))?;
    Ok(cfg)
}

/// The checks serde cannot make.
fn validate(cfg: &AgentConfig) -> anyhow::Result<()> {
    if cfg.metering.is_none()
        && cfg.dongle.is_none()
        && cfg.telemetry.is_none()
        && cfg.diagnostics.is_none()
    {
        bail!(
            "no role configured: add a `metering:`, `dongle:`, `telemetry:` or `diagnostics:` section"
        );
    }
    if let Some(m) = &cfg.metering {
        m.validate()?;
    }
    cfg.telemetry_role()?;
    if cfg.dongle.is_some() {
        cfg.dongle_role()?;
    }
    if cfg.diagnostics.is_some() {
        cfg.diagnostics_role()?;
    }
    if cfg.dongle.is_none() && cfg.telemetry.is_none() && cfg.data_dir.is_some() {
        bail!(
            "data_dir is a setting of the dongle and telemetry roles: add a `dongle:` or `telemetry:` section"
        );
    }
    if cfg.dongle.is_none()
        && cfg.diagnostics.is_none()
        && cfg.telemetry.is_none()
        && (cfg.server_url.is_some() || cfg.token.is_some())
    {
        bail!(
            "server_url and token are settings of the dongle, diagnostics and telemetry roles: add a `dongle:`, `diagnostics:` or `telemetry:` section"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "metering:\n  server: {id: s1, region: eu, port: 8080}\n  redis: {url: \"redis://127.0.0.1:6379\"}\n  control_plane: {base_url: \"http://127.0.0.1:1\", api_key: \"${KEY}\"}\n";

    fn env_with(name: &'static str, val: &'static str) -> impl Fn(&str) -> Option<String> {
        move |n| (n == name).then(|| val.to_owned())
    }

    #[test]
    fn substitution_and_unset_variable_error() {
        let cfg = parse(MIN, &env_with("KEY", "12345"), &[]).expect("parses");
        assert_eq!(
            cfg.metering.expect("metering").control_plane.api_key,
            "12345"
        );
        let err = parse(MIN, &|_| None, &[]).expect_err("unset var");
        assert!(format!("{err:#}").contains("KEY is not set"), "{err:#}");
        let escaped = MIN.replace("${KEY}", "a$${b}c$");
        let cfg = parse(&escaped, &|_| None, &[]).expect("literal");
        assert_eq!(
            cfg.metering.expect("metering").control_plane.api_key,
            "a${b}c$"
        );
    }

    #[test]
    fn env_overrides_any_key() {
        let vars = vec![
            (
                "TETHER_METERING__CONTROL_PLANE__API_KEY".to_owned(),
                "007".to_owned(),
            ),
            (
                "TETHER_METERING__QUEUES__BATCH_SIZE".to_owned(),
                "7".to_owned(),
            ),
            ("TETHER_BIN".to_owned(), "ignored".to_owned()),
        ];
        let cfg = parse(MIN, &env_with("KEY", "k"), &vars).expect("parses");
        let m = cfg.metering.expect("metering");
        assert_eq!(m.control_plane.api_key, "007");
        assert_eq!(m.queues.batch_size, 7);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad_url = MIN.replace("http://127.0.0.1:1", "http://example.com");
        assert!(parse(&bad_url, &env_with("KEY", "k"), &[]).is_err());
        let typo = MIN.replace("region: eu", "regoin: eu");
        assert!(parse(&typo, &env_with("KEY", "k"), &[]).is_err());
        assert!(parse("", &|_| None, &[]).is_err());
    }

    /// The specification's file, as written there.
    const SPEC: &str = r#"
server:        {id: "${SERVER_ID}", region: "${AWS_REGION}", port: 8081}
redis:         {host: "${REDIS_HOST}", port: 6379, password: "${REDIS_PASSWORD}", db: 0,
                socket_timeout: 30, retry_on_timeout: true}
control_plane: {base_url: "${CONTROL_PLANE_URL}", api_key: "${CONTROL_PLANE_API_KEY}",
                timeout: 30, retry_attempts: 3}
monitoring:    {heartbeat_interval: 60, metrics_port: 9090, health_check_port: 8081,
                log_level: "INFO", log_retention_days: 7}
"#;

    fn spec_env(n: &str) -> Option<String> {
        Some(
            match n {
                "SERVER_ID" => "speech-1",
                "AWS_REGION" => "eu-west-1",
                "REDIS_HOST" => "127.0.0.1",
                "REDIS_PASSWORD" => "s3cret",
                "CONTROL_PLANE_URL" => "http://127.0.0.1:9",
                "CONTROL_PLANE_API_KEY" => "ck_1",
                _ => return None,
            }
            .to_owned(),
        )
    }

    #[test]
    fn specification_layout_is_read_with_every_key() {
        let cfg = parse(SPEC, &spec_env, &[]).expect("parses");
        assert_eq!(cfg.layout, Layout::Specification);
        let m = cfg.metering.clone().expect("metering role");
        assert_eq!(m.server.id, "speech-1");
        assert_eq!(m.server.region, "eu-west-1");
        assert_eq!(m.server.port, 8081);
        assert_eq!(m.redis.socket_timeout, Some(30.0));
        assert_eq!(m.redis.command_timeout(), 30.0);
        assert!(m.redis.retry_on_timeout);
        assert_eq!(m.redis.connection_url(), "redis://:s3cret@127.0.0.1:6379/0");
        assert_eq!(m.control_plane.timeout, 30.0);
        assert_eq!(m.control_plane.retry_attempts, 3);
        assert_eq!(m.monitoring.heartbeat_interval, 60.0);
        assert_eq!(m.monitoring.metrics_port, 9090);
        assert_eq!(m.monitoring.health_check_port, 8081);
        assert_eq!(m.monitoring.log_retention_days, 7);
        assert_eq!(cfg.log_level(), "INFO");
        // Overrides use the file's own layout.
        let vars = vec![(
            "TETHER_REDIS__RETRY_ON_TIMEOUT".to_owned(),
            "false".to_owned(),
        )];
        let cfg = parse(SPEC, &spec_env, &vars).expect("parses");
        assert!(!cfg.metering.expect("metering").redis.retry_on_timeout);
        // The section layout keeps working and says so.
        let cfg = parse(MIN, &env_with("KEY", "k"), &[]).expect("parses");
        assert_eq!(cfg.layout, Layout::Sections);
        let m = cfg.metering.expect("metering");
        assert_eq!(m.monitoring.heartbeat_interval, 60.0);
        assert!(m.redis.retry_on_timeout);
    }

    #[test]
    fn mixed_layouts_and_unknown_keys_are_refused() {
        let mixed = format!("{SPEC}metering: {{}}\n");
        let err = parse(&mixed, &spec_env, &[]).expect_err("mixed");
        assert!(format!("{err:#}").contains("mixes two layouts"), "{err:#}");
        let typo = SPEC.replace("socket_timeout", "sockt_timeout");
        let err = parse(&typo, &spec_env, &[]).expect_err("typo");
        assert!(format!("{err:#}").contains("sockt_timeout"), "{err:#}");
        let zero = SPEC.replace("log_retention_days: 7", "log_retention_days: 0");
        assert!(parse(&zero, &spec_env, &[]).is_err());
    }

    #[test]
    fn errors_name_key_line_or_variable_and_duplicates_are_refused() {
        let dongle = "server_url: http://127.0.0.1:1\ntoken: t\ndata_dir: /tmp/x\ndongle:\n  listen: 127.0.0.1:0\n  batch_max_frames: lots\n";
        let err = parse_named(dongle, "agent.yaml", &|_| None, &[]).expect_err("lots");
        assert_eq!(
            format!("{err:#}"),
            "agent.yaml:6: dongle.batch_max_frames: invalid type: string \"lots\", expected a non-negative integer"
        );
        let err = parse_named("dongle: yes\n", "agent.yaml", &|_| None, &[]).expect_err("yes");
        assert_eq!(
            format!("{err:#}"),
            "agent.yaml:1: dongle: invalid type: string \"yes\", expected an object"
        );
        let good = dongle.replace("lots", "16");
        let vars = vec![(
            "TETHER_DONGLE__BATCH_MAX_FRAMES".to_owned(),
            "many".to_owned(),
        )];
        let err = parse_named(&good, "agent.yaml", &|_| None, &vars).expect_err("env");
        let text = format!("{err:#}");
        assert!(
            text.starts_with(
                "environment variable TETHER_DONGLE__BATCH_MAX_FRAMES (dongle.batch_max_frames): invalid type"
            ),
            "{text}"
        );
        let twice = format!("{good}token: again\n");
        let err = parse_named(&twice, "agent.yaml", &|_| None, &[]).expect_err("duplicate");
        let text = format!("{err:#}");
        assert!(text.starts_with("agent.yaml:7:"), "{text}");
        assert!(text.contains("duplicate"), "{text}");
        let level = format!("{good}  log_level: 'no[such'\n");
        let err = parse_named(&level, "agent.yaml", &|_| None, &[]).expect_err("log level");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("agent.yaml:7: dongle.log_level: \"no[such\" is not a log filter"),
            "{text}"
        );
        assert!(parse_named(&good, "agent.yaml", &|_| None, &[]).is_ok());
    }

    #[test]
    fn dongle_keys_parse_one_or_several_and_bad_keys_are_refused() {
        let base = "server_url: http://127.0.0.1:1\ntoken: t\ndata_dir: /tmp/x\ndongle:\n  listen: 127.0.0.1:0\n  require_auth: true\n  keys:\n";
        let one = "ab".repeat(16);
        let two = "cd".repeat(32);
        let text = format!("{base}    D-1: {one}\n    D-2: [{two}, {one}]\n");
        let cfg = parse_named(&text, "agent.yaml", &|_| None, &[]).expect("parses");
        let role = cfg.dongle_role().expect("valid").expect("dongle role");
        let crate::dongle::config::DongleEdge::Remp {
            keys, require_auth, ..
        } = &role.edge
        else {
            panic!("a REMP edge: {:?}", role.edge);
        };
        assert!(require_auth);
        assert_eq!(keys["D-1"].len(), 1);
        assert_eq!(keys["D-2"].len(), 2);
        for bad in ["00ff", "zz", "[]"] {
            let text = format!("{base}    D-1: {bad}\n");
            let err = parse_named(&text, "agent.yaml", &|_| None, &[]).expect_err(bad);
            assert!(format!("{err:#}").contains("dongle.keys"), "{bad}: {err:#}");
        }
    }

    #[test]
    fn redis_url_from_parts() {
        let r = RedisSection {
            url: None,
            host: Some("h".into()),
            port: Some(7000),
            password: Some("p@ss".into()),
            db: Some(2),
            key_prefix: None,
            operation_timeout: 5.0,
            socket_timeout: None,
            retry_on_timeout: true,
        };
        assert_eq!(r.connection_url(), "redis://:p%40ss@h:7000/2");
    }

    #[test]
    fn a_shared_dongle_must_be_one_the_dongle_role_accepts() {
        let base = "server_url: http://h:1\ntoken: t\ndata_dir: /tmp/x\n";
        let diag = "diagnostics:\n  buses:\n    - {dongle: VEH-1}\n";
        let ok = format!("{base}dongle:\n  listen: 127.0.0.1:0\n{diag}");
        let cfg = parse(&ok, &|_| None, &[]).expect("a served dongle");
        let role = cfg.diagnostics_role().expect("valid").expect("on");
        assert_eq!(role.shared_dongles().collect::<Vec<_>>(), ["VEH-1"]);

        let err = parse(&format!("{base}{diag}"), &|_| None, &[]).expect_err("no dongle role");
        assert!(
            format!("{err:#}").contains(
                "diagnostics.buses[0].dongle \"VEH-1\": this agent has no `dongle:` section"
            ),
            "{err:#}"
        );
        let key = "00112233445566778899aabbccddeeff";
        let strict = format!(
            "{base}dongle:\n  listen: 127.0.0.1:0\n  require_auth: true\n  keys:\n    VEH-2: \"{key}\"\n{diag}"
        );
        let err = parse(&strict, &|_| None, &[]).expect_err("unknown serial");
        assert!(
            format!("{err:#}").contains("\"VEH-1\": unknown to the dongle role"),
            "{err:#}"
        );
        let keyed = strict.replace("VEH-2:", "VEH-1:");
        parse(&keyed, &|_| None, &[]).expect("a keyed serial is known");
    }
}
