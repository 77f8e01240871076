//! Relay across server instances sharing one Redis (`docs/cluster.md`): the I/O of it. The
//! driver decides when to start and stop what is here; the engine decides what to deliver.
//!
//! * [`spawn_tail`] — while a side is connected here and its peer is not, a task tails the
//!   peer's stream (`XREAD BLOCK` on a connection of its own) and reports new items to the
//!   driver ([`Event::Tailed`]); after an error it reconnects with backoff and resumes after the
//!   last seq it saw.
//! * [`spawn_presence`] — one round of cluster presence for every loaded group: a script
//!   refreshes the presence keys (`{prefix}presence:{group}:{side}` = instance id, TTL
//!   [`PRESENCE_TTL`]) of the sides connected here, releases those this instance held and no
//!   longer serves (compare-and-delete), and returns every side's holder; the same round trip
//!   reads each stream's head and consumer cursor. The driver runs it every
//!   [`PRESENCE_EVERY`].
//!
//! What it does not do: it holds no lease and elects no writer — the append script's seq check
//! makes appends from several instances safe (`docs/cluster.md`) — and it does not touch the
//! records (the driver turns presence changes into sync jobs).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use relay_core::engine::{Direction, GroupId, Side};
use relay_core::log::{RedisStreamTail, Seq};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::storage::Event;

/// How long a presence key lives without a refresh: an instance that died stops counting
/// after this.
pub(super) const PRESENCE_TTL: Duration = Duration::from_secs(3);

/// How often presence is refreshed and read.
pub(super) const PRESENCE_EVERY: Duration = Duration::from_millis(500);

/// How long one `XREAD BLOCK` of a tail waits before asking again.
const TAIL_BLOCK: Duration = Duration::from_secs(2);

/// First and longest wait before a failed tail reconnects.
const TAIL_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// KEYS: presence keys. ARGV: instance id, TTL in ms, then per key `1` (served here: refresh)
/// or `0` (release if held by this instance). Returns each key's holder (nil when none).
const PRESENCE_LUA: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  if ARGV[2 + i] == '1' then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    out[i] = ARGV[1]
  else
    local v = redis.call('GET', k)
    if v == ARGV[1] then
      redis.call('DEL', k)
      v = false
    end
    out[i] = v
  end
end
return out
";

/// Where the cluster's shared state lives.
#[derive(Debug, Clone)]
pub(super) struct ClusterLink {
    /// Redis URL (tails open their own connections).
    pub url: String,
    /// The stream log's key prefix; presence keys share it.
    pub prefix: String,
    /// This instance's id (unique per start).
    pub instance: String,
}

/// What one presence round found for a group.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupFacts {
    /// Per side (A, B): the instance holding it, if any.
    pub holders: [Option<String>; 2],
    /// Per direction (`a_to_b`, `b_to_a`): the stored head.
    pub heads: [Seq; 2],
    /// Per direction: the consumer's stored cursor.
    pub cursors: [Option<Seq>; 2],
}

/// One group's part of a presence round: which sides are served here.
#[derive(Debug, Clone)]
pub(super) struct PresenceAsk {
    pub group: GroupId,
    pub local: [bool; 2],
}

fn side_name(index: usize) -> &'static str {
    if index == 0 { "a" } else { "b" }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<Seq> {
    match value {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// Runs one presence round in the background; reports [`Event::Presence`] (also after an
/// error, with `None`, so that the driver starts the next round).
pub(super) fn spawn_presence(
    link: ClusterLink,
    conn: ConnectionManager,
    asks: Vec<PresenceAsk>,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let facts = match presence_round(&link, conn, &asks).await {
            Ok(facts) => Some(facts),
            Err(err) => {
                tracing::warn!(%err, "cluster presence round failed; retrying");
                None
            }
        };
        let _ = events.send(Event::Presence { facts });
    });
}

async fn presence_round(
    link: &ClusterLink,
    mut conn: ConnectionManager,
    asks: &[PresenceAsk],
) -> redis::RedisResult<Vec<(GroupId, GroupFacts)>> {
    if asks.is_empty() {
        return Ok(Vec::new());
    }
    let script = Script::new(PRESENCE_LUA);
    let mut invocation = script.prepare_invoke();
    invocation
        .arg(&link.instance)
        .arg(u64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(3000));
    for ask in asks {
        for (index, local) in ask.local.iter().enumerate() {
            invocation
                .key(format!(
                    "{}presence:{}:{}",
                    link.prefix,
                    ask.group,
                    side_name(index)
                ))
                .arg(if *local { "1" } else { "0" });
        }
    }
    let holders: Vec<Value> = invocation.invoke_async(&mut conn).await?;
    let mut pipe = redis::pipe();
    for ask in asks {
        for direction in Direction::BOTH {
            let key = format!("{}{}", link.prefix, direction.stream_key(&ask.group));
            pipe.cmd("HGET").arg(format!("{key}#meta")).arg("head");
            pipe.cmd("HGET")
                .arg(format!("{key}#cursors"))
                .arg(direction.consumer().to_string());
        }
    }
    let progress: Vec<Value> = pipe.query_async(&mut conn).await?;
    let mut out = Vec::with_capacity(asks.len());
    for (index, ask) in asks.iter().enumerate() {
        let holder = |i: usize| holders.get(index * 2 + i).and_then(text);
        let at = |i: usize| progress.get(index * 4 + i);
        out.push((
            ask.group.clone(),
            GroupFacts {
                holders: [holder(0), holder(1)],
                heads: [
                    at(0).and_then(number).unwrap_or(0),
                    at(2).and_then(number).unwrap_or(0),
                ],
                cursors: [at(1).and_then(number), at(3).and_then(number)],
            },
        ));
    }
    Ok(out)
}

/// Tails `direction` of `group` from seq `after` until aborted, reporting new items as
/// [`Event::Tailed`].
pub(super) fn spawn_tail(
    link: &ClusterLink,
    group: GroupId,
    direction: Direction,
    after: Seq,
    events: mpsc::UnboundedSender<Event>,
) -> JoinHandle<()> {
    let url = link.url.clone();
    let prefix = link.prefix.clone();
    tokio::spawn(async move {
        let stream = direction.stream_key(&group);
        let mut position = after;
        let mut wait = TAIL_RETRY.0;
        loop {
            let mut tail = match RedisStreamTail::connect(&url, &prefix).await {
                Ok(tail) => tail,
                Err(err) => {
                    tracing::warn!(%stream, %err, "cluster tail cannot connect; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(TAIL_RETRY.1);
                    continue;
                }
            };
            loop {
                match tail.next(&stream, position, TAIL_BLOCK).await {
                    Ok(batch) => {
                        wait = TAIL_RETRY.0;
                        position = batch.position;
                        if !batch.items.is_empty() {
                            let event = Event::Tailed {
                                group: group.clone(),
                                direction,
                                items: batch.items,
                            };
                            if events.send(event).is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%stream, %err, position, "cluster tail failed; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(TAIL_RETRY.1);
        }
    })
}

/// Which side a presence fact is about, by index.
pub(super) fn side_at(index: usize) -> Side {
    if index == 0 { Side::A } else { Side::B }
}
