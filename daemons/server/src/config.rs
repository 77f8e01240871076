//! Server configuration: defaults, an optional YAML file with `${VAR}` substitution, and
//! command-line overrides, validated before anything starts.
//!
//! Precedence, lowest first: built-in defaults, the file, then flags (and `REDIS_URL`, which
//! clap reads into the `--redis-url` flag). `${NAME}` in any string of the file is replaced by
//! the environment variable `NAME` (`$${` writes a literal `${`; the rules are
//! [`tether_runtime::config`]'s, the same as the agent's); an unset variable is an error naming
//! it, never an empty string slipped into an address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tether_runtime::config::{ConfigError, expand_yaml_strings, located};

use crate::console::{ConsoleConfig, ConsoleSettings};
use crate::error::ServerError;
use crate::http::cors::{CorsSettings, OriginPolicy};
use crate::http::limits::{LimitConfig, LimitSettings};
use crate::setting::bounded;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./tether-data";
/// Default request body limit (64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default time a client has to send a complete request head (seconds).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;

/// The configuration file's shape. Every field is optional; unknown fields are refused so a
/// typo is an error rather than a silently ignored setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Directory for the records database (and, later, embedded stream logs).
    pub data_dir: Option<PathBuf>,
    /// Redis URL. Only checked for reachability by `/readyz` in this version.
    pub redis_url: Option<String>,
    /// PostgreSQL URL for the records (users, tokens, agents, dongles, groups, vehicles,
    /// commands) instead of the SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Seconds a client has to send a complete request head; idle keep-alive connections are
    /// closed after the same time.
    pub header_read_timeout_secs: Option<u64>,
    /// The data plane's relay settings (`relay:`).
    pub relay: Option<RelayFileConfig>,
    /// The live console's settings (`console:`).
    pub console: Option<ConsoleSettings>,
    /// The vehicle-commands settings (`commands:`).
    pub commands: Option<CommandsSettings>,
    /// Browsers on other origins (`cors:`).
    pub cors: Option<CorsSettings>,
    /// Limits per token and per agent (`limits:`).
    pub limits: Option<LimitSettings>,
}

/// Which connector runs vehicle commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// The vehicle's agent runs them as UDS on the vehicle's bus (`/ws/data` diagnostics
    /// channel).
    #[default]
    Agent,
    /// Canned answers after a random delay, for development.
    Mock,
}

/// Default `commands.mock_delay_ms`.
pub const DEFAULT_MOCK_DELAY_MS: [u64; 2] = [500, 1500];

/// The `commands:` section as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsSettings {
    /// `agent` (default) or `mock`.
    pub connector: Option<ConnectorKind>,
    /// The mock connector's delay range `[min, max]` in milliseconds.
    pub mock_delay_ms: Option<[u64; 2]>,
}

/// The validated `commands:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandsConfig {
    /// The connector.
    pub connector: ConnectorKind,
    /// The mock connector's delay range.
    pub mock_delay: (Duration, Duration),
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            connector: ConnectorKind::Agent,
            mock_delay: (
                Duration::from_millis(DEFAULT_MOCK_DELAY_MS[0]),
                Duration::from_millis(DEFAULT_MOCK_DELAY_MS[1]),
            ),
        }
    }
}

impl CommandsConfig {
    /// Applies defaults and checks the delay range (min ≤ max ≤ 10 minutes).
    pub fn resolve(file: Option<CommandsSettings>) -> Result<CommandsConfig, String> {
        let file = file.unwrap_or_default();
        let [min, max] = file.mock_delay_ms.unwrap_or(DEFAULT_MOCK_DELAY_MS);
        if min > max || max > 600_000 {
            return Err(format!(
                "commands.mock_delay_ms [{min}, {max}] must be [min, max] with min <= max <= 600000"
            ));
        }
        Ok(CommandsConfig {
            connector: file.connector.unwrap_or_default(),
            mock_delay: (Duration::from_millis(min), Duration::from_millis(max)),
        })
    }
}

