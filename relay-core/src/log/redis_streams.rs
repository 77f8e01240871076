//! Redis Streams stream log: for deployments that scale out over several servers.
//!
//! Layout (details and the scripts' contract in `docs/storage.md`):
//! * `{prefix}{stream}` — a Redis stream; entry ID `{seq}-0`, fields `seq`, `ts`, `data`.
//!   Using the seq as the ID lets a read seek to any seq with `XRANGE`, and makes Redis itself
//!   refuse an ID at or below the top (IDs only grow, even after trimming to empty).
//! * `{prefix}{stream}#meta` — a hash: `head` (highest accepted seq), `tt` (trimmed through),
//!   `tr` (reason of the last trim).
//! * `{prefix}{stream}#cursors` — a hash: consumer → seq.
//!
//! An append is one `MULTI`/`EXEC`: an `XADD` with the explicit ID `{seq}-0` per item, then a
//! short script that raises `head`. The explicit ID *is* the dedup check: Redis refuses an ID
//! at or below the stream's top ("equal or smaller than the target stream top item"), atomically
//! with the insert, so a retransmitted item is answered with that error and counted as a
//! duplicate, and the transaction keeps a concurrent trim or read from landing in the middle.
//! (Doing the same check in a Lua loop around `XADD` cost about twice as much per item.) A trim
//! and its bookkeeping are one Lua script; a read is a `MULTI`/`EXEC` of `HMGET` and `XRANGE`. Seqs and timestamps
//! stay below 2^53 so Lua's double-precision numbers hold them exactly; numbers are turned back
//! into strings with `string.format('%d')`, never `tostring` (which rounds to 14 digits).
//!
//! Gaps are computed from our seqs and the `tt` watermark, never from Redis: `XRANGE` from a
//! trimmed ID silently starts at the next survivor.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{
    AppendOutcome, Backlog, Item, MAX_SEQ, ReadBatch, Retention, Seq, StreamLog, StreamMeta,
    TrimReason, Trimmed, dense_prefix, validate_batch, validate_stream_name,
};
use crate::error::{Error, Result};

/// Raises the head watermark to ARGV[1] if it is higher. KEYS: meta. Returns the head.
/// Runs inside the append's `MULTI`, after the batch's `XADD`s.
const RAISE_HEAD_LUA: &str = r"
local head = tonumber(redis.call('HGET', KEYS[1], 'head') or '0')
local top = tonumber(ARGV[1])
if top > head then
  redis.call('HSET', KEYS[1], 'head', ARGV[1])
  return top
end
return head
";

/// Age then length retention. KEYS: stream, meta. ARGV: age cutoff ms or '', max_len or ''.
/// Returns a list of `{reason, count, first, last}`.
const TRIM_LUA: &str = r"
local stream, meta = KEYS[1], KEYS[2]
local head = redis.call('HGET', meta, 'head')
local out = {}
if not head then return out end
local function seq_of(id) return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1)) end
local function oldest() local r = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1); return r[1] end
local function finish(reason, first, count)
  local surv = oldest()
  local last
  if surv then last = seq_of(surv[1]) - 1 else last = tonumber(head) end
  redis.call('HSET', meta, 'tt', string.format('%d', last), 'tr', reason)
  table.insert(out, {reason, count, first, last})
end
if ARGV[1] ~= '' then
  local cutoff = tonumber(ARGV[1])
  local first, survivor = nil, nil
  local start = '-'
  while true do
    local chunk = redis.call('XRANGE', stream, start, '+', 'COUNT', 256)
    for _, e in ipairs(chunk) do
      local f, ts = e[2], nil
      for i = 1, #f, 2 do if f[i] == 'ts' then ts = tonumber(f[i + 1]) end end
      if ts == nil or ts >= cutoff then survivor = e[1]; break end
      if not first then first = seq_of(e[1]) end
    end
    if survivor or #chunk < 256 then break end
    start = '(' .. chunk[#chunk][1]
  end
  if first then
    local n
    if survivor then n = redis.call('XTRIM', stream, 'MINID', survivor)
    else n = redis.call('XTRIM', stream, 'MAXLEN', 0) end
    finish('age', first, n)
  end
end
if ARGV[2] ~= '' then
  local max = tonumber(ARGV[2])
  if redis.call('XLEN', stream) > max then
    local first = seq_of(oldest()[1])
    local n = redis.call('XTRIM', stream, 'MAXLEN', max)
    finish('length', first, n)
  end
end
return out
";

/// Backlog after a cursor. KEYS: stream, meta. ARGV: after + 1 (start ID).
/// Returns `{count, oldest_seq, newest_seq, oldest_ts, head}` (false where absent).
const BACKLOG_LUA: &str = r"
local stream = KEYS[1]
local head = redis.call('HGET', KEYS[2], 'head') or '0'
local first = redis.call('XRANGE', stream, ARGV[1], '+', 'COUNT', 1)[1]
if not first then return {0, false, false, false, head} end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
local function seq_of(id) return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1)) end
local f, ts = first[2], false
for i = 1, #f, 2 do if f[i] == 'ts' then ts = f[i + 1] end end
local lo, hi = seq_of(first[1]), seq_of(last[1])
local all_lo = seq_of(redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1])
local count
if redis.call('XLEN', stream) == hi - all_lo + 1 then
  -- No producer holes anywhere: the count follows from the seqs.
  count = hi - lo + 1
