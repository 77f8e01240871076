//! A PostgreSQL database of a test's own: `tether_test_<random>`, created on
//! `postgres://postgres@127.0.0.1:5432` (or `TETHER_TEST_POSTGRES_URL`) and dropped, with any
//! connections left to it, when the [`TestDatabase`] is dropped.
//!
//! When PostgreSQL cannot be reached [`TestDatabase::create`] says why and answers `None`, unless
//! `TETHER_REQUIRE_POSTGRES=1` (scripts/test.sh sets it): then it panics. The synchronous
//! `postgres` client it uses runs on a thread of its own, so both work on an async runtime's
//! thread too.

use std::time::Duration;

/// The server PostgreSQL tests create their databases on (no database name).
pub fn base_url() -> String {
    std::env::var("TETHER_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Whether a test must fail rather than skip when PostgreSQL is unreachable.
pub fn required() -> bool {
    std::env::var("TETHER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A fresh PostgreSQL database, dropped (with any connections left to it) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    /// `postgres://…/<name>`.
    pub url: String,
}

/// Runs `sql` on the maintenance database, on a thread of its own: `Err` when PostgreSQL
/// cannot be reached, `Ok(Err)` when it refuses `sql`.
fn admin_execute(sql: String) -> Result<Result<(), ::postgres::Error>, ::postgres::Error> {
    std::thread::spawn(move || {
        let mut config: ::postgres::Config = format!("{}/postgres", base_url()).parse()?;
        config.connect_timeout(Duration::from_secs(3));
        let mut client = config.connect(::postgres::NoTls)?;
        Ok(client.batch_execute(&sql))
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl TestDatabase {
    /// Creates the database; `None` (after saying why) when PostgreSQL is unreachable and not
    /// [`required`]. Panics when it is reachable but refuses the database.
    pub fn create() -> Option<TestDatabase> {
        let name = format!("tether_test_{}", uuid::Uuid::new_v4().simple());
        match admin_execute(format!("CREATE DATABASE {name}")) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("cannot create database {name}: {err}"),
            Err(err) => {
                assert!(
                    !required(),
                    "PostgreSQL at {} is unreachable and TETHER_REQUIRE_POSTGRES=1: {err}",
                    base_url()
                );
                eprintln!("skipping the PostgreSQL run: {err}");
                return None;
            }
        }
        let url = format!("{}/{name}", base_url());
        Some(TestDatabase { name, url })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) | Ok(Err(err)) = admin_execute(sql) {
            eprintln!("cannot drop database {}: {err}", self.name);
        }
    }
}
