//! The records store's conformance suite: every scenario runs on SQLite and on PostgreSQL and
//! must give the same answers (refusals, ownership, order, timestamps to the millisecond).
//! PostgreSQL-only behaviour follows: concurrent starts against one fresh database, races
//! between writers mapped to the same refusals, a newer schema refused.

mod records_support;

use std::sync::{Arc, Barrier};

use can_io::uds::EcuAddress;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tether_server::ServerError;
use tether_server::group_mode::{GroupBacklog, GroupMode, GroupStatus, OfflineSide};
use tether_server::store::{
    Actor, Announce, CommandQuery, CommandRecord, CommandStatus, CommandWrite, CommandWritten,
    Dongle, GroupRefusal, POSTGRES_SCHEMA_VERSION, ResponseOutcome, Store, Vehicle, VehicleRefusal,
};
use uuid::Uuid;

use records_support::{TestDatabase, TestResult, on_postgres, on_sqlite};

/// Each scenario as `sqlite::<name>` and `postgres::<name>`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() -> super::TestResult {
                super::on_sqlite(super::$name)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() -> super::TestResult {
                super::on_postgres(super::$name)
            })*
        }
    };
}

conformance!(
    users_and_tokens,
    agents_belong_to_their_user,
    presence_drives_mode_changes_with_audit,
    serials_belong_to_one_user,
    group_refusals_and_deletion,
    presence_reset_at_start,
    presence_reset_of_listed_dongles_not_seen_since,
    vehicles_and_their_refusals,
    command_lifecycle,
    command_listing_filters_and_pages,
    command_writes_in_one_commit,
    commands_are_adopted_once_from_their_recorded_owner,
    timestamps_keep_milliseconds,
);

/// A fixed time with sub-millisecond digits, which both backends drop.
fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_780_000_000_000 + ms)
        .single()
        .unwrap_or_default()
        + chrono::Duration::microseconds(456)
}

fn users_and_tokens(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    assert_eq!(
        store.ensure_user("alice", at(5))?,
        alice,
        "ensure_user is idempotent"
    );
    let (user, id, issued) = store.create_user_token("alice", at(1))?;
    assert_eq!(user, alice);
    let (bob, bob_token, bob_issued) = store.create_user_token("bob", at(2))?;
    assert_eq!(
        store.authenticate_user(&issued.secret)?,
        Some(alice.clone())
    );
    assert_eq!(
        store.authenticate_user(&bob_issued.secret)?,
        Some(bob.clone())
    );
    // A token with the right lookup key and a wrong secret, and malformed ones, are refused.
    let mut forged = issued.secret.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    assert_eq!(store.authenticate_user(&forged)?, None);
    assert_eq!(store.authenticate_user("tu_nope")?, None);
    let tokens = store.list_user_tokens(None)?;
    assert_eq!(
        tokens
            .iter()
            .map(|t| (t.id, t.user.as_str()))
            .collect::<Vec<_>>(),
        vec![(id, "alice"), (bob_token, "bob")]
    );
    assert_eq!(store.list_user_tokens(Some("bob"))?.len(), 1);
    assert!(store.list_user_tokens(Some("carol"))?.is_empty());
    assert!(store.revoke_user_token(id, at(3))?);
    assert!(!store.revoke_user_token(id, at(4))?, "already revoked");
    assert!(matches!(
        store.revoke_user_token(Uuid::new_v4(), at(4)),
        Err(ServerError::UnknownToken { .. })
    ));
    assert_eq!(store.authenticate_user(&issued.secret)?, None);
    let revoked = store.list_user_tokens(Some("alice"))?;
    assert_eq!(revoked[0].revoked_at, Some(trunc(at(3))));
    store.ping()?;
    Ok(())
}

fn trunc(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or_default()
}

