//! Commands across server instances sharing one Redis (`docs/cluster.md`): a command accepted
//! by one instance reaches the vehicle's agent connected to another, at least once through
//! Redis and at most once to the vehicle.
//!
//! Layout (key prefix `tether:`, as the relay's stream log):
//! * `{prefix}diag:dongle:{dongle_id}` — the instance whose diagnostics channel serves the
//!   dongle, refreshed every [`ANNOUNCE_EVERY`] with a TTL of [`ANNOUNCE_TTL`].
//! * `{prefix}instance:{instance}` — the liveness key of a running instance, refreshed every
//!   [`LIVENESS_EVERY`] with a TTL of [`LIVENESS_TTL`]. The open commands an instance owns
//!   (`commands.instance` in the records) are left alone by every other instance while this
//!   key exists; once it expired, any instance may adopt them (`super::Commands`).
//! * stream `{prefix}diag:inbox:{instance}` — the requests ([`Offer`] JSON, field `r`) other
//!   instances hand to that instance, read by it with `XREAD BLOCK` from the last entry it
//!   read: a request added while the reader is disconnected is read when it is back.
//! * stream `{prefix}diag:events:{delivery}` — the agent's answers to one delivery
//!   ([`AgentEvent`] JSON, field `e`), read by the running instance from the last entry it
//!   read.
//! * hash `{prefix}diag:handover:{command_id}` — the **handover record** of a command: one
//!   field per delivery (`offered` → `sent:{instance}` or `void`) and `#owner`, the instance
//!   allowed to send the command. Every send to a vehicle (local or for another instance) is
//!   preceded by the [`CLAIM`] script, which turns the delivery `sent` only while the running
//!   instance's liveness key exists and `#owner` is absent or that instance; an adopter runs
//!   [`CLOSE`], which makes itself `#owner`, voids the deliveries not sent yet and says
//!   whether one was. Each script is atomic in Redis, so for every delivery exactly one of
//!   "sent" and "void" happens, and nothing is sent after an adoption closed the record.
//!
//! Responses themselves are not routed here: the running instance stores them and publishes
//! them on `response:{command_id}` (`super::bus`), and `/ws/responses/{id}` on any instance
//! reads the shared store.

use std::collections::HashSet;
use std::sync::{LazyLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::StreamReadReply;
use relay_core::protocol::diag::CommandRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, mpsc};
use uuid::Uuid;

use super::agent::{AgentEvent, HubInner};

/// How often an instance re-announces the dongles it serves.
pub(super) const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// How long an announcement lasts without a refresh.
const ANNOUNCE_TTL: Duration = Duration::from_secs(3);

/// Key prefix, shared with the relay's stream log.
const PREFIX: &str = crate::dataplane::REDIS_KEY_PREFIX;

/// How long one blocking read of an inbox or an events stream waits; also how often a
/// running instance looks whether the instance it handed a command to is still alive.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// The wait before reconnecting a reader after a Redis error.
const RETRY: Duration = Duration::from_millis(250);

/// How long an offered request may stay unclaimed by a live instance before the running
/// instance voids it and hands it over again (the receiver is stuck or lost it).
pub(super) const OFFER_WAIT: Duration = Duration::from_secs(5);

/// How long the handover record and the streams of a command outlive its deadline.
const KEEP_AFTER: Duration = Duration::from_secs(3600);

/// Most entries kept in one instance's inbox (approximate trim).
const INBOX_MAXLEN: u32 = 100_000;

/// How often a running instance refreshes its liveness key.
pub(super) const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// How long a liveness key lasts without a refresh: an instance that died (or lost Redis)
/// stops owning its open commands after this.
pub(super) const LIVENESS_TTL: Duration = Duration::from_secs(3);

fn liveness_key(instance: &str) -> String {
    format!("{PREFIX}instance:{instance}")
}

fn dongle_key(dongle: Uuid) -> String {
    format!("{PREFIX}diag:dongle:{dongle}")
}

fn inbox_key(instance: &str) -> String {
    format!("{PREFIX}diag:inbox:{instance}")
}

fn events_key(delivery: Uuid) -> String {
    format!("{PREFIX}diag:events:{delivery}")
}

