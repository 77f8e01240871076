//! Users and their API tokens.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{Store, User, UserTokenInfo, opt_time_at, time_at, to_millis, uuid_at};
use crate::error::ServerError;
use crate::token::{self, IssuedToken, TokenKind};

impl Store {
    /// Returns the user called `name`, creating it if needed.
    pub fn ensure_user(&self, name: &str, now: DateTime<Utc>) -> Result<User, ServerError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO users (id, name, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO NOTHING",
            params![Uuid::new_v4().to_string(), name, to_millis(now)],
        )
        .map_err(ServerError::db("creating a user"))?;
        conn.query_row(
            "SELECT id, name, created_at FROM users WHERE name = ?1",
            params![name],
            |row| {
                Ok(User {
                    id: uuid_at(row, 0)?,
                    name: row.get(1)?,
                    created_at: time_at(row, 2)?,
                })
            },
        )
        .map_err(ServerError::db("reading a user"))
    }

    /// Creates the user if needed and issues a new API token for it. Returns the user, the
    /// token's id (for revoking) and the token (whose secret is shown once).
    pub fn create_user_token(
        &self,
        user_name: &str,
        now: DateTime<Utc>,
    ) -> Result<(User, Uuid, IssuedToken), ServerError> {
        let user = self.ensure_user(user_name, now)?;
        let issued = token::issue(TokenKind::User);
        let id = Uuid::new_v4();
        self.lock()
            .execute(
                "INSERT INTO user_tokens (id, user_id, lookup, hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id.to_string(),
                    user.id.to_string(),
                    issued.lookup,
                    issued.hash.as_slice(),
                    to_millis(now)
                ],
            )
            .map_err(ServerError::db("storing a user token"))?;
        Ok((user, id, issued))
    }

    /// Revokes a user token by id. `Ok(false)` when it was already revoked.
    pub fn revoke_user_token(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, ServerError> {
        let conn = self.lock();
        let changed = conn
            .execute(
                "UPDATE user_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), to_millis(now)],
            )
            .map_err(ServerError::db("revoking a user token"))?;
        if changed == 1 {
            return Ok(true);
        }
        let exists = conn
            .query_row(
                "SELECT 1 FROM user_tokens WHERE id = ?1",
                params![id.to_string()],
                |_| Ok(()),
            )
            .optional()
            .map_err(ServerError::db("reading a user token"))?;
        match exists {
            Some(()) => Ok(false),
            None => Err(ServerError::UnknownToken { id: id.to_string() }),
        }
    }

    /// Lists user tokens (all users, or only `user`), oldest first. Never returns secrets.
    pub fn list_user_tokens(&self, user: Option<&str>) -> Result<Vec<UserTokenInfo>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT t.id, u.name, t.lookup, t.created_at, t.revoked_at
                 FROM user_tokens t JOIN users u ON u.id = t.user_id
                 WHERE ?1 IS NULL OR u.name = ?1
                 ORDER BY t.created_at, t.id",
            )
            .map_err(ServerError::db("listing user tokens"))?;
        let rows = stmt
            .query_map(params![user], |row| {
                Ok(UserTokenInfo {
                    id: uuid_at(row, 0)?,
                    user: row.get(1)?,
                    lookup: row.get(2)?,
                    created_at: time_at(row, 3)?,
                    revoked_at: opt_time_at(row, 4)?,
                })
            })
            .map_err(ServerError::db("listing user tokens"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db("listing user tokens"))
    }

    /// The user a presented token belongs to, or `None` for an unknown, malformed or revoked
    /// token.
    pub fn authenticate_user(&self, presented: &str) -> Result<Option<User>, ServerError> {
        let Some(lookup) = token::lookup_key(TokenKind::User, presented) else {
            return Ok(None);
        };
        let row = self
            .lock()
            .query_row(
                "SELECT t.hash, u.id, u.name, u.created_at
                 FROM user_tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.lookup = ?1 AND t.revoked_at IS NULL",
                params![lookup],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        User {
                            id: uuid_at(row, 1)?,
                            name: row.get(2)?,
                            created_at: time_at(row, 3)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(ServerError::db("authenticating a user token"))?;
        Ok(row.and_then(|(hash, user)| token::matches(presented, &hash).then_some(user)))
    }
}
