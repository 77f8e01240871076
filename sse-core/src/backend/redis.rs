//! Redis backend: one Redis stream per stream key, so several server instances share history and
//! a client can resume on any of them.
//!
//! Layout (with the default prefix `tether:sse:`):
//! - `tether:sse:<stream_key>`: the stream; entries have fields `t` (event type), `d` (data)
//!   and `n` (a per-stream sequence number 1, 2, 3 …).
//!   Entry IDs are the event IDs. Trimmed exactly by `MAXLEN` (count) and `MINID` (age).
//! - `tether:sse:<stream_key>:meta`: a hash with `n` (last sequence number), `ms` (ms part of the
//!   last ID) and `last` (last ID), kept because a stream trimmed empty still has a latest ID.
//!
//! Publishing is one Lua script (sequence number, `XADD`, `MAXLEN`, `MINID`, meta) so entries
//! and their sequence numbers never disagree. The ms part of IDs comes from the publisher's clock
//! (never below the stream's last ms), so a virtual clock works here too and ages are measured on
//! the same clock as in memory.
//!
//! The publishing connection is opened on first use ([`RedisBackend::new`]) or at once
//! ([`RedisBackend::connect`]). After a failed connection attempt, calls within
//! [`RedisBackendConfig::reconnect_pause`] fail at once with [`SseError::RedisUnavailable`]
//! instead of each trying again, so a daemon whose Redis is away keeps serving and reconnects
//! by itself once Redis is back.
//!
//! Readers use `XREAD BLOCK` on a connection of their own with no client response timeout (the
//! `redis` crate's 500 ms default would cut every block short). Redis resumes silently after a
//! trimmed ID, so readers check the sequence numbers and turn a jump into a `lagged` reset.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, RedisError, Script};

use super::{Clock, EventBackend, StreamConfig, StreamPosition, Subscription, validate_stream_key};
use crate::buffer::{ResetReason, StoredEvent, StreamItem, StreamReset, validate_event_type};
use crate::error::SseError;
use crate::id::EventId;

const PUBLISH_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local last_ms = tonumber(redis.call('HGET', KEYS[2], 'ms') or '0')
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local ms = string.format('%.0f', math.max(now, last_ms))
n = n + 1
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], ms .. '-*',
  't', ARGV[5], 'd', ARGV[6], 'n', n)
redis.call('HSET', KEYS[2], 'n', n, 'ms', ms, 'last', id)
local min_ms = now - tonumber(ARGV[3])
if min_ms > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f', min_ms) .. '-0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return id
"#;

/// Keys live at least this long after the last publish (ms), so an idle stream's history and
/// latest ID survive the age bound's reach while abandoned streams still go away.
const MIN_KEY_TTL_MS: u64 = 24 * 3600 * 1000;
const READ_COUNT: usize = 64;
/// Local state of a stream with default settings is forgotten after this long without a
/// publish.
const LOCAL_IDLE_MS: u64 = 60_000;

/// The default prefix of every key the Redis backend writes.
pub const DEFAULT_KEY_PREFIX: &str = "tether:sse:";

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisBackendConfig {
    /// `redis://…` URL.
    pub url: String,
    /// Prefix of every key this backend writes.
    pub key_prefix: String,
    /// How long one `XREAD BLOCK` waits (ms) before checking again.
    pub block_ms: u64,
    /// Settings of streams without their own.
    pub default_stream: StreamConfig,
    /// Longest wait for one connection attempt (publishing and each subscriber's connection).
    pub connect_timeout: Duration,
    /// After a failed connection attempt, calls within this time fail at once
    /// ([`SseError::RedisUnavailable`]) instead of each trying to connect.
    pub reconnect_pause: Duration,
}

impl RedisBackendConfig {
    /// Defaults for `url`: prefix [`DEFAULT_KEY_PREFIX`], 5 s blocks, default stream settings,
    /// 2 s connection timeout, 1 s pause after a failed connection.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            block_ms: 5_000,
            default_stream: StreamConfig::default(),
            connect_timeout: Duration::from_secs(2),
            reconnect_pause: Duration::from_secs(1),
        }
    }

    /// The Redis stream holding `stream_key`'s events: `<prefix><stream_key>`.
    pub fn stream_key(&self, stream_key: &str) -> String {
        format!("{}{stream_key}", self.key_prefix)
    }

    /// The hash holding `stream_key`'s metadata (`n`, `ms`, `last`): `<prefix><stream_key>:meta`.
    pub fn meta_key(&self, stream_key: &str) -> String {
        format!("{}{stream_key}:meta", self.key_prefix)
    }
}

#[derive(Debug)]
struct LocalStream {
    config: StreamConfig,
    /// When it last published, on the hub clock.
    last_ms: u64,
}

