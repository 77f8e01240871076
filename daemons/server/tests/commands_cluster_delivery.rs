//! Reliable command hand-over between server instances (`docs/cluster.md`, "Commands across
//! instances"): a request added to an instance's inbox while its reader is cut off from Redis
//! is delivered when it is back; a request the receiving instance never claimed is voided and
//! handed over again; one it claimed before dying is never sent again (a read-only one is
//! retried as attempt 2); and a pending command adopted by another instance is never sent by
//! its previous owner. Two in-process instances on one Redis and one records directory; a
//! dead receiving instance is played by the test (its liveness key and inbox). Needs
//! `REDIS_URL`.

mod commands_support;
mod server_support;

use std::time::Duration;

use commands_support::fake_agent::FakeAgent;
use commands_support::{Fleet, ended, fleet, pair, submit};
use relay_core::protocol::diag::CommandRequest;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, redis_url, text};
use uuid::Uuid;

/// Closes the agent and shuts both instances down.
async fn shut_down(agent: FakeAgent, one: TestServer, two: TestServer) -> TestResult {
    agent.close().await?;
    one.server.shutdown().await?;
    two.stop().await
}

fn instance(server: &TestServer) -> String {
    server.server.state().store().instance().to_owned()
}

async fn conn(url: &str) -> TestResult<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Two instances, a connection to their Redis, a fleet on the first instance, and the directory
/// of their shared records.
type Cluster = (
    TestServer,
    TestServer,
    redis::aio::MultiplexedConnection,
    Fleet,
    tempfile::TempDir,
);

/// Two instances on the Redis at `url` ([`pair`]), a connection to that Redis, and a fleet of
/// `name` on the first instance.
async fn cluster(url: &str, name: &str) -> TestResult<Cluster> {
    let (one, two, shared) = pair(url).await?;
    let redis = conn(url).await?;
    let f = fleet(&one, name).await?;
    Ok((one, two, redis, f, shared))
}

