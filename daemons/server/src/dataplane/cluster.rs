//! Relay across server instances sharing one Redis (`docs/cluster.md`): the I/O of it. The
//! driver decides when to start and stop what is here; the engine decides what to deliver.
//!
//! * [`Tails`] — while a side is connected here and its peer is not, the peer's stream is
//!   tailed: one task and one connection of its own per instance read every such stream with
//!   one `XREAD BLOCK` and report new items to the driver ([`Event::Tailed`]); after an error
//!   it reconnects with backoff and resumes each stream after the last seq it saw.
//! * [`spawn_presence`] — one round of cluster presence for every loaded group: a script
//!   refreshes the presence keys (`{prefix}presence:{group}:{side}` = instance id, TTL
//!   [`PRESENCE_TTL`]) of the sides connected here, releases those this instance held and no
//!   longer serves (compare-and-delete), and returns every side's holder; the same round trip
//!   reads each stream's head and consumer cursor. The driver runs it every
//!   [`PRESENCE_EVERY`].
//!
//! * [`spawn_presence_reset`] — at start, the records' online dongles that no live instance
//!   holds (no presence key) are marked offline, in two passes: at once for sides not seen
//!   for a while, and again once the keys of an instance that just died would have expired
//!   (they live on for up to [`PRESENCE_TTL`]) and every live holder has refreshed its own.
//!
//! What it does not do: it holds no lease and elects no writer — the append script's seq check
//! makes appends from several instances safe (`docs/cluster.md`) — and it does not touch the
//! records (the driver turns presence changes into sync jobs).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use relay_core::engine::{Direction, GroupBacklog, GroupId, GroupMode, GroupStatus, Side};
use relay_core::log::{RedisStreamTail, Seq};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use uuid::Uuid;

use super::storage::Event;
use crate::state::AppState;

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

/// KEYS[1]: the shared status hash. ARGV: pairs of group id and status text (see
/// [`encode_status`]), written with the Redis server's clock in ms in front. Returns that
/// clock and the whole hash (field, value, …).
const STATUS_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], now .. ' ' .. ARGV[i + 1])
end
return {now, redis.call('HGETALL', KEYS[1])}
";

/// The shared status hash: field = group id, value = `{ms} {mode} {a_to_b} {b_to_a}
/// {replaying}` as last written by an instance holding a side of the group.
pub(super) fn status_key(prefix: &str) -> String {
    format!("{prefix}relay-status")
}

/// A status as this instance's engine has it, for the shared status hash.
pub(super) fn encode_status(status: &GroupStatus) -> String {
    format!(
        "{} {} {} {}",
        status.mode.as_str(),
        status.backlog.a_to_b,
        status.backlog.b_to_a,
        u8::from(status.replaying)
    )
}

/// Reads one entry of the shared status hash, as seen at `now` (Redis ms). An entry older
/// than [`PRESENCE_TTL`] was written by an instance that no longer holds a side: nobody
/// does, so the group is shown degraded with both sides offline, its backlog as last seen.
fn decode_status(text: &str, now: u64) -> Option<GroupStatus> {
    let mut parts = text.split(' ');
    let at: u64 = parts.next()?.parse().ok()?;
    let mode = match parts.next()? {
        "inactive" => GroupMode::Inactive,
        "active" => GroupMode::Active,
        "degraded" => GroupMode::Degraded,
        _ => return None,
    };
    let backlog = GroupBacklog {
        a_to_b: parts.next()?.parse().ok()?,
        b_to_a: parts.next()?.parse().ok()?,
    };
    let replaying = parts.next()? == "1";
    let fresh = now.saturating_sub(at) <= u64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(3000);
    Some(if fresh {
        GroupStatus {
            mode,
            backlog,
            offline: Vec::new(),
            replaying,
        }
    } else {
        GroupStatus {
            mode: if mode == GroupMode::Inactive {
                mode
            } else {
                GroupMode::Degraded
            },
            backlog,
            offline: vec![Side::A, Side::B],
            replaying: false,
        }
    })
}

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

