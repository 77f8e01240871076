//! Store tests that need no HTTP: presence-driven mode changes, migrations, ownership.

use chrono::Utc;

use super::*;
use crate::group_mode::{GroupBacklog, GroupMode, GroupStatus, OfflineSide};

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
    let version: i64 = store
        .lock()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(ServerError::db("test"))?;
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(store.authenticate_user(&issued.secret)?, Some(user));
    Ok(())
}

#[test]
fn newer_schema_is_refused() -> Result<(), ServerError> {
    let (dir, store) = fixture()?;
    store
        .lock()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .map_err(ServerError::db("test"))?;
    drop(store);
    let reopened = Store::open_in(&dir.path().join("data"));
    assert!(matches!(reopened, Err(ServerError::SchemaTooNew { .. })));
    Ok(())
}

#[test]
fn presence_drives_mode_changes_with_audit() -> Result<(), Box<dyn std::error::Error>> {
    let (_dir, store) = fixture()?;
    let now = Utc::now();
    let user = store.ensure_user("alice", now)?;
    let agent = store.create_agent(user.id, "edge", now)?.agent;
    let Announce::Created(a) = store.announce_dongle(&agent, "A1", now)? else {
        panic!("A1 should be new");
    };
    let Announce::Created(b) = store.announce_dongle(&agent, "B1", now)? else {
        panic!("B1 should be new");
    };
    let actor = Actor::User("alice".to_owned());
    let group = store
        .create_group(user.id, &actor, "pair", a.id, b.id, now)?
        .map_err(|r| format!("refused: {r:?}"))?;
    let none = |_| None;
    // Presence changes of an inactive group change no mode.
    assert!(store.set_dongle_online(a.id, true, now, &none)?.is_empty());
    let activated = store.set_group_activated(user.id, group.id, true, None, &actor, now)?;
    let (_, change) = activated.ok_or("group not found")?;
    assert_eq!(
        change.map(|c| (c.old, c.state.mode, c.state.offline_side)),
        Some((
            GroupMode::Inactive,
            GroupMode::Degraded,
            Some(OfflineSide::B)
        ))
    );
    let changes = store.set_dongle_online(b.id, true, now, &none)?;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].state.mode, GroupMode::Active);
    // A stream replaying its backlog keeps it degraded even with both sides online, and the
    // backlog shows.
    let backlog = GroupBacklog {
        a_to_b: 5,
        b_to_a: 0,
    };
    let replaying = GroupStatus {
        mode: GroupMode::Degraded,
        backlog,
        offline: Vec::new(),
        replaying: true,
    };
    let change =
        store.refresh_group_mode(group.id, Some(replaying), &Actor::DataPlane, "backlog", now)?;
    assert_eq!(
        change.map(|c| (c.state.mode, c.state.backlog)),
        Some((GroupMode::Degraded, backlog))
    );
    let audit = store.group_audit(user.id, group.id)?.unwrap_or_default();
    let trail: Vec<_> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.old_mode, e.new_mode))
        .collect();
    assert_eq!(
        trail,
        vec![
            ("user:alice", "create", None, Some(GroupMode::Inactive)),
            (
                "user:alice",
                "activate",
                Some(GroupMode::Inactive),
                Some(GroupMode::Degraded)
            ),
            (
                "data-plane",
                "presence",
                Some(GroupMode::Degraded),
                Some(GroupMode::Active)
            ),
            (
                "data-plane",
                "backlog",
                Some(GroupMode::Active),
                Some(GroupMode::Degraded)
            ),
        ]
    );
    assert!(store.mark_dongle_seen(a.id, now)?);
    assert!(!store.mark_dongle_seen(uuid::Uuid::new_v4(), now)?);
    Ok(())
}

#[test]
fn serials_belong_to_one_user() -> Result<(), ServerError> {
    let (_dir, store) = fixture()?;
    let now = Utc::now();
    let alice = store.ensure_user("alice", now)?;
    let bob = store.ensure_user("bob", now)?;
    let a1 = store.create_agent(alice.id, "a1", now)?.agent;
    let a2 = store.create_agent(alice.id, "a2", now)?.agent;
    let b1 = store.create_agent(bob.id, "b1", now)?.agent;
    assert!(matches!(
        store.announce_dongle(&a1, "S", now)?,
        Announce::Created(_)
    ));
    // The same user's other agent takes the dongle over.
    match store.announce_dongle(&a2, "S", now)? {
        Announce::Existing(d) => assert_eq!(d.agent_id, a2.id),
        other => panic!("expected Existing, got {other:?}"),
    }
    // Bob's "S" is his own dongle: Alice's neither blocks it nor is touched by it.
    let bobs = match store.announce_dongle(&b1, "S", now)? {
        Announce::Created(d) => d,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(bobs.user_id, bob.id);
    let alices = store.list_dongles(alice.id)?;
    assert_eq!(alices.len(), 1);
    assert_ne!(alices[0].id, bobs.id);
    assert_eq!(alices[0].agent_id, a2.id);
    let ids = |list: Vec<Dongle>| list.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_dongles(bob.id)?), vec![bobs.id]);
    assert_eq!(
        store.dongle_for_agent(&b1, "S")?.map(|d| d.id),
        Some(bobs.id)
    );
    assert_eq!(
        store.dongle_for_agent(&a2, "S")?.map(|d| d.id),
        Some(alices[0].id)
    );
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
    let conn = store.lock();
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
