//! Redis Streams stream log: for deployments that scale out over several servers.
//!
//! Layout (details and the scripts' contract in `docs/storage.md`):
//! * `{prefix}{stream}` — a Redis stream of *chunks*: one entry per append (split at
//!   [`sqlite_chunk::MAX_ITEMS`] items or [`sqlite_chunk::TARGET_BYTES`] bytes), entry ID
//!   `{last_seq}-0`, fields `first` (first seq), `n` (items) and `items` (the items, encoded as
//!   in [`sqlite_chunk`]). Using the last seq as the ID lets a read seek to the chunk holding
//!   any seq with `XRANGE`.
//! * `{prefix}{stream}#meta` — a hash: `head` (highest accepted seq), `tt` (trimmed through),
//!   `tr` (reason of the last trim), `len` (items stored).
//! * `{prefix}{stream}#cursors` — a hash: consumer → seq.
//! * `{prefix}#format` — the storage format version ([`FORMAT_VERSION`]), set by the first
//!   [`RedisStreamLog::connect`] on an empty prefix and checked by every later one. (Stream
//!   names are never empty and never hold `#`, so no stream's keys can be this one.)
//!
//! An append is one script call: the script refuses the chunks unless their first seq is above
//! `head` (returning the head, so that the caller drops the duplicates and tries again), then
//! adds them, raises `head` and `len`. A trim is computed here from the oldest chunks and
//! applied by a script that first checks that the oldest chunk and `tt` are still the ones the
//! computation saw (or it is computed again). Redis cannot rewrite the chunk a trim cuts
//! through, so that chunk stays and its items at or below `tt` are skipped by every reader.
//! A read is a `MULTI`/`EXEC` of `HMGET` and `XRANGE`. Seqs and timestamps stay below 2^53 so
//! Lua's double-precision numbers hold them exactly; numbers are turned back into strings with
//! `string.format('%d')`, never `tostring` (which rounds to 14 digits).
//!
//! Gaps are computed from our seqs and the `tt` watermark, never from Redis: `XRANGE` from a
//! trimmed ID silently starts at the next survivor.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::sqlite_chunk::{self, ChunkBounds, ChunkWriter};
use super::{
    AppendOutcome, Backlog, FORMAT_VERSION, Item, MAX_SEQ, ReadBatch, Retention, Seq, StreamLog,
    StreamMeta, TrimReason, Trimmed, validate_batch, validate_stream_name,
};
use crate::error::{Error, Result};

/// Adds chunks. KEYS: stream, meta. ARGV: the first chunk's first seq, then per chunk its ID
/// (last seq), first seq, item count and blob. Returns `{1, head}` when added, `{0, head}`
/// (nothing changed) when the first seq is not above `head`.
/// Numbers go back to Redis as `%d` strings (Redis 7.2.0–7.2.4 formatted some Lua numbers as
/// `1e+08`).
const APPEND_LUA: &str = r"
local head = redis.call('HGET', KEYS[2], 'head') or '0'
if tonumber(ARGV[1]) <= tonumber(head) then return {0, head} end
local n = 0
for i = 2, #ARGV, 4 do
  redis.call('XADD', KEYS[1], ARGV[i], 'first', ARGV[i + 1], 'n', ARGV[i + 2], 'items', ARGV[i + 3])
  n = n + tonumber(ARGV[i + 2])
end
local top = ARGV[#ARGV - 3]
redis.call('HINCRBY', KEYS[2], 'len', string.format('%d', n))
redis.call('HSET', KEYS[2], 'head', top)
return {1, top}
";

/// Applies a trim computed by [`RedisStreamLog::cut`]. KEYS: stream, meta. ARGV: the oldest
/// entry ID and the `tt` the computation saw, the first ID to keep, the new `tt`, the reason,
/// what to take off `len`. Returns 1, or 0 (nothing changed) when the oldest entry or `tt` changed.
const APPLY_TRIM_LUA: &str = r"
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local tt = redis.call('HGET', KEYS[2], 'tt') or '0'
if not oldest or oldest[1] ~= ARGV[1] or tt ~= ARGV[2] then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[3])
redis.call('HSET', KEYS[2], 'tt', ARGV[4], 'tr', ARGV[5])
redis.call('HINCRBY', KEYS[2], 'len', string.format('%d', -tonumber(ARGV[6])))
return 1
";