/// One group's part of a presence round: which sides are served here, and (when one is)
/// the engine's status of it for the shared status hash.
#[derive(Debug, Clone)]
pub(super) struct PresenceAsk {
    pub group: GroupId,
    pub local: [bool; 2],
    pub status: Option<String>,
}

/// What one presence round found.
#[derive(Debug, Clone, Default)]
pub(super) struct PresenceRound {
    /// Per group asked about.
    pub facts: Vec<(GroupId, GroupFacts)>,
    /// The shared status of every group an instance holds (or held) a side of.
    pub shared: Vec<(Uuid, GroupStatus)>,
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
        let round = match presence_round(&link, conn, &asks).await {
            Ok(round) => Some(round),
            Err(err) => {
                tracing::warn!(%err, "cluster presence round failed; retrying");
                None
            }
        };
        let _ = events.send(Event::Presence { round });
    });
}

async fn presence_round(
    link: &ClusterLink,
    mut conn: ConnectionManager,
    asks: &[PresenceAsk],
) -> redis::RedisResult<PresenceRound> {
    let mut status = redis::cmd("EVAL");
    status.arg(STATUS_LUA).arg(1).arg(status_key(&link.prefix));
    for ask in asks {
        if let Some(text) = &ask.status {
            status.arg(ask.group.to_string()).arg(text);
        }
    }
    let (now, hash): (u64, Vec<String>) = status.query_async(&mut conn).await?;
    let shared = hash
        .chunks_exact(2)
        .filter_map(|pair| {
            let group = pair[0].parse::<Uuid>().ok()?;
            Some((group, decode_status(&pair[1], now)?))
        })
        .collect();
    let facts = presence_facts(link, &mut conn, asks).await?;
    Ok(PresenceRound { facts, shared })
}