fn agents_belong_to_their_user(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let bob = store.ensure_user("bob", at(0))?;
    let first = store.create_agent(alice.id, "car", at(1))?;
    let second = store.create_agent(alice.id, "van", at(2))?;
    let bobs = store.create_agent(bob.id, "truck", at(3))?;
    assert_eq!(
        store.list_agents(alice.id)?,
        vec![first.agent.clone(), second.agent.clone()]
    );
    assert_eq!(
        store.get_agent(alice.id, first.agent.id)?,
        Some(first.agent.clone())
    );
    assert_eq!(store.get_agent(bob.id, first.agent.id)?, None, "not bob's");
    assert_eq!(
        store.authenticate_agent(&first.token)?,
        Some(first.agent.clone())
    );
    assert_eq!(store.authenticate_agent(&bobs.token)?, Some(bobs.agent));
    assert!(
        !store.revoke_agent(bob.id, first.agent.id, at(4))?,
        "not bob's"
    );
    assert!(store.revoke_agent(alice.id, first.agent.id, at(4))?);
    assert!(!store.revoke_agent(alice.id, first.agent.id, at(5))?);
    assert_eq!(store.authenticate_agent(&first.token)?, None);
    assert_eq!(store.list_agents(alice.id)?, vec![second.agent]);
    assert_eq!(store.get_agent(alice.id, first.agent.id)?, None);
    Ok(())
}

fn announce(
    store: &Store,
    agent: &tether_server::store::Agent,
    serial: &str,
) -> Result<Dongle, Box<dyn std::error::Error + Send + Sync>> {
    match store.announce_dongle(agent, serial, at(10))? {
        Announce::Created(d) | Announce::Existing(d) => Ok(d),
    }
}

fn presence_drives_mode_changes_with_audit(store: &Store) -> TestResult {
    let now = at(0);
    let user = store.ensure_user("alice", now)?;
    let agent = store.create_agent(user.id, "edge", now)?.agent;
    let Announce::Created(a) = store.announce_dongle(&agent, "A1", now)? else {
        return Err("A1 should be new".into());
    };
    let Announce::Created(b) = store.announce_dongle(&agent, "B1", now)? else {
        return Err("B1 should be new".into());
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
    // A stream replaying its backlog keeps it degraded even with both sides online.
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
    assert!(store.record_group_event(group.id, &Actor::DataPlane, "buffer_pressure", now)?);
    assert!(!store.record_group_event(
        Uuid::new_v4(),
        &Actor::DataPlane,
        "buffer_pressure",
        now
    )?);
    let audit = store.group_audit(user.id, group.id)?.unwrap_or_default();
    let trail: Vec<_> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.old_mode, e.new_mode))
        .collect();
    use GroupMode::{Active, Degraded, Inactive};
    assert_eq!(
        trail,
        vec![
            ("user:alice", "create", None, Some(Inactive)),
            ("user:alice", "activate", Some(Inactive), Some(Degraded)),
            ("data-plane", "presence", Some(Degraded), Some(Active)),
            ("data-plane", "backlog", Some(Active), Some(Degraded)),
            (
                "data-plane",
                "buffer_pressure",
                Some(Degraded),
                Some(Degraded)
            ),
        ]
    );
    assert!(audit.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(audit.iter().all(|e| e.at == trunc(now)));
    assert!(store.mark_dongle_seen(a.id, now)?);
    assert!(!store.mark_dongle_seen(Uuid::new_v4(), now)?);
    // Announced at the same millisecond: ordered by id.
    let mut expected = vec![(a.id, Some(group.id)), (b.id, Some(group.id))];
    expected.sort();
    assert_eq!(store.dongles_of_agent(agent.id)?, expected);
    Ok(())
}

