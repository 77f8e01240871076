//! Reliable Redis queues: `BLMOVE` into a per-instance processing list, leases, the reaper and
//! the dead-letter queues.
//!
//! Key layout (with the configurable prefix `P`, empty by default; see
//! `docs/protocols/metering.md`):
//! - `P queue:<name>` — producers `LPUSH`, we take from the right (the head).
//! - `P metering:processing:<name>:<instance>` — items this process start holds.
//! - `P metering:lease:<instance>` — exists while the instance is alive (`PX` lease).
//! - `P metering:instances` — set of instance ids that may own processing lists.
//! - `P metering:deliveries:<name>` — hash `sha1(raw)` → unacknowledged deliveries (reaper).
//! - `P metering:dlq:<name>` — dead-letter entries (JSON), never expire.
//!
//! Every multi-key change is one Lua script, so a crash between steps cannot lose or double an
//! item.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script};
use serde::{Deserialize, Serialize};

use crate::error::{MeteringError, Result};
use crate::message::QueueKind;

/// Key names for one deployment (prefix) and one instance.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
    instance: String,
}

impl KeyLayout {
    /// Keys under `prefix` (may be empty) for `instance`.
    pub fn new(prefix: &str, instance: &str) -> Self {
        KeyLayout {
            prefix: prefix.to_owned(),
            instance: instance.to_owned(),
        }
    }
    /// The instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }
    /// `queue:<name>`.
    pub fn queue(&self, q: QueueKind) -> String {
        format!("{}queue:{}", self.prefix, q.name())
    }
    /// Processing list of `instance` for `q`.
    pub fn processing_of(&self, q: QueueKind, instance: &str) -> String {
        format!(
            "{}metering:processing:{}:{}",
            self.prefix,
            q.name(),
            instance
        )
    }
    /// This instance's processing list for `q`.
    pub fn processing(&self, q: QueueKind) -> String {
        self.processing_of(q, &self.instance)
    }
    /// Lease key of `instance`.
    pub fn lease_of(&self, instance: &str) -> String {
        format!("{}metering:lease:{}", self.prefix, instance)
    }
    /// Set of known instances.
    pub fn instances(&self) -> String {
        format!("{}metering:instances", self.prefix)
    }
    /// Delivery counters for `q`.
    pub fn deliveries(&self, q: QueueKind) -> String {
        format!("{}metering:deliveries:{}", self.prefix, q.name())
    }
    /// Dead-letter list for `q`.
    pub fn dlq(&self, q: QueueKind) -> String {
        format!("{}metering:dlq:{}", self.prefix, q.name())
    }
    /// Sorted set of executed command ids (score = unix seconds).
    pub fn executed_commands(&self) -> String {
        format!("{}metering:commands:executed", self.prefix)
    }
}

/// One dead-letter entry as stored (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlqEntry {
    /// Entry id (used to retry or purge one entry).
    pub id: String,
    /// Short queue name.
    pub queue: String,
    /// The original queued bytes, unchanged (lossy UTF-8 only if they were not UTF-8).
    pub payload: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Deliveries / attempt cycles spent on it.
    pub attempts: u32,
    /// When this agent first took it (RFC 3339), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<String>,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// HTTP status of the control plane's refusal, if that was the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// Body of the control plane's refusal (truncated), if that was the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// Outcome of reaping one dead instance's processing list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Items returned to the head of their queue.
    pub returned: u64,
    /// Items dead-lettered for too many deliveries.
    pub dead_lettered: u64,
}

