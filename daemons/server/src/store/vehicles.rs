//! Vehicles: a user's cars, each optionally on one of the user's dongles, with the ECU list
//! commands address by name.

use can_io::uds::EcuAddress;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::Store;
use super::sql::{self, DbError, FromValue, Row, args, from_columns, stored_time};
use crate::error::ServerError;

/// A vehicle, as the API shows it (without `online`, which is live state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vehicle {
    /// Stable id.
    pub id: Uuid,
    /// The owner (not shown: it is always the caller).
    #[serde(skip)]
    pub user_id: Uuid,
    /// Display name.
    pub name: String,
    /// Vehicle identification number, if given.
    pub vin: Option<String>,
    /// The dongle on the vehicle's bus, if any.
    pub dongle_id: Option<Uuid>,
    /// The vehicle's ECUs (may be empty: commands then go out functionally).
    pub ecus: Vec<EcuAddress>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Why a vehicle was not created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VehicleRefusal {
    /// `dongle_id` is not one of the user's dongles.
    UnknownDongle,
    /// The dongle is already on another vehicle.
    DongleTaken,
}

const VEHICLE_COLUMNS: &str = "id, user_id, name, vin, dongle_id, ecus, created_at";

/// The ECU list, stored as JSON.
impl FromValue for Vec<EcuAddress> {
    fn from_value(value: &sql::Value) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::from_value(value)?).map_err(|err| err.to_string())
    }
}

fn vehicle_row(row: &Row) -> Result<Vehicle, DbError> {
    Ok(from_columns!(row, 0 => Vehicle { id, user_id, name, vin, dongle_id, ecus, created_at }))
}

impl Store {
    /// Creates a vehicle of `user_id`. The dongle, if given, must be the user's and on no
    /// other vehicle.
    pub fn create_vehicle(
        &self,
        user_id: Uuid,
        name: &str,
        vin: Option<&str>,
        dongle_id: Option<Uuid>,
        ecus: &[EcuAddress],
        now: DateTime<Utc>,
    ) -> Result<Result<Vehicle, VehicleRefusal>, ServerError> {
        let vehicle = Vehicle {
            id: Uuid::new_v4(),
            user_id,
            name: name.to_owned(),
            vin: vin.map(str::to_owned),
            dongle_id,
            ecus: ecus.to_vec(),
            created_at: stored_time(now),
        };
        self.transaction_or_refuse("creating a vehicle", |sql| {
            let ecus_json = serde_json::to_value(&vehicle.ecus)
                .map_err(|err| DbError::Encode(err.to_string()))?;
            if let Some(dongle) = dongle_id {
                let owned = sql.query_opt(
                    "SELECT 1 FROM dongles WHERE id = $1 AND user_id = $2",
                    args![dongle, user_id],
                )?;
                if owned.is_none() {
                    return Ok(Err(VehicleRefusal::UnknownDongle));
                }
                let taken =
                    sql.query_opt("SELECT 1 FROM vehicles WHERE dongle_id = $1", args![dongle])?;
                if taken.is_some() {
                    return Ok(Err(VehicleRefusal::DongleTaken));
                }
            }
            let inserted = sql.execute(
                "INSERT INTO vehicles (id, user_id, name, vin, dongle_id, ecus, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![vehicle.id, user_id, name, vin, dongle_id, &ecus_json, now],
            );
            match inserted {
                // Another instance put the dongle on a vehicle since the check (PostgreSQL).
                Err(err) if err.is_unique_violation() => Ok(Err(VehicleRefusal::DongleTaken)),
                Err(err) => Err(err),
                Ok(_) => Ok(Ok(vehicle)),
            }
        })
    }

    /// The user's vehicles, oldest first.
    pub fn list_vehicles(&self, user_id: Uuid) -> Result<Vec<Vehicle>, ServerError> {
        self.read_rows(
            "listing vehicles",
            &format!(
                "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE user_id = $1
                 ORDER BY created_at, id"
            ),
            args![user_id],
            vehicle_row,
        )
    }

    /// One of the user's vehicles; `None` if it is not theirs or unknown.
    pub fn get_vehicle(
        &self,
        user_id: Uuid,
        vehicle_id: Uuid,
    ) -> Result<Option<Vehicle>, ServerError> {
        self.read_row(
            "reading a vehicle",
            &format!("SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE id = $1 AND user_id = $2"),
            args![vehicle_id, user_id],
            vehicle_row,
        )
    }

    /// A vehicle by id, whoever owns it (the commands service, after the route checked the
    /// owner).
    pub fn vehicle_by_id(&self, vehicle_id: Uuid) -> Result<Option<Vehicle>, ServerError> {
        self.read_row(
            "reading a vehicle",
            &format!("SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE id = $1"),
            args![vehicle_id],
            vehicle_row,
        )
    }

    /// The agent that last announced `dongle_id`, if the dongle exists.
    pub fn agent_of_dongle(&self, dongle_id: Uuid) -> Result<Option<Uuid>, ServerError> {
        self.read_row(
            "reading a dongle's agent",
            "SELECT agent_id FROM dongles WHERE id = $1",
            args![dongle_id],
            |row| row.get(0),
        )
    }

    /// Which of `dongles` were announced by `agent_id` (the diagnostics channel accepts only
    /// those).
    pub fn dongles_announced_by(
        &self,
        agent_id: Uuid,
        dongles: &[Uuid],
    ) -> Result<Vec<Uuid>, ServerError> {
        self.run("checking dongles", |sql| {
            let mut accepted = Vec::new();
            for dongle in dongles {
                let found = sql.query_opt(
                    "SELECT 1 FROM dongles WHERE id = $1 AND agent_id = $2",
                    args![*dongle, agent_id],
                )?;
                if found.is_some() {
                    accepted.push(*dongle);
                }
            }
            Ok(accepted)
        })
    }
}