fn serials_belong_to_one_user(store: &Store) -> TestResult {
    let now = at(0);
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
        other => return Err(format!("expected Existing, got {other:?}").into()),
    }
    // Bob's "S" is his own dongle: Alice's neither blocks it nor is touched by it.
    let bobs = match store.announce_dongle(&b1, "S", now)? {
        Announce::Created(d) => d,
        other => return Err(format!("expected Created, got {other:?}").into()),
    };
    assert_eq!(bobs.user_id, bob.id);
    let alices = store.list_dongles(alice.id)?;
    assert_eq!(alices.len(), 1);
    assert_ne!(alices[0].id, bobs.id);
    assert_eq!(alices[0].agent_id, a2.id);
    assert_eq!(store.list_dongles(bob.id)?, vec![bobs.clone()]);
    assert_eq!(store.get_dongle(bob.id, bobs.id)?, Some(bobs.clone()));
    assert_eq!(store.get_dongle(alice.id, bobs.id)?, None);
    assert_eq!(store.dongle_for_agent(&b1, "S")?, Some(bobs.clone()));
    assert_eq!(
        store.dongle_for_agent(&a2, "S")?.map(|d| d.id),
        Some(alices[0].id)
    );
    assert_eq!(
        store.dongle_of_agent(&a2, alices[0].id)?.map(|d| d.id),
        Some(alices[0].id)
    );
    assert_eq!(
        store.dongle_of_agent(&a1, alices[0].id)?,
        None,
        "moved to a2"
    );
    assert_eq!(store.dongle_of_agent(&b1, alices[0].id)?, None);
    assert!(store.dongles_of_agent(a1.id)?.is_empty());
    Ok(())
}

fn group_refusals_and_deletion(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let bob = store.ensure_user("bob", at(0))?;
    let agent = store.create_agent(alice.id, "edge", at(0))?.agent;
    let bob_agent = store.create_agent(bob.id, "edge", at(0))?.agent;
    let (a, b, c) = (
        announce(store, &agent, "A")?,
        announce(store, &agent, "B")?,
        announce(store, &agent, "C")?,
    );
    let bobs = announce(store, &bob_agent, "X")?;
    let actor = Actor::User("alice".to_owned());
    let create = |x: Uuid, y: Uuid| store.create_group(alice.id, &actor, "g", x, y, at(1));
    assert_eq!(create(a.id, a.id)?, Err(GroupRefusal::SameDongle));
    assert_eq!(
        create(bobs.id, a.id)?,
        Err(GroupRefusal::UnknownDongle('a'))
    );
    assert_eq!(
        create(a.id, Uuid::new_v4())?,
        Err(GroupRefusal::UnknownDongle('b'))
    );
    let group = create(a.id, b.id)?.map_err(|r| format!("{r:?}"))?;
    assert_eq!(
        (group.dongle_a, group.dongle_b, group.mode),
        (a.id, b.id, GroupMode::Inactive)
    );
    assert!(!group.activated);
    assert_eq!(create(c.id, b.id)?, Err(GroupRefusal::DongleInGroup('b')));
    assert_eq!(create(a.id, c.id)?, Err(GroupRefusal::DongleInGroup('a')));
    assert_eq!(store.list_groups(alice.id)?, vec![group.clone()]);
    assert!(store.list_groups(bob.id)?.is_empty());
    assert_eq!(store.get_group(alice.id, group.id)?, Some(group.clone()));
    assert_eq!(store.get_group(bob.id, group.id)?, None);
    assert_eq!(store.group(group.id)?, Some(group.clone()));
    assert_eq!(store.group_of_dongle(b.id)?, Some(group.clone()));
    assert_eq!(store.group_of_dongle(c.id)?, None);
    assert_eq!(store.all_group_ids()?, vec![group.id]);
    assert_eq!(store.group_audit(bob.id, group.id)?, None);
    let bob_actor = Actor::User("bob".to_owned());
    assert_eq!(
        store.set_group_activated(bob.id, group.id, true, None, &bob_actor, at(2))?,
        None
    );
    assert!(!store.delete_group(bob.id, group.id, &bob_actor, at(2))?);
    assert!(store.delete_group(alice.id, group.id, &actor, at(2))?);
    assert!(!store.delete_group(alice.id, group.id, &actor, at(3))?);
    assert_eq!(store.group(group.id)?, None);
    assert!(store.all_group_ids()?.is_empty());
    assert_eq!(
        store.refresh_group_mode(group.id, None, &Actor::DataPlane, "presence", at(3))?,
        None
    );
    // The dongles are free again.
    assert!(create(c.id, b.id)?.is_ok());
    Ok(())
}