/// The first entry after a cursor, the newest entry's ID, and the item count of the entries
/// from the first on (`n` of each chunk, 1 where it is unreadable). KEYS: stream,
/// meta. ARGV: start ID. Returns `{count, first entry, newest ID, head, tt}` (false where
/// absent).
const BACKLOG_LUA: &str = r"
local stream = KEYS[1]
local head = redis.call('HGET', KEYS[2], 'head') or '0'
local tt = redis.call('HGET', KEYS[2], 'tt') or '0'
local first = redis.call('XRANGE', stream, ARGV[1], '+', 'COUNT', 1)[1]
if not first then return {0, false, false, head, tt} end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
local count = 0
local start = ARGV[1]
while true do
  local page = redis.call('XRANGE', stream, start, '+', 'COUNT', 1024)
  for _, e in ipairs(page) do
    local f, n = e[2], 1
    for i = 1, #f, 2 do if f[i] == 'n' then n = tonumber(f[i + 1]) or 1 end end
    count = count + n
  end
  if #page < 1024 then break end
  start = '(' .. page[#page][1]
end
return {count, first, last[1], head, tt}
";

/// Entries a read fetches first; each further page doubles, up to [`READ_PAGE_MAX`], until the
/// read has its items (a chunk holds 1 to 256 items).
const READ_PAGE_FIRST: usize = 16;
/// The largest page of entries a read fetches at once.
const READ_PAGE_MAX: usize = 256;
/// Entries a trim computation fetches per page.
const TRIM_PAGE: usize = 64;
/// Times an append or a trim is tried again when a concurrent writer changed what it saw.
const RETRIES: usize = 16;

/// A [`StreamLog`] on Redis Streams. Cloning shares the connection.
///
/// Uses one multiplexed [`ConnectionManager`] (reconnects after errors; a failed call returns
/// its error, marked retryable, and is not repeated here). This backend offers no blocking
/// read, so no connection ever waits on a `BLOCK`.
#[derive(Clone)]
pub struct RedisStreamLog {
    conn: ConnectionManager,
    prefix: String,
    append: Script,
    apply_trim: Script,
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
    /// `key_prefix`. The first connect on a prefix stamps it with [`FORMAT_VERSION`] (key
    /// `{prefix}#format`); a prefix stamped with another version is refused
    /// ([`Error::UnsupportedLogFormat`]).
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
        check_format(&mut conn.clone(), key_prefix).await?;
        Ok(Self {
            conn,
            prefix: key_prefix.to_owned(),
            append: Script::new(APPEND_LUA),
            apply_trim: Script::new(APPLY_TRIM_LUA),
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

/// Stamps `{prefix}#format` with [`FORMAT_VERSION`] unless it is set, then checks it (one
/// `MULTI`, so that concurrent first connects agree).
async fn check_format(conn: &mut ConnectionManager, prefix: &str) -> Result<()> {
    let key = format!("{prefix}#format");
    let (found,): (Option<String>,) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(&key)
        .arg(FORMAT_VERSION)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(redis_err("check the format version"))?;
    match found {
        Some(v) if v == FORMAT_VERSION.to_string() => Ok(()),
        found => Err(Error::UnsupportedLogFormat {
            location: format!("Redis key {key:?}"),
            found: found.unwrap_or_else(|| "none".to_owned()),
            expected: FORMAT_VERSION,
        }),
    }
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

/// The ID of an entry as Redis returned it (passed back to the trim script verbatim).
fn id_text(id: &Value) -> Option<String> {
    match id {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One stream entry: a chunk.
#[derive(Debug)]
struct Entry {
    /// The ID as Redis returned it.
    id: String,
    /// The seq in the ID: the last item's.
    last_seq: Seq,
    /// The `first` field; `None` when it is missing or not a number (the chunk is damaged).
    first: Option<Seq>,
    /// The `n` field; `None` when it is missing or not a number (the chunk is damaged).
    count: Option<u64>,
    /// The `items` field; empty when it is missing (the chunk then fails to decode).
    blob: Bytes,
}

impl Entry {
    /// Parses `[id, [field, value, ...]]`. Fails only when the ID carries no seq.
    fn parse(stream: &str, entry: &Value) -> Result<Self> {
        let Value::Array(parts) = entry else {
            return Err(corrupt(stream, format!("bad entry {entry:?}")));
        };
        let [id, Value::Array(fields)] = parts.as_slice() else {
            return Err(corrupt(stream, format!("bad entry {entry:?}")));
        };
        let last_seq = id_seq(stream, id)?;
        let id = id_text(id).ok_or_else(|| corrupt(stream, format!("bad entry ID {id:?}")))?;
        let field = |name: &[u8]| {
            fields
                .chunks_exact(2)
                .find(|pair| matches!(&pair[0], Value::BulkString(n) if n == name))
                .map(|pair| &pair[1])
        };
        let number = |name: &[u8]| field(name).and_then(|v| num(stream, v, "field").ok());
        Ok(Self {
            id,
            last_seq,
            first: number(b"first"),
            count: number(b"n"),
            blob: match field(b"items") {
                Some(Value::BulkString(b)) => Bytes::copy_from_slice(b),
                _ => Bytes::new(),
            },
        })
    }

    /// As [`Entry::parse`], taking the `items` blob out of `entry` instead of copying it.
    fn take(stream: &str, mut entry: Value) -> Result<Self> {
        let mut blob = None;
        if let Value::Array(parts) = &mut entry
            && let Some(Value::Array(fields)) = parts.get_mut(1)
        {
            let mut pairs = fields.chunks_exact_mut(2);
            if let Some(pair) =
                pairs.find(|pair| matches!(&pair[0], Value::BulkString(n) if n == b"items"))
                && let Value::BulkString(b) = &mut pair[1]
            {
                blob = Some(Bytes::from(std::mem::take(b)));
            }
        }
        let mut parsed = Self::parse(stream, &entry)?;
        if let Some(blob) = blob {
            parsed.blob = blob;
        }
        Ok(parsed)
    }

    /// Items in the entry, as the `n` field says (1 when it is unreadable, as the backlog
    /// script counts it).
    fn count(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// The entry's first seq, as far as it can tell.
    fn first_seq(&self) -> Seq {
        self.first.unwrap_or(self.last_seq)
    }

    /// The entry's items above `floor`, or `None` when the chunk is damaged.
    fn items_above(&self, stream: &str, floor: Seq) -> Option<Vec<Item>> {
        let (Some(first_seq), Some(count)) = (self.first, self.count) else {
            tracing::warn!(stream, entry = %self.id, "chunk without readable first/n fields in the Redis stream log");
            return None;
        };
        let bounds = ChunkBounds {
            first_seq,
            last_seq: self.last_seq,
            count,
        };
        sqlite_chunk::items_above(bounds, &self.blob, floor)
            .inspect_err(|err| {
                tracing::warn!(stream, entry = %self.id, %err, "damaged chunk in the Redis stream log");
            })
            .ok()
    }

    /// Placeholders for a damaged chunk's seqs above `floor` and up to `head`, as the SQLite
    /// log reads them: empty payloads, which the relay reports as a `corrupt` gap.
    fn damaged_above(&self, floor: Seq, head: Seq) -> std::ops::RangeInclusive<Seq> {
        sqlite_chunk::damaged_range(self.first_seq(), self.last_seq, floor, head)
    }

    /// The entry's items above `floor`, damaged ones as placeholders, at most `limit`.
    fn read_above(&self, stream: &str, floor: Seq, head: Seq, limit: usize) -> Vec<Item> {
        match self.items_above(stream, floor) {
            Some(mut items) => {
                items.truncate(limit);
                items
            }
            None => sqlite_chunk::placeholders(self.damaged_above(floor, head), limit).collect(),
        }
    }

    /// How many items a read yields from this entry above `floor`.
    fn live_above(&self, stream: &str, floor: Seq, head: Seq) -> u64 {
        match self.items_above(stream, floor) {
            Some(items) => items.len() as u64,
            None => {
                let r = self.damaged_above(floor, head);
                (r.end() + 1).saturating_sub(*r.start())
            }
        }
    }
}

/// Where a retention rule cuts a stream, computed from what one walk saw.
#[derive(Debug)]
struct Cut {
    /// The oldest entry's ID and the raw `tt` the walk saw: the trim script applies the cut
    /// only if they are unchanged.
    oldest_id: String,
    seen_tt: String,
    /// The first entry ID kept (`XTRIM MINID`).
    min_id: String,
    /// The new `tt`.
    last: Seq,
    first: Seq,
    /// Items removed, as readers saw them.
    count: u64,
    /// What to take off `len`: what the appends of the removed items added (differs from
    /// `count` only for damaged chunks).
    len_delta: u64,
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

/// The error of an append or trim that lost to concurrent writers [`RETRIES`] times in a row.
fn contended(action: &'static str) -> Error {
    Error::Redis {
        action,
        source: redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
            "concurrent writers kept changing the stream",
        )),
    }
}

/// Splits the items above `head` (each above the previous one kept) into chunks.
fn chunks_above(items: &[Item], head: Seq) -> Vec<(ChunkBounds, Vec<u8>)> {
    let mut out = Vec::new();
    let mut chunk = ChunkWriter::new();
    let mut top = head;
    for item in items.iter().filter(|i| i.seq > head) {
        if item.seq <= top {
            continue;
        }
        chunk.push(item);
        top = item.seq;
        if chunk.is_full() {
            out.push(chunk.take());
        }
    }
    if !chunk.is_empty() {
        out.push(chunk.take());
    }
    out
}

/// A retention rule, for [`RedisStreamLog::cut`].
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Remove the oldest items while `ts_ms` is below this.
    Age(u64),
    /// Keep the newest this many items.
    Length(u64),
}

impl RedisStreamLog {
    /// Up to `count` entries after the entry `id` (exclusive).
    async fn entries_after(
        &self,
        stream: &str,
        id: &str,
        count: usize,
        action: &'static str,
    ) -> Result<Vec<Value>> {
        let mut conn = self.conn.clone();
        let next: Value = redis::cmd("XRANGE")
            .arg(self.stream_key(stream))
            .arg(format!("({id}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(redis_err(action))?;
        array(stream, next)
    }

    /// Computes where `rule` cuts the stream, from its oldest entries on. `None` when it
    /// removes nothing.
    async fn cut(&self, stream: &str, rule: Rule) -> Result<Option<Cut>> {
        let [k, meta] = self.keys(stream);
        let mut conn = self.conn.clone();
        let (fields, entries): (Vec<Value>, Value) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&meta)
            .arg(&["head", "tt", "len"])
            .cmd("XRANGE")
            .arg(&k)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(TRIM_PAGE)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("trim"))?;
        let [head, tt, len] = <[Value; 3]>::try_from(fields)
            .map_err(|p| corrupt(stream, format!("HMGET returned {} fields", p.len())))?;
        let head = opt_num(stream, &head, "head")?.unwrap_or(0);
        let seen_tt = match &tt {
            Value::Nil => "0".to_owned(),
            v => id_text(v).ok_or_else(|| corrupt(stream, format!("bad tt {v:?}")))?,
        };
        let tt = opt_num(stream, &tt, "tt")?.unwrap_or(0);
        let len = opt_num(stream, &len, "len")?.unwrap_or(0);
        let excess = match rule {
            Rule::Length(max) if len <= max => return Ok(None),
            Rule::Length(max) => len - max,
            Rule::Age(_) => 0,
        };
        let mut page = array(stream, entries)?;
        let Some(oldest) = page.first() else {
            return Ok(None);
        };
        let oldest_id = Entry::parse(stream, oldest)?.id;
        let mut first = None;
        let mut count = 0u64;
        let mut len_delta = 0u64;
        let mut last_seen = tt;
        loop {
            let full = page.len() == TRIM_PAGE;
            let mut last_id = None;
            for value in &page {
                let entry = Entry::parse(stream, value)?;
                // Only the oldest entry can hold items at or below `tt`.
                let items = entry.items_above(stream, tt);
                let first_live = match &items {
                    Some(items) => items.first().map(|i| i.seq),
                    None => {
                        let range = entry.damaged_above(tt, head);
                        (!range.is_empty()).then(|| *range.start())
                    }
                };
                // What the appends added to `len` for this entry's items above `tt`, `live`
                // being how many readers see.
                let added = |live: u64| {
                    if entry.first_seq() > tt {
                        entry.count()
                    } else {
                        live
                    }
                };
                let survivor = match (rule, items) {
                    (Rule::Age(cutoff), Some(items)) => {
                        let k = items.iter().position(|i| i.ts_ms >= cutoff);
                        let old = k.unwrap_or(items.len());
                        if old > 0 {
                            first.get_or_insert(items[0].seq);
                        }
                        count += old as u64;
                        len_delta += match k {
                            Some(_) => old as u64,
                            None => added(old as u64),
                        };
                        k.map(|k| items[k].seq)
                    }
                    // Damaged: it counts as old.
                    (Rule::Age(_), None) => {
                        let live = entry.live_above(stream, tt, head);
                        if live > 0 {
                            first = first.or(first_live);
                        }
                        count += live;
                        len_delta += added(live);
                        None
                    }
                    (Rule::Length(_), _) if count >= excess => first_live,
                    (Rule::Length(_), items) => {
                        let need = excess - count;
                        let live = match &items {
                            Some(items) => items.len() as u64,
                            None => entry.live_above(stream, tt, head),
                        };
                        match items {
                            Some(items) if need < live => {
                                first.get_or_insert(items[0].seq);
                                count += need;
                                len_delta += need;
                                Some(items[need as usize].seq)
                            }
                            // All of it (a damaged chunk the cut goes through goes whole).
                            _ => {
                                if live > 0 {
                                    first = first.or(first_live);
                                }
                                count += live;
                                len_delta += added(live);
                                None
                            }
                        }
                    }
                };
                if let Some(survivor) = survivor {
                    return Ok(first.map(|first| Cut {
                        oldest_id,
                        seen_tt,
                        min_id: entry.id,
                        last: survivor - 1,
                        first,
                        count,
                        len_delta,
                    }));
                }
                last_seen = entry.last_seq;
                last_id = Some(entry.id);
            }
            let Some(last_id) = last_id.filter(|_| full) else {
                break;
            };
            page = self
                .entries_after(stream, &last_id, TRIM_PAGE, "trim")
                .await?;
        }
        // Every entry seen goes.
        Ok(first.map(|first| Cut {
            oldest_id,
            seen_tt,
            min_id: format!("{}-0", last_seen + 1),
            last: last_seen,
            first,
            count,
            len_delta,
        }))
    }
}

impl StreamLog for RedisStreamLog {
    async fn append(&self, stream: &str, items: &[Item]) -> Result<AppendOutcome> {
        validate_stream_name(stream)?;
        validate_batch(stream, items)?;
        let keys = self.keys(stream);
        let mut conn = self.conn.clone();
        // First assume nothing is a duplicate; the script answers with the head otherwise.
        let mut head = 0;
        for _ in 0..RETRIES {
            let chunks = chunks_above(items, head);
            let stored: u64 = chunks.iter().map(|(b, _)| b.count).sum();
            let Some((first, _)) = chunks.first() else {
                if items.is_empty() {
                    // Nothing to store: report the head.
                    let value: Value = redis::cmd("HGET")
                        .arg(&keys[1])
                        .arg("head")
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_err("append"))?;
                    head = opt_num(stream, &value, "head")?.unwrap_or(0);
                }
                return Ok(AppendOutcome {
                    stored: 0,
                    duplicates: items.len() as u64,
                    ack: head,
                });
            };
            let mut call = self.append.key(&keys[0]);
            call.key(&keys[1]).arg(first.first_seq);
            for (bounds, blob) in &chunks {
                call.arg(bounds.last_seq)
                    .arg(bounds.first_seq)
                    .arg(bounds.count)
                    .arg(&blob[..]);
            }
            let reply: Value = call
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("append"))?;
            let parts = array(stream, reply)?;
            let [added, now] = <[Value; 2]>::try_from(parts)
                .map_err(|p| corrupt(stream, format!("append reply has {} parts", p.len())))?;
            let now = num(stream, &now, "head")?;
            if num(stream, &added, "append result")? == 1 {
                return Ok(AppendOutcome {
                    stored,
                    duplicates: items.len() as u64 - stored,
                    ack: now,
                });
            }
            // Some items are at or below the head: drop them and try again.
            head = now;
        }
        Err(contended("append"))
    }

    async fn read(&self, stream: &str, after: Seq, max: usize) -> Result<ReadBatch> {
        validate_stream_name(stream)?;
        if after >= MAX_SEQ {
            return Ok(ReadBatch::default());
        }
        let [k, meta] = self.keys(stream);
        let mut conn = self.conn.clone();
        let want = max.max(1);
        let mut page_size = READ_PAGE_FIRST.min(want);
        // MULTI/EXEC keeps the watermark and the first entries consistent with each other (a
        // trim cannot land between them) without copying every entry through Lua. Later pages
        // only add items after these; a trim between pages makes a hole, where the read stops.
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
            .arg(page_size)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("read"))?;
        let [head, tt, tr] = <[Value; 3]>::try_from(fields)
            .map_err(|p| corrupt(stream, format!("HMGET returned {} fields", p.len())))?;
        let meta = meta_from(stream, &head, &tt, &tr)?;
        // Items at or below the watermark are trimmed even where their chunk remains.
        let floor = after.max(meta.trimmed_through);
        let mut items: Vec<Item> = Vec::new();
        let mut page = array(stream, entries)?;
        'pages: loop {
            let full = page.len() == page_size;
            let mut last_id = None;
            for value in &page {
                let entry = Entry::parse(stream, value)?;
                if items
                    .last()
                    .is_some_and(|last| entry.first_seq() > last.seq + 1)
                {
                    // A hole: the read stops in front of it.
                    break 'pages;
                }
                let above = items.last().map_or(floor, |last| last.seq.max(floor));
                items.extend(entry.read_above(stream, above, meta.head, want - items.len()));
                if items.len() >= want {
                    break 'pages;
                }
                last_id = Some(entry.id);
            }
            let Some(last_id) = last_id.filter(|_| full) else {
                break;
            };
            page_size = (page_size * 2).min(READ_PAGE_MAX);
            page = self
                .entries_after(stream, &last_id, page_size, "read")
                .await?;
        }
        Ok(meta.batch_after(after, items, max))
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
        let keys = self.keys(stream);
        let mut rules = Vec::new();
        if let Some(age) = retention.max_age_ms {
            rules.push((Rule::Age(now_ms.saturating_sub(age)), TrimReason::Age));
        }
        if let Some(max) = retention.max_len {
            rules.push((Rule::Length(max), TrimReason::Length));
        }
        let mut out = Vec::new();
        let mut conn = self.conn.clone();
        for (rule, reason) in rules {
            let mut applied = false;
            for _ in 0..RETRIES {
                let Some(cut) = self.cut(stream, rule).await? else {
                    applied = true;
                    break;
                };
                let done: u64 = self
                    .apply_trim
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(&cut.oldest_id)
                    .arg(&cut.seen_tt)
                    .arg(&cut.min_id)
                    .arg(cut.last)
                    .arg(reason.as_str())
                    .arg(cut.len_delta)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_err("trim"))?;
                if done == 1 {
                    out.push(Trimmed {
                        count: cut.count,
                        first: cut.first,
                        last: cut.last,
                        reason,
                    });
                    applied = true;
                    break;
                }
            }
            if !applied {
                return Err(contended("trim"));
            }
        }
        Ok(out)
    }

    async fn delete(&self, stream: &str) -> Result<u64> {
        validate_stream_name(stream)?;
        let [k, meta] = self.keys(stream);
        let cursors = format!("{k}#cursors");
        let mut conn = self.conn.clone();
        // One MULTI: the length that is reported is the length that is deleted.
        let (len, _deleted): (Value, u64) = redis::pipe()
            .atomic()
            .cmd("HGET")
            .arg(&meta)
            .arg("len")
            .cmd("DEL")
            .arg(&k)
            .arg(&meta)
            .arg(&cursors)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("delete stream"))?;
        // The keys are gone either way: an unreadable `len` reports 0 rather than failing.
        Ok(opt_num(stream, &len, "len").ok().flatten().unwrap_or(0))
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
        let [count, first, newest, head, tt] = <[Value; 5]>::try_from(parts)
            .map_err(|p| corrupt(stream, format!("backlog reply has {} parts", p.len())))?;
        let head = num(stream, &head, "head")?;
        let floor = after.max(num(stream, &tt, "tt")?);
        let mut count = num(stream, &count, "count")?;
        let (oldest_seq, oldest_ts_ms) = match &first {
            Value::Nil => (None, None),
            entry => {
                // The first entry may hold items at or below the cursor or the watermark.
                let entry = Entry::parse(stream, entry)?;
                count = count.saturating_sub(entry.count()) + entry.live_above(stream, floor, head);
                match entry.items_above(stream, floor) {
                    Some(items) => (items.first().map(|i| i.seq), items.first().map(|i| i.ts_ms)),
                    None => (Some(*entry.damaged_above(floor, head).start()), None),
                }
            }
        };
        Ok(Backlog {
            count,
            oldest_seq: oldest_seq.filter(|_| count > 0),
            newest_seq: match newest {
                Value::Nil => None,
                v => Some(id_seq(stream, &v)?),
            },
            oldest_ts_ms: oldest_ts_ms.filter(|_| count > 0),
            head,
        })
    }
}

