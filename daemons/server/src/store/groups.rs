//! Relay groups, their persisted mode and audit log.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sql::{DbError, FromValue, Row, Sql, Value, args, from_columns};
use super::{Actor, AuditEntry, Group, GroupRefusal, ModeChange, Store};
use crate::error::ServerError;
use crate::group_mode::{GroupMode, GroupStatus};

const GROUP_SELECT: &str = "SELECT g.id, g.user_id, g.name, g.dongle_a, g.dongle_b, g.activated,
        g.mode, da.online, db.online, g.created_at
    FROM relay_groups g
    JOIN dongles da ON da.id = g.dongle_a
    JOIN dongles db ON db.id = g.dongle_b";

impl FromValue for GroupMode {
    fn from_value(value: &Value) -> Result<Self, String> {
        let text = String::from_value(value)?;
        GroupMode::parse(&text).ok_or_else(|| format!("unknown group mode {text:?}"))
    }
}

fn group_row(row: &Row) -> Result<Group, DbError> {
    Ok(from_columns!(row, 0 => Group {
        id, user_id, name, dongle_a, dongle_b, activated, mode, a_online, b_online, created_at
    }))
}

/// The group matching `filter`, if any. In a transaction on PostgreSQL it first locks the
/// group's row, so that two instances re-evaluating one group's mode take turns and each change
/// is stored and audited once.
fn read_group(
    sql: &mut dyn Sql,
    lock: bool,
    filter: &str,
    args: &[Value],
) -> Result<Option<Group>, DbError> {
    if lock && !sql.for_update().is_empty() {
        let locked = sql.query_opt(
            &format!(
                "SELECT g.id FROM relay_groups g WHERE {filter}{}",
                sql.for_update()
            ),
            args,
        )?;
        if locked.is_none() {
            return Ok(None);
        }
    }
    sql.query_opt_map(&format!("{GROUP_SELECT} WHERE {filter}"), args, group_row)
}

fn audit(
    sql: &mut dyn Sql,
    group_id: Uuid,
    actor: &Actor,
    action: &str,
    old: Option<GroupMode>,
    new: Option<GroupMode>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO group_audit (group_id, at, actor, action, old_mode, new_mode)
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            group_id,
            now,
            actor.as_stored().as_str(),
            action,
            old.map(GroupMode::as_str),
            new.map(GroupMode::as_str)
        ],
    )?;
    Ok(())
}

/// Recomputes `group`'s mode from its facts and, when it differs from the stored one, stores
/// it and writes an audit entry — the single path every mode change goes through.
fn apply_mode(
    sql: &mut dyn Sql,
    group: &mut Group,
    relay: Option<&GroupStatus>,
    actor: &Actor,
    action: &str,
    now: DateTime<Utc>,
) -> Result<Option<ModeChange>, DbError> {
    let state = group.state(relay);
    if state.mode == group.mode {
        return Ok(None);
    }
    sql.execute(
        "UPDATE relay_groups SET mode = $2 WHERE id = $1",
        args![group.id, state.mode.as_str()],
    )?;
    audit(
        sql,
        group.id,
        actor,
        action,
        Some(group.mode),
        Some(state.mode),
        now,
    )?;
    let old = group.mode;
    group.mode = state.mode;
    Ok(Some(ModeChange {
        user_id: group.user_id,
        old,
        state,
    }))
}

