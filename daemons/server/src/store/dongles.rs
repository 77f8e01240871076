//! Dongles: announced by agents, owned by the agent's user, presence kept by the data plane.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sql::{DbError, Row, args, from_columns, stored_time};
use super::{Actor, Agent, Announce, Dongle, ModeChange, Store};
use crate::error::ServerError;
use crate::group_mode::GroupStatus;

const DONGLE_COLUMNS: &str = "id, user_id, serial, agent_id, online, last_seen, created_at";

fn dongle_row(row: &Row) -> Result<Dongle, DbError> {
    Ok(from_columns!(row, 0 => Dongle {
        id, user_id, serial, agent_id, online, last_seen, created_at
    }))
}

impl Store {
    /// Records that `agent` talks to the dongle `serial` (idempotent).
    ///
    /// Serials are a namespace per user: a serial new to the agent's user becomes a dongle of
    /// that user, whatever other users hold; a serial the user already has is re-attached to
    /// this agent (the dongle moved). Nothing about other users' dongles is read.
    pub fn announce_dongle(
        &self,
        agent: &Agent,
        serial: &str,
        now: DateTime<Utc>,
    ) -> Result<Announce, ServerError> {
        // Two instances announcing a new serial at once (PostgreSQL): one insert wins, the
        // other breaks the unique (user, serial) and, tried again, finds the winner's row.
        match self.announce_once(agent, serial, now) {
            Err(ServerError::Database { source, .. }) if source.is_unique_violation() => {
                self.announce_once(agent, serial, now)
            }
            other => other,
        }
    }

    fn announce_once(
        &self,
        agent: &Agent,
        serial: &str,
        now: DateTime<Utc>,
    ) -> Result<Announce, ServerError> {
        self.transaction("announcing a dongle", |sql| {
            let existing = sql.query_opt_map(
                &format!(
                    "SELECT {DONGLE_COLUMNS} FROM dongles WHERE serial = $1 AND user_id = $2{}",
                    sql.for_update()
                ),
                args![serial, agent.user_id],
                dongle_row,
            )?;
            if let Some(mut dongle) = existing {
                if dongle.agent_id != agent.id {
                    sql.execute(
                        "UPDATE dongles SET agent_id = $2 WHERE id = $1",
                        args![dongle.id, agent.id],
                    )?;
                    dongle.agent_id = agent.id;
                }
                return Ok(Announce::Existing(dongle));
            }
            let dongle = Dongle {
                id: Uuid::new_v4(),
                user_id: agent.user_id,
                serial: serial.to_owned(),
                agent_id: agent.id,
                online: false,
                last_seen: None,
                created_at: stored_time(now),
            };
            sql.execute(
                "INSERT INTO dongles (id, user_id, serial, agent_id, online, created_at)
                 VALUES ($1, $2, $3, $4, FALSE, $5)",
                args![dongle.id, dongle.user_id, serial, agent.id, now],
            )?;
            Ok(Announce::Created(dongle))
        })
    }

    /// The user's dongles, oldest first.
    pub fn list_dongles(&self, user_id: Uuid) -> Result<Vec<Dongle>, ServerError> {
        self.read_rows(
            "listing dongles",
            &format!(
                "SELECT {DONGLE_COLUMNS} FROM dongles WHERE user_id = $1
                 ORDER BY created_at, id"
            ),
            args![user_id],
            dongle_row,
        )
    }

    /// One of the user's dongles; `None` if it is not theirs or unknown.
    pub fn get_dongle(
        &self,
        user_id: Uuid,
        dongle_id: Uuid,
    ) -> Result<Option<Dongle>, ServerError> {
        self.one_dongle(
            "reading a dongle",
            "id = $1 AND user_id = $2",
            args![dongle_id, user_id],
        )
    }