fn handover_key(command_id: Uuid) -> String {
    format!("{PREFIX}diag:handover:{command_id}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long the keys of a command with this request deadline are kept.
fn keep_ms(deadline_ms: u64) -> u64 {
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    deadline_ms.saturating_sub(now) + millis(KEEP_AFTER)
}

/// Turns a delivery `sent` (KEYS: handover record, the running instance's liveness key;
/// ARGV: delivery, running instance, sending instance, keep ms). Answers `ok` (send it now),
/// `dead` (the running instance's liveness key is gone), `fenced` (another instance owns the
/// command now) — both void an offered delivery — or the delivery's state when it is no
/// longer `offered` (`void`, `sent:…`: do not send).
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local state = redis.call('HGET', KEYS[1], ARGV[1])
if state and state ~= 'offered' then return state end
local verdict = false
if redis.call('EXISTS', KEYS[2]) == 0 then
  verdict = 'dead'
else
  local owner = redis.call('HGET', KEYS[1], '#owner')
  if owner and owner ~= ARGV[2] then verdict = 'fenced' end
end
if verdict then
  if state then redis.call('HSET', KEYS[1], ARGV[1], 'void') end
  return verdict
end
redis.call('HSET', KEYS[1], ARGV[1], 'sent:' .. ARGV[3], '#owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'ok'
",
    )
});

/// Records a delivery `offered` and adds its request to the receiver's inbox (KEYS: handover
/// record, inbox; ARGV: delivery, offer JSON, keep ms, inbox maxlen).
static OFFER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], 'offered')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
",
    )
});

/// Voids a delivery still `offered` (KEYS: handover record; ARGV: delivery). Answers `void`
/// (it will never be sent) or `sent:{instance}`.
static VOID: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local state = redis.call('HGET', KEYS[1], ARGV[1])
if state and string.sub(state, 1, 5) == 'sent:' then return state end
if state then redis.call('HSET', KEYS[1], ARGV[1], 'void') end
return 'void'
",
    )
});

/// An adopter takes a command's handover record (KEYS: handover record, the adopter's
/// liveness key; ARGV: adopter, the owner it adopted from or '', liveness key prefix, keep
/// ms). Refused (-1) when the adopter's own liveness key is gone, or (-2) when `#owner` is
/// a third instance that is alive (an older adoption won in Redis). Otherwise it makes the
/// adopter `#owner`, voids the deliveries still `offered`, and answers 1 when one was sent,
/// else 0.
static CLOSE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local owner = redis.call('HGET', KEYS[1], '#owner')
if owner and owner ~= ARGV[1] and owner ~= ARGV[2]
   and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
  return -2
end
local sent = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field ~= '#owner' then
    if value == 'offered' then
      redis.call('HSET', KEYS[1], field, 'void')
    elseif string.sub(value, 1, 5) == 'sent:' then
      sent = 1
    end
  end
end
redis.call('HSET', KEYS[1], '#owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return sent
",
    )
});

/// What [`CLAIM`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// Send it now; the handover record says so.
    Send,
    /// The running instance's liveness key is gone: do not send (yet).
    Dead,
    /// Another instance adopted the command: never send it from here.
    Fenced,
    /// This delivery was voided or already sent: do not send it (again).
    Closed,
}

/// What an adopter learned from [`CLOSE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// The adopter owns the record; no delivery was sent: it may run the command.
    Unsent,
    /// A delivery was sent to a vehicle: the command must not run again.
    Sent,
    /// The adopter may not take the record (it is not alive, or a live third instance owns
    /// it): it must not run the command.
    Refused,
}

/// A request handed to another instance's inbox.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Offer {
    /// Names this hand-over in the command's handover record and its events stream.
    pub(super) delivery: Uuid,
    /// The instance running the command (whose liveness the claim checks).
    pub(super) runner: String,
    /// The request for the agent.
    pub(super) request: CommandRequest,
}

/// The Redis side of commands in a cluster: the agent connector's routing, this instance's
/// liveness key (with the question which other instances are alive), and the handover
/// records that keep every command to at most one send per delivery.
#[derive(Debug)]
pub(super) struct RemoteRoute {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// This instance's id ([`crate::store::Store::instance`]).
    pub(super) instance: String,
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

