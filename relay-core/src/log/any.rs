//! Backend choice in configuration, and a log that dispatches to the chosen backend.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    AppendOutcome, Backlog, Item, MemoryStreamLog, ReadBatch, RedisStreamLog, Retention, Seq,
    SqliteStreamLog, StreamLog, Trimmed,
};
use crate::error::Result;
use crate::sqlite::Durability;

/// Which stream log backend to use, and with what durability.
///
/// Tagged by `type`, for example in YAML:
///
/// ```yaml
/// type: sqlite
/// path: /var/lib/tether/streams.db
/// synchronous: normal
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamLogConfig {
    /// Process memory. Fastest; **everything is lost when the process exits**, and producers
    /// that resume afterwards show up to readers as `missing` gaps. For tests and for
    /// deployments that accept loss on restart.
    Memory,
    /// A SQLite file (WAL, one transaction per append batch) — the durable default.
    /// With `synchronous: normal` an acknowledged item survives a crash of the process but an
    /// OS crash or power loss may lose the last transactions; `synchronous: full` survives
    /// both at a lower rate for small batches. The file must be on local disk.
    Sqlite {
        /// The database file, normally in the data directory.
        path: PathBuf,
        /// `normal` (the default) or `full`: see [`Durability`].
        #[serde(default = "default_durability")]
        synchronous: Durability,
    },
    /// Redis Streams, shared by several servers. Exactly as durable as the Redis server is
    /// configured: with RDB snapshots only, a Redis crash loses writes since the last
    /// snapshot; with AOF `appendfsync everysec` up to about one second; with `always`,
    /// nothing acknowledged. Needs `maxmemory-policy noeviction`, or Redis may evict streams.
    Redis {
        /// `redis://host:port/db` URL.
        url: String,
        /// Prefix of every key this log touches (default `tether:`).
        #[serde(default = "default_key_prefix")]
        key_prefix: String,
    },
}

fn default_durability() -> Durability {
    Durability::Normal
}

fn default_key_prefix() -> String {
    "tether:".to_owned()
}

impl StreamLogConfig {
    /// Opens the configured backend.
    pub async fn open(&self) -> Result<AnyStreamLog> {
        Ok(match self {
            StreamLogConfig::Memory => AnyStreamLog::Memory(MemoryStreamLog::new()),
            StreamLogConfig::Sqlite { path, synchronous } => {
                AnyStreamLog::Sqlite(SqliteStreamLog::open(path, *synchronous).await?)
            }
            StreamLogConfig::Redis { url, key_prefix } => {
                AnyStreamLog::Redis(Box::new(RedisStreamLog::connect(url, key_prefix).await?))
            }
        })
    }
}

/// One of the backends, chosen at run time; implements [`StreamLog`] by dispatch.
#[derive(Debug, Clone)]
pub enum AnyStreamLog {
    /// In process memory.
    Memory(MemoryStreamLog),
    /// In a SQLite file.
    Sqlite(SqliteStreamLog),
    /// In Redis Streams (boxed: the connection manager is large).
    Redis(Box<RedisStreamLog>),
}

macro_rules! dispatch {
    ($self:ident, $log:ident => $call:expr) => {
        match $self {
            AnyStreamLog::Memory($log) => $call.await,
            AnyStreamLog::Sqlite($log) => $call.await,
            AnyStreamLog::Redis($log) => $call.await,
        }
    };
}

impl StreamLog for AnyStreamLog {
    async fn append(&self, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
        dispatch!(self, log => log.append(stream, items))
    }

    async fn read(&self, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
        dispatch!(self, log => log.read(stream, after, max))
    }

    async fn store_cursor(&self, stream: &str, consumer: &str, seq: Seq) -> Result<()> {
        dispatch!(self, log => log.store_cursor(stream, consumer, seq))
    }

    async fn load_cursor(&self, stream: &str, consumer: &str) -> Result<Option<Seq>> {
        dispatch!(self, log => log.load_cursor(stream, consumer))
    }

    async fn trim(&self, stream: &str, retention: &Retention, now_ms: u64) -> Result<Vec<Trimmed>> {
        dispatch!(self, log => log.trim(stream, retention, now_ms))
    }

    async fn backlog(&self, stream: &str, after: Seq) -> Result<Backlog> {
        dispatch!(self, log => log.backlog(stream, after))
    }

    async fn delete(&self, stream: &str) -> Result<u64> {
        dispatch!(self, log => log.delete(stream))
    }
}