else
  count = 0
  local start = ARGV[1]
  while true do
    local chunk = redis.call('XRANGE', stream, start, '+', 'COUNT', 1024)
    count = count + #chunk
    if #chunk < 1024 then break end
    start = '(' .. chunk[#chunk][1]
  end
end
return {count, first[1], last[1], ts, head}
";

/// A [`StreamLog`] on Redis Streams. Cloning shares the connection.
///
/// Uses one multiplexed [`ConnectionManager`] (reconnects after errors; a failed call returns
/// its error, marked retryable, and is not repeated here). This backend offers no blocking
/// read, so no connection ever waits on a `BLOCK`.
#[derive(Clone)]
pub struct RedisStreamLog {
    conn: ConnectionManager,
    prefix: String,
    trim: Script,
    backlog: Script,
}

impl std::fmt::Debug for RedisStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamLog")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_err(action: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |source| Error::Redis { action, source }
}

impl RedisStreamLog {
    /// Connects to `url` (`redis://host:port/db`); every key this log touches starts with
    /// `key_prefix`.
    ///
    /// The response timeout is raised from the redis crate's 500 ms default to 30 s: a trim of a
    /// large backlog is one script that may legitimately run longer than 500 ms.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(redis_err("connect"))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(redis_err("connect"))?;
        Ok(Self {
            conn,
            prefix: key_prefix.to_owned(),
            trim: Script::new(TRIM_LUA),
            backlog: Script::new(BACKLOG_LUA),
        })
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of `stream`'s entries.
    pub fn stream_key(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }

    fn keys(&self, stream: &str) -> [String; 2] {
        let k = self.stream_key(stream);
        let meta = format!("{k}#meta");
        [k, meta]
    }

    /// Deletes every key of `stream` (entries, meta, cursors): [`StreamLog::delete`].
    pub async fn delete_stream(&self, stream: &str) -> Result<()> {
        self.delete(stream).await.map(drop)
    }
}

/// Whether an `XADD` error is Redis refusing an ID at or below the stream's top: our dedup.
fn is_duplicate_id(e: &redis::ServerError) -> bool {
    e.details()
        .is_some_and(|d| d.contains("equal or smaller than the target stream top item"))
}

/// Converts a bulk string or integer reply to `u64`.
fn num(stream: &str, v: &Value, what: &str) -> Result<u64> {
    let parsed = match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| corrupt(stream, format!("{what} is not a number: {v:?}")))
}

fn opt_num(stream: &str, v: &Value, what: &str) -> Result<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        v => num(stream, v, what).map(Some),
    }
}

fn corrupt(stream: &str, detail: String) -> Error {
    Error::Corrupt {
        stream: stream.to_owned(),
        detail,
    }
}

/// The seq encoded in an entry ID `{seq}-0`.
fn id_seq(stream: &str, id: &Value) -> Result<Seq> {
    let s = match id {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s.as_str()),
        _ => None,
    };
    s.and_then(|s| s.split_once('-'))
        .and_then(|(ms, _)| ms.parse().ok())
        .ok_or_else(|| corrupt(stream, format!("bad entry ID {id:?}")))
}