    /// Sets (or refreshes) this instance's liveness key.
    pub(super) async fn refresh(&self) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(liveness_key(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(millis(LIVENESS_TTL))
            .query_async::<()>(&mut self.conn().await?)
            .await
    }

    /// Which of `instances` are alive (their liveness key exists); one pipeline.
    pub(super) async fn alive(&self, instances: &[String]) -> redis::RedisResult<HashSet<String>> {
        alive(&mut self.conn().await?, instances).await
    }

    /// Announces the dongles served here (one pipeline).
    pub(super) async fn announce(&self, dongles: &[Uuid]) -> redis::RedisResult<()> {
        if dongles.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for dongle in dongles {
            pipe.cmd("SET")
                .arg(dongle_key(*dongle))
                .arg(&self.instance)
                .arg("PX")
                .arg(millis(ANNOUNCE_TTL))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn().await?).await
    }

    /// Claims a delivery of a command run by `runner` before this instance sends it to its
    /// agent ([`CLAIM`]).
    pub(super) async fn claim(
        &self,
        request: &CommandRequest,
        delivery: Uuid,
        runner: &str,
    ) -> redis::RedisResult<Claim> {
        let answer: String = CLAIM
            .key(handover_key(request.command_id))
            .key(liveness_key(runner))
            .arg(delivery.to_string())
            .arg(runner)
            .arg(&self.instance)
            .arg(keep_ms(request.deadline_ms))
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(match answer.as_str() {
            "ok" => Claim::Send,
            "dead" => Claim::Dead,
            "fenced" => Claim::Fenced,
            _ => Claim::Closed,
        })
    }

    /// Takes the handover record of a command this instance just adopted from `previous`
    /// ([`CLOSE`]).
    pub(super) async fn close(
        &self,
        command_id: Uuid,
        previous: Option<&str>,
        deadline_ms: u64,
    ) -> redis::RedisResult<Closed> {
        let answer: i64 = CLOSE
            .key(handover_key(command_id))
            .key(liveness_key(&self.instance))
            .arg(&self.instance)
            .arg(previous.unwrap_or(""))
            .arg(format!("{PREFIX}instance:"))
            .arg(keep_ms(deadline_ms))
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(match answer {
            0 => Closed::Unsent,
            1 => Closed::Sent,
            _ => Closed::Refused,
        })
    }

    /// Hands `request` to the instance serving its dongle, if another one does; the receiver
    /// yields that agent's answers, or [`AgentEvent::Undelivered`] when the hand-over was
    /// voided before anything was sent. `None`: no other instance serves the dongle.
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
        let offer = Offer {
            delivery: Uuid::new_v4(),
            runner: self.instance.clone(),
            request: request.clone(),
        };
        let text = serde_json::to_string(&offer).map_err(|err| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "encoding a command request",
                err.to_string(),
            ))
        })?;
        OFFER
            .key(handover_key(request.command_id))
            .key(inbox_key(&holder))
            .arg(offer.delivery.to_string())
            .arg(text)
            .arg(keep_ms(request.deadline_ms))
            .arg(INBOX_MAXLEN)
            .invoke_async::<i64>(&mut conn)
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = Watch {
            client: self.client.clone(),
            conn,
            command_id: request.command_id,
            delivery: offer.delivery,
            holder,
        };
        tokio::spawn(watch.run(tx));
        Ok(Some(rx))
    }

    /// Voids a delivery still offered; `true` when it will never be sent.
    async fn void(
        conn: &mut ConnectionManager,
        command_id: Uuid,
        delivery: Uuid,
    ) -> redis::RedisResult<bool> {
        let state: String = VOID
            .key(handover_key(command_id))
            .arg(delivery.to_string())
            .invoke_async(conn)
            .await?;
        Ok(state == "void")
    }

    /// Appends one answer to a delivery's events stream, retrying while Redis is away, until
    /// `deadline_ms`.
    async fn relay_event(&self, delivery: Uuid, deadline_ms: u64, event: &AgentEvent) {
        let Ok(text) = serde_json::to_string(event) else {
            return;
        };
        loop {
            let sent = match self.conn().await {
                Ok(mut conn) => {
                    redis::pipe()
                        .cmd("XADD")
                        .arg(events_key(delivery))
                        .arg("*")
                        .arg("e")
                        .arg(&text)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(events_key(delivery))
                        .arg(keep_ms(deadline_ms))
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                }
                Err(err) => Err(err),
            };
            match sent {
                Ok(()) => return,
                Err(err) if keep_ms(deadline_ms) > millis(KEEP_AFTER) => {
                    tracing::warn!(%delivery, %err, "relaying an agent answer to the instance running the command failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(err) => {
                    tracing::warn!(%delivery, %err, "relaying an agent answer failed until the command's deadline; dropped");
                    return;
                }
            }
        }
    }
}

