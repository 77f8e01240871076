//! The data plane end to end inside one server process: two raw `/ws/data` clients as the sides
//! of a group, the REST API beside them, the SQLite stream log (and Redis in its own test).

#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use std::time::Duration;

use data_client::{DataClient, Received};
use relay_core::engine::{GroupMode, Side};
use relay_core::log::{MAX_SEQ, SqliteStreamLog, SqliteSynchronous, StreamLog, sqlite_chunk};
use relay_core::protocol::{Encoding, ErrorCode, Message};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer};

const JSON: &[Encoding] = &[Encoding::Json];
const MSGPACK: &[Encoding] = &[Encoding::Msgpack, Encoding::Json];

/// Polls `check` every 50 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<bool>>,
{
    for _ in 0..600 {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

/// A user with an agent, two dongles and an (optionally activated) group:
/// `(user token, agent token, group id)`.
async fn group(
    srv: &TestServer,
    name: &str,
    activate: bool,
) -> TestResult<(String, String, String)> {
    if activate {
        return srv.user_with_active_group(name).await;
    }
    let (user, agent, a, b) = srv.user_with_pair(name).await?;
    let id = srv.group(&user, &a, &b).await?;
    Ok((user, agent, id))
}

async fn group_state(srv: &TestServer, user: &str, id: &str) -> TestResult<Value> {
    let (status, body) = srv.get(&format!("/api/v1/groups/{id}"), user).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(body)
}

/// Opens the server's SQLite stream log read-side (WAL allows a second connection).
async fn stream_log(srv: &TestServer) -> TestResult<SqliteStreamLog> {
    let path = srv.dir.path().join("data").join("streams.db");
    Ok(SqliteStreamLog::open(path, SqliteSynchronous::Normal).await?)
}

fn key(group: &str, direction: &str) -> String {
    format!("group:{group}:{direction}")
}

#[tokio::test]
async fn frames_flow_both_ways_in_order_acked_after_storage_and_deduplicated() -> TestResult {
    let srv = TestServer::start().await?;
    let (user, agent, id) = group(&srv, "alice", true).await?;
    let (srv_r, user_r, id_r) = (&srv, user.as_str(), id.as_str());
    let log = stream_log(&srv).await?;
    let (mut a, welcome_a) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    assert_eq!((welcome_a.tx_acked, welcome_a.rx_from), (0, 0));
    assert_eq!(welcome_a.encoding, Encoding::Json);
    let (mut b, welcome_b) = DataClient::open(&srv.base, &agent, &id, Side::B, 0, MSGPACK).await?;
    assert_eq!(welcome_b.encoding, Encoding::Msgpack);

    // A → B in batches; every ack is backed by the stream log.
    for first in (1..=100).step_by(10) {
        let acked = a.send_acked(first, first + 9).await?;
        let head = log.backlog(&key(&id, "a_to_b"), MAX_SEQ).await?.head;
        assert!(
            head >= acked,
            "ack {acked} before the log held it (head {head})"
        );
    }
    let mut got_b = Received::default();
    b.consume_until(100, &mut got_b).await?;
    assert_eq!(got_b.seqs, (1..=100).collect::<Vec<_>>());
    assert!(got_b.gaps.is_empty());

    // B → A, msgpack on B's side.
    b.send_frames(1, 30).await?;
    b.send_acked(31, 50).await?;
    let mut got_a = Received::default();
    a.consume_until(50, &mut got_a).await?;
    assert_eq!(got_a.seqs, (1..=50).collect::<Vec<_>>());

    // A retransmission is acknowledged again, not stored or delivered again.
    assert_eq!(a.send_acked(91, 100).await?, 100);
    a.send_acked(101, 105).await?;
    b.consume_until(105, &mut got_b).await?;
    assert_eq!(got_b.seqs, (1..=105).collect::<Vec<_>>(), "no duplicate");
    let stored = log.read(&key(&id, "a_to_b"), 0, 1000).await?;
    assert_eq!(stored.items.len(), 105);

    // Both online, nothing waiting: active.
    eventually("group active", || async move {
        Ok(group_state(srv_r, user_r, id_r).await?["mode"] == "active")
    })
    .await?;
    // Each frame received was stored once or counted as a duplicate: 155 + 10 resent.
    srv.assert_metrics(&[
        "tether_server_relay_frames_received_total 165",
        "tether_server_relay_frames_stored_total 155",
        "tether_server_relay_frames_duplicate_total 10",
        "tether_server_relay_frames_relayed_total 155",
        "tether_server_relay_connections 2",
    ])
    .await?;

    // A second connection of side A replaces the first, which is closed.
    let (_a2, welcome_a2) = DataClient::open(&srv.base, &agent, &id, Side::A, 50, JSON).await?;
    assert_eq!(welcome_a2.tx_acked, 105);
    assert_eq!(welcome_a2.rx_from, 50);
    a.recv_until_closed().await?;
    b.close().await?;
    Ok(())
}

#[tokio::test]
async fn offline_side_builds_a_backlog_that_replays_in_order_then_the_group_is_active() -> TestResult
{
    let srv = TestServer::start().await?;
    let (user, agent, id) = group(&srv, "bob", true).await?;
    let (srv_r, user_r, id_r) = (&srv, user.as_str(), id.as_str());
    let (mut a, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    let (mut b, _) = DataClient::open(&srv.base, &agent, &id, Side::B, 0, JSON).await?;
    a.send_frames(1, 20).await?;
    let mut got = Received::default();
    b.consume_until(20, &mut got).await?;
    eventually("active", || async move {
        Ok(group_state(srv_r, user_r, id_r).await?["mode"] == "active")
    })
    .await?;

    b.close().await?;
    eventually("degraded with B offline", || async move {
        let state = group_state(srv_r, user_r, id_r).await?;
        Ok(state["mode"] == "degraded" && state["offline_side"] == "b")
    })
    .await?;
    // A is told too.
    a.recv_until(|m| {
        matches!(m, Message::GroupState(s) if s.mode == GroupMode::Degraded && s.offline == vec![Side::B])
    })
    .await?;
    for first in (21..=220).step_by(50) {
        a.send_frames(first, first + 49).await?;
    }
    a.wait_ack(220).await?;
    eventually("backlog of 200", || async move {
        let state = group_state(srv_r, user_r, id_r).await?;
        Ok(state["backlog"]["a_to_b"] == 200 && state["mode"] == "degraded")
    })
    .await?;

    let (mut b, welcome) = DataClient::open(&srv.base, &agent, &id, Side::B, 20, JSON).await?;
    assert_eq!(welcome.rx_from, 20);
    let mut replayed = Received::after(20);
    b.consume_until(220, &mut replayed).await?;
    assert_eq!(replayed.seqs, (21..=220).collect::<Vec<_>>());
    assert!(replayed.gaps.is_empty());
    eventually("active again with no backlog", || async move {
        let state = group_state(srv_r, user_r, id_r).await?;
        Ok(state["mode"] == "active"
            && state["backlog"]["a_to_b"] == 0
            && state["offline_side"].is_null())
    })
    .await?;
    srv.assert_metrics(&["tether_server_relay_frames_buffered_total"])
        .await?;
    let audit = srv.group_audit(&user, &id).await?;
    assert!(audit.iter().any(|x| x["action"] == "presence"), "{audit:?}");
    Ok(())
}

#[tokio::test]
async fn stored_rows_that_are_not_frames_reach_the_consumer_as_a_corrupt_gap() -> TestResult {
    let srv = TestServer::start().await?;
    let (_, agent, id) = group(&srv, "carol", true).await?;
    let (mut a, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    a.send_acked(1, 10).await?;
    // Storage corruption (or another writer) while B is away: 4 is not MessagePack at all, 5
    // is a map cut short, which spliced as it is would swallow the frames after it, and 8 has
    // one bit flipped in a key, which keeps the MessagePack well formed.
    let path = srv.dir.path().join("data").join("streams.db");
    let stream = key(&id, "a_to_b");
    tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
        let db = rusqlite::Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(10))?;
        // The ten frames are one chunk row (docs/storage.md): decode it, damage three
        // payloads, write it back.
        let (id, first_seq, last_seq, count, blob): (i64, i64, i64, i64, Vec<u8>) = db.query_row(
            "SELECT id, first_seq, last_seq, count, items FROM log_chunks WHERE stream_id = \
                 (SELECT id FROM log_streams WHERE name = ?1)",
            [&stream],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let bounds = sqlite_chunk::ChunkBounds {
            first_seq: first_seq as u64,
            last_seq: last_seq as u64,
            count: count as u64,
        };
        let decoded = sqlite_chunk::decode(bounds, &blob.into());
        assert_eq!(decoded.error, None);
        let mut items = decoded.items;
        assert_eq!(items.len(), 10);
        items[3].payload = bytes::Bytes::from_static(b"\xc1");
        items[4].payload = bytes::Bytes::from_static(b"\x87\xa7groupId");
        let mut row = items[7].payload.to_vec();
        let at = row
            .windows(7)
            .position(|w| w == b"groupId")
            .expect("a stored frame");
        row[at] ^= 0x01;
        items[7].payload = row.into();
        let (_, damaged) = sqlite_chunk::encode(&items);
        let changed = db.execute(
            "UPDATE log_chunks SET items = ?1 WHERE id = ?2",
            rusqlite::params![damaged, id],
        )?;
        assert_eq!(changed, 1);
        Ok(())
    })
    .await??;

    // MessagePack: the path that splices stored rows (the JSON path decodes every row; the
    // unit tests of `encode_delivery` cover both).
    let (mut b, _) = DataClient::open(&srv.base, &agent, &id, Side::B, 0, MSGPACK).await?;
    let mut got = Received::default();
    b.consume_until(10, &mut got).await?;
    assert_eq!(got.seqs, [1, 2, 3, 6, 7, 9, 10]);
    assert_eq!(
        got.gaps,
        [
            (4, 5, 2, "corrupt".to_owned()),
            (8, 8, 1, "corrupt".to_owned())
        ]
    );
    srv.assert_metrics(&["tether_server_relay_frames_corrupt_total 3"])
        .await?;
    // The stream goes on.
    a.send_frames(11, 12).await?;
    b.consume_until(12, &mut got).await?;
    assert_eq!(got.seqs[7..], [11, 12]);
    Ok(())
}

#[tokio::test]
async fn retention_while_away_gives_an_exact_gap_pressure_metric_and_audit_entry() -> TestResult {
    let srv = TestServer::start_with(|config| {
        config.relay.max_len = Some(50);
        config.relay.trim_interval = Duration::from_millis(100);
    })
    .await?;
    let (user, agent, id) = group(&srv, "carol", true).await?;
    let (srv_r, user_r, id_r) = (&srv, user.as_str(), id.as_str());
    let (mut a, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    a.send_acked(1, 150).await?;
    eventually("buffer-pressure audit entry", || async move {
        let audit = srv_r.group_audit(user_r, id_r).await?;
        Ok(audit.iter().any(|x| x["action"] == "buffer_pressure"))
    })
    .await?;
    eventually("pressure metric", || async move {
        Ok(srv_r.metrics().await?.contains(
            r#"tether_server_relay_frames_trimmed_undelivered_total{reason="length"} 100"#,
        ))
    })
    .await?;

    let (mut b, _) = DataClient::open(&srv.base, &agent, &id, Side::B, 0, MSGPACK).await?;
    let mut got = Received::default();
    b.consume_until(150, &mut got).await?;
    assert_eq!(got.gaps, vec![(1, 100, 100, "retention_length".to_owned())]);
    assert_eq!(got.seqs, (101..=150).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn only_the_agent_of_a_side_may_open_it_and_inactive_groups_store_nothing() -> TestResult {
    let srv = TestServer::start().await?;
    let (alice, agent, id) = group(&srv, "alice", false).await?;

    // No or bad token: 401 JSON before any upgrade.
    let (status, body) = srv
        .call(reqwest::Method::GET, "/ws/data", None, None)
        .await?;
    assert_eq!(
        (status, server_support::code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    match DataClient::connect(&srv.base, "ta_bogus").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        Err(other) => return Err(format!("expected HTTP 401, got {other}").into()),
        Ok(_) => return Err("bad token was upgraded".into()),
    }

    // Another user's agent, another agent of the same user, a group id that is not a UUID.
    let (_, bob_agent, _) = group(&srv, "bob", true).await?;
    let alice_token = srv.user_token("alice").await?;
    let (_, other_agent) = srv.agent(&alice_token, "alice-second").await?;
    for (token, group_id) in [
        (bob_agent.as_str(), id.as_str()),
        (other_agent.as_str(), id.as_str()),
        (agent.as_str(), "g-42"),
        (agent.as_str(), "00000000-0000-4000-8000-000000000000"),
    ] {
        let mut client = DataClient::connect(&srv.base, token).await?;
        match client.hello(group_id, Side::A, 0, JSON).await? {
            Message::Error(err) => {
                assert_eq!(err.code, ErrorCode::Unauthorized, "{err:?}")
            }
            other => return Err(format!("expected unauthorized, got {other:?}").into()),
        }
        assert!(client.recv_until_closed().await?.is_empty());
    }

    // The group's own agent may connect, but frames of an inactive group are refused, not
    // stored, and the connection stays usable.
    let (mut a, welcome) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    assert_eq!(welcome.mode, GroupMode::Inactive);
    a.send_frames(1, 5).await?;
    let seen = a.recv_until(|m| matches!(m, Message::Error(_))).await?;
    match seen.last() {
        Some(Message::Error(err)) => {
            assert_eq!(err.code, ErrorCode::GroupInactive)
        }
        other => return Err(format!("expected group_inactive, got {other:?}").into()),
    }
    let log = stream_log(&srv).await?;
    assert_eq!(log.backlog(&key(&id, "a_to_b"), 0).await?.head, 0);

    // Activated: the same connection's frames are now stored.
    srv.post(&format!("/api/v1/groups/{id}/activate"), &alice, json!({}))
        .await?;
    // The activation reaches the data plane asynchronously: retry until accepted.
    let mut accepted = false;
    for _ in 0..100 {
        a.send_frames(1, 5).await?;
        let answer = a
            .recv_until(|m| matches!(m, Message::Ack(_) | Message::Error(_)))
            .await?;
        if matches!(answer.last(), Some(Message::Ack(ack)) if ack.up_to == 5) {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "frames still refused after activation");
    assert_eq!(log.backlog(&key(&id, "a_to_b"), 0).await?.head, 5);
    Ok(())
}

#[tokio::test]
async fn agent_assignment_names_group_side_and_mode() -> TestResult {
    let srv = TestServer::start().await?;
    let (user, agent, a, b) = srv.user_with_pair("dora").await?;
    let (status, body) = srv
        .get(&format!("/api/v1/agent/dongles/{a}"), &agent)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["serial"], "dora-A");
    assert!(body["group"].is_null());
    let (_, group) = srv.post_group(&user, "g", &a, &b).await?;
    let (_, body) = srv
        .get(&format!("/api/v1/agent/dongles/{b}"), &agent)
        .await?;
    assert_eq!(body["group"]["id"], group["id"]);
    assert_eq!(body["group"]["side"], "b");
    assert_eq!(body["group"]["mode"], "inactive");

    // Not this agent's dongle, a user token, an unknown id.
    let (_, other) = srv.agent(&user, "dora-other").await?;
    let (status, body) = srv
        .get(&format!("/api/v1/agent/dongles/{a}"), &other)
        .await?;
    assert_eq!(
        (status, server_support::code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _) = srv
        .get(&format!("/api/v1/agent/dongles/{a}"), &user)
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = srv.get("/api/v1/agent/dongles/not-a-uuid", &agent).await?;
    assert!(status.is_client_error());
    Ok(())
}

#[tokio::test]
async fn a_restarted_server_keeps_acknowledged_frames_heads_and_cursors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = tether_server::ServerConfig::new("127.0.0.1:0".parse()?, &data);
    let running = tether_server::spawn(config.clone()).await?;
    let srv = TestServer::new(dir, running);
    let (user, agent, id) = group(&srv, "erin", true).await?;
    let (mut a, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    let (mut b, _) = DataClient::open(&srv.base, &agent, &id, Side::B, 0, JSON).await?;
    a.send_acked(1, 40).await?;
    let mut got = Received::default();
    b.consume_until(40, &mut got).await?;
    b.close().await?;
    a.send_acked(41, 60).await?;
    let TestServer { server, dir, .. } = srv;
    server.shutdown().await?;

    let running = tether_server::spawn(config).await?;
    let srv = TestServer::new(dir, running);
    // Before any agent connects, the REST API shows what is stored and undelivered.
    let (srv_r, user_r, id_r) = (&srv, user.as_str(), id.as_str());
    eventually("the stored backlog after restart", || async move {
        let state = group_state(srv_r, user_r, id_r).await?;
        Ok(state["backlog"]["a_to_b"] == 20 && state["backlog"]["b_to_a"] == 0)
    })
    .await?;
    let (mut a, welcome_a) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    assert_eq!(
        welcome_a.tx_acked, 60,
        "acknowledged frames survive the restart"
    );
    // B resumes from its own cursor; the server's stored cursor is at most what B acked.
    let (mut b, welcome_b) = DataClient::open(&srv.base, &agent, &id, Side::B, 40, MSGPACK).await?;
    assert_eq!(welcome_b.rx_from, 40);
    let mut rest = Received::after(40);
    b.consume_until(60, &mut rest).await?;
    assert_eq!(rest.seqs, (41..=60).collect::<Vec<_>>());
    // A retransmits what it had sent; nothing is stored twice.
    assert_eq!(a.send_acked(51, 60).await?, 60);
    a.send_acked(61, 61).await?;
    b.consume_until(61, &mut rest).await?;
    assert_eq!(rest.seqs, (41..=61).collect::<Vec<_>>());
    let (srv_r, user_r, id_r) = (&srv, user.as_str(), id.as_str());
    eventually("active after restart", || async move {
        Ok(group_state(srv_r, user_r, id_r).await?["mode"] == "active")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn revoking_an_agent_closes_its_open_connections() -> TestResult {
    let srv = TestServer::start().await?;
    let rita = srv.user_pair("rita").await?;
    let id = srv.group(&rita.user, &rita.a, &rita.b).await?;
    let (mut side, _) = DataClient::open(&srv.base, &rita.agent, &id, Side::A, 0, JSON).await?;
    let agent_path = format!("/api/v1/agents/{}", rita.agent_id);
    let (status, _) = srv.delete(&agent_path, &rita.user).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The open connection is closed with `unauthorized`, not only new upgrades refused.
    side.closed_with(ErrorCode::Unauthorized).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_group_closes_its_sides() -> TestResult {
    // No periodic resync during the test: the deletion itself must reach the data plane.
    let srv = TestServer::start_with(|config| {
        config.relay.trim_interval = Duration::from_secs(3600);
    })
    .await?;
    let (user, agent, id) = group(&srv, "fred", true).await?;
    let (mut a, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    a.send_acked(1, 3).await?;
    let (status, _) = srv.delete(&format!("/api/v1/groups/{id}"), &user).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    a.closed_with(ErrorCode::Unauthorized).await?;
    let mut again = DataClient::connect(&srv.base, &agent).await?;
    assert!(matches!(
        again.hello(&id, Side::A, 0, JSON).await?,
        Message::Error(_)
    ));
    // Its streams are deleted, and the frames B never got are counted.
    let srv_r = &srv;
    eventually("the deleted group's streams removed and counted", || async move {
        let text = srv_r.metrics().await?;
        Ok(
            text.contains(r#"tether_server_relay_frames_trimmed_total{reason="group_deleted"} 3"#)
                && text.contains(
                    r#"tether_server_relay_frames_trimmed_undelivered_total{reason="group_deleted"} 3"#,
                ),
        )
    })
    .await?;
    let log = relay_core::log::SqliteStreamLog::open(
        srv.dir.path().join("data").join("streams.db"),
        relay_core::log::SqliteSynchronous::Normal,
    )
    .await?;
    let key = relay_core::engine::Direction::AToB
        .stream_key(&relay_core::engine::GroupId::new(id.clone()));
    assert_eq!(
        log.backlog(&key, 0).await?.head,
        0,
        "stream {key} still exists"
    );
    Ok(())
}
