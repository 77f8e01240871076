//! The event hub behind the consoles: sse-core's in-memory backend, or its Redis backend when
//! the server has a Redis URL.
//!
//! The Redis backend is connected on first use (and again after a failed attempt), so a server
//! whose Redis is briefly unreachable still starts; `/readyz` reports it meanwhile, publishes
//! are dropped and counted, and subscribers get a stream that ends at once and reconnect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sse_core::backend::SystemClock;
use sse_core::{
    EventBackend, EventId, MemoryBackend, RedisBackend, RedisBackendConfig, SseError, StreamBounds,
    StreamConfig, Subscription,
};
use tokio::sync::OnceCell;

use super::config::ConsoleConfig;

/// Where a stream stands, for the multiplexed stream's starting positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// The latest ID published on the stream, if any is remembered.
    pub(crate) latest: Option<EventId>,
    /// Whether every event ever published on it is still retained (nothing trimmed).
    pub(crate) complete: bool,
}

pub(crate) enum Hub {
    Memory(Arc<MemoryBackend>),
    Redis(Box<RedisHub>),
}

pub(crate) struct RedisHub {
    client: redis::Client,
    config: RedisBackendConfig,
    backend: OnceCell<Arc<RedisBackend>>,
    meta: OnceCell<ConnectionManager>,
    /// When the last connection attempt failed: callers within [`RECONNECT_PAUSE`] fail at once
    /// instead of each trying to connect.
    last_failure: Mutex<Option<Instant>>,
}

/// Longest wait for a first connection to Redis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest time between two attempts to connect to an unreachable Redis.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hub::Memory(_) => f.write_str("Hub::Memory"),
            Hub::Redis(r) => write!(f, "Hub::Redis(prefix {:?})", r.config.key_prefix),
        }
    }
}

fn redis_error(action: &'static str, key: &str, source: redis::RedisError) -> SseError {
    SseError::Redis {
        action,
        stream_key: key.to_owned(),
        source,
    }
}

impl Hub {
    /// A hub for `config`: Redis when `redis_url` is given (validated, not yet connected).
    pub(crate) fn new(config: &ConsoleConfig, redis_url: Option<&str>) -> Result<Hub, SseError> {
        let stream = StreamConfig {
            bounds: StreamBounds {
                max_events: config.history_events,
                max_age_ms: u64::try_from(config.history_max_age.as_millis()).unwrap_or(u64::MAX),
            },
            // The console samples before publishing (see `sampling`), so the hub stores only
            // what subscribers are sent.
            sampling: None,
        };
        match redis_url {
            None => Ok(Hub::Memory(Arc::new(MemoryBackend::new(
                Arc::new(SystemClock),
                stream,
            )))),
            Some(url) => {
                let client = redis::Client::open(url).map_err(|e| redis_error("connect", "", e))?;
                let mut backend = RedisBackendConfig::new(url);
                backend.key_prefix.clone_from(&config.redis_key_prefix);
                backend.default_stream = stream;
                Ok(Hub::Redis(Box::new(RedisHub {
                    client,
                    config: backend,
                    backend: OnceCell::new(),
                    meta: OnceCell::new(),
                    last_failure: Mutex::new(None),
                })))
            }
        }
    }

    /// Publishes one event.
    pub(crate) async fn publish(
        &self,
        key: &str,
        event_type: &str,
        data: &str,
    ) -> Result<EventId, SseError> {
        match self {
            Hub::Memory(memory) => memory.publish_now(key, event_type, data),
            Hub::Redis(redis) => redis.backend().await?.publish(key, event_type, data).await,
        }
    }

    /// Subscribes to one stream, resuming after `last_event_id` as sse-core defines.
    pub(crate) async fn subscribe(
        &self,
        key: &str,
        last_event_id: Option<&str>,
    ) -> Result<Subscription, SseError> {
        match self {
            Hub::Memory(memory) => memory
                .subscribe_now(key, last_event_id)
                .map(sse_core::MemorySubscription::into_subscription),
            Hub::Redis(redis) => redis.backend().await?.subscribe(key, last_event_id).await,
        }
    }

    /// The latest ID of a stream and whether it still holds every event it ever had.
    pub(crate) async fn position(&self, key: &str) -> Result<Position, SseError> {
        match self {
            Hub::Memory(memory) => Ok(match memory.stream_stats(key) {
                None => Position {
                    latest: None,
                    complete: true,
                },
                Some(stats) => Position {
                    latest: stats.latest,
                    complete: stats.trimmed_by_age == 0 && stats.trimmed_by_count == 0,
                },
            }),
            Hub::Redis(redis) => redis.position(key).await,
        }
    }

    /// Forgets idle in-memory streams; returns how many. Redis keys expire by themselves.
    pub(crate) fn prune(&self) -> usize {
        match self {
            Hub::Memory(memory) => memory.prune_idle_streams(),
            Hub::Redis(_) => 0,
        }
    }
}

impl RedisHub {
    async fn backend(&self) -> Result<&Arc<RedisBackend>, SseError> {
        if let Some(backend) = self.backend.get() {
            return Ok(backend);
        }
        let paused = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE);
        if paused {
            return Err(SseError::RedisReply {
                action: "connect",
                stream_key: String::new(),
                detail: "Redis was unreachable moments ago; retrying shortly".to_owned(),
            });
        }
        let result = self
            .backend
            .get_or_try_init(|| async {
                self.probe().await?;
                let backend =
                    RedisBackend::connect(self.config.clone(), Arc::new(SystemClock)).await?;
                tracing::info!(prefix = %self.config.key_prefix, "console connected to Redis");
                Ok(Arc::new(backend))
            })
            .await;
        if result.is_err() {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        result
    }

    /// One plain connection attempt with a short timeout: the connection manager retries with
    /// backoff for several seconds, which would hold every caller while Redis is down.
    async fn probe(&self) -> Result<(), SseError> {
        match tokio::time::timeout(
            PROBE_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(redis_error("connect", "", err)),
            Err(_) => Err(SseError::RedisReply {
                action: "connect",
                stream_key: String::new(),
                detail: format!("no connection within {PROBE_TIMEOUT:?}"),
            }),
        }
    }

    /// Reads the stream's `meta` hash and length (layout in `docs/sse.md`): the latest ID, and
    /// whether the stream still holds all `n` events it was ever given.
    async fn position(&self, key: &str) -> Result<Position, SseError> {
        let meta = self
            .meta
            .get_or_try_init(|| async {
                self.probe().await?;
                self.client
                    .get_connection_manager()
                    .await
                    .map_err(|e| redis_error("connect", key, e))
            })
            .await?;
        let mut con = meta.clone();
        let stream = format!("{}{key}", self.config.key_prefix);
        let (last, n, len): (Option<String>, Option<u64>, u64) = redis::pipe()
            .cmd("HGET")
            .arg(format!("{stream}:meta"))
            .arg("last")
            .cmd("HGET")
            .arg(format!("{stream}:meta"))
            .arg("n")
            .cmd("XLEN")
            .arg(&stream)
            .query_async(&mut con)
            .await
            .map_err(|e| redis_error("position", key, e))?;
        Ok(Position {
            latest: last.and_then(|l| l.parse().ok()),
            complete: n.unwrap_or(0) == len,
        })
    }
}