/// The Redis hub.
pub struct RedisBackend {
    client: Client,
    publisher: ConnectionManager,
    /// When the last connection attempt failed (see [`RedisBackendConfig::reconnect_pause`]).
    last_failure: Mutex<Option<Instant>>,
    script: Script,
    config: RedisBackendConfig,
    clock: Arc<dyn Clock>,
    local: Mutex<HashMap<String, LocalStream>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn redis_err<'k>(action: &'static str, key: &'k str) -> impl FnOnce(RedisError) -> SseError + 'k {
    move |source| SseError::Redis {
        action,
        stream_key: key.to_owned(),
        source,
    }
}

fn reply_err(action: &'static str, key: &str, detail: String) -> SseError {
    SseError::RedisReply {
        action,
        stream_key: key.to_owned(),
        detail,
    }
}

impl RedisBackend {
    /// A backend that connects on first use: only the URL is checked now, so a daemon starts
    /// while Redis is away. Needs a tokio runtime.
    pub fn new(config: RedisBackendConfig, clock: Arc<dyn Clock>) -> Result<Self, SseError> {
        let client = Client::open(config.url.as_str()).map_err(redis_err("connect", ""))?;
        // One attempt per reconnection: the pause after a failure, not the manager's backoff,
        // keeps callers from hammering an unreachable Redis, and no caller waits for retries.
        let manager = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(config.connect_timeout));
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(redis_err("connect", ""))?;
        Ok(Self {
            client,
            publisher,
            last_failure: Mutex::new(None),
            script: Script::new(PUBLISH_SCRIPT),
            config,
            clock,
            local: Mutex::new(HashMap::new()),
        })
    }

    /// A backend whose publishing connection is opened now, so an unreachable Redis fails here.
    pub async fn connect(
        config: RedisBackendConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SseError> {
        let backend = Self::new(config, clock)?;
        let mut con = backend.connection("connect", "")?;
        let result = redis::cmd("PING").query_async::<()>(&mut con).await;
        backend.checked(result, "connect", "")?;
        Ok(backend)
    }

    /// The key layout and settings this backend runs with.
    pub fn config(&self) -> &RedisBackendConfig {
        &self.config
    }

    /// The publishing connection, unless a connection attempt failed moments ago.
    fn connection(&self, action: &'static str, key: &str) -> Result<ConnectionManager, SseError> {
        let failed_at = *self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = failed_at
            && at.elapsed() < self.config.reconnect_pause
        {
            return Err(SseError::RedisUnavailable {
                action,
                stream_key: key.to_owned(),
            });
        }
        Ok(self.publisher.clone())
    }

    /// Maps a command's result, noting a connection failure (for the reconnect pause).
    fn checked<T>(
        &self,
        result: Result<T, RedisError>,
        action: &'static str,
        key: &str,
    ) -> Result<T, SseError> {
        let mut last_failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(value) => {
                *last_failure = None;
                Ok(value)
            }
            Err(err) => {
                if is_connection_error(&err) {
                    *last_failure = Some(Instant::now());
                }
                Err(redis_err(action, key)(err))
            }
        }
    }

    fn stream_key(&self, key: &str) -> String {
        self.config.stream_key(key)
    }

    fn meta_key(&self, key: &str) -> String {
        self.config.meta_key(key)
    }

    /// Delete a stream and its metadata (tests, operations).
    pub async fn delete_stream(&self, stream_key: &str) -> Result<(), SseError> {
        let mut con = self.connection("delete", stream_key)?;
        let result = redis::cmd("DEL")
            .arg(self.stream_key(stream_key))
            .arg(self.meta_key(stream_key))
            .query_async::<()>(&mut con)
            .await;
        self.checked(result, "delete", stream_key)
    }