/// Alice's active group with both dongles online since `at(2)`: `(user, a, b, group)`.
fn online_pair(
    store: &Store,
) -> Result<(Uuid, Dongle, Dongle, Uuid), Box<dyn std::error::Error + Send + Sync>> {
    let user = store.ensure_user("alice", at(0))?;
    let agent = store.create_agent(user.id, "edge", at(0))?.agent;
    let (a, b) = (announce(store, &agent, "A")?, announce(store, &agent, "B")?);
    let actor = Actor::User("alice".to_owned());
    let group = store
        .create_group(user.id, &actor, "g", a.id, b.id, at(1))?
        .map_err(|r| format!("{r:?}"))?;
    store.set_group_activated(user.id, group.id, true, None, &actor, at(1))?;
    store.set_dongle_online(a.id, true, at(2), &|_| None)?;
    store.set_dongle_online(b.id, true, at(2), &|_| None)?;
    Ok((user.id, a, b, group.id))
}

fn presence_reset_at_start(store: &Store) -> TestResult {
    let (user, a, _, group) = online_pair(store)?;
    assert_eq!(store.group(group)?.map(|g| g.mode), Some(GroupMode::Active));
    let changes = store.reset_presence(at(3))?;
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.old, c.state.mode, c.state.offline_side))
            .collect::<Vec<_>>(),
        vec![(
            GroupMode::Active,
            GroupMode::Degraded,
            Some(OfflineSide::Both)
        )]
    );
    assert!(store.list_dongles(user)?.iter().all(|d| !d.online));
    assert_eq!(
        store.get_dongle(user, a.id)?.and_then(|d| d.last_seen),
        Some(trunc(at(2)))
    );
    assert!(
        store.reset_presence(at(4))?.is_empty(),
        "nothing left online"
    );
    Ok(())
}

/// A cluster instance's start-up reset (`docs/cluster.md`): only the listed dongles, and only
/// those not seen since the given time.
fn presence_reset_of_listed_dongles_not_seen_since(store: &Store) -> TestResult {
    let (_, a, b, group) = online_pair(store)?;
    let mut members = store.online_members()?;
    members.sort_by(|x, y| x.2.cmp(&y.2));
    assert_eq!(
        members,
        vec![(a.id, group, "a".to_owned()), (b.id, group, "b".to_owned())]
    );
    // Seen after the cut-off: kept.
    assert!(
        store
            .reset_presence_of(&[a.id], Some(at(1)), at(3))?
            .is_empty()
    );
    assert_eq!(store.online_members()?.len(), 2);
    let changes = store.reset_presence_of(&[a.id], Some(at(2)), at(3))?;
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.old, c.state.mode, c.state.offline_side))
            .collect::<Vec<_>>(),
        vec![(GroupMode::Active, GroupMode::Degraded, Some(OfflineSide::A))]
    );
    assert_eq!(store.online_members()?, vec![(b.id, group, "b".to_owned())]);
    // Without a cut-off, listed ones only; an offline one is no change.
    assert!(store.reset_presence_of(&[a.id], None, at(4))?.is_empty());
    // B goes offline too (the mode stays degraded: no change to report).
    assert!(store.reset_presence_of(&[b.id], None, at(4))?.is_empty());
    assert!(store.online_members()?.is_empty());
    Ok(())
}

/// Command owners (`commands.instance`): a command is adopted only from the owner recorded,
/// by one adopter, and only while it is open.
fn commands_are_adopted_once_from_their_recorded_owner(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let car = bare_vehicle(store, alice.id, "car")?;
    let cmd = command(alice.id, car.id, at(1));
    store.insert_command(&cmd)?;
    let me = store.instance().to_owned();
    let owned = store.open_commands_owned()?;
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].0.command_id, cmd.command_id);
    assert_eq!(owned[0].1.as_deref(), Some(me.as_str()));
    let id = cmd.command_id;
    assert!(!store.adopt_command(id, None)?, "it has an owner");
    assert!(
        !store.adopt_command(id, Some("someone-else"))?,
        "not theirs"
    );
    assert!(store.adopt_command(id, Some(&me))?);
    assert!(store.start_command(id)?);
    assert!(store.adopt_command(id, Some(&me))?, "in progress is open");
    assert!(store.fail_command(id, "interrupted: server restarted", at(2))?);
    assert!(
        !store.adopt_command(id, Some(&me))?,
        "an ended command stays"
    );
    assert!(store.open_commands_owned()?.is_empty());
    Ok(())
}