/// Default length retention per relay stream (items).
pub const DEFAULT_RELAY_MAX_LEN: u64 = 1_000_000;
/// Default replay rate per stream (frames/s). Ten times the 4,500 frames/s of a busy dongle, so
/// that a consumer which reconnects, or falls behind the live buffer under overload, catches up
/// while live traffic continues (at 5,000/s a backlog of a 4,500 frames/s stream shrank by only
/// 500 frames/s: docs/benchmarks.md, "Through real agents"). Live streams are not starved by
/// replays: the engine schedules them round-robin, one round at most.
pub const DEFAULT_RELAY_REPLAY_RATE: u64 = 50_000;
/// Default replay burst per stream (frames).
pub const DEFAULT_RELAY_REPLAY_BURST: u64 = 5_000;
/// Default consumer window (unacknowledged frames per consumer).
pub const DEFAULT_RELAY_CONSUMER_WINDOW: u64 = 4096;
/// Default `relay.cut_through`: frames a stream may deliver ahead of its durable head.
pub const DEFAULT_RELAY_CUT_THROUGH: u64 = 4096;
/// Default seconds between retention trims.
pub const DEFAULT_RELAY_TRIM_INTERVAL_SECS: u64 = 10;

/// The `relay:` section of the configuration file. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFileConfig {
    /// Keep at most this many frames per stream (direction of a group); `0` = unlimited.
    pub max_len: Option<u64>,
    /// Remove frames whose capture timestamp is older than this many seconds; `0` or absent =
    /// no age limit.
    pub max_age_secs: Option<u64>,
    /// Replay rate limit per stream after a reconnect, frames per second.
    pub replay_rate_per_s: Option<u64>,
    /// Largest replay burst per stream, frames.
    pub replay_burst: Option<u64>,
    /// Most frames delivered to a consumer and not yet acknowledged.
    pub consumer_window: Option<u64>,
    /// Most frames delivered ahead of the durable head (cut-through); `0` = only durable ones.
    pub cut_through: Option<u64>,
    /// Seconds between retention trims.
    pub trim_interval_secs: Option<u64>,
}

/// The validated relay settings of the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Length retention per stream (`None` = unlimited).
    pub max_len: Option<u64>,
    /// Age retention (`None` = unlimited). Ages are measured on the frames' capture timestamps.
    pub max_age: Option<Duration>,
    /// Replay rate limit per stream, frames per second.
    pub replay_rate_per_s: u64,
    /// Replay burst per stream, frames.
    pub replay_burst: u64,
    /// Unacknowledged frames per consumer.
    pub consumer_window: u64,
    /// Frames a stream may deliver before they are durable
    /// ([`relay_core::engine::EngineConfig::cut_through`]).
    pub cut_through: u64,
    /// Time between retention trims.
    pub trim_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_len: Some(DEFAULT_RELAY_MAX_LEN),
            max_age: None,
            replay_rate_per_s: DEFAULT_RELAY_REPLAY_RATE,
            replay_burst: DEFAULT_RELAY_REPLAY_BURST,
            consumer_window: DEFAULT_RELAY_CONSUMER_WINDOW,
            cut_through: DEFAULT_RELAY_CUT_THROUGH,
            trim_interval: Duration::from_secs(DEFAULT_RELAY_TRIM_INTERVAL_SECS),
        }
    }
}

impl RelayConfig {
    /// Merges the file section over the defaults and validates the result.
    pub fn resolve(file: Option<RelayFileConfig>) -> Result<RelayConfig, String> {
        let file = file.unwrap_or_default();
        let max_len = match file.max_len {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(DEFAULT_RELAY_MAX_LEN),
        };
        let max_age = match file.max_age_secs {
            None | Some(0) => None,
            Some(secs) if secs > 10 * 365 * 86_400 => {
                return Err(format!("relay.max_age_secs {secs} is more than ten years"));
            }
            Some(secs) => Some(Duration::from_secs(secs)),
        };
        Ok(RelayConfig {
            max_len,
            max_age,
            replay_rate_per_s: bounded(
                "relay.replay_rate_per_s",
                file.replay_rate_per_s,
                DEFAULT_RELAY_REPLAY_RATE,
                1..=10_000_000,
            )?,
            replay_burst: bounded(
                "relay.replay_burst",
                file.replay_burst,
                DEFAULT_RELAY_REPLAY_BURST,
                1..=1_000_000,
            )?,
            consumer_window: bounded(
                "relay.consumer_window",
                file.consumer_window,
                DEFAULT_RELAY_CONSUMER_WINDOW,
                1..=1_000_000,
            )?,
            cut_through: bounded(
                "relay.cut_through",
                file.cut_through,
                DEFAULT_RELAY_CUT_THROUGH,
                0..=1_000_000,
            )?,
            trim_interval: Duration::from_secs(bounded(
                "relay.trim_interval_secs",
                file.trim_interval_secs,
                DEFAULT_RELAY_TRIM_INTERVAL_SECS,
                1..=86_400,
            )?),
        })
    }
}

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--redis-url` / `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `--database-url` / `TETHER_DATABASE_URL`.
    pub database_url: Option<String>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Redis URL, when configured.
    pub redis_url: Option<String>,
    /// PostgreSQL URL of the records, when configured (otherwise SQLite in `data_dir`).
    pub database_url: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// The data plane's relay settings.
    pub relay: RelayConfig,
    /// The live console's settings.
    pub console: ConsoleConfig,
    /// The vehicle-commands settings.
    pub commands: CommandsConfig,
    /// Which other origins browsers may call the API from (off by default).
    pub cors: OriginPolicy,
    /// Limits per token and per agent.
    pub limits: LimitConfig,
}

