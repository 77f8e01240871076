//! Runs a records-store scenario against each backend: SQLite in a temporary directory, and
//! PostgreSQL in a database of its own (the test kit's [`TestDatabase`]: `tether_test_<random>`,
//! created on `postgres://postgres@127.0.0.1:5432` — or `TETHER_TEST_POSTGRES_URL` — and
//! dropped after).
//!
//! When PostgreSQL cannot be reached the PostgreSQL run is skipped with a message, unless
//! `TETHER_REQUIRE_POSTGRES=1` (scripts/test.sh sets it): then it fails.

#![allow(dead_code, unreachable_pub)]

use tether_server::store::Store;

/// What a scenario returns.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub use tether_testkit::postgres::TestDatabase;

/// Runs `scenario` on a fresh SQLite store.
pub fn on_sqlite(scenario: fn(&Store) -> TestResult) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open_in(&dir.path().join("data"))?;
    scenario(&store)
}

/// Runs `scenario` on a fresh PostgreSQL store (or skips, see the module docs).
pub fn on_postgres(scenario: fn(&Store) -> TestResult) -> TestResult {
    let Some(db) = TestDatabase::create() else {
        return Ok(());
    };
    let store = Store::connect(&db.url)?;
    let result = scenario(&store);
    drop(store);
    drop(db);
    result
}