impl Store {
    /// Creates an inactive group of two of the user's dongles, or says why it cannot.
    pub fn create_group(
        &self,
        user_id: Uuid,
        actor: &Actor,
        name: &str,
        dongle_a: Uuid,
        dongle_b: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Result<Group, GroupRefusal>, ServerError> {
        if dongle_a == dongle_b {
            return Ok(Err(GroupRefusal::SameDongle));
        }
        self.transaction_or_refuse("creating a group", |sql| {
            for (side, dongle) in [('a', dongle_a), ('b', dongle_b)] {
                let owned = sql.query_opt(
                    "SELECT 1 FROM dongles WHERE id = $1 AND user_id = $2",
                    args![dongle, user_id],
                )?;
                if owned.is_none() {
                    return Ok(Err(GroupRefusal::UnknownDongle(side)));
                }
            }
            for (side, dongle) in [('a', dongle_a), ('b', dongle_b)] {
                let member = sql.query_opt(
                    "SELECT 1 FROM group_members WHERE dongle_id = $1",
                    args![dongle],
                )?;
                if member.is_some() {
                    return Ok(Err(GroupRefusal::DongleInGroup(side)));
                }
            }
            let id = Uuid::new_v4();
            sql.execute(
                "INSERT INTO relay_groups (id, user_id, name, dongle_a, dongle_b, activated, mode,
                     created_at)
                 VALUES ($1, $2, $3, $4, $5, FALSE, 'inactive', $6)",
                args![id, user_id, name, dongle_a, dongle_b, now],
            )?;
            for (side, dongle) in [('a', dongle_a), ('b', dongle_b)] {
                // Another instance may have put the dongle in a group since the check above
                // (PostgreSQL): the member's primary key refuses it, as the check would have.
                let inserted = sql.execute(
                    "INSERT INTO group_members (dongle_id, group_id, side) VALUES ($1, $2, $3)",
                    args![dongle, id, side.to_string().as_str()],
                );
                match inserted {
                    Err(err) if err.is_unique_violation() => {
                        return Ok(Err(GroupRefusal::DongleInGroup(side)));
                    }
                    other => other?,
                };
            }
            audit(
                sql,
                id,
                actor,
                "create",
                None,
                Some(GroupMode::Inactive),
                now,
            )?;
            let group = read_group(sql, false, "g.id = $1", args![id])?.ok_or(DbError::NoRow)?;
            Ok(Ok(group))
        })
    }

    /// The user's groups, oldest first.
    pub fn list_groups(&self, user_id: Uuid) -> Result<Vec<Group>, ServerError> {
        self.read_rows(
            "listing groups",
            &format!("{GROUP_SELECT} WHERE g.user_id = $1 ORDER BY g.created_at, g.id"),
            args![user_id],
            group_row,
        )
    }

    /// Every group's id, whoever owns it (the data plane's backlog at start).
    pub fn all_group_ids(&self) -> Result<Vec<Uuid>, ServerError> {
        self.read_rows(
            "listing groups",
            "SELECT id FROM relay_groups ORDER BY id",
            &[],
            |row| row.get(0),
        )
    }

    /// One of the user's groups; `None` if it is not theirs or unknown.
    pub fn get_group(&self, user_id: Uuid, group_id: Uuid) -> Result<Option<Group>, ServerError> {
        self.run("reading a group", |sql| {
            read_group(
                sql,
                false,
                "g.id = $1 AND g.user_id = $2",
                args![group_id, user_id],
            )
        })
    }

    /// A group by id whoever owns it — for the data plane, which has already authorised the
    /// agent through the dongle.
    pub fn group(&self, group_id: Uuid) -> Result<Option<Group>, ServerError> {
        self.run("reading a group", |sql| {
            read_group(sql, false, "g.id = $1", args![group_id])
        })
    }

    /// The group a dongle belongs to, if any (data plane routing).
    pub fn group_of_dongle(&self, dongle_id: Uuid) -> Result<Option<Group>, ServerError> {
        self.run("reading a group", |sql| {
            read_group(
                sql,
                false,
                "g.id = (SELECT group_id FROM group_members WHERE dongle_id = $1)",
                args![dongle_id],
            )
        })
    }

