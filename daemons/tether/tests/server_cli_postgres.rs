//! The real `tether` binary on PostgreSQL records: `server migrate`, the token commands with
//! `--database-url` or `TETHER_DATABASE_URL`, and two server instances (each with its own data
//! directory) that share users, tokens and agents through one database.

#[path = "../../server/tests/server_support/mod.rs"]
mod server_support;

mod cli_support;

use cli_support::{start_server, stdout, stop, tether};
use reqwest::StatusCode;
use server_support::{Api, TestResult, code, refused_after_revocation};
use tether_testkit::postgres::TestDatabase;

#[tokio::test]
async fn two_instances_share_the_records_of_one_database() -> TestResult {
    let Some(db) = TestDatabase::create() else {
        return Ok(());
    };
    let url = db.url.as_str();
    let migrated = tether(&["server", "migrate", "--database-url", url], None)?;
    assert!(migrated.status.success(), "{migrated:?}");
    let version = format!(
        "postgresql: schema version {}",
        tether_server::store::POSTGRES_SCHEMA_VERSION
    );
    assert_eq!(stdout(&migrated), version);
    // Again: nothing to do, same version.
    let again = tether(&["server", "migrate"], Some(url))?;
    assert_eq!(stdout(&again), version);

    let dir = tempfile::tempdir()?;
    let created = tether(
        &[
            "server",
            "token",
            "create",
            "--user",
            "alice",
            "--database-url",
            url,
        ],
        None,
    )?;
    assert!(created.status.success(), "{created:?}");
    let token = stdout(&created);
    assert!(token.starts_with("tu_"), "{token}");
    assert!(
        !dir.path().join("one").join("tether.db").exists(),
        "no SQLite records"
    );

    let (one, one_url) = start_server(&dir.path().join("one"), Some(url))?;
    let (two, two_url) = start_server(&dir.path().join("two"), Some(url))?;
    let (api_one, api_two) = (Api::checked(one_url.clone()), Api::checked(two_url.clone()));
    // An agent created through one instance is listed, and its token accepted, by the other.
    let body = serde_json::json!({ "name": "car" });
    let (status, agent) = api_one.post("/api/v1/agents", &token, body).await?;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let (status, body) = api_two.get("/api/v1/agents", &token).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["agents"][0]["id"], agent["id"]);
    assert_eq!(body["agents"][0]["created_at"], agent["created_at"]);

    // Revoked through the CLI: refused by both instances.
    let listing = stdout(&tether(&["server", "token", "list"], Some(url))?);
    let id = listing
        .lines()
        .find(|row| row.contains(&token[3..19]))
        .and_then(|row| row.split('\t').next())
        .ok_or_else(|| format!("no row for the token in {listing}"))?
        .to_owned();
    let revoked = tether(&["server", "token", "revoke", &id], Some(url))?;
    assert!(revoked.status.success(), "{revoked:?}");
    for instance in [&one_url, &two_url] {
        let url = format!("{instance}/api/v1/agents");
        let (status, body) = refused_after_revocation(&api_one.client, &url, &token).await?;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    stop(one)?;
    stop(two)?;
    tokio::task::spawn_blocking(move || drop(db)).await?;
    Ok(())
}

#[test]
fn an_unreachable_database_fails_with_its_reason() -> TestResult {
    let out = tether(
        &[
            "server",
            "migrate",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x",
        ],
        None,
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to PostgreSQL"), "{err}");
    assert!(err.contains("refused"), "{err}");
    let bad = tether(
        &["server", "migrate", "--database-url", "mysql://h/db"],
        None,
    )?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid database URL"));
    Ok(())
}