    async fn publish_inner(
        &self,
        key: &str,
        event_type: &str,
        data: &str,
    ) -> Result<EventId, SseError> {
        validate_stream_key(key)?;
        validate_event_type(event_type)?;
        let now = self.clock.now_ms();
        let config = {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            let default = self.config.default_stream;
            let st = local.entry(key.to_owned()).or_insert_with(|| LocalStream {
                config: default,
                last_ms: now,
            });
            st.last_ms = now;
            st.config
        };
        let ttl = config.bounds.max_age_ms.max(MIN_KEY_TTL_MS);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.stream_key(key))
            .key(self.meta_key(key))
            .arg(now)
            .arg(config.bounds.max_events.max(1))
            .arg(config.bounds.max_age_ms)
            .arg(ttl)
            .arg(event_type)
            .arg(data);
        let mut con = self.connection("publish", key)?;
        let result = invocation.invoke_async(&mut con).await;
        let id: String = self.checked(result, "publish", key)?;
        id.parse()
            .map_err(|_| reply_err("publish", key, format!("bad id {id:?}")))
    }

    async fn meta(
        &self,
        con: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<(Option<EventId>, u64), SseError> {
        let meta: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.meta_key(key))
            .query_async(con)
            .await
            .map_err(redis_err("subscribe", key))?;
        let last = meta.get("last").and_then(|s| s.parse().ok());
        let n = meta.get("n").and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((last, n))
    }

    async fn subscribe_inner(
        &self,
        key: &str,
        last_event_id: Option<&str>,
    ) -> Result<Subscription, SseError> {
        validate_stream_key(key)?;
        self.connection("subscribe", key)?;
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.config.connect_timeout));
        let result = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await;
        let mut con = self.checked(result, "subscribe", key)?;
        let stream = self.stream_key(key);
        let max_age = self.stream_config(key).bounds.max_age_ms;
        let min_ms = self.clock.now_ms().saturating_sub(max_age);
        if min_ms > 0 {
            redis::cmd("XTRIM")
                .arg(&stream)
                .arg("MINID")
                .arg(format!("{min_ms}-0"))
                .query_async::<()>(&mut con)
                .await
                .map_err(redis_err("subscribe", key))?;
        }
        let (latest, latest_n) = self.meta(&mut con, key).await?;
        let mut pending = VecDeque::new();
        let (cursor, expected) = match last_event_id {
            None => (latest.unwrap_or(EventId::new(0, 0)), Some(latest_n + 1)),
            Some(raw) => match raw.parse::<EventId>() {
                Err(_) => {
                    let oldest = first_entry(&mut con, &stream, key).await?;
                    pending.push_back(reset(raw, oldest, latest, ResetReason::Malformed));
                    (EventId::new(0, 0), None)
                }
                Ok(id) if Some(id) == latest => (id, Some(latest_n + 1)),
                Ok(id) => {
                    let found: StreamRangeReply = redis::cmd("XRANGE")
                        .arg(&stream)
                        .arg(id.to_string())
                        .arg(id.to_string())
                        .query_async(&mut con)
                        .await
                        .map_err(redis_err("subscribe", key))?;
                    match found.ids.first() {
                        Some(entry) => (id, Some(entry_seq(entry, key)? + 1)),
                        None => {
                            let oldest = first_entry(&mut con, &stream, key).await?;
                            let reason = if latest.is_none_or(|l| id > l) {
                                ResetReason::NewerThanLatest
                            } else if oldest.is_none_or(|o| id < o) {
                                ResetReason::TooOld
                            } else {
                                ResetReason::UnknownId
                            };
                            pending.push_back(reset(raw, oldest, latest, reason));
                            (EventId::new(0, 0), None)
                        }
                    }
                }
            },
        };
        let reader = RedisReader {
            con,
            stream,
            key: key.to_owned(),
            meta_key: self.meta_key(key),
            block_ms: self.config.block_ms,
            cursor,
            expected,
            pending,
        };
        let items = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(item) => Some((Ok(item), Some(reader))),
                // After an error the subscription ends; the client reconnects with its last ID.
                Err(err) => Some((Err(err), None)),
            }
        });
        Ok(Subscription::new(items.boxed()))
    }

    /// Trims by age, then reads the latest ID (`meta` hash), the number of events ever
    /// published (`n`) and the number retained (`XLEN`), in one round trip.
    async fn position_inner(&self, key: &str) -> Result<StreamPosition, SseError> {
        validate_stream_key(key)?;
        let stream = self.stream_key(key);
        let meta = self.meta_key(key);
        let min_ms = self
            .clock
            .now_ms()
            .saturating_sub(self.stream_config(key).bounds.max_age_ms);
        let mut pipe = redis::pipe();
        if min_ms > 0 {
            pipe.cmd("XTRIM")
                .arg(&stream)
                .arg("MINID")
                .arg(format!("{min_ms}-0"))
                .ignore();
        }
        pipe.cmd("HGET").arg(&meta).arg("last");
        pipe.cmd("HGET").arg(&meta).arg("n");
        pipe.cmd("XLEN").arg(&stream);
        let mut con = self.connection("position", key)?;
        let result = pipe.query_async(&mut con).await;
        let (last, n, len): (Option<String>, Option<u64>, u64) =
            self.checked(result, "position", key)?;
        let latest = match last {
            None => None,
            Some(raw) => Some(
                raw.parse()
                    .map_err(|_| reply_err("position", key, format!("bad last id {raw:?}")))?,
            ),
        };
        Ok(StreamPosition {
            latest,
            published: n.unwrap_or(0),
            retained: len,
        })
    }

    /// Forgets the local state (settings) of streams with default settings that have
    /// not published for a minute.
    fn prune_local(&self) -> usize {
        let now = self.clock.now_ms();
        let default = self.config.default_stream;
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let before = local.len();
        local.retain(|_, st| {
            st.config != default || now.saturating_sub(st.last_ms) <= LOCAL_IDLE_MS
        });
        before - local.len()
    }

    fn stream_config(&self, key: &str) -> StreamConfig {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local
            .get(key)
            .map(|s| s.config)
            .unwrap_or(self.config.default_stream)
    }
}

