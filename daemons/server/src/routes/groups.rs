//! `/api/v1/groups`: pairs of dongles relayed to each other.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{found, validate_name};
use crate::http::{ApiError, ApiJson, IdPath, UserAuth};
use crate::state::AppState;
use crate::store::{Actor, GroupRefusal, GroupView};

/// Body of `POST /api/v1/groups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateGroup {
    name: String,
    dongle_a: Uuid,
    dongle_b: Uuid,
}

fn refusal(reason: GroupRefusal) -> ApiError {
    match reason {
        GroupRefusal::SameDongle => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_dongle",
            "dongle_a and dongle_b must be different dongles",
        ),
        GroupRefusal::UnknownDongle(side) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_dongle",
            format!("dongle_{side} is not one of your dongles"),
        ),
        GroupRefusal::DongleInGroup(side) => ApiError::new(
            StatusCode::CONFLICT,
            "dongle_in_group",
            format!("dongle_{side} is already in a group"),
        ),
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    ApiJson(body): ApiJson<CreateGroup>,
) -> Result<impl IntoResponse, ApiError> {
    let name = validate_name("name", &body.name)?;
    let actor = Actor::User(user.name.clone());
    let created = state
        .store
        .call(move |store| {
            store.create_group(
                user.id,
                &actor,
                &name,
                body.dongle_a,
                body.dongle_b,
                Utc::now(),
            )
        })
        .await?;
    let group = created.map_err(refusal)?;
    let state_now = group.state(state.relay.status(group.id).as_ref());
    Ok((StatusCode::CREATED, Json(state_now)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
) -> Result<impl IntoResponse, ApiError> {
    let groups = state
        .store
        .call(move |store| store.list_groups(user.id))
        .await?;
    let states: Vec<GroupView> = groups
        .iter()
        .map(|g| g.state(state.relay.status(g.id).as_ref()))
        .collect();
    Ok(Json(json!({ "groups": states })))
}

pub(super) async fn get(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let group = found(&state, "group", move |store| store.get_group(user.id, id)).await?;
    Ok(Json(group.state(state.relay.status(group.id).as_ref())))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    let actor = Actor::User(user.name.clone());
    let deleted = state
        .store
        .call(move |store| store.delete_group(user.id, id, &actor, Utc::now()))
        .await?;
    if deleted {
        state.publish_group_deleted(id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("group"))
    }
}

/// `POST /api/v1/groups/{id}/activate` (`ACTIVATED`) and `…/deactivate` (not `ACTIVATED`).
pub(super) async fn set_activated<const ACTIVATED: bool>(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<Json<GroupView>, ApiError> {
    let actor = Actor::User(user.name.clone());
    let relay = state.relay.status(id);
    let relay_now = relay.clone();
    let (group, change) = found(&state, "group", move |store| {
        store.set_group_activated(user.id, id, ACTIVATED, relay_now, &actor, Utc::now())
    })
    .await?;
    if let Some(change) = &change {
        tracing::info!(
            group = %id,
            old = change.old.as_str(),
            new = change.state.mode.as_str(),
            "group mode changed"
        );
    }
    state.publish_mode_changes(change);
    Ok(Json(group.state(relay.as_ref())))
}

pub(super) async fn audit(
    State(state): State<AppState>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let entries = found(&state, "group", move |store| store.group_audit(user.id, id)).await?;
    Ok(Json(json!({ "entries": entries })))
}
