//! Bearer-token authentication of users and agents. The extractors work on any router state
//! that hands out the records store (`Arc<Store>: FromRef<S>`), so they need nothing above the
//! store.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{HeaderMap, header, request::Parts};

use super::ApiError;
use crate::store::{Agent, Store, User};

/// The token in `Authorization: Bearer <token>`.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_token(&parts.headers)?
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))
}

/// The token of an `Authorization: Bearer <token>` header; `None` without the header, an
/// error for a header of another shape.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
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
    Ok(Some(token.trim()))
}

/// The user of a live user token.
pub(crate) async fn user_for_token(store: &Arc<Store>, token: String) -> Result<User, ApiError> {
    store
        .call(move |store| store.authenticate_user(&token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or revoked user token"))
}

/// The user of a request that may carry its token in `Authorization: Bearer` (preferred) or,
/// for browsers' `EventSource` / `WebSocket`, in an `access_token` query parameter.
pub(crate) async fn user_from_header_or_param(
    store: &Arc<Store>,
    headers: &HeaderMap,
    access_token: Option<&str>,
) -> Result<User, ApiError> {
    let token = match bearer_token(headers)? {
        Some(token) => token.to_owned(),
        None => match access_token.map(str::trim) {
            Some(token) if !token.is_empty() => token.to_owned(),
            _ => {
                return Err(ApiError::unauthorized(
                    "missing Authorization: Bearer token or access_token parameter",
                ));
            }
        },
    };
    user_for_token(store, token).await
}

/// A request authenticated with a live user token.
#[derive(Debug, Clone)]
pub struct UserAuth(pub User);

impl<S> FromRequestParts<S> for UserAuth
where
    Arc<Store>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token = bearer(parts)?.to_owned();
        user_for_token(&Arc::<Store>::from_ref(state), token)
            .await
            .map(UserAuth)
    }
}

/// A request authenticated with a live agent token.
#[derive(Debug, Clone)]
pub struct AgentAuth(pub Agent);

impl<S> FromRequestParts<S> for AgentAuth
where
    Arc<Store>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token = bearer(parts)?.to_owned();
        let agent = Arc::<Store>::from_ref(state)
            .call(move |store| store.authenticate_agent(&token))
            .await?;
        agent
            .map(AgentAuth)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked agent token"))
    }
}
