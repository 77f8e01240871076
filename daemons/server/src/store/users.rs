//! Users and their API tokens.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sql::{DbError, Row, args, from_columns};
use super::{Store, User, UserTokenInfo};
use crate::error::ServerError;
use crate::token::{self, IssuedToken, TokenKind};

fn user_row(row: &Row, first: usize) -> Result<User, DbError> {
    Ok(from_columns!(row, first => User { id, name, created_at }))
}

impl Store {
    /// Returns the user called `name`, creating it if needed.
    pub fn ensure_user(&self, name: &str, now: DateTime<Utc>) -> Result<User, ServerError> {
        self.run("creating a user", |sql| {
            sql.execute(
                "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
                args![Uuid::new_v4(), name, now],
            )?;
            let row = sql.query_one(
                "SELECT id, name, created_at FROM users WHERE name = $1",
                args![name],
            )?;
            user_row(&row, 0)
        })
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
        self.run("storing a user token", |sql| {
            sql.execute(
                "INSERT INTO user_tokens (id, user_id, lookup, hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                args![id, user.id, &issued.lookup, issued.hash.as_slice(), now],
            )
        })?;
        Ok((user, id, issued))
    }

    /// Revokes a user token by id. `Ok(false)` when it was already revoked.
    pub fn revoke_user_token(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, ServerError> {
        let known = self.run("revoking a user token", |sql| {
            let changed = sql.execute(
                "UPDATE user_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                args![id, now],
            )?;
            if changed == 1 {
                self.user_tokens.clear();
                return Ok(Some(true));
            }
            let exists = sql.query_opt("SELECT 1 FROM user_tokens WHERE id = $1", args![id])?;
            Ok(exists.map(|_| false))
        })?;
        known.ok_or_else(|| ServerError::UnknownToken { id: id.to_string() })
    }

    /// Lists user tokens (all users, or only `user`), oldest first. Never returns secrets.
    pub fn list_user_tokens(&self, user: Option<&str>) -> Result<Vec<UserTokenInfo>, ServerError> {
        let (filter, args) = match user {
            Some(name) => ("WHERE u.name = $1", vec![name.into()]),
            None => ("", Vec::new()),
        };
        self.read_rows(
            "listing user tokens",
            &format!(
                "SELECT t.id, u.name, t.lookup, t.created_at, t.revoked_at
                 FROM user_tokens t JOIN users u ON u.id = t.user_id
                 {filter} ORDER BY t.created_at, t.id"
            ),
            &args,
            |row| {
                Ok(from_columns!(row, 0 => UserTokenInfo {
                    id, user, lookup, created_at, revoked_at
                }))
            },
        )
    }

    /// The user a presented token belongs to, or `None` for an unknown, malformed or revoked
    /// token.
    pub fn authenticate_user(&self, presented: &str) -> Result<Option<User>, ServerError> {
        let Some(lookup) = token::lookup_key(TokenKind::User, presented) else {
            return Ok(None);
        };
        let found = self.read_row(
            "authenticating a user token",
            "SELECT t.hash, u.id, u.name, u.created_at
             FROM user_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.lookup = $1 AND t.revoked_at IS NULL",
            args![lookup],
            |row| Ok((row.get::<Vec<u8>>(0)?, user_row(row, 1)?)),
        )?;
        Ok(found.and_then(|(hash, user)| token::matches(presented, &hash).then_some(user)))
    }
}