/// Parses one `XRANGE` entry `[id, [field, value, ...]]`.
fn parse_entry(stream: &str, entry: &Value) -> Result<Item> {
    let Value::Array(parts) = entry else {
        return Err(corrupt(stream, format!("bad entry {entry:?}")));
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return Err(corrupt(stream, format!("bad entry {entry:?}")));
    };
    let seq = id_seq(stream, id)?;
    // A missing or damaged `ts` or `data` does not fail the read (that would stall the
    // stream): it comes out as 0 / empty, and the caller's decoder refuses the item.
    let (mut ts_ms, mut payload) = (0, Bytes::new());
    for pair in fields.chunks_exact(2) {
        if let Value::BulkString(name) = &pair[0] {
            match name.as_slice() {
                b"ts" => ts_ms = num(stream, &pair[1], "ts").unwrap_or(0),
                b"data" => {
                    if let Value::BulkString(b) = &pair[1] {
                        payload = Bytes::copy_from_slice(b);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Item {
        seq,
        ts_ms,
        payload,
    })
}

fn array(stream: &str, v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(stream, format!("expected an array, got {other:?}"))),
    }
}

fn meta_from(stream: &str, head: &Value, tt: &Value, tr: &Value) -> Result<StreamMeta> {
    let trim_reason = match tr {
        Value::Nil => None,
        Value::BulkString(b) => Some(
            std::str::from_utf8(b)
                .ok()
                .and_then(TrimReason::parse)
                .ok_or_else(|| corrupt(stream, format!("bad trim reason {tr:?}")))?,
        ),
        other => return Err(corrupt(stream, format!("bad trim reason {other:?}"))),
    };
    Ok(StreamMeta {
        head: opt_num(stream, head, "head")?.unwrap_or(0),
        trimmed_through: opt_num(stream, tt, "tt")?.unwrap_or(0),
        trim_reason,
    })
}

impl StreamLog for RedisStreamLog {
    async fn append(&self, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
        validate_stream_name(stream)?;
        validate_batch(stream, items)?;
        let [k, meta] = self.keys(stream);
        let Some(last) = items.last() else {
            let mut conn = self.conn.clone();
            let head: Value = redis::cmd("HGET")
                .arg(&meta)
                .arg("head")
                .query_async(&mut conn)
                .await
                .map_err(redis_err("append"))?;
            return Ok(AppendOutcome {
                stored: 0,
                duplicates: 0,
                ack: opt_num(stream, &head, "head")?.unwrap_or(0),
            });
        };
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        for item in items {
            pipe.cmd("XADD")
                .arg(&k)
                .arg(item.seq)
                .arg("seq")
                .arg(item.seq)
                .arg("ts")
                .arg(item.ts_ms)
                .arg("data")
                .arg(&item.payload[..]);
        }
        // EVAL, not EVALSHA: inside MULTI a NOSCRIPT error could not be retried, and Redis
        // caches the compiled script by its hash anyway.
        pipe.cmd("EVAL")
            .arg(RAISE_HEAD_LUA)
            .arg(1)
            .arg(&meta)
            .arg(last.seq);
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(redis_err("append"))?;
        if replies.len() != items.len() + 1 {
            return Err(corrupt(
                stream,
                format!(
                    "append got {} replies for {} items",
                    replies.len(),
                    items.len()
                ),
            ));
        }
        let mut stored = 0u64;
        for reply in &replies[..items.len()] {
            match reply {
                Value::ServerError(e) if is_duplicate_id(e) => {}
                Value::ServerError(e) => {
                    return Err(Error::Redis {
                        action: "append",
                        source: redis::RedisError::from(e.clone()),
                    });
                }
                _ => stored += 1,
            }
        }
        let ack = num(stream, &replies[items.len()], "head")?;
        Ok(AppendOutcome {
            stored,
            duplicates: items.len() as u64 - stored,
            ack,
        })
    }

    async fn read(&self, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
        validate_stream_name(stream)?;
        if after >= MAX_SEQ {
            return Ok(ReadBatch::default());
        }
        let [k, meta] = self.keys(stream);
        let mut conn = self.conn.clone();
        // MULTI/EXEC keeps the watermark and the entries consistent with each other (a trim
        // cannot land between them) without copying every entry through Lua.
        let (fields, entries): (Vec<Value>, Value) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&meta)
            .arg(&["head", "tt", "tr"])
            .cmd("XRANGE")
            .arg(&k)
            .arg(format!("{}-0", after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(max.max(1))
            .query_async(&mut conn)
            .await
            .map_err(redis_err("read"))?;
        let [head, tt, tr] = <[Value; 3]>::try_from(fields)
            .map_err(|p| corrupt(stream, format!("HMGET returned {} fields", p.len())))?;
        let meta = meta_from(stream, &head, &tt, &tr)?;
        let mut items = array(stream, entries)?
            .iter()
            .map(|e| parse_entry(stream, e))
            .collect::<Result<Vec<_>>>()?;
        let next = items.first().map(|i| i.seq);
        let gap = meta.gap_after(after, next);
        match next {
            Some(start) if StreamMeta::items_follow(gap.as_ref(), next) => {
                items.truncate(max);
                dense_prefix(&mut items, start);
            }
            _ => items.clear(),
        }
        Ok(ReadBatch { gap, items })
    }

    async fn store_cursor(&self, stream: &str, consumer: &str, seq: Seq) -> Result<()> {
        validate_stream_name(stream)?;
        let key = format!("{}#cursors", self.stream_key(stream));
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(key)
            .arg(consumer)
            .arg(seq)
            .exec_async(&mut conn)
            .await
            .map_err(redis_err("store cursor"))
    }

    async fn load_cursor(&self, stream: &str, consumer: &str) -> Result<Option<Seq>> {
        validate_stream_name(stream)?;
        let key = format!("{}#cursors", self.stream_key(stream));
        let mut conn = self.conn.clone();
        let v: Value = redis::cmd("HGET")
            .arg(key)
            .arg(consumer)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("load cursor"))?;
        opt_num(stream, &v, "cursor")
    }

    async fn trim(&self, stream: &str, retention: &Retention, now_ms: u64) -> Result<Vec<Trimmed>> {
        validate_stream_name(stream)?;
        let [k, meta] = self.keys(stream);
        let cutoff = retention
            .max_age_ms
            .map(|age| now_ms.saturating_sub(age).min(MAX_SEQ + 1).to_string())
            .unwrap_or_default();
        let max_len = retention.max_len.map(|n| n.to_string()).unwrap_or_default();
        let mut conn = self.conn.clone();
        let reply: Value = self
            .trim
            .key(k)
            .key(meta)
            .arg(cutoff)
            .arg(max_len)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("trim"))?;
        let mut out = Vec::new();
        for t in array(stream, reply)? {
            let parts = array(stream, t)?;
            let [reason, count, first, last] = <[Value; 4]>::try_from(parts)
                .map_err(|p| corrupt(stream, format!("trim record has {} parts", p.len())))?;
            let reason = match &reason {
                Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(TrimReason::parse),
                _ => None,
            }
            .ok_or_else(|| corrupt(stream, format!("bad trim reason {reason:?}")))?;
            out.push(Trimmed {
                count: num(stream, &count, "count")?,
                first: num(stream, &first, "first")?,
                last: num(stream, &last, "last")?,
                reason,
            });
        }
        Ok(out)
    }

    async fn delete(&self, stream: &str) -> Result<u64> {
        validate_stream_name(stream)?;
        let [k, meta] = self.keys(stream);
        let cursors = format!("{k}#cursors");
        let mut conn = self.conn.clone();
        // One MULTI: the length that is reported is the length that is deleted.
        let (len, _deleted): (u64, u64) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&k)
            .cmd("DEL")
            .arg(&k)
            .arg(&meta)
            .arg(&cursors)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("delete stream"))?;
        Ok(len)
    }

    async fn backlog(&self, stream: &str, after: Seq) -> Result<Backlog> {
        validate_stream_name(stream)?;
        let [k, meta] = self.keys(stream);
        let mut conn = self.conn.clone();
        let start = after.saturating_add(1).min(MAX_SEQ + 1);
        let reply: Value = self
            .backlog
            .key(k)
            .key(meta)
            .arg(format!("{start}-0"))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("backlog"))?;
        let parts = array(stream, reply)?;
        let [count, oldest, newest, ts, head] = <[Value; 5]>::try_from(parts)
            .map_err(|p| corrupt(stream, format!("backlog reply has {} parts", p.len())))?;
        let opt_seq = |v: &Value| match v {
            Value::Nil => Ok(None),
            v => id_seq(stream, v).map(Some),
        };
        Ok(Backlog {
            count: num(stream, &count, "count")?,
            oldest_seq: opt_seq(&oldest)?,
            newest_seq: opt_seq(&newest)?,
            oldest_ts_ms: opt_num(stream, &ts, "ts")?,
            head: num(stream, &head, "head")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn damaged_entries_come_out_empty_instead_of_failing_the_read() {
        let entry = |fields: Vec<Value>| Value::Array(vec![bulk(b"7-0"), Value::Array(fields)]);
        let good = parse_entry(
            "s",
            &entry(vec![bulk(b"ts"), bulk(b"12"), bulk(b"data"), bulk(b"ab")]),
        );
        assert_eq!(
            good.ok(),
            Some(Item {
                seq: 7,
                ts_ms: 12,
                payload: Bytes::from_static(b"ab")
            })
        );
        for (fields, ts) in [
            (vec![bulk(b"ts"), bulk(b"12")], 12),
            (
                vec![bulk(b"ts"), bulk(b"-1"), bulk(b"data"), Value::Int(3)],
                0,
            ),
            (vec![], 0),
        ] {
            let item = parse_entry("s", &entry(fields)).expect("an item");
            assert_eq!((item.seq, item.ts_ms, item.payload.len()), (7, ts, 0));
        }
        // Without a seq there is nothing to report: the read fails.
        assert!(parse_entry("s", &Value::Array(vec![bulk(b"x"), Value::Array(vec![])])).is_err());
    }
}
