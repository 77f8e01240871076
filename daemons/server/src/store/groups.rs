//! Relay groups, their persisted mode and audit log.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::{
    Actor, AuditEntry, Group, GroupRefusal, ModeChange, Store, mode_at, opt_mode_at, time_at,
    to_millis, uuid_at,
};
use crate::error::ServerError;
use crate::group_mode::{GroupMode, GroupStatus};

const GROUP_SELECT: &str = "SELECT g.id, g.user_id, g.name, g.dongle_a, g.dongle_b, g.activated,
        g.mode, da.online, db.online, g.created_at
    FROM relay_groups g
    JOIN dongles da ON da.id = g.dongle_a
    JOIN dongles db ON db.id = g.dongle_b";

fn group_row(row: &Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        id: uuid_at(row, 0)?,
        user_id: uuid_at(row, 1)?,
        name: row.get(2)?,
        dongle_a: uuid_at(row, 3)?,
        dongle_b: uuid_at(row, 4)?,
        activated: row.get(5)?,
        mode: mode_at(row, 6)?,
        a_online: row.get(7)?,
        b_online: row.get(8)?,
        created_at: time_at(row, 9)?,
    })
}

fn audit(
    conn: &Connection,
    group_id: Uuid,
    actor: &Actor,
    action: &str,
    old: Option<GroupMode>,
    new: Option<GroupMode>,
    now: DateTime<Utc>,
) -> Result<(), ServerError> {
    conn.execute(
        "INSERT INTO group_audit (group_id, at, actor, action, old_mode, new_mode)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            group_id.to_string(),
            to_millis(now),
            actor.as_stored(),
            action,
            old.map(GroupMode::as_str),
            new.map(GroupMode::as_str)
        ],
    )
    .map_err(ServerError::db("writing the group audit log"))?;
    Ok(())
}