fn ecu(name: &str, request_id: u32) -> EcuAddress {
    EcuAddress {
        name: name.to_owned(),
        request_id,
        response_id: request_id + 8,
    }
}

fn vehicles_and_their_refusals(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let bob = store.ensure_user("bob", at(0))?;
    let agent = store.create_agent(alice.id, "edge", at(0))?.agent;
    let bob_agent = store.create_agent(bob.id, "edge", at(0))?.agent;
    let d = announce(store, &agent, "D")?;
    let bobs = announce(store, &bob_agent, "X")?;
    let ecus = vec![ecu("engine", 0x7E0), ecu("body", 0x18DA_F110)];
    let car = store
        .create_vehicle(alice.id, "car", Some("VIN123"), Some(d.id), &ecus, at(1))?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(car.ecus, ecus);
    assert_eq!(car.created_at, trunc(at(1)));
    let bare = store
        .create_vehicle(alice.id, "bare", None, None, &[], at(2))?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(
        store.create_vehicle(alice.id, "x", None, Some(d.id), &[], at(3))?,
        Err(VehicleRefusal::DongleTaken)
    );
    assert_eq!(
        store.create_vehicle(alice.id, "x", None, Some(bobs.id), &[], at(3))?,
        Err(VehicleRefusal::UnknownDongle)
    );
    assert_eq!(
        store.list_vehicles(alice.id)?,
        vec![car.clone(), bare.clone()]
    );
    assert!(store.list_vehicles(bob.id)?.is_empty());
    assert_eq!(store.get_vehicle(alice.id, car.id)?, Some(car.clone()));
    assert_eq!(store.get_vehicle(bob.id, car.id)?, None);
    assert_eq!(store.vehicle_by_id(bare.id)?, Some(bare));
    assert_eq!(store.agent_of_dongle(d.id)?, Some(agent.id));
    assert_eq!(store.agent_of_dongle(Uuid::new_v4())?, None);
    assert_eq!(
        store.dongles_announced_by(agent.id, &[d.id, bobs.id, Uuid::new_v4()])?,
        vec![d.id]
    );
    Ok(())
}

/// A vehicle of `user` with no VIN, dongle or ECUs, created at `at(0)`.
fn bare_vehicle(
    store: &Store,
    user: Uuid,
    name: &str,
) -> Result<Vehicle, Box<dyn std::error::Error + Send + Sync>> {
    let vehicle = store
        .create_vehicle(user, name, None, None, &[], at(0))?
        .map_err(|r| format!("{r:?}"))?;
    Ok(vehicle)
}

fn command(user: Uuid, vehicle: Uuid, submitted: DateTime<Utc>) -> CommandRecord {
    CommandRecord {
        command_id: Uuid::new_v4(),
        user_id: user,
        vehicle_id: vehicle,
        command_name: "ReadDTC".to_owned(),
        command_params: json!({"ecu": "engine", "nested": {"b": [1, 2.5, null], "a": "\u{0}x"}}),
        status: CommandStatus::Pending,
        error_message: None,
        submitted_at: submitted,
        completed_at: None,
        deadline_at: submitted + chrono::Duration::seconds(30),
    }
}

