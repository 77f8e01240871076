//! What every request handler shares: [`AppState`], and the parts handlers of lower modules
//! take from it (`State<Console>`, `State<Arc<Store>>`, through [`FromRef`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use chrono::Utc;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::console::{Console, PresenceStatus};
use crate::error::ServerError;
use crate::group_mode::RelayProbe;
use crate::metrics::ServerMetrics;
use crate::store::{Actor, ModeChange, Store};

/// How many mode changes a slow subscriber may fall behind before it is told it lagged.
const MODE_CHANGE_BUFFER: usize = 1024;

/// Shared state of the HTTP server: one allocation behind an `Arc`, so the clone each
/// request's handlers and middleware take is one reference count, not one per part (the Redis
/// client's clone alone allocates).
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<StateParts>,
}

impl std::ops::Deref for AppState {
    type Target = StateParts;

    fn deref(&self) -> &StateParts {
        &self.inner
    }
}

/// What an [`AppState`] holds.
#[derive(Debug)]
pub struct StateParts {
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Arc<ServerMetrics>,
    pub(crate) relay: Arc<dyn RelayProbe>,
    pub(crate) redis: Option<redis::Client>,
    pub(crate) readiness_timeout: Duration,
    mode_changes: broadcast::Sender<ModeChange>,
    group_deletions: broadcast::Sender<Uuid>,
    agent_revocations: broadcast::Sender<Uuid>,
    console: Console,
}

