//! Dongles: announced by agents (`/api/v1/agent/dongles`), read by users (`/api/v1/dongles`,
//! through [`super::list_route`] and [`super::get_route`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use relay_core::engine::Side;
use serde::Deserialize;
use serde_json::json;

use super::found;
use crate::http::{AgentAuth, ApiError, ApiJson, IdPath};
use crate::state::AppState;
use crate::store::Announce;

/// Longest accepted serial.
const MAX_SERIAL_LEN: usize = 64;

/// Body of `POST /api/v1/agent/dongles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnnounceDongle {
    serial: String,
}

/// A serial is 1–64 printable ASCII characters without spaces: it appears in URLs, logs and
/// candump files, where anything else would need escaping.
fn validate_serial(serial: &str) -> Result<(), ApiError> {
    if serial.is_empty() || serial.len() > MAX_SERIAL_LEN {
        return Err(ApiError::invalid(format!(
            "serial must be 1 to {MAX_SERIAL_LEN} characters"
        )));
    }
    if !serial.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "serial must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

pub(super) async fn announce(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(body): ApiJson<AnnounceDongle>,
) -> Result<impl IntoResponse, ApiError> {
    validate_serial(&body.serial)?;
    let outcome = state
        .store
        .call(move |store| store.announce_dongle(&agent, &body.serial, Utc::now()))
        .await?;
    match outcome {
        Announce::Created(dongle) => Ok((StatusCode::CREATED, Json(dongle))),
        Announce::Existing(dongle) => Ok((StatusCode::OK, Json(dongle))),
    }
}

/// `GET /api/v1/agent/dongles/{id}` (agent token): which group and side the agent opens on
/// `/ws/data` for one of its dongles.
pub(super) async fn assignment(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let (dongle, group) = found(&state, "dongle", move |store| {
        let Some(dongle) = store.dongle_of_agent(&agent, id)? else {
            return Ok(None);
        };
        let group = store.group_of_dongle(dongle.id)?;
        Ok(Some((dongle, group)))
    })
    .await?;
    let group = group.map(|g| {
        let side = if g.dongle_a == dongle.id {
            Side::A
        } else {
            Side::B
        };
        json!({ "id": g.id, "side": side, "mode": g.mode })
    });
    Ok(Json(json!({
        "id": dongle.id,
        "serial": dongle.serial,
        "group": group,
    })))
}

#[cfg(test)]
mod tests {
    use super::validate_serial;

    #[test]
    fn serials() {
        assert!(validate_serial("SN-0001").is_ok());
        assert!(validate_serial(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "tab\t", "é", &"x".repeat(65)] {
            assert!(validate_serial(bad).is_err(), "{bad:?}");
        }
    }
}