fn command_lifecycle(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let bob = store.ensure_user("bob", at(0))?;
    let car = bare_vehicle(store, alice.id, "car")?;
    let cmd = command(alice.id, car.id, at(1));
    store.insert_command(&cmd)?;
    let stored = store
        .get_command(alice.id, cmd.command_id)?
        .ok_or("not stored")?;
    assert_eq!(stored.command_params, cmd.command_params);
    assert_eq!(stored.submitted_at, trunc(cmd.submitted_at));
    assert_eq!(stored.status, CommandStatus::Pending);
    assert_eq!(store.get_command(bob.id, cmd.command_id)?, None);
    assert_eq!(store.open_commands()?.len(), 1);
    assert!(store.start_command(cmd.command_id)?);
    assert!(!store.start_command(cmd.command_id)?, "already started");
    let first = store.add_response(cmd.command_id, 1, false, &json!({"part": 1}), at(2))?;
    let ResponseOutcome::Stored(first) = first else {
        return Err(format!("expected Stored, got {first:?}").into());
    };
    assert_eq!(
        store.add_response(cmd.command_id, 1, false, &json!({"part": 1}), at(3))?,
        ResponseOutcome::Duplicate
    );
    let last = store.add_response(cmd.command_id, 2, true, &json!({"dtcs": []}), at(4))?;
    assert!(matches!(last, ResponseOutcome::Stored(_)));
    assert_eq!(
        store.add_response(cmd.command_id, 3, false, &json!({}), at(5))?,
        ResponseOutcome::CommandEnded(CommandStatus::Completed)
    );
    assert_eq!(
        store.add_response(Uuid::new_v4(), 1, true, &json!({}), at(5))?,
        ResponseOutcome::UnknownCommand
    );
    let done = store.command_by_id(cmd.command_id)?.ok_or("gone")?;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(done.completed_at, Some(trunc(at(4))));
    assert!(!store.fail_command(cmd.command_id, "late", at(6))?);
    let responses = store.responses_after(cmd.command_id, 0)?;
    assert_eq!(
        responses
            .iter()
            .map(|r| r.sequence_number)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(responses[0], first);
    assert!(responses[1].is_final);
    assert_eq!(store.responses_after(cmd.command_id, 1)?.len(), 1);
    assert!(store.open_commands()?.is_empty());
    // Failing ends a command once, with its reason.
    let other = command(alice.id, car.id, at(7));
    store.insert_command(&other)?;
    assert!(store.fail_command(other.command_id, "vehicle offline", at(8))?);
    assert!(!store.fail_command(other.command_id, "again", at(9))?);
    let failed = store.command_by_id(other.command_id)?.ok_or("gone")?;
    assert_eq!(
        (failed.status, failed.error_message.as_deref()),
        (CommandStatus::Failed, Some("vehicle offline"))
    );
    Ok(())
}

fn command_listing_filters_and_pages(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let bob = store.ensure_user("bob", at(0))?;
    let car = bare_vehicle(store, alice.id, "car")?;
    let van = bare_vehicle(store, alice.id, "van")?;
    let bobs = bare_vehicle(store, bob.id, "b")?;
    let mut ids = Vec::new();
    // Two commands share each submission time, so paging must break ties by id.
    for i in 0..6 {
        let cmd = command(
            alice.id,
            if i % 2 == 0 { car.id } else { van.id },
            at(10 + i / 2),
        );
        store.insert_command(&cmd)?;
        ids.push(cmd);
    }
    store.insert_command(&command(bob.id, bobs.id, at(10)))?;
    store.fail_command(ids[0].command_id, "x", at(20))?;
    let mut expected: Vec<_> = ids
        .iter()
        .map(|c| (trunc(c.submitted_at), c.command_id))
        .collect();
    expected.sort();
    expected.reverse();
    let all = store.list_commands(
        alice.id,
        &CommandQuery {
            limit: 100,
            ..CommandQuery::default()
        },
    )?;
    assert_eq!(
        all.iter()
            .map(|c| (c.submitted_at, c.command_id))
            .collect::<Vec<_>>(),
        expected
    );
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_commands(
            alice.id,
            &CommandQuery {
                before,
                limit: 4,
                ..CommandQuery::default()
            },
        )?;
        let Some(last) = page.last() else { break };
        before = Some((last.submitted_at.timestamp_millis(), last.command_id));
        paged.extend(page.iter().map(|c| (c.submitted_at, c.command_id)));
    }
    assert_eq!(paged, expected);
    let cars = store.list_commands(
        alice.id,
        &CommandQuery {
            vehicle_id: Some(car.id),
            limit: 100,
            ..CommandQuery::default()
        },
    )?;
    assert_eq!(cars.len(), 3);
    assert!(cars.iter().all(|c| c.vehicle_id == car.id));
    let failed = store.list_commands(
        alice.id,
        &CommandQuery {
            status: Some(CommandStatus::Failed),
            limit: 100,
            ..CommandQuery::default()
        },
    )?;
    assert_eq!(
        failed.iter().map(|c| c.command_id).collect::<Vec<_>>(),
        vec![ids[0].command_id]
    );
    let none = store.list_commands(
        alice.id,
        &CommandQuery {
            vehicle_id: Some(van.id),
            status: Some(CommandStatus::Failed),
            limit: 100,
            ..CommandQuery::default()
        },
    )?;
    assert!(none.is_empty());
    Ok(())
}

