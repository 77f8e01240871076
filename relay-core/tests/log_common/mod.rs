//! Test harnesses for the stream log backends, shared by `log_conformance.rs` and
//! `log_model.rs`.
//!
//! A harness owns one log plus the storage under it, can close and reopen the log over the same
//! storage (durable backends), and removes what it created at the end. The Redis harness uses
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) and a unique key prefix; it panics when Redis
//! is unreachable, so a missing server fails the run instead of skipping it.

#![allow(dead_code, async_fn_in_trait)]

use bytes::Bytes;
use relay_core::log::{Item, MemoryStreamLog, RedisStreamLog, Seq, SqliteStreamLog, StreamLog};
use relay_core::sqlite::Durability;
use tether_testkit::redis as test_redis;
pub(crate) use tether_testkit::redis::redis_url;

/// One backend under test.
pub(crate) trait Harness {
    /// The log type.
    type Log: StreamLog;
    /// The open log.
    fn log(&self) -> &Self::Log;
    /// Whether the backend keeps data across [`Harness::reopen`].
    fn durable(&self) -> bool;
    /// Closes the log and opens it again over the same storage (a fresh, empty log for
    /// non-durable backends).
    async fn reopen(&mut self);
    /// Removes what the harness created.
    async fn cleanup(self);
}

/// Memory backend.
pub(crate) struct MemoryHarness {
    log: MemoryStreamLog,
}

impl MemoryHarness {
    /// A fresh memory log.
    pub(crate) async fn new() -> Self {
        Self {
            log: MemoryStreamLog::new(),
        }
    }
}

impl Harness for MemoryHarness {
    type Log = MemoryStreamLog;
    fn log(&self) -> &MemoryStreamLog {
        &self.log
    }
    fn durable(&self) -> bool {
        false
    }
    async fn reopen(&mut self) {
        self.log = MemoryStreamLog::new();
    }
    async fn cleanup(self) {}
}

/// SQLite backend in a temporary directory.
pub(crate) struct SqliteHarness {
    dir: tempfile::TempDir,
    log: Option<SqliteStreamLog>,
}

impl SqliteHarness {
    /// A fresh database file in a new temporary directory.
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = SqliteStreamLog::open(dir.path().join("streams.db"), Durability::Normal)
            .await
            .expect("open SQLite stream log");
        Self {
            dir,
            log: Some(log),
        }
    }
}

impl Harness for SqliteHarness {
    type Log = SqliteStreamLog;
    fn log(&self) -> &SqliteStreamLog {
        self.log.as_ref().expect("log is open")
    }
    fn durable(&self) -> bool {
        true
    }
    async fn reopen(&mut self) {
        // Drop first so the connection is really closed before the file is opened again.
        drop(self.log.take());
        self.log = Some(
            SqliteStreamLog::open(self.dir.path().join("streams.db"), Durability::Normal)
                .await
                .expect("reopen SQLite stream log"),
        );
    }
    async fn cleanup(self) {}
}

/// Redis backend with a unique key prefix.
pub(crate) struct RedisHarness {
    prefix: String,
    log: Option<RedisStreamLog>,
}

impl RedisHarness {
    /// Connects with a new unique prefix. Panics when Redis is unreachable.
    pub(crate) async fn new() -> Self {
        let prefix = format!("tether-test:{:016x}:", rand::random::<u64>());
        let log = Self::connect(&prefix).await;
        Self {
            prefix,
            log: Some(log),
        }
    }

    async fn connect(prefix: &str) -> RedisStreamLog {
        let url = redis_url();
        match RedisStreamLog::connect(&url, prefix).await {
            Ok(log) => log,
            Err(e) => panic!("Redis at {url} is required for this test (set REDIS_URL): {e}"),
        }
    }
}

impl Harness for RedisHarness {
    type Log = RedisStreamLog;
    fn log(&self) -> &RedisStreamLog {
        self.log.as_ref().expect("log is open")
    }
    fn durable(&self) -> bool {
        true
    }
    async fn reopen(&mut self) {
        drop(self.log.take());
        self.log = Some(Self::connect(&self.prefix).await);
    }
    async fn cleanup(self) {
        let mut conn = test_redis::connect(&redis_url())
            .await
            .expect("Redis connection for cleanup");
        test_redis::delete_prefix(&mut conn, &self.prefix)
            .await
            .expect("delete test keys");
    }
}

/// The payload the tests attach to `seq` (so a wrong item is always detected).
pub(crate) fn payload(stream: &str, seq: Seq) -> Bytes {
    Bytes::from(format!("{stream}/{seq}"))
}

/// An item with the standard test payload.
pub(crate) fn item(stream: &str, seq: Seq, ts_ms: u64) -> Item {
    Item {
        seq,
        ts_ms,
        payload: payload(stream, seq),
    }
}

/// Items for seqs `range` with `ts_ms = seq * 10`.
pub(crate) fn items(stream: &str, range: std::ops::RangeInclusive<Seq>) -> Vec<Item> {
    range.map(|s| item(stream, s, s * 10)).collect()
}
