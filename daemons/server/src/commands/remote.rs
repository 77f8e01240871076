//! Commands across server instances sharing one Redis (`docs/cluster.md`): a command accepted
//! by one instance reaches the vehicle's agent connected to another.
//!
//! Layout (key prefix `tether:`, as the relay's stream log):
//! * `{prefix}diag:dongle:{dongle_id}` — the instance whose diagnostics channel serves the
//!   dongle, refreshed every [`ANNOUNCE_EVERY`] with a TTL of [`ANNOUNCE_TTL`].
//! * channel `{prefix}diag:to:{instance}` — command requests for that instance (the
//!   `relay_core::protocol::diag::CommandRequest` JSON).
//! * channel `{prefix}diag:events:{command_id}` — the agent's answers, relayed back to the
//!   instance running the command ([`AgentEvent`] JSON).
//!
//! The instance running the command subscribes to the events channel **before** it publishes
//! the request, so no answer is missed; a request no instance received (`PUBLISH` answered 0)
//! counts as not dispatched and is tried again while the command's ttl lasts. Pub/sub is
//! at-most-once: if the serving instance dies mid-command, the command ends by its answer
//! timeout, like a silent agent.
//!
//! * `{prefix}instance:{instance}` — the liveness key of a running instance ([`Liveness`]),
//!   refreshed every [`LIVENESS_EVERY`] with a TTL of [`LIVENESS_TTL`]. The open commands an
//!   instance owns (`commands.instance` in the records) are left alone by every other instance
//!   while this key exists; once it expired, any instance may adopt them (`super::Commands`).
//!
//! Responses themselves are not routed here: the running instance stores them and publishes
//! them on `response:{command_id}` (`super::bus`), and `/ws/responses/{id}` on any instance
//! reads the shared store.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use relay_core::protocol::diag::CommandRequest;
use tokio::sync::{OnceCell, mpsc};
use uuid::Uuid;

use super::agent::{AgentEvent, HubInner};

/// How often an instance re-announces the dongles it serves.
pub(super) const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// How long an announcement lasts without a refresh.
const ANNOUNCE_TTL: Duration = Duration::from_secs(3);

/// Key prefix, shared with the relay's stream log.
const PREFIX: &str = crate::dataplane::REDIS_KEY_PREFIX;

/// How long the request listener waits between checks that its hub still exists.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// How often a running instance refreshes its liveness key.
pub(super) const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// How long a liveness key lasts without a refresh: an instance that died (or lost Redis)
/// stops owning its open commands after this.
pub(super) const LIVENESS_TTL: Duration = Duration::from_secs(3);

fn liveness_key(instance: &str) -> String {
    format!("{PREFIX}instance:{instance}")
}