fn command_writes_in_one_commit(store: &Store) -> TestResult {
    let alice = store.ensure_user("alice", at(0))?;
    let car = bare_vehicle(store, alice.id, "car")?;
    let cmd = command(alice.id, car.id, at(1));
    let duplicate = command(alice.id, car.id, at(1));
    let response = |seq: u32, is_final: bool| CommandWrite::Response {
        command_id: cmd.command_id,
        start: true,
        sequence_number: seq,
        is_final,
        payload: json!({ "seq": seq }),
        at: at(2),
    };
    let writes = vec![
        CommandWrite::Insert(cmd.clone()),
        response(1, false),
        response(1, false),
        // Fails (unknown vehicle): rolled back alone, the rest of the batch commits.
        CommandWrite::Insert(CommandRecord {
            vehicle_id: Uuid::new_v4(),
            ..duplicate
        }),
        response(2, true),
        CommandWrite::Fail {
            command_id: cmd.command_id,
            error: "late".to_owned(),
            at: at(3),
        },
    ];
    let results = store.write_commands(&writes)?;
    assert!(matches!(results[0], Ok(CommandWritten::Inserted)));
    assert!(matches!(
        results[1],
        Ok(CommandWritten::Response(true, ResponseOutcome::Stored(_)))
    ));
    assert!(matches!(
        results[2],
        Ok(CommandWritten::Response(false, ResponseOutcome::Duplicate))
    ));
    assert!(matches!(results[3], Err(ServerError::Database { .. })));
    assert!(matches!(
        results[4],
        Ok(CommandWritten::Response(false, ResponseOutcome::Stored(_)))
    ));
    assert!(matches!(results[5], Ok(CommandWritten::Failed(false))));
    let done = store.command_by_id(cmd.command_id)?.ok_or("not stored")?;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(store.responses_after(cmd.command_id, 0)?.len(), 2);
    assert_eq!(
        store
            .list_commands(
                alice.id,
                &CommandQuery {
                    limit: 10,
                    ..CommandQuery::default()
                }
            )?
            .len(),
        1
    );
    Ok(())
}

fn timestamps_keep_milliseconds(store: &Store) -> TestResult {
    let user = store.ensure_user("alice", at(0))?;
    assert_eq!(user.created_at, trunc(at(0)));
    let agent = store.create_agent(user.id, "edge", at(1))?.agent;
    assert_eq!(
        agent.created_at,
        trunc(at(1)),
        "the answer shows what is stored"
    );
    assert_eq!(
        store.get_agent(user.id, agent.id)?.map(|a| a.created_at),
        Some(trunc(at(1)))
    );
    let Announce::Created(d) = store.announce_dongle(&agent, "D", at(2))? else {
        return Err("should be new".into());
    };
    assert_eq!(store.get_dongle(user.id, d.id)?, Some(d));
    // Before 1970 and far ahead both survive.
    let old = Utc
        .timestamp_millis_opt(-86_400_123)
        .single()
        .ok_or("range")?;
    let later = Utc
        .timestamp_millis_opt(4_102_444_800_999)
        .single()
        .ok_or("range")?;
    let early = store.ensure_user("early", old)?;
    let late = store.ensure_user("late", later)?;
    assert_eq!((early.created_at, late.created_at), (old, later));
    Ok(())
}

// PostgreSQL only: several instances, one database.

fn postgres_db() -> Option<TestDatabase> {
    TestDatabase::create()
}