/// Entries one [`RedisStreamTail::next_many`] takes at most per stream.
const TAIL_COUNT: usize = 64;

/// What one [`RedisStreamTail::next_many`] found in one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailBatch {
    /// Items above the position asked for, ascending, from chunks that decoded. Not
    /// necessarily dense: a damaged chunk is skipped here (a [`StreamLog::read`] of that range
    /// reports it), and `XREAD` silently starts after entries trimmed meanwhile.
    pub items: Vec<Item>,
    /// Where the next call resumes: the last seq of the last entry seen (the position asked
    /// for when nothing came).
    pub position: Seq,
}

/// A blocking tail of new entries (`XREAD BLOCK`) of any number of streams at once, for a
/// server instance that delivers what another instance appends (`docs/cluster.md`). It owns one
/// connection with no client-side response timeout (a block must not be cut short, `docs/`
/// field notes); a failed call returns its error and the caller reconnects. Dropping it closes
/// the connection, which ends a block in progress on the Redis side.
pub struct RedisStreamTail {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl std::fmt::Debug for RedisStreamTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamTail")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStreamTail {
    /// Opens the tail's own connection to `url`; keys start with `key_prefix` (the log's).
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(redis_err("connect the tail"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(redis_err("connect the tail"))?;
        Ok(Self {
            conn,
            prefix: key_prefix.to_owned(),
        })
    }

    /// Waits up to `block` for entries of `stream` holding seqs above `after`, and returns
    /// their items (empty after the block timed out).
    pub async fn next(&mut self, stream: &str, after: Seq, block: Duration) -> Result<TailBatch> {
        let found = self.next_many(&[(stream, after)], block).await?;
        Ok(found.into_iter().next().map_or(
            TailBatch {
                items: Vec::new(),
                position: after,
            },
            |(_, batch)| batch,
        ))
    }

    /// Waits up to `block` until any of `streams` (name, seq to read above) has entries
    /// above its seq, and returns what each stream that had some holds then, as (index in
    /// `streams`, batch): one `XREAD` for them all, so that one wake-up serves every stream
    /// appended to meanwhile. Empty after the block timed out (or for no streams, at once).
    pub async fn next_many(
        &mut self,
        streams: &[(&str, Seq)],
        block: Duration,
    ) -> Result<Vec<(usize, TailBatch)>> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(TAIL_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg("STREAMS");
        for (stream, _) in streams {
            validate_stream_name(stream)?;
            cmd.arg(format!("{}{stream}", self.prefix));
        }
        for (_, after) in streams {
            cmd.arg(format!("{after}-0"));
        }
        let reply: Value = cmd
            .query_async(&mut self.conn)
            .await
            .map_err(redis_err("tail"))?;
        let mut found = Vec::new();
        for (key, entries) in tail_streams(streams[0].0, reply)? {
            let index = key
                .strip_prefix(self.prefix.as_bytes())
                .and_then(|name| streams.iter().position(|(s, _)| s.as_bytes() == name))
                .ok_or_else(|| {
                    corrupt(
                        streams[0].0,
                        format!(
                            "XREAD answered for a stream not asked for: {}",
                            String::from_utf8_lossy(&key)
                        ),
                    )
                })?;
            let (stream, after) = streams[index];
            let mut batch = TailBatch {
                items: Vec::new(),
                position: after,
            };
            for entry in array(stream, entries)? {
                let entry = Entry::take(stream, entry)?;
                if let Some(items) = entry.items_above(stream, batch.position) {
                    batch.items.extend(items);
                }
                batch.position = batch.position.max(entry.last_seq);
            }
            found.push((index, batch));
        }
        Ok(found)
    }
}

/// The (key, entries) pairs of an `XREAD` reply (RESP2 arrays or a RESP3 map; nil after a
/// timeout). `stream` names the call in errors.
fn tail_streams(stream: &str, reply: Value) -> Result<Vec<(Vec<u8>, Value)>> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|pair| match pair {
                Value::Array(pair) => <[Value; 2]>::try_from(pair)
                    .map(|[key, entries]| (key, entries))
                    .map_err(|pair| corrupt(stream, format!("bad XREAD reply {pair:?}"))),
                other => Err(corrupt(stream, format!("bad XREAD reply {other:?}"))),
            })
            .collect::<Result<_>>()?,
        Value::Map(streams) => streams,
        other => return Err(corrupt(stream, format!("bad XREAD reply {other:?}"))),
    };
    pairs
        .into_iter()
        .map(|(key, entries)| match key {
            Value::BulkString(key) => Ok((key, entries)),
            Value::SimpleString(key) => Ok((key.into_bytes(), entries)),
            other => Err(corrupt(stream, format!("bad XREAD stream key {other:?}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    fn entry(id: &[u8], fields: Vec<Value>) -> Value {
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    /// `(seq, payload length)` of what a read above `floor` yields from `entry`.
    fn read_lens(entry: &Entry, floor: Seq, head: Seq) -> Vec<(Seq, usize)> {
        entry
            .read_above("s", floor, head, 10)
            .iter()
            .map(|i| (i.seq, i.payload.len()))
            .collect()
    }

    #[test]
    fn damaged_chunks_read_as_placeholders_up_to_the_head() {
        let items: Vec<Item> = (5..=7)
            .map(|seq| Item {
                seq,
                ts_ms: seq,
                payload: Bytes::from(vec![seq as u8]),
            })
            .collect();
        let (bounds, blob) = sqlite_chunk::encode(&items);
        let chunk = |n: &[u8], blob: &[u8]| {
            entry(
                b"7-0",
                vec![
                    bulk(b"first"),
                    bulk(b"5"),
                    bulk(b"n"),
                    bulk(n),
                    bulk(b"items"),
                    bulk(blob),
                ],
            )
        };
        let good = Entry::parse("s", &chunk(b"3", &blob)).expect("an entry");
        assert_eq!(good.count(), bounds.count);
        assert_eq!(good.read_above("s", 5, 7, 10), items[1..]);
        for damaged in [
            chunk(b"4", &blob),
            chunk(b"3", &blob[..4]),
            chunk(b"x", &blob),
        ] {
            let entry = Entry::parse("s", &damaged).expect("an entry");
            assert_eq!(entry.items_above("s", 0), None);
            assert_eq!(read_lens(&entry, 4, 6), [(5, 0), (6, 0)]);
            assert_eq!(entry.live_above("s", 5, 6), 1);
        }
        // An entry without the chunk fields (say, one item as `seq`/`ts`/`data`) is a damaged
        // chunk of its ID's seq.
        let fieldless = Entry::parse(
            "s",
            &entry(
                b"7-0",
                vec![bulk(b"ts"), bulk(b"12"), bulk(b"data"), bulk(b"ab")],
            ),
        )
        .expect("an entry");
        assert_eq!(fieldless.items_above("s", 0), None);
        assert_eq!(read_lens(&fieldless, 4, 7), [(7, 0)]);
        assert_eq!(fieldless.count(), 1);
        // Without a seq there is nothing to report: the read fails.
        assert!(Entry::parse("s", &entry(b"x", vec![])).is_err());
    }

    #[test]
    fn appends_keep_only_items_above_the_head_in_chunks() {
        let items: Vec<Item> = [3, 1, 4, 4, 5]
            .into_iter()
            .chain(10..=300)
            .map(|seq| Item {
                seq,
                ts_ms: 0,
                payload: Bytes::new(),
            })
            .collect();
        let bounds: Vec<_> = chunks_above(&items, 3)
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        assert_eq!(
            bounds,
            [
                ChunkBounds {
                    first_seq: 4,
                    last_seq: 263,
                    count: 256
                },
                ChunkBounds {
                    first_seq: 264,
                    last_seq: 300,
                    count: 37
                }
            ]
        );
        assert!(chunks_above(&items, 300).is_empty());
    }
}
