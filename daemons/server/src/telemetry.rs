//! The telemetry remote mounted in the server (`tether_collector::remote`): vehicles upload on
//! `/ws/telemetry/upload` with their **agent token** (the vehicle id is the agent's id), and
//! users read the vehicles of their own agents with their user token
//! (`/api/v1/telemetry/vehicles…`). The inbox is `<data_dir>/telemetry.db`.

use std::sync::Arc;

use futures::future::BoxFuture;
use tether_collector::remote::VehicleAuth;
use uuid::Uuid;

use crate::store::Store;

/// Agent tokens upload, user tokens read their own agents' records.
#[derive(Debug)]
pub struct StoreAuth {
    store: Arc<Store>,
}

impl StoreAuth {
    /// Authentication against the server's records store.
    pub fn new(store: Arc<Store>) -> Self {
        StoreAuth { store }
    }
}

impl VehicleAuth for StoreAuth {
    fn vehicle<'a>(&'a self, bearer: &'a str) -> BoxFuture<'a, Option<String>> {
        let token = bearer.to_owned();
        Box::pin(async move {
            let agent = self
                .store
                .call(move |s| s.authenticate_agent(&token))
                .await
                .ok()
                .flatten()?;
            Some(agent.id.to_string())
        })
    }

    fn may_read<'a>(&'a self, bearer: &'a str, vehicle: Option<&'a str>) -> BoxFuture<'a, bool> {
        let token = bearer.to_owned();
        let vehicle = vehicle.map(str::to_owned);
        Box::pin(async move {
            let Some(user) = self
                .store
                .call(move |s| s.authenticate_user(&token))
                .await
                .ok()
                .flatten()
            else {
                return false;
            };
            let Some(vehicle) = vehicle else {
                return true;
            };
            let Ok(agent_id) = Uuid::parse_str(&vehicle) else {
                return false;
            };
            matches!(
                self.store
                    .call(move |s| s.get_agent(user.id, agent_id))
                    .await,
                Ok(Some(_))
            )
        })
    }
}
