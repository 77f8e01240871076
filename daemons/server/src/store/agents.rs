//! Agents and their tokens.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sql::{DbError, Row, args, from_columns, stored_time};
use super::{Agent, AgentWithToken, Store};
use crate::error::ServerError;
use crate::token::{self, TokenKind};

const AGENT_COLUMNS: &str = "id, user_id, name, created_at";

fn agent_row(row: &Row, first: usize) -> Result<Agent, DbError> {
    Ok(from_columns!(row, first => Agent { id, user_id, name, created_at }))
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
            // As stored, so this answer and a later read show the same time.
            created_at: stored_time(now),
        };
        self.run("creating an agent", |sql| {
            sql.execute(
                "INSERT INTO agents (id, user_id, name, token_lookup, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                args![
                    agent.id,
                    user_id,
                    name,
                    &issued.lookup,
                    issued.hash.as_slice(),
                    now
                ],
            )
        })?;
        Ok(AgentWithToken {
            agent,
            token: issued.secret,
        })
    }

    /// The user's live (not revoked) agents, oldest first.
    pub fn list_agents(&self, user_id: Uuid) -> Result<Vec<Agent>, ServerError> {
        self.read_rows(
            "listing agents",
            &format!(
                "SELECT {AGENT_COLUMNS} FROM agents
                 WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
            ),
            args![user_id],
            |row| agent_row(row, 0),
        )
    }

    /// One of the user's live agents; `None` if it is not theirs, revoked or unknown.
    pub fn get_agent(&self, user_id: Uuid, agent_id: Uuid) -> Result<Option<Agent>, ServerError> {
        self.read_row(
            "reading an agent",
            &format!(
                "SELECT {AGENT_COLUMNS} FROM agents
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL"
            ),
            args![agent_id, user_id],
            |row| agent_row(row, 0),
        )
    }

    /// Revokes one of the user's agents: its token stops working and it disappears from the
    /// API. Its dongles stay the user's. `Ok(false)` if it is not theirs or already revoked.
    pub fn revoke_agent(
        &self,
        user_id: Uuid,
        agent_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, ServerError> {
        self.run("revoking an agent", |sql| {
            sql.execute(
                "UPDATE agents SET revoked_at = $3
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                args![agent_id, user_id, now],
            )
            .map(|changed| changed == 1)
        })
    }

    /// The live agent a presented agent token belongs to, or `None`.
    pub fn authenticate_agent(&self, presented: &str) -> Result<Option<Agent>, ServerError> {
        let Some(lookup) = token::lookup_key(TokenKind::Agent, presented) else {
            return Ok(None);
        };
        let found = self.read_row(
            "authenticating an agent token",
            &format!(
                "SELECT token_hash, {AGENT_COLUMNS} FROM agents
                 WHERE token_lookup = $1 AND revoked_at IS NULL"
            ),
            args![lookup],
            |row| Ok((row.get::<Vec<u8>>(0)?, agent_row(row, 1)?)),
        )?;
        Ok(found.and_then(|(hash, agent)| token::matches(presented, &hash).then_some(agent)))
    }
}
