//! The response bus: every stored response (and a command's failure) as one event, published
//! to the WebSocket streams of this process and, with a Redis URL, on Redis channel
//! `response:{command_id}`.
//!
//! Events are published only after the row they describe is committed, so a reader that
//! subscribes first and then reads the store misses nothing (and drops what it saw twice by
//! `sequence_number`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OnceCell, broadcast};
use uuid::Uuid;

use super::metrics::CommandMetrics;

/// How many events one subscriber may fall behind before it re-reads the store.
const SUBSCRIBER_BUFFER: usize = 256;

/// One event of a command's stream, as published and as sent on `/ws/responses/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BusEvent {
    /// A stored response.
    Response {
        /// The command.
        command_id: Uuid,
        /// 1, 2, …
        sequence_number: u32,
        /// Whether it is the last.
        is_final: bool,
        /// The response JSON.
        response: Value,
    },
    /// The command failed (after any responses it had).
    Failed {
        /// The command.
        command_id: Uuid,
        /// Why.
        error_message: String,
    },
}

impl BusEvent {
    /// Whether nothing follows this event on its command's stream.
    pub fn is_last(&self) -> bool {
        match self {
            BusEvent::Response { is_final, .. } => *is_final,
            BusEvent::Failed { .. } => true,
        }
    }

    /// The event as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The Redis channel of a command's events.
pub fn channel(command_id: Uuid) -> String {
    format!("response:{command_id}")
}

/// Publishes command events in process and, optionally, to Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: Mutex<HashMap<Uuid, broadcast::Sender<Arc<BusEvent>>>>,
    redis: Option<redis::Client>,
    conn: OnceCell<redis::aio::ConnectionManager>,
    metrics: CommandMetrics,
}

impl ResponseBus {
    /// A bus; with `redis`, events are also PUBLISHed there.
    pub fn new(redis: Option<redis::Client>, metrics: CommandMetrics) -> ResponseBus {
        ResponseBus {
            inner: Arc::new(Inner {
                local: Mutex::new(HashMap::new()),
                redis,
                conn: OnceCell::new(),
                metrics,
            }),
        }
    }

    /// Subscribes to a command's events in this process. Subscribe **before** reading the
    /// stored responses.
    pub fn subscribe(&self, command_id: Uuid) -> Subscription {
        let receiver = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(command_id)
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
            .subscribe();
        Subscription {
            bus: self.clone(),
            command_id,
            receiver: Some(receiver),
        }
    }

    /// Publishes that a command failed with `error` ([`BusEvent::Failed`]), as
    /// [`ResponseBus::publish`] does.
    pub async fn publish_failed(&self, command_id: Uuid, error: &str) {
        self.publish(BusEvent::Failed {
            command_id,
            error_message: error.to_owned(),
        })
        .await;
    }

    /// Publishes an event whose row is already committed: to local subscribers, then to
    /// Redis. A Redis failure is counted and logged; the event stays in the store.
    pub async fn publish(&self, event: BusEvent) {
        let command_id = match &event {
            BusEvent::Response { command_id, .. } | BusEvent::Failed { command_id, .. } => {
                *command_id
            }
        };
        let last = event.is_last();
        let event = Arc::new(event);
        {
            let mut local = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(sender) = local.get(&command_id) {
                let _ = sender.send(Arc::clone(&event));
                if last {
                    // Subscribers keep their receivers; nothing more will be sent.
                    local.remove(&command_id);
                }
            }
        }
        self.inner.metrics.events_published.inc();
        if let Some(client) = &self.inner.redis {
            let conn = self
                .inner
                .conn
                .get_or_try_init(|| redis::aio::ConnectionManager::new(client.clone()))
                .await;
            let result = match conn {
                Ok(conn) => {
                    let mut conn = conn.clone();
                    redis::cmd("PUBLISH")
                        .arg(channel(command_id))
                        .arg(event.to_json())
                        .query_async::<i64>(&mut conn)
                        .await
                        .map(drop)
                }
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                self.inner.metrics.publish_errors.inc();
                tracing::warn!(%command_id, %err, "publishing a command event to Redis failed; it is stored");
            }
        }
    }

    fn release(&self, command_id: Uuid) {
        let mut local = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if local
            .get(&command_id)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            local.remove(&command_id);
        }
    }
}

/// A subscription to one command's events; dropping it frees the entry when it was the last.
#[derive(Debug)]
pub struct Subscription {
    bus: ResponseBus,
    command_id: Uuid,
    receiver: Option<broadcast::Receiver<Arc<BusEvent>>>,
}

impl Subscription {
    /// The next event; `Err(Lagged)` when events were missed (re-read the store), `Err(Closed)`
    /// when none will come.
    pub async fn recv(&mut self) -> Result<Arc<BusEvent>, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(r) => r.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.receiver = None;
        self.bus.release(self.command_id);
    }
}
