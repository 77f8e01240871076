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

/// Storage that outlives the log opened over it (durable backends).
pub(crate) trait Storage {
    /// The log type.
    type Log: StreamLog;
    /// Opens a log over this storage.
    async fn open(&self) -> Self::Log;
    /// Removes what the storage holds.
    async fn cleanup(self);
}

/// A durable backend: its storage and the log open over it.
pub(crate) struct DurableHarness<S: Storage> {
    storage: S,
    log: Option<S::Log>,
}

impl<S: Storage> DurableHarness<S> {
    async fn with(storage: S) -> Self {
        let log = storage.open().await;
        Self {
            storage,
            log: Some(log),
        }
    }
}

impl<S: Storage> Harness for DurableHarness<S> {
    type Log = S::Log;
    fn log(&self) -> &S::Log {
        self.log.as_ref().expect("log is open")
    }
    fn durable(&self) -> bool {
        true
    }
    async fn reopen(&mut self) {
        // Drop first so the connection is really closed before the storage is opened again.
        drop(self.log.take());
        self.log = Some(self.storage.open().await);
    }
    async fn cleanup(self) {
        drop(self.log);
        self.storage.cleanup().await;
    }
}

/// A SQLite database file in a temporary directory.
pub(crate) struct SqliteFile(tempfile::TempDir);

impl Storage for SqliteFile {
    type Log = SqliteStreamLog;
    async fn open(&self) -> SqliteStreamLog {
        SqliteStreamLog::open(self.0.path().join("streams.db"), Durability::Normal)
            .await
            .expect("open SQLite stream log")
    }
    async fn cleanup(self) {}
}

/// SQLite backend in a temporary directory.
pub(crate) type SqliteHarness = DurableHarness<SqliteFile>;

impl SqliteHarness {
    /// A fresh database file in a new temporary directory.
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::with(SqliteFile(dir)).await
    }
}

/// The keys of Redis under a unique prefix.
pub(crate) struct RedisPrefix(String);

impl Storage for RedisPrefix {
    type Log = RedisStreamLog;
    /// Panics when Redis is unreachable.
    async fn open(&self) -> RedisStreamLog {
        let url = redis_url();
        match RedisStreamLog::connect(&url, &self.0).await {
            Ok(log) => log,
            Err(e) => panic!("Redis at {url} is required for this test (set REDIS_URL): {e}"),
        }
    }
    async fn cleanup(self) {
        let mut conn = test_redis::connect(&redis_url())
            .await
            .expect("Redis connection for cleanup");
        test_redis::delete_prefix(&mut conn, &self.0)
            .await
            .expect("delete test keys");
    }
}

/// Redis backend with a unique key prefix.
pub(crate) type RedisHarness = DurableHarness<RedisPrefix>;

impl RedisHarness {
    /// Connects with a new unique prefix. Panics when Redis is unreachable.
    pub(crate) async fn new() -> Self {
        let prefix = format!("tether-test:{:016x}:", rand::random::<u64>());
        Self::with(RedisPrefix(prefix)).await
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
