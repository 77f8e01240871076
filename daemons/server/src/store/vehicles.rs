//! Vehicles: a user's cars, each optionally on one of the user's dongles, with the ECU list
//! commands address by name.

use can_io::uds::EcuAddress;
use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, time_at, to_millis, uuid_at};
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

fn vehicle_row(row: &Row<'_>) -> rusqlite::Result<Vehicle> {
    let dongle_id = match row.get::<_, Option<String>>(4)? {
        Some(_) => Some(uuid_at(row, 4)?),
        None => None,
    };
    let ecus_text: String = row.get(5)?;
    let ecus = serde_json::from_str(&ecus_text)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(5, Type::Text, Box::new(err)))?;
    Ok(Vehicle {
        id: uuid_at(row, 0)?,
        user_id: uuid_at(row, 1)?,
        name: row.get(2)?,
        vin: row.get(3)?,
        dongle_id,
        ecus,
        created_at: time_at(row, 6)?,
    })
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
        const ACTION: &str = "creating a vehicle";
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ServerError::db(ACTION))?;
        if let Some(dongle) = dongle_id {
            let owned: bool = tx
                .query_row(
                    "SELECT count(*) FROM dongles WHERE id = ?1 AND user_id = ?2",
                    params![dongle.to_string(), user_id.to_string()],
                    |row| row.get::<_, i64>(0).map(|n| n > 0),
                )
                .map_err(ServerError::db(ACTION))?;
            if !owned {
                return Ok(Err(VehicleRefusal::UnknownDongle));
            }
            let taken: bool = tx
                .query_row(
                    "SELECT count(*) FROM vehicles WHERE dongle_id = ?1",
                    params![dongle.to_string()],
                    |row| row.get::<_, i64>(0).map(|n| n > 0),
                )
                .map_err(ServerError::db(ACTION))?;
            if taken {
                return Ok(Err(VehicleRefusal::DongleTaken));
            }
        }
        let vehicle = Vehicle {
            id: Uuid::new_v4(),
            user_id,
            name: name.to_owned(),
            vin: vin.map(str::to_owned),
            dongle_id,
            ecus: ecus.to_vec(),
            created_at: now,
        };
        let ecus_text =
            serde_json::to_string(&vehicle.ecus).map_err(|err| ServerError::Database {
                action: ACTION,
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(err)),
            })?;
        tx.execute(
            "INSERT INTO vehicles (id, user_id, name, vin, dongle_id, ecus, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                vehicle.id.to_string(),
                user_id.to_string(),
                vehicle.name,
                vehicle.vin,
                dongle_id.map(|d| d.to_string()),
                ecus_text,
                to_millis(now)
            ],
        )
        .map_err(ServerError::db(ACTION))?;
        tx.commit().map_err(ServerError::db(ACTION))?;
        Ok(Ok(vehicle))
    }

    /// The user's vehicles, oldest first.
    pub fn list_vehicles(&self, user_id: Uuid) -> Result<Vec<Vehicle>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE user_id = ?1
                 ORDER BY created_at, id"
            ))
            .map_err(ServerError::db("listing vehicles"))?;
        let rows = stmt
            .query_map(params![user_id.to_string()], vehicle_row)
            .map_err(ServerError::db("listing vehicles"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ServerError::db("listing vehicles"))
    }

    /// One of the user's vehicles; `None` if it is not theirs or unknown.
    pub fn get_vehicle(
        &self,
        user_id: Uuid,
        vehicle_id: Uuid,
    ) -> Result<Option<Vehicle>, ServerError> {
        self.lock()
            .prepare_cached(&format!(
                "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE id = ?1 AND user_id = ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![vehicle_id.to_string(), user_id.to_string()],
                    vehicle_row,
                )
                .optional()
            })
            .map_err(ServerError::db("reading a vehicle"))
    }

    /// A vehicle by id, whoever owns it (the commands service, after the route checked the
    /// owner).
    pub fn vehicle_by_id(&self, vehicle_id: Uuid) -> Result<Option<Vehicle>, ServerError> {
        self.lock()
            .prepare_cached(&format!(
                "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE id = ?1"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![vehicle_id.to_string()], vehicle_row)
                    .optional()
            })
            .map_err(ServerError::db("reading a vehicle"))
    }

    /// The agent that last announced `dongle_id`, if the dongle exists.
    pub fn agent_of_dongle(&self, dongle_id: Uuid) -> Result<Option<Uuid>, ServerError> {
        self.lock()
            .prepare_cached("SELECT agent_id FROM dongles WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![dongle_id.to_string()], |row| uuid_at(row, 0))
                    .optional()
            })
            .map_err(ServerError::db("reading a dongle's agent"))
    }

    /// Which of `dongles` were announced by `agent_id` (the diagnostics channel accepts only
    /// those).
    pub fn dongles_announced_by(
        &self,
        agent_id: Uuid,
        dongles: &[Uuid],
    ) -> Result<Vec<Uuid>, ServerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT count(*) FROM dongles WHERE id = ?1 AND agent_id = ?2")
            .map_err(ServerError::db("checking dongles"))?;
        let mut accepted = Vec::new();
        for dongle in dongles {
            let n: i64 = stmt
                .query_row(params![dongle.to_string(), agent_id.to_string()], |row| {
                    row.get(0)
                })
                .map_err(ServerError::db("checking dongles"))?;
            if n > 0 {
                accepted.push(*dongle);
            }
        }
        Ok(accepted)
    }
}