impl AppState {
    /// Builds the state from its parts, and has `console` publish this state's group mode
    /// changes as `group_state` events.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<ServerMetrics>,
        relay: Arc<dyn RelayProbe>,
        redis: Option<redis::Client>,
        console: Console,
    ) -> AppState {
        let mode_changes = broadcast::channel(MODE_CHANGE_BUFFER).0;
        console.watch_mode_changes(
            mode_changes.subscribe(),
            Arc::clone(&store),
            Arc::clone(&relay),
        );
        AppState {
            inner: Arc::new(StateParts {
                store,
                metrics,
                relay,
                redis,
                readiness_timeout: Duration::from_secs(2),
                mode_changes,
                group_deletions: broadcast::channel(MODE_CHANGE_BUFFER).0,
                agent_revocations: broadcast::channel(MODE_CHANGE_BUFFER).0,
                console,
            }),
        }
    }

    /// The live console (SSE streams of dongles and groups).
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// The records store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// How the state reads the relay engine (mode facts and backlog of its groups).
    pub fn relay(&self) -> &Arc<dyn RelayProbe> {
        &self.relay
    }

    /// Subscribes to group mode changes (the source of `group_state` events). Every change is
    /// already persisted and audited when it is published; a subscriber that lags more than
    /// 1024 changes gets `RecvError::Lagged` with the count and can re-read the groups.
    pub fn subscribe_mode_changes(&self) -> broadcast::Receiver<ModeChange> {
        self.mode_changes.subscribe()
    }

    /// Publishes mode changes written by the store. With no subscriber nothing is lost: the
    /// change is in the database and the audit log.
    pub fn publish_mode_changes(&self, changes: impl IntoIterator<Item = ModeChange>) {
        for change in changes {
            let _ = self.mode_changes.send(change);
        }
    }

    /// Subscribes to group deletions (ids of deleted groups, published after the delete was
    /// committed). A subscriber that lags gets `RecvError::Lagged` and can re-read its groups.
    pub fn subscribe_group_deletions(&self) -> broadcast::Receiver<Uuid> {
        self.group_deletions.subscribe()
    }

    /// Publishes that a group was deleted (the data plane closes its connections at once).
    pub fn publish_group_deleted(&self, group: Uuid) {
        let _ = self.group_deletions.send(group);
    }

    /// Subscribes to agent revocations (ids, published after the revocation was committed).
    pub fn subscribe_agent_revocations(&self) -> broadcast::Receiver<Uuid> {
        self.agent_revocations.subscribe()
    }

    /// Publishes that an agent was revoked: its open data-plane connections are closed.
    pub fn publish_agent_revoked(&self, agent: Uuid) {
        let _ = self.agent_revocations.send(agent);
    }

    /// Data plane entry point: a dongle connected or disconnected. Updates presence, publishes
    /// a `presence` event (on the dongle's console and its group's), re-evaluates its group's
    /// mode with the current backlog, and publishes any change.
    pub async fn set_dongle_online(
        &self,
        dongle_id: Uuid,
        online: bool,
    ) -> Result<Vec<ModeChange>, ServerError> {
        let probe = Arc::clone(&self.relay);
        let (changes, group) = self
            .store
            .call(move |store| {
                let changes = store.set_dongle_online(dongle_id, online, Utc::now(), &|group| {
                    probe.status(group)
                })?;
                let group = store.group_of_dongle(dongle_id)?.map(|g| g.id);
                Ok((changes, group))
            })
            .await?;
        let status = if online {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        };
        self.console.presence(dongle_id, group, status);
        self.publish_mode_changes(changes.clone());
        Ok(changes)
    }

    /// Data plane entry point: an agent's first data-plane connection opened (`online`) or its
    /// last one closed. Publishes a `presence` event with its `agent_id` on the console
    /// streams of the dongles it announced and of their groups.
    pub async fn set_agent_online(&self, agent_id: Uuid, online: bool) -> Result<(), ServerError> {
        let dongles = self
            .store
            .call(move |store| store.dongles_of_agent(agent_id))
            .await?;
        let status = if online {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        };
        self.console.agent_presence(agent_id, &dongles, status);
        Ok(())
    }

    /// Data plane entry point: traffic or a keep-alive arrived from a dongle. Updates
    /// `last_seen` and publishes a `presence` `seen` event, at most one per dongle per
    /// `console.seen_interval_secs`. `Ok(false)` for an unknown dongle.
    pub async fn mark_dongle_seen(&self, dongle_id: Uuid) -> Result<bool, ServerError> {
        let due = self.console.seen_due(dongle_id);
        let (known, group) = self
            .store
            .call(move |store| {
                let known = store.mark_dongle_seen(dongle_id, Utc::now())?;
                let group = if known && due {
                    store.group_of_dongle(dongle_id)?.map(|g| g.id)
                } else {
                    None
                };
                Ok((known, group))
            })
            .await?;
        if known && due {
            self.console
                .presence(dongle_id, group, PresenceStatus::Seen);
        }
        Ok(known)
    }

    /// Data plane entry point: the relay engine's status of a group changed (a side started or
    /// stopped replaying, or its backlog changed). Re-evaluates its mode and publishes a
    /// change, if any.
    pub async fn refresh_group_mode(
        &self,
        group_id: Uuid,
    ) -> Result<Option<ModeChange>, ServerError> {
        let relay = self.relay.status(group_id);
        let change = self
            .store
            .call(move |store| {
                store.refresh_group_mode(group_id, relay, &Actor::DataPlane, "backlog", Utc::now())
            })
            .await?;
        self.publish_mode_changes(change.clone());
        Ok(change)
    }
}

/// Handlers below the state (the console's streams, the auth extractors) take the console
/// without knowing `AppState`.
impl FromRef<AppState> for Console {
    fn from_ref(state: &AppState) -> Console {
        state.console.clone()
    }
}

/// The console's handlers take the relay engine's status of groups (for the `group_state` a
/// fresh subscriber gets first).
impl FromRef<AppState> for Arc<dyn RelayProbe> {
    fn from_ref(state: &AppState) -> Arc<dyn RelayProbe> {
        Arc::clone(&state.relay)
    }
}

/// Handlers below the state take the records store without knowing `AppState`.
impl FromRef<AppState> for Arc<Store> {
    fn from_ref(state: &AppState) -> Arc<Store> {
        Arc::clone(&state.store)
    }
}