async fn alive(
    conn: &mut ConnectionManager,
    instances: &[String],
) -> redis::RedisResult<HashSet<String>> {
    if instances.is_empty() {
        return Ok(HashSet::new());
    }
    let mut pipe = redis::pipe();
    for instance in instances {
        pipe.cmd("EXISTS").arg(liveness_key(instance));
    }
    let found: Vec<i64> = pipe.query_async(conn).await?;
    Ok(instances
        .iter()
        .zip(found)
        .filter(|(_, n)| *n > 0)
        .map(|(instance, _)| instance.clone())
        .collect())
}

/// A connection of its own for blocking reads (no client-side response timeout, so a
/// `BLOCK` is never cut short), named for `CLIENT LIST`.
async fn blocking_conn(
    client: &redis::Client,
    name: &str,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// Reads the entries of `key` after `after` (blocking up to [`READ_BLOCK`]): their ids and
/// the value of `field`.
async fn read_after(
    conn: &mut MultiplexedConnection,
    key: &str,
    after: &str,
    field: &str,
) -> redis::RedisResult<Vec<(String, Option<String>)>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(100)
        .arg("BLOCK")
        .arg(millis(READ_BLOCK))
        .arg("STREAMS")
        .arg(key)
        .arg(after)
        .query_async(conn)
        .await?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|entry| {
            let value = entry.get::<String>(field);
            (entry.id, value)
        })
        .collect())
}

/// The running instance's watch over one delivery: reads its events stream from the last
/// entry read (a Redis disconnect loses nothing), and voids the delivery when the receiving
/// instance died, or did not claim it within [`OFFER_WAIT`].
struct Watch {
    client: redis::Client,
    conn: ConnectionManager,
    command_id: Uuid,
    delivery: Uuid,
    holder: String,
}