#[test]
fn concurrent_starts_against_a_fresh_database_migrate_once() -> TestResult {
    let Some(db) = postgres_db() else {
        return Ok(());
    };
    let starts = 6;
    let barrier = Arc::new(Barrier::new(starts));
    let handles: Vec<_> = (0..starts)
        .map(|_| {
            let (url, barrier) = (db.url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                Store::connect(&url).and_then(|s| s.schema_version())
            })
        })
        .collect();
    for handle in handles {
        let version = handle.join().map_err(|_| "a start panicked")??;
        assert_eq!(version, POSTGRES_SCHEMA_VERSION);
    }
    let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls)?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM tether_schema_version", &[])?
        .get(0);
    assert_eq!(rows, POSTGRES_SCHEMA_VERSION, "each step applied once");
    Ok(())
}

#[test]
fn a_newer_postgres_schema_is_refused() -> TestResult {
    let Some(db) = postgres_db() else {
        return Ok(());
    };
    drop(Store::connect(&db.url)?);
    let mut client = ::postgres::Client::connect(&db.url, ::postgres::NoTls)?;
    client.execute(
        "INSERT INTO tether_schema_version (version) VALUES ($1)",
        &[&(POSTGRES_SCHEMA_VERSION + 1)],
    )?;
    assert!(matches!(
        Store::connect(&db.url),
        Err(ServerError::SchemaTooNew { found, .. }) if found == POSTGRES_SCHEMA_VERSION + 1
    ));
    Ok(())
}

#[test]
fn racing_instances_get_the_same_answers_as_one() -> TestResult {
    let Some(db) = postgres_db() else {
        return Ok(());
    };
    let instances: Vec<Arc<Store>> = (0..4)
        .map(|_| Store::connect(&db.url).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let user = instances[0].ensure_user("alice", at(0))?;
    let agent = instances[0].create_agent(user.id, "edge", at(0))?.agent;
    // Every instance announces the same new serial at once: one dongle, created once.
    let barrier = Arc::new(Barrier::new(instances.len()));
    let announced: Vec<_> = instances
        .iter()
        .map(|store| {
            let (store, barrier, agent) = (Arc::clone(store), Arc::clone(&barrier), agent.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.announce_dongle(&agent, "RACE", at(1))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().map_err(|_| "panicked"))
        .collect::<Result<_, _>>()?;
    let mut created = 0;
    let mut ids = Vec::new();
    for outcome in announced {
        match outcome? {
            Announce::Created(d) => {
                created += 1;
                ids.push(d.id);
            }
            Announce::Existing(d) => ids.push(d.id),
        }
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "one dongle");
    // Every instance puts one shared dongle in a group at once: one wins, the others get the
    // refusal a single instance gives.
    let shared = ids[0];
    let others: Vec<Uuid> = (0..instances.len())
        .map(|i| announce(&instances[0], &agent, &format!("O{i}")).map(|d| d.id))
        .collect::<Result<_, _>>()?;
    let barrier = Arc::new(Barrier::new(instances.len()));
    let outcomes = instances
        .iter()
        .zip(others)
        .map(|(store, other)| {
            let (store, barrier, user_id) = (Arc::clone(store), Arc::clone(&barrier), user.id);
            std::thread::spawn(move || {
                barrier.wait();
                let actor = Actor::User("alice".to_owned());
                store.create_group(user_id, &actor, "g", other, shared, at(2))
            })
        })
        .collect::<Vec<_>>();
    let mut won = 0;
    for handle in outcomes {
        match handle.join().map_err(|_| "panicked")?? {
            Ok(_) => won += 1,
            Err(refusal) => assert_eq!(refusal, GroupRefusal::DongleInGroup('b')),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(instances[1].all_group_ids()?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_is_used_and_dropped_on_the_async_runtime() -> TestResult {
    let Some(db) = tokio::task::spawn_blocking(postgres_db).await? else {
        return Ok(());
    };
    let url = db.url.clone();
    let store = Arc::new(tokio::task::spawn_blocking(move || Store::connect(&url)).await??);
    let user = store.call(|s| s.ensure_user("alice", Utc::now())).await?;
    assert_eq!(
        store.call(|s| s.ensure_user("alice", Utc::now())).await?,
        user
    );
    store.call(|s| s.ping()).await?;
    // The last handle goes away inside a task: the pool must not drop its clients here.
    tokio::spawn(async move { drop(store) }).await?;
    tokio::task::spawn_blocking(move || drop(db)).await?;
    Ok(())
}
