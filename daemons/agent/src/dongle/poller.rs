//! Per dongle: announce it to the server (retrying with backoff), then poll its group
//! assignment — quickly until it has an active group, slowly after — and publish each answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::api::{ApiError, Assignment, ServerApi};
use super::config::DongleRole;
use crate::servers::{next_delay, reconnect_backoff};

/// What the poller knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollState {
    /// Nothing from the server yet.
    Unknown,
    /// The server answered: the dongle id and its group, if any.
    Known {
        /// The server's dongle id.
        dongle_id: String,
        /// The group assignment.
        group: Option<Assignment>,
    },
}

/// Run until `stop`. `repoll` asks for an immediate poll (e.g. after the data plane refused the
/// group).
pub async fn run(
    serial: String,
    cfg: Arc<DongleRole>,
    api: ServerApi,
    known_id: Option<String>,
    out: watch::Sender<PollState>,
    repoll: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut dongle_id = known_id;
    let mut backoff = reconnect_backoff(cfg.reconnect_min, cfg.reconnect_max);
    let mut announced = false;
    loop {
        let wait = match poll_once(&serial, &api, &mut dongle_id, &mut announced).await {
            Ok(group) => {
                backoff.reset();
                let active = group.as_ref().is_some_and(Assignment::is_active);
                if let Some(id) = &dongle_id {
                    out.send_if_modified(|cur| {
                        let next = PollState::Known {
                            dongle_id: id.clone(),
                            group,
                        };
                        if *cur == next {
                            false
                        } else {
                            *cur = next;
                            true
                        }
                    });
                }
                if active {
                    cfg.assignment_poll_active
                } else {
                    cfg.assignment_poll
                }
            }
            Err(ApiError::NotFound) => {
                warn!(%serial, "the server does not know this dongle: announcing it again");
                dongle_id = None;
                announced = false;
                Duration::ZERO
            }
            Err(e) => {
                let d = next_delay(&mut backoff);
                warn!(%serial, error = %e, retry_in_ms = d.as_millis() as u64, "server API call failed");
                d
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            // The worker is gone.
            () = out.closed() => return,
            () = tokio::time::sleep(wait) => {}
            () = repoll.notified() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn poll_once(
    serial: &str,
    api: &ServerApi,
    dongle_id: &mut Option<String>,
    announced: &mut bool,
) -> Result<Option<Assignment>, ApiError> {
    // Announce once per process run (it also refreshes `last_seen` and ownership), then poll.
    if !*announced {
        let id = api.announce(serial).await?;
        info!(%serial, dongle_id = %id, "dongle announced");
        *dongle_id = Some(id);
        *announced = true;
    }
    let Some(id) = dongle_id.as_deref() else {
        return Err(ApiError::NotFound);
    };
    api.assignment(id).await
}
