//! The entry points the data plane will call (presence, backlog) as seen through the API, and
//! the mode-change feed that `group_state` events will come from.

mod server_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use server_support::{TestResult, TestServer};
use tether_server::group_mode::{GroupBacklog, GroupMode, GroupStatus, OfflineSide, RelayProbe};
use tether_server::{self as server, ServerConfig};
use uuid::Uuid;

/// A relay engine the test controls: every group replays an `a_to_b` backlog of the set
/// size, or is caught up at zero.
#[derive(Debug, Default)]
struct FakeRelay(AtomicU64);

impl RelayProbe for FakeRelay {
    fn status(&self, _group: Uuid) -> Option<GroupStatus> {
        let a_to_b = self.0.load(Ordering::SeqCst);
        Some(GroupStatus {
            mode: if a_to_b > 0 {
                GroupMode::Degraded
            } else {
                GroupMode::Active
            },
            backlog: GroupBacklog { a_to_b, b_to_a: 0 },
            offline: Vec::new(),
            replaying: a_to_b > 0,
        })
    }
}

#[tokio::test]
async fn presence_and_backlog_drive_the_mode_seen_by_the_api() -> TestResult {
    let relay = Arc::new(FakeRelay::default());
    let dir = tempfile::tempdir()?;
    let config = ServerConfig::new("127.0.0.1:0".parse()?, dir.path().join("data"));
    let running = server::spawn_with(config, relay.clone()).await?;
    let srv = TestServer::new(dir, running);
    let (alice, _, a, b) = srv.user_with_pair("alice").await?;
    let id = srv.create_group(&alice, "p", &a, &b).await?;
    let group_id = Uuid::parse_str(&id)?;
    let (a_id, b_id) = (Uuid::parse_str(&a)?, Uuid::parse_str(&b)?);
    let state = srv.server.state().clone();
    let mut feed = state.subscribe_mode_changes();

    srv.post(&format!("/api/v1/groups/{id}/activate"), &alice, json!({}))
        .await?;
    let change = feed.recv().await?;
    assert_eq!(
        (change.old, change.state.mode),
        (GroupMode::Inactive, GroupMode::Degraded)
    );
    assert_eq!(change.state.offline_side, Some(OfflineSide::Both));

    assert!(
        state.set_dongle_online(a_id, true).await?.is_empty(),
        "B still offline"
    );
    let changes = state.set_dongle_online(b_id, true).await?;
    assert_eq!(changes.len(), 1);
    let change = feed.recv().await?;
    assert_eq!(
        (change.old, change.state.mode),
        (GroupMode::Degraded, GroupMode::Active)
    );
    let (_, read) = srv.get(&format!("/api/v1/groups/{id}"), &alice).await?;
    assert_eq!(read["mode"], "active");
    assert!(read["offline_side"].is_null());
    let (_, dongle) = srv.get(&format!("/api/v1/dongles/{b}"), &alice).await?;
    assert_eq!(dongle["online"], true);
    assert!(dongle["last_seen"].as_str().is_some());

    // A backlog appears: degraded with both sides online, visible in the API at once.
    relay.0.store(7, Ordering::SeqCst);
    let (_, read) = srv.get(&format!("/api/v1/groups/{id}"), &alice).await?;
    assert_eq!(read["backlog"], json!({ "a_to_b": 7, "b_to_a": 0 }));
    assert_eq!(read["mode"], "degraded");
    let change = state.refresh_group_mode(group_id).await?;
    assert_eq!(change.map(|c| c.state.mode), Some(GroupMode::Degraded));
    assert_eq!(feed.recv().await?.state.backlog.a_to_b, 7);
    // Drained.
    relay.0.store(0, Ordering::SeqCst);
    assert_eq!(
        state
            .refresh_group_mode(group_id)
            .await?
            .map(|c| c.state.mode),
        Some(GroupMode::Active)
    );
    assert_eq!(
        state.refresh_group_mode(group_id).await?,
        None,
        "no change, no event"
    );

    let actions: Vec<(String, String)> = srv
        .group_audit(&alice, &id)
        .await?
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("?").to_owned(),
                e["action"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("user:alice", "create"),
        ("user:alice", "activate"),
        ("data-plane", "presence"),
        ("data-plane", "backlog"),
        ("data-plane", "backlog"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(actions, expected);
    srv.stop().await
}
