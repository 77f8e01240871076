//! Runs a records-store scenario against each backend: SQLite in a temporary directory, and
//! PostgreSQL in a database of its own (`tether_test_<random>`, created on
//! `postgres://postgres@127.0.0.1:5432` — or `TETHER_TEST_POSTGRES_URL` — and dropped after).
//!
//! When PostgreSQL cannot be reached the PostgreSQL run is skipped with a message, unless
//! `TETHER_REQUIRE_POSTGRES=1` (scripts/test.sh sets it): then it fails.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tether_server::store::Store;

/// What a scenario returns.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The server PostgreSQL tests create their databases on.
pub fn postgres_base_url() -> String {
    std::env::var("TETHER_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh PostgreSQL database, dropped (with any connections left to it) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    /// `postgres://…/<name>`.
    pub url: String,
}

fn admin() -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = format!("{}/postgres", postgres_base_url()).parse()?;
    config.connect_timeout(Duration::from_secs(3));
    config.connect(postgres::NoTls)
}

impl TestDatabase {
    /// Creates the database; `None` (after saying why) when PostgreSQL is unreachable and not
    /// required.
    pub fn create() -> Option<TestDatabase> {
        let mut client = match admin() {
            Ok(client) => client,
            Err(err) => {
                let required = std::env::var("TETHER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "PostgreSQL at {} is unreachable and TETHER_REQUIRE_POSTGRES=1: {err}",
                    postgres_base_url()
                );
                eprintln!("skipping the PostgreSQL run: {err}");
                return None;
            }
        };
        let name = format!("tether_test_{}", uuid::Uuid::new_v4().simple());
        if let Err(err) = client.batch_execute(&format!("CREATE DATABASE {name}")) {
            panic!("cannot create database {name}: {err}");
        }
        let url = format!("{}/{name}", postgres_base_url());
        Some(TestDatabase { name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The `postgres` client must not run on an async runtime's thread.
        let dropped = std::thread::spawn(move || {
            admin().and_then(|mut client| {
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("cannot drop database {}: {err}", self.name);
        }
    }
}

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
