//! SQLite-only store tests: reopening, schema versions and the migration of old files. The
//! behaviour both backends share is the conformance suite in `tests/records_conformance.rs`.

use chrono::Utc;

use super::*;

fn fixture() -> Result<(tempfile::TempDir, Store), ServerError> {
    let dir = tempfile::tempdir().map_err(|source| ServerError::Io {
        action: "create temp dir",
        path: PathBuf::from("/tmp"),
        source,
    })?;
    let store = Store::open_in(&dir.path().join("data"))?;
    Ok((dir, store))
}

#[test]
fn reopening_keeps_records_and_schema_version() -> Result<(), ServerError> {
    let (dir, store) = fixture()?;
    let (user, _, issued) = store.create_user_token("alice", Utc::now())?;
    drop(store);
    let store = Store::open_in(&dir.path().join("data"))?;
    assert_eq!(store.schema_version()?, SCHEMA_VERSION);
    assert_eq!(store.authenticate_user(&issued.secret)?, Some(user));
    Ok(())
}

#[test]
fn newer_schema_is_refused() -> Result<(), ServerError> {
    let (dir, store) = fixture()?;
    store
        .sqlite()
        .ok_or(ServerError::db("test")(sql::DbError::Closed))?
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .map_err(ServerError::db("test"))?;
    drop(store);
    let reopened = Store::open_in(&dir.path().join("data"));
    assert!(matches!(reopened, Err(ServerError::SchemaTooNew { .. })));
    Ok(())
}

#[test]
fn version_1_databases_migrate_to_serials_per_user_keeping_every_row()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("records.db");
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch(schema::V1)?;
        conn.pragma_update(None, "user_version", 1)?;
        conn.execute_batch(
            "INSERT INTO users VALUES ('u1', 'alice', 1);
             INSERT INTO agents VALUES ('a1', 'u1', 'car', 'l1', x'00', 1, NULL);
             INSERT INTO dongles VALUES ('d1', 'u1', 'VIN-1', 'a1', 1, 5, 2);
             INSERT INTO dongles VALUES ('d2', 'u1', 'VIN-2', 'a1', 0, NULL, 3);
             INSERT INTO relay_groups VALUES ('g1', 'u1', 'g', 'd1', 'd2', 1, 'degraded', 4);
             INSERT INTO group_members VALUES ('d1', 'g1', 'a');
             INSERT INTO group_members VALUES ('d2', 'g1', 'b');",
        )?;
    }
    let store = Store::open(&path)?;
    let conn = store.sqlite().ok_or("not SQLite")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    assert_eq!(version, SCHEMA_VERSION);
    let rows: Vec<(String, String, String, i64, Option<i64>)> = conn
        .prepare("SELECT id, user_id, serial, online, last_seen FROM dongles ORDER BY id")?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        rows,
        vec![
            ("d1".into(), "u1".into(), "VIN-1".into(), 1, Some(5)),
            ("d2".into(), "u1".into(), "VIN-2".into(), 0, None)
        ]
    );
    let broken: i64 = conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    assert_eq!(broken, 0);
    // The same serial under another user is now a row of its own; twice for one user is not.
    conn.execute_batch(
        "INSERT INTO users VALUES ('u2', 'bob', 1);
         INSERT INTO agents VALUES ('a2', 'u2', 'car', 'l2', x'00', 1, NULL);
         INSERT INTO dongles VALUES ('d3', 'u2', 'VIN-1', 'a2', 0, NULL, 9);",
    )?;
    assert!(
        conn.execute(
            "INSERT INTO dongles VALUES ('d4', 'u2', 'VIN-1', 'a2', 0, NULL, 9)",
            []
        )
        .is_err()
    );
    // Deleting a dongle still in a group is still refused by the foreign keys.
    assert!(
        conn.execute("DELETE FROM dongles WHERE id = 'd1'", [])
            .is_err()
    );
    Ok(())
}