    /// The dongles `agent_id` announced (last), each with its group if it is in one: where the
    /// agent's `presence` events go.
    pub fn dongles_of_agent(
        &self,
        agent_id: Uuid,
    ) -> Result<Vec<(Uuid, Option<Uuid>)>, ServerError> {
        self.read_rows(
            "listing an agent's dongles",
            "SELECT d.id, m.group_id FROM dongles d
             LEFT JOIN group_members m ON m.dongle_id = d.id
             WHERE d.agent_id = $1 ORDER BY d.created_at, d.id",
            args![agent_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    }

    /// The dongle with `serial` if `agent` may speak for it (it belongs to the agent's user).
    /// The data plane uses this to map a REMP serial to a dongle record.
    pub fn dongle_for_agent(
        &self,
        agent: &Agent,
        serial: &str,
    ) -> Result<Option<Dongle>, ServerError> {
        self.one_dongle(
            "reading a dongle",
            "serial = $1 AND user_id = $2",
            args![serial, agent.user_id],
        )
    }

    /// The dongle `dongle_id` if `agent` is the agent that announced it (last); `None` for
    /// another agent's dongle or an unknown id. The data plane and the agent assignment endpoint
    /// use this to keep an agent to its own dongles.
    pub fn dongle_of_agent(
        &self,
        agent: &Agent,
        dongle_id: Uuid,
    ) -> Result<Option<Dongle>, ServerError> {
        self.one_dongle(
            "reading a dongle",
            "id = $1 AND agent_id = $2 AND user_id = $3",
            args![dongle_id, agent.id, agent.user_id],
        )
    }

    fn one_dongle(
        &self,
        action: &'static str,
        filter: &str,
        args: &[super::sql::Value],
    ) -> Result<Option<Dongle>, ServerError> {
        self.read_row(
            action,
            &format!("SELECT {DONGLE_COLUMNS} FROM dongles WHERE {filter}"),
            args,
            dongle_row,
        )
    }

    /// Updates `last_seen` (data plane: traffic or keep-alive). `Ok(false)` for an unknown id.
    pub fn mark_dongle_seen(
        &self,
        dongle_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.run("marking a dongle seen", |sql| {
            sql.execute(
                "UPDATE dongles SET last_seen = $2 WHERE id = $1",
                args![dongle_id, now],
            )
            .map(|changed| changed == 1)
        })
    }

    /// Marks every online dongle offline and re-evaluates their groups' modes (the relay
    /// engine holds nothing yet). The data plane calls this when it starts: presence recorded
    /// by an earlier process (stopped or killed) is stale until agents reconnect. Returns the
    /// mode changes written (and audited).
    ///
    /// It resets every dongle of the database: with several instances on one PostgreSQL
    /// database, that includes dongles connected to the other instances, so a cluster
    /// instance uses [`online_members`](Store::online_members) and
    /// [`reset_presence_of`](Store::reset_presence_of) instead.
    pub fn reset_presence(&self, now: DateTime<Utc>) -> Result<Vec<ModeChange>, ServerError> {
        let groups: Vec<Uuid> = self.transaction("resetting presence", |sql| {
            let groups = sql
                .query(
                    "SELECT DISTINCT m.group_id FROM group_members m
                     JOIN dongles d ON d.id = m.dongle_id WHERE d.online",
                    &[],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect::<Result<_, DbError>>()?;
            sql.execute("UPDATE dongles SET online = FALSE WHERE online", &[])?;
            Ok(groups)
        })?;
        self.refresh_presence_modes(groups, now)
    }

    /// The dongles recorded online that are a side of a group: `(dongle, group, side)` with
    /// the side as stored (`a` or `b`). A cluster instance starting up checks these against
    /// the live presence keys before it resets any (`docs/cluster.md`).
    pub fn online_members(&self) -> Result<Vec<(Uuid, Uuid, String)>, ServerError> {
        self.read_rows(
            "listing online group members",
            "SELECT m.dongle_id, m.group_id, m.side FROM group_members m
             JOIN dongles d ON d.id = m.dongle_id WHERE d.online",
            &[],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
    }

    /// Marks the listed dongles offline — with `seen_before`, only those not seen since (a
    /// dongle an instance wrote online meanwhile keeps its state) — and re-evaluates their
    /// groups' modes, as [`reset_presence`](Store::reset_presence) does for every dongle.
    /// Returns the mode changes written (and audited).
    pub fn reset_presence_of(
        &self,
        dongles: &[Uuid],
        seen_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ModeChange>, ServerError> {
        let groups: Vec<Uuid> = self.transaction("resetting presence", |sql| {
            let mut groups = Vec::new();
            for dongle in dongles {
                let changed = match seen_before {
                    Some(seen) => sql.execute(
                        "UPDATE dongles SET online = FALSE
                         WHERE id = $1 AND online AND (last_seen IS NULL OR last_seen <= $2)",
                        args![*dongle, seen],
                    )?,
                    None => sql.execute(
                        "UPDATE dongles SET online = FALSE WHERE id = $1 AND online",
                        args![*dongle],
                    )?,
                };
                if changed == 0 {
                    continue;
                }
                let group = sql.query_opt(
                    "SELECT group_id FROM group_members WHERE dongle_id = $1",
                    args![*dongle],
                )?;
                if let Some(row) = group {
                    let group: Uuid = row.get(0)?;
                    if !groups.contains(&group) {
                        groups.push(group);
                    }
                }
            }
            Ok(groups)
        })?;
        self.refresh_presence_modes(groups, now)
    }

    /// Re-evaluates the modes of `groups` after a presence reset (the relay engine's status
    /// unknown); returns the changes written.
    fn refresh_presence_modes(
        &self,
        groups: Vec<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ModeChange>, ServerError> {
        let mut changes = Vec::new();
        for group_id in groups {
            changes.extend(self.refresh_group_mode(
                group_id,
                None,
                &Actor::DataPlane,
                "presence",
                now,
            )?);
        }
        Ok(changes)
    }

    /// Sets a dongle online or offline (data plane), updates `last_seen`, and re-evaluates the
    /// mode of its group with the relay engine's status `relay_of` reports for it. Returns the
    /// mode changes written (and audited), for the caller to publish as `group_state` events.
    pub fn set_dongle_online(
        &self,
        dongle_id: Uuid,
        online: bool,
        now: DateTime<Utc>,
        relay_of: &dyn Fn(Uuid) -> Option<GroupStatus>,
    ) -> Result<Vec<ModeChange>, ServerError> {
        let group: Option<Uuid> = self.run("setting dongle presence", |sql| {
            sql.execute(
                "UPDATE dongles SET online = $2, last_seen = $3 WHERE id = $1",
                args![dongle_id, online, now],
            )?;
            sql.query_opt_map(
                "SELECT group_id FROM group_members WHERE dongle_id = $1",
                args![dongle_id],
                |row| row.get(0),
            )
        })?;
        let mut changes = Vec::new();
        if let Some(group_id) = group {
            let change = self.refresh_group_mode(
                group_id,
                relay_of(group_id),
                &Actor::DataPlane,
                "presence",
                now,
            )?;
            changes.extend(change);
        }
        Ok(changes)
    }
}
