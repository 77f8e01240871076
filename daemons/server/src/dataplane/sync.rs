//! Applies the data plane's facts to the records, one job after the other.
//!
//! Order matters: a mode refresh reads the backlog probe when it runs, so two refreshes that
//! ran concurrently could commit an older backlog's mode last. One task, in order, avoids that;
//! a burst of refreshes of the same group is collapsed to its last one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use relay_core::engine::Direction;
use relay_core::log::Trimmed;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{RelayStatusCache, taps};
use crate::group_mode::{GroupBacklog, RelayProbe};
use crate::state::AppState;
use crate::store::Actor;

/// Most jobs taken from the queue at once (for collapsing refreshes).
const BATCH: usize = 256;

/// How often a changed backlog is published as a `group_state` console event.
const BACKLOG_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// A change the records have to follow.
#[derive(Debug, Clone)]
pub(super) enum SyncJob {
    /// A side connected or disconnected.
    Online {
        /// The side's dongle.
        dongle: Uuid,
        /// Connected or not.
        online: bool,
    },
    /// An agent's first connection opened or its last one closed.
    AgentOnline {
        /// The agent.
        agent: Uuid,
        /// Connected or not.
        online: bool,
    },
    /// The engine's mode (or offline set) changed: re-evaluate and persist the group's mode.
    Refresh {
        /// The group.
        group: Uuid,
    },
    /// Traffic from a dongle (throttled by the driver).
    Seen {
        /// The dongle.
        dongle: Uuid,
    },
    /// Retention removed frames the consumer had not acknowledged.
    Pressure {
        /// The group.
        group: Uuid,
        /// The trimmed stream.
        direction: Direction,
        /// What the trim removed.
        trimmed: Trimmed,
        /// How many of them the consumer had not acknowledged.
        unacknowledged: u64,
    },
}

/// Runs until the driver drops its sender.
pub(super) async fn run(state: AppState, mut jobs: mpsc::UnboundedReceiver<SyncJob>) {
    let mut batch = Vec::with_capacity(BATCH);
    while jobs.recv_many(&mut batch, BATCH).await > 0 {
        for (index, job) in batch.iter().enumerate() {
            if let SyncJob::Refresh { group } = job {
                let later = batch[index + 1..]
                    .iter()
                    .any(|j| matches!(j, SyncJob::Refresh { group: g } if g == group));
                if later {
                    continue;
                }
            }
            apply(&state, job.clone()).await;
        }
        batch.clear();
    }
}

async fn apply(state: &AppState, job: SyncJob) {
    match job {
        SyncJob::Online { dongle, online } => {
            if let Err(err) = state.set_dongle_online(dongle, online).await {
                tracing::error!(%dongle, online, %err, "recording dongle presence failed");
            }
        }
        SyncJob::AgentOnline { agent, online } => {
            if let Err(err) = state.set_agent_online(agent, online).await {
                tracing::error!(%agent, online, %err, "publishing agent presence failed");
            }
        }
        SyncJob::Refresh { group } => {
            if let Err(err) = state.refresh_group_mode(group).await {
                tracing::error!(%group, %err, "refreshing a group mode failed");
            }
        }
        SyncJob::Seen { dongle } => {
            // Through AppState, so the console also gets its (throttled) `presence` `seen`.
            if let Err(err) = state.mark_dongle_seen(dongle).await {
                tracing::warn!(%dongle, %err, "recording last_seen failed");
            }
        }
        SyncJob::Pressure {
            group,
            direction,
            trimmed,
            unacknowledged,
        } => {
            let reason = trimmed.reason.as_str();
            tracing::warn!(
                %group,
                direction = direction.as_str(),
                reason,
                trimmed = trimmed.count,
                unacknowledged,
                first = trimmed.first,
                last = trimmed.last,
                "relay buffer pressure: retention removed undelivered frames"
            );
            taps::group_warning(
                state,
                group,
                format!(
                    "buffer pressure: {unacknowledged} undelivered frames of {} were removed by \
                     {reason} retention (seqs up to {}); the receiving side gets a gap notice",
                    direction.as_str(),
                    trimmed.last
                ),
                json!({
                    "event": "buffer_pressure",
                    "direction": direction.as_str(),
                    "reason": reason,
                    "trimmed": trimmed.count,
                    "unacknowledged": unacknowledged,
                    "first_seq": trimmed.first,
                    "last_seq": trimmed.last,
                }),
            );
            let now = Utc::now();
            let result = state
                .store()
                .call(move |store| {
                    store.record_group_event(group, &Actor::DataPlane, "buffer_pressure", now)
                })
                .await;
            if let Err(err) = result {
                tracing::error!(%group, %err, "writing the buffer-pressure audit entry failed");
            }
        }
    }
}

/// Publishes a `group_state` console event for every group whose backlog changed since the
/// last tick (at most one per group per [`BACKLOG_PUBLISH_INTERVAL`]), so a console watching a
/// degraded group sees its backlog grow and drain, not only the mode changes. Runs until
/// `stop` turns true.
pub(super) async fn publish_backlogs(
    state: AppState,
    cache: Arc<RelayStatusCache>,
    mut stop: watch::Receiver<bool>,
) {
    let mut published: HashMap<Uuid, GroupBacklog> = HashMap::new();
    let mut tick = tokio::time::interval(BACKLOG_PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = cache.backlogs();
        // Changed or new backlogs, and groups whose backlog drained to zero since.
        let mut changed: Vec<Uuid> = now
            .iter()
            .filter(|(g, b)| published.get(g) != Some(b))
            .map(|(g, _)| *g)
            .collect();
        changed.extend(published.keys().filter(|g| !now.contains_key(g)));
        for group in changed {
            let relay = cache.status(group);
            match state.store().call(move |store| store.group(group)).await {
                Ok(Some(record)) => state.console().group_state(&record.state(relay.as_ref())),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%group, %err, "cannot read a group to publish its backlog");
                }
            }
        }
        published = now;
    }
}
