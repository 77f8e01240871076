//! Agents and their tokens.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use uuid::Uuid;

use super::{Agent, AgentWithToken, Store, time_at, to_millis, uuid_at};
use crate::error::ServerError;
use crate::token::{self, TokenKind};

const AGENT_COLUMNS: &str = "id, user_id, name, created_at";

fn agent_row(row: &Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        id: uuid_at(row, 0)?,
        user_id: uuid_at(row, 1)?,
        name: row.get(2)?,
        created_at: time_at(row, 3)?,
    })
}

impl Store {
    /// Creates an agent for `user_id` and returns it with its token (shown once).
    pub fn create_agent(
        &self,
        user_id: Uuid,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<AgentWithToken, ServerError> {
        let issued = token::issue(TokenKind::Agent);
        let agent = Agent {
            id: Uuid::new_v4(),
            user_id,
            name: name.to_owned(),
            created_at: now,
        };
        self.lock()
            .execute(
                "INSERT INTO agents (id, user_id, name, token_lookup, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    agent.id.to_string(),
                    user_id.to_string(),
                    name,
                    issued.lookup,
                    issued.hash.as_slice(),
                    to_millis(now)
                ],
            )
            .map_err(ServerError::db("creating an agent"))?;
        Ok(AgentWithToken {
            agent,
            token: issued.secret,
        })
    }

    /// The user's live (not revoked) agents, oldest first.
    pub fn list_agents(&self, user_id: Uuid) -> Result<Vec<Agent>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents
                 WHERE user_id = ?1 AND revoked_at IS NULL ORDER BY created_at, id"
            ))
            .map_err(ServerError::db("listing agents"))?;
        let rows = stmt
            .query_map(params![user_id.to_string()], agent_row)
            .map_err(ServerError::db("listing agents"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db("listing agents"))
    }

    /// One of the user's live agents; `None` if it is not theirs, revoked or unknown.
    pub fn get_agent(&self, user_id: Uuid, agent_id: Uuid) -> Result<Option<Agent>, ServerError> {
        self.lock()
            .query_row(
                &format!(
                    "SELECT {AGENT_COLUMNS} FROM agents
                     WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL"
                ),
                params![agent_id.to_string(), user_id.to_string()],
                agent_row,
            )
            .optional()
            .map_err(ServerError::db("reading an agent"))
    }

    /// Revokes one of the user's agents: its token stops working and it disappears from the
    /// API. Its dongles stay the user's. `Ok(false)` if it is not theirs or already revoked.
    pub fn revoke_agent(
        &self,
        user_id: Uuid,
        agent_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        let changed = self
            .lock()
            .execute(
                "UPDATE agents SET revoked_at = ?3
                 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                params![agent_id.to_string(), user_id.to_string(), to_millis(now)],
            )
            .map_err(ServerError::db("revoking an agent"))?;
        Ok(changed == 1)
    }

    /// The live agent a presented agent token belongs to, or `None`.
    pub fn authenticate_agent(&self, presented: &str) -> Result<Option<Agent>, ServerError> {
        let Some(lookup) = token::lookup_key(TokenKind::Agent, presented) else {
            return Ok(None);
        };
        let row = self
            .lock()
            .query_row(
                &format!(
                    "SELECT token_hash, {AGENT_COLUMNS} FROM agents
                     WHERE token_lookup = ?1 AND revoked_at IS NULL"
                ),
                params![lookup],
                |row| {
                    let hash: Vec<u8> = row.get(0)?;
                    let agent = Agent {
                        id: uuid_at(row, 1)?,
                        user_id: uuid_at(row, 2)?,
                        name: row.get(3)?,
                        created_at: time_at(row, 4)?,
                    };
                    Ok((hash, agent))
                },
            )
            .optional()
            .map_err(ServerError::db("authenticating an agent token"))?;
        Ok(row.and_then(|(hash, agent)| token::matches(presented, &hash).then_some(agent)))
    }
}