impl RemoteRoute {
    /// Sets (or refreshes) this instance's liveness key.
    pub(super) async fn refresh(&self) -> redis::RedisResult<()> {
        let ttl = u64::try_from(LIVENESS_TTL.as_millis()).unwrap_or(3000);
        redis::cmd("SET")
            .arg(liveness_key(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .query_async::<()>(&mut self.conn().await?)
            .await
    }

    /// Which of `instances` are alive (their liveness key exists); one pipeline.
    pub(super) async fn alive(
        &self,
        instances: &[String],
    ) -> redis::RedisResult<std::collections::HashSet<String>> {
        if instances.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let mut pipe = redis::pipe();
        for instance in instances {
            pipe.cmd("EXISTS").arg(liveness_key(instance));
        }
        let found: Vec<i64> = pipe.query_async(&mut self.conn().await?).await?;
        Ok(instances
            .iter()
            .zip(found)
            .filter(|(_, n)| *n > 0)
            .map(|(instance, _)| instance.clone())
            .collect())
    }
}

/// The Redis side of commands in a cluster: the agent connector's routing, and this
/// instance's liveness key (with the question which other instances are alive).
#[derive(Debug)]
pub(super) struct RemoteRoute {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// This instance's id ([`crate::store::Store::instance`]).
    pub(super) instance: String,
}

fn dongle_key(dongle: Uuid) -> String {
    format!("{PREFIX}diag:dongle:{dongle}")
}

fn inbox(instance: &str) -> String {
    format!("{PREFIX}diag:to:{instance}")
}

fn events_channel(command_id: Uuid) -> String {
    format!("{PREFIX}diag:events:{command_id}")
}

impl RemoteRoute {
    pub(super) fn new(client: redis::Client, instance: String) -> RemoteRoute {
        RemoteRoute {
            client,
            conn: OnceCell::new(),
            instance,
        }
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
    }

    /// Announces the dongles served here (one pipeline).
    pub(super) async fn announce(&self, dongles: &[Uuid]) -> redis::RedisResult<()> {
        if dongles.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let ttl = u64::try_from(ANNOUNCE_TTL.as_millis()).unwrap_or(3000);
        for dongle in dongles {
            pipe.cmd("SET")
                .arg(dongle_key(*dongle))
                .arg(&self.instance)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn().await?).await
    }

    /// Sends `request` to the instance serving its dongle, if another one does; the receiver
    /// yields that agent's answers. `None`: no other instance took it.
    pub(super) async fn dispatch(
        &self,
        request: &CommandRequest,
    ) -> redis::RedisResult<Option<mpsc::UnboundedReceiver<AgentEvent>>> {
        let mut conn = self.conn().await?;
        let holder: Option<String> = redis::cmd("GET")
            .arg(dongle_key(request.dongle_id))
            .query_async(&mut conn)
            .await?;
        let Some(holder) = holder.filter(|h| *h != self.instance) else {
            return Ok(None);
        };
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(events_channel(request.command_id)).await?;
        let text = serde_json::to_string(request).map_err(|err| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "encoding a command request",
                err.to_string(),
            ))
        })?;
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(inbox(&holder))
            .arg(text)
            .query_async(&mut conn)
            .await?;
        if receivers == 0 {
            return Ok(None);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let command_id = request.command_id;
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                let event: AgentEvent = match serde_json::from_str(&payload) {
                    Ok(event) => event,
                    Err(err) => {
                        tracing::warn!(%command_id, %err, "an undecodable relayed agent event was ignored");
                        continue;
                    }
                };
                let last = event.is_last();
                if tx.send(event).is_err() || last {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }

    /// Relays the answers of a command run for another instance back to it.
    async fn relay_events(
        &self,
        command_id: Uuid,
        mut events: mpsc::UnboundedReceiver<AgentEvent>,
    ) {
        while let Some(event) = events.recv().await {
            let last = event.is_last();
            let Ok(text) = serde_json::to_string(&event) else {
                continue;
            };
            let sent = match self.conn().await {
                Ok(mut conn) => {
                    redis::cmd("PUBLISH")
                        .arg(events_channel(command_id))
                        .arg(text)
                        .query_async::<i64>(&mut conn)
                        .await
                }
                Err(err) => Err(err),
            };
            if let Err(err) = sent {
                tracing::warn!(%command_id, %err, "relaying an agent answer to the instance running the command failed");
            }
            if last {
                return;
            }
        }
    }
}

/// Serves this instance's inbox and announces its dongles while the hub exists.
pub(super) fn spawn(hub: Weak<HubInner>) {
    tokio::spawn(announce_loop(hub.clone()));
    tokio::spawn(listen_loop(hub));
}

async fn announce_loop(hub: Weak<HubInner>) {
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        tick.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        let Some(route) = inner.remote.as_ref() else {
            return;
        };
        let dongles = inner.served_dongles();
        if let Err(err) = route.announce(&dongles).await {
            tracing::warn!(%err, "announcing the dongles served here failed");
        }
    }
}

async fn listen_loop(hub: Weak<HubInner>) {
    loop {
        let (client, instance) = {
            let Some(inner) = hub.upgrade() else { return };
            let Some(route) = inner.remote.as_ref() else {
                return;
            };
            (route.client.clone(), route.instance.clone())
        };
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(inbox(&instance)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(err) => {
                tracing::warn!(%err, "subscribing to this instance's command inbox failed; retrying");
                tokio::time::sleep(LISTEN_RETRY).await;
                continue;
            }
        };
        let mut messages = pubsub.into_on_message();
        loop {
            let next = tokio::time::timeout(LISTEN_RETRY, messages.next()).await;
            let Some(inner) = hub.upgrade() else { return };
            match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(message)) => {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<CommandRequest>(&payload) {
                        Ok(request) => inner.serve_remote(request),
                        Err(err) => {
                            tracing::warn!(%err, "an undecodable command request from another instance was ignored");
                        }
                    }
                }
            }
        }
        tracing::warn!("this instance's command inbox closed; subscribing again");
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

impl HubInner {
    /// Runs a command another instance sent here on the local connection serving its dongle,
    /// relaying the answers back.
    fn serve_remote(self: std::sync::Arc<Self>, request: CommandRequest) {
        let command_id = request.command_id;
        let events = match super::agent::dispatch_local(&self, &request) {
            Some(events) => events,
            None => {
                // The dongle moved away since it was announced: the runner sees a disconnect
                // (and retries a read-only command).
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(AgentEvent::Disconnected);
                rx
            }
        };
        tokio::spawn(async move {
            if let Some(route) = self.remote.as_ref() {
                route.relay_events(command_id, events).await;
            }
            super::agent::forget_local(&self, command_id);
        });
    }
}