impl ServerConfig {
    /// Defaults with a given listen address and data directory (handy for tests and embedding).
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            listen,
            data_dir: data_dir.into(),
            redis_url: None,
            database_url: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            relay: RelayConfig::default(),
            console: ConsoleConfig::default(),
            commands: CommandsConfig::default(),
            cors: OriginPolicy::default(),
            limits: LimitConfig::default(),
        }
    }

    /// Merges defaults, `file` and `overrides` and validates the result.
    pub fn resolve(
        file: Option<FileConfig>,
        origin: &str,
        overrides: Overrides,
    ) -> Result<ServerConfig, ServerError> {
        let file = file.unwrap_or_default();
        let invalid = |detail: String| ServerError::ConfigInvalid {
            origin: origin.to_owned(),
            detail,
        };
        let listen_text = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(format!(
                "listen address {listen_text:?} is not an IP:port such as 127.0.0.1:8080"
            ))
        })?;
        let data_dir = overrides
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir is empty".to_owned()));
        }
        // An empty value (e.g. `REDIS_URL=`) means "no Redis", like an absent one.
        let redis_url = overrides
            .redis_url
            .or(file.redis_url)
            .filter(|url| !url.trim().is_empty());
        if let Some(url) = &redis_url {
            redis::Client::open(url.as_str()).map_err(|err| ServerError::RedisUrl {
                detail: err.to_string(),
            })?;
        }
        let database_url = overrides
            .database_url
            .or(file.database_url)
            .filter(|url| !url.trim().is_empty());
        if let Some(url) = &database_url {
            check_database_url(url)?;
        }
        let max_body_bytes = bounded(
            "max_body_bytes",
            file.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            1024..=16 * 1024 * 1024,
        )
        .map_err(invalid)?;
        let header_secs = bounded(
            "header_read_timeout_secs",
            file.header_read_timeout_secs,
            DEFAULT_HEADER_READ_TIMEOUT_SECS,
            1..=3600,
        )
        .map_err(invalid)?;
        let relay = RelayConfig::resolve(file.relay).map_err(invalid)?;
        let console = ConsoleConfig::resolve(file.console).map_err(invalid)?;
        let commands = CommandsConfig::resolve(file.commands).map_err(invalid)?;
        let cors = OriginPolicy::resolve(file.cors).map_err(invalid)?;
        let limits = LimitConfig::resolve(file.limits).map_err(invalid)?;
        Ok(ServerConfig {
            listen,
            data_dir,
            redis_url,
            database_url,
            max_body_bytes,
            header_read_timeout: Duration::from_secs(header_secs),
            relay,
            console,
            commands,
            cors,
            limits,
        })
    }
}

/// Checks that `url` is a PostgreSQL URL (`postgres://` or `postgresql://`) the client accepts.
pub fn check_database_url(url: &str) -> Result<(), ServerError> {
    let refused = |detail: String| ServerError::DatabaseUrl { detail };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(refused(
            "expected postgres://user@host:port/database".to_owned(),
        ));
    }
    url.parse::<postgres::Config>()
        .map(drop)
        .map_err(|err| refused(err.to_string()))
}

/// Reads and parses a YAML configuration file, substituting `${VAR}` from the environment.
pub fn load_file(path: &Path) -> Result<FileConfig, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServerError::Io {
        action: "read config file",
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
}

