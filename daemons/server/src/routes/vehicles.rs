//! `/api/v1/vehicles`: a user's vehicles, each optionally on one of the user's dongles, with the
//! ECU list commands address by name.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use can_io::uds::EcuAddress;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{found, validate_name};
use crate::commands::Commands;
use crate::http::{ApiError, ApiJson, IdPath, UserAuth};
use crate::state::AppState;
use crate::store::{Vehicle, VehicleRefusal};

/// Most ECUs a vehicle may list.
const MAX_ECUS: usize = 64;
/// Longest accepted VIN.
const MAX_VIN_LEN: usize = 32;

/// Body of `POST /api/v1/vehicles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateVehicle {
    name: String,
    #[serde(default)]
    vin: Option<String>,
    #[serde(default)]
    dongle_id: Option<Uuid>,
    #[serde(default)]
    ecus: Vec<EcuAddress>,
}

fn validate_vin(vin: &str) -> Result<String, ApiError> {
    let vin = vin.trim();
    if vin.is_empty() || vin.len() > MAX_VIN_LEN || !vin.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ApiError::invalid(format!(
            "vin must be 1 to {MAX_VIN_LEN} ASCII letters and digits"
        )));
    }
    Ok(vin.to_ascii_uppercase())
}

fn validate_ecus(ecus: &[EcuAddress]) -> Result<(), ApiError> {
    if ecus.len() > MAX_ECUS {
        return Err(ApiError::invalid(format!("ecus: at most {MAX_ECUS} ECUs")));
    }
    let mut names = HashSet::new();
    for (i, ecu) in ecus.iter().enumerate() {
        if ecu.name.is_empty()
            || ecu.name.len() > 64
            || ecu.name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(ApiError::invalid(format!(
                "ecus[{i}].name must be 1 to 64 bytes without control characters or '/'"
            )));
        }
        if !names.insert(ecu.name.as_str()) {
            return Err(ApiError::invalid(format!(
                "ecus[{i}].name {:?} is listed twice",
                ecu.name
            )));
        }
    }
    Ok(())
}

/// A vehicle as the API shows it: the record plus `online`.
pub(super) async fn view(commands: &Commands, vehicle: &Vehicle) -> Result<Value, ApiError> {
    let online = commands.vehicle_online(vehicle).await?;
    let mut body = serde_json::to_value(vehicle).unwrap_or_else(|_| json!({}));
    body["online"] = json!(online);
    Ok(body)
}

pub(super) async fn create(
    State(state): State<AppState>,
    Extension(commands): Extension<Commands>,
    UserAuth(user): UserAuth,
    ApiJson(body): ApiJson<CreateVehicle>,
) -> Result<impl IntoResponse, ApiError> {
    let name = validate_name("name", &body.name)?;
    let vin = body.vin.as_deref().map(validate_vin).transpose()?;
    validate_ecus(&body.ecus)?;
    let created = state
        .store
        .call(move |store| {
            store.create_vehicle(
                user.id,
                &name,
                vin.as_deref(),
                body.dongle_id,
                &body.ecus,
                Utc::now(),
            )
        })
        .await?;
    match created {
        Ok(vehicle) => Ok((StatusCode::CREATED, Json(view(&commands, &vehicle).await?))),
        Err(VehicleRefusal::UnknownDongle) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_dongle",
            "dongle_id is not one of your dongles",
        )),
        Err(VehicleRefusal::DongleTaken) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "dongle_in_use",
            "the dongle is already on another vehicle",
        )),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(commands): Extension<Commands>,
    UserAuth(user): UserAuth,
) -> Result<impl IntoResponse, ApiError> {
    let vehicles = state
        .store
        .call(move |store| store.list_vehicles(user.id))
        .await?;
    let mut out = Vec::with_capacity(vehicles.len());
    for vehicle in &vehicles {
        out.push(view(&commands, vehicle).await?);
    }
    Ok(Json(json!({ "vehicles": out })))
}

pub(super) async fn get(
    State(state): State<AppState>,
    Extension(commands): Extension<Commands>,
    UserAuth(user): UserAuth,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let vehicle = found(&state, "vehicle", move |store| {
        store.get_vehicle(user.id, id)
    })
    .await?;
    Ok(Json(view(&commands, &vehicle).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vins_and_ecu_lists() {
        assert_eq!(
            validate_vin(" 1hgcm82633a004352 ").ok().as_deref(),
            Some("1HGCM82633A004352")
        );
        for bad in ["", "VIN WITH SPACE", "é", &"X".repeat(33)] {
            assert!(validate_vin(bad).is_err(), "{bad:?}");
        }
        let ecu = |name: &str| EcuAddress {
            name: name.into(),
            request_id: 0x7E0,
            response_id: 0x7E8,
        };
        assert!(validate_ecus(&[ecu("engine"), ecu("abs")]).is_ok());
        assert!(validate_ecus(&[ecu("engine"), ecu("engine")]).is_err());
        assert!(validate_ecus(&[ecu("")]).is_err());
        assert!(validate_ecus(&[ecu("a/b")]).is_err());
    }
}
