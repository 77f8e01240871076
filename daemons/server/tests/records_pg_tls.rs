//! PostgreSQL `sslmode` in `--database-url` (`docs/cluster.md`, "PostgreSQL over TLS"), against
//! the local server: `disable` and `prefer` connect; `require` connects over TLS when the
//! server offers it and is refused with a clear error when it does not; `verify-full` refuses
//! a certificate the platform does not trust (the local server's is self-signed) with the
//! reason; `verify-ca` is refused before connecting.

mod records_support;

use records_support::{TestDatabase, TestResult};
use tether_server::store::{POSTGRES_SCHEMA_VERSION, Store};

fn with_mode(db: &TestDatabase, mode: &str) -> String {
    format!("{}?sslmode={mode}", db.url)
}

/// Whether the local server offers TLS (`SHOW ssl`), asked without TLS.
fn server_offers_tls(db: &TestDatabase) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut client = postgres::Client::connect(&with_mode(db, "disable"), postgres::NoTls)?;
    let ssl: String = client.query_one("SHOW ssl", &[])?.get(0);
    Ok(ssl == "on")
}

#[test]
fn sslmode_disable_prefer_and_require_follow_libpq() -> TestResult {
    let Some(db) = TestDatabase::create() else {
        return Ok(());
    };
    for mode in ["disable", "prefer"] {
        let store = Store::connect(&with_mode(&db, mode))?;
        assert_eq!(store.schema_version()?, POSTGRES_SCHEMA_VERSION, "{mode}");
    }
    let required = Store::connect(&with_mode(&db, "require"));
    if server_offers_tls(&db)? {
        let store = required?;
        assert_eq!(store.schema_version()?, POSTGRES_SCHEMA_VERSION);
        // The pool's connections are encrypted too.
        let mut check = postgres::Client::connect(&with_mode(&db, "disable"), postgres::NoTls)?;
        let encrypted: i64 = check
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
                 WHERE ssl AND datname = current_database() AND application_name = 'tether-server'",
                &[],
            )?
            .get(0);
        assert!(encrypted >= 1, "no TLS connection of the store is seen");
    } else {
        let err = required
            .err()
            .ok_or("sslmode=require connected without TLS")?;
        let text = err.to_string();
        assert!(text.contains("TLS"), "{text}");
    }
    Ok(())
}

#[test]
fn sslmode_verify_full_refuses_an_untrusted_certificate_and_verify_ca_is_refused() -> TestResult {
    let Some(db) = TestDatabase::create() else {
        return Ok(());
    };
    let err = Store::connect(&with_mode(&db, "verify-ca"))
        .err()
        .ok_or("verify-ca was accepted")?;
    assert!(err.to_string().contains("verify-full"), "{err}");
    let verified = Store::connect(&with_mode(&db, "verify-full"));
    let err = verified
        .err()
        .ok_or("verify-full accepted the local server's certificate")?;
    let text = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(
        text.contains("certificate") || text.contains("TLS"),
        "the error does not say why: {text}"
    );
    Ok(())
}