/// Parses YAML configuration text, substituting `${VAR}` with `lookup` by the rules of
/// [`tether_runtime::config`] (`$${` is a literal `${`).
///
/// Substitution happens on parsed string values, not on the raw text, so a value containing
/// YAML syntax (`:`, `#`, quotes) cannot change the document's structure.
pub fn parse_file(
    text: &str,
    origin: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<FileConfig, ServerError> {
    let mut value = located::parse_yaml(text, origin).map_err(ServerError::ConfigAt)?;
    if value.is_null() {
        return Ok(FileConfig::default());
    }
    expand_yaml_strings(&mut value, lookup).map_err(|err| config_error(origin, err))?;
    let at = located::Origin {
        file: origin,
        text,
        overrides: &[],
    };
    located::deserialize(value, at).map_err(ServerError::ConfigAt)
}

/// Maps an expansion error of the file at `origin` to the server's error.
fn config_error(origin: &str, err: ConfigError) -> ServerError {
    match err {
        ConfigError::Unset { name } => ServerError::ConfigEnvUnset {
            origin: origin.to_owned(),
            name,
        },
        other => ServerError::ConfigInvalid {
            origin: origin.to_owned(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9999".to_owned()),
            "TRICKY" => Some("a: b # c".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_variables_in_strings() {
        let cfg = parse_file(
            "listen: \"127.0.0.1:${PORT}\"\ndata_dir: ${TRICKY}\n",
            "t",
            &env,
        )
        .map_err(|e| e.to_string());
        assert_eq!(
            cfg,
            Ok(FileConfig {
                listen: Some("127.0.0.1:9999".to_owned()),
                data_dir: Some(PathBuf::from("a: b # c")),
                ..FileConfig::default()
            })
        );
    }

    #[test]
    fn unset_variable_is_named() {
        let err = parse_file("redis_url: ${NOPE_UNSET}\n", "cfg.yaml", &env).err();
        assert!(
            matches!(&err, Some(ServerError::ConfigEnvUnset { name, .. }) if name == "NOPE_UNSET"),
            "{err:?}"
        );
    }

    #[test]
    fn errors_name_the_key_and_line_and_duplicates_are_refused() {
        let err = parse_file(
            "listen: 127.0.0.1:1\nrelay:\n  max_len: lots\n",
            "server.yaml",
            &env,
        )
        .map(drop)
        .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("invalid configuration: server.yaml:3: relay.max_len: invalid type: string \"lots\", expected a non-negative integer".to_owned())
        );
        let err = parse_file("relay: yes\n", "server.yaml", &env)
            .map(drop)
            .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("invalid configuration: server.yaml:1: relay: invalid type: string \"yes\", expected an object".to_owned())
        );
        let err = parse_file("listen: a\ndata_dir: b\nlisten: c\n", "server.yaml", &env)
            .map(drop)
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(err.contains("server.yaml:"), "{err}");
        assert!(err.contains("duplicate"), "{err}");
    }

    #[test]
    fn bad_syntax_and_unknown_fields_are_refused() {
        for text in ["listen: ${PORT", "listen: ${1X}", "lisen: x", "listen: [1"] {
            assert!(parse_file(text, "t", &env).is_err(), "{text}");
        }
        assert_eq!(parse_file("", "t", &env).ok(), Some(FileConfig::default()));
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let file = FileConfig {
            listen: Some("127.0.0.1:1".to_owned()),
            data_dir: Some(PathBuf::from("/from/file")),
            ..FileConfig::default()
        };
        let cfg = ServerConfig::resolve(
            Some(file),
            "t",
            Overrides {
                listen: Some("127.0.0.1:2".to_owned()),
                ..Overrides::default()
            },
        );
        let cfg = cfg.map_err(|e| e.to_string());
        assert_eq!(
            cfg.as_ref().map(|c| (c.listen.port(), c.data_dir.clone())),
            Ok((2, PathBuf::from("/from/file")))
        );
        let defaults = ServerConfig::resolve(None, "t", Overrides::default()).ok();
        assert_eq!(
            defaults.map(|c| (c.listen.to_string(), c.data_dir, c.redis_url)),
            Some((
                DEFAULT_LISTEN.to_owned(),
                PathBuf::from(DEFAULT_DATA_DIR),
                None
            ))
        );
    }

    #[test]
    fn database_url_from_file_or_flag() {
        let file = FileConfig {
            database_url: Some("postgres://postgres@127.0.0.1:5432/file".to_owned()),
            ..FileConfig::default()
        };
        let from_file = ServerConfig::resolve(Some(file.clone()), "t", Overrides::default());
        assert_eq!(
            from_file.ok().and_then(|c| c.database_url),
            Some("postgres://postgres@127.0.0.1:5432/file".to_owned())
        );
        let flag = Overrides {
            database_url: Some("postgresql://u@db.internal/flag".to_owned()),
            ..Overrides::default()
        };
        let from_flag = ServerConfig::resolve(Some(file.clone()), "t", flag);
        assert_eq!(
            from_flag.ok().and_then(|c| c.database_url),
            Some("postgresql://u@db.internal/flag".to_owned())
        );
        // An empty value (`TETHER_DATABASE_URL=`) means SQLite, like an absent one.
        let empty = Overrides {
            database_url: Some(String::new()),
            ..Overrides::default()
        };
        let sqlite = ServerConfig::resolve(None, "t", empty);
        assert_eq!(sqlite.ok().map(|c| c.database_url), Some(None));
    }

    #[test]
    fn invalid_values_are_refused() {
        let bad_listen = Overrides {
            listen: Some("localhost".to_owned()),
            ..Overrides::default()
        };
        assert!(ServerConfig::resolve(None, "t", bad_listen).is_err());
        let bad_redis = Overrides {
            redis_url: Some("not a url".to_owned()),
            ..Overrides::default()
        };
        assert!(matches!(
            ServerConfig::resolve(None, "t", bad_redis),
            Err(ServerError::RedisUrl { .. })
        ));
        for bad in ["mysql://h/db", "postgres://h:notaport/db", "host=h"] {
            let bad_database = Overrides {
                database_url: Some(bad.to_owned()),
                ..Overrides::default()
            };
            assert!(
                matches!(
                    ServerConfig::resolve(None, "t", bad_database),
                    Err(ServerError::DatabaseUrl { .. })
                ),
                "{bad}"
            );
        }
        let tiny = FileConfig {
            max_body_bytes: Some(10),
            ..FileConfig::default()
        };
        assert!(ServerConfig::resolve(Some(tiny), "t", Overrides::default()).is_err());
    }

    #[test]
    fn commands_section() {
        let defaults = ServerConfig::resolve(None, "t", Overrides::default()).map(|c| c.commands);
        assert_eq!(defaults.ok(), Some(CommandsConfig::default()));
        let file = parse_file(
            "commands:\n  connector: mock\n  mock_delay_ms: [0, 0]\n",
            "t",
            &env,
        )
        .ok();
        let commands = ServerConfig::resolve(file, "t", Overrides::default())
            .map(|c| c.commands)
            .ok();
        assert_eq!(
            commands,
            Some(CommandsConfig {
                connector: ConnectorKind::Mock,
                mock_delay: (Duration::ZERO, Duration::ZERO),
            })
        );
        for bad in [
            "commands:\n  connector: can\n",
            "commands:\n  mock_delay_ms: [5]\n",
        ] {
            assert!(parse_file(bad, "t", &env).is_err(), "{bad}");
        }
        let reversed = parse_file("commands:\n  mock_delay_ms: [9, 1]\n", "t", &env).ok();
        assert!(ServerConfig::resolve(reversed, "t", Overrides::default()).is_err());
    }

    #[test]
    fn relay_section_defaults_overrides_and_limits() {
        let defaults = ServerConfig::resolve(None, "t", Overrides::default()).map(|c| c.relay);
        assert_eq!(defaults.ok(), Some(RelayConfig::default()));
        let file = parse_file(
            "relay:\n  max_len: 0\n  max_age_secs: 60\n  replay_rate_per_s: 100\n  trim_interval_secs: 2\n",
            "t",
            &env,
        )
        .ok();
        let relay = ServerConfig::resolve(file, "t", Overrides::default())
            .map(|c| c.relay)
            .ok();
        assert_eq!(
            relay.map(|r| (r.max_len, r.max_age, r.replay_rate_per_s, r.trim_interval)),
            Some((
                None,
                Some(Duration::from_secs(60)),
                100,
                Duration::from_secs(2)
            ))
        );
        for bad in [
            "relay:\n  replay_rate_per_s: 0\n",
            "relay:\n  consumer_window: 0\n",
            "relay:\n  cut_through: 1000001\n",
            "relay:\n  trim_interval_secs: 0\n",
            "relay:\n  bogus: 1\n",
            "cors:\n  allowed_origins: [\"https://x/\"]\n",
            "cors:\n  origins: []\n",
        ] {
            let parsed = parse_file(bad, "t", &env);
            let resolved =
                parsed.and_then(|f| ServerConfig::resolve(Some(f), "t", Overrides::default()));
            assert!(resolved.is_err(), "{bad}");
        }
    }
}
