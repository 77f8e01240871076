//! Dongles: announced by agents, owned by the agent's user, presence kept by the data plane.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::{
    Actor, Agent, Announce, Dongle, ModeChange, Store, opt_time_at, time_at, to_millis, uuid_at,
};
use crate::error::ServerError;
use crate::group_mode::GroupStatus;

const DONGLE_COLUMNS: &str = "id, user_id, serial, agent_id, online, last_seen, created_at";

fn dongle_row(row: &Row<'_>) -> rusqlite::Result<Dongle> {
    Ok(Dongle {
        id: uuid_at(row, 0)?,
        user_id: uuid_at(row, 1)?,
        serial: row.get(2)?,
        agent_id: uuid_at(row, 3)?,
        online: row.get(4)?,
        last_seen: opt_time_at(row, 5)?,
        created_at: time_at(row, 6)?,
    })
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
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db("announcing a dongle"))?;
        let existing = tx
            .query_row(
                &format!("SELECT {DONGLE_COLUMNS} FROM dongles WHERE serial = ?1 AND user_id = ?2"),
                params![serial, agent.user_id.to_string()],
                dongle_row,
            )
            .optional()
            .map_err(ServerError::db("announcing a dongle"))?;
        let outcome = match existing {
            Some(mut dongle) => {
                if dongle.agent_id != agent.id {
                    tx.execute(
                        "UPDATE dongles SET agent_id = ?2 WHERE id = ?1",
                        params![dongle.id.to_string(), agent.id.to_string()],
                    )
                    .map_err(ServerError::db("announcing a dongle"))?;
                    dongle.agent_id = agent.id;
                }
                Announce::Existing(dongle)
            }
            None => {
                let dongle = Dongle {
                    id: Uuid::new_v4(),
                    user_id: agent.user_id,
                    serial: serial.to_owned(),
                    agent_id: agent.id,
                    online: false,
                    last_seen: None,
                    created_at: now,
                };
                tx.execute(
                    "INSERT INTO dongles (id, user_id, serial, agent_id, online, created_at)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                    params![
                        dongle.id.to_string(),
                        dongle.user_id.to_string(),
                        serial,
                        agent.id.to_string(),
                        to_millis(now)
                    ],
                )
                .map_err(ServerError::db("announcing a dongle"))?;
                Announce::Created(dongle)
            }
        };
        tx.commit()
            .map_err(ServerError::db("announcing a dongle"))?;
        Ok(outcome)
    }

    /// The user's dongles, oldest first.
    pub fn list_dongles(&self, user_id: Uuid) -> Result<Vec<Dongle>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {DONGLE_COLUMNS} FROM dongles WHERE user_id = ?1 ORDER BY created_at, id"
            ))
            .map_err(ServerError::db("listing dongles"))?;
        let rows = stmt
            .query_map(params![user_id.to_string()], dongle_row)
            .map_err(ServerError::db("listing dongles"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db("listing dongles"))
    }

    /// One of the user's dongles; `None` if it is not theirs or unknown.
    pub fn get_dongle(
        &self,
        user_id: Uuid,
        dongle_id: Uuid,
    ) -> Result<Option<Dongle>, ServerError> {
        self.lock()
            .query_row(
                &format!("SELECT {DONGLE_COLUMNS} FROM dongles WHERE id = ?1 AND user_id = ?2"),
                params![dongle_id.to_string(), user_id.to_string()],
                dongle_row,
            )
            .optional()
            .map_err(ServerError::db("reading a dongle"))
    }

    /// The dongles `agent_id` announced (last), each with its group if it is in one: where the
    /// agent's `presence` events go.
    pub fn dongles_of_agent(
        &self,
        agent_id: Uuid,
    ) -> Result<Vec<(Uuid, Option<Uuid>)>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT d.id, m.group_id FROM dongles d
                 LEFT JOIN group_members m ON m.dongle_id = d.id
                 WHERE d.agent_id = ?1 ORDER BY d.created_at, d.id",
            )
            .map_err(ServerError::db("listing an agent's dongles"))?;
        let rows = stmt
            .query_map(params![agent_id.to_string()], |row| {
                let group = match row.get::<_, Option<String>>(1)? {
                    Some(_) => Some(uuid_at(row, 1)?),
                    None => None,
                };
                Ok((uuid_at(row, 0)?, group))
            })
            .map_err(ServerError::db("listing an agent's dongles"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db("listing an agent's dongles"))
    }

    /// The dongle with `serial` if `agent` may speak for it (it belongs to the agent's user).
    /// The data plane uses this to map a REMP serial to a dongle record.
    pub fn dongle_for_agent(
        &self,
        agent: &Agent,
        serial: &str,
    ) -> Result<Option<Dongle>, ServerError> {
        self.lock()
            .query_row(
                &format!("SELECT {DONGLE_COLUMNS} FROM dongles WHERE serial = ?1 AND user_id = ?2"),
                params![serial, agent.user_id.to_string()],
                dongle_row,
            )
            .optional()
            .map_err(ServerError::db("reading a dongle"))
    }

    /// The dongle `dongle_id` if `agent` is the agent that announced it (last); `None` for
    /// another agent's dongle or an unknown id. The data plane and the agent assignment endpoint
    /// use this to keep an agent to its own dongles.
    pub fn dongle_of_agent(
        &self,
        agent: &Agent,
        dongle_id: Uuid,
    ) -> Result<Option<Dongle>, ServerError> {
        self.lock()
            .query_row(
                &format!(
                    "SELECT {DONGLE_COLUMNS} FROM dongles
                     WHERE id = ?1 AND agent_id = ?2 AND user_id = ?3"
                ),
                params![
                    dongle_id.to_string(),
                    agent.id.to_string(),
                    agent.user_id.to_string()
                ],
                dongle_row,
            )
            .optional()
            .map_err(ServerError::db("reading a dongle"))
    }

    /// Updates `last_seen` (data plane: traffic or keep-alive). `Ok(false)` for an unknown id.
    pub fn mark_dongle_seen(
        &self,
        dongle_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        let changed = self
            .lock()
            .execute(
                "UPDATE dongles SET last_seen = ?2 WHERE id = ?1",
                params![dongle_id.to_string(), to_millis(now)],
            )
            .map_err(ServerError::db("marking a dongle seen"))?;
        Ok(changed == 1)
    }

    /// Marks every online dongle offline and re-evaluates their groups' modes (the relay
    /// engine holds nothing yet). The data plane calls this when it starts: presence recorded by an earlier
    /// process (stopped or killed) is stale until agents reconnect. Returns the mode changes
    /// written (and audited).
    pub fn reset_presence(&self, now: DateTime<Utc>) -> Result<Vec<ModeChange>, ServerError> {
        let groups: Vec<Uuid> = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare(
                    "SELECT DISTINCT m.group_id FROM group_members m
                     JOIN dongles d ON d.id = m.dongle_id WHERE d.online = 1",
                )
                .map_err(ServerError::db("resetting presence"))?;
            let rows = stmt
                .query_map([], |row| uuid_at(row, 0))
                .map_err(ServerError::db("resetting presence"))?;
            let groups = rows
                .collect::<Result<_, _>>()
                .map_err(ServerError::db("resetting presence"))?;
            conn.execute("UPDATE dongles SET online = 0 WHERE online = 1", [])
                .map_err(ServerError::db("resetting presence"))?;
            groups
        };
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
    /// mode of its group with the relay engine's status `relay_of` reports for it. Returns the mode changes
    /// written (and audited), for the caller to publish as `group_state` events.
    pub fn set_dongle_online(
        &self,
        dongle_id: Uuid,
        online: bool,
        now: DateTime<Utc>,
        relay_of: &dyn Fn(Uuid) -> Option<GroupStatus>,
    ) -> Result<Vec<ModeChange>, ServerError> {
        let group = {
            let conn = self.lock();
            conn.execute(
                "UPDATE dongles SET online = ?2, last_seen = ?3 WHERE id = ?1",
                params![dongle_id.to_string(), online, to_millis(now)],
            )
            .map_err(ServerError::db("setting dongle presence"))?;
            conn.query_row(
                "SELECT group_id FROM group_members WHERE dongle_id = ?1",
                params![dongle_id.to_string()],
                |row| uuid_at(row, 0),
            )
            .optional()
            .map_err(ServerError::db("setting dongle presence"))?
        };
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
