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
    assert_eq!(
        store.announce_dongle(&b1, "S", now)?,
        Announce::OwnedByOtherUser
    );
    assert!(store.list_dongles(bob.id)?.is_empty());
    assert_eq!(store.dongle_for_agent(&b1, "S")?, None);
    Ok(())
}