impl Watch {
    async fn run(mut self, tx: mpsc::UnboundedSender<AgentEvent>) {
        let key = events_key(self.delivery);
        let offered_at = tokio::time::Instant::now();
        let mut after = "0".to_owned();
        let mut reader: Option<MultiplexedConnection> = None;
        let mut claimed = false;
        while !tx.is_closed() {
            let mut conn = match reader.take() {
                Some(conn) => conn,
                None => match blocking_conn(&self.client, "tether-diag-events").await {
                    Ok(conn) => conn,
                    Err(err) => {
                        tracing::warn!(delivery = %self.delivery, %err, "reading a command's answers from Redis failed; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            let entries = match read_after(&mut conn, &key, &after, "e").await {
                Ok(entries) => entries,
                Err(err) => {
                    tracing::warn!(delivery = %self.delivery, %err, "reading a command's answers from Redis failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            reader = Some(conn);
            if entries.is_empty() {
                match self.idle(offered_at, &mut claimed).await {
                    Ok(None) => continue,
                    Ok(Some(event)) => {
                        let _ = tx.send(event);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(delivery = %self.delivery, %err, "checking a command's receiving instance failed; retrying");
                        continue;
                    }
                }
            }
            for (id, text) in entries {
                after = id;
                claimed = true;
                let event = match text.map(|t| serde_json::from_str::<AgentEvent>(&t)) {
                    Some(Ok(event)) => event,
                    other => {
                        tracing::warn!(delivery = %self.delivery, ?other, "an undecodable relayed agent event was ignored");
                        continue;
                    }
                };
                let last = event.is_last();
                if tx.send(event).is_err() || last {
                    return;
                }
            }
        }
    }

    /// No answer within a read: ends the delivery when its receiver is gone, or has not
    /// claimed it within [`OFFER_WAIT`]. `Some`: what the running command sees.
    async fn idle(
        &mut self,
        offered_at: tokio::time::Instant,
        claimed: &mut bool,
    ) -> redis::RedisResult<Option<AgentEvent>> {
        let holder_alive = alive(&mut self.conn, std::slice::from_ref(&self.holder))
            .await?
            .contains(&self.holder);
        if holder_alive && (*claimed || offered_at.elapsed() < OFFER_WAIT) {
            return Ok(None);
        }
        if RemoteRoute::void(&mut self.conn, self.command_id, self.delivery).await? {
            tracing::info!(command = %self.command_id, holder = %self.holder, "a command handed to another instance was not taken; it is handed over again");
            return Ok(Some(AgentEvent::Undelivered));
        }
        *claimed = true;
        if holder_alive {
            return Ok(None);
        }
        tracing::info!(command = %self.command_id, holder = %self.holder, "the instance that sent a command to its agent is gone");
        Ok(Some(AgentEvent::Disconnected))
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

/// Reads this instance's inbox from the last entry read, reconnecting after errors.
async fn listen_loop(hub: Weak<HubInner>) {
    let (client, instance) = {
        let Some(inner) = hub.upgrade() else { return };
        let Some(route) = inner.remote.as_ref() else {
            return;
        };
        (route.client.clone(), route.instance.clone())
    };
    let key = inbox_key(&instance);
    let name = format!("tether-diag-inbox-{instance}");
    let mut after = "0".to_owned();
    let mut reader: Option<MultiplexedConnection> = None;
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        let mut conn = match reader.take() {
            Some(conn) => conn,
            None => match blocking_conn(&client, &name).await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "connecting this instance's command inbox failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let entries = match read_after(&mut conn, &key, &after, "r").await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(%err, "reading this instance's command inbox failed; reconnecting");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        reader = Some(conn);
        let Some(inner) = hub.upgrade() else { return };
        for (id, text) in entries {
            after = id;
            match text.map(|t| serde_json::from_str::<Offer>(&t)) {
                Some(Ok(offer)) => std::sync::Arc::clone(&inner).serve_remote(offer),
                other => {
                    tracing::warn!(
                        ?other,
                        "an undecodable command request from another instance was ignored"
                    );
                }
            }
        }
    }
}

impl HubInner {
    /// Runs a command another instance handed here on the local connection serving its
    /// dongle — after claiming the delivery — and relays the answers back.
    fn serve_remote(self: std::sync::Arc<Self>, offer: Offer) {
        tokio::spawn(async move {
            let Some(route) = self.remote.as_ref() else {
                return;
            };
            let Offer {
                delivery,
                runner,
                request,
            } = offer;
            let command_id = request.command_id;
            let deadline_ms = request.deadline_ms;
            let reply = if self.serves_dongle(request.dongle_id) {
                match route.claim(&request, delivery, &runner).await {
                    Ok(Claim::Send) => {
                        // Sent (or, when the connection went away since, a disconnect: the
                        // runner treats it as possibly sent).
                        let events =
                            super::agent::dispatch_local(&self, &request).unwrap_or_else(|| {
                                let (tx, rx) = mpsc::unbounded_channel();
                                let _ = tx.send(AgentEvent::Disconnected);
                                rx
                            });
                        route.relay_events_of(delivery, deadline_ms, events).await;
                        super::agent::forget_local(&self, command_id);
                        return;
                    }
                    Ok(Claim::Dead) => Some(AgentEvent::Undelivered),
                    Ok(Claim::Fenced) => Some(AgentEvent::Fenced),
                    Ok(Claim::Closed) => None,
                    Err(err) => {
                        // Unclaimed: the runner voids it after `OFFER_WAIT` and hands it over
                        // again.
                        tracing::warn!(command = %command_id, %err, "claiming a command handed here failed");
                        None
                    }
                }
            } else {
                // The dongle moved away since it was announced: not sent, hand it over again.
                let mut voided = false;
                if let Ok(mut conn) = route.conn().await {
                    voided = RemoteRoute::void(&mut conn, command_id, delivery)
                        .await
                        .unwrap_or(false);
                }
                voided.then_some(AgentEvent::Undelivered)
            };
            if let Some(event) = reply {
                route.relay_event(delivery, deadline_ms, &event).await;
            }
        });
    }
}

impl RemoteRoute {
    /// Relays the answers of a delivery run for another instance back to it.
    async fn relay_events_of(
        &self,
        delivery: Uuid,
        deadline_ms: u64,
        mut events: mpsc::UnboundedReceiver<AgentEvent>,
    ) {
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let until =
            tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now));
        // The runner stops waiting at the request's deadline; so does the relay.
        while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
            let last = event.is_last();
            self.relay_event(delivery, deadline_ms, &event).await;
            if last {
                return;
            }
        }
    }
}