/// Waits until `tether:diag:dongle:{dongle}` names `holder`.
async fn announced(
    redis: &mut redis::aio::MultiplexedConnection,
    dongle: &str,
    holder: &str,
) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: Option<String> = redis::cmd("GET")
            .arg(format!("tether:diag:dongle:{dongle}"))
            .query_async(redis)
            .await?;
        if now.as_deref() == Some(holder) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("dongle {dongle} announced by {now:?}, not {holder}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next command the agent gets, within `wait`.
async fn next_command(agent: &mut FakeAgent, wait: Duration) -> TestResult<CommandRequest> {
    tokio::time::timeout(wait, agent.command())
        .await
        .map_err(|_| "no command reached the agent")?
}

/// Nothing more reaches the agent within `wait`.
async fn nothing_more(agent: &mut FakeAgent, wait: Duration) -> TestResult {
    match tokio::time::timeout(wait, agent.recv()).await {
        Err(_) => Ok(()),
        Ok(message) => Err(format!("the agent got a second message: {:?}", message?).into()),
    }
}

/// A test-played receiving instance: a liveness key and the dongle's announcement naming it;
/// returns its id.
async fn fake_holder(
    redis: &mut redis::aio::MultiplexedConnection,
    f: &Fleet,
) -> TestResult<String> {
    let id = format!("test-holder-{}", Uuid::new_v4());
    redis::pipe()
        .cmd("SET")
        .arg(format!("tether:instance:{id}"))
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .ignore()
        .cmd("SET")
        .arg(format!("tether:diag:dongle:{}", f.dongle))
        .arg(&id)
        .arg("PX")
        .arg(60_000)
        .ignore()
        .query_async::<()>(redis)
        .await?;
    Ok(id)
}

/// The first offer in the fake holder's inbox.
async fn offered(redis: &mut redis::aio::MultiplexedConnection, holder: &str) -> TestResult<Value> {
    let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(10_000)
        .arg("STREAMS")
        .arg(format!("tether:diag:inbox:{holder}"))
        .arg("0")
        .query_async(redis)
        .await?;
    let entry = reply
        .and_then(|r| r.keys.into_iter().next())
        .and_then(|k| k.ids.into_iter().next())
        .ok_or("nothing was offered to the receiving instance")?;
    let text: String = entry.get("r").ok_or("an offer without `r`")?;
    Ok(serde_json::from_str(&text)?)
}

async fn forget_holder(redis: &mut redis::aio::MultiplexedConnection, holder: &str) -> TestResult {
    redis::cmd("DEL")
        .arg(format!("tether:instance:{holder}"))
        .arg(format!("tether:diag:inbox:{holder}"))
        .query_async::<()>(redis)
        .await?;
    Ok(())
}

async fn handover_state(
    redis: &mut redis::aio::MultiplexedConnection,
    command: &str,
    field: &str,
) -> TestResult<Option<String>> {
    Ok(redis::cmd("HGET")
        .arg(format!("tether:diag:handover:{command}"))
        .arg(field)
        .query_async(redis)
        .await?)
}

/// The agent gets command `id` (attempt `attempt`) once, answers it; it completes on
/// `server`, and nothing more reaches the agent.
async fn runs_once(
    agent: &mut FakeAgent,
    server: &TestServer,
    f: &Fleet,
    id: &str,
    attempt: u32,
) -> TestResult {
    let command = next_command(agent, Duration::from_secs(15)).await?;
    assert_eq!(command.command_id.to_string(), id);
    assert_eq!(command.attempt, attempt);
    nothing_more(agent, Duration::from_secs(2)).await?;
    agent
        .answer(command.command_id, 1, true, json!({"done": true}))
        .await?;
    let done = ended(server, &f.token, id).await?;
    assert_eq!(done["status"], "completed", "{done}");
    Ok(())
}

/// A command submitted on `one` is handed to a test-played receiving instance, which
/// (when `claimed`) claims it as `CLAIM` would; then the agent connects to `two` and the
/// receiving instance dies. Returns the agent, the command id and the delivery id.
async fn handed_to_a_dying_receiver(
    redis: &mut redis::aio::MultiplexedConnection,
    (one, two): (&TestServer, &TestServer),
    f: &Fleet,
    (name, params): (&str, Value),
    claimed: bool,
) -> TestResult<(FakeAgent, String, String)> {
    let holder = fake_holder(redis, f).await?;
    let accepted = submit(one, &f.token, &f.vehicle, name, params).await?;
    let id = text(&accepted, "command_id")?;
    let offer = offered(redis, &holder).await?;
    assert_eq!(offer["request"]["command_id"], id.as_str(), "{offer}");
    assert_eq!(offer["runner"], instance(one).as_str(), "{offer}");
    let delivery = text(&offer, "delivery")?;
    assert_eq!(
        handover_state(redis, &id, &delivery).await?.as_deref(),
        Some("offered")
    );
    if claimed {
        redis::cmd("HSET")
            .arg(format!("tether:diag:handover:{id}"))
            .arg(&delivery)
            .arg(format!("sent:{holder}"))
            .query_async::<()>(redis)
            .await?;
    }
    let (agent, _) = f.connect_agent(two).await?;
    announced(redis, &f.dongle, &instance(two)).await?;
    forget_holder(redis, &holder).await?;
    Ok((agent, id, delivery))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_added_while_the_receiver_is_cut_off_from_redis_arrives_once() -> TestResult {
    let url = redis_url()?;
    let (one, two, mut redis, f, _shared) = cluster(&url, "cutoff").await?;
    let (mut agent, _) = f.connect_agent(&two).await?;
    announced(&mut redis, &f.dongle, &instance(&two)).await?;

    // Instance 2's inbox reader is disconnected over and over (CLIENT KILL of its own
    // connection) while the command is handed to it.
    let name = format!("tether-diag-inbox-{}", instance(&two));
    let killer_url = url.clone();
    let killer = tokio::spawn(async move {
        let mut redis = conn(&killer_url).await?;
        let mut kills = 0_u32;
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < until {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis)
                .await?;
            for line in list
                .lines()
                .filter(|l| l.contains(&format!(" name={name} ")))
            {
                let id = line
                    .split(' ')
                    .find_map(|f| f.strip_prefix("id="))
                    .ok_or("a CLIENT LIST line without id")?;
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(&mut redis)
                    .await?;
                kills += u32::try_from(killed)?;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TestResult::<u32>::Ok(kills)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let accepted = submit(&one, &f.token, &f.vehicle, "ClearDTC", json!({})).await?;
    let id = text(&accepted, "command_id")?;
    let kills = killer.await??;
    assert!(kills >= 2, "the inbox reader was killed {kills} times");

    runs_once(&mut agent, &one, &f, &id, 1).await?;
    shut_down(agent, one, two).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_dead_receiver_never_claimed_is_voided_and_handed_over_again() -> TestResult {
    let url = redis_url()?;
    let (one, two, mut redis, f, _shared) = cluster(&url, "unclaimed").await?;
    let (mut agent, id, delivery) =
        handed_to_a_dying_receiver(&mut redis, (&one, &two), &f, ("ClearDTC", json!({})), false)
            .await?;
    // The voided hand-over was not an attempt: the agent gets attempt 1.
    runs_once(&mut agent, &one, &f, &id, 1).await?;
    assert_eq!(
        handover_state(&mut redis, &id, &delivery).await?.as_deref(),
        Some("void")
    );
    shut_down(agent, one, two).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_dead_receiver_claimed_is_never_sent_again_unless_read_only() -> TestResult {
    let url = redis_url()?;
    let (one, two, mut redis, f, _shared) = cluster(&url, "claimed").await?;

    // ClearDTC: the receiving instance claimed it (it may have reached the vehicle), then
    // died: the command fails as interrupted, and the agent now on instance 2 never gets it.
    let (mut agent, id, _) =
        handed_to_a_dying_receiver(&mut redis, (&one, &two), &f, ("ClearDTC", json!({})), true)
            .await?;
    let done = ended(&one, &f.token, &id).await?;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error_message"], "interrupted: agent disconnected",
        "{done}"
    );
    nothing_more(&mut agent, Duration::from_secs(2)).await?;
    agent.close().await?;

    // ReadDTC, same story: read-only, so it is sent once more (attempt 2) to instance 2.
    let (mut agent, id, _) = handed_to_a_dying_receiver(
        &mut redis,
        (&one, &two),
        &f,
        ("ReadDTC", json!({"status_mask": 8})),
        true,
    )
    .await?;
    runs_once(&mut agent, &one, &f, &id, 2).await?;
    shut_down(agent, one, two).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_command_adopted_elsewhere_is_never_sent_by_its_previous_owner() -> TestResult {
    let url = redis_url()?;
    let (one, two, mut redis, f, _shared) = cluster(&url, "fenced").await?;
    let (one_id, two_id) = (instance(&one), instance(&two));

    // Instance 1 accepts a ClearDTC for a vehicle whose agent is not connected: pending,
    // queued in instance 1's memory.
    let accepted = submit(&one, &f.token, &f.vehicle, "ClearDTC", json!({})).await?;
    let id = text(&accepted, "command_id")?;

    // Instance 1's liveness lapses (as in a Redis outage of more than 3 s): instance 2 adopts
    // the command and closes its handover record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        redis::cmd("DEL")
            .arg(format!("tether:instance:{one_id}"))
            .query_async::<()>(&mut redis)
            .await?;
        if handover_state(&mut redis, &id, "#owner").await?.as_deref() == Some(two_id.as_str()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("instance 2 did not adopt the command".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Instance 1 is back (its next refresh) and the agent connects to it: instance 1's own
    // queued copy is fenced; instance 2 runs the command through instance 1's connection.
    let (mut agent, _) = f.connect_agent(&one).await?;
    runs_once(&mut agent, &two, &f, &id, 1).await?;
    let sent: Vec<String> = redis::cmd("HVALS")
        .arg(format!("tether:diag:handover:{id}"))
        .query_async(&mut redis)
        .await?;
    let sends = sent.iter().filter(|v| v.starts_with("sent:")).count();
    assert_eq!(sends, 1, "{sent:?}");
    shut_down(agent, one, two).await
}
