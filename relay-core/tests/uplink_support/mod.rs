//! Test harness for the outbox stores, shared by `uplink_outbox_conformance.rs`,
//! `uplink_outbox_model.rs`, `uplink_sim.rs` and (for its record helpers)
//! `uplink_inbox_conformance.rs`: one store behind its thread, which can be
//! closed and opened again over the same storage (a producer restart).

#![allow(dead_code)]

use std::path::PathBuf;

use bytes::Bytes;
use relay_core::sqlite::Durability;
use relay_core::uplink::{
    MemoryOutboxStore, NewRecord, OutboxRecord, OutboxStoreHandle, SqliteOutboxStore,
};

/// One backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Sqlite(Durability),
}

/// Every backend, SQLite at both sync levels.
pub(crate) const BACKENDS: [Backend; 3] = [
    Backend::Memory,
    Backend::Sqlite(Durability::Full),
    Backend::Sqlite(Durability::Normal),
];

/// A store on its thread, plus the directory of its file.
pub(crate) struct StoreHarness {
    pub(crate) backend: Backend,
    dir: tempfile::TempDir,
    handle: Option<OutboxStoreHandle>,
}

impl StoreHarness {
    /// A fresh, empty store.
    pub(crate) fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut harness = StoreHarness {
            backend,
            dir,
            handle: None,
        };
        harness.handle = Some(harness.spawn());
        harness
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("outbox.db")
    }

    fn spawn(&self) -> OutboxStoreHandle {
        match self.backend {
            Backend::Memory => OutboxStoreHandle::spawn(MemoryOutboxStore::new()),
            Backend::Sqlite(sync) => OutboxStoreHandle::spawn(
                SqliteOutboxStore::open(self.path(), sync).expect("open the SQLite store"),
            ),
        }
        .expect("spawn the store thread")
    }

    /// The handle (clone it to open streams).
    pub(crate) fn handle(&self) -> &OutboxStoreHandle {
        self.handle.as_ref().expect("store open")
    }

    /// Whether [`reopen`](Self::reopen) keeps what was stored.
    pub(crate) fn durable(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// A producer restart: closes the store and opens it again over the same file. The memory
    /// store stays as it is (its producer restarts, not its process). Drop every stream first.
    pub(crate) async fn reopen(&mut self) {
        if self.durable() {
            if let Some(handle) = self.handle.take() {
                handle.close().await.expect("close the store");
            }
            self.handle = Some(self.spawn());
        }
    }
}

/// A single-threaded runtime for a property test case.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `cases` cases, failures persisted to `file` (under `proptest-regressions/`).
pub(crate) fn proptest_config(cases: u32, file: &'static str) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(file),
        )),
        ..proptest::test_runner::Config::default()
    }
}

/// A record taken at `ts_ms` whose payload names it.
pub(crate) fn rec(ts_ms: u64) -> NewRecord {
    NewRecord {
        ts_ms,
        payload: Bytes::from(format!("r{ts_ms}")),
    }
}

/// Records taken at each of `ts`.
pub(crate) fn recs(ts: std::ops::Range<u64>) -> Vec<NewRecord> {
    ts.map(rec).collect()
}

/// The seqs of `records`.
pub(crate) fn seqs(records: &[OutboxRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// The payloads of `records`, as strings.
pub(crate) fn payloads(records: &[OutboxRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}