async fn presence_facts(
    link: &ClusterLink,
    conn: &mut ConnectionManager,
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
    let holders: Vec<Value> = invocation.invoke_async(conn).await?;
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
    let progress: Vec<Value> = pipe.query_async(conn).await?;
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

/// First and longest wait before the start-up presence reset retries Redis.
const RESET_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Resets, in the background, the presence the records hold for sides no live instance
/// holds (see the module docs). Only dongles not seen since this call began are reset: one a
/// live instance (this one included) wrote online meanwhile keeps its state.
///
/// A live instance sets a side's key up to [`PRESENCE_EVERY`] after the side connected, so the
/// first pass resets only sides without a key that were not seen for a [`PRESENCE_TTL`]
/// either; the second pass, once every live holder has had several rounds and every dead
/// one's key has expired, resets every side still online without a key.
pub(super) fn spawn_presence_reset(state: AppState, url: String, prefix: String) {
    let began = chrono::Utc::now();
    let quiet = chrono::Duration::from_std(PRESENCE_TTL).unwrap_or(chrono::Duration::MAX);
    tokio::spawn(async move {
        let mut wait = RESET_RETRY.0;
        let mut second = false;
        loop {
            let seen_before = if second { began } else { began - quiet };
            match presence_reset_pass(&state, &url, &prefix, seen_before).await {
                Ok(left) if !second && left > 0 => {
                    tokio::time::sleep(PRESENCE_TTL + PRESENCE_EVERY).await;
                    second = true;
                    wait = RESET_RETRY.0;
                }
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(%err, "resetting stale presence failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RESET_RETRY.1);
                }
            }
        }
    });
}

/// One pass: resets the online members without a presence key that were not seen since
/// `seen_before`; returns how many members were online when it looked.
async fn presence_reset_pass(
    state: &AppState,
    url: &str,
    prefix: &str,
    seen_before: chrono::DateTime<chrono::Utc>,
) -> Result<usize, String> {
    let members = state
        .store()
        .call(|store| store.online_members())
        .await
        .map_err(|err| err.to_string())?;
    if members.is_empty() {
        return Ok(0);
    }
    let client = redis::Client::open(url).map_err(|err| err.to_string())?;
    let mut conn = tokio::time::timeout(PRESENCE_TTL, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "connecting to Redis timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    let mut get = redis::cmd("MGET");
    for (_, group, side) in &members {
        get.arg(format!("{prefix}presence:{group}:{side}"));
    }
    let holders: Vec<Option<String>> = get
        .query_async(&mut conn)
        .await
        .map_err(|err| err.to_string())?;
    let unheld: Vec<Uuid> = members
        .iter()
        .zip(&holders)
        .filter(|(_, holder)| holder.is_none())
        .map(|((dongle, _, _), _)| *dongle)
        .collect();
    if !unheld.is_empty() {
        let changes = state
            .store()
            .call(move |store| {
                store.reset_presence_of(&unheld, Some(seen_before), chrono::Utc::now())
            })
            .await
            .map_err(|err| err.to_string())?;
        state.publish_mode_changes(changes);
    }
    Ok(members.len())
}

/// Removes a deleted group from the shared status hash, in the background.
pub(super) fn spawn_forget_status(link: &ClusterLink, mut conn: ConnectionManager, group: Uuid) {
    let key = status_key(&link.prefix);
    tokio::spawn(async move {
        let done: redis::RedisResult<()> = redis::cmd("HDEL")
            .arg(key)
            .arg(group.to_string())
            .query_async(&mut conn)
            .await;
        if let Err(err) = done {
            tracing::warn!(%group, %err, "removing a deleted group's shared status failed");
        }
    });
}

/// One tailed stream as the driver wants it: read above `after`, from registration `id` on
/// (a stream stopped and started again is a new registration, with its own `after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tailing {
    id: u64,
    after: Seq,
}

type TailKey = (GroupId, Direction);

/// The cluster tail of this instance: one task and one Redis connection for every stream
/// tailed here, reading them all with one `XREAD BLOCK … STREAMS k1 k2 …` (see
/// [`RedisStreamTail::next_many`]), so that one wake-up serves every stream appended to since
/// the last one. The driver says which streams to tail ([`Tails::start`], [`Tails::stop`]); the
/// task reports new items as [`Event::Tailed`] and, after an error, reconnects with backoff and
/// resumes every stream after the last seq it saw of it.
#[derive(Debug)]
pub(super) struct Tails {
    set: watch::Sender<HashMap<TailKey, Tailing>>,
    next_id: u64,
    task: JoinHandle<()>,
}

impl Tails {
    /// Starts the (idle) tail task of this instance.
    pub(super) fn spawn(link: &ClusterLink, events: mpsc::UnboundedSender<Event>) -> Self {
        let (set, wanted) = watch::channel(HashMap::new());
        let task = tokio::spawn(tail_task(
            link.url.clone(),
            link.prefix.clone(),
            wanted,
            events,
        ));
        Self {
            set,
            next_id: 0,
            task,
        }
    }

    /// Whether `direction` of `group` is tailed.
    pub(super) fn is_tailing(&self, group: &GroupId, direction: Direction) -> bool {
        self.set.borrow().contains_key(&(group.clone(), direction))
    }

    /// Tails `direction` of `group` from seq `after` on (unless it is tailed already).
    pub(super) fn start(&mut self, group: &GroupId, direction: Direction, after: Seq) {
        let id = self.next_id;
        let mut added = false;
        self.set.send_if_modified(|set| {
            let key = (group.clone(), direction);
            if set.contains_key(&key) {
                return false;
            }
            set.insert(key, Tailing { id, after });
            added = true;
            true
        });
        if added {
            self.next_id += 1;
        }
    }

    /// Stops tailing `direction` of `group` (items already read may still be reported).
    pub(super) fn stop(&mut self, group: &GroupId, direction: Direction) {
        self.set
            .send_if_modified(|set| set.remove(&(group.clone(), direction)).is_some());
    }
}

impl Drop for Tails {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a read in progress may still answer after the set of tailed streams changed,
/// before the tail drops its connection (ending the block on the Redis side) and reads the new
/// set on a new one.
const TAIL_SET_GRACE: Duration = Duration::from_millis(20);

/// One stream the tail task reads: which, under which registration, and up to where.
struct Tailed {
    key: TailKey,
    tailing: Tailing,
    name: String,
    position: Seq,
}

/// Brings `tailed` in line with the driver's `set`: drops what it no longer wants (or wants
/// from a new registration), adds what is new at the registration's `after`.
fn sync_tailed(tailed: &mut Vec<Tailed>, set: &HashMap<TailKey, Tailing>) {
    tailed.retain(|t| set.get(&t.key) == Some(&t.tailing));
    let have: std::collections::HashSet<TailKey> = tailed.iter().map(|t| t.key.clone()).collect();
    for (key, tailing) in set {
        if !have.contains(key) {
            tailed.push(Tailed {
                key: key.clone(),
                tailing: *tailing,
                name: key.1.stream_key(&key.0),
                position: tailing.after,
            });
        }
    }
}

/// The tail task of [`Tails`]: ends when the [`Tails`] is dropped or the driver is gone.
async fn tail_task(
    url: String,
    prefix: String,
    mut wanted: watch::Receiver<HashMap<TailKey, Tailing>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut tailed: Vec<Tailed> = Vec::new();
    // Whether the set changed since `tailed` was synced (`changed()` marks it seen).
    let mut stale = false;
    let mut wait = TAIL_RETRY.0;
    loop {
        let mut tail = match RedisStreamTail::connect(&url, &prefix).await {
            Ok(tail) => tail,
            Err(err) => {
                tracing::warn!(%err, "cluster tail cannot connect; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(TAIL_RETRY.1);
                continue;
            }
        };
        loop {
            match wanted.has_changed() {
                Ok(changed) if changed || stale => {
                    sync_tailed(&mut tailed, &wanted.borrow_and_update());
                    stale = false;
                }
                Ok(_) => {}
                Err(_) => return,
            }
            if tailed.is_empty() {
                if wanted.changed().await.is_err() {
                    return;
                }
                stale = true;
                continue;
            }
            let result = {
                let streams: Vec<(&str, Seq)> = tailed
                    .iter()
                    .map(|t| (t.name.as_str(), t.position))
                    .collect();
                let read = tail.next_many(&streams, TAIL_BLOCK);
                tokio::pin!(read);
                tokio::select! {
                    biased;
                    result = &mut read => Some(result),
                    changed = wanted.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        stale = true;
                        // A read under way answers within a round trip; one blocked on the
                        // old set would wait out its block.
                        tokio::time::timeout(TAIL_SET_GRACE, &mut read).await.ok()
                    }
                }
            };
            let Some(result) = result else {
                // Blocked on the old set: dropping the connection ends the block (Redis
                // forgets a closed client's read). Nothing is lost: positions only move with
                // what was reported.
                break;
            };
            let found = match result {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(%err, streams = tailed.len(), "cluster tail failed; reconnecting");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(TAIL_RETRY.1);
                    break;
                }
            };
            wait = TAIL_RETRY.0;
            let mut batches = Vec::with_capacity(found.len());
            // What the driver stopped meanwhile is not reported (the next sync drops it).
            let set = wanted.borrow();
            for (index, batch) in found {
                let Some(t) = tailed.get_mut(index) else {
                    continue;
                };
                t.position = batch.position;
                if !batch.items.is_empty() && set.get(&t.key) == Some(&t.tailing) {
                    batches.push((t.key.0.clone(), t.key.1, batch.items));
                }
            }
            drop(set);
            if !batches.is_empty() && events.send(Event::Tailed { batches }).is_err() {
                return;
            }
        }
    }
}

/// Which side a presence fact is about, by index.
pub(super) fn side_at(index: usize) -> Side {
    if index == 0 { Side::A } else { Side::B }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use relay_core::log::{Item, RedisStreamLog, StreamLog};
    use tether_testkit::TestResult;
    use tether_testkit::redis::RedisNamespace;

    use super::*;

    fn items(seqs: std::ops::RangeInclusive<Seq>) -> Vec<Item> {
        seqs.map(|seq| Item {
            seq,
            ts_ms: 1,
            payload: bytes::Bytes::from(seq.to_string()),
        })
        .collect()
    }

    /// The next [`Event::Tailed`] within `within`, flattened to (group, direction, seqs).
    async fn next_tailed(
        events: &mut mpsc::UnboundedReceiver<Event>,
        within: Duration,
    ) -> Option<Vec<(GroupId, Direction, Vec<Seq>)>> {
        loop {
            match tokio::time::timeout(within, events.recv()).await.ok()?? {
                Event::Tailed { batches } => {
                    return Some(
                        batches
                            .into_iter()
                            .map(|(g, d, items)| (g, d, items.iter().map(|i| i.seq).collect()))
                            .collect(),
                    );
                }
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn one_tail_serves_every_stream_and_follows_the_set_while_blocked() -> TestResult {
        let ns = RedisNamespace::new("cluster-tail");
        let log = RedisStreamLog::connect(&ns.url, &ns.prefix).await?;
        let link = ClusterLink {
            url: ns.url.clone(),
            prefix: ns.prefix.clone(),
            instance: "me".to_owned(),
        };
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut tails = Tails::spawn(&link, tx);
        let (g1, g2) = (GroupId::new("g1"), GroupId::new("g2"));
        let key = |g: &GroupId, d: Direction| d.stream_key(g);
        tails.start(&g1, Direction::AToB, 0);
        // The tail is blocked on g1 alone when g2 is added: it must not wait out its block.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tails.start(&g2, Direction::BToA, 0);
        assert!(tails.is_tailing(&g2, Direction::BToA));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let appended = Instant::now();
        log.append(&key(&g2, Direction::BToA), &items(1..=3))
            .await?;
        let got = next_tailed(&mut events, TAIL_BLOCK)
            .await
            .ok_or("nothing tailed")?;
        assert!(
            appended.elapsed() < TAIL_BLOCK / 2,
            "{:?}",
            appended.elapsed()
        );
        assert_eq!(got, vec![(g2.clone(), Direction::BToA, vec![1, 2, 3])]);

        // Both streams, each once and in order, whatever batches they come in.
        log.append(&key(&g1, Direction::AToB), &items(1..=2))
            .await?;
        log.append(&key(&g2, Direction::BToA), &items(4..=5))
            .await?;
        log.append(&key(&g1, Direction::AToB), &items(3..=4))
            .await?;
        let mut seen: HashMap<TailKey, Vec<Seq>> = HashMap::new();
        while seen.values().map(Vec::len).sum::<usize>() < 6 {
            for (g, d, seqs) in next_tailed(&mut events, TAIL_BLOCK)
                .await
                .ok_or("missing items")?
            {
                seen.entry((g, d)).or_default().extend(seqs);
            }
        }
        assert_eq!(seen[&(g1.clone(), Direction::AToB)], vec![1, 2, 3, 4]);
        assert_eq!(seen[&(g2.clone(), Direction::BToA)], vec![4, 5]);

        // A stopped stream is no longer reported; started again, it reads from its new start.
        tails.stop(&g1, Direction::AToB);
        assert!(!tails.is_tailing(&g1, Direction::AToB));
        log.append(&key(&g1, Direction::AToB), &items(5..=6))
            .await?;
        log.append(&key(&g2, Direction::BToA), &items(6..=6))
            .await?;
        assert_eq!(
            next_tailed(&mut events, TAIL_BLOCK).await,
            Some(vec![(g2.clone(), Direction::BToA, vec![6])])
        );
        tails.start(&g1, Direction::AToB, 5);
        assert_eq!(
            next_tailed(&mut events, TAIL_BLOCK).await,
            Some(vec![(g1.clone(), Direction::AToB, vec![6])])
        );
        assert!(
            next_tailed(&mut events, Duration::from_millis(300))
                .await
                .is_none()
        );
        Ok(())
    }
}