/// Recomputes `group`'s mode from its facts and, when it differs from the stored one, stores
/// it and writes an audit entry — the single path every mode change goes through.
fn apply_mode(
    conn: &Connection,
    group: &mut Group,
    relay: Option<&GroupStatus>,
    actor: &Actor,
    action: &str,
    now: DateTime<Utc>,
) -> Result<Option<ModeChange>, ServerError> {
    let state = group.state(relay);
    if state.mode == group.mode {
        return Ok(None);
    }
    conn.execute(
        "UPDATE relay_groups SET mode = ?2 WHERE id = ?1",
        params![group.id.to_string(), state.mode.as_str()],
    )
    .map_err(ServerError::db("storing a group mode"))?;
    audit(
        conn,
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
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db("creating a group"))?;
        for (side, dongle) in [('a', dongle_a), ('b', dongle_b)] {
            let owned = tx
                .query_row(
                    "SELECT 1 FROM dongles WHERE id = ?1 AND user_id = ?2",
                    params![dongle.to_string(), user_id.to_string()],
                    |_| Ok(()),
                )
                .optional()
                .map_err(ServerError::db("creating a group"))?;
            if owned.is_none() {
                return Ok(Err(GroupRefusal::UnknownDongle(side)));
            }
        }
        for (side, dongle) in [('a', dongle_a), ('b', dongle_b)] {
            let member = tx
                .query_row(
                    "SELECT 1 FROM group_members WHERE dongle_id = ?1",
                    params![dongle.to_string()],
                    |_| Ok(()),
                )
                .optional()
                .map_err(ServerError::db("creating a group"))?;
            if member.is_some() {
                return Ok(Err(GroupRefusal::DongleInGroup(side)));
            }
        }
        let id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO relay_groups (id, user_id, name, dongle_a, dongle_b, activated, mode,
                 created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 'inactive', ?6)",
            params![
                id.to_string(),
                user_id.to_string(),
                name,
                dongle_a.to_string(),
                dongle_b.to_string(),
                to_millis(now)
            ],
        )
        .map_err(ServerError::db("creating a group"))?;
        for (side, dongle) in [("a", dongle_a), ("b", dongle_b)] {
            tx.execute(
                "INSERT INTO group_members (dongle_id, group_id, side) VALUES (?1, ?2, ?3)",
                params![dongle.to_string(), id.to_string(), side],
            )
            .map_err(ServerError::db("creating a group"))?;
        }
        audit(
            &tx,
            id,
            actor,
            "create",
            None,
            Some(GroupMode::Inactive),
            now,
        )?;
        let group = tx
            .query_row(
                &format!("{GROUP_SELECT} WHERE g.id = ?1"),
                params![id.to_string()],
                group_row,
            )
            .map_err(ServerError::db("creating a group"))?;
        tx.commit().map_err(ServerError::db("creating a group"))?;
        Ok(Ok(group))
    }

    /// The user's groups, oldest first.
    pub fn list_groups(&self, user_id: Uuid) -> Result<Vec<Group>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "{GROUP_SELECT} WHERE g.user_id = ?1 ORDER BY g.created_at, g.id"
            ))
            .map_err(ServerError::db("listing groups"))?;
        let rows = stmt
            .query_map(params![user_id.to_string()], group_row)
            .map_err(ServerError::db("listing groups"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db("listing groups"))
    }

    /// Every group's id, whoever owns it (the data plane's backlog at start).
    pub fn all_group_ids(&self) -> Result<Vec<Uuid>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id FROM relay_groups ORDER BY id")
            .map_err(ServerError::db("listing groups"))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(ServerError::db("listing groups"))?;
        let mut ids = Vec::new();
        for row in rows {
            let text = row.map_err(ServerError::db("listing groups"))?;
            if let Ok(id) = Uuid::parse_str(&text) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// One of the user's groups; `None` if it is not theirs or unknown.
    pub fn get_group(&self, user_id: Uuid, group_id: Uuid) -> Result<Option<Group>, ServerError> {
        self.lock()
            .query_row(
                &format!("{GROUP_SELECT} WHERE g.id = ?1 AND g.user_id = ?2"),
                params![group_id.to_string(), user_id.to_string()],
                group_row,
            )
            .optional()
            .map_err(ServerError::db("reading a group"))
    }

    /// A group by id whoever owns it — for the data plane, which has already authorised the
    /// agent through the dongle.
    pub fn group(&self, group_id: Uuid) -> Result<Option<Group>, ServerError> {
        self.lock()
            .query_row(
                &format!("{GROUP_SELECT} WHERE g.id = ?1"),
                params![group_id.to_string()],
                group_row,
            )
            .optional()
            .map_err(ServerError::db("reading a group"))
    }

    /// The group a dongle belongs to, if any (data plane routing).
    pub fn group_of_dongle(&self, dongle_id: Uuid) -> Result<Option<Group>, ServerError> {
        self.lock()
            .query_row(
                &format!(
                    "{GROUP_SELECT} WHERE g.id =
                     (SELECT group_id FROM group_members WHERE dongle_id = ?1)"
                ),
                params![dongle_id.to_string()],
                group_row,
            )
            .optional()
            .map_err(ServerError::db("reading a group"))
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
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db("deleting a group"))?;
        let mode = tx
            .query_row(
                "SELECT mode FROM relay_groups WHERE id = ?1 AND user_id = ?2",
                params![group_id.to_string(), user_id.to_string()],
                |row| mode_at(row, 0),
            )
            .optional()
            .map_err(ServerError::db("deleting a group"))?;
        let Some(mode) = mode else {
            return Ok(false);
        };
        tx.execute(
            "DELETE FROM group_members WHERE group_id = ?1",
            params![group_id.to_string()],
        )
        .map_err(ServerError::db("deleting a group"))?;
        tx.execute(
            "DELETE FROM relay_groups WHERE id = ?1",
            params![group_id.to_string()],
        )
        .map_err(ServerError::db("deleting a group"))?;
        audit(&tx, group_id, actor, "delete", Some(mode), None, now)?;
        tx.commit().map_err(ServerError::db("deleting a group"))?;
        Ok(true)
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
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db("activating a group"))?;
        let group = tx
            .query_row(
                &format!("{GROUP_SELECT} WHERE g.id = ?1 AND g.user_id = ?2"),
                params![group_id.to_string(), user_id.to_string()],
                group_row,
            )
            .optional()
            .map_err(ServerError::db("activating a group"))?;
        let Some(mut group) = group else {
            return Ok(None);
        };
        if group.activated != activated {
            tx.execute(
                "UPDATE relay_groups SET activated = ?2 WHERE id = ?1",
                params![group_id.to_string(), activated],
            )
            .map_err(ServerError::db("activating a group"))?;
            group.activated = activated;
        }
        let action = if activated { "activate" } else { "deactivate" };
        let change = apply_mode(&tx, &mut group, relay.as_ref(), actor, action, now)?;
        tx.commit().map_err(ServerError::db("activating a group"))?;
        Ok(Some((group, change)))
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
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db("refreshing a group mode"))?;
        let group = tx
            .query_row(
                &format!("{GROUP_SELECT} WHERE g.id = ?1"),
                params![group_id.to_string()],
                group_row,
            )
            .optional()
            .map_err(ServerError::db("refreshing a group mode"))?;
        let Some(mut group) = group else {
            return Ok(None);
        };
        let change = apply_mode(&tx, &mut group, relay.as_ref(), actor, action, now)?;
        tx.commit()
            .map_err(ServerError::db("refreshing a group mode"))?;
        Ok(change)
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
        let conn = self.lock();
        let mode = conn
            .query_row(
                "SELECT mode FROM relay_groups WHERE id = ?1",
                params![group_id.to_string()],
                |row| mode_at(row, 0),
            )
            .optional()
            .map_err(ServerError::db("writing the group audit log"))?;
        let Some(mode) = mode else {
            return Ok(false);
        };
        audit(&conn, group_id, actor, action, Some(mode), Some(mode), now)?;
        Ok(true)
    }

    /// The audit log of one of the user's groups, oldest first; `None` if it is not theirs or
    /// unknown.
    pub fn group_audit(
        &self,
        user_id: Uuid,
        group_id: Uuid,
    ) -> Result<Option<Vec<AuditEntry>>, ServerError> {
        let conn = self.lock();
        let owned = conn
            .query_row(
                "SELECT 1 FROM relay_groups WHERE id = ?1 AND user_id = ?2",
                params![group_id.to_string(), user_id.to_string()],
                |_| Ok(()),
            )
            .optional()
            .map_err(ServerError::db("reading the group audit log"))?;
        if owned.is_none() {
            return Ok(None);
        }
        let mut stmt = conn
            .prepare(
                "SELECT id, at, actor, action, old_mode, new_mode FROM group_audit
                 WHERE group_id = ?1 ORDER BY id",
            )
            .map_err(ServerError::db("reading the group audit log"))?;
        let rows = stmt
            .query_map(params![group_id.to_string()], |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at: time_at(row, 1)?,
                    actor: row.get(2)?,
                    action: row.get(3)?,
                    old_mode: opt_mode_at(row, 4)?,
                    new_mode: opt_mode_at(row, 5)?,
                })
            })
            .map_err(ServerError::db("reading the group audit log"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(ServerError::db("reading the group audit log"))
    }
}