const FETCH: &str = r#"
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[#out + 1] = v
end
return out
"#;

// KEYS: processing, deliveries. ARGV[1]: a tombstone unique to this call; ARGV[2..]: the items,
// oldest first (the order `fetch` returned them). A fetch pushes its items to the left in one
// script, so the items of one fetch that are still held sit side by side, newest leftmost: when
// they are exactly that run, it is found with one `LPOS` and cut out with `LTRIM` (run at an
// end) or tombstones and one `LREM` — O(list) once instead of one `LREM` scan per item. Anything
// else (a partial run, duplicates elsewhere in the list) falls back to one `LREM` per item.
const ACK: &str = r#"
local k = #ARGV - 1
local n = 0
local idx = redis.call('LPOS', KEYS[1], ARGV[#ARGV])
if idx then
  local got = redis.call('LRANGE', KEYS[1], idx, idx + k - 1)
  local same = #got == k
  if same then
    for j = 1, k do
      if got[j] ~= ARGV[#ARGV - j + 1] then same = false; break end
    end
  end
  if same then
    local len = redis.call('LLEN', KEYS[1])
    if idx == 0 then
      redis.call('LTRIM', KEYS[1], k, -1)
    elseif idx + k == len then
      redis.call('LTRIM', KEYS[1], 0, idx - 1)
    else
      for j = 0, k - 1 do redis.call('LSET', KEYS[1], idx + j, ARGV[1]) end
      redis.call('LREM', KEYS[1], 0, ARGV[1])
    end
    n = k
  end
end
if n == 0 then
  for i = 2, #ARGV do n = n + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  for i = 2, #ARGV do redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[i])) end
end
return n
"#;

const DEAD_LETTER: &str = r#"
local removed = redis.call('LREM', KEYS[1], -1, ARGV[1])
if removed == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], redis.sha1hex(ARGV[1]))
end
return removed
"#;

// Items are given oldest first; push the newest first so the oldest ends at the head.
const GIVE_BACK: &str = r#"
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"#;

// KEYS: lease, processing, queue, dlq, deliveries. ARGV: max deliveries, now, queue name.
const REAP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0} end
local returned, dead = 0, 0
while true do
  local v = redis.call('LPOP', KEYS[2])
  if not v then break end
  local h = redis.sha1hex(v)
  local n = redis.call('HINCRBY', KEYS[5], h, 1)
  if n >= tonumber(ARGV[1]) then
    local entry = cjson.encode({id = redis.sha1hex(v .. ARGV[2] .. n), queue = ARGV[3],
      payload = v, reason = 'delivered ' .. n .. ' times without being acknowledged',
      attempts = n, dead_lettered_at = ARGV[2]})
    redis.call('LPUSH', KEYS[4], entry)
    redis.call('HDEL', KEYS[5], h)
    dead = dead + 1
  else
    redis.call('RPUSH', KEYS[3], v)
    returned = returned + 1
  end
end
return {returned, dead}
"#;

// KEYS: dlq, queue, deliveries. ARGV: id or '' for all. Moves payloads back to the head.
const DLQ_RETRY: &str = r#"
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local n = 0
for i = #entries, 1, -1 do
  local ok, e = pcall(cjson.decode, entries[i])
  if ok and type(e) == 'table' and type(e.payload) == 'string'
     and (ARGV[1] == '' or e.id == ARGV[1]) then
    redis.call('LREM', KEYS[1], 1, entries[i])
    redis.call('HDEL', KEYS[3], redis.sha1hex(e.payload))
    redis.call('RPUSH', KEYS[2], e.payload)
    n = n + 1
  end
end
return n
"#;

// KEYS: dlq. ARGV: id or '' for all.
const DLQ_PURGE: &str = r#"
if ARGV[1] == '' then
  local n = redis.call('LLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
  return n
end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local n = 0
for i = 1, #entries do
  local ok, e = pcall(cjson.decode, entries[i])
  if ok and type(e) == 'table' and e.id == ARGV[1] then
    n = n + redis.call('LREM', KEYS[1], 1, entries[i])
  end
end
return n
"#;

// Scripts hash once; `invoke_async` uses EVALSHA and falls back to EVAL (e.g. after a restart).
static FETCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FETCH));
static ACK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACK));
static DEAD_LETTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DEAD_LETTER));
static GIVE_BACK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GIVE_BACK));
static REAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REAP));
static DLQ_RETRY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DLQ_RETRY));
static DLQ_PURGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DLQ_PURGE));

