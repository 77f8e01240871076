//! `/api/v1/agents`: a user's agents (read through [`super::list_route`] and
//! [`super::get_route`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Deserialize;

use super::validate_name;
use crate::http::{ApiError, ApiJson, IdPath, UserAuth};
use crate::state::AppState;

/// Body of `POST /api/v1/agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAgent {
    name: String,
}

pub(super) async fn create(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<impl IntoResponse, ApiError> {
    let name = validate_name("name", &body.name)?;
    let created = state
        .store
        .call(move |store| store.create_agent(user.id, &name, Utc::now()))
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    let revoked = state
        .store
        .call(move |store| store.revoke_agent(user.id, id, Utc::now()))
        .await?;
    if revoked {
        state.publish_agent_revoked(id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("agent"))
    }
}
