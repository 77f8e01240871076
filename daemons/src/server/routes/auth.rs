//! Bearer-token authentication of users and agents.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};

use super::ApiError;
use crate::server::state::AppState;
use crate::server::store::{Agent, User};

/// The token in `Authorization: Bearer <token>`.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Authorization header is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "Authorization header is not `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

/// A request authenticated with a live user token.
#[derive(Debug, Clone)]
pub struct UserAuth(pub User);

impl FromRequestParts<AppState> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?.to_owned();
        let user = state
            .store
            .call(move |store| store.authenticate_user(&token))
            .await?;
        user.map(UserAuth)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked user token"))
    }
}

/// A request authenticated with a live agent token.
#[derive(Debug, Clone)]
pub struct AgentAuth(pub Agent);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?.to_owned();
        let agent = state
            .store
            .call(move |store| store.authenticate_agent(&token))
            .await?;
        agent
            .map(AgentAuth)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked agent token"))
    }
}