/// Redis side of the metering queues. Cheap to clone (connections are shared handles).
#[derive(Clone)]
pub struct QueueStore {
    client: Client,
    conn: ConnectionManager,
    keys: KeyLayout,
    retry_on_timeout: bool,
}

impl std::fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Shorthand for mapping a redis error with an action description.
fn ctx<T>(action: &str, r: redis::RedisResult<T>) -> Result<T> {
    r.map_err(|e| MeteringError::redis(action, e))
}

impl QueueStore {
    /// Connect lazily (the process starts even while Redis is down) with command response
    /// timeout `op_timeout` for non-blocking commands.
    pub fn new(client: Client, keys: KeyLayout, op_timeout: Duration) -> Result<Self> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(op_timeout))
            .set_connection_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ctx(
            "create connection manager",
            ConnectionManager::new_lazy_with_config(client.clone(), cfg),
        )?;
        Ok(QueueStore {
            client,
            conn,
            keys,
            retry_on_timeout: false,
        })
    }

    /// Retry a non-blocking command once at once when it timed out, before reporting the
    /// failure (`redis.retry_on_timeout`). Every command the store sends is safe to repeat:
    /// scripts that may have run before the reply was lost leave items in the processing list,
    /// where the orphan sweep finds them.
    pub fn with_retry_on_timeout(mut self, on: bool) -> Self {
        self.retry_on_timeout = on;
        self
    }

    /// Runs `op` on a fresh handle of the shared connection; once more after a timeout when
    /// [`Self::with_retry_on_timeout`] is on.
    async fn run<T, F, Fut>(&self, action: &str, op: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match op(self.conn.clone()).await {
            Err(e) if self.retry_on_timeout && e.is_timeout() => {
                tracing::debug!(action, "redis command timed out; retrying once");
                ctx(action, op(self.conn.clone()).await)
            }
            r => ctx(action, r),
        }
    }

    /// The key layout.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// A shared connection for non-blocking commands (reconnects by itself; a failed command
    /// is returned to the caller, who decides whether to retry).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A dedicated connection for blocking commands: its response timeout is `block + 5 s`, so
    /// the client never gives up before the server-side block ends.
    pub async fn blocking_connection(&self, block: Duration) -> Result<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(block + Duration::from_secs(5)));
        ctx(
            "open blocking connection",
            self.client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await,
        )
    }

    /// Take up to `max` items without blocking (one atomic script).
    pub async fn fetch(&self, q: QueueKind, max: usize) -> Result<Vec<Vec<u8>>> {
        let mut s = FETCH_SCRIPT.prepare_invoke();
        s.key(self.keys.queue(q))
            .key(self.keys.processing(q))
            .arg(max.max(1));
        let s = &s;
        self.run("fetch from queue", |mut c| async move {
            s.invoke_async(&mut c).await
        })
        .await
    }

    /// Block up to `block` for one item on `conn` (a [`Self::blocking_connection`]).
    pub async fn fetch_blocking(
        &self,
        conn: &mut MultiplexedConnection,
        q: QueueKind,
        block: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let r = redis::cmd("BLMOVE")
            .arg(self.keys.queue(q))
            .arg(self.keys.processing(q))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block.as_secs_f64())
            .query_async(conn)
            .await;
        ctx("BLMOVE", r)
    }

    /// Remove delivered items from the processing list (and their delivery counters). Give
    /// them oldest first, as [`Self::fetch`] returned them: the still-held items of one fetch
    /// are removed in one pass over the list; any other set costs one `LREM` scan per item.
    pub async fn ack(&self, q: QueueKind, items: &[&[u8]]) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut s = ACK_SCRIPT.prepare_invoke();
        s.key(self.keys.processing(q)).key(self.keys.deliveries(q));
        // Producers cannot guess it, so the final `LREM` removes only our tombstones.
        s.arg(format!("\0tether-acked:{}", uuid::Uuid::new_v4()));
        for i in items {
            s.arg(*i);
        }
        let s = &s;
        self.run("ack", |mut c| async move { s.invoke_async(&mut c).await })
            .await
    }

    /// Move one held item to the DLQ. Returns false when it was no longer ours.
    pub async fn dead_letter(&self, q: QueueKind, raw: &[u8], entry: &DlqEntry) -> Result<bool> {
        let json = serde_json::to_string(entry).map_err(|e| MeteringError::Decode {
            what: "dlq entry".into(),
            reason: e.to_string(),
        })?;
        let mut c = self.conn.clone();
        let n: i64 = ctx(
            "dead-letter",
            DEAD_LETTER_SCRIPT
                .key(self.keys.processing(q))
                .key(self.keys.dlq(q))
                .key(self.keys.deliveries(q))
                .arg(raw)
                .arg(json)
                .invoke_async(&mut c)
                .await,
        )?;
        Ok(n == 1)
    }

    /// Return held items to the head of their queue (graceful shutdown).
    pub async fn give_back(&self, q: QueueKind, items: &[&[u8]]) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut s = GIVE_BACK_SCRIPT.prepare_invoke();
        s.key(self.keys.processing(q)).key(self.keys.queue(q));
        for i in items {
            s.arg(*i);
        }
        let s = &s;
        self.run(
            "give back",
            |mut c| async move { s.invoke_async(&mut c).await },
        )
        .await
    }

    /// Create or refresh this instance's lease and registration.
    pub async fn refresh_lease(&self, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.lease_of(self.keys.instance()))
            .arg(chrono::Utc::now().to_rfc3339())
            .arg("PX")
            .arg(ms)
            .ignore()
            .cmd("SADD")
            .arg(self.keys.instances())
            .arg(self.keys.instance())
            .ignore();
        let pipe = &pipe;
        self.run("refresh lease", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Drop this instance's lease and registration (graceful stop, after giving items back).
    pub async fn release_lease(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("DEL")
            .arg(self.keys.lease_of(self.keys.instance()))
            .ignore()
            .cmd("SREM")
            .arg(self.keys.instances())
            .arg(self.keys.instance())
            .ignore()
            .query_async(&mut c)
            .await;
        ctx("release lease", r)
    }

    /// Return the items of every instance whose lease has expired; dead-letter items delivered
    /// `max_deliveries` times.
    pub async fn reap(&self, max_deliveries: u32) -> Result<Reaped> {
        let mut c = self.conn.clone();
        let members: Vec<String> = ctx(
            "list instances",
            redis::cmd("SMEMBERS")
                .arg(self.keys.instances())
                .query_async(&mut c)
                .await,
        )?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut total = Reaped::default();
        for inst in members
            .iter()
            .filter(|i| i.as_str() != self.keys.instance())
        {
            let mut alive = false;
            for q in QueueKind::ALL {
                let (ret, dead): (i64, i64) = ctx(
                    "reap",
                    REAP_SCRIPT
                        .key(self.keys.lease_of(inst))
                        .key(self.keys.processing_of(q, inst))
                        .key(self.keys.queue(q))
                        .key(self.keys.dlq(q))
                        .key(self.keys.deliveries(q))
                        .arg(max_deliveries.max(1))
                        .arg(&now)
                        .arg(q.name())
                        .invoke_async(&mut c)
                        .await,
                )?;
                if ret < 0 {
                    alive = true;
                    break;
                }
                total.returned += ret.unsigned_abs();
                total.dead_lettered += dead.unsigned_abs();
            }
            if !alive {
                let r: redis::RedisResult<()> = redis::cmd("SREM")
                    .arg(self.keys.instances())
                    .arg(inst)
                    .query_async(&mut c)
                    .await;
                ctx("forget instance", r)?;
                if total.returned + total.dead_lettered > 0 {
                    tracing::warn!(instance = %inst, returned = total.returned,
                        dead_lettered = total.dead_lettered, "reaped items of a dead instance");
                }
            }
        }
        Ok(total)
    }

    /// Lengths of the queue, this instance's processing list and the DLQ of `q`.
    pub async fn depths(&self, q: QueueKind) -> Result<(u64, u64, u64)> {
        let mut c = self.conn.clone();
        let r = redis::pipe()
            .cmd("LLEN")
            .arg(self.keys.queue(q))
            .cmd("LLEN")
            .arg(self.keys.processing(q))
            .cmd("LLEN")
            .arg(self.keys.dlq(q))
            .query_async(&mut c)
            .await;
        ctx("queue depths", r)
    }

    /// Up to `limit` DLQ entries of `q`, newest first.
    pub async fn dlq_list(&self, q: QueueKind, limit: usize) -> Result<Vec<DlqEntry>> {
        let mut c = self.conn.clone();
        let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
        let raw: Vec<Vec<u8>> = ctx(
            "dlq list",
            redis::cmd("LRANGE")
                .arg(self.keys.dlq(q))
                .arg(0)
                .arg(stop)
                .query_async(&mut c)
                .await,
        )?;
        raw.iter()
            .map(|r| {
                serde_json::from_str(&String::from_utf8_lossy(r)).map_err(|e| {
                    MeteringError::Decode {
                        what: "dlq entry".into(),
                        reason: e.to_string(),
                    }
                })
            })
            .collect()
    }

    /// Move one entry (`Some(id)`) or all entries of `q`'s DLQ back to the queue head, atomically.
    pub async fn dlq_retry(&self, q: QueueKind, id: Option<&str>) -> Result<u64> {
        let keys = [
            self.keys.dlq(q),
            self.keys.queue(q),
            self.keys.deliveries(q),
        ];
        self.dlq_script("dlq retry", &DLQ_RETRY_SCRIPT, &keys, id)
            .await
    }

    /// Delete one entry (`Some(id)`) or all entries of `q`'s DLQ.
    pub async fn dlq_purge(&self, q: QueueKind, id: Option<&str>) -> Result<u64> {
        self.dlq_script("dlq purge", &DLQ_PURGE_SCRIPT, &[self.keys.dlq(q)], id)
            .await
    }

    /// Runs a DLQ script over `keys` on one entry (`Some(id)`; the script's argument) or on
    /// all (`""`); returns how many entries it handled.
    async fn dlq_script(
        &self,
        action: &str,
        script: &Script,
        keys: &[String],
        id: Option<&str>,
    ) -> Result<u64> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(id.unwrap_or(""));
        let mut c = self.conn.clone();
        ctx(action, invocation.invoke_async(&mut c).await)
    }

    /// Warnings about Redis settings that can lose queued data (eviction, no persistence).
    pub async fn durability_warnings(&self) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        let mut out = Vec::new();
        let policy: Vec<String> = ctx(
            "CONFIG GET maxmemory-policy",
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut c)
                .await,
        )?;
        if let Some(p) = policy.get(1)
            && p != "noeviction"
        {
            out.push(format!(
                "maxmemory-policy is {p}: Redis may evict queued items; use noeviction"
            ));
        }
        let aof: Vec<String> = ctx(
            "CONFIG GET appendonly",
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendonly")
                .query_async(&mut c)
                .await,
        )?;
        let save: Vec<String> = ctx(
            "CONFIG GET save",
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("save")
                .query_async(&mut c)
                .await,
        )?;
        let aof_on = aof.get(1).is_some_and(|v| v == "yes");
        let rdb_on = save.get(1).is_some_and(|v| !v.trim().is_empty());
        if !aof_on && !rdb_on {
            out.push(
                "Redis persistence is off (no AOF, no RDB): a Redis restart loses queued items"
                    .into(),
            );
        } else if !aof_on {
            out.push(
                "Redis AOF is off: a Redis crash loses items queued since the last RDB snapshot"
                    .into(),
            );
        }
        Ok(out)
    }

    /// Commands executed in the last 24 h: is `id` among them? (Also expires old ids.)
    pub async fn command_executed(&self, id: &str, now_unix: i64) -> Result<bool> {
        let mut c = self.conn.clone();
        let key = self.keys.executed_commands();
        let (score,): (Option<f64>,) = ctx(
            "check executed command",
            redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_unix - 86_400)
                .ignore()
                .cmd("ZSCORE")
                .arg(&key)
                .arg(id)
                .query_async(&mut c)
                .await,
        )?;
        Ok(score.is_some())
    }

    /// Record `id` as executed (kept 24 h).
    pub async fn mark_command_executed(&self, id: &str, now_unix: i64) -> Result<()> {
        let mut c = self.conn.clone();
        let key = self.keys.executed_commands();
        let r: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(now_unix)
            .arg(id)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(86_400)
            .ignore()
            .query_async(&mut c)
            .await;
        ctx("mark command executed", r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Needs Redis (`REDIS_URL`); fails when it is missing.
    #[tokio::test]
    async fn ack_removes_a_run_at_either_end_or_in_the_middle_and_falls_back_otherwise() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = Client::open(url).expect("REDIS_URL parses");
        let prefix = format!("test:{}:", uuid::Uuid::new_v4());
        let store = QueueStore::new(
            client.clone(),
            KeyLayout::new(&prefix, "inst"),
            Duration::from_secs(5),
        )
        .expect("store");
        let q = QueueKind::UsageRecords;
        let mut c = store.conn();
        let held = |c: &mut ConnectionManager| {
            let key = store.keys().processing(q);
            let mut c = c.clone();
            async move {
                let v: Vec<String> = redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
                    .expect("lrange");
                v
            }
        };
        for v in ["a", "b", "c", "d", "e", "f"] {
            let _: i64 = redis::cmd("LPUSH")
                .arg(store.keys().queue(q))
                .arg(v)
                .query_async(&mut c)
                .await
                .expect("lpush");
        }
        let first = store.fetch(q, 2).await.expect("fetch");
        let middle = store.fetch(q, 2).await.expect("fetch");
        let last = store.fetch(q, 2).await.expect("fetch");
        assert_eq!(held(&mut c).await, ["f", "e", "d", "c", "b", "a"]);
        // A run in the middle: tombstones and one LREM.
        assert_eq!(
            store
                .ack(q, &[middle[0].as_slice(), middle[1].as_slice()])
                .await
                .expect("ack"),
            2
        );
        assert_eq!(held(&mut c).await, ["f", "e", "b", "a"]);
        // Not one fetch's run: one LREM per item.
        assert_eq!(
            store
                .ack(q, &[first[0].as_slice(), last[0].as_slice()])
                .await
                .expect("ack"),
            2
        );
        assert_eq!(held(&mut c).await, ["f", "b"]);
        // A run at the right end, then at the left end: LTRIM.
        assert_eq!(store.ack(q, &[first[1].as_slice()]).await.expect("ack"), 1);
        assert_eq!(held(&mut c).await, ["f"]);
        assert_eq!(store.ack(q, &[last[1].as_slice()]).await.expect("ack"), 1);
        assert!(held(&mut c).await.is_empty());
        // Nothing held: nothing removed.
        assert_eq!(store.ack(q, &[last[1].as_slice()]).await.expect("ack"), 0);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .expect("keys");
        for k in keys {
            let _: i64 = redis::cmd("DEL")
                .arg(k)
                .query_async(&mut c)
                .await
                .expect("del");
        }
    }
}