/// Errors after which the connection is probably gone (refused, timed out, dropped).
fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_connection_dropped()
}

fn reset(
    requested: &str,
    oldest: Option<EventId>,
    latest: Option<EventId>,
    reason: ResetReason,
) -> StreamItem {
    StreamItem::Reset(Box::new(StreamReset {
        requested: Some(requested.to_owned()),
        oldest: oldest.map(|i| i.to_string()),
        latest: latest.map(|i| i.to_string()),
        reason,
    }))
}

async fn first_entry(
    con: &mut MultiplexedConnection,
    stream: &str,
    key: &str,
) -> Result<Option<EventId>, SseError> {
    let first: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await
        .map_err(redis_err("subscribe", key))?;
    Ok(first.ids.first().and_then(|e| e.id.parse().ok()))
}

fn entry_seq(entry: &StreamId, key: &str) -> Result<u64, SseError> {
    entry
        .get::<String>("n")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            reply_err(
                "read",
                key,
                format!("entry {} has no sequence number", entry.id),
            )
        })
}

struct RedisReader {
    con: MultiplexedConnection,
    stream: String,
    key: String,
    meta_key: String,
    block_ms: u64,
    cursor: EventId,
    /// The sequence number the next entry must have; `None` right after a reset.
    expected: Option<u64>,
    pending: VecDeque<StreamItem>,
}

impl RedisReader {
    async fn next(&mut self) -> Result<StreamItem, SseError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(item);
            }
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(self.block_ms)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(self.cursor.to_string())
                .query_async(&mut self.con)
                .await
                .map_err(redis_err("read", &self.key))?;
            let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
            for entry in entries {
                self.take_entry(entry).await?;
            }
        }
    }

    async fn take_entry(&mut self, entry: StreamId) -> Result<(), SseError> {
        let id: EventId = entry
            .id
            .parse()
            .map_err(|_| reply_err("read", &self.key, format!("bad id {:?}", entry.id)))?;
        let n = entry_seq(&entry, &self.key)?;
        if let Some(expected) = self.expected
            && n != expected
        {
            let latest: Option<String> = redis::cmd("HGET")
                .arg(&self.meta_key)
                .arg("last")
                .query_async(&mut self.con)
                .await
                .map_err(redis_err("read", &self.key))?;
            tracing::debug!(stream = %self.key, expected, got = n, "redis reader fell behind the stream");
            self.pending
                .push_back(StreamItem::Reset(Box::new(StreamReset {
                    requested: Some(self.cursor.to_string()),
                    oldest: Some(id.to_string()),
                    latest,
                    reason: ResetReason::Lagged,
                })));
        }
        self.expected = Some(n + 1);
        self.cursor = id;
        let field = |name: &str| {
            entry.get::<String>(name).ok_or_else(|| {
                reply_err(
                    "read",
                    &self.key,
                    format!("entry {} has no field {name}", entry.id),
                )
            })
        };
        let event = StoredEvent {
            id,
            event_type: field("t")?,
            data: field("d")?,
            published_ms: id.ms,
        };
        self.pending.push_back(StreamItem::Event(Arc::new(event)));
        Ok(())
    }
}

impl EventBackend for RedisBackend {
    fn publish<'a>(
        &'a self,
        stream_key: &'a str,
        event_type: &'a str,
        data: &'a str,
    ) -> BoxFuture<'a, Result<EventId, SseError>> {
        self.publish_inner(stream_key, event_type, data).boxed()
    }

    fn subscribe<'a>(
        &'a self,
        stream_key: &'a str,
        last_event_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Subscription, SseError>> {
        self.subscribe_inner(stream_key, last_event_id).boxed()
    }

    fn position<'a>(
        &'a self,
        stream_key: &'a str,
    ) -> BoxFuture<'a, Result<StreamPosition, SseError>> {
        self.position_inner(stream_key).boxed()
    }

    fn prune_idle_streams(&self) -> usize {
        self.prune_local()
    }

    fn configure_stream(&self, stream_key: &str, config: StreamConfig) -> Result<(), SseError> {
        validate_stream_key(stream_key)?;
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let st = local
            .entry(stream_key.to_owned())
            .or_insert_with(|| LocalStream {
                config,
                last_ms: self.clock.now_ms(),
            });
        st.config = config;
        Ok(())
    }
}