    /// Deletes one of the user's groups, freeing its dongles. Its audit entries are kept (with a
    /// final `delete` entry) but are no longer reachable through the API. `Ok(false)` if it is
    /// not theirs or unknown.
    pub fn delete_group(
        &self,
        user_id: Uuid,
        group_id: Uuid,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.transaction("deleting a group", |sql| {
            let mode = sql.query_opt_map(
                &format!(
                    "SELECT mode FROM relay_groups WHERE id = $1 AND user_id = $2{}",
                    sql.for_update()
                ),
                args![group_id, user_id],
                |row| row.get::<GroupMode>(0),
            )?;
            let Some(mode) = mode else {
                return Ok(false);
            };
            sql.execute(
                "DELETE FROM group_members WHERE group_id = $1",
                args![group_id],
            )?;
            sql.execute("DELETE FROM relay_groups WHERE id = $1", args![group_id])?;
            audit(sql, group_id, actor, "delete", Some(mode), None, now)?;
            Ok(true)
        })
    }

    /// Activates or deactivates one of the user's groups (idempotent). Returns the group after
    /// the change and the mode change written, if the mode changed; `None` if the group is not
    /// theirs or unknown.
    pub fn set_group_activated(
        &self,
        user_id: Uuid,
        group_id: Uuid,
        activated: bool,
        relay: Option<GroupStatus>,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<Option<(Group, Option<ModeChange>)>, ServerError> {
        self.transaction("activating a group", |sql| {
            let group = read_group(
                sql,
                true,
                "g.id = $1 AND g.user_id = $2",
                args![group_id, user_id],
            )?;
            let Some(mut group) = group else {
                return Ok(None);
            };
            if group.activated != activated {
                sql.execute(
                    "UPDATE relay_groups SET activated = $2 WHERE id = $1",
                    args![group_id, activated],
                )?;
                group.activated = activated;
            }
            let action = if activated { "activate" } else { "deactivate" };
            let change = apply_mode(sql, &mut group, relay.as_ref(), actor, action, now)?;
            Ok(Some((group, change)))
        })
    }

    /// Re-evaluates a group's mode with the relay engine's new status of it (data plane: a side
    /// started or stopped replaying, or the backlog changed) and
    /// stores and audits a change. `Ok(None)` when the mode is unchanged or the group is gone.
    pub fn refresh_group_mode(
        &self,
        group_id: Uuid,
        relay: Option<GroupStatus>,
        actor: &Actor,
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ModeChange>, ServerError> {
        self.transaction("refreshing a group mode", |sql| {
            let Some(mut group) = read_group(sql, true, "g.id = $1", args![group_id])? else {
                return Ok(None);
            };
            apply_mode(sql, &mut group, relay.as_ref(), actor, action, now)
        })
    }

    /// Writes an audit entry for an event that does not change the mode (data plane: buffer
    /// pressure), with the current mode as old and new mode. `Ok(false)` when the group is gone.
    pub fn record_group_event(
        &self,
        group_id: Uuid,
        actor: &Actor,
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.run("writing the group audit log", |sql| {
            let mode = sql.query_opt_map(
                "SELECT mode FROM relay_groups WHERE id = $1",
                args![group_id],
                |row| row.get::<GroupMode>(0),
            )?;
            let Some(mode) = mode else {
                return Ok(false);
            };
            audit(sql, group_id, actor, action, Some(mode), Some(mode), now)?;
            Ok(true)
        })
    }

    /// The audit log of one of the user's groups, oldest first; `None` if it is not theirs or
    /// unknown.
    pub fn group_audit(
        &self,
        user_id: Uuid,
        group_id: Uuid,
    ) -> Result<Option<Vec<AuditEntry>>, ServerError> {
        self.run("reading the group audit log", |sql| {
            let owned = sql.query_opt(
                "SELECT 1 FROM relay_groups WHERE id = $1 AND user_id = $2",
                args![group_id, user_id],
            )?;
            if owned.is_none() {
                return Ok(None);
            }
            sql.query_map(
                "SELECT id, at, actor, action, old_mode, new_mode FROM group_audit
                 WHERE group_id = $1 ORDER BY id",
                args![group_id],
                |row| {
                    Ok(from_columns!(row, 0 => AuditEntry {
                        id, at, actor, action, old_mode, new_mode
                    }))
                },
            )
            .map(Some)
        })
    }
}
