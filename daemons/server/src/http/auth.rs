//! Bearer-token authentication of users and agents. The extractors work on any router state
//! that hands out the records store (`Arc<Store>: FromRef<S>`), so they need nothing above the
//! store.
//!
//! A user token that authenticated is remembered (by its SHA-256, never in clear) for
//! [`USER_TOKEN_CACHE_TTL`](crate::store::USER_TOKEN_CACHE_TTL) in the store's
//! [`user_token_cache`](Store::user_token_cache), so a client's requests within that time
//! make no store trip to authenticate: a revocation through this process's store takes effect
//! at once, one made elsewhere (the CLI, another instance) within that ttl. Refusals are never
//! remembered. Agent tokens are checked against the store on every request.

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

/// The user of a live user token: from the cache when it authenticated less than the cache's
/// ttl ago, otherwise from the store (and then remembered).
pub(crate) async fn user_for_token(store: &Arc<Store>, token: String) -> Result<User, ApiError> {
    let key = crate::token::hash(&token);
    let cache = store.user_token_cache();
    if let Some(user) = cache.get(&key) {
        return Ok(user);
    }
    let generation = cache.generation();
    let user = store
        .call(move |store| store.authenticate_user(&token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or revoked user token"))?;
    cache.insert(key, user.clone(), generation);
    Ok(user)
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

/// The agent of a live agent token, from the store.
async fn agent_for_token(store: &Arc<Store>, token: String) -> Result<Agent, ApiError> {
    store
        .call(move |store| store.authenticate_agent(&token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or revoked agent token"))
}

/// Implements the extractor `$auth($record)`: the record `$authenticate` finds for the request's
/// `Authorization: Bearer` token.
macro_rules! bearer_extractor {
    ($auth:ident, $authenticate:ident) => {
        impl<S> FromRequestParts<S> for $auth
        where
            Arc<Store>: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                let token = bearer(parts)?.to_owned();
                $authenticate(&Arc::<Store>::from_ref(state), token)
                    .await
                    .map($auth)
            }
        }
    };
}

/// A request authenticated with a live user token.
#[derive(Debug, Clone)]
pub struct UserAuth(pub User);

bearer_extractor!(UserAuth, user_for_token);

/// A request authenticated with a live agent token.
#[derive(Debug, Clone)]
pub struct AgentAuth(pub Agent);

bearer_extractor!(AgentAuth, agent_for_token);
